"""Audit replay at scale: `chive-backfill replay --verify` over an embedded log of N record
events (default 1,000,000) plus the operations that wrote them, timed from outside as an
operator runs it (the installed CLI, a process of its own), medians of repeated runs.

The log is a realistic mix: eprint submissions (full text, match keys), reviews and graph
records of 1,000 accounts, each record written once, a tenth of them updated and a
twentieth deleted afterwards. The live projections it is checked against are folded first by
the service's own fold (that time is printed too, as the fold rate of the records index).

Run: .venv/bin/python bench/replay.py [--events 1000000] [--repeat 3]
Prints one JSON object, then one line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from events import model
from events.log import Entry
from projections import index_location
from projections.operations import OperationsStore
from projections.records import RecordIndex
from services.audit import replay_into
from services.bootstrap import open_log
from services.settings import Settings

CHUNK = 20_000
COLLECTIONS = (
    "pub.chive.eprint.submission",
    "pub.chive.review.comment",
    "pub.chive.graph.node",
    "pub.chive.graph.edge",
)


def record_events(n: int) -> list[model.RecordEvent]:
    """n record events: creates, then updates of every 10th record, deletes of every 20th."""
    creates = n * 20 // 23  # creates + creates/10 + creates/20 = n
    out: list[model.RecordEvent] = []
    for i in range(creates):
        did = f"did:plc:replay{i % 1000:04d}"
        collection = COLLECTIONS[i % len(COLLECTIONS)]
        rkey = f"3k{i:011d}"
        value = (
            {"title": f"On lichens of granite, part {i}", "abstract": "Growth rates " * 8}
            if collection.endswith("submission")
            else {"id": str(i), "label": f"node {i}", "status": "accepted"}
        )
        out.append(_upsert(i, did, collection, rkey, value, i))
    for i in range(0, creates, 10):
        e = out[i]
        out.append(_upsert(i, e.did, e.collection, e.rkey, {"edited": i}, creates + i))
    for i in range(0, creates, 20):
        e = out[i]
        out.append(
            model.RecordDeleted(
                event_id=f"d{i:025d}",
                operation_id="01bench",
                occurred_at=2 * creates + i,
                uri=e.uri,
                did=e.did,
                collection=e.collection,
                rkey=e.rkey,
            )
        )
    return out


def _upsert(i: int, did: str, collection: str, rkey: str, value: dict, t: int):
    return model.RecordUpserted(
        event_id=f"u{t:025d}",
        operation_id="01bench",
        occurred_at=t,
        uri=f"at://{did}/{collection}/{rkey}",
        did=did,
        collection=collection,
        rkey=rkey,
        cid=f"bafyrei{t:052d}",
        value=msgspec.Raw(msgspec.json.encode(value)),
    )


def operation_events(operations: int) -> list[model.OperationEvent]:
    out: list[model.OperationEvent] = []
    for i in range(operations):
        op = f"01op{i:022d}"
        common = {"operation_id": op, "backfill_type": "pdsScan"}
        out += [
            model.BackfillRequested(
                event_id=f"{op}r",
                occurred_at=i,
                params={"pdsUrl": f"https://pds{i}.example"},
                requested_by="did:key:zadmin",
                dedupe_key=f"pdsScan:{i}",
                **common,
            ),
            model.BackfillStarted(event_id=f"{op}s", occurred_at=i + 1, worker="bench", **common),
            model.BackfillProgressed(
                event_id=f"{op}p", occurred_at=i + 2, records_processed=100, **common
            ),
            model.BackfillCompleted(
                event_id=f"{op}c", occurred_at=i + 3, records_processed=200, **common
            ),
        ]
    return out


async def build(data_dir: Path, n: int) -> dict[str, float]:
    """The log and the live projections folded from it; seconds each took."""
    settings = Settings(data_dir=data_dir, event_log="sqlite", partitions=3)
    figures: dict[str, float] = {}
    async with open_log(settings) as event_log:
        t0 = time.perf_counter()
        events = record_events(n)
        for start in range(0, len(events), CHUNK):
            chunk = events[start : start + CHUNK]
            await event_log.append(
                model.RECORDS_TOPIC,
                [Entry(e.uri, model.encode(e), model.headers_for(e)) for e in chunk],
            )
        ops = operation_events(max(1, n // 5000))
        await event_log.append(
            model.OPERATIONS_TOPIC,
            [Entry(e.operation_id, model.encode(e), model.headers_for(e)) for e in ops],
        )
        figures["write_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        index = RecordIndex(index_location.active_path(data_dir))
        store = OperationsStore(data_dir / "api-operations.db")
        for live, topic in ((index, model.RECORDS_TOPIC), (store, model.OPERATIONS_TOPIC)):
            await live.open()
            await replay_into(event_log, live, await event_log.end_offsets(topic))
            await live.close()
        figures["live_fold_s"] = time.perf_counter() - t0
    return figures


def cli() -> str:
    here = Path(sys.executable).parent / "chive-backfill"
    return str(here) if here.exists() else "chive-backfill"


def verify(data_dir: Path) -> tuple[float, dict]:
    env = {
        **os.environ,
        "CHIVE_DATA_DIR": str(data_dir),
        "CHIVE_EVENT_LOG": "sqlite",
        "CHIVE_PARTITIONS": "3",
        "CHIVE_LOG_LEVEL": "WARNING",
    }
    t0 = time.perf_counter()
    done = subprocess.run(
        [cli(), "replay", "--verify"], env=env, capture_output=True, text=True, timeout=3600
    )
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"replay --verify failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        built = asyncio.run(build(data_dir, args.events))
        runs = [verify(data_dir) for _ in range(args.repeat)]
    seconds = statistics.median(r[0] for r in runs)
    report = runs[0][1]
    assert report["differences"] == 0, report
    figures = {
        "events": args.events,
        "records": report["records"],
        "operations": report["operations"],
        "replay_verify_s": round(seconds, 2),
        "replay_verify_events_per_s": round(args.events / seconds),
        "live_fold_events_per_s": round(args.events / built["live_fold_s"]),
        "write_s": round(built["write_s"], 2),
        "runs": [round(r[0], 2) for r in runs],
    }
    print(json.dumps(figures))
    print(
        f"replay --verify of {args.events} events: {seconds:.1f} s median of {args.repeat} "
        f"(target <= 60 s at 1,000,000); live fold {figures['live_fold_events_per_s']} events/s"
    )


if __name__ == "__main__":
    main()
