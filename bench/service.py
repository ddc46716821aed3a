"""What the benches that run the service as a user runs it share: `chive-backfill up` (or a
role) as a subprocess, a loopback PDS in a process of its own, and the XRPC calls they time
around.

Run as a script (`--serve-pds RECORDS REPOS`), it is that PDS process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


TRIGGER = "pub.chive.admin.triggerBackfill"
STATUS = "pub.chive.admin.getBackfillStatus"
# The loopback PDS's repos hold records of this collection.
COLLECTION = "pub.chive.graph.edge"


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"p50_ms": round(statistics.median(ordered), 2), "p99_ms": round(p99, 2)}


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str] | None = None, log: Path | None = None):
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=out, stderr=out)
    failed = False
    try:
        yield proc
    except BaseException:
        failed = True
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()
            if failed:  # what the service said, before its temporary directory goes
                errors = [line for line in log.read_text().splitlines() if "ERROR" in line]
                said = "\n".join(errors[-12:]) or _tail(log)
                print(f"--- {log.name} said:\n{said}", file=sys.stderr)


def up(env: dict[str, str], log: Path):
    """`chive-backfill up` as a subprocess (the context manager of `process`)."""
    return process([sys.executable, "-m", "services.cli", "up"], env, log)


@contextlib.contextmanager
def serving(script: str, *args: str):
    """Loopback servers run by `script` with `args` in a process of their own: what it prints
    (one JSON line) once they are up. They stop when their stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        yield json.loads(proc.stdout.readline())
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def loopback_pds(records: int, repos: int):
    """A FakePlc and FakePds in a process of their own, `records` in `repos` repos of
    COLLECTION: {"plc": url, "pds": url, "dids": [...]}."""
    return serving(__file__, "--serve-pds", str(records), str(repos))


def serve_pds(records: int, repos: int) -> None:
    from testkit.servers import FakePds, FakePlc

    # A stand-in for someone else's server: in production it is not on this machine's cores,
    # so here it yields them to the service under test.
    os.nice(10)
    plc = FakePlc().start()
    pds = FakePds(plc).start()
    dids = [f"did:plc:benchpds{i:04d}" for i in range(repos)]
    for did in dids:
        pds.add_repo(did, {COLLECTION: records // repos})
    print(json.dumps({"plc": plc.url, "pds": pds.url, "dids": dids}), flush=True)
    sys.stdin.read()  # until the bench closes it
    pds.stop()
    plc.stop()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def until_up(http: httpx.AsyncClient, log: Path | None = None) -> None:
    """Until the API answers /xrpc/_health; RuntimeError (with the log's tail) after 60 s."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if (await http.get("/xrpc/_health")).status_code == 200:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"chive-backfill up did not answer within 60 s\n{_tail(log)}")


def _tail(log: Path | None) -> str:
    return log.read_text()[-3000:] if log and log.exists() else ""


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-pds"]:
        serve_pds(int(sys.argv[2]), int(sys.argv[3]))
