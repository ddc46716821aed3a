"""The whole service (API, six workers, projector) against loopback PDS and PLC servers, on
both event logs."""

from __future__ import annotations

import asyncio
import re

import pytest

from projections.index_reader import FollowingIndex
from services.workers import pds_scan
from testkit.harness import running_service, settings_for, wait_index
from testkit.waiting import eventually

DATETIME_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def settings(kafka, tmp_path, admin, plc, unique):
    return settings_for(tmp_path / "data", admin, plc.url, kafka=kafka, namespace=unique)


async def test_did_sync_indexes_every_chive_record_of_the_repo(
    settings, admin, plc, fresh_pds, unique
):
    did = f"did:plc:alice{unique}"
    plc.register(did, pds_url=fresh_pds.url)
    fresh_pds.add_repo(
        did,
        {
            "pub.chive.eprint.submission": 230,
            "pub.chive.review.comment": 35,
            "app.bsky.feed.post": 10,
        },
    )
    async with running_service(settings, admin) as client:
        op = await client.trigger(type="didSync", did=did)
        assert op["status"] == "running" and op["recordsProcessed"] == 0
        assert op["type"] == "didSync" and op["params"] == {"did": did}
        assert op["startedBy"] == admin.did
        assert DATETIME_MS_Z.match(op["startedAt"])
        # Read your writes: the status right after the trigger knows the operation.
        assert (await client.status(op["id"]))["id"] == op["id"]
        done = await client.wait_finished(op["id"])
        assert done["status"] == "completed", done
        assert done["recordsProcessed"] == 265 == fresh_pds.chive_count(did)
        assert DATETIME_MS_Z.match(done["completedAt"])
        await wait_index(settings.data_dir, fresh_pds.chive_uris())
        history = (await client.get("pub.chive.admin.getBackfillHistory")).json()
        assert [o["id"] for o in history["operations"]] == [op["id"]]


async def test_pds_scan_reads_all_repos_and_pages(settings, admin, fresh_pds, unique, monkeypatch):
    monkeypatch.setattr(pds_scan, "REPOS_PAGE", 2)  # several listRepos pages
    for i in range(5):
        fresh_pds.add_repo(
            f"did:plc:repo{i}{unique}",
            {"pub.chive.graph.node": 40 + i, "pub.chive.actor.profile": 1, "com.example.other": 3},
        )
    fresh_pds.add_repo(f"did:plc:gone{unique}", {"pub.chive.graph.node": 7}, active=False)
    expected = sum(41 + i for i in range(5))
    async with running_service(settings, admin) as client:
        op = await client.trigger(type="pdsScan", pdsUrl=fresh_pds.url + "/")
        assert op["params"] == {"pdsUrl": fresh_pds.url}
        done = await client.wait_finished(op["id"])
        assert done["status"] == "completed", done
        assert done["recordsProcessed"] == expected

        async def index_current():
            return (await client.status(op["id"]))["indexCurrent"] or None

        await eventually(index_current, what="the status to say the index holds the records")
        # The moment the status says so, the index holds every record of the operation.
        index = FollowingIndex(settings.data_dir)
        await index.open()
        try:
            assert [u for u, _ in await index.uris()] == fresh_pds.chive_uris()
        finally:
            await index.close()
        assert fresh_pds.calls["listRepos"] >= 4


async def test_pds_scan_without_url_scans_every_learned_pds(
    settings, admin, plc, fresh_pds, unique
):
    did = f"did:plc:bob{unique}"
    plc.register(did, pds_url=fresh_pds.url)
    fresh_pds.add_repo(did, {"pub.chive.eprint.version": 12})
    async with running_service(settings, admin) as client:
        first = await client.trigger(type="didSync", did=did)
        assert (await client.wait_finished(first["id"]))["status"] == "completed"
        fresh_pds.add_repo(f"did:plc:carol{unique}", {"pub.chive.eprint.version": 8})
        scan = await client.trigger(type="pdsScan")
        done = await client.wait_finished(scan["id"])
        assert done["status"] == "completed", done
        assert done["recordsProcessed"] == 20


async def test_cancel_stops_running_work(settings, admin, fresh_pds, unique):
    for i in range(10):
        fresh_pds.add_repo(f"did:plc:big{i}{unique}", {"pub.chive.graph.edge": 500})
    # The first repos come at once, the rest slowly: the cancel lands while work is left.
    fresh_pds.faults.stalls["getRepo"] = [0, 0] + [2.0] * 8
    async with running_service(settings, admin) as client:
        op = await client.trigger(type="pdsScan", pdsUrl=fresh_pds.url)
        await client.wait_processed(op["id"])
        response = await client.post("pub.chive.admin.cancelBackfill", {"id": op["id"]})
        assert response.json() == {"success": True}
        done = await client.wait_finished(op["id"])
        assert done["status"] == "cancelled"
        assert 0 < done["recordsProcessed"] < 5000
        requests_when_cancelled = fresh_pds.calls["getRepo"]
        again = await client.post("pub.chive.admin.cancelBackfill", {"id": op["id"]})
        assert again.json() == {"success": False}
        # The work really stopped: a second status read later shows the same state, and the
        # PDS was asked for no repo after the cancel (nor for all of them before it).
        assert (await client.status(op["id"]))["recordsProcessed"] == done["recordsProcessed"]
        assert fresh_pds.calls["getRepo"] == requests_when_cancelled < 10


async def test_duplicate_trigger_returns_the_running_operation(settings, admin, fresh_pds, unique):
    fresh_pds.faults.delay_s = 0.05
    fresh_pds.add_repo(f"did:plc:dup{unique}", {"pub.chive.graph.edge": 1000})
    async with running_service(settings, admin) as client:
        first = await client.trigger(type="pdsScan", pdsUrl=fresh_pds.url)
        second = await client.trigger(type="pdsScan", pdsUrl=fresh_pds.url)
        assert second["id"] == first["id"]
        other = await client.trigger(type="pdsScan", pdsUrl=fresh_pds.url + "/other")
        assert other["id"] != first["id"]
        await client.post("pub.chive.admin.cancelBackfill", {"id": first["id"]})
        await client.post("pub.chive.admin.cancelBackfill", {"id": other["id"]})
        await client.wait_finished(first["id"])
        await client.wait_finished(other["id"])
        # Once finished, the same trigger starts a new operation.
        third = await client.trigger(type="pdsScan", pdsUrl=fresh_pds.url)
        assert third["id"] != first["id"]
        await client.post("pub.chive.admin.cancelBackfill", {"id": third["id"]})


async def test_identical_triggers_at_once_make_one_operation_each_readable_at_once(
    settings, admin, fresh_pds, unique
):
    # Nothing serialises triggers in the API: identical ones all land in the log, and the fold
    # names every one after the first as another id of it (the slow path of a trigger).
    fresh_pds.faults.delay_s = 0.05
    did = f"did:plc:same{unique}"
    fresh_pds.add_repo(did, {"pub.chive.graph.edge": 1000})
    async with running_service(settings, admin) as client:
        answers = await asyncio.gather(
            *(client.trigger(type="didSync", did=did) for _ in range(20)),
            *(client.trigger(type="didSync", did=f"{did}x{i}") for i in range(10)),
        )
        same = {a["id"] for a in answers[:20]}
        assert len(same) == 1, same
        assert len({a["id"] for a in answers[20:]} | same) == 11
        # Read-your-writes: each answer's operation is there on the next read, no waiting.
        for answer in answers:
            assert (await client.status(answer["id"]))["id"] == answer["id"]
        (op_id,) = same
        await client.post("pub.chive.admin.cancelBackfill", {"id": op_id})
        assert (await client.wait_finished(op_id))["status"] in ("cancelled", "completed")


async def test_unreachable_pds_fails_with_a_clear_error(settings, admin, plc, unique):
    from testkit.broker import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    did = f"did:plc:dead{unique}"
    plc.register(did, pds_url=dead)
    async with running_service(settings, admin) as client:
        scan = await client.trigger(type="pdsScan", pdsUrl=dead)
        sync = await client.trigger(type="didSync", did=did)
        missing = await client.trigger(type="didSync", did=f"did:plc:nobody{unique}")
        scan_done = await client.wait_finished(scan["id"])
        sync_done = await client.wait_finished(sync["id"])
        missing_done = await client.wait_finished(missing["id"])
    assert scan_done["status"] == "failed" and dead in scan_done["error"]
    assert sync_done["status"] == "failed" and "unreachable" in sync_done["error"]
    assert missing_done["status"] == "failed" and "not found" in missing_done["error"]


async def test_transient_pds_errors_are_retried(settings, admin, fresh_pds, unique):
    fresh_pds.add_repo(f"did:plc:flaky{unique}", {"pub.chive.graph.node": 30})
    fresh_pds.faults.fail = {"getRepo": [500, 503, 429], "listRepos": [503]}
    fresh_pds.faults.retry_after = "0"
    async with running_service(settings, admin) as client:
        op = await client.trigger(type="pdsScan", pdsUrl=fresh_pds.url)
        done = await client.wait_finished(op["id"])
    assert done["status"] == "completed" and done["recordsProcessed"] == 30
    assert fresh_pds.faults.fail == {"getRepo": [], "listRepos": []}
