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
from services.workers.index_pages import Handled, each_page
from services.workers.repo_scan import get_record
from services.workers.xrpc_client import SourceUnavailable, XrpcCallError

PAGE = 100
GONE = {"RecordNotFound", "RepoNotFound"}


class Checkpoint(msgspec.Struct):
    after: str = ""
    checked: int = 0
    deleted: int = 0
    total: int | None = None
    unreachable: dict[str, int] = {}


class _Circuit:
    def __init__(self, opens_after: int) -> None:
        self.failures = 0
        self._opens_after = opens_after

    @property
    def open(self) -> bool:
        return self.failures >= self._opens_after


async def run(ctx: WorkContext) -> Outcome:
    index = await caught_up_index(ctx)
    state = from_checkpoint(ctx.checkpoint, Checkpoint)
    if state.total is None:
        state.total = await index.live_count()
    limits = ctx.services.limits
    overall = asyncio.Semaphore(limits.source_concurrency)
    per_pds: dict[str, asyncio.Semaphore] = defaultdict(
        lambda: asyncio.Semaphore(limits.source_concurrency_per_pds)
    )
    circuits: dict[str, _Circuit] = defaultdict(lambda: _Circuit(limits.source_circuit_failures))

    async def check(record: IndexedRecord) -> Handled:
        try:
            pds = await pds_of(ctx.services, record.did)
        except OperationFailed as exc:
            return str(exc), None
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

    async def on_page(page: list[IndexedRecord], results: list[Handled]) -> None:
        for outcome, _ in results:
            if outcome == "deleted":
                state.deleted += 1
            elif outcome not in ("changed", "unchanged"):
                state.unreachable[outcome] = state.unreachable.get(outcome, 0) + 1
        state.checked += len(page)
        state.after = page[-1].uri
        await ctx.progress(state.checked, to_checkpoint(state), total_records=state.total)

    await each_page(ctx, state.after, lambda after: index.live_page(after, PAGE), check, on_page)
    return Outcome(
        records_processed=state.checked,
        total_records=state.total,
        records_skipped=sum(state.unreachable.values()),
        skip_reasons=dict(state.unreachable),
        records_deleted=state.deleted,
    )
