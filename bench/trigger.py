"""Trigger latency and throughput, outside-in, against `chive-backfill up` run as a user runs it
(a subprocess: the API process beside the projector and the workers), on both logs, beside
the ceiling of a bare FastAPI JSON endpoint served by uvicorn in a process of its own, measured
in the same run:

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
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.light_http import LightClient, Response
from bench.service import (
    STATUS,
    TRIGGER,
    bearer,
    loopback_pds,
    percentiles,
    process,
    until_up,
    up,
)
from testkit.broker import free_port, kafka_broker, wait_for_port
from testkit.harness import Admin, Client, service_env

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
    with tempfile.TemporaryDirectory() as tmp, loopback_pds(scan_records, 20) as source:
        port, pds, log = free_port(), source["pds"], Path(tmp) / "up.log"
        namespace = f"trig{time.time_ns()}"
        env = service_env(Path(tmp) / "data", port, source["plc"], admin, kafka, namespace)
        with up(env, log):
            # Untimed calls (start a scan, look at it) through the tests' client.
            client = Client(f"http://127.0.0.1:{port}", admin)
            try:
                await until_up(client.http, log)
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
                        r = await light.post(f"/xrpc/{TRIGGER}", body, bearer(token))
                        assert r.status_code == 200, r.text
                        if ids is not None:
                            ids.append(r.json()["operation"]["id"])

                    return call

                def status_call(op_id: str, token: str):
                    async def call() -> Response:
                        return await light.get(f"/xrpc/{STATUS}", {"id": op_id}, bearer(token))

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
                        op = await client.status(op["id"])
                        scans[-1] = op
                    if op is None or op["status"] != "running":
                        scans.append(await client.trigger(type="pdsScan", pdsUrl=pds))
                        continue
                    during += await timed([trigger_call() for _ in range(20)])
                finals = [await client.wait_finished(op["id"], timeout=600) for op in scans]
                await light.aclose()
            finally:
                await client.close()
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
            "scan_errors": [
                f"{op['status']}: {op.get('error')}" for op in finals if op["status"] != "completed"
            ],
        },
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--scan-records", type=int, default=20000)
    parser.add_argument("--logs", default="sqlite,kafka")
    args = parser.parse_args()
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
            + (f"; not completed: {d['scan_errors']}" if d["scan_errors"] else "")
        )


if __name__ == "__main__":
    asyncio.run(main())
