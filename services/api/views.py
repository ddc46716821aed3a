"""The lexicon's `backfillOperation` object, from the projection's Operation."""

from __future__ import annotations

from typing import Any

from events.log import folded_through
from events.model import format_datetime
from projections.operations import Operation


def operation_view(
    op: Operation,
    now_ms: int | None = None,
    stall_after_ms: int | None = None,
    index_folded: dict[int, int] | None = None,
) -> dict[str, Any]:
    """`now_ms` and `stall_after_ms` (read time, never part of a fold) flag a running operation
    with no event for that long as stalled: no worker of its type is alive. It stays resumable;
    the flag goes away with its next event. `index_folded` (the record index's positions on
    the records topic, where this process can see the index) tells whether a finished
    operation's records are all in it."""
    view: dict[str, Any] = {
        "id": op.id,
        "type": op.type,
        "status": op.status,
        "startedAt": format_datetime(op.started_at),
        "updatedAt": format_datetime(op.updated_at),
        "recordsProcessed": op.records_processed,
        "startedBy": op.started_by,
        "params": dict(op.params),
    }
    if op.completed_at is not None:
        view["completedAt"] = format_datetime(op.completed_at)
    if op.total_records is not None:
        view["totalRecords"] = op.total_records
        if op.status == "completed":
            view["progress"] = 100
        elif op.total_records > 0:
            view["progress"] = min(100, op.records_processed * 100 // op.total_records)
    if op.records_skipped:
        view["recordsSkipped"] = op.records_skipped
    if op.skip_reasons:
        view["skipReasons"] = dict(op.skip_reasons)
    if op.records_deleted:
        view["recordsDeleted"] = op.records_deleted
    if op.error is not None:
        view["error"] = op.error
    if (
        now_ms is not None
        and stall_after_ms is not None
        and not op.finished
        and now_ms - op.updated_at > stall_after_ms
    ):
        view["stalled"] = True
    if op.finished and op.records_through is not None and index_folded is not None:
        view["indexCurrent"] = folded_through(op.records_through, index_folded)
    if op.cancel_requested and not op.finished:
        view["cancelRequested"] = True
    return view
