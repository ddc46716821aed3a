"""freshnessScan on both logs: changed records re-indexed, gone ones tombstoned, a dead PDS
reported and cut off by its circuit; cancel; SIGKILL and resume to the exact count."""

from __future__ import annotations

import msgspec

from projections.records import RecordIndex
from testkit.broker import free_port
from testkit.harness import (
    attempts,
    kill_while_running,
    process_service,
    running_service,
    service_env,
    settings_for,
    wait_index,
)
from testkit.servers import FakePds, cid_for
from testkit.waiting import eventually


async def synced(client, plc, pds, did: str, counts: dict[str, int]) -> None:
    plc.register(did, pds_url=pds.url)
    pds.add_repo(did, counts)
    op = await client.trigger(type="didSync", did=did)
    assert (await client.wait_finished(op["id"]))["status"] == "completed"


async def test_changed_gone_and_unreachable(kafka, admin, tmp_path, plc, unique):
    live, dead = FakePds(plc).start(), FakePds(plc).start()
    settings = msgspec.structs.replace(
        settings_for(tmp_path / "data", admin, plc.url, kafka=kafka, namespace=unique),
        source_attempts=2,
        source_timeout_s=2,
    )
    try:
        async with running_service(settings, admin) as client:
            await synced(
                client,
                plc,
                live,
                f"did:plc:fa{unique}",
                {"pub.chive.eprint.submission": 40, "pub.chive.review.comment": 20},
            )
            # The dead PDS never served getRepo: its records are checked one by one, and the
            # circuit cuts it off; the live one is checked by revision.
            dead.faults.no_get_repo = True
            await synced(client, plc, dead, f"did:plc:fb{unique}", {"pub.chive.graph.node": 30})
            await wait_index(settings.data_dir, sorted(live.chive_uris() + dead.chive_uris()))
            records = live.repos[f"did:plc:fa{unique}"].collections["pub.chive.eprint.submission"]
            changed = sorted(records)[:3]
            for rkey in changed:
                records[rkey] = {**records[rkey], "title": "revised"}
            gone = sorted(records)[-2:]
            for rkey in gone:
                del records[rkey]
            dead.faults.fail = {"getRecord": [500] * 1000}

            op = await client.trigger(type="freshnessScan")
            done = await client.wait_finished(op["id"], timeout=120)
            assert done["status"] == "completed", done
            assert (done["recordsProcessed"], done["totalRecords"], done["progress"]) == (
                90,
                90,
                100,
            )
            assert done["recordsDeleted"] == 2
            assert done["skipReasons"] == {f"PDS unreachable: {dead.url}": 30}
            # The circuit opened: far fewer calls than 30 records x 2 attempts.
            assert (
                dead.calls["getRecord"]
                <= (settings.source_circuit_failures + settings.source_concurrency_per_pds) * 2
            )
            index = RecordIndex(settings.data_dir / "records.db")
            await index.open()
            try:
                prefix = f"at://did:plc:fa{unique}/pub.chive.eprint.submission/"

                async def applied() -> bool:
                    fresh = [await index.get(prefix + rkey) for rkey in changed]
                    tombstones = [await index.get(prefix + rkey) for rkey in gone]
                    return all(
                        r.cid == cid_for(records[k]) for r, k in zip(fresh, changed, strict=True)
                    ) and all(r.deleted for r in tombstones)

                await eventually(applied, what="changes and tombstones in the index")
            finally:
                await index.close()
    finally:
        live.stop()
        dead.stop()


async def test_cancel_stops_the_scan(kafka, admin, tmp_path, plc, fresh_pds, unique):
    settings = settings_for(tmp_path / "data", admin, plc.url, kafka=kafka, namespace=unique)
    # Indexed with listRecords (no revision known), so checked record by record.
    fresh_pds.faults.no_get_repo = True
    async with running_service(settings, admin) as client:
        await synced(client, plc, fresh_pds, f"did:plc:fc{unique}", {"pub.chive.graph.node": 1500})
        fresh_pds.faults.delay_s = 0.02
        op = await client.trigger(type="freshnessScan")
        await client.wait_processed(op["id"])
        await client.post("pub.chive.admin.cancelBackfill", {"id": op["id"]})
        done = await client.wait_finished(op["id"])
    assert done["status"] == "cancelled" and 0 < done["recordsProcessed"] < 1500


async def test_sigkill_mid_scan_resumes_to_the_exact_count(
    kafka, admin, tmp_path, plc, fresh_pds, unique
):
    port = free_port()
    env = service_env(tmp_path / "data", port, plc.url, admin, kafka=kafka, namespace=unique)
    fresh_pds.faults.no_get_repo = True  # checked record by record, as in the test above
    async with process_service(env, tmp_path / "service.log", admin) as (service, client):
        await synced(client, plc, fresh_pds, f"did:plc:fd{unique}", {"pub.chive.graph.node": 2000})
        fresh_pds.faults.delay_s = 0.005
        op = await client.trigger(type="freshnessScan")
        await kill_while_running(service, client, op["id"], (300, 1000))
        done = await client.wait_finished(op["id"], timeout=120)
    assert done["status"] == "completed", done
    assert (done["recordsProcessed"], done["totalRecords"]) == (2000, 2000)
    assert await attempts(env, op["id"]) >= 2, "the kills missed the running scan"


async def test_an_unchanged_index_costs_one_list_repos_request(
    kafka, admin, tmp_path, plc, fresh_pds, unique
):
    settings = settings_for(tmp_path / "data", admin, plc.url, kafka=kafka, namespace=unique)
    async with running_service(settings, admin) as client:
        for i in range(5):
            await synced(
                client, plc, fresh_pds, f"did:plc:u{i}{unique}", {"pub.chive.graph.node": 80}
            )
        before = dict(fresh_pds.calls)
        op = await client.trigger(type="freshnessScan")
        done = await client.wait_finished(op["id"])
    assert done["status"] == "completed", done
    assert (done["recordsProcessed"], done["totalRecords"]) == (400, 400)
    asked = {m: n - before.get(m, 0) for m, n in fresh_pds.calls.items()}
    assert {m: n for m, n in asked.items() if n} == {"listRepos": 1}


async def test_a_moved_repo_is_diffed_and_one_whose_pds_moved_is_read_from_the_new_one(
    kafka, admin, tmp_path, plc, fresh_pds, unique
):
    settings = settings_for(tmp_path / "data", admin, plc.url, kafka=kafka, namespace=unique)
    new_home = FakePds(plc).start()
    try:
        async with running_service(settings, admin) as client:
            stay, move = f"did:plc:stay{unique}", f"did:plc:move{unique}"
            await synced(client, plc, fresh_pds, stay, {"pub.chive.review.comment": 10})
            await synced(client, plc, fresh_pds, move, {"pub.chive.review.comment": 10})
            # `stay` changes on its PDS: one created, one updated, one deleted.
            comments = fresh_pds.repos[stay].collections["pub.chive.review.comment"]
            first, last = sorted(comments)[0], sorted(comments)[-1]
            comments[first] = {**comments[first], "body": "edited"}
            del comments[last]
            fresh_pds.put_record(stay, "pub.chive.review.comment", "3knew", {"body": "new"})
            # `move` migrates: its repo (minus two records) now lives on another PDS.
            moved = new_home.add_repo(move, {})
            moved.collections = {
                c: dict(sorted(rs.items())[2:])
                for c, rs in fresh_pds.repos[move].collections.items()
            }
            plc.register(move, pds_url=new_home.url)
            del fresh_pds.repos[move]

            op = await client.trigger(type="freshnessScan")
            done = await client.wait_finished(op["id"])
            assert done["status"] == "completed", done
            assert (done["recordsProcessed"], done["totalRecords"]) == (20, 20)
            assert done["recordsDeleted"] == 1 + 2
            assert new_home.calls["getRepo"] == 1 and fresh_pds.calls.get("getRecord", 0) == 0
            await wait_index(
                settings.data_dir, sorted(fresh_pds.chive_uris() + new_home.chive_uris())
            )
            index = RecordIndex(settings.data_dir / "records.db")
            await index.open()
            try:
                edited = await index.get(f"at://{stay}/pub.chive.review.comment/{first}")
                assert edited.cid == cid_for(comments[first])
                assert (await index.synced_repos())[move][0] == new_home.url
            finally:
                await index.close()
    finally:
        new_home.stop()
