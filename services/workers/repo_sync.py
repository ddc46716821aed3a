"""One repository read whole: com.atproto.sync.getRepo, verified against the account's key
(services/atproto/repo.py), its `pub.chive.*` records appended as events, then a RepoSynced
event with the revision it was read at.

A repository that does not verify is not indexed at all (never half: nothing is appended
before the whole CAR has verified). A PDS that does not serve getRepo, or a repository larger
than the cap, is read page by page with listRecords instead (repo_scan.py), and the caller says
so. With `since` (freshnessScan) only what changed after that revision is read, and the diff
against the index is appended: creates, updates, and deletes as tombstones.
"""

from __future__ import annotations

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
    key = await signing_key(ctx, did)
    try:
        data = await ctx.services.client.bytes_of(
            pds_url,
            "com.atproto.sync.getRepo",
            {"did": did, "since": since},
            outbound.REPO_BYTES,
        )
    except XrpcCallError as exc:
        if exc.status == 501 or exc.error in ("MethodNotImplemented", "ResponseTooLarge"):
            return None
        raise
    try:
        verified = repo.verify(data, did, key, partial=since is not None)
    except repo.RepoInvalid as exc:
        raise Unverified(f"repo did not verify: {exc}") from None
    del data
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

    for entry in verified.entries:
        if not entry.collection.startswith(CHIVE_PREFIX):
            continue
        key_path = f"{entry.collection}/{entry.rkey}"
        present.add(key_path)
        cid = str(entry.cid)
        if indexed is not None and indexed.get(key_path, ("", ""))[1] == cid:
            continue  # unchanged
        event, reason = await _upsert(ctx, pds_url, did, entry, cid)
        if reason is not None:
            skipped.append(reason)
        elif event is not None:
            events.append(event)
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


async def _upsert(
    ctx: WorkContext,
    pds_url: str,
    did: str,
    entry: repo.Entry,
    cid: str,
) -> tuple[model.RecordUpserted | None, str | None]:
    """(the upsert, or the reason the record is skipped)."""
    uri = f"at://{did}/{entry.collection}/{entry.rkey}"
    if entry.block is None:
        # A diff left the block out: it was written before `since` (the same content came
        # back). Read the record itself.
        try:
            fetched = await get_record(
                ctx.services.client, pds_url, did, entry.collection, entry.rkey
            )
        except XrpcCallError as exc:
            return None, f"refused: {exc.error}"
        value = bytes(fetched.value)
    else:
        try:
            value = msgspec.json.encode(repo.record_json(entry.block))
        except repo.RepoInvalid:
            return None, "value is not an object"
    # The DID is the one asked for and verified; the key comes from the tree.
    if not (is_nsid(entry.collection) and is_rkey(entry.rkey)):
        reason: str | None = "uri does not name a record of this repo and collection"
    else:
        reason = invalid_value(value)
    if reason is not None:
        return None, reason
    event = model.new_event(
        model.RecordUpserted,
        ctx.operation_id,
        uri=uri,
        did=did,
        collection=entry.collection,
        rkey=entry.rkey,
        cid=cid,
        value=msgspec.Raw(value),
    )
    return event, None
