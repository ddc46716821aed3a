"""Read every `pub.chive.*` record of one repo from its PDS, page by page, resumably.

A position is (index into the repo's sorted pub.chive collections, listRecords cursor): the
place to fetch next. The caller gets each page's record events and the position after it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec

from events import model
from services import outbound
from services.atproto.syntax import parse_at_uri
from services.workers.context import WorkContext
from services.workers.xrpc_client import SourceUnavailable, XrpcClient

CHIVE_PREFIX = "pub.chive."
PAGE_SIZE = 100
# A record value larger than this is not indexed (skipped with a reason): the log and the
# index must not take whatever size a PDS serves.
MAX_RECORD_VALUE_BYTES = 1024 * 1024


class DescribeRepo(msgspec.Struct):
    collections: list[str] = []


class ListedRecord(msgspec.Struct):
    uri: str
    cid: str
    value: msgspec.Raw


class ListedRepo(msgspec.Struct):
    did: str
    active: bool = True
    rev: str | None = None
    head: str | None = None


class ListRepos(msgspec.Struct):
    repos: list[ListedRepo] = []
    cursor: str | None = None


# A PDS that never stops paging listRepos must not hold a worker forever.
MAX_REPO_PAGES = 100_000


class ListRecords(msgspec.Struct):
    records: list[ListedRecord] = []
    cursor: str | None = None


class FetchedRecord(msgspec.Struct):
    uri: str
    value: msgspec.Raw
    cid: str | None = None


async def get_record(
    client: XrpcClient, pds_url: str, did: str, collection: str, rkey: str
) -> FetchedRecord:
    """com.atproto.repo.getRecord; XrpcCallError("RecordNotFound") when it is gone."""
    return await client.query(
        pds_url,
        "com.atproto.repo.getRecord",
        {"repo": did, "collection": collection, "rkey": rkey},
        FetchedRecord,
        max_bytes=outbound.RECORD_BYTES,
    )


class RepoPosition(msgspec.Struct, frozen=True):
    collection_index: int = 0
    cursor: str | None = None


# (record events, position after the page, a reason per record skipped as invalid)
PageSink = Callable[[list[model.RecordEvent], RepoPosition, list[str]], Awaitable[None]]
# Extra validation of a record's value: the reason it is invalid, or None.
Validator = Callable[[str, msgspec.Raw], str | None]

# A PDS that never stops paging (an endless cursor) must not hold a worker forever.
MAX_PAGES_PER_COLLECTION = 100_000


async def chive_collections(client: XrpcClient, pds_url: str, did: str) -> list[str]:
    described = await client.query(
        pds_url, "com.atproto.repo.describeRepo", {"repo": did}, DescribeRepo
    )
    return sorted(c for c in described.collections if c.startswith(CHIVE_PREFIX))


async def scan_repo(
    ctx: WorkContext,
    pds_url: str,
    did: str,
    on_page: PageSink,
    *,
    start: RepoPosition | None = None,
    only: list[str] | None = None,
    validate: Validator | None = None,
) -> None:
    """Scan the repo's pub.chive collections, or just `only` (in that order), from `start`."""
    client, operation_id = ctx.services.client, ctx.operation_id
    collections = only if only is not None else await chive_collections(client, pds_url, did)
    position = start or RepoPosition()
    pages, first_uri = 0, None
    while position.collection_index < len(collections):
        ctx.check_cancelled()
        collection = collections[position.collection_index]
        page = await client.query(
            pds_url,
            "com.atproto.repo.listRecords",
            {"repo": did, "collection": collection, "limit": PAGE_SIZE, "cursor": position.cursor},
            ListRecords,
        )
        pages += 1
        if len(page.records) > PAGE_SIZE:
            raise SourceUnavailable(
                f"{pds_url} answered {len(page.records)} records for a page of {PAGE_SIZE}"
            )
        if page.records:
            if page.cursor is not None and page.cursor == position.cursor:
                raise SourceUnavailable(
                    f"{pds_url} returned the same listRecords cursor twice for {did}/{collection}"
                )
            if page.records[0].uri == first_uri:
                raise SourceUnavailable(
                    f"{pds_url} repeats the same listRecords page for {did}/{collection}"
                )
            if pages > MAX_PAGES_PER_COLLECTION:
                raise SourceUnavailable(
                    f"{pds_url} kept paging {did}/{collection} past "
                    f"{MAX_PAGES_PER_COLLECTION} pages"
                )
            first_uri = page.records[0].uri
        events, skipped = [], []
        for record in page.records:
            reason = invalid_record(record.uri, record.value, did, collection) or (
                validate(collection, record.value) if validate else None
            )
            if reason is None:
                events.append(_upsert(record, did, collection, operation_id))
            else:
                skipped.append(reason)
        if page.records and page.cursor:
            position = RepoPosition(position.collection_index, page.cursor)
        else:
            # The last full page still returns a cursor; the page after it is empty.
            position = RepoPosition(position.collection_index + 1, None)
            pages, first_uri = 0, None
        await on_page(events, position, skipped)


def invalid_record(uri: str, value: bytes, did: str, collection: str) -> str | None:
    """Why a record read from a repo cannot be indexed: its at-uri must name this repo,
    collection and a record key, and its value must be a JSON object of bounded size."""
    parsed = parse_at_uri(uri)
    if parsed is None or parsed[0] != did or parsed[1] != collection or parsed[2] is None:
        return "uri does not name a record of this repo and collection"
    return invalid_value(value)


def invalid_value(value: bytes) -> str | None:
    """Why a record's value cannot be indexed: it must be a JSON object of bounded size."""
    if not bytes(value).lstrip().startswith(b"{"):
        return "value is not an object"
    if len(value) > MAX_RECORD_VALUE_BYTES:
        return f"value is larger than {MAX_RECORD_VALUE_BYTES} bytes"
    return None


def tombstone(operation_id: str, uri: str) -> model.RecordDeleted:
    """The tombstone of the record at `uri` (at://did/collection/rkey)."""
    _, _, did, collection, rkey = uri.split("/", 4)
    return model.new_event(
        model.RecordDeleted, operation_id, uri=uri, did=did, collection=collection, rkey=rkey
    )


async def list_repos_page(
    client: XrpcClient, pds_url: str, cursor: str | None, limit: int
) -> ListRepos:
    """One listRepos page; SourceUnavailable for a page no PDS should answer (more repos than
    asked for, the same cursor handed back)."""
    page = await client.query(
        pds_url, "com.atproto.sync.listRepos", {"limit": limit, "cursor": cursor}, ListRepos
    )
    if len(page.repos) > limit:
        raise SourceUnavailable(f"{pds_url} answered {len(page.repos)} repos for a page of {limit}")
    if page.repos and page.cursor is not None and page.cursor == cursor:
        raise SourceUnavailable(f"{pds_url} returned the same listRepos cursor twice")
    return page


def _upsert(
    record: ListedRecord, did: str, collection: str, operation_id: str
) -> model.RecordUpserted:
    return model.new_event(
        model.RecordUpserted,
        operation_id,
        uri=record.uri,
        did=did,
        collection=collection,
        rkey=record.uri.rsplit("/", 1)[1],
        cid=record.cid,
        value=record.value,
    )
