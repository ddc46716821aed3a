"""The example subscriber (examples/follow_records.py: plain aiokafka, no chive-backfill code)
follows the records topic as the published contract describes it."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from events import model
from events.kafka_log import KafkaEventLog
from events.log import Entry
from tests.test_contracts import SAMPLES

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "follow_records.py"


async def test_the_example_subscriber_follows_the_records_topic(tmp_path, kafka_bootstrap, unique):
    """examples/follow_records.py (plain aiokafka, no chive code) sees what a worker wrote."""
    log = KafkaEventLog(kafka_bootstrap, 3, namespace=unique)
    await log.start()
    try:
        await log.ensure_topics([model.RECORDS_TOPIC])
        events = [
            model.new_event(model.RecordUpserted, "op", **{**SAMPLES["RecordUpserted"], "uri": u})
            for u in (f"at://did:plc:a/pub.chive.review.comment/{i}" for i in range(3))
        ]
        gone = model.new_event(model.RecordDeleted, "op", **SAMPLES["RecordDeleted"])
        await log.append(
            model.RECORDS_TOPIC,
            [Entry(e.uri, model.encode(e), model.headers_for(e)) for e in [*events, gone]],
        )
    finally:
        await log.close()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        "--bootstrap",
        kafka_bootstrap,
        "--namespace",
        unique,
        "--max",
        "4",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-2000:]
    lines = sorted(out.decode().splitlines())
    assert lines == sorted([*(f"upsert {e.uri} {e.cid}" for e in events), f"delete {gone.uri}"])
