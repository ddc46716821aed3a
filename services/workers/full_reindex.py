"""fullReindex: rebuild the record index from the records topic, then switch to it atomically.

Runs in the process of the projector whose index it rebuilds (under `up`, or beside
`chive-backfill projector`). The new index is a file of its own (`records-<operation>.db`),
folded from offset 0 in transactions of `batchSize` events with the same fold as the live
index; its tracking rows are the checkpoint, so a crash resumes where the last batch committed
and readers keep being served from the old index meanwhile. To switch, the projector is paused,
the new index folds the events appended since, the pointer file names it (one rename), the
projector carries on writing it and reader connections move to it on their next query. The old
file is removed after. recordsProcessed = record events folded into the new index (poison
events the live projection parked are counted and skipped alike).
"""

from __future__ import annotations

import asyncio
import logging

from events import model
from events.log import LogUnavailable, Message, caught_up_everywhere
from projections import index_location
from projections.records import RecordIndex
from projections.runner import apply_isolated, positions_after
from services.workers.context import OperationFailed, Outcome, WorkContext

log = logging.getLogger(__name__)

POLL_S = 0.2
RETRY_DELAY_S = 0.2
MAX_RETRY_DELAY_S = 5.0


async def run(ctx: WorkContext) -> Outcome:
    runner, data_dir = ctx.services.projector, ctx.services.data_dir
    if runner is None or data_dir is None:
        raise OperationFailed(
            "fullReindex runs in the projector's process (chive-backfill up or projector)"
        )
    live = runner.projection
    assert isinstance(live, RecordIndex)
    batch_size = max(1, int(ctx.params.get("batchSize", model.FULL_REINDEX_BATCH_SIZE)))
    target = index_location.rebuild_path(data_dir, ctx.operation_id)
    async with ctx.services.reindex_lock:
        if live.path == target:
            # Switched already, then the process died before the operation completed.
            replaced = (ctx.checkpoint or {}).get("replacing")
            if replaced and replaced != target.name:
                # A name from the log: only ever an index file of this data dir.
                index_location.remove(index_location.index_file(data_dir, replaced))
            folded = _count(await live.positions())
            return Outcome(records_processed=folded, total_records=folded)
        # What the live index has folded when the rebuild starts: known up front, and what
        # the rebuild must reach at least (events appended meanwhile come on top).
        total = (ctx.checkpoint or {}).get("total") or _count(runner.positions)
        progress = {"file": target.name, "total": total}
        fresh = RecordIndex(target)
        await fresh.open()
        switched = False
        try:
            await _fold_to_end(ctx, fresh, batch_size, progress, cancellable=True)
            async with runner.paused():
                # The tail appended during the rebuild; the live index is not written meanwhile.
                await _fold_to_end(ctx, fresh, batch_size, progress, cancellable=False)
                old = live.path
                # Durable before the switch: a resumed operation knows which file to remove.
                await ctx.progress(
                    _count(await fresh.positions()),
                    {**progress, "replacing": old.name},
                    total_records=total,
                    force=True,
                )
                index_location.switch_to(data_dir, target)
                await live.adopt(fresh)
                switched = True
                await runner.reseek()
            index_location.remove(old)
            log.info("fullReindex %s: serving %s, removed %s", ctx.operation_id, target, old)
            folded = _count(await live.positions())
            return Outcome(records_processed=folded, total_records=folded)
        except asyncio.CancelledError:
            raise  # process shutdown: the file stays for the resumed operation
        except BaseException:
            if not switched:
                await fresh.close()  # before its file goes
                index_location.remove(target)
            raise
        finally:
            await fresh.close()  # a no-op once adopted by the live index


async def _fold_to_end(
    ctx: WorkContext,
    fresh: RecordIndex,
    batch_size: int,
    checkpoint: dict,
    *,
    cancellable: bool,
) -> None:
    """Fold the records topic into `fresh` from its own positions to the end of the log, in
    transactions of `batch_size` events. An outage of the log is waited out (capped backoff),
    reading on from what was committed."""
    event_log = ctx.services.event_log
    delay = RETRY_DELAY_S
    while True:
        positions = await fresh.positions()
        reader = event_log.reader(model.RECORDS_TOPIC, positions)
        try:
            await reader.start()
            pending: list[Message] = []
            while True:
                if cancellable:
                    ctx.check_cancelled()
                messages = await reader.poll(POLL_S)
                # A short batch only once the poll came back empty: the log has no more now.
                batches, pending = _batches(pending + messages, batch_size, drain=not messages)
                for batch in batches:
                    if cancellable:
                        ctx.check_cancelled()
                    await apply_isolated(fresh, batch)
                    positions.update(positions_after(batch))
                    await ctx.progress(
                        _count(positions), checkpoint, total_records=checkpoint["total"]
                    )
                if not messages and await caught_up_everywhere(reader, event_log.partitions):
                    return
        except LogUnavailable as exc:
            log.warning("fullReindex %s: log unavailable, retrying: %s", ctx.operation_id, exc)
            await asyncio.sleep(delay)
            delay = min(MAX_RETRY_DELAY_S, delay * 2)
        finally:
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
