"""fullReindex's projection side: rebuild the serving record index from the records topic,
then switch to the new one atomically.

The new index is a file of its own (`records-<operation>.db`), folded from offset 0 in
transactions of `batch_size` events with the same fold as the live index; its tracking rows
are the checkpoint, so a crash resumes where the last batch committed and readers keep being
served from the old index meanwhile. To switch, the projector is paused, the new index folds
the events appended since, the pointer file names it (one rename), the projector carries on
writing it and reader connections move to it on their next query. The old file is removed
after. Poison events the live projection parked are counted and skipped alike.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from events import model
from events.log import EventLog, LogUnavailable, Message, caught_up_everywhere
from events.waiting import Backoff
from projections import index_location
from projections.records import RecordIndex
from projections.runner import ProjectionRunner, WritesInOrder, positions_after, prepared_fold

log = logging.getLogger(__name__)

POLL_S = 0.2


class Report(Protocol):
    async def __call__(
        self, folded: int, checkpoint: dict[str, Any], *, total: int, force: bool = False
    ) -> None:
        """Progress: record events folded into the new index so far, and the checkpoint a
        resumed rebuild starts from (`force`: durable before this returns)."""


class Reindexer:
    """Owns the rebuild-and-switch of one process's serving index: the index, the runner that
    folds into it and the data dir whose pointer names it. One rebuild at a time."""

    def __init__(
        self, event_log: EventLog, runner: ProjectionRunner, index: RecordIndex, data_dir: Path
    ) -> None:
        self._log = event_log
        self._runner = runner
        self._index = index
        self._data_dir = data_dir
        self._lock = asyncio.Lock()

    async def rebuild(
        self,
        operation_id: str,
        checkpoint: dict[str, Any] | None,
        batch_size: int,
        report: Report,
        check_cancelled: Callable[[], None],
    ) -> int:
        """Rebuild and switch; the record events the serving index has folded once done.
        `checkpoint`: the last one reported, when the operation resumes."""
        target = index_location.rebuild_path(self._data_dir, operation_id)
        async with self._lock:
            if self._index.path == target:
                # Switched already, then the process died before the operation completed.
                replaced = (checkpoint or {}).get("replacing")
                if replaced and replaced != target.name:
                    # A name from the log: only ever an index file of this data dir.
                    index_location.remove(index_location.index_file(self._data_dir, replaced))
                return _count(await self._index.positions())
            # What the live index has folded when the rebuild starts: known up front, and
            # what the rebuild must reach at least (events appended meanwhile come on top).
            total = (checkpoint or {}).get("total") or _count(self._runner.positions)
            fold = _Fold(self._log, RecordIndex(target), batch_size, total, report)
            await fold.index.open()
            switched = False
            try:
                await fold.to_end(check_cancelled)
                async with self._runner.paused():
                    # The tail appended during the rebuild; the live index is not written
                    # meanwhile, and a cancel no longer stops the switch.
                    await fold.to_end(None)
                    old = self._index.path
                    # Durable before the switch: a resumed operation knows which file to remove.
                    await report(
                        _count(await fold.index.positions()),
                        {**fold.checkpoint, "replacing": old.name},
                        total=total,
                        force=True,
                    )
                    index_location.switch_to(self._data_dir, target)
                    await self._index.take_over(fold.index)
                    switched = True
                    await self._runner.reseek()
                index_location.remove(old)
                log.info("fullReindex %s: serving %s, removed %s", operation_id, target, old)
                return _count(await self._index.positions())
            except asyncio.CancelledError:
                raise  # process shutdown: the file stays for the resumed operation
            except BaseException:
                if not switched:
                    await fold.index.close()  # before its file goes
                    index_location.remove(target)
                raise
            finally:
                await fold.index.close()  # a no-op once taken over by the live index


class _Fold:
    def __init__(
        self, event_log: EventLog, index: RecordIndex, batch_size: int, total: int, report: Report
    ) -> None:
        self._log = event_log
        self.index = index
        self._batch_size = max(1, batch_size)
        self._total = total
        self._report = report
        self.checkpoint = {"file": index.path.name, "total": total}

    async def to_end(self, check_cancelled: Callable[[], None] | None) -> None:
        """Fold the records topic into the index from its own positions to the end of the
        log. An outage of the log is waited out (capped backoff), reading on from what was
        committed."""
        backoff = Backoff()
        for attempt in itertools.count():
            try:
                await self._from_committed(check_cancelled)
                return
            except LogUnavailable as exc:
                log.warning("index rebuild: log unavailable, retrying: %s", exc)
                await asyncio.sleep(backoff.delay(attempt))

    async def _from_committed(self, check_cancelled: Callable[[], None] | None) -> None:
        positions = await self.index.positions()
        reader = self._log.reader(model.RECORDS_TOPIC, positions)
        # One batch is written while the next is read and prepared; progress is reported for
        # what has committed.
        writes = WritesInOrder()
        in_flight: dict[int, int] | None = None

        async def committed() -> None:
            nonlocal in_flight
            await writes.drain()
            if in_flight is not None:
                positions.update(in_flight)
                in_flight = None
                await self._report(_count(positions), self.checkpoint, total=self._total)

        try:
            await reader.start()
            pending: list[Message] = []
            while True:
                if check_cancelled:
                    check_cancelled()
                # What the log holds now; a poll that waits only when there is more to come
                # (at the end, a wait would only hold the rebuild up: twice per rebuild).
                messages = await reader.poll(0)
                if not messages and not await caught_up_everywhere(reader, self._log.partitions):
                    messages = await reader.poll(POLL_S)
                # A short batch only once the poll came back empty: the log has no more.
                batches, pending = _batches(
                    pending + messages, self._batch_size, drain=not messages
                )
                for batch in batches:
                    if check_cancelled:
                        check_cancelled()
                    write = prepared_fold(self.index, batch)
                    await committed()
                    in_flight = positions_after(batch)
                    await writes.submit(write)
                if not messages and await caught_up_everywhere(reader, self._log.partitions):
                    await committed()
                    return
        finally:
            await writes.settle()
            await reader.stop()


def _batches(
    messages: list[Message], size: int, *, drain: bool
) -> tuple[list[list[Message]], list[Message]]:
    """(full batches, the rest); with `drain` the rest is a batch too."""
    cut = len(messages) if drain else len(messages) - len(messages) % size
    batches = [messages[i : i + size] for i in range(0, cut, size)]
    return batches, messages[cut:]


def _count(positions: dict[int, int]) -> int:
    # Offsets start at 0 and are contiguous on both logs: the next offset is the number read.
    return sum(positions.values())
