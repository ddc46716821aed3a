"""What a backfill handler sees of the world while it runs one operation.

A handler reads its parameters and resume checkpoint, appends the record events it finds,
reports progress (throttled here: at most every CHIVE_PROGRESS_INTERVAL_S or
CHIVE_PROGRESS_RECORDS records, with a heartbeat while a unit of work is slow) and checks
for cancellation between units of work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from events import model
from events.log import Entry, EventLog, append_patiently
from projections.index_reader import IndexAccess
from projections.rebuild import Reindexer
from projections.records import RecordIndex
from services.atproto.identity import DidNotFound, DidResolver, ResolutionError, pds_endpoint
from services.logs import operation_fields
from services.settings import Settings
from services.workers.grobid import Grobid
from services.workers.pdf_text import PdfTextPool
from services.workers.source_slots import SourceSlots
from services.workers.xrpc_client import XrpcClient

INDEX_READY_S = 60.0
# A progress line in the log at most this often per operation (events come more often).
PROGRESS_LOG_S = 5.0

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """Raised at a unit-of-work boundary once a cancel was requested."""


class OperationFailed(Exception):
    """The operation cannot complete; the message is the operation's `error`."""


@dataclass
class Outcome:
    records_processed: int
    total_records: int | None = None
    records_skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    records_deleted: int = 0
    sources: list[str] = field(default_factory=list)


class Limits(msgspec.Struct, frozen=True):
    """The tunables of the work: the Settings fields of these names (which document them)."""

    source_concurrency: int
    source_concurrency_per_pds: int
    source_circuit_failures: int
    extraction_concurrency: int
    progress_interval_s: float
    progress_records: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        names = (f.name for f in msgspec.structs.fields(cls))
        return cls(**{name: getattr(settings, name) for name in names})


@dataclass
class Services:
    """Shared clients a handler may use."""

    event_log: EventLog
    client: XrpcClient
    resolver: DidResolver
    # The governance PDS and the repo on it that holds the knowledge graph.
    governance_pds_url: str = "https://governance.chive.pub"
    governance_did: str | None = None
    # The record index, for the types that read it: a replica of the worker process's own,
    # or the projector's (projections/index_reader.py).
    index: IndexAccess | None = None
    # The projector's index rebuild when the projector runs in this process (fullReindex).
    reindexer: Reindexer | None = None
    # GROBID for citationExtraction; None: the worker extracts PDF text itself, in `pdf`.
    grobid: Grobid | None = None
    pdf: PdfTextPool | None = None
    limits: Limits = field(default_factory=lambda: Limits.of(Settings()))
    # Requests in flight to sources, bounded for the process (made from `limits`).
    slots: SourceSlots = field(init=False)

    def __post_init__(self) -> None:
        self.slots = SourceSlots(
            self.limits.source_concurrency, self.limits.source_concurrency_per_pds
        )


Appender = Callable[[model.OperationEvent], Awaitable[None]]


class WorkContext:
    def __init__(
        self,
        *,
        operation_id: str,
        backfill_type: str,
        params: dict[str, Any],
        checkpoint: dict[str, Any] | None,
        services: Services,
        append_operation_event: Appender,
    ) -> None:
        self.operation_id = operation_id
        self.backfill_type = backfill_type
        self.params = params
        self.checkpoint = checkpoint
        self.services = services
        self._limits = services.limits
        self._append = append_operation_event
        self._cancel = asyncio.Event()
        self._lock = asyncio.Lock()
        self._last_emit = time.monotonic()
        self._last_log = float("-inf")
        self._emitted_records = -1
        self._latest: tuple[int, int | None, dict[str, Any] | None] = (0, None, checkpoint)

    # -- cancellation ------------------------------------------------------------------
    def request_cancel(self) -> None:
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise Cancelled()

    # -- output ------------------------------------------------------------------------
    async def emit_records(self, events: list[model.RecordEvent]) -> None:
        if not events:
            return
        entries = [Entry(e.uri, model.encode(e), model.headers_for(e)) for e in events]
        await append_patiently(self.services.event_log, model.RECORDS_TOPIC, entries)

    async def progress(
        self,
        records_processed: int,
        checkpoint: dict[str, Any] | None,
        *,
        total_records: int | None = None,
        force: bool = False,
    ) -> None:
        """Record progress; emits an event when due. Only pass a checkpoint whose effects
        (record events) are already appended."""
        self._latest = (records_processed, total_records, checkpoint)
        due = (
            force
            or time.monotonic() - self._last_emit >= self._limits.progress_interval_s
            or records_processed - max(self._emitted_records, 0) >= self._limits.progress_records
        )
        if due:
            await self._emit_latest()

    @property
    def records_processed(self) -> int:
        return self._latest[0]

    async def _emit_latest(self) -> None:
        async with self._lock:
            records, total, checkpoint = self._latest
            self._last_emit = now = time.monotonic()
            if records != self._emitted_records and now - self._last_log >= PROGRESS_LOG_S:
                self._last_log = now
                log.info(
                    "backfill progress: %s %s, %d records%s",
                    self.backfill_type,
                    self.operation_id,
                    records,
                    f" of {total}" if total is not None else "",
                    extra=operation_fields(self.operation_id, self.backfill_type),
                )
            self._emitted_records = records
            await self._append(
                model.new_event(
                    model.BackfillProgressed,
                    self.operation_id,
                    backfill_type=self.backfill_type,
                    records_processed=records,
                    total_records=total,
                    checkpoint=checkpoint,
                )
            )

    async def heartbeat(self) -> None:
        """Runs beside the handler: a progress event at least every interval, even while one
        unit of work is slow, so watchers see the operation is alive."""
        while True:
            await asyncio.sleep(self._limits.progress_interval_s / 4)
            if time.monotonic() - self._last_emit >= self._limits.progress_interval_s:
                await self._emit_latest()


def count_reasons(counts: dict[str, int], reasons: Iterable[str]) -> None:
    """Add each reason once to `counts` (an operation's skipReasons, kept in its checkpoint)."""
    for reason in reasons:
        counts[reason] = counts.get(reason, 0) + 1


def to_checkpoint(struct: msgspec.Struct) -> dict[str, Any]:
    return msgspec.to_builtins(struct)


def from_checkpoint(data: dict[str, Any] | None, kind: type):
    return msgspec.convert(data, kind) if data else kind()


async def resolve(services: Services, did: str, *, fresh: bool = False) -> dict[str, Any]:
    """The DID document; OperationFailed naming why there is none. Documents come from the
    resolver's cache unless `fresh` (a sync of one DID wants where it lives now)."""
    try:
        return await services.resolver.resolve(did, fresh=fresh)
    except DidNotFound as exc:
        raise OperationFailed(f"DID {did} not found: {exc}") from exc
    except ResolutionError as exc:
        raise OperationFailed(f"cannot resolve {did}: {exc}") from exc


async def pds_of(services: Services, did: str, *, fresh: bool = False) -> str:
    """The PDS endpoint of a DID; OperationFailed naming why there is none."""
    endpoint = pds_endpoint(await resolve(services, did, fresh=fresh))
    if endpoint is None:
        raise OperationFailed(f"DID document of {did} has no #atproto_pds service")
    return endpoint


async def caught_up_index(ctx: WorkContext) -> RecordIndex:
    """The record index this worker reads, once it has folded everything appended to the log
    before this call."""
    if ctx.services.index is None:
        raise OperationFailed(f"{ctx.backfill_type} needs the record index of its worker process")
    index = await ctx.services.index.caught_up(INDEX_READY_S)
    if index is None:
        raise OperationFailed("the worker's record index did not catch up with the log")
    return index
