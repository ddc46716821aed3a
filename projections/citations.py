"""The citation policy of the index: how an eprint's user-provided citation records and the
citations extracted from its document combine into one list. Pure; the record index runs the
two queries and hands their rows here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from projections import eprints
from projections.record_fold import json_or_none

# Rows as the index reads them: (uri, value JSON) of each live pub.chive.eprint.citation
# record, and (title, doi, arxiv_id, year, authors JSON, raw, matched_uri, matched_by) of each
# extracted citation in document order.
UserRow = tuple[str, str]
ExtractedRow = tuple[Any, Any, Any, Any, str, Any, Any, Any]


def merge(user_rows: Iterable[UserRow], extracted: Iterable[ExtractedRow]) -> list[dict[str, Any]]:
    """User-provided citations first, then extracted ones, minus extracted entries that a
    user record already gives (same DOI, same cited eprint or same title): a user's record
    always wins."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for uri, value in user_rows:
        work = json_or_none(value) or {}
        work = work.get("citedWork") if isinstance(work.get("citedWork"), dict) else {}
        out.append({"source": "user", "uri": uri, **work})
        seen |= _identity(work.get("doi"), work.get("chiveUri"), work.get("title"))
    for title, doi, arxiv_id, year, authors, raw, matched, matched_by in extracted:
        if _identity(doi, matched, title) & seen:
            continue
        entry = {
            "source": "extracted",
            "title": title,
            "doi": doi,
            "arxivId": arxiv_id,
            "year": year,
            "authors": msgspec.json.decode(authors),
            "raw": raw,
            "chiveUri": matched,
            "matchedBy": matched_by,
        }
        out.append({k: v for k, v in entry.items() if v not in (None, [])})
    return out


def _identity(doi: Any, chive_uri: Any, title: Any) -> set[tuple[str, str]]:
    ids: set[tuple[str, str]] = set()
    if isinstance(doi, str) and (d := eprints.normalize_doi(doi)):
        ids.add(("doi", d))
    if isinstance(chive_uri, str) and chive_uri:
        ids.add(("uri", chive_uri))
    if isinstance(title, str) and (t := eprints.title_key(title)):
        ids.add(("title", t))
    return ids
