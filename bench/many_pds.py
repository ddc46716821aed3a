"""pdsScan against many remote PDSes: 20 loopback PDSes (a process of their own) that each
answer every request after 50 ms, as a PDS across a network would.

- one service (`chive-backfill up`): a pdsScan of every PDS it knows, trigger to
  `indexCurrent`, in records/s, against the latency-bound ceiling of the configured
  concurrency: repos are read CHIVE_SOURCE_CONCURRENCY at a time, each read a request that
  takes at least the delay, after one round of listRepos: (ceil(repos / C) + 1) x delay;
- beside it, a client that only fetches what pdsScan fetches under the same bounds (what this
  machine's loopback servers allow);
- replicas (Apache Kafka only: the embedded log has one process): one pdsScan per PDS,
  triggered together, with one and then two `chive-backfill worker pdsScan` processes beside
  the API and the projector, trigger to the last completion; the ratio of the two.

Run: .venv/bin/python bench/many_pds.py [--pdses 20] [--repos 10] [--records 50]
     [--delay-ms 50] [--repeat 3] [--logs sqlite,kafka]
Prints one JSON object, then one line per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.service import STATUS, TRIGGER, bearer, process, serving, until_up
from services.settings import Settings
from testkit.broker import free_port, kafka_broker
from testkit.harness import Admin, service_env

PARTITIONS = 6  # the default: what a deployment spreads operations over
ASSIGNED = re.compile(r"assigned partitions \[([0-9, ]*)\]")


def remote_pdses(pdses: int, repos: int, records: int, delay_ms: int):
    """(plc url, [pds urls], [one DID per PDS]) served by a process of their own."""
    return serving(__file__, "--serve", str(pdses), str(repos), str(records), str(delay_ms))


def serve(pdses: int, repos: int, records: int, delay_ms: int) -> None:
    from testkit.servers import FakePds, FakePlc

    os.nice(10)  # someone else's servers: in production they are not on these cores
    plc = FakePlc().start()
    servers, dids = [], []
    for p in range(pdses):
        pds = FakePds(plc).start()
        for r in range(repos):
            did = f"did:plc:many{p:03d}x{r:04d}"
            pds.add_repo(did, {"pub.chive.graph.node": records})
            pds.repo_car(did)  # built now, not while the clock runs
        pds.faults.delay_s = delay_ms / 1000
        servers.append(pds)
        dids.append(f"did:plc:many{p:03d}x0000")
    print(json.dumps({"plc": plc.url, "pds": [s.url for s in servers], "dids": dids}), flush=True)
    sys.stdin.read()
    for pds in servers:
        pds.stop()
    plc.stop()


class Api:
    def __init__(self, http: httpx.AsyncClient, admin: Admin) -> None:
        self.http, self.admin = http, admin

    async def trigger(self, **body) -> str:
        r = await self.http.post(
            f"/xrpc/{TRIGGER}", json=body, headers=bearer(self.admin.token(TRIGGER))
        )
        assert r.status_code == 200, r.text
        return r.json()["operation"]["id"]

    async def status(self, op_id: str) -> dict:
        r = await self.http.get(
            f"/xrpc/{STATUS}", params={"id": op_id}, headers=bearer(self.admin.token(STATUS))
        )
        return r.json()["operation"]

    async def until(self, op_id: str, ready, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            op = await self.status(op_id)
            if ready(op):
                return op
            await asyncio.sleep(0.02)
        raise RuntimeError(f"operation {op_id} not done within {timeout} s")


async def fetch_alone(servers: dict, concurrency: int, per_pds: int) -> float:
    """Seconds for a client that only fetches what pdsScan fetches (each PDS's listRepos, then
    every repo with getRepo), under the same bounds, doing nothing with the bytes."""
    from bench.sources import get_repo
    from services import outbound
    from services.workers.source_slots import SourceSlots
    from testkit.handlers import LOOPBACK

    slots = SourceSlots(concurrency, per_pds)
    pending = iter(servers["pds"])

    async def scanner(fetcher: outbound.Fetcher) -> None:
        for url in pending:
            got = await fetcher.fetch(
                f"{url}/xrpc/com.atproto.sync.listRepos",
                params={"limit": 200},
                max_bytes=outbound.PAGE_BYTES,
                deadline_s=60,
            )
            dids = [r["did"] for r in json.loads(got.body)["repos"]]

            async def one(did: str, url: str = url) -> None:
                async with slots.held(url):
                    await get_repo(fetcher, url, did)

            await asyncio.gather(*(one(did) for did in dids))

    t0 = time.perf_counter()
    async with outbound.Fetcher(LOOPBACK) as fetcher:
        await asyncio.gather(*(scanner(fetcher) for _ in range(concurrency)))
    return time.perf_counter() - t0


async def one_service(servers: dict, total: int, repeat: int, kafka: str | None) -> list[float]:
    """Seconds of each pdsScan of every known PDS, trigger to indexCurrent."""
    admin = Admin()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = service_env(
            Path(tmp) / "data", port, servers["plc"], admin, kafka, f"many{time.time_ns()}"
        )
        with process([sys.executable, "-m", "services.cli", "up"], env, Path(tmp) / "up.log"):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as h:
                await until_up(h)
                api = Api(h, admin)
                # The service learns of the PDSes as it would: from syncs of accounts on them.
                for did in servers["dids"]:
                    op = await api.until(await api.trigger(type="didSync", did=did), _finished)
                    assert op["status"] == "completed", op
                out = []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    op_id = await api.trigger(type="pdsScan")
                    op = await api.until(op_id, lambda o: o.get("indexCurrent"))
                    out.append(time.perf_counter() - t0)
                    assert op["status"] == "completed" and op["recordsProcessed"] == total, op
    return out


async def replicas(servers: dict, total: int, workers: int, kafka: str) -> float:
    """Seconds from triggering one pdsScan per PDS to the last completion, with `workers`
    pdsScan worker processes."""
    admin = Admin()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        port = free_port()
        data = Path(tmp) / "data"
        env = service_env(
            data,
            port,
            servers["plc"],
            admin,
            kafka,
            f"rep{time.time_ns()}",
            CHIVE_PARTITIONS=str(PARTITIONS),
            CHIVE_LOG_LEVEL="INFO",  # the workers say which partitions they were given
        )
        cli = [sys.executable, "-m", "services.cli"]
        stack.enter_context(process([*cli, "api"], env, Path(tmp) / "api.log"))
        stack.enter_context(process([*cli, "projector"], env, Path(tmp) / "projector.log"))
        logs = [Path(tmp) / f"worker{i}.log" for i in range(workers)]
        for log in logs:
            stack.enter_context(process([*cli, "worker", "pdsScan"], env, log))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as h:
            await until_up(h)
            api = Api(h, admin)
            # Every worker holds its share of the partitions before the clock starts.
            await _group_formed(logs)
            t0 = time.perf_counter()
            ids = [await api.trigger(type="pdsScan", pdsUrl=url) for url in servers["pds"]]
            done = [await api.until(op_id, _finished) for op_id in ids]
            elapsed = time.perf_counter() - t0
    assert all(op["status"] == "completed" for op in done), done
    assert sum(op["recordsProcessed"] for op in done) == total, done
    return elapsed


async def _group_formed(logs: list[Path], timeout: float = 60) -> None:
    """Each worker's latest assignment is non-empty and together they cover every partition."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = []
        for log in logs:
            found = ASSIGNED.findall(log.read_text(errors="replace")) if log.exists() else []
            latest.append({int(p) for p in found[-1].split(",") if p.strip()} if found else set())
        if all(latest) and sum(len(a) for a in latest) == PARTITIONS:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the pdsScan group did not settle within {timeout} s")


def _finished(op: dict) -> bool:
    return op["status"] != "running"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pdses", type=int, default=20)
    parser.add_argument("--repos", type=int, default=10, help="per PDS")
    parser.add_argument("--records", type=int, default=50, help="per repo")
    parser.add_argument("--delay-ms", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--logs", default="sqlite,kafka")
    parser.add_argument("--serve", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    repos = args.pdses * args.repos
    total = repos * args.records
    concurrency, per_pds = Settings().source_concurrency, Settings().source_concurrency_per_pds
    ceiling_s = (math.ceil(repos / concurrency) + 1) * args.delay_ms / 1000
    figures: dict = {
        "pdses": args.pdses,
        "repos": repos,
        "records": total,
        "delay_ms": args.delay_ms,
        "source_concurrency": concurrency,
        "ceiling_records_per_s": round(total / ceiling_s),
        "one_service": {},
    }
    kinds = args.logs.split(",")
    with remote_pdses(args.pdses, args.repos, args.records, args.delay_ms) as servers:
        alone = [await fetch_alone(servers, concurrency, per_pds) for _ in range(args.repeat)]
        figures["fetch_alone_records_per_s"] = round(total / statistics.median(alone))
        with contextlib.ExitStack() as stack:
            bootstrap = None
            if "kafka" in kinds:
                bootstrap, _ = stack.enter_context(kafka_broker())
            for kind in kinds:
                runs = await one_service(
                    servers, total, args.repeat, bootstrap if kind == "kafka" else None
                )
                rate = total / statistics.median(runs)
                figures["one_service"][kind] = {
                    "records_per_s": round(rate),
                    "of_ceiling": round(rate / figures["ceiling_records_per_s"], 2),
                    "of_fetch_alone": round(rate / figures["fetch_alone_records_per_s"], 2),
                    "runs_s": [round(r, 2) for r in runs],
                }
            if bootstrap is not None:
                one = [await replicas(servers, total, 1, bootstrap) for _ in range(args.repeat)]
                two = [await replicas(servers, total, 2, bootstrap) for _ in range(args.repeat)]
                figures["replicas_kafka"] = {
                    "one_s": round(statistics.median(one), 2),
                    "two_s": round(statistics.median(two), 2),
                    "speedup": round(statistics.median(one) / statistics.median(two), 2),
                }
    print(json.dumps(figures, indent=2))
    print(
        f"{args.pdses} PDSes x {args.repos} repos x {args.records} records, {args.delay_ms} ms "
        f"per request; latency-bound ceiling at concurrency {concurrency}: "
        f"{figures['ceiling_records_per_s']} records/s; fetching alone under the same bounds: "
        f"{figures['fetch_alone_records_per_s']} records/s"
    )
    for kind, f in figures["one_service"].items():
        print(
            f"{kind}: pdsScan {f['records_per_s']} records/s = {f['of_ceiling']:.0%} of the "
            f"ceiling, {f['of_fetch_alone']:.0%} of fetching alone"
        )
    if "replicas_kafka" in figures:
        r = figures["replicas_kafka"]
        print(
            f"kafka: one pdsScan per PDS, 1 worker {r['one_s']} s, 2 workers {r['two_s']} s: "
            f"{r['speedup']}x"
        )


if __name__ == "__main__":
    asyncio.run(main())
