"""Audit replay: fold the log from the start into fresh projections and compare them with the
live ones. The replay stops exactly where each live projection stands, so a running service
can be verified too; any difference is a bug in a fold or lost work."""

from __future__ import annotations

import tempfile
from pathlib import Path

import msgspec

from events.log import EventLog, Message
from projections import index_location
from projections.operations import OperationsStore
from projections.records import RecordIndex
from projections.runner import WritesInOrder, positions_after, prepared_fold
from projections.tracking import TrackedStore

REPLAY_BATCH = 5000


async def replay_into(event_log: EventLog, store: TrackedStore, upto: dict[int, int]) -> None:
    """Fold `store.topic` from offset 0 up to (not including) `upto` per partition. The next
    batch is read and prepared while the last one is written (WritesInOrder)."""
    done: dict[int, int] = {}

    def finished() -> bool:
        return all(done.get(p, 0) >= upto.get(p, 0) for p in range(event_log.partitions))

    if finished():
        return
    reader = event_log.reader(store.topic)
    await reader.start()
    writes = WritesInOrder()
    try:
        while not finished():
            # Polls gathered into batches of a few thousand: fewer transactions and hops.
            messages: list[Message] = []
            while len(messages) < REPLAY_BATCH and not finished():
                got = [m for m in await reader.poll(0.2) if m.offset < upto.get(m.partition, 0)]
                messages += got
                done.update(positions_after(got))
            if messages:
                await writes.submit(prepared_fold(store, messages))
        await writes.drain()
    finally:
        await writes.settle()
        await reader.stop()


PROJECTIONS = ("operations", "records")


async def verify(
    event_log: EventLog, data_dir: Path, projections: tuple[str, ...] = PROJECTIONS
) -> dict:
    """{"operations": n, "records": m, "differences": [...]} for the live projections of
    `data_dir` named in `projections` (a deployment keeps each where its process runs: the
    operations projection beside the API, the record index beside the projector)."""
    differences: list[str] = []
    counts = {}
    where = {
        "operations": (OperationsStore, data_dir / "api-operations.db"),
        "records": (RecordIndex, index_location.active_path(data_dir)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in projections:
            cls, path = where[name]
            if not path.exists():
                raise FileNotFoundError(f"no live {name} projection at {path}")
            live, fresh = cls(path), cls(Path(tmp) / path.name, scratch=True)
            await live.open()
            await fresh.open()
            try:
                await replay_into(event_log, fresh, await live.positions())
                if name == "operations":
                    counts[name], found = await _operation_differences(live, fresh)
                else:
                    # Compared inside SQLite, table by table: an index of millions of records
                    # never has to fit in this process's memory twice.
                    counts[name], found = await live.count(), await live.differences(fresh.path)
                differences += found
            finally:
                await live.close()
                await fresh.close()
    return {**counts, "differences": differences}


async def _operation_differences(
    live: OperationsStore, fresh: OperationsStore
) -> tuple[int, list[str]]:
    a = {o.id: msgspec.to_builtins(o) for o in await live.all()}
    b = {o.id: msgspec.to_builtins(o) for o in await fresh.all()}
    count = len(a)
    a |= {f"alias {k}": v for k, v in (await live.aliases()).items()}
    b |= {f"alias {k}": v for k, v in (await fresh.aliases()).items()}
    return count, [
        f"operations {key}: live {a.get(key)!r} != replayed {b.get(key)!r}"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key)
    ]
