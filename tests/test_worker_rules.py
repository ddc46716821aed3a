"""The worker runner's rules, on the in-memory log with handlers written for each rule: what
starts, what an outcome becomes, how cancellation reaches the work, where a poison event goes,
what a restarted worker resumes from. Milliseconds each; the process-level crash and broker
tests show the same rules end to end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from events import dlq, model
from events.log import Entry, read_to_end
from events.memory_log import MemoryEventLog
from services.workers.context import OperationFailed, Outcome, Services, WorkContext
from services.workers.runner import WorkerService
from testkit.waiting import eventually

pytestmark = pytest.mark.unit

TYPE = "didSync"
Handler = Callable[[WorkContext], Awaitable[Outcome]]


async def request(log: MemoryEventLog, backfill_type: str = TYPE, **params) -> str:
    op_id = model.new_operation_id()
    event = model.new_event(
        model.BackfillRequested,
        op_id,
        backfill_type=backfill_type,
        params=params,
        requested_by="did:plc:admin",
        dedupe_key=f"{backfill_type}:{sorted(params.items())}:{op_id}",
    )
    await append(log, event)
    return op_id


async def append(log: MemoryEventLog, event: model.OperationEvent) -> None:
    entry = Entry(event.operation_id, model.encode(event), model.headers_for(event))
    await log.append(model.OPERATIONS_TOPIC, [entry])


async def history(log: MemoryEventLog, op_id: str) -> list[model.AnyEvent]:
    messages = await read_to_end(log, model.OPERATIONS_TOPIC)
    events = [model.decode(m.value) for m in messages if m.key == op_id]
    return events


async def outcome_of(log: MemoryEventLog, op_id: str) -> model.OperationEvent:
    final = (model.BackfillCompleted, model.BackfillFailed, model.BackfillCancelled)

    async def finished():
        return next((e for e in await history(log, op_id) if isinstance(e, final)), None)

    return await eventually(finished, timeout=5, what=f"{op_id} to finish")


@contextlib.asynccontextmanager
async def worker(log: MemoryEventLog, handler: Handler) -> AsyncIterator[WorkerService]:
    # The rules under test never reach a PDS or the PLC directory.
    services = Services(log, client=None, resolver=None)  # type: ignore[arg-type]
    service = WorkerService(TYPE, handler, services)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


@pytest.fixture
async def log() -> AsyncIterator[MemoryEventLog]:
    log = MemoryEventLog(partitions=3)
    await log.start()
    await log.ensure_topics([model.OPERATIONS_TOPIC, model.RECORDS_TOPIC, dlq.DLQ_TOPIC])
    yield log
    await log.close()


async def test_a_request_runs_once_and_its_outcome_is_the_completion(log):
    calls: list[dict] = []

    async def handler(ctx: WorkContext) -> Outcome:
        calls.append(ctx.params)
        await ctx.progress(3, {"at": 3}, force=True)
        return Outcome(records_processed=5, records_skipped=1, skip_reasons={"bad": 1})

    async with worker(log, handler):
        op_id = await request(log, did="did:plc:one")
        done = await outcome_of(log, op_id)
    assert calls == [{"did": "did:plc:one"}]
    assert isinstance(done, model.BackfillCompleted)
    assert (done.records_processed, done.records_skipped, done.skip_reasons) == (5, 1, {"bad": 1})
    kinds = [type(e).__name__ for e in await history(log, op_id)]
    assert kinds == ["BackfillRequested", "BackfillStarted", "BackfillProgressed", kinds[-1]]
    assert kinds[-1] == "BackfillCompleted"


async def test_requests_of_other_types_are_left_to_their_workers(log):
    async def handler(ctx: WorkContext) -> Outcome:
        return Outcome(records_processed=0)

    async with worker(log, handler):
        other = await request(log, "pdsScan", pdsUrl="https://pds.example")
        mine = await request(log, did="did:plc:two")
        await outcome_of(log, mine)
    assert [type(e).__name__ for e in await history(log, other)] == ["BackfillRequested"]


async def test_a_failure_names_its_reason_and_a_crash_is_an_internal_error(log):
    async def handler(ctx: WorkContext) -> Outcome:
        if ctx.params["did"] == "did:plc:gone":
            raise OperationFailed("DID did:plc:gone not found")
        raise KeyError("oops")

    async with worker(log, handler):
        failed = await request(log, did="did:plc:gone")
        crashed = await request(log, did="did:plc:bug")
        first, second = await outcome_of(log, failed), await outcome_of(log, crashed)
    assert isinstance(first, model.BackfillFailed)
    assert first.error == "DID did:plc:gone not found"
    assert isinstance(second, model.BackfillFailed)
    assert second.error == "internal error: KeyError: 'oops'"


async def test_a_cancel_reaches_the_running_work(log):
    started = asyncio.Event()

    async def handler(ctx: WorkContext) -> Outcome:
        started.set()
        while True:
            await ctx.progress(1, None)
            ctx.check_cancelled()
            await asyncio.sleep(0.01)

    async with worker(log, handler):
        op_id = await request(log, did="did:plc:slow")
        await asyncio.wait_for(started.wait(), 5)
        await append(
            log,
            model.new_event(
                model.BackfillCancelRequested,
                op_id,
                backfill_type=TYPE,
                requested_by="did:plc:admin",
            ),
        )
        done = await outcome_of(log, op_id)
    assert isinstance(done, model.BackfillCancelled)
    assert done.records_processed == 1


async def test_a_request_cancelled_before_it_started_never_runs(log):
    async def handler(ctx: WorkContext) -> Outcome:
        raise AssertionError("must not run")

    op_id = await request(log, did="did:plc:never")
    cancel = model.new_event(
        model.BackfillCancelRequested, op_id, backfill_type=TYPE, requested_by="did:plc:admin"
    )
    await append(log, cancel)
    async with worker(log, handler):
        done = await outcome_of(log, op_id)
    assert isinstance(done, model.BackfillCancelled)
    assert not any(isinstance(e, model.BackfillStarted) for e in await history(log, op_id))


async def test_an_undecodable_event_of_its_type_is_parked_and_the_work_goes_on(log):
    async def handler(ctx: WorkContext) -> Outcome:
        return Outcome(records_processed=1)

    poison = Entry("op-poison", b"{not json", {"event_type": "X", "backfill_type": TYPE})
    await log.append(model.OPERATIONS_TOPIC, [poison])
    async with worker(log, handler):
        op_id = await request(log, did="did:plc:after")
        assert isinstance(await outcome_of(log, op_id), model.BackfillCompleted)
    (parked,) = await dlq.read_all(log)
    assert (parked.key, parked.value, parked.consumer) == (
        "op-poison",
        b"{not json",
        f"worker:{TYPE}",
    )
    assert parked.reason.startswith("undecodable")


async def test_a_restarted_worker_resumes_from_the_last_checkpoint(log):
    reached = asyncio.Event()
    seen: list[dict | None] = []

    async def interrupted(ctx: WorkContext) -> Outcome:
        await ctx.progress(40, {"after": "repo-4"}, force=True)
        reached.set()
        await asyncio.Event().wait()  # the process dies here
        raise AssertionError("unreachable")

    async def resumed(ctx: WorkContext) -> Outcome:
        seen.append(ctx.checkpoint)
        return Outcome(records_processed=100)

    async with worker(log, interrupted):
        op_id = await request(log, did="did:plc:big")
        await asyncio.wait_for(reached.wait(), 5)
    async with worker(log, resumed):
        done = await outcome_of(log, op_id)
    assert seen == [{"after": "repo-4"}]
    assert isinstance(done, model.BackfillCompleted) and done.records_processed == 100
    starts = [e for e in await history(log, op_id) if isinstance(e, model.BackfillStarted)]
    assert [s.attempt for s in starts] == [1, 2]


async def test_outcomes_wait_out_a_log_outage(log):
    release = asyncio.Event()

    async def handler(ctx: WorkContext) -> Outcome:
        log.unavailable = True
        release.set()
        return Outcome(records_processed=7)

    async with worker(log, handler):
        op_id = await request(log, did="did:plc:outage")
        await asyncio.wait_for(release.wait(), 5)
        # The handler took the log down before it returned: the outcome's append fails, and
        # must be retried, not dropped, once the log is back.
        log.unavailable = False
        done = await outcome_of(log, op_id)
    assert isinstance(done, model.BackfillCompleted) and done.records_processed == 7


async def test_a_revocation_racing_the_consumers_stop_drops_each_operation_once(log):
    # Kafka revokes partitions (a missed heartbeat on a busy machine) while the worker's loop
    # drops them too: both stop the same running operation. Its cancellation takes a while
    # (a handler closing what it holds); neither drop may fail for the other's (a KeyError
    # there failed the revocation and then the whole worker process).
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(ctx: WorkContext) -> Outcome:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()
            raise
        raise AssertionError("never reached")

    async with worker(log, handler) as service:
        op_id = await request(log)
        await eventually(started.is_set, timeout=5, what="the operation to start")
        partition = log.partition_of(op_id)
        revoked = asyncio.create_task(service._revoked({partition}))
        dropped = asyncio.create_task(service._drop({partition}))
        await eventually(dropped.done, timeout=5, what="the second drop to return")
        release.set()
        await asyncio.wait_for(revoked, 5)
        assert dropped.exception() is None
        assert op_id not in service._ops and op_id not in service._running
