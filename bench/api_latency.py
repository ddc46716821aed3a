"""API latency, outside-in over HTTP: sequential JWT-authenticated triggers and status reads
against `chive-backfill up`'s parts in this process (embedded log), beside the ceiling of a
bare FastAPI JSON endpoint on uvicorn measured in the same run. Prints medians and p99.

    .venv/bin/python bench/api_latency.py [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from services import bootstrap
from services.atproto import keys
from services.settings import Settings

TRIGGER = "pub.chive.admin.triggerBackfill"
STATUS = "pub.chive.admin.getBackfillStatus"
SERVICE_DID = "did:web:bench.invalid"


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered):6.2f} ms  p99 {p99:6.2f} ms"


async def timed(n: int, call) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await call(i)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def baseline(n: int) -> list[float]:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict:
        return {"ok": True}

    server = uvicorn.Server(uvicorn.Config(app, port=0, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task  # it could not start: its error
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        samples = await timed(n, lambda _: http.get("/ping"))
    server.should_exit = True
    await task
    return samples


async def service(n: int) -> tuple[list[float], list[float]]:
    key = keys.PrivateKey.generate()
    did = key.public.did_key()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            port=0,
            service_did=SERVICE_DID,
            admin_dids=(did,),
            plc_url="http://127.0.0.1:9",
            rate_limit_per_minute=0,
        )
        stop, ready = asyncio.Event(), asyncio.get_running_loop().create_future()

        async def on_ready(port: int) -> None:
            ready.set_result(port)

        task = asyncio.create_task(bootstrap.run_all(settings, stop, on_ready))
        port = await asyncio.wait_for(ready, 30)

        def auth(lxm: str) -> dict[str, str]:
            token = keys.mint_service_jwt(key, iss=did, aud=SERVICE_DID, lxm=lxm)
            return {"authorization": f"Bearer {token}"}

        ids: list[str] = []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def trigger(i: int) -> None:
                # A DID of its own each time (no dedupe), whose lookup fails at once (the PLC
                # URL refuses connections): the worker's share of the loop stays small.
                body = {"type": "didSync", "did": f"did:plc:bench{i:06d}"}
                response = await http.post(f"/xrpc/{TRIGGER}", json=body, headers=auth(TRIGGER))
                ids.append(response.json()["operation"]["id"])

            async def status(i: int) -> None:
                await http.get(f"/xrpc/{STATUS}", params={"id": ids[i]}, headers=auth(STATUS))

            triggers = await timed(n, trigger)
            statuses = await timed(n, status)
        stop.set()
        await task
    return triggers, statuses


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    n = parser.parse_args().requests
    ceiling = await baseline(n)
    triggers, statuses = await service(n)
    print(f"bare FastAPI endpoint  {summary(ceiling)}")
    print(
        f"trigger (JWT, append)  {summary(triggers)}  "
        f"({statistics.median(triggers) / statistics.median(ceiling):.0f}x the bare endpoint)"
    )
    print(
        f"status by id (JWT)     {summary(statuses)}  "
        f"({statistics.median(statuses) / statistics.median(ceiling):.0f}x the bare endpoint)"
    )


if __name__ == "__main__":
    asyncio.run(main())
