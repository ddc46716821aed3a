"""Figures for chive-backfill, each a median over repeated runs, on both event logs, measured
from outside: `chive-backfill up` as a user runs it (three processes), the loopback PDS in a
process of its own, the bench's calls over HTTP.

- trigger latency: POST triggerBackfill until the response, and until getBackfillStatus shows
  it (through httpx: bench/trigger.py times the trigger alone with a lighter client);
- pdsScan throughput: records indexed per second end to end (PDS -> worker -> log -> record
  index, until getBackfillStatus says `indexCurrent`) against the baseline of fetching the same
  repos whole (getRepo) with the worker's client at its per-PDS concurrency, and doing nothing
  with them, in the same run (the ratio is what the pipeline costs over reading alone); also
  against sequential listRecords paging, the baseline of earlier figures;
- completed -> index current: from the first status read that says `completed` to the first
  that says `indexCurrent` (the index holds every record of the scan);
- fullReindex throughput: record events folded into the new index per second, trigger to
  completion (batchSize 100 and 1000), against the baseline of folding the same events straight
  into a fresh index with the audit's replay in the same run.

Run: .venv/bin/python bench/backfill.py [--repeat 5] [--records 20000]
Prints one JSON object, then one line per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.service import COLLECTION, TRIGGER, loopback_pds, until_up, up
from bench.sources import get_repo
from projections.index_reader import FollowingIndex
from projections.records import RecordIndex
from services import outbound
from services.audit import replay_into
from services.bootstrap import open_log as bootstrap_log
from services.settings import Settings, load
from services.workers.repo_scan import ListRecords
from testkit.broker import free_port, kafka_broker
from testkit.handlers import LOOPBACK
from testkit.harness import Admin, Client, service_env
from testkit.waiting import eventually


async def baseline_fetch(source: dict) -> float:
    """Seconds to read every page of every repo with the same page size, sequentially."""
    start = time.perf_counter()
    async with httpx.AsyncClient() as http:
        for did in source["dids"]:
            cursor = None
            while True:
                params = {"repo": did, "collection": COLLECTION, "limit": 100}
                if cursor:
                    params["cursor"] = cursor
                r = await http.get(
                    f"{source['pds']}/xrpc/com.atproto.repo.listRecords", params=params
                )
                page = msgspec.json.decode(r.content, type=ListRecords)
                if not page.records or not page.cursor:
                    break
                cursor = page.cursor
    return time.perf_counter() - start


async def baseline_get_repo(source: dict) -> float:
    """Seconds to fetch every repo whole (getRepo), as pdsScan reads them: the worker's own
    client, its per-PDS concurrency, nothing done with the bytes."""
    slots = asyncio.Semaphore(Settings().source_concurrency_per_pds)

    async def one(fetcher: outbound.Fetcher, did: str) -> None:
        async with slots:
            await get_repo(fetcher, source["pds"], did)

    start = time.perf_counter()
    async with outbound.Fetcher(LOOPBACK) as fetcher:
        await asyncio.gather(*(one(fetcher, did) for did in source["dids"]))
    return time.perf_counter() - start


async def one_run(bootstrap: str | None, source: dict, total: int, run: int) -> dict[str, float]:
    admin = Admin()
    with tempfile.TemporaryDirectory() as tmp:
        data, port, log = Path(tmp) / "data", free_port(), Path(tmp) / "up.log"
        namespace = f"bench{run}{time.time_ns()}"
        env = service_env(data, port, source["plc"], admin, bootstrap, namespace)
        with up(env, log):
            client = Client(f"http://127.0.0.1:{port}", admin)
            try:
                await until_up(client.http, log)
                figures = await timed_run(client, source, total)
                index = FollowingIndex(data)
                await index.open()
                try:
                    assert await index.live_count() >= total, "indexCurrent before the index was"
                    upto = await index.positions()
                finally:
                    await index.close()
                figures["fold_rate"] = await replay_rate(load(env), data, upto)
                for batch in (100, 1000):
                    t0 = time.perf_counter()
                    op = await client.trigger(type="fullReindex", batchSize=batch)
                    done = await client.wait_finished(op["id"], timeout=600)
                    assert done["status"] == "completed", done
                    rate = done["recordsProcessed"] / (time.perf_counter() - t0)
                    figures[f"reindex_{batch}"] = rate
            finally:
                await client.close()
    return figures


async def timed_run(client: Client, source: dict, total: int) -> dict[str, float]:
    t0 = time.perf_counter()
    response = await client.post(TRIGGER, {"type": "governanceSync"})
    trigger_ms = (time.perf_counter() - t0) * 1000
    await client.status(response.json()["operation"]["id"])
    visible_ms = (time.perf_counter() - t0) * 1000

    t0 = time.perf_counter()
    op = await client.trigger(type="pdsScan", pdsUrl=source["pds"])

    async def status_when(ready) -> dict:
        now = await client.status(op["id"])
        return now if ready(now) else None

    done = await eventually(
        lambda: status_when(lambda s: s["status"] != "running"),
        timeout=600,
        interval=0.01,
        what="pdsScan to finish",
    )
    completed = time.perf_counter()
    assert done["recordsProcessed"] == total, done
    await eventually(
        lambda: status_when(lambda s: s.get("indexCurrent")),
        timeout=60,
        interval=0.01,
        what="the index to hold the scan's records",
    )
    elapsed = time.perf_counter() - t0
    lag_ms = (time.perf_counter() - completed) * 1000
    return {
        "trigger_ms": trigger_ms,
        "visible_ms": visible_ms,
        "scan_s": elapsed,
        "index_lag_ms": lag_ms,
    }


async def replay_rate(settings: Settings, data: Path, upto: dict[int, int]) -> float:
    """Events per second of the audit's replay folding the records topic up to `upto` (as far
    as the service's index has) into a fresh index."""
    async with bootstrap_log(settings) as event_log:
        fresh = RecordIndex(data.parent / "replay.db")
        await fresh.open()
        try:
            t0 = time.perf_counter()
            await replay_into(event_log, fresh, upto)
            return sum(upto.values()) / (time.perf_counter() - t0)
        finally:
            await fresh.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--records", type=int, default=20000)
    args = parser.parse_args()
    repos = 10
    total = repos * (args.records // repos)
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(loopback_pds(total, repos))
        bootstrap, broker = stack.enter_context(kafka_broker())
        baseline = [await baseline_fetch(source) for _ in range(args.repeat)]
        base_rate = total / statistics.median(baseline)
        whole = [await baseline_get_repo(source) for _ in range(args.repeat)]
        whole_rate = total / statistics.median(whole)
        figures: dict = {
            "records": total,
            "repos": repos,
            "broker": broker,
            "baseline_listrecords_per_s": round(base_rate),
            "baseline_getrepo_per_s": round(whole_rate),
        }
        lines = [
            f"records: {total} in {repos} repos; broker: {broker}; repeat: {args.repeat}",
            f"baseline  fetch only (sequential listRecords): {base_rate:10.0f} records/s",
            f"baseline  fetch only (getRepo, as pdsScan):    {whole_rate:10.0f} records/s",
        ]
        for kind, servers in (("sqlite", None), ("kafka", bootstrap)):
            runs = [await one_run(servers, source, total, r) for r in range(args.repeat)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            rate = total / med["scan_s"]
            lags = sorted(r["index_lag_ms"] for r in runs)
            figures[kind] = {
                "trigger_ms": round(med["trigger_ms"], 1),
                "visible_ms": round(med["visible_ms"], 1),
                "pds_scan_per_s": round(rate),
                "pds_scan_of_getrepo": round(rate / whole_rate, 2),
                "pds_scan_of_listrecords": round(rate / base_rate, 2),
                "index_lag_ms_median": round(med["index_lag_ms"]),
                "index_lag_ms_worst": round(lags[-1]),
                "replay_fold_per_s": round(med["fold_rate"]),
                "reindex_100_per_s": round(med["reindex_100"]),
                "reindex_1000_per_s": round(med["reindex_1000"]),
                "reindex_100_of_fold": round(med["reindex_100"] / med["fold_rate"], 2),
                "reindex_1000_of_fold": round(med["reindex_1000"] / med["fold_rate"], 2),
            }
            lines += [
                f"{kind:7s} trigger response {med['trigger_ms']:6.1f} ms  "
                f"visible in status {med['visible_ms']:6.1f} ms  "
                f"pdsScan indexed {rate:8.0f} records/s  "
                f"({rate / whole_rate:.2f}x fetching the repos alone as pdsScan does; "
                f"{rate / base_rate:.2f}x sequential listRecords)",
                f"{kind:7s} completed -> indexCurrent in status: median "
                f"{med['index_lag_ms']:.0f} ms, worst of {len(lags)} {lags[-1]:.0f} ms",
                f"{kind:7s} fullReindex batchSize 100: {med['reindex_100']:8.0f} events/s "
                f"({med['reindex_100'] / med['fold_rate']:.2f}x), batchSize 1000: "
                f"{med['reindex_1000']:8.0f} events/s "
                f"({med['reindex_1000'] / med['fold_rate']:.2f}x the plain replay fold, "
                f"{med['fold_rate']:.0f} events/s)",
            ]
    print(json.dumps(figures, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
