"""didSync: resolve one DID, find its PDS, index every pub.chive.* record of its repo.

recordsProcessed = pub.chive.* records read from that repo.
"""

from __future__ import annotations

import msgspec

from services.workers.context import (
    OperationFailed,
    Outcome,
    WorkContext,
    count_reasons,
    from_checkpoint,
    pds_of,
    to_checkpoint,
)
from services.workers.repo_scan import RepoPosition, scan_repo
from services.workers.xrpc_client import SourceUnavailable, XrpcCallError


class Checkpoint(msgspec.Struct):
    position: RepoPosition = RepoPosition()
    count: int = 0
    skipped: int = 0
    reasons: dict[str, int] = {}
    pds_url: str | None = None


async def run(ctx: WorkContext) -> Outcome:
    did = ctx.params["did"]
    state = from_checkpoint(ctx.checkpoint, Checkpoint)
    pds_url = state.pds_url or await pds_of(ctx.services, did, fresh=True)

    async def on_page(events, position: RepoPosition, skipped: list[str]) -> None:
        await ctx.emit_records(events)
        state.count += len(events)
        state.skipped += len(skipped)
        count_reasons(state.reasons, skipped)
        state.position = position
        state.pds_url = pds_url
        await ctx.progress(state.count, to_checkpoint(state))

    try:
        await scan_repo(ctx, pds_url, did, on_page, start=state.position)
    except SourceUnavailable as exc:
        raise OperationFailed(f"PDS {pds_url} unreachable: {exc}") from exc
    except XrpcCallError as exc:
        raise OperationFailed(f"PDS {pds_url} refused {did}: {exc.error}") from exc
    return Outcome(
        records_processed=state.count,
        records_skipped=state.skipped,
        skip_reasons=state.reasons,
        sources=[pds_url],
    )
