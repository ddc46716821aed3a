"""Trigger latency and throughput, outside-in, against `chive-backfill up` run as a user runs it
(a subprocess: the API process beside the work process), on both logs, beside the ceiling of a
bare FastAPI JSON endpoint served by uvicorn in a process of its own, measured in the same run:

- sequential triggers (JWT verified; each a didSync of a DID of its own, which the PLC does not
  know, so the work is small): p50 and p99;
- read-your-writes: a trigger, then at once its status: how many were visible (all, by
  design), and p50/p99 of the pair;
- 32 concurrent clients: triggers per second, against requests per second of the bare endpoint
  with the same clients;
- sequential triggers while a pdsScan of `--scan-records` records runs (a loopback PDS in a
  process of its own): in batches of 20, each begun while a scan runs (another is started when
  the last has finished).

Tokens are minted before the clock starts (a client mints once; the server verifies each).
Timed requests go through a minimal keep-alive HTTP/1.1 client (bench/light_http.py): httpx
spends about 2 ms of its own per request here, more than a bare endpoint's server does.

Run: .venv/bin/python bench/trigger.py [--requests 300] [--scan-records 20000] [--logs sqlite,kafka]
Prints one JSON object, then one line per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.light_http import LightClient, Response
from testkit.broker import free_port, kafka_broker, wait_for_port
from testkit.harness import Admin, service_env

TRIGGER = "pub.chive.admin.triggerBackfill"
STATUS = "pub.chive.admin.getBackfillStatus"
CLIENTS = 32

BARE = """
import sys, uvicorn
from fastapi import FastAPI
app = FastAPI()

@app.get("/ping")
async def ping() -> dict:
    return {"ok": True}

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"p50_ms": round(statistics.median(ordered), 2), "p99_ms": round(p99, 2)}


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str] | None = None, log: Path | None = None):
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()


@contextlib.contextmanager
def loopback_pds(records: int, repos: int):
    """A FakePlc and FakePds in a process of their own: (plc url, pds url)."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-pds", str(records), str(repos)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        urls = json.loads(proc.stdout.readline())
        yield urls["plc"], urls["pds"]
    finally:
        proc.stdin.close()
        proc.wait(timeout=20)


def serve_pds(records: int, repos: int) -> None:
    from testkit.servers import FakePds, FakePlc

    # A stand-in for someone else's server: in production it is not on this machine's cores,
    # so here it yields them to the service under test.
    os.nice(10)
    plc = FakePlc().start()
    pds = FakePds(plc).start()
    for i in range(repos):
        pds.add_repo(f"did:plc:trigbench{i:04d}", {"pub.chive.graph.edge": records // repos})
    print(json.dumps({"plc": plc.url, "pds": pds.url}), flush=True)
    sys.stdin.read()  # until the bench closes it
    pds.stop()
    plc.stop()


async def timed(calls: list) -> list[float]:
    out = []
    for call in calls:
        t0 = time.perf_counter()
        await call()
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def throughput(make_calls: list, clients: int) -> float:
    """Calls per second with `clients` concurrent callers working through `make_calls`."""
    queue = list(make_calls)

    async def client() -> None:
        while queue:
            await queue.pop()()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return len(make_calls) / (time.perf_counter() - t0)


async def bare_ceiling(n: int) -> dict:
    port = free_port()
    with process([sys.executable, "-c", BARE, str(port)]):
        wait_for_port("127.0.0.1", port)
        http = LightClient("127.0.0.1", port, CLIENTS)
        try:
            await timed([lambda: http.get("/ping")] * 20)  # warm
            sequential = await timed([lambda: http.get("/ping")] * n)
            rate = await throughput([lambda: http.get("/ping")] * (n * 4), CLIENTS)
        finally:
            await http.aclose()
    return {**percentiles(sequential), "per_s_32_clients": round(rate)}


async def service(kind: str, n: int, scan_records: int, kafka: str | None) -> dict:
    admin = Admin()
    with tempfile.TemporaryDirectory() as tmp, loopback_pds(scan_records, 20) as (plc, pds):
        port = free_port()
        env = service_env(Path(tmp) / "data", port, plc, admin, kafka, f"trig{time.time_ns()}")
        with process([sys.executable, "-m", "services.cli", "up"], env, Path(tmp) / "up.log"):
            limits = httpx.Limits(max_connections=CLIENTS)
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30
            ) as http:
                try:
                    await _until_up(http)
                except RuntimeError:
                    tail = (Path(tmp) / "up.log").read_text()[-3000:]
                    raise RuntimeError(f"chive-backfill up did not answer:\n{tail}") from None
                tokens = {
                    lxm: [admin.token(lxm, ttl_s=1800) for _ in range(n * 6)]
                    for lxm in (TRIGGER, STATUS)
                }
                counter = iter(range(10**9))
                # The timed calls go through the light client (bench/light_http.py).
                light = LightClient("127.0.0.1", port, CLIENTS)

                def take(lxm: str) -> str:
                    # Minted ahead; one more is minted only when a run needs more than that.
                    return tokens[lxm].pop() if tokens[lxm] else admin.token(lxm, ttl_s=1800)

                def trigger_call(ids: list | None = None):
                    token = take(TRIGGER)
                    body = {"type": "didSync", "did": f"did:plc:nobody{next(counter):07d}"}

                    async def call() -> None:
                        r = await light.post(f"/xrpc/{TRIGGER}", body, _bearer(token))
                        assert r.status_code == 200, r.text
                        if ids is not None:
                            ids.append(r.json()["operation"]["id"])

                    return call

                def status_call(op_id: str, token: str):
                    async def call() -> Response:
                        return await light.get(f"/xrpc/{STATUS}", {"id": op_id}, _bearer(token))

                    return call

                await timed([trigger_call() for _ in range(20)])  # warm
                sequential = await timed([trigger_call() for _ in range(n)])

                visible, pairs = 0, []
                for _ in range(n):
                    ids: list[str] = []
                    t0 = time.perf_counter()
                    await trigger_call(ids)()
                    r = await status_call(ids[0], take(STATUS))()
                    pairs.append((time.perf_counter() - t0) * 1000)
                    visible += r.status_code == 200 and r.json()["operation"]["id"] == ids[0]

                rate = await throughput([trigger_call() for _ in range(n * 2)], CLIENTS)

                # Triggers in batches of 20, each batch begun while a pdsScan runs (a new one
                # is started whenever the last has finished), until `n` are timed.
                during: list[float] = []
                scans: list[dict] = []
                while len(during) < n:
                    op = scans[-1] if scans else None
                    if op is not None:
                        op = await _scan_state(http, admin, op["id"])
                        scans[-1] = op
                    if op is None or op["status"] != "running":
                        r = await http.post(
                            f"/xrpc/{TRIGGER}",
                            json={"type": "pdsScan", "pdsUrl": pds},
                            headers=_bearer(admin.token(TRIGGER)),
                        )
                        scans.append(r.json()["operation"])
                        continue
                    during += await timed([trigger_call() for _ in range(20)])
                finals = [await _scan_done(http, admin, op["id"]) for op in scans]
                await light.aclose()
    return {
        "log": kind,
        "sequential": percentiles(sequential),
        "read_your_writes": {**percentiles(pairs), "visible": f"{visible}/{n}"},
        "per_s_32_clients": round(rate),
        "during_scan": {
            **percentiles(during),
            "scan_records": scan_records,
            "scans": len(finals),
            "scans_completed": sum(op["status"] == "completed" for op in finals),
            "scan_errors": [op.get("error") for op in finals if op["status"] != "completed"],
        },
    }


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def _until_up(http: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if (await http.get("/xrpc/_health")).status_code == 200:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError("chive-backfill up did not answer within 60 s")


async def _scan_state(http: httpx.AsyncClient, admin: Admin, op_id: str) -> dict:
    r = await http.get(
        f"/xrpc/{STATUS}", params={"id": op_id}, headers=_bearer(admin.token(STATUS))
    )
    return r.json()["operation"]


async def _scan_done(http: httpx.AsyncClient, admin: Admin, op_id: str) -> dict:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        op = await _scan_state(http, admin, op_id)
        if op["status"] != "running":
            return op
        await asyncio.sleep(0.2)
    raise RuntimeError("the pdsScan did not finish within 600 s")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--scan-records", type=int, default=20000)
    parser.add_argument("--logs", default="sqlite,kafka")
    parser.add_argument("--serve-pds", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_pds:
        serve_pds(*args.serve_pds)
        return
    figures: dict = {"bare": await bare_ceiling(args.requests), "up": []}
    for kind in args.logs.split(","):
        if kind == "kafka":
            with kafka_broker() as (bootstrap, _):
                figures["up"].append(
                    await service(kind, args.requests, args.scan_records, bootstrap)
                )
        else:
            figures["up"].append(await service(kind, args.requests, args.scan_records, None))
    print(json.dumps(figures, indent=2))
    bare = figures["bare"]
    print(
        f"bare endpoint: p50 {bare['p50_ms']} ms, p99 {bare['p99_ms']} ms, "
        f"{bare['per_s_32_clients']}/s with {CLIENTS} clients"
    )
    for f in figures["up"]:
        s, r, d = f["sequential"], f["read_your_writes"], f["during_scan"]
        print(
            f"{f['log']}: trigger p50 {s['p50_ms']} ms p99 {s['p99_ms']} ms "
            f"({s['p50_ms'] / bare['p50_ms']:.1f}x bare); trigger+status p50 {r['p50_ms']} ms "
            f"p99 {r['p99_ms']} ms, visible {r['visible']}; {f['per_s_32_clients']}/s with "
            f"{CLIENTS} clients ({f['per_s_32_clients'] / bare['per_s_32_clients']:.0%} of bare); "
            f"during a {d['scan_records']}-record pdsScan p50 {d['p50_ms']} ms p99 {d['p99_ms']} ms"
            f" ({d['scans']} scans, {d['scans_completed']} completed)"
        )


if __name__ == "__main__":
    asyncio.run(main())
