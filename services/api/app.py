"""The admin XRPC API: appends requests and cancels to the log, reads the operations projection.

It never does backfill work itself; the workers do, from the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from events import model
from events.log import Entry, EventLog, LogUnavailable, Position
from projections.operations import TERMINAL, InvalidCursor, Operation, OperationsStore, fold
from projections.runner import ProjectionRunner
from services.api import xrpc
from services.api.auth import ServiceAuth
from services.api.lexicon import Lexicons
from services.api.openapi import openapi
from services.api.params import backfill_params, dedupe_key
from services.api.views import operation_view
from services.api.xrpc import Call, XrpcServer, invalid_request
from services.atproto.errors import XrpcError
from services.logs import operation_fields
from services.rate_limit import RateLimiter

log = logging.getLogger(__name__)

TRIGGER = "pub.chive.admin.triggerBackfill"
STATUS = "pub.chive.admin.getBackfillStatus"
HISTORY = "pub.chive.admin.getBackfillHistory"
CANCEL = "pub.chive.admin.cancelBackfill"

# How long a read waits for the projection to fold this replica's writes.
READ_YOUR_WRITES_S = 5.0


@dataclass
class Api:
    event_log: EventLog
    store: OperationsStore
    projection: ProjectionRunner
    stall_after_s: int
    # How long a trigger waits for the log to confirm its append (Kafka's request timeout
    # plus a margin), before answering 503.
    append_timeout_s: float
    # The record index's positions on the records topic, where this process can read the
    # index (None where it cannot): finished operations then say whether it holds their records.
    index_folded: Callable[[], Awaitable[dict[int, int] | None]] | None = None

    def __post_init__(self) -> None:
        # Per partition, the offset after this replica's last append: its reads wait for the
        # projection to have folded that far (read-your-writes), not its writes.
        self._written: dict[int, int] = {}

    async def _append(self, event: model.OperationEvent) -> Position:
        entry = Entry(event.operation_id, model.encode(event), model.headers_for(event))
        try:
            (position,) = await asyncio.wait_for(
                self.event_log.append(model.OPERATIONS_TOPIC, [entry]), self.append_timeout_s
            )
        except (LogUnavailable, TimeoutError):
            # With an idempotent producer the append may still land once the log is back, so
            # the answer says so; a retry is safe, an identical trigger returns that operation.
            raise XrpcError(
                503,
                "NotEnoughResources",
                "The event log did not confirm the request in time; it may still be recorded. "
                "Try again shortly",
            ) from None
        self._written[position.partition] = max(
            self._written.get(position.partition, 0), position.offset + 1
        )
        return position

    async def _read_own_writes(self) -> None:
        """Before a read: the projection has folded what this replica appended (at once, as
        a rule: it folds while the answer to the write travels), or READ_YOUR_WRITES_S has
        passed, however many partitions it wrote to."""
        deadline = asyncio.get_running_loop().time() + READ_YOUR_WRITES_S
        for partition, end in list(self._written.items()):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            await self.projection.wait_past(Position(partition, end - 1), remaining)

    async def trigger(self, call: Call) -> dict[str, Any]:
        kind, params = backfill_params(call.raw_input)
        key = dedupe_key(kind, params)
        # No lock between the look and the append: the log orders identical requests (they
        # share a partition) and the fold makes every one after the first another name of it.
        running, folded = await self.store.running_as_of(key)
        if running is not None:
            return {"operation": self._view(running)}
        event = model.new_event(
            model.BackfillRequested,
            model.colocated_operation_id(key, self.event_log.partition_of),
            backfill_type=kind,
            params=params,
            requested_by=call.caller.did,
            dedupe_key=key,
            colocated=True,
        )
        position = await self._append(event)
        log.info(
            "backfill requested: %s %s by %s",
            kind,
            event.operation_id,
            call.caller.did,
            extra=operation_fields(event.operation_id, kind, requested_by=call.caller.did),
        )
        if folded.get(position.partition, 0) != position.offset:
            # Something else landed in the partition between the look and the append: another
            # replica's identical request, perhaps. The log decides
            # (projections/operations.duplicate_of), so wait for the fold: this request's id
            # then names the operation it duplicates.
            await self.projection.wait_past(position, READ_YOUR_WRITES_S)
            op = await self.store.get(event.operation_id)
            if op is not None:
                return {"operation": self._view(op)}
        # Nothing came between: the state the look read is the state this request lands on,
        # where nothing runs under its key, so it starts an operation of its own.
        return {"operation": operation_view(fold(None, event))}

    methods = (TRIGGER, STATUS, HISTORY, CANCEL)

    async def watched(self) -> list[dict[str, Any]]:
        """What the admin page follows: every running operation and the newest finished."""
        await self._read_own_writes()
        running, _ = await self.store.list(statuses=("running",), type=None, limit=100, cursor=None)
        done, _ = await self.store.list(
            statuses=tuple(sorted(TERMINAL)), type=None, limit=20, cursor=None
        )
        return await self._views(running + done)

    def _view(self, op: Operation, index_folded: dict[int, int] | None = None) -> dict[str, Any]:
        return operation_view(op, model.now_ms(), self.stall_after_s * 1000, index_folded)

    async def _views(self, ops: list[Operation]) -> list[dict[str, Any]]:
        folded = None
        if self.index_folded is not None and any(op.records_through for op in ops):
            folded = await self.index_folded()
        return [self._view(op, folded) for op in ops]

    async def status(self, call: Call) -> dict[str, Any]:
        await self._read_own_writes()
        op_id = call.params.get("id")
        if op_id is not None:
            op = await self.store.get(op_id)
            if op is None:
                raise XrpcError(400, "OperationNotFound", f"No backfill operation {op_id}")
            (view,) = await self._views([op])
            return {"operation": view}
        status = call.params.get("status")
        ops, cursor = await self._page(call, statuses=(status,) if status is not None else None)
        return {"operations": ops, **({"cursor": cursor} if cursor else {})}

    async def history(self, call: Call) -> dict[str, Any]:
        await self._read_own_writes()
        ops, cursor = await self._page(call, statuses=tuple(sorted(TERMINAL)))
        return {"operations": ops, **({"cursor": cursor} if cursor else {})}

    async def _page(self, call: Call, statuses: tuple[str, ...] | None):
        try:
            ops, cursor = await self.store.list(
                statuses=statuses,
                type=call.params.get("type"),
                limit=call.params["limit"],
                cursor=call.params.get("cursor"),
            )
        except InvalidCursor as exc:
            raise invalid_request(str(exc)) from None
        return await self._views(ops), cursor

    async def cancel(self, call: Call) -> dict[str, Any]:
        await self._read_own_writes()
        op_id = call.input["id"]
        op = await self.store.get(op_id)
        if op is None:
            raise XrpcError(400, "OperationNotFound", f"No backfill operation {op_id}")
        if op.finished:
            return {"success": False}
        if not op.cancel_requested:
            await self._append(
                model.new_event(
                    model.BackfillCancelRequested,
                    op.id,
                    backfill_type=op.type,
                    requested_by=call.caller.did,
                )
            )
            log.info(
                "cancel requested: %s %s by %s",
                op.type,
                op.id,
                call.caller.did,
                extra=operation_fields(op.id, op.type, requested_by=call.caller.did),
            )
        return {"success": True}


def create_app(api: Api, lexicons: Lexicons, auth: ServiceAuth, limiter: RateLimiter) -> FastAPI:
    app = FastAPI(title="chive-backfill", docs_url=None, redoc_url=None, openapi_url=None)
    document = openapi(lexicons, version=_version())

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_document() -> JSONResponse:
        return JSONResponse(document)

    server = XrpcServer(lexicons, auth.require_admin, limiter)
    server.method(TRIGGER, api.trigger)
    server.method(STATUS, api.status)
    server.method(HISTORY, api.history)
    server.method(CANCEL, api.cancel)
    xrpc.mount(app, server)
    return app


def _version() -> str:
    try:
        return metadata.version("chive-backfill")
    except metadata.PackageNotFoundError:
        return "0"
