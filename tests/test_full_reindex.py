"""fullReindex on both logs: the rebuilt index equals the live one record for record, readers
are served throughout and switched atomically, the projector writes the new index after the
switch, full-text search is rebuilt; SIGKILL mid-rebuild leaves the old index serving and the
rebuild resumes; cancel removes the half-built index."""

from __future__ import annotations

import asyncio
import json
import sqlite3

from events import model
from events.log import read_to_end
from projections import index_location
from projections.index_reader import FollowingIndex
from projections.records import RecordIndex
from services import bootstrap
from testkit.broker import free_port
from testkit.harness import (
    attempts,
    process_service,
    run_cli,
    running_service,
    service_env,
    settings_for,
    wait_index,
)
from testkit.waiting import eventually

SUBMISSION = "pub.chive.eprint.submission"


def eprints(pds, did: str, n: int) -> None:
    for i in range(n):
        topic = "lichens on granite" if i % 3 == 0 else "tidal energy"
        pds.put_record(
            did,
            SUBMISSION,
            f"3s{i:010d}",
            {
                "title": f"A study of {topic}, part {i}",
                "abstractPlainText": f"We measure {topic} again ({i}).",
            },
        )


async def synced(client, did: str) -> dict:
    op = await client.trigger(type="didSync", did=did)
    done = await client.wait_finished(op["id"], timeout=60)
    assert done["status"] == "completed", done
    return done


async def records_on_log(settings) -> int:
    async with bootstrap.open_log(settings) as event_log:
        return len(await read_to_end(event_log, model.RECORDS_TOPIC))


async def test_rebuild_equals_live_and_switches_without_downtime(
    kafka, admin, tmp_path, plc, fresh_pds, unique
):
    did = f"did:plc:fr{unique}"
    plc.register(did, pds_url=fresh_pds.url)
    fresh_pds.add_repo(did, {"pub.chive.review.comment": 1500})
    eprints(fresh_pds, did, 30)
    settings = settings_for(tmp_path / "data", admin, plc.url, kafka=kafka, namespace=unique)
    data_dir = settings.data_dir
    async with running_service(settings, admin) as client:
        await synced(client, did)
        # Two eprints gone at the source: freshnessScan leaves tombstones in the index.
        submissions = fresh_pds.repos[did].collections[SUBMISSION]
        for rkey in ("3s0000000001", "3s0000000002"):
            del submissions[rkey]
        scan = await client.trigger(type="freshnessScan")
        assert (await client.wait_finished(scan["id"], timeout=60))["recordsDeleted"] == 2
        await wait_index(data_dir, fresh_pds.chive_uris())

        reader, watcher = FollowingIndex(data_dir), FollowingIndex(data_dir)
        await reader.open()
        await watcher.open()
        try:
            before = await reader.snapshot()
            lichens = sorted(
                f"at://{did}/{SUBMISSION}/{k}"
                for k, v in submissions.items()
                if "lichens" in v["title"]
            )
            # An index from before full-text search existed: nothing to search in.
            with sqlite3.connect(index_location.active_path(data_dir)) as db:
                db.execute("DELETE FROM eprint_text")
            assert await reader.search("lichens") == []

            # A reader keeps querying across the switch: every answer is complete.
            answers: list[int] = []
            done_reading = asyncio.Event()

            async def keep_reading() -> None:
                while not done_reading.is_set():
                    answers.append(await watcher.live_count())
                    await asyncio.sleep(0.002)  # pacing, not synchronisation

            reading = asyncio.create_task(keep_reading())
            op = await client.trigger(type="fullReindex", batchSize=7)
            done = await client.wait_finished(op["id"], timeout=120)
            done_reading.set()
            await reading
            assert done["status"] == "completed", done
            assert done["recordsProcessed"] == await records_on_log(settings)
            assert done["totalRecords"] == done["recordsProcessed"]
            assert len(answers) > 10 and set(answers) == {1528}

            # The pointer names the rebuilt file; the old one is gone.
            active = index_location.active_path(data_dir)
            assert active.name == f"records-{op['id']}.db"
            assert not (data_dir / "records.db").exists()
            after = await reader.snapshot()
            assert after == before, "the rebuilt index differs from the live one"
            assert [r["uri"] for r in await reader.search("lichens")] != []
            assert sorted(r["uri"] for r in await reader.search("lichens", 100)) == lichens
            code, out, err = await run_cli(
                {
                    "CHIVE_DATA_DIR": str(data_dir),
                    "CHIVE_LOG_LEVEL": "WARNING",
                },
                "records",
                "search",
                "Lichens granite",
                "--limit",
                "100",
            )
            assert code == 0, err
            assert sorted(r["uri"] for r in json.loads(out)) == lichens

            # The projector goes on writing the new index.
            other = f"did:plc:fs{unique}"
            plc.register(other, pds_url=fresh_pds.url)
            fresh_pds.add_repo(other, {"pub.chive.graph.node": 5})
            await synced(client, other)
            await wait_index(data_dir, fresh_pds.chive_uris())
        finally:
            await reader.close()
            await watcher.close()


async def test_sigkill_mid_rebuild_keeps_the_old_index_and_resumes(
    kafka, admin, tmp_path, plc, fresh_pds, unique
):
    did = f"did:plc:fk{unique}"
    plc.register(did, pds_url=fresh_pds.url)
    fresh_pds.add_repo(did, {"pub.chive.review.comment": 6000})
    eprints(fresh_pds, did, 20)
    data_dir = tmp_path / "data"
    port = free_port()
    env = service_env(data_dir, port, plc.url, admin, kafka=kafka, namespace=unique)
    async with process_service(env, tmp_path / "service.log", admin) as (service, client):
        await synced(client, did)
        await wait_index(data_dir, fresh_pds.chive_uris(), timeout=60)
        old = RecordIndex(data_dir / "records.db")
        await old.open()
        before = await old.snapshot()
        await old.close()
        op = await client.trigger(type="fullReindex", batchSize=3)
        await client.wait_processed(op["id"], 500)
        service.kill()

        # Dead mid-rebuild: the old index still serves, the half-built one holds its place.
        assert index_location.active_path(data_dir) == data_dir / "records.db"
        serving = FollowingIndex(data_dir)
        await serving.open()
        assert (await serving.stats())["live"] == 6020
        await serving.close()
        partial = RecordIndex(index_location.rebuild_path(data_dir, op["id"]))
        await partial.open()
        built = sum((await partial.positions()).values())
        await partial.close()
        assert 500 <= built < 6020

        service.start()
        await eventually(lambda: client.up(), timeout=30, what="API up after the kill")
        done = await client.wait_finished(op["id"], timeout=120)
        assert done["status"] == "completed", done
        assert await attempts(env, op["id"]) >= 2
        assert index_location.active_path(data_dir).name == f"records-{op['id']}.db"
        assert not (data_dir / "records.db").exists()
        rebuilt = FollowingIndex(data_dir)
        await rebuilt.open()
        assert await rebuilt.snapshot() == before
        await rebuilt.close()
        code, out, err = await run_cli(env, "replay", "--verify")
        assert code == 0, out + err


async def test_cancel_removes_the_half_built_index(kafka, admin, tmp_path, plc, fresh_pds, unique):
    did = f"did:plc:fc{unique}"
    plc.register(did, pds_url=fresh_pds.url)
    fresh_pds.add_repo(did, {"pub.chive.review.comment": 4000})
    settings = settings_for(tmp_path / "data", admin, plc.url, kafka=kafka, namespace=unique)
    async with running_service(settings, admin) as client:
        await synced(client, did)
        op = await client.trigger(type="fullReindex", batchSize=1)
        await client.wait_processed(op["id"])
        await client.post("pub.chive.admin.cancelBackfill", {"id": op["id"]})
        done = await client.wait_finished(op["id"])
        assert done["status"] == "cancelled" and 0 < done["recordsProcessed"] < 4000
        rebuild = index_location.rebuild_path(settings.data_dir, op["id"])
        assert not rebuild.exists()
        assert index_location.active_path(settings.data_dir) == settings.data_dir / "records.db"
        await wait_index(settings.data_dir, fresh_pds.chive_uris())


async def test_a_worker_process_of_its_own_refuses_fullreindex(tmp_path, plc):
    env = service_env(tmp_path / "data", free_port(), plc.url)
    code, _, err = await run_cli(env, "worker", "fullReindex")
    assert code != 0 and "chive-backfill projector" in err
