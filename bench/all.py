"""Every figure of the performance targets in one command: runs each bench script (a process of
its own, one after another, so none competes with another for the cores), then prints all
their figures as one JSON object and one line per target: the figure, the target, met or not.

Run: .venv/bin/python bench/all.py [--quick] [--json out.json]
`--quick` runs every script at tiny sizes (minutes, figures meaningless): proof the command
works. Without it the sizes are the targets' own (20k-record scans, 1M-event replay, 200k-record
memory run); that took 11 minutes on this 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# script -> (arguments at full size, arguments with --quick)
SCRIPTS: dict[str, tuple[list[str], list[str]]] = {
    "trigger": ([], ["--requests", "10", "--scan-records", "400"]),
    "backfill": ([], ["--repeat", "1", "--records", "200"]),
    "many_pds": ([], ["--pdses", "3", "--repos", "2", "--records", "5", "--repeat", "1"]),
    "fold": ([], ["--operations", "50", "--repeat", "1"]),
    "replay": ([], ["--events", "2300", "--repeat", "1"]),
    "memory": ([], ["--records", "400,800", "--repo-records", "100"]),
    "repo_sync": (
        [],
        ["--repeat", "1", "--records", "200", "--fresh-repos", "3", "--fresh-records", "20"],
    ),
}


def run(script: str, args: list[str]) -> dict:
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{script}.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"bench/{script}.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
    figures, _ = json.JSONDecoder().raw_decode(done.stdout.lstrip())
    print(f"bench/{script}.py: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return figures


Row = tuple[str, Callable[[dict], str], Callable[[dict], bool]]


def _up(f: dict, log: str) -> dict:
    return next(u for u in f["trigger"]["up"] if u["log"] == log)


def _of_bare(f: dict, log: str) -> float:
    return _up(f, log)["per_s_32_clients"] / f["trigger"]["bare"]["per_s_32_clients"]


def rows() -> list[Row]:
    """(target, the figure as text, whether it meets the target)."""
    out: list[Row] = []
    for log, p50_target, ryw_target in (("sqlite", 3, 20), ("kafka", 8, 100)):
        out += [
            (
                f"trigger p50 <= {p50_target} ms, p99 <= 3x p50 ({log})",
                lambda f, log=log: (
                    "p50 {p50_ms} ms, p99 {p99_ms} ms".format(**_up(f, log)["sequential"])
                    + f" (bare {f['trigger']['bare']['p50_ms']} ms)"
                ),
                lambda f, log=log, t=p50_target: (
                    _up(f, log)["sequential"]["p50_ms"] <= t
                    and _up(f, log)["sequential"]["p99_ms"]
                    <= 3 * _up(f, log)["sequential"]["p50_ms"]
                ),
            ),
            (
                f"trigger throughput, 32 clients >= 50% of bare ({log})",
                lambda f, log=log: f"{_up(f, log)['per_s_32_clients']}/s = {_of_bare(f, log):.0%}",
                lambda f, log=log: (
                    _up(f, log)["per_s_32_clients"]
                    >= 0.5 * f["trigger"]["bare"]["per_s_32_clients"]
                ),
            ),
            (
                f"read-your-writes 100%, p99 <= {ryw_target} ms ({log})",
                lambda f, log=log: "{visible}, p99 {p99_ms} ms".format(
                    **_up(f, log)["read_your_writes"]
                ),
                lambda f, log=log, t=ryw_target: (
                    _up(f, log)["read_your_writes"]["p99_ms"] <= t
                    and len(set(_up(f, log)["read_your_writes"]["visible"].split("/"))) == 1
                ),
            ),
        ]
    out.append(
        (
            "trigger p99 <= 15 ms during a pdsScan (sqlite)",
            lambda f: f"p99 {_up(f, 'sqlite')['during_scan']['p99_ms']} ms",
            lambda f: _up(f, "sqlite")["during_scan"]["p99_ms"] <= 15,
        )
    )
    for log, target in (("sqlite", 0.6), ("kafka", 0.5)):
        out += [
            (
                f"pdsScan ingest >= {target:.0%} of fetching alone ({log})",
                lambda f, log=log: (
                    f"{f['backfill'][log]['pds_scan_per_s']}/s = "
                    f"{f['backfill'][log]['pds_scan_of_getrepo']:.0%} of getRepo fetching, "
                    f"{f['backfill'][log]['pds_scan_of_listrecords']:.0%} of listRecords paging"
                ),
                lambda f, log=log, t=target: f["backfill"][log]["pds_scan_of_getrepo"] >= t,
            ),
            (
                f"completed -> index current <= 1 s ({log})",
                lambda f, log=log: f"worst {f['backfill'][log]['index_lag_ms_worst']} ms",
                lambda f, log=log: f["backfill"][log]["index_lag_ms_worst"] <= 1000,
            ),
            (
                f"fullReindex >= 60% of a plain replay fold ({log})",
                lambda f, log=log: f"{f['backfill'][log]['reindex_1000_of_fold']:.0%}",
                lambda f, log=log: f["backfill"][log]["reindex_1000_of_fold"] >= 0.6,
            ),
        ]
    for log in ("sqlite", "kafka"):
        out.append(
            (
                f"pdsScan of 20 PDSes at 50 ms >= 80% of the latency-bound ceiling ({log})",
                lambda f, log=log: f"{f['many_pds']['one_service'][log]['of_ceiling']:.0%}",
                lambda f, log=log: f["many_pds"]["one_service"][log]["of_ceiling"] >= 0.8,
            )
        )
    out += [
        (
            "2 pdsScan replicas >= 1.8x one (kafka)",
            lambda f: f"{f['many_pds']['replicas_kafka']['speedup']}x",
            lambda f: f["many_pds"]["replicas_kafka"]["speedup"] >= 1.8,
        ),
        (
            "in-memory fold >= 60% of decoding, >= 300k events/s",
            lambda f: f"{f['fold']['fold_events_per_s']}/s = {f['fold']['ratio']:.0%}",
            lambda f: f["fold"]["ratio"] >= 0.6 and f["fold"]["fold_events_per_s"] >= 300_000,
        ),
        (
            "replay --verify of 1,000,000 events <= 60 s",
            lambda f: f"{f['replay']['replay_verify_s']} s for {f['replay']['events']} events",
            lambda f: f["replay"]["events"] >= 1_000_000 and f["replay"]["replay_verify_s"] <= 60,
        ),
        (
            "worker peak RSS <= 150 MB at 200k records, flat",
            lambda f: ", ".join(
                f"{r['peak_rss_mb']} MB at {r['records']}" for r in f["memory"]["runs"]
            ),
            lambda f: (
                f["memory"]["runs"][-1]["records"] >= 200_000
                and f["memory"]["runs"][-1]["peak_rss_mb"] <= 150
                and f["memory"]["runs"][-1]["peak_rss_mb"]
                <= 1.2 * f["memory"]["runs"][0]["peak_rss_mb"]
            ),
        ),
        (
            "#13 ingest vs listRecords >= 2.5x (reference PDS)",
            lambda f: (
                f"{f['repo_sync']['reference_pds']['ratio']}x (the PDS's requests alone: "
                f"{f['repo_sync']['reference_pds']['fetch_only_ratio']}x)"
            ),
            lambda f: f["repo_sync"]["reference_pds"]["ratio"] >= 2.5,
        ),
        (
            "#13 ingest vs listRecords >= 10x with 50 ms per request",
            lambda f: (
                f"{f['repo_sync']['reference_pds_plus_50ms']['ratio']}x (the PDS's requests "
                f"alone: {f['repo_sync']['reference_pds_plus_50ms']['fetch_only_ratio']}x)"
            ),
            lambda f: f["repo_sync"]["reference_pds_plus_50ms"]["ratio"] >= 10,
        ),
        (
            "#13 unchanged freshnessScan: <= 110 requests, < 5 s",
            lambda f: "{requests_to_pds} requests, {seconds} s".format(
                **f["repo_sync"]["unchanged_freshness"]
            ),
            lambda f: (
                f["repo_sync"]["unchanged_freshness"]["requests_to_pds"] <= 110
                and f["repo_sync"]["unchanged_freshness"]["seconds"] < 5
            ),
        ),
        (
            "#13 verification overhead <= 30%",
            lambda f: f"{f['repo_sync']['verification']['overhead']:.0%}",
            lambda f: f["repo_sync"]["verification"]["overhead"] <= 0.3,
        ),
    ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--only", help="comma-separated scripts (default: all)")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(SCRIPTS)
    figures = {name: run(name, SCRIPTS[name][1 if args.quick else 0]) for name in names}
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    for target, shown, met in rows():
        try:
            line, ok = shown(figures), met(figures)
        except (KeyError, StopIteration):
            continue  # its script was not run (--only)
        print(f"{'met    ' if ok else 'NOT MET'}  {target}: {line}")


if __name__ == "__main__":
    main()
