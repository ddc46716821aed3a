"""freshnessScan: every live record of the index, checked against its source.

Repositories the index last read whole (RepoSynced: their revision is known) are checked by
revision: each PDS's listRepos (1,000 repos a page) says which moved, and only those are read,
with getRepo?since=<rev>, verified, and the diff applied (creates, updates, deletes as
tombstones); an unchanged repo costs nothing beyond its listRepos row. A DID whose PDS moved is
read whole from the new one. Repositories are handled in DID order with bounded concurrency, and
the checkpoint is the last DID finished, so a crash resumes at the next unfinished repo.

Records of repos the index read with listRecords (no revision known), and of PDSes that do not
serve getRepo, are checked one by one (com.atproto.repo.getRecord): a new cid is an upsert, gone
is a delete, the same cid nothing. Concurrency is bounded overall and per PDS, and each PDS has
a circuit that opens after consecutive failures, so one dead PDS fails fast instead of stalling
the scan; the records it held are reported per PDS in skipReasons. recordsProcessed = records
checked; totalRecords = live records when the scan started.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import msgspec

from events import model
from projections.records import IndexedRecord, RecordIndex
from services.workers.context import (
    OperationFailed,
    Outcome,
    WorkContext,
    caught_up_index,
    from_checkpoint,
    pds_of,
    to_checkpoint,
)
from services.workers.index_pages import Handled, each_page
from services.workers.repo_scan import (
    MAX_REPO_PAGES,
    ListedRepo,
    get_record,
    list_repos_page,
    tombstone,
)
from services.workers.repo_sync import Unverified, read_repo
from services.workers.xrpc_client import SourceUnavailable, XrpcCallError

PAGE = 100
# listRepos rows per request (the lexicon's maximum).
LIST_REPOS_PAGE = 1000
GONE = {"RecordNotFound", "RepoNotFound"}


class Checkpoint(msgspec.Struct):
    # "repos" (by revision), then "records" (one by one, from `after`).
    stage: str = "repos"
    after_did: str = ""
    # Repos of PDSes without getRepo: their records are checked one by one after all.
    by_record: list[str] = []
    after: str = ""
    checked: int = 0
    deleted: int = 0
    total: int | None = None
    unreachable: dict[str, int] = {}


class _Circuit:
    def __init__(self, opens_after: int) -> None:
        self.failures = 0
        self._opens_after = opens_after

    @property
    def open(self) -> bool:
        return self.failures >= self._opens_after


async def run(ctx: WorkContext) -> Outcome:
    index = await caught_up_index(ctx)
    state = from_checkpoint(ctx.checkpoint, Checkpoint)
    if state.total is None:
        state.total = await index.live_count()
    synced = await index.synced_repos()
    if state.stage == "repos":
        await by_revision(ctx, index, synced, state)
        state.stage = "records"
    skip = set(synced) - set(state.by_record)
    await by_record(ctx, index, skip, state)
    return Outcome(
        records_processed=state.checked,
        total_records=state.total,
        records_skipped=sum(state.unreachable.values()),
        skip_reasons=dict(state.unreachable),
        records_deleted=state.deleted,
    )


async def by_revision(
    ctx: WorkContext, index: RecordIndex, synced: dict[str, tuple[str, str]], state: Checkpoint
) -> None:
    """Check every repo with a known revision against its PDS's listRepos."""
    todo = sorted(did for did in synced if did > state.after_did)
    if not todo:
        return
    listed: dict[str, dict[str, ListedRepo] | str] = {}
    for pds in sorted({synced[did][0] for did in todo}):
        try:
            listed[pds] = await list_repos(ctx, pds)
        except SourceUnavailable:
            listed[pds] = f"PDS unreachable: {pds}"
    # CHIVE_SOURCE_CONCURRENCY repos at a time; the checkpoint moves past each batch.
    batch = ctx.services.limits.source_concurrency
    for start in range(0, len(todo), batch):
        ctx.check_cancelled()
        dids = todo[start : start + batch]
        checks = [_check_repo(ctx, index, did, synced[did], listed) for did in dids]
        for did, (checked, deleted, reasons, fallback) in zip(
            dids, await asyncio.gather(*checks), strict=True
        ):
            state.checked += checked
            state.deleted += deleted
            for reason, n in reasons.items():
                state.unreachable[reason] = state.unreachable.get(reason, 0) + n
            if fallback:
                state.by_record.append(did)
        state.after_did = dids[-1]
        await ctx.progress(state.checked, to_checkpoint(state), total_records=state.total)


async def _check_repo(
    ctx: WorkContext,
    index: RecordIndex,
    did: str,
    stored: tuple[str, str],
    listed: dict[str, dict[str, ListedRepo] | str],
) -> tuple[int, int, dict[str, int], bool]:
    stored_pds, stored_rev = stored
    live = await index.live_of(did)
    try:
        pds = await pds_of(ctx.services, did)
    except OperationFailed as exc:
        return len(live), 0, {str(exc): len(live)}, False
    if pds == stored_pds:
        on_pds = listed[pds]
        if isinstance(on_pds, str):
            return len(live), 0, {on_pds: len(live)}, False
        row = on_pds.get(did)
        if row is not None and row.active and row.rev == stored_rev:
            return len(live), 0, {}, False  # unchanged since it was read
        if row is None or not row.active:
            # Gone or deactivated here: it may have moved; ask the directory afresh.
            try:
                pds = await pds_of(ctx.services, did, fresh=True)
            except OperationFailed as exc:
                return len(live), 0, {str(exc): len(live)}, False
    # Moved on its PDS, gone from it, or living on another PDS now: read it (again).
    since = stored_rev if pds == stored_pds else None
    try:
        read = await read_repo(ctx, pds, did, since=since, indexed=live)
    except Unverified as exc:
        return len(live), 0, {str(exc): len(live)}, False
    except SourceUnavailable:
        return len(live), 0, {f"PDS unreachable: {pds}": len(live)}, False
    except XrpcCallError as exc:
        if exc.error not in GONE:
            return len(live), 0, {f"refused: {exc.error}": len(live)}, False
        # The repo is gone: every record of it is.
        await ctx.emit_records(
            [tombstone(ctx.operation_id, uri) for uri, _ in sorted(live.values())]
        )
        return len(live), len(live), {}, False
    if read is None:
        return 0, 0, {}, True
    return len(live), read.deleted, {}, False


async def list_repos(ctx: WorkContext, pds: str) -> dict[str, ListedRepo]:
    """Every repo the PDS lists, by DID."""
    out: dict[str, ListedRepo] = {}
    cursor: str | None = None
    for _ in range(MAX_REPO_PAGES):
        page = await list_repos_page(ctx.services.client, pds, cursor, LIST_REPOS_PAGE)
        out.update((r.did, r) for r in page.repos)
        # A short page is the last one: no request just to hear that.
        if len(page.repos) < LIST_REPOS_PAGE or not page.cursor:
            return out
        cursor = page.cursor
    raise SourceUnavailable(f"{pds} kept paging listRepos past {MAX_REPO_PAGES} pages")


async def by_record(
    ctx: WorkContext, index: RecordIndex, skip: set[str], state: Checkpoint
) -> None:
    """Check each live record of the repos not in `skip` with getRecord."""
    limits = ctx.services.limits
    circuits: dict[str, _Circuit] = defaultdict(lambda: _Circuit(limits.source_circuit_failures))

    async def check(record: IndexedRecord) -> Handled:
        try:
            pds = await pds_of(ctx.services, record.did)
        except OperationFailed as exc:
            return str(exc), None
        circuit = circuits[pds]
        if circuit.open:
            return f"PDS unreachable: {pds}", None
        async with ctx.services.slots.held(pds):
            if circuit.open:
                return f"PDS unreachable: {pds}", None
            try:
                fetched = await get_record(
                    ctx.services.client, pds, record.did, record.collection, record.rkey
                )
            except SourceUnavailable:
                circuit.failures += 1
                return f"PDS unreachable: {pds}", None
            except XrpcCallError as exc:
                circuit.failures = 0
                if exc.error in GONE:
                    return "deleted", tombstone(ctx.operation_id, record.uri)
                return f"refused: {exc.error}", None
        circuit.failures = 0
        if fetched.cid == record.cid:
            return "unchanged", None
        return "changed", model.new_event(
            model.RecordUpserted,
            ctx.operation_id,
            uri=record.uri,
            did=record.did,
            collection=record.collection,
            rkey=record.rkey,
            cid=fetched.cid or "",
            value=fetched.value,
        )

    async def on_page(page: list[IndexedRecord], results: list[Handled]) -> None:
        for outcome, _ in results:
            if outcome == "deleted":
                state.deleted += 1
            elif outcome not in ("changed", "unchanged"):
                state.unreachable[outcome] = state.unreachable.get(outcome, 0) + 1
        state.checked += len(page)
        state.after = page[-1].uri
        await ctx.progress(state.checked, to_checkpoint(state), total_records=state.total)

    async def page_after(after: str) -> list[IndexedRecord]:
        # Records of repos checked by revision are passed over (pages of them entirely).
        while True:
            page = await index.live_page(after, PAGE)
            kept = [r for r in page if r.did not in skip]
            if kept or not page:
                return kept
            after = page[-1].uri

    await each_page(ctx, state.after, page_after, check, on_page)
