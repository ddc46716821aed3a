"""One worker service: the consumer group of one backfill type.

It folds the operations topic (same fold as the projection) for operations of its type, runs
each unfinished one and resumes it from its last checkpoint. It tells CommitOrder
(commit_order.py) what it consumed and which operations are unfinished, and commits what that
allows: never past the request of an unfinished operation, so a worker that restarts, or takes
the partition over, re-reads that request and everything after it. Work starts only once the
partition is caught up, so a finished operation is never redone and a resumed one starts from
its newest checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec

from events import dlq, model
from events.log import (
    Entry,
    EventLog,
    GroupConsumer,
    LogUnavailable,
    Message,
    append_patiently,
)
from events.waiting import sleep_unless_stopped
from projections.operations import Operation, duplicate_of, fold
from services.logs import operation_fields
from services.workers.commit_order import CommitOrder
from services.workers.context import (
    Cancelled,
    OperationFailed,
    Outcome,
    Services,
    WorkContext,
)

log = logging.getLogger(__name__)

Handler = Callable[[WorkContext], Awaitable[Outcome]]

_RETRY_DELAY_S = 1.0


def group_name(backfill_type: str) -> str:
    return f"chive-backfill.worker.{backfill_type}"


def worker_id(backfill_type: str) -> str:
    return f"{backfill_type}@{socket.gethostname()}:{os.getpid()}"


@dataclass
class _Tracked:
    op: Operation
    partition: int
    request_offset: int


def _log_outcome(final: model.OperationEvent, worker: str) -> None:
    fields = operation_fields(final.operation_id, final.backfill_type, worker=worker)
    if isinstance(final, model.BackfillCompleted):
        log.info(
            "backfill completed: %s %s, %d records (%d skipped, %d deleted)",
            final.backfill_type,
            final.operation_id,
            final.records_processed,
            final.records_skipped,
            final.records_deleted,
            extra={**fields, "status": "completed"},
        )
    elif isinstance(final, model.BackfillFailed):
        log.warning(
            "backfill failed: %s %s: %s",
            final.backfill_type,
            final.operation_id,
            final.error,
            extra={**fields, "status": "failed", "error": final.error},
        )
    else:
        log.info(
            "backfill cancelled: %s %s",
            final.backfill_type,
            final.operation_id,
            extra={**fields, "status": "cancelled"},
        )


class WorkerService:
    def __init__(self, backfill_type: str, handler: Handler, services: Services) -> None:
        self.backfill_type = backfill_type
        self._handler = handler
        self._services = services
        self._log: EventLog = services.event_log
        self._id = worker_id(backfill_type)
        self._ops: dict[str, _Tracked] = {}
        self._running: dict[str, tuple[asyncio.Task, WorkContext]] = {}
        self._order = CommitOrder()
        self._consumer: GroupConsumer | None = None
        self._outage: str | None = "not started"

    # -- lifecycle -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            consumer = self._log.group_consumer(
                model.OPERATIONS_TOPIC,
                group_name(self.backfill_type),
                on_assigned=self._assigned,
                on_revoked=self._revoked,
            )
            self._consumer = consumer
            try:
                await consumer.start()
                while not stop.is_set():
                    messages = await consumer.poll(0.2)
                    self._outage = None
                    poison = [p for m in messages if (p := self._consume(m)) is not None]
                    # Parked before the commit moves past them: a skipped event is never lost.
                    await dlq.park(self._log, poison)
                    await self._start_ready(consumer)
                    await self._commit(consumer)
            except LogUnavailable as exc:
                self._outage = str(exc) or type(exc).__name__
                log.warning("%s: log unavailable, retrying: %s", self._id, exc)
                await sleep_unless_stopped(stop, _RETRY_DELAY_S)
            finally:
                await self._drop(
                    self._order.partitions() | {t.partition for t in self._ops.values()}
                )
                await consumer.stop()
                self._consumer = None

    def readiness(self) -> str | None:
        """Why this worker is not ready (it cannot read the log); None when it is."""
        if self._outage is not None:
            return f"worker {self.backfill_type}: log unavailable: {self._outage}"
        return None

    async def _assigned(self, partitions: set[int]) -> None:
        log.info("%s: assigned partitions %s", self._id, sorted(partitions))

    async def _revoked(self, partitions: set[int]) -> None:
        # The new owner resumes these operations from their checkpoints.
        if self._consumer is not None:
            await self._commit(self._consumer)
        await self._drop(partitions)

    async def _drop(self, partitions: set[int]) -> None:
        for op_id, tracked in list(self._ops.items()):
            if tracked.partition in partitions:
                await self._stop_quietly(op_id)
                # While its work stopped, another drop (a revocation racing the consumer's
                # stop) may have forgotten it already, or a new assignment tracked it anew.
                if self._ops.get(op_id) is tracked:
                    del self._ops[op_id]
        self._order.drop(partitions)

    async def _stop_quietly(self, op_id: str) -> None:
        running = self._running.pop(op_id, None)
        if running is not None:
            task, _ctx = running
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # -- folding -------------------------------------------------------------------------
    def _consume(self, message: Message) -> dlq.DeadLetter | None:
        """Fold one message; an undecodable one of our type comes back as a dead letter."""
        self._order.consumed(message.partition, message.offset)
        if message.headers.get("backfill_type") != self.backfill_type:
            return None
        try:
            event = model.decode(message.value)
        except model.DecodeError as exc:
            log.error(
                "%s: parking undecodable event %s@%s: %s",
                self._id,
                message.partition,
                message.offset,
                exc,
            )
            return dlq.letter(message, f"undecodable: {exc}", f"worker:{self.backfill_type}")
        if not isinstance(event, model.OperationEvent):
            return None
        tracked = self._ops.get(event.operation_id)
        before = tracked.op if tracked else None
        if before is None and isinstance(event, model.BackfillRequested):
            # Every operation a co-located request can duplicate is in this partition, and
            # tracked here while unfinished: the same answer the projections reach.
            mine = (t.op for t in self._ops.values() if t.partition == message.partition)
            if duplicate_of(event, mine) is not None:
                return None
        after = fold(before, event)
        if after is None:
            return None
        if tracked is None:
            tracked = _Tracked(after, message.partition, message.offset)
            self._ops[event.operation_id] = tracked
        self._track(tracked, after)
        if after.finished:
            running = self._running.get(event.operation_id)
            if running is not None and not running[0].done():
                # Finished elsewhere (another replica before a rebalance): stop our copy.
                running[0].cancel()
        elif after.cancel_requested:
            running = self._running.get(event.operation_id)
            if running is not None:
                running[1].request_cancel()
        return None

    # -- scheduling ----------------------------------------------------------------------
    async def _start_ready(self, consumer: GroupConsumer) -> None:
        caught_up: dict[int, bool] = {}
        for op_id, tracked in list(self._ops.items()):
            if tracked.op.finished or op_id in self._running:
                continue
            p = tracked.partition
            if p not in caught_up:
                caught_up[p] = await consumer.caught_up(p)
            if not caught_up[p]:
                continue
            if tracked.op.cancel_requested:
                await self._finish(tracked, self._cancelled(tracked.op, None))
                continue
            self._start(tracked)

    def _start(self, tracked: _Tracked) -> None:
        op = tracked.op
        ctx = WorkContext(
            operation_id=op.id,
            backfill_type=op.type,
            params=op.params,
            checkpoint=op.checkpoint,
            services=self._services,
            append_operation_event=self._append,
        )
        task = asyncio.create_task(self._execute(tracked, ctx), name=f"backfill-{op.id}")
        self._running[op.id] = (task, ctx)
        task.add_done_callback(lambda _t, op_id=op.id: self._forget_task(op_id, task))

    def _forget_task(self, op_id: str, task: asyncio.Task) -> None:
        if self._running.get(op_id, (None,))[0] is task:
            del self._running[op_id]

    async def _execute(self, tracked: _Tracked, ctx: WorkContext) -> None:
        op = tracked.op
        await self._append(
            model.new_event(
                model.BackfillStarted,
                op.id,
                backfill_type=op.type,
                worker=self._id,
                attempt=op.attempts + 1,
            )
        )
        log.info(
            "backfill started: %s %s by %s (attempt %d)",
            op.type,
            op.id,
            self._id,
            op.attempts + 1,
            extra=operation_fields(op.id, op.type, worker=self._id),
        )
        heartbeat = asyncio.create_task(ctx.heartbeat())
        try:
            outcome = await self._handler(ctx)
            final: model.OperationEvent = model.new_event(
                model.BackfillCompleted,
                op.id,
                backfill_type=op.type,
                records_processed=outcome.records_processed,
                total_records=outcome.total_records,
                records_skipped=outcome.records_skipped,
                skip_reasons=outcome.skip_reasons,
                records_deleted=outcome.records_deleted,
                sources=outcome.sources,
            )
        except Cancelled:
            final = self._cancelled(op, ctx.records_processed)
        except OperationFailed as exc:
            final = self._failed(op, str(exc), ctx.records_processed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s: operation %s crashed", self._id, op.id)
            final = self._failed(
                op, f"internal error: {type(exc).__name__}: {exc}", ctx.records_processed
            )
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
        await self._finish(tracked, final)

    async def _finish(self, tracked: _Tracked, final: model.OperationEvent) -> None:
        through = await self._records_end()
        if through is not None:
            final = msgspec.structs.replace(final, records_through=through)
        await self._append(final)
        self._track(tracked, fold(tracked.op, final) or tracked.op)
        _log_outcome(final, self._id)

    def _track(self, tracked: _Tracked, op: Operation) -> None:
        tracked.op = op
        if op.finished:
            self._order.finished(op.id)
        else:
            self._order.unfinished(op.id, tracked.partition, tracked.request_offset)

    async def _append(self, event: model.OperationEvent) -> None:
        """Append, waiting out a log outage: an outcome must not be lost."""
        entry = Entry(event.operation_id, model.encode(event), model.headers_for(event))
        await append_patiently(self._log, model.OPERATIONS_TOPIC, [entry])

    async def _records_end(self) -> dict[int, int] | None:
        """The records topic's end offsets: the operation's record events are all below
        them (appended, acknowledged, before it finished). None when the log cannot say: the
        outcome is not held back for it, its status then does not tell whether the index
        has caught up."""
        try:
            return await self._log.end_offsets(model.RECORDS_TOPIC)
        except LogUnavailable as exc:
            log.warning("%s: records topic end unknown: %s", self._id, exc)
            return None

    def _cancelled(self, op: Operation, records: int | None) -> model.BackfillCancelled:
        return model.new_event(
            model.BackfillCancelled,
            op.id,
            backfill_type=op.type,
            records_processed=records,
        )

    def _failed(self, op: Operation, error: str, records: int | None) -> model.BackfillFailed:
        return model.new_event(
            model.BackfillFailed,
            op.id,
            backfill_type=op.type,
            error=error,
            records_processed=records,
        )

    # -- commit order --------------------------------------------------------------------
    async def _commit(self, consumer: GroupConsumer) -> None:
        offsets = self._order.due()
        if offsets:
            await consumer.commit(offsets)
            self._order.committed(offsets)
        # Finished operations below every pending request are never re-read: forget them.
        for op_id, tracked in list(self._ops.items()):
            if tracked.op.finished and op_id not in self._running:
                if self._order.behind_commit(tracked.partition, tracked.request_offset):
                    del self._ops[op_id]
