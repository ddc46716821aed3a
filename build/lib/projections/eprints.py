"""What the index needs to know of an eprint submission, and the normal forms used to match a
citation to one: pure functions, shared by the record projection (which stores the keys) and
citationExtraction (which looks them up)."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

SUBMISSION = "pub.chive.eprint.submission"

_NON_WORD = re.compile(r"[^0-9a-z]+")
_DOI = re.compile(r"10\.\d{4,9}/\S+")
# Titles shorter than this match too much by accident ("Introduction", "Results").
MIN_TITLE_KEY = 12


def normalize_title(title: str) -> str:
    """Lowercase ascii words separated by single spaces: accents, case, punctuation and
    spacing differ between a PDF's reference list and the record, the words do not."""
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode().lower()
    return _NON_WORD.sub(" ", text).strip()


def title_key(title: str) -> str | None:
    key = normalize_title(title)
    return key if len(key) >= MIN_TITLE_KEY else None


def normalize_doi(doi: str) -> str | None:
    """The bare lowercase DOI (`10.x/y`) from a DOI, `doi:` form or doi.org URL."""
    match = _DOI.search(doi.strip())
    if match is None:
        return None
    return match.group(0).rstrip(".,;)]}>\"'").lower()


def normalize_arxiv(arxiv_id: str) -> str | None:
    """`2101.00001` or `hep-th/9901001`, without the `arXiv:` prefix or version."""
    text = arxiv_id.strip()
    text = re.sub(r"(?i)^(arxiv:|https?://arxiv\.org/abs/)", "", text)
    text = re.sub(r"v\d+$", "", text)
    return text or None


def title_of(value: Any) -> str:
    title = value.get("title") if isinstance(value, dict) else None
    return title if isinstance(title, str) else ""


def abstract_of(value: Any) -> str:
    """abstractPlainText, else the text items of the rich abstract, else a plain string."""
    if not isinstance(value, dict):
        return ""
    plain = value.get("abstractPlainText")
    if isinstance(plain, str) and plain:
        return plain
    abstract = value.get("abstract")
    if isinstance(abstract, str):
        return abstract
    if isinstance(abstract, list):
        return " ".join(
            item["text"]
            for item in abstract
            if isinstance(item, dict) and isinstance(item.get("text"), str)
        )
    return ""


def dois_of(value: Any) -> list[str]:
    """Every DOI a submission names for itself (published version, Zenodo, plain `doi`)."""
    if not isinstance(value, dict):
        return []
    candidates = [value.get("doi")]
    published = value.get("publishedVersion")
    if isinstance(published, dict):
        candidates.append(published.get("doi"))
    external = value.get("externalIds")
    if isinstance(external, dict):
        candidates += [external.get("doi"), external.get("zenodoDoi")]
    found = {normalize_doi(c) for c in candidates if isinstance(c, str)}
    return sorted(d for d in found if d)


def match_keys(value: Any) -> list[tuple[str, str]]:
    """(kind, key) pairs a citation can match this submission by."""
    keys = [("doi", d) for d in dois_of(value)]
    title = title_key(title_of(value))
    if title:
        keys.append(("title", title))
    return keys


def document_of(value: Any) -> tuple[str, str] | None:
    """(blob cid, mime type) of the submission's document, if it names one."""
    document = value.get("document") if isinstance(value, dict) else None
    if not isinstance(document, dict):
        return None
    ref = document.get("ref")
    cid = ref.get("$link") if isinstance(ref, dict) else document.get("cid")
    if not isinstance(cid, str) or not cid:
        return None
    mime = document.get("mimeType")
    return cid, mime if isinstance(mime, str) else ""
