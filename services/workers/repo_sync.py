"""One repository read whole: com.atproto.sync.getRepo, verified against the account's key
(services/atproto/repo.py), its `pub.chive.*` records appended as events, then a RepoSynced
event with the revision it was read at.

The CAR is checked and decoded block by block as it streams in (services/atproto/repo.py
RepoReader), while the account's key is looked up; a download cut off midway is retried from its
start. A repository that does not verify is not indexed at all (never half: nothing is appended
before the whole CAR has verified). A PDS that does not serve getRepo, or a repository larger
than the cap, is read page by page with listRecords instead (repo_scan.py), and the caller says
so. With `since` (freshnessScan) only what changed after that revision is read, and the diff
against the index is appended: creates, updates, and deletes as tombstones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec

from events import model
from services import outbound
from services.atproto import keys, repo
from services.atproto.identity import signing_key_method
from services.atproto.syntax import is_nsid, is_rkey
from services.workers.context import OperationFailed, WorkContext, resolve
from services.workers.repo_scan import CHIVE_PREFIX, get_record, invalid_value, tombstone
from services.workers.xrpc_client import XrpcCallError

# Record events appended per batch while a repository is emitted.
CHUNK = 500
# What skipReasons says of records read without a getRepo (so without verification).
UNVERIFIED = "read with listRecords, unverified (the PDS does not serve getRepo)"


class Unverified(Exception):
    """The repository cannot be indexed: it does not verify, or its key cannot be found. The
    message is the skip reason (no DID or CID in it: one reason per kind of failure)."""


class RepoRead(msgspec.Struct):
    records: int
    skipped: list[str]
    deleted: int = 0


# Called with the number of record events appended so far for this repository.
Appended = Callable[[int], Awaitable[None]]


async def signing_key(ctx: WorkContext, did: str) -> keys.PublicKey:
    try:
        document = await resolve(ctx.services, did)
    except OperationFailed:
        raise Unverified("repo unverifiable: its DID does not resolve") from None
    method = signing_key_method(document)
    if method is None:
        raise Unverified("repo unverifiable: its DID document has no #atproto key")
    try:
        return keys.parse_verification_method(*method)
    except keys.KeyError_:
        raise Unverified("repo unverifiable: its #atproto key is not a supported key") from None


async def read_repo(
    ctx: WorkContext,
    pds_url: str,
    did: str,
    appended: Appended | None = None,
    *,
    since: str | None = None,
    indexed: dict[str, tuple[str, str]] | None = None,
) -> RepoRead | None:
    """The repository read and appended; None when it must be read with listRecords instead.
    `since` with `indexed` (the index's live `collection/rkey` -> (uri, cid) of the repo): only
    the diff since that revision. Unverified when it does not verify; XrpcCallError when the
    PDS refuses it (RepoNotFound, deactivated)."""
    # The key is looked up while the repository downloads (and decodes as it comes); nothing
    # is believed before both are in.
    fetching = asyncio.ensure_future(_fetch(ctx, pds_url, did, since))
    try:
        key = await signing_key(ctx, did)
        reader = await fetching
    except BaseException:
        await _abandon(fetching)
        raise
    if reader is None:
        return None
    try:
        verified = reader.verify(did, key, partial=since is not None)
    except repo.RepoInvalid as exc:
        raise Unverified(f"repo did not verify: {exc}") from None
    del reader
    events: list[model.RecordEvent] = []
    skipped: list[str] = []
    count = removed = 0
    present: set[str] = set()

    async def flush() -> None:
        nonlocal count
        ctx.check_cancelled()
        if events:
            await ctx.emit_records(events)
            count += sum(isinstance(e, model.RecordUpserted) for e in events)
            events.clear()
            if appended is not None:
                await appended(count)

    collections: dict[str, bool] = {}  # collection -> is it an NSID
    for entry in verified.entries:
        collection = entry.collection  # a pub.chive.* one: the reader lists no other
        key_path = f"{collection}/{entry.rkey}"
        present.add(key_path)
        if indexed is not None and indexed.get(key_path, ("", ""))[1] == entry.cid_text:
            continue  # unchanged
        value = entry.value
        if value is None:
            # A diff left the block out: it was written before `since` (the same content came
            # back). Read the record itself.
            value, reason = await _fetch_record(ctx, pds_url, did, entry)
        else:
            reason = None
        if reason is None:
            if collection not in collections:
                collections[collection] = is_nsid(collection)
            if not (collections[collection] and is_rkey(entry.rkey)):
                reason = "uri does not name a record of this repo and collection"
            else:
                reason = invalid_value(value)
        if reason is not None:
            skipped.append(reason)
            continue
        # The DID is the one asked for and verified; the key comes from the tree.
        events.append(
            model.new_event(
                model.RecordUpserted,
                ctx.operation_id,
                uri=f"at://{did}/{key_path}",
                did=did,
                collection=collection,
                rkey=entry.rkey,
                cid=entry.cid_text,
                value=msgspec.Raw(value),
            )
        )
        if len(events) >= CHUNK:
            await flush()
    if indexed is not None:
        for key_path, (uri, _cid) in sorted(indexed.items()):
            if key_path not in present and not verified.is_unchanged(key_path):
                events.append(tombstone(ctx.operation_id, uri))
                removed += 1
    # The revision last, with the last records: it is recorded only once they all are.
    events.append(
        model.new_event(
            model.RepoSynced,
            ctx.operation_id,
            uri=f"at://{did}",
            did=did,
            pds=pds_url,
            rev=verified.rev,
            commit=str(verified.commit),
        )
    )
    await flush()
    return RepoRead(records=count, skipped=skipped, deleted=removed)


async def _fetch(
    ctx: WorkContext, pds_url: str, did: str, since: str | None
) -> repo.RepoReader | None:
    """The repository read into a RepoReader as it streams in; None when the PDS does not
    serve getRepo or the repository is over the cap."""
    readers: list[repo.RepoReader] = []

    def start() -> Callable[[bytes], None]:
        # One per attempt (a retry starts over); only pub.chive.* records decoded.
        readers.append(repo.RepoReader(CHIVE_PREFIX))
        return readers[-1].feed

    try:
        # A request slot of the PDS (services/workers/source_slots.py) for the download
        # alone: the repo is verified and appended after it is given back, while another
        # request is already on its way.
        async with ctx.services.slots.held(pds_url):
            await ctx.services.client.stream_into(
                pds_url,
                "com.atproto.sync.getRepo",
                {"did": did, "since": since},
                outbound.REPO_BYTES,
                start,
            )
    except XrpcCallError as exc:
        if exc.status == 501 or exc.error in ("MethodNotImplemented", "ResponseTooLarge"):
            return None
        raise
    except repo.RepoInvalid as exc:
        raise Unverified(f"repo did not verify: {exc}") from None
    return readers[-1]


async def _abandon(task: asyncio.Future) -> None:
    """Cancels `task` and waits for it to end; its outcome no longer matters."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()


async def _fetch_record(
    ctx: WorkContext, pds_url: str, did: str, entry: repo.Entry
) -> tuple[bytes, str | None]:
    """(the record's value, or the reason it is skipped), read with getRecord."""
    try:
        async with ctx.services.slots.held(pds_url):
            fetched = await get_record(
                ctx.services.client, pds_url, did, entry.collection, entry.rkey
            )
    except XrpcCallError as exc:
        return b"", f"refused: {exc.error}"
    return bytes(fetched.value), None
