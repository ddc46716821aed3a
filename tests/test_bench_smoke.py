"""Each benchmark script runs at tiny sizes and prints its figures, so none can rot. (The
figures themselves are not checked here: benchmarks are not tests.)"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


async def run_bench(*args: str, timeout: float = 240, kafka: str | None = None) -> str:
    """`kafka`: the suite's broker, for a bench that runs on Kafka too (else it starts one)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if kafka:
        env["KAFKA_BOOTSTRAP_SERVERS"] = kafka
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, err.decode()[-3000:]
    return out.decode()


async def test_repo_sync_bench(atproto):  # the reference servers are installed by then
    out = await run_bench(
        "bench/repo_sync.py",
        "--repeat",
        "1",
        "--records",
        "200",
        "--fresh-repos",
        "3",
        "--fresh-records",
        "20",
    )
    figures = json.loads(out[: out.rindex("}") + 1])
    assert figures["unchanged_freshness"]["requests_to_pds"] == 1
    assert figures["reference_pds"]["records"] == 200
    assert figures["reference_pds"]["fetch_only_ratio"] > 0
    assert "overhead" in figures["verification"]


@pytest.mark.parametrize(
    "args, expect",
    [
        (("bench/api_latency.py", "--requests", "20"), "trigger (JWT, append)"),
        (("bench/backfill.py", "--repeat", "1", "--records", "200"), "fullReindex batchSize"),
        (
            ("bench/trigger.py", "--requests", "10", "--scan-records", "400"),
            "during a 400-record pdsScan",
        ),
        (
            ("bench/many_pds.py", "--pdses", "3", "--repos", "2", "--records", "5", "--repeat=1"),
            "one pdsScan per PDS, 1 worker",
        ),
    ],
    ids=["api_latency", "backfill", "trigger", "many_pds"],
)
async def test_bench_prints_its_figures(args, expect, kafka_bootstrap):
    out = await run_bench(*args, timeout=280, kafka=kafka_bootstrap)
    assert expect in out, out


async def test_fold_bench():
    out = await run_bench("bench/fold.py", "--operations", "50", "--repeat", "1")
    figures = json.loads(out[: out.rindex("}") + 1])
    assert figures["events"] == 50 * 23 and figures["fold_events_per_s"] > 0


async def test_replay_bench():
    out = await run_bench("bench/replay.py", "--events", "2300", "--repeat", "1")
    figures = json.loads(out[: out.rindex("}") + 1])
    # 2,000 records written, 200 updated, 100 deleted: every row a tombstone or live.
    assert figures["events"] == 2300 and figures["records"] == 2000
    assert figures["replay_verify_s"] > 0


async def test_memory_bench():
    out = await run_bench("bench/memory.py", "--records", "400,800")
    figures = json.loads(out[: out.rindex("}") + 1])
    assert [r["records"] for r in figures["runs"]] == [400, 800]
    assert all(r["peak_rss_mb"] >= r["idle_rss_mb"] > 0 for r in figures["runs"])


async def test_one_command_runs_the_benches_and_rates_each_target():
    out = await run_bench("bench/all.py", "--quick", "--only", "fold,replay")
    figures = json.loads(out[: out.rindex("}") + 1])
    assert set(figures) == {"fold", "replay"}
    rated = [line for line in out.splitlines() if line.startswith(("met", "NOT MET"))]
    assert [line.split(": ")[0].split("  ")[-1] for line in rated] == [
        "in-memory fold >= 60% of decoding, >= 300k events/s",
        "replay --verify of 1,000,000 events <= 60 s",
    ]
