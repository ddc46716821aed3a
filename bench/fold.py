"""The operations fold in memory (what an audit replay and a worker's view of its own
operations do), against the ceiling of decoding the same event bytes with msgspec alone,
measured in the same run; medians of repeated runs.

Events are a realistic mix: per operation a request, a start, progress events, a completion.

Run: .venv/bin/python bench/fold.py [--operations 20000] [--progress 20] [--repeat 5]
Prints one JSON object, then one line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from events import model
from projections.operations import fold


def events(operations: int, progress: int) -> list[bytes]:
    out = []
    for i in range(operations):
        op = f"01op{i:022d}"
        key = f"didSync:did:plc:fold{i}"
        common = {"backfill_type": "didSync"}
        out.append(
            model.BackfillRequested(
                event_id=f"{op}r",
                operation_id=op,
                occurred_at=i,
                params={"did": f"did:plc:{i}"},
                requested_by="did:key:zadmin",
                dedupe_key=key,
                colocated=True,
                **common,
            )
        )
        out.append(
            model.BackfillStarted(
                event_id=f"{op}s", operation_id=op, occurred_at=i + 1, worker="bench", **common
            )
        )
        for n in range(progress):
            out.append(
                model.BackfillProgressed(
                    event_id=f"{op}p{n}",
                    operation_id=op,
                    occurred_at=i + 2 + n,
                    records_processed=(n + 1) * 100,
                    checkpoint={"repo": n},
                    **common,
                )
            )
        out.append(
            model.BackfillCompleted(
                event_id=f"{op}c",
                operation_id=op,
                occurred_at=i + 3 + progress,
                records_processed=progress * 100,
                **common,
            )
        )
    return [model.encode(e) for e in out]


def decode_only(raw: list[bytes]) -> int:
    return len([model.decode(b) for b in raw])


def decode_and_fold(raw: list[bytes]) -> int:
    state: dict[str, object] = {}
    for b in raw:
        event = model.decode(b)
        new = fold(state.get(event.operation_id), event)
        if new is not None:
            state[event.operation_id] = new
    return len(state)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--operations", type=int, default=20000)
    parser.add_argument("--progress", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    raw = events(args.operations, args.progress)
    times: dict[str, list[float]] = {"decode": [], "fold": []}
    for _ in range(args.repeat):
        for name, fn in (("decode", decode_only), ("fold", decode_and_fold)):
            t0 = time.perf_counter()
            fn(raw)
            times[name].append(time.perf_counter() - t0)
    decode_rate = len(raw) / statistics.median(times["decode"])
    fold_rate = len(raw) / statistics.median(times["fold"])
    figures = {
        "events": len(raw),
        "decode_events_per_s": round(decode_rate),
        "fold_events_per_s": round(fold_rate),
        "ratio": round(fold_rate / decode_rate, 2),
    }
    print(json.dumps(figures, indent=2))
    print(
        f"operations fold in memory: {figures['fold_events_per_s']} events/s, "
        f"{figures['ratio']:.0%} of msgspec decoding alone ({figures['decode_events_per_s']}/s, "
        f"{figures['events']} events)"
    )


if __name__ == "__main__":
    main()
