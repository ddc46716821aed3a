"""A handler's world without a service process: Services over a given log and fetcher, and a
WorkContext that collects the operation events the handler reports. For the fast tests and
the benches, which run handlers directly."""

from __future__ import annotations

from typing import Any

import msgspec

from events import model
from events.log import EventLog
from services import outbound
from services.atproto.identity import DidResolver
from services.settings import Settings
from services.workers.context import Limits, Services, WorkContext
from services.workers.xrpc_client import RetryPolicy, XrpcClient

LOOPBACK = outbound.Policy(allow_private=True)


def services_for(
    fetcher: outbound.Fetcher,
    plc_url: str,
    log: EventLog,
    *,
    attempts: int = 1,
    timeout_s: float = 5.0,
    limits: dict[str, Any] | None = None,
    **extra: Any,
) -> Services:
    """`limits`: Settings tunables to override (e.g. progress_records)."""
    return Services(
        log,
        XrpcClient(fetcher, RetryPolicy(attempts=attempts, timeout_s=timeout_s)),
        DidResolver(fetcher, plc_url, timeout_s, fresh_interval_s=0),
        limits=msgspec.structs.replace(Limits.of(Settings()), **(limits or {})),
        **extra,
    )


def work_context(
    services: Services,
    kind: str,
    params: dict[str, Any],
    checkpoint: dict[str, Any] | None = None,
    reported: list[model.OperationEvent] | None = None,
) -> WorkContext:
    """`reported`: where the operation events the handler emits go (dropped without one)."""

    async def append(event: model.OperationEvent) -> None:
        if reported is not None:
            reported.append(event)

    return WorkContext(
        operation_id="op-1",
        backfill_type=kind,
        params=params,
        checkpoint=checkpoint,
        services=services,
        append_operation_event=append,
    )
