"""The backfill types whose work has not been built yet: each runs as its own service and
fails its operations at once with a clear error, so nothing is left `running`."""

from __future__ import annotations

from services.workers.context import OperationFailed, Outcome, WorkContext


async def run(ctx: WorkContext) -> Outcome:
    raise OperationFailed(
        f"{ctx.backfill_type} is not implemented in this version of chive-backfill"
    )
