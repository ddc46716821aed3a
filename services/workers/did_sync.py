"""didSync: resolve one DID, find its PDS, index every pub.chive.* record of its repo.

The repo is read whole with com.atproto.sync.getRepo and verified against the DID's #atproto
key before anything is appended (services/workers/repo_sync.py); a PDS that does not serve
getRepo is read page by page with listRecords, and skipReasons says those records were read
unverified. recordsProcessed = pub.chive.* records read from that repo.
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
from services.workers.repo_sync import UNVERIFIED, Unverified, read_repo
from services.workers.xrpc_client import SourceUnavailable, XrpcCallError


class Checkpoint(msgspec.Struct):
    position: RepoPosition = RepoPosition()
    count: int = 0
    skipped: int = 0
    reasons: dict[str, int] = {}
    pds_url: str | None = None
    # "listRecords" once the PDS turned out not to serve getRepo (then paged, resumably).
    path: str = "getRepo"


async def run(ctx: WorkContext) -> Outcome:
    did = ctx.params["did"]
    state = from_checkpoint(ctx.checkpoint, Checkpoint)
    pds_url = state.pds_url or await pds_of(ctx.services, did, fresh=True)
    state.pds_url = pds_url
    try:
        if state.path == "getRepo":
            read = await _whole(ctx, pds_url, did, state)
            if read is not None:
                return read
            state.path = "listRecords"
        await _paged(ctx, pds_url, did, state)
    except SourceUnavailable as exc:
        raise OperationFailed(f"PDS {pds_url} unreachable: {exc}") from exc
    except XrpcCallError as exc:
        raise OperationFailed(f"PDS {pds_url} refused {did}: {exc.error}") from exc
    state.reasons[UNVERIFIED] = state.count
    return _outcome(state)


async def _whole(ctx: WorkContext, pds_url: str, did: str, state: Checkpoint) -> Outcome | None:
    before = to_checkpoint(state)

    async def appended(count: int) -> None:
        # The checkpoint stays before this repo until it is read whole: a resumed run reads
        # it again (appends are idempotent by content), and the count stays exact.
        await ctx.progress(count, before)

    try:
        read = await read_repo(ctx, pds_url, did, appended)
    except Unverified as exc:
        state.reasons[str(exc)] = 1
        return _outcome(state)
    if read is None:
        return None
    state.count, state.skipped = read.records, len(read.skipped)
    count_reasons(state.reasons, read.skipped)
    return _outcome(state)


async def _paged(ctx: WorkContext, pds_url: str, did: str, state: Checkpoint) -> None:
    async def on_page(events, position: RepoPosition, skipped: list[str]) -> None:
        await ctx.emit_records(events)
        state.count += len(events)
        state.skipped += len(skipped)
        count_reasons(state.reasons, skipped)
        state.position = position
        await ctx.progress(state.count, to_checkpoint(state))

    await scan_repo(ctx, pds_url, did, on_page, start=state.position)


def _outcome(state: Checkpoint) -> Outcome:
    return Outcome(
        records_processed=state.count,
        records_skipped=state.skipped,
        skip_reasons=dict(state.reasons),
        sources=[state.pds_url] if state.pds_url else [],
    )
