"""fullReindex: rebuild the record index from the records topic, then switch to it atomically
(projections/rebuild.py does both).

Runs in the process of the projector whose index it rebuilds (under `up`, or beside
`chive-backfill projector`). recordsProcessed = record events folded into the new index.
"""

from __future__ import annotations

from typing import Any

from events import model
from services.workers.context import OperationFailed, Outcome, WorkContext


async def run(ctx: WorkContext) -> Outcome:
    reindexer = ctx.services.reindexer
    if reindexer is None:
        raise OperationFailed(
            "fullReindex runs in the projector's process (chive-backfill up or projector)"
        )

    async def report(
        folded: int, checkpoint: dict[str, Any], *, total: int, force: bool = False
    ) -> None:
        await ctx.progress(folded, checkpoint, total_records=total, force=force)

    folded = await reindexer.rebuild(
        ctx.operation_id,
        ctx.checkpoint,
        int(ctx.params.get("batchSize", model.FULL_REINDEX_BATCH_SIZE)),
        report,
        ctx.check_cancelled,
    )
    return Outcome(records_processed=folded, total_records=folded)
