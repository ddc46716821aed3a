"""Redelivered events, late events and poison events injected straight into the log: nothing
changes that should not, poison goes to the dead-letter topic with its reason, nothing behind
it is blocked, and an audit replay finds the live projections exact."""

from __future__ import annotations

import json

import pytest

from events import dlq, model
from events.log import Entry, read_to_end
from services import bootstrap
from services.audit import verify
from testkit.harness import Admin, run_cli, running_service, settings_for, wait_index
from testkit.waiting import eventually


@pytest.mark.parametrize("log_kind", ["sqlite", "kafka"])
async def test_duplicates_late_and_poison_events(log_kind, kafka, tmp_path, plc, fresh_pds, unique):
    admin = Admin()
    settings = settings_for(tmp_path / "data", admin, plc.url, kafka=kafka, namespace=unique)
    did = f"did:plc:dup{unique}"
    plc.register(did, pds_url=fresh_pds.url)
    fresh_pds.add_repo(did, {"pub.chive.eprint.submission": 25})
    async with running_service(settings, admin) as client:
        op = await client.trigger(type="didSync", did=did)
        done = await client.wait_finished(op["id"])
        assert done["status"] == "completed"
        await wait_index(settings.data_dir, fresh_pds.chive_uris())

        # A second handle on the same log, as another process would have.
        async with bootstrap.open_log(settings) as log:
            ops_events = [
                m for m in await read_to_end(log, model.OPERATIONS_TOPIC) if m.key == op["id"]
            ]
            redelivered = [Entry(m.key, m.value, m.headers) for m in ops_events]
            late = model.new_event(
                model.BackfillProgressed,
                op["id"],
                backfill_type="didSync",
                records_processed=10**6,
                checkpoint={"x": 1},
            )
            poison_headers = {
                "event_type": "BackfillProgressed",
                "backfill_type": "didSync",
                "event_id": "poison",
                "schema_version": "1",
            }
            await log.append(
                model.OPERATIONS_TOPIC,
                [
                    *redelivered,
                    Entry(op["id"], model.encode(late), model.headers_for(late)),
                    Entry(op["id"], b"\x00not an event", poison_headers),
                ],
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
            assert again["id"] != op["id"]
            assert (await client.wait_finished(again["id"]))["status"] == "completed"
            # The finished operation did not move, not even its updatedAt.
            assert await client.status(op["id"]) == done
            await wait_index(settings.data_dir, fresh_pds.chive_uris())

            report = await verify(log, settings.data_dir)
            assert report["differences"] == [] and report["operations"] == 2

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
    for args, expect in ((("replay", "--verify"), 0), (("dlq", "list"), 0)):
        code, out, _ = await run_cli(env, *args)
        assert code == expect, (args, out)
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
