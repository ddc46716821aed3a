"""Worker memory while scanning: the peak resident set of `chive-backfill up`'s workers
process (pdsScan among them; the projector's is printed beside it) during a pdsScan of N
records on a loopback PDS (a process of its own), for each N given, in repos of the same size
(--repo-records): a repo is verified whole before it is indexed, so memory follows the largest
repo read at once, and must not follow how many records the scan reads in all. Flat in the
record count means the largest scan peaks where the smallest does (the ratio is printed).

The peak is the kernel's high-water mark of the process (VmHWM), read when the scan has
finished, so no sample can miss it.

Run: .venv/bin/python bench/memory.py [--records 50000,200000] [--repo-records 2500]
     [--logs sqlite]
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

from bench.service import loopback_pds, until_up, up
from testkit.broker import free_port, kafka_broker
from testkit.harness import Admin, Client, service_env


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(c) for c in text]
    return found


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def role_process(up_pid: int, role: bytes) -> int:
    """The child of `up` running `chive-backfill <role>`."""
    for child in children(up_pid):
        if role in Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0"):
            return child
    raise RuntimeError(f"no {role.decode()} process under chive-backfill up")


async def one(records: int, repo_records: int, kafka: str | None) -> dict:
    admin = Admin()
    repos = max(1, records // repo_records)
    with tempfile.TemporaryDirectory() as tmp, loopback_pds(records, repos) as source:
        port = free_port()
        namespace = f"mem{time.time_ns()}"
        env = service_env(Path(tmp) / "data", port, source["plc"], admin, kafka, namespace)
        log = Path(tmp) / "up.log"
        with up(env, log) as service:
            client = Client(f"http://127.0.0.1:{port}", admin)
            try:
                await until_up(client.http, log)
                work = role_process(service.pid, b"workers")
                projector = role_process(service.pid, b"projector")
                idle_kib = status_kib(work, "VmRSS")
                t0 = time.perf_counter()
                op = await client.trigger(type="pdsScan", pdsUrl=source["pds"])
                done = await client.wait_finished(op["id"], timeout=600)
                elapsed = time.perf_counter() - t0
                peak_kib = status_kib(work, "VmHWM")
                projector_kib = status_kib(projector, "VmHWM")
            finally:
                await client.close()
    assert done["status"] == "completed" and done["recordsProcessed"] == records, done
    return {
        "records": records,
        "repos": repos,
        "log": "kafka" if kafka else "sqlite",
        "idle_rss_mb": round(idle_kib / 1024, 1),
        "peak_rss_mb": round(peak_kib / 1024, 1),
        "projector_peak_rss_mb": round(projector_kib / 1024, 1),
        "scan_s": round(elapsed, 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", default="50000,200000")
    parser.add_argument("--repo-records", type=int, default=2500)
    parser.add_argument("--logs", default="sqlite")
    args = parser.parse_args()
    sizes = [int(n) for n in args.records.split(",")]
    runs = []
    for kind in args.logs.split(","):
        if kind == "kafka":
            with kafka_broker() as (bootstrap, _):
                runs += [await one(n, args.repo_records, bootstrap) for n in sizes]
        else:
            runs += [await one(n, args.repo_records, None) for n in sizes]
    print(json.dumps({"runs": runs}, indent=2))
    for kind in args.logs.split(","):
        mine = [r for r in runs if r["log"] == kind]
        first, last = mine[0], mine[-1]
        print(
            f"{kind}: workers process peak RSS "
            + ", ".join(f"{r['peak_rss_mb']} MB at {r['records']} records" for r in mine)
            + f" (idle {first['idle_rss_mb']} MB; largest/smallest peak "
            f"{last['peak_rss_mb'] / first['peak_rss_mb']:.2f}x; target <= 150 MB, flat; "
            f"projector peak {last['projector_peak_rss_mb']} MB)"
        )


if __name__ == "__main__":
    asyncio.run(main())
