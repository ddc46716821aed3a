"""pdsScan: every repo a PDS lists (listRepos, all pages), every pub.chive.* collection of each.

Each repo is read whole with com.atproto.sync.getRepo and verified against its DID's #atproto
key (a repo that does not verify is skipped with the reason); a PDS that does not serve getRepo
is read page by page with listRecords, and skipReasons counts those records as unverified.
Without `pdsUrl` it scans every PDS the service has learned of: the sources of all completed
didSync and pdsScan operations on the log, several side by side. Repos are read with bounded
concurrency, per PDS and overall (CHIVE_SOURCE_CONCURRENCY_PER_PDS, CHIVE_SOURCE_CONCURRENCY);
the checkpoint holds, per PDS, the cursor of its listRepos page and the repos of it already
finished (or that the PDS is done), so a resumed scan re-reads only unfinished repos.
recordsProcessed = pub.chive.* records read.
"""

from __future__ import annotations

import asyncio

import msgspec

from events import model
from events.log import EventLog, read_to_end
from services.workers.context import (
    OperationFailed,
    Outcome,
    WorkContext,
    count_reasons,
    from_checkpoint,
    to_checkpoint,
)
from services.workers.repo_scan import MAX_REPO_PAGES, RepoPosition, list_repos_page, scan_repo
from services.workers.repo_sync import UNVERIFIED, Unverified, read_repo
from services.workers.xrpc_client import SourceUnavailable, XrpcCallError

REPOS_PAGE = 200


class PdsProgress(msgspec.Struct):
    # Cursor that fetches the listRepos page being worked on (None: the first page).
    page_cursor: str | None = None
    done: list[str] = []  # repos of that page already finished
    finished: bool = False


class Checkpoint(msgspec.Struct):
    pds_urls: list[str] = []
    pds: dict[str, PdsProgress] = {}
    count: int = 0
    skipped: int = 0
    reasons: dict[str, int] = {}
    unreachable: list[str] = []
    # Written before PDSes were scanned side by side (one at a time, in order): the PDS being
    # scanned and its page. Read once on resume into `pds`.
    pds_index: int = 0
    page_cursor: str | None = None
    done: list[str] = []


def _upcast(state: Checkpoint) -> None:
    if state.pds or not (state.pds_index or state.page_cursor or state.done):
        return
    for i, url in enumerate(state.pds_urls[: state.pds_index + 1]):
        if i < state.pds_index:
            state.pds[url] = PdsProgress(finished=True)
        else:
            state.pds[url] = PdsProgress(state.page_cursor, list(state.done))
    state.pds_index, state.page_cursor, state.done = 0, None, []


async def run(ctx: WorkContext) -> Outcome:
    state = from_checkpoint(ctx.checkpoint, Checkpoint)
    _upcast(state)
    if not state.pds_urls:
        if "pdsUrl" in ctx.params:
            state.pds_urls = [ctx.params["pdsUrl"]]
        else:
            state.pds_urls = await known_pds_urls(ctx.services.event_log)
    in_flight: dict[tuple[str, str], int] = {}

    async def report() -> None:
        live = state.count + sum(in_flight.values())
        await ctx.progress(live, to_checkpoint(state))

    # PDSes side by side: with many small PDSes, each a round trip away, one at a time would
    # leave the process's allowance of requests unused (services/workers/source_slots.py).
    limits = ctx.services.limits
    pending = [u for u in state.pds_urls if not state.pds.get(u, PdsProgress()).finished]
    todo = iter(pending)

    async def scanner() -> None:
        for pds_url in todo:  # shared: each PDS is taken by one scanner
            progress = state.pds.setdefault(pds_url, PdsProgress())
            try:
                await _scan_pds(ctx, pds_url, progress, state, in_flight, report)
            except SourceUnavailable as exc:
                state.unreachable.append(f"{pds_url} ({exc})")
            state.pds[pds_url] = PdsProgress(finished=True)
            await report()

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(len(pending), limits.source_concurrency)):
                group.create_task(scanner())
    except ExceptionGroup as group_error:
        raise _first_leaf(group_error) from None
    if state.unreachable:
        raise OperationFailed("PDS unreachable: " + "; ".join(sorted(state.unreachable)))
    return Outcome(
        records_processed=state.count,
        records_skipped=state.skipped,
        skip_reasons=state.reasons,
        sources=list(state.pds_urls),
    )


async def _scan_pds(
    ctx, pds_url, progress: PdsProgress, state: Checkpoint, in_flight, report
) -> None:
    client = ctx.services.client
    pages = 0
    # Repos of this PDS in hand at once: as many as may download (they hold a request slot
    # only while they do) and one more, verified and appended meanwhile. A bound on memory
    # too: a page lists up to 1,000 repos, and each read is a whole repo.
    in_hand = asyncio.Semaphore(ctx.services.limits.source_concurrency_per_pds + 1)
    while True:
        ctx.check_cancelled()
        page = await list_repos_page(client, pds_url, progress.page_cursor, REPOS_PAGE)
        pages += 1
        if pages > MAX_REPO_PAGES:
            raise SourceUnavailable(f"{pds_url} kept paging listRepos past {MAX_REPO_PAGES} pages")
        done = set(progress.done)
        todo = [r.did for r in page.repos if r.active and r.did not in done]

        async def one(did: str) -> None:
            async with in_hand:
                ctx.check_cancelled()
                key = (pds_url, did)
                in_flight[key] = 0
                skipped = await _read_one(ctx, pds_url, did, key, in_flight, report)
                state.count += in_flight.pop(key)
                state.skipped += sum(1 for r in skipped if r != UNVERIFIED)
                count_reasons(state.reasons, skipped)
                progress.done.append(did)
                await report()

        try:
            async with asyncio.TaskGroup() as group:
                for did in todo:
                    group.create_task(one(did))
        except ExceptionGroup as group_error:
            # One repo's failure (or the cancel) stops the page; surface it unwrapped.
            raise _first_leaf(group_error) from None
        if not page.repos or not page.cursor:
            return
        progress.page_cursor, progress.done = page.cursor, []
        await report()


async def _read_one(
    ctx, pds_url: str, did: str, key: tuple[str, str], in_flight: dict, report
) -> list[str]:
    """Index one repo: whole and verified (getRepo), else page by page (listRecords). The
    skip reasons of its records; UNVERIFIED once per record read with listRecords."""

    async def appended(count: int) -> None:
        in_flight[key] = count
        await report()

    try:
        read = await read_repo(ctx, pds_url, did, appended)
    except Unverified as exc:
        return [str(exc)]
    except XrpcCallError:
        return []  # taken down, deactivated or deleted since listRepos: nothing to index
    if read is not None:
        return read.skipped
    in_flight[key] = 0
    skipped: list[str] = []

    async def on_page(events, _position: RepoPosition, invalid: list[str]) -> None:
        await ctx.emit_records(events)
        in_flight[key] += len(events)
        skipped.extend(invalid)
        skipped.extend([UNVERIFIED] * len(events))
        await report()

    try:
        async with ctx.services.slots.held(pds_url):
            await scan_repo(ctx, pds_url, did, on_page)
    except XrpcCallError:
        pass
    return skipped


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def known_pds_urls(event_log: EventLog) -> list[str]:
    """Every PDS a completed didSync or pdsScan read from, from the whole operations log."""
    urls: set[str] = set()
    for message in await read_to_end(event_log, model.OPERATIONS_TOPIC):
        if message.headers.get("event_type") != "BackfillCompleted":
            continue
        if message.headers.get("backfill_type") not in ("didSync", "pdsScan"):
            continue
        try:
            event = model.decode(message.value)
        except model.DecodeError:
            continue
        urls.update(getattr(event, "sources", []))
    return sorted(urls)
