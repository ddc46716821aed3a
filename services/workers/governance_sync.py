"""governanceSync: the knowledge graph (pub.chive.graph.node and .edge records) from the
governance PDS into the index.

Two phases. Upserts: every record of both collections, all pages; a record missing a field the
lexicon requires is skipped with that reason. Deletes: graph records of the governance repo that
the worker's record index holds (caught up with the log first) but the PDS no longer lists; the
planned deletes are checkpointed before they are appended, so a resumed run counts them exactly.
recordsProcessed = valid graph records synced; recordsDeleted = graph records deleted.
"""

from __future__ import annotations

import msgspec

from services.workers.context import (
    OperationFailed,
    Outcome,
    WorkContext,
    caught_up_index,
    count_reasons,
    from_checkpoint,
    to_checkpoint,
)
from services.workers.repo_scan import RepoPosition, scan_repo, tombstone
from services.workers.xrpc_client import SourceUnavailable, XrpcCallError

GRAPH = ["pub.chive.graph.node", "pub.chive.graph.edge"]
REQUIRED = {
    "pub.chive.graph.node": ("id", "kind", "label", "status", "createdAt"),
    "pub.chive.graph.edge": ("id", "sourceUri", "targetUri", "relationSlug", "status", "createdAt"),
}


class Checkpoint(msgspec.Struct):
    phase: str = "upsert"
    position: RepoPosition = RepoPosition()
    count: int = 0
    reasons: dict[str, int] = {}
    planned_deletes: list[str] | None = None


def validate(collection: str, value: msgspec.Raw) -> str | None:
    try:
        record = msgspec.json.decode(value)
    except msgspec.DecodeError:
        return "value is not JSON"
    missing = [f for f in REQUIRED[collection] if record.get(f) in (None, "")]
    return f"{collection.rsplit('.', 1)[1]} missing {', '.join(missing)}" if missing else None


async def run(ctx: WorkContext) -> Outcome:
    pds_url = ctx.services.governance_pds_url
    did = ctx.services.governance_did
    if did is None:
        raise OperationFailed("governanceSync needs CHIVE_GOVERNANCE_DID (the governance repo)")
    state = from_checkpoint(ctx.checkpoint, Checkpoint)
    try:
        if state.phase == "upsert":
            await _upserts(ctx, pds_url, did, state)
        if state.planned_deletes is None:
            state.planned_deletes = await _gone(ctx, pds_url, did)
            state.phase = "delete"
            await ctx.progress(state.count, to_checkpoint(state), force=True)
        ctx.check_cancelled()
        await ctx.emit_records([tombstone(ctx.operation_id, uri) for uri in state.planned_deletes])
    except SourceUnavailable as exc:
        raise OperationFailed(f"governance PDS {pds_url} unreachable: {exc}") from exc
    except XrpcCallError as exc:
        raise OperationFailed(f"governance PDS {pds_url} refused {did}: {exc.error}") from exc
    return Outcome(
        records_processed=state.count,
        records_skipped=sum(state.reasons.values()),
        skip_reasons=dict(state.reasons),
        records_deleted=len(state.planned_deletes),
        sources=[],
    )


async def _upserts(ctx: WorkContext, pds_url: str, did: str, state: Checkpoint) -> None:
    async def on_page(events, position: RepoPosition, skipped: list[str]) -> None:
        await ctx.emit_records(events)
        state.count += len(events)
        count_reasons(state.reasons, skipped)
        state.position = position
        await ctx.progress(state.count, to_checkpoint(state))

    await scan_repo(ctx, pds_url, did, on_page, start=state.position, only=GRAPH, validate=validate)


async def _gone(ctx: WorkContext, pds_url: str, did: str) -> list[str]:
    """Graph uris of the repo live in the index (the records topic folded) but not on the PDS."""
    listed: set[str] = set()

    async def collect(events, _position, _skipped) -> None:
        listed.update(e.uri for e in events)

    await scan_repo(ctx, pds_url, did, collect, only=GRAPH, validate=validate)
    index = await caught_up_index(ctx)
    live = set(await index.live_uris(did, GRAPH))
    return sorted(live - listed)
