"""The lexicon's `backfillOperation` object, from the projection's Operation."""

from __future__ import annotations

from typing import Any

from events.model import format_datetime
from projections.operations import Operation


def operation_view(op: Operation) -> dict[str, Any]:
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
    if op.error is not None:
        view["error"] = op.error
    if op.cancel_requested and not op.finished:
        view["cancelRequested"] = True
    return view
