"""didSync: resolve one DID, find its PDS, index every pub.chive.* record of its repo.

recordsProcessed = pub.chive.* records read from that repo.
"""

from __future__ import annotations

import msgspec

from services.atproto.identity import DidNotFound, ResolutionError, pds_endpoint
from services.workers.context import (
    OperationFailed,
    Outcome,
    WorkContext,
    count_reasons,
    from_checkpoint,
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
    pds_url = state.pds_url or await _find_pds(ctx, did)

    async def on_page(events, position: RepoPosition, skipped: list[str]) -> None:
        await ctx.emit_records(events)
        state.count += len(events)
        state.skipped += len(skipped)
        count_reasons(state.reasons, skipped)
        state.position = position
        state.pds_url = pds_url
        await ctx.progress(state.count, to_checkpoint(state))

    try:
        await scan_repo(
            ctx.services.client,
            pds_url,
            did,
            ctx.operation_id,
            state.position,
            on_page,
            ctx.check_cancelled,
        )
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


async def _find_pds(ctx: WorkContext, did: str) -> str:
    try:
        document = await ctx.services.resolver.resolve(did, fresh=True)
    except DidNotFound as exc:
        raise OperationFailed(f"DID {did} not found: {exc}") from exc
    except ResolutionError as exc:
        raise OperationFailed(f"cannot resolve {did}: {exc}") from exc
    endpoint = pds_endpoint(document)
    if endpoint is None:
        raise OperationFailed(f"DID document of {did} has no #atproto_pds service")
    return endpoint
