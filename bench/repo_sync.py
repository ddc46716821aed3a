"""Figures for verified repo sync (getRepo), each a median over repeated runs, with the
ratio against a baseline measured in the same run:

- ingest on the reference PDS (@atproto/pds from npm, on loopback): the worker's getRepo path
  (fetch the CAR, check every block and the commit signature, walk the tree, build the record
  events, append them to an in-memory log) against its listRecords path (describeRepo, then
  pages of 100, same client, same events, same log), both reading `--concurrency` repos at a
  time (pdsScan's default per PDS), and once more one repo at a time;
- the same with 50 ms added to every request (a proxy in front of the PDS: a remote server);
- freshnessScan of an unchanged index (repos on the loopback PDS, indexed by didSync): time and
  requests to the PDS;
- verification overhead: reading a CAR verified (every block against its CID, the commit's
  signature, the tree's order and shape) and decoding its records, against what a client that
  trusts the PDS does with the same CAR: read the blocks, walk the tree, decode the records.

Run: .venv/bin/python bench/repo_sync.py [--repeat 3] [--records 4800] [--repos 4]
        [--concurrency 4] [--fresh-repos 100] [--fresh-records 1000]
Prints one JSON object, then one line per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from events import model
from events.log import read_to_end
from events.memory_log import MemoryEventLog
from projections.index_reader import FoldedHere
from projections.records import RecordIndex
from projections.runner import ProjectionRunner
from services import outbound
from services.atproto import car, repo
from services.settings import Settings
from services.workers import did_sync, freshness_scan
from services.workers.repo_scan import PAGE_SIZE, ListRecords, chive_collections, scan_repo
from services.workers.repo_sync import read_repo
from testkit.atproto_reference import reference_atproto
from testkit.handlers import LOOPBACK, services_for, work_context
from testkit.proxy import CuttableProxy
from testkit.servers import FakePds, FakePlc


async def ingest(fetcher, plc_url: str, pds_url: str, dids: list[str], path: str, concurrency: int):
    """(seconds, record events appended) reading `dids` by `path`, `concurrency` repos at a
    time (as pdsScan does, up to its per-PDS concurrency)."""
    log = MemoryEventLog(6)
    await log.start()
    ctx = work_context(services_for(fetcher, plc_url, log, attempts=2, timeout_s=60), "didSync", {})
    slots = asyncio.Semaphore(concurrency)

    async def on_page(events, _position, _skipped) -> None:
        await ctx.emit_records(events)

    async def read(did: str) -> None:
        async with slots:
            if path == "getRepo":
                assert await read_repo(ctx, pds_url, did) is not None
            else:
                await scan_repo(ctx, pds_url, did, on_page)

    start = time.perf_counter()
    await asyncio.gather(*(read(did) for did in dids))
    seconds = time.perf_counter() - start
    events = await read_to_end(log, model.RECORDS_TOPIC)
    return seconds, sum(m.headers["event_type"] == "RecordUpserted" for m in events)


async def fetch_only(
    fetcher, plc_url: str, pds_url: str, dids: list[str], path: str, concurrency: int
) -> float:
    """Seconds to make the requests `path` makes for `dids`, doing nothing with the answers."""
    client = services_for(fetcher, plc_url, MemoryEventLog(6), attempts=2, timeout_s=60).client
    slots = asyncio.Semaphore(concurrency)

    def dropped() -> Callable[[bytes], None]:
        return lambda _chunk: None

    async def read(did: str) -> None:
        async with slots:
            if path == "getRepo":
                await client.stream_into(
                    pds_url, "com.atproto.sync.getRepo", {"did": did}, outbound.REPO_BYTES, dropped
                )
                return
            for collection in await chive_collections(client, pds_url, did):
                cursor = None
                while True:
                    params = {"repo": did, "collection": collection, "limit": PAGE_SIZE}
                    page = await client.query(
                        pds_url,
                        "com.atproto.repo.listRecords",
                        {**params, "cursor": cursor},
                        ListRecords,
                    )
                    cursor = page.cursor
                    if not page.records or cursor is None:
                        break

    start = time.perf_counter()
    await asyncio.gather(*(read(did) for did in dids))
    return time.perf_counter() - start


async def reference_ingest(args) -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp, reference_atproto(Path(tmp)) as ref:
        dids = []
        per_repo = args.records // args.repos
        for i in range(args.repos):
            account = ref.create_account(f"bench{i}")
            account.create_records(
                "pub.chive.eprint.submission",
                [
                    {
                        "$type": "pub.chive.eprint.submission",
                        "title": f"Eprint {i}-{n}: a title of a typical length for a paper",
                        "abstract": "An abstract. " * 40,
                        "createdAt": "2026-11-01T00:00:00.000Z",
                    }
                    for n in range(per_repo)
                ],
            )
            dids.append(account.did)
        port = int(ref.pds_url.rsplit(":", 1)[1])
        total = per_repo * args.repos
        for delay, concurrency in ((0.0, args.concurrency), (0.05, args.concurrency), (0.0, 1)):
            proxy = CuttableProxy(port, request_delay_s=delay)
            base = f"http://127.0.0.1:{proxy.port}"
            try:
                runs: dict[str, list[float]] = {"getRepo": [], "listRecords": []}
                fetched: dict[str, list[float]] = {"getRepo": [], "listRecords": []}
                async with outbound.Fetcher(LOOPBACK) as fetcher:
                    # One untimed round first: the PDS (Node) compiles its hot paths on the
                    # first requests of each kind, and the first runs were up to twice as slow.
                    for repeat in range(args.repeat + 1):
                        for path in runs:
                            seconds, records = await ingest(
                                fetcher, ref.plc_url, base, dids, path, concurrency
                            )
                            assert records == total, (path, records)
                            alone = await fetch_only(
                                fetcher, ref.plc_url, base, dids, path, concurrency
                            )
                            if repeat:
                                runs[path].append(total / seconds)
                                fetched[path].append(total / alone)
            finally:
                proxy.stop()
            name = "reference_pds" + ("_plus_50ms" if delay else "")
            name += "_one_repo_at_a_time" if concurrency == 1 else ""
            car_rate = statistics.median(runs["getRepo"])
            list_rate = statistics.median(runs["listRecords"])
            car_fetch = statistics.median(fetched["getRepo"])
            list_fetch = statistics.median(fetched["listRecords"])
            out[name] = {
                "records": total,
                "repos": args.repos,
                "concurrency": concurrency,
                "getRepo_records_per_s": round(car_rate),
                "listRecords_records_per_s": round(list_rate),
                "ratio": round(car_rate / list_rate, 2),
                "fetch_only_getRepo_records_per_s": round(car_fetch),
                "fetch_only_listRecords_records_per_s": round(list_fetch),
                "fetch_only_ratio": round(car_fetch / list_fetch, 2),
            }
    return out


async def unchanged_freshness(args) -> dict:
    plc = FakePlc().start()
    pds = FakePds(plc).start()
    try:
        dids = [f"did:plc:fresh{i:04d}" for i in range(args.fresh_repos)]
        for did in dids:
            pds.add_repo(did, {"pub.chive.eprint.submission": args.fresh_records})
        with tempfile.TemporaryDirectory() as tmp:
            log = MemoryEventLog(6)
            await log.start()
            index = RecordIndex(Path(tmp) / "records.db")
            await index.open()
            runner = ProjectionRunner(log, index, "records")
            stop = asyncio.Event()
            folding = asyncio.create_task(runner.run(stop))
            try:
                async with outbound.Fetcher(LOOPBACK) as fetcher:
                    services = services_for(fetcher, plc.url, log, index=FoldedHere(index, runner))
                    for did in dids:
                        await did_sync.run(work_context(services, "didSync", {"did": did}))
                    seconds, requests = [], []
                    for _ in range(args.repeat):
                        before = sum(pds.calls.values())
                        start = time.perf_counter()
                        scan = work_context(services, "freshnessScan", {})
                        outcome = await freshness_scan.run(scan)
                        seconds.append(time.perf_counter() - start)
                        requests.append(sum(pds.calls.values()) - before)
                        total = args.fresh_repos * args.fresh_records
                        assert outcome.records_processed == total, outcome
            finally:
                stop.set()
                await folding
                await index.close()
    finally:
        pds.stop()
        plc.stop()
    return {
        "records": args.fresh_repos * args.fresh_records,
        "repos": args.fresh_repos,
        "seconds": round(statistics.median(seconds), 3),
        "requests_to_pds": max(requests),
    }


def verification_overhead(args) -> dict:
    from testkit import repo_car

    did = "did:plc:benchverify"
    records = {
        f"pub.chive.eprint.submission/3k{i:010d}": {
            "$type": "pub.chive.eprint.submission",
            "title": f"Eprint {i}: a title of a typical length for a paper",
            "abstract": "An abstract. " * 40,
        }
        for i in range(args.records)
    }
    data = repo_car.build_car(did, records, "3kbenchbenchb")
    key = repo_car.repo_key(did).public

    def verified() -> int:
        return len(repo.verify(data, did, key).entries)  # records decoded as the blocks are read

    def decoded() -> int:
        # What a client that trusts the PDS does with the same CAR, to the same output (each
        # record's CID as text and its JSON form): read the blocks (no hash), walk the tree to
        # list the records (no order or shape checks), decode them; no signature. With the
        # fastest decoder the verified path uses (these records hold no link).
        roots, blocks = _unchecked_car(data)
        found: list = []

        def walk(cid) -> None:
            node = car.decode_plain(blocks[cid])
            previous = b""
            if node["l"] is not None:
                walk(node["l"])
            for entry in node["e"]:
                previous = previous[: entry["p"]] + entry["k"]
                found.append((previous.decode(), entry["v"]))
                if entry["t"] is not None:
                    walk(entry["t"])

        walk(car.decode(blocks[roots[0]])["data"])
        out = [
            (
                key,
                car.cid_text(cid),
                msgspec.json.encode(car.to_json(car.decode_plain(blocks[cid]))),
            )
            for key, cid in found
        ]
        return len(out)

    times = {"verified": [], "decoded": []}
    for _ in range(max(args.repeat, 9)):
        for name, fn in (("verified", verified), ("decoded", decoded)):
            # As timeit does: the collector off while timing, so neither side pays for
            # garbage the other left.
            gc.collect()
            gc.disable()
            try:
                start = time.perf_counter()
                assert fn() == len(records)
                times[name].append(time.perf_counter() - start)
            finally:
                gc.enable()
    v, d = statistics.median(times["verified"]), statistics.median(times["decoded"])
    return {
        "records": len(records),
        "car_bytes": len(data),
        "verified_s": round(v, 4),
        "decoded_s": round(d, 4),
        "overhead": round(v / d - 1, 3),
    }


def _unchecked_car(data: bytes) -> tuple[list, dict]:
    view, pos, blocks = memoryview(data), 0, {}
    length, pos = car._frame(view, pos)
    roots = car.decode(bytes(view[pos : pos + length]))["roots"]
    pos += length
    while pos < len(view):
        length, pos = car._frame(view, pos)
        blocks[bytes(view[pos : pos + 36])] = bytes(view[pos + 36 : pos + length])
        pos += length
    return roots, blocks


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--records", type=int, default=4800)
    parser.add_argument("--repos", type=int, default=4)
    # pdsScan's default: repos read at once from one PDS (CHIVE_SOURCE_CONCURRENCY_PER_PDS).
    parser.add_argument("--concurrency", type=int, default=Settings().source_concurrency_per_pds)
    parser.add_argument("--fresh-repos", type=int, default=100)
    parser.add_argument("--fresh-records", type=int, default=1000)
    args = parser.parse_args()
    figures = await reference_ingest(args)
    figures["unchanged_freshness"] = await unchanged_freshness(args)
    figures["verification"] = verification_overhead(args)
    print(json.dumps(figures, indent=2))
    for name, f in figures.items():
        if name.startswith("reference_pds"):
            print(
                f"{name}: getRepo {f['getRepo_records_per_s']} rec/s, listRecords "
                f"{f['listRecords_records_per_s']} rec/s, ratio {f['ratio']}x ({f['records']} "
                f"records in {f['repos']} repos, {f['concurrency']} at a time); the requests "
                f"alone: {f['fetch_only_ratio']}x"
            )
    f = figures["unchanged_freshness"]
    print(
        f"unchanged freshnessScan: {f['records']} records in {f['repos']} repos, "
        f"{f['seconds']} s, {f['requests_to_pds']} requests to the PDS"
    )
    f = figures["verification"]
    print(
        f"verification: {f['verified_s']} s verified vs {f['decoded_s']} s decoded "
        f"({f['records']} records): overhead {f['overhead'] * 100:.0f}%"
    )


if __name__ == "__main__":
    asyncio.run(main())
