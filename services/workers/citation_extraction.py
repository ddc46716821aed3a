"""citationExtraction: the reference list of each eprint's document, matched to indexed eprints.

With `uri`, that eprint (from the index, else fetched from its PDS); without, every live
eprint submission of the worker's record index, in uri order, a page at a time. Each document
blob is fetched with com.atproto.sync.getBlob from the author's PDS. With CHIVE_GROBID_URL the
PDF goes to GROBID and its TEI is parsed; without, pypdf extracts the text and the reference
list is found in it. Each citation is matched to an indexed eprint by DOI, then by normalized
title. One CitationsExtracted event per eprint (keyed by its uri) replaces that eprint's earlier
set; the index keeps user-provided pub.chive.eprint.citation records apart and ahead of them.

recordsProcessed = eprints handled; an eprint without a document, with one that is not a PDF,
gone or unreadable, or on an unreachable PDS is counted in recordsSkipped with the reason.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec

from events import model
from projections import eprints
from projections.records import IndexedRecord, RecordIndex
from services.workers.context import (
    OperationFailed,
    Outcome,
    WorkContext,
    caught_up_index,
    count_reasons,
    from_checkpoint,
    pds_of,
    to_checkpoint,
)
from services.workers.grobid import GrobidRejected, GrobidUnavailable
from services.workers.index_pages import Handled, each_page
from services.workers.pdf_text import UnreadablePdf
from services.workers.references import (
    ParsedReference,
    UnreadableReferences,
    parse_tei,
    references_from_text,
)
from services.workers.repo_scan import get_record
from services.workers.xrpc_client import SourceUnavailable, XrpcCallError

log = logging.getLogger(__name__)

PAGE = 16
MAX_DOCUMENT = 50 * 1024 * 1024  # the lexicon's maxSize for a submission's document
PDF = "application/pdf"
GONE = {"BlobNotFound", "RepoNotFound", "RecordNotFound", "NotFound"}


class Checkpoint(msgspec.Struct):
    after: str = ""
    handled: int = 0
    total: int | None = None
    skipped: dict[str, int] = {}


async def run(ctx: WorkContext) -> Outcome:
    index = await caught_up_index(ctx)
    grobid = ctx.services.grobid
    if grobid is not None:
        try:
            await grobid.check_alive()
        except GrobidUnavailable as exc:
            raise OperationFailed(str(exc)) from exc
    state = from_checkpoint(ctx.checkpoint, Checkpoint)
    only = ctx.params.get("uri")
    if state.total is None:
        state.total = 1 if only else await index.live_count(eprints.SUBMISSION)
    limit = asyncio.Semaphore(ctx.services.limits.extraction_concurrency)

    async def bounded(record: IndexedRecord) -> Handled:
        async with limit:
            if ctx.cancel_requested:
                return "cancelled", None
            return await extract(ctx, index, record)

    async def next_page(after: str) -> list[IndexedRecord]:
        if only:
            return [] if after else [await _eprint(ctx, index, only)]
        return await index.live_page(after, PAGE, collection=eprints.SUBMISSION, values=True)

    async def on_page(page: list[IndexedRecord], results: list[Handled]) -> None:
        count_reasons(state.skipped, (outcome for outcome, event in results if event is None))
        state.handled += len(page)
        state.after = page[-1].uri
        await ctx.progress(state.handled, to_checkpoint(state), total_records=state.total)

    await each_page(ctx, state.after, next_page, bounded, on_page)
    return Outcome(
        records_processed=state.handled,
        total_records=state.total,
        records_skipped=sum(state.skipped.values()),
        skip_reasons=dict(state.skipped),
    )


async def extract(
    ctx: WorkContext, index: RecordIndex, record: IndexedRecord
) -> tuple[str, model.CitationsExtracted | None]:
    """(outcome, event): the event with the eprint's citations, or None and the skip reason."""
    document = eprints.document_of(record.value)
    if document is None:
        return "no document", None
    cid, mime = document
    if mime and mime != PDF:
        return "document is not a PDF", None
    try:
        pds = await pds_of(ctx.services, record.did)
    except OperationFailed:
        return "author DID unresolvable", None
    try:
        data = await ctx.services.client.blob(pds, record.did, cid, MAX_DOCUMENT)
    except SourceUnavailable:
        return f"PDS unreachable: {pds}", None
    except XrpcCallError as exc:
        if exc.error in GONE:
            return "document not found", None
        if exc.error == "BlobTooLarge":
            return "document too large", None
        return f"document refused: {exc.error}", None
    grobid = ctx.services.grobid
    try:
        if grobid is not None:
            tei = await grobid.references(data)
            references = parse_tei(tei) if tei else []
        else:
            assert ctx.services.pdf is not None, "no GROBID and no PDF text pool"
            references = references_from_text(await ctx.services.pdf.text(data))
    except (GrobidRejected, UnreadablePdf, UnreadableReferences) as exc:
        log.info("%s: %s is unreadable: %s", ctx.operation_id, record.uri, exc)
        return "unreadable document", None
    except GrobidUnavailable as exc:
        raise OperationFailed(str(exc)) from exc
    citations = [await _matched(index, ref, record.uri) for ref in references]
    return "extracted", model.new_event(
        model.CitationsExtracted,
        ctx.operation_id,
        uri=record.uri,
        did=record.did,
        document_cid=cid,
        method="grobid" if grobid is not None else "pdf-text",
        citations=citations,
    )


async def _matched(index: RecordIndex, ref: ParsedReference, citing: str) -> model.Citation:
    """The citation with the indexed eprint it cites: by DOI first, then by title."""
    citation = ref.citation
    if citation.doi:
        uri = await index.match_eprint("doi", citation.doi)
        if uri and uri != citing:
            return msgspec.structs.replace(citation, matched_uri=uri, matched_by="doi")
    for title in ref.title_candidates:
        key = eprints.title_key(title)
        uri = key and await index.match_eprint("title", key)
        if uri and uri != citing:
            return msgspec.structs.replace(
                citation, title=title, matched_uri=uri, matched_by="title"
            )
    return citation


async def _eprint(ctx: WorkContext, index: RecordIndex, uri: str) -> IndexedRecord:
    """The eprint from the index, or from its PDS when the index does not hold it (yet)."""
    record = await index.get(uri)
    if record is not None and not record.deleted:
        return record
    _, _, did, collection, rkey = uri.split("/", 4)
    pds = await pds_of(ctx.services, did)
    try:
        fetched = await get_record(ctx.services.client, pds, did, collection, rkey)
    except XrpcCallError as exc:
        raise OperationFailed(f"eprint {uri} not found: {exc.error}") from exc
    except SourceUnavailable as exc:
        raise OperationFailed(f"eprint {uri} could not be fetched: {exc}") from exc
    value = msgspec.json.decode(fetched.value)
    return IndexedRecord(uri, did, collection, rkey, fetched.cid or "", value, 0, False)
