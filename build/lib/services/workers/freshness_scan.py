"""freshnessScan: every live record of the index, checked against its source.

Streams the worker's replica of the record index in uri order, a page at a time, and fetches
each record (com.atproto.repo.getRecord) from its owner's PDS (DID documents cached): a new cid
is an upsert with the fresh value, RecordNotFound a delete (the index keeps a tombstone), the
same cid nothing. Concurrency is bounded overall and per PDS, and each PDS has a circuit that
opens after consecutive failures, so one dead PDS fails fast instead of stalling the scan; the
records it held are reported per PDS in skipReasons. recordsProcessed = records checked;
totalRecords = live records when the scan started.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import msgspec

from events import model
from projections.records import IndexedRecord
from services.workers.context import (
    OperationFailed,
    Outcome,
    WorkContext,
    caught_up_index,
    from_checkpoint,
    pds_of,
    to_checkpoint,
)
from services.workers.repo_scan import get_record
from services.workers.xrpc_client import SourceUnavailable, XrpcCallError

PAGE = 100
CONCURRENCY = 8
PER_PDS = 2
CIRCUIT_FAILURES = 3
GONE = {"RecordNotFound", "RepoNotFound"}


class Checkpoint(msgspec.Struct):
    after: str = ""
    checked: int = 0
    deleted: int = 0
    total: int | None = None
    unreachable: dict[str, int] = {}


class _Circuit:
    def __init__(self) -> None:
        self.failures = 0

    @property
    def open(self) -> bool:
        return self.failures >= CIRCUIT_FAILURES


async def run(ctx: WorkContext) -> Outcome:
    index = await caught_up_index(ctx)
    state = from_checkpoint(ctx.checkpoint, Checkpoint)
    if state.total is None:
        state.total = await index.live_count()
    overall = asyncio.Semaphore(CONCURRENCY)
    per_pds: dict[str, asyncio.Semaphore] = defaultdict(lambda: asyncio.Semaphore(PER_PDS))
    circuits: dict[str, _Circuit] = defaultdict(_Circuit)

    async def check(record: IndexedRecord) -> tuple[str, model.RecordEvent | None]:
        try:
            pds = await pds_of(ctx.services, record.did)
        except OperationFailed as exc:
            return f"unresolvable {record.did}: {exc}", None
        circuit = circuits[pds]
        if circuit.open:
            return f"PDS unreachable: {pds}", None
        async with overall, per_pds[pds]:
            if circuit.open:
                return f"PDS unreachable: {pds}", None
            try:
                fetched = await get_record(
                    ctx.services.client, pds, record.did, record.collection, record.rkey
                )
            except SourceUnavailable:
                circuit.failures += 1
                return f"PDS unreachable: {pds}", None
            except XrpcCallError as exc:
                circuit.failures = 0
                if exc.error in GONE:
                    return "deleted", model.new_event(
                        model.RecordDeleted,
                        ctx.operation_id,
                        uri=record.uri,
                        did=record.did,
                        collection=record.collection,
                        rkey=record.rkey,
                    )
                return f"refused: {exc.error}", None
        circuit.failures = 0
        if fetched.cid == record.cid:
            return "unchanged", None
        return "changed", model.new_event(
            model.RecordUpserted,
            ctx.operation_id,
            uri=record.uri,
            did=record.did,
            collection=record.collection,
            rkey=record.rkey,
            cid=fetched.cid or "",
            value=fetched.value,
        )

    while True:
        ctx.check_cancelled()
        page = await index.live_page(state.after, PAGE)
        if not page:
            break
        results = await asyncio.gather(*(check(r) for r in page))
        await ctx.emit_records([event for _, event in results if event is not None])
        for outcome, _ in results:
            if outcome == "deleted":
                state.deleted += 1
            elif outcome not in ("changed", "unchanged"):
                state.unreachable[outcome] = state.unreachable.get(outcome, 0) + 1
        state.checked += len(page)
        state.after = page[-1].uri
        await ctx.progress(state.checked, to_checkpoint(state), total_records=state.total)
    return Outcome(
        records_processed=state.checked,
        total_records=state.total,
        records_skipped=sum(state.unreachable.values()),
        skip_reasons=dict(state.unreachable),
        records_deleted=state.deleted,
    )
