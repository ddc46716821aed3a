"""Redelivered events, late events and poison events injected straight into the log: nothing
changes that should not, poison goes to the dead-letter topic with its reason, nothing behind
it is blocked, and an audit replay finds the live projections exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from events import dlq, model
from events.log import Entry, Position, read_to_end
from projections.operations import OperationsStore
from services import bootstrap
from services.audit import verify
from testkit.harness import Admin, run_cli, running_service, settings_for, wait_index
from testkit.waiting import eventually


async def synced_operation(settings, client, plc, pds, did: str) -> dict:
    plc.register(did, pds_url=pds.url)
    pds.add_repo(did, {"pub.chive.eprint.submission": 25})
    op = await client.trigger(type="didSync", did=did)
    done = await client.wait_finished(op["id"])
    assert done["status"] == "completed"
    await wait_index(settings.data_dir, pds.chive_uris())
    return done


async def folded_past(data_dir: Path, positions: list[Position]) -> None:
    """Wait until the API's operations projection has committed past these positions (its
    tracking records, stored with its state)."""
    store = OperationsStore(data_dir / "api-operations.db")
    await store.open()
    try:

        async def past() -> bool:
            stored = await store.positions()
            return all(stored.get(p.partition, 0) > p.offset for p in positions)

        await eventually(past, what="operations projection past the injected events")
    finally:
        await store.close()


@pytest.mark.parametrize("log_kind", ["sqlite", "kafka"])
async def test_redelivered_and_late_events_change_nothing(
    log_kind, kafka, tmp_path, plc, fresh_pds, unique
):
    admin = Admin()
    settings = settings_for(tmp_path / "data", admin, plc.url, kafka=kafka, namespace=unique)
    async with running_service(settings, admin) as client:
        done = await synced_operation(settings, client, plc, fresh_pds, f"did:plc:dup{unique}")
        # A second handle on the same log, as another process would have.
        async with bootstrap.open_log(settings) as log:
            messages = await read_to_end(log, model.OPERATIONS_TOPIC)
            redelivered = [
                Entry(m.key, m.value, m.headers) for m in messages if m.key == done["id"]
            ]
            late = model.new_event(
                model.BackfillProgressed,
                done["id"],
                backfill_type="didSync",
                records_processed=10**6,
                checkpoint={"x": 1},
            )
            positions = await log.append(
                model.OPERATIONS_TOPIC,
                [*redelivered, Entry(done["id"], model.encode(late), model.headers_for(late))],
            )
            await folded_past(settings.data_dir, positions)
            # The finished operation did not move, not even its updatedAt.
            assert await client.status(done["id"]) == done
            report = await verify(log, settings.data_dir)
            assert report["differences"] == [] and report["operations"] == 1


@pytest.mark.parametrize("log_kind", ["sqlite", "kafka"])
async def test_poison_is_parked_by_each_consumer_and_blocks_nothing(
    log_kind, kafka, tmp_path, plc, fresh_pds, unique
):
    admin = Admin()
    settings = settings_for(tmp_path / "data", admin, plc.url, kafka=kafka, namespace=unique)
    did = f"did:plc:poison{unique}"
    async with running_service(settings, admin) as client:
        done = await synced_operation(settings, client, plc, fresh_pds, did)
        async with bootstrap.open_log(settings) as log:
            poison_headers = {
                "event_type": "BackfillProgressed",
                "backfill_type": "didSync",
                "event_id": "poison",
                "schema_version": "1",
            }
            await log.append(
                model.OPERATIONS_TOPIC, [Entry(done["id"], b"\x00not an event", poison_headers)]
            )
            await log.append(
                model.RECORDS_TOPIC,
                [
                    Entry(
                        "at://did:plc:x/pub.chive.a.b/c",
                        b'{"event_type":"RecordUpserted"}',
                        {"event_type": "RecordUpserted"},
                    ),
                ],
            )

            async def parked():
                letters = await dlq.read_all(log)
                return letters if len(letters) >= 3 else None

            letters = await eventually(parked, what="three dead letters")
            consumers = sorted(d.consumer for d in letters)
            # Each consumer that met a poison event parked it: both projections and the didSync
            # worker (its type's event). In one process freshnessScan reads the projector's
            # index, so there is no replica to park it a third time.
            assert consumers == [
                "projection:operations",
                "projection:records",
                "worker:didSync",
            ], consumers
            assert all(d.reason.startswith("undecodable") for d in letters)

            # Nothing behind the poison is blocked: a new operation runs to completion.
            again = await client.trigger(type="didSync", did=did)
            assert again["id"] != done["id"]
            assert (await client.wait_finished(again["id"]))["status"] == "completed"
            assert await client.status(done["id"]) == done

            # dlq replay appends the parked records again; still poison, parked again, and
            # still nothing is blocked.
            replayed = await dlq.replay(log, letters)
            assert replayed == 2

            async def parked_again():
                return len(await dlq.read_all(log)) >= 6

            await eventually(parked_again, what="replayed poison parked again")

    env = {
        "CHIVE_DATA_DIR": str(settings.data_dir),
        "CHIVE_PARTITIONS": "3",
        "CHIVE_LOG_LEVEL": "WARNING",
    }
    if kafka:
        env.update(
            CHIVE_EVENT_LOG="kafka", KAFKA_BOOTSTRAP_SERVERS=kafka, CHIVE_KAFKA_NAMESPACE=unique
        )
    for args in (("replay", "--verify"), ("dlq", "list")):
        code, out, _ = await run_cli(env, *args)
        assert code == 0, (args, out)
        lines = [json.loads(line) for line in out.splitlines()]
        if args[0] == "replay":
            assert lines[-1] == {"operations": 2, "records": 25, "differences": 0}
        else:
            assert len(lines) >= 6 and all(line["reason"] for line in lines)


async def test_replay_verify_reports_a_tampered_projection(tmp_path, plc, fresh_pds, unique):
    import sqlite3

    admin = Admin()
    settings = settings_for(tmp_path / "data", admin, plc.url)
    did = f"did:plc:tamper{unique}"
    plc.register(did, pds_url=fresh_pds.url)
    fresh_pds.add_repo(did, {"pub.chive.eprint.submission": 5})
    async with running_service(settings, admin) as client:
        op = await client.trigger(type="didSync", did=did)
        assert (await client.wait_finished(op["id"]))["status"] == "completed"
        await wait_index(settings.data_dir, fresh_pds.chive_uris())
    with sqlite3.connect(settings.data_dir / "records.db") as db:
        db.execute("UPDATE records SET cid = 'tampered' WHERE uri = (SELECT MIN(uri) FROM records)")
    code, out, _ = await run_cli(
        {
            "CHIVE_DATA_DIR": str(settings.data_dir),
            "CHIVE_PARTITIONS": "3",
            "CHIVE_LOG_LEVEL": "WARNING",
        },
        "replay",
        "--verify",
    )
    lines = out.splitlines()
    assert code == 1
    assert "tampered" in lines[0] and json.loads(lines[-1])["differences"] == 1
