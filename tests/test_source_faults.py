"""A misbehaving PDS ends every operation in bounded retries, a counted skip or a clear error:
5xx and 429, timeouts, truncated and non-JSON bodies, endless cursors, invalid records."""

from __future__ import annotations

import msgspec
import pytest

from services import bootstrap
from services.audit import verify
from testkit.harness import running_service, settings_for, wait_index


@pytest.fixture
def settings(kafka, tmp_path, plc, unique, admin):
    base = settings_for(tmp_path / "data", admin, plc.url, kafka=kafka, namespace=unique)
    # Short timeouts and few attempts keep the failing cases quick; same code paths.
    return msgspec.structs.replace(base, source_timeout_s=1.0, source_attempts=3)


async def scan(settings, admin, pds, index: list[str] | None = None):
    """Run one pdsScan; with `index`, also wait (service still running) for exactly those
    records in the record index."""
    async with running_service(settings, admin) as client:
        op = await client.trigger(type="pdsScan", pdsUrl=pds.url)
        done = await client.wait_finished(op["id"], timeout=60)
        if index is not None:
            await wait_index(settings.data_dir, index)
    # After every fault: the whole log, folded afresh, gives the live operations state.
    async with bootstrap.open_log(settings) as log:
        report = await verify(log, settings.data_dir)
    assert report["differences"] == [] and report["operations"] == 1
    return done


async def test_get_repo_timeouts_and_errors_are_retried(settings, admin, fresh_pds, unique):
    fresh_pds.add_repo(f"did:plc:c{unique}", {"pub.chive.graph.node": 150})
    # A stall past the 1 s deadline, then a 503: within the 3 attempts the settings allow.
    fresh_pds.faults.stalls = {"getRepo": [2.5]}
    fresh_pds.faults.fail = {"getRepo": [503]}
    done = await scan(settings, admin, fresh_pds)
    assert done["status"] == "completed", done
    assert done["recordsProcessed"] == 150 and "skipReasons" not in done
    assert fresh_pds.faults.stalls == {"getRepo": []} and fresh_pds.faults.fail == {"getRepo": []}
    assert fresh_pds.calls["getRepo"] == 3


async def test_a_repo_cut_off_midway_is_read_again_from_its_start(
    settings, admin, fresh_pds, unique
):
    # The CAR is read as it arrives; the retry after a cut must start a fresh read, not carry
    # on from the blocks of the attempt that failed.
    fresh_pds.add_repo(f"did:plc:m{unique}", {"pub.chive.graph.node": 150})
    fresh_pds.faults.car_stalls = [(3000, 2.5)]
    done = await scan(settings, admin, fresh_pds)
    assert done["status"] == "completed", done
    assert done["recordsProcessed"] == 150 and "skipReasons" not in done
    assert fresh_pds.faults.car_stalls == [] and fresh_pds.calls["getRepo"] == 2


async def test_timeouts_truncated_and_non_json_bodies_are_retried(
    settings, admin, fresh_pds, unique
):
    fresh_pds.add_repo(f"did:plc:t{unique}", {"pub.chive.graph.node": 150})
    fresh_pds.faults.no_get_repo = True  # the listRecords path
    # One fault per call site, each within the 3 attempts the settings allow.
    fresh_pds.faults.stalls = {"listRepos": [2.5]}
    fresh_pds.faults.bodies = {
        "listRecords": [b'{"records": [{"uri": "at://'],
        "describeRepo": [b"<html>502 Bad Gateway</html>"],
    }
    done = await scan(settings, admin, fresh_pds)
    assert done["status"] == "completed", done
    assert done["recordsProcessed"] == 150
    assert fresh_pds.faults.bodies == {"listRecords": [], "describeRepo": []}
    assert fresh_pds.faults.stalls == {"listRepos": []}


async def test_a_source_that_keeps_failing_fails_the_operation_after_bounded_retries(
    settings, admin, fresh_pds, unique
):
    fresh_pds.add_repo(f"did:plc:f{unique}", {"pub.chive.graph.node": 5})
    fresh_pds.faults.fail = {"listRepos": [500] * 10}
    done = await scan(settings, admin, fresh_pds)
    assert done["status"] == "failed"
    assert fresh_pds.url in done["error"] and "after 3 attempts" in done["error"]
    assert fresh_pds.calls["listRepos"] == 3


async def test_garbage_bodies_forever_fail_clearly(settings, admin, fresh_pds, unique):
    fresh_pds.add_repo(f"did:plc:g{unique}", {"pub.chive.graph.node": 5})
    fresh_pds.faults.bodies = {"listRepos": [b"<html>" for _ in range(10)]}
    done = await scan(settings, admin, fresh_pds)
    assert done["status"] == "failed" and "unexpected response body" in done["error"]


async def test_an_endless_cursor_does_not_loop_forever(settings, admin, fresh_pds, unique):
    fresh_pds.add_repo(f"did:plc:e{unique}", {"pub.chive.graph.node": 30})
    fresh_pds.faults.endless_cursor = True
    fresh_pds.faults.no_get_repo = True  # the listRecords path
    done = await scan(settings, admin, fresh_pds)
    assert done["status"] == "failed" and "repeats the same listRecords page" in done["error"]
    assert fresh_pds.calls["endless"] == 2


async def test_invalid_records_are_counted_as_skipped(settings, admin, fresh_pds, unique):
    did = f"did:plc:v{unique}"
    repo = fresh_pds.add_repo(did, {"pub.chive.graph.node": 20})
    valid = fresh_pds.chive_uris()
    repo.collections["pub.chive.graph.node"]["3k9999999998"] = ["not", "an", "object"]
    repo.collections["pub.chive.graph.node"][".."] = {"$type": "pub.chive.graph.node"}
    done = await scan(settings, admin, fresh_pds, index=valid)
    assert done["status"] == "completed", done
    assert (done["recordsProcessed"], done["recordsSkipped"]) == (20, 2)
