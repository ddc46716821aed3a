"""Reference lists, parsed: from GROBID's TEI, or from the plain text of a PDF. Pure functions.

Each parsed reference carries the citation as extracted plus the title candidates a matcher
may try: TEI names the title; in plain text it is a guess, so every sentence-like segment of
the entry is a candidate and the likeliest comes first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from defusedxml import ElementTree

from events.model import Citation
from projections.eprints import normalize_arxiv, normalize_doi

TEI = "{http://www.tei-c.org/ns/1.0}"
MAX_REFERENCES = 2000
MAX_RAW = 1000


class UnreadableReferences(ValueError):
    """The reference data cannot be parsed (not XML, not TEI)."""


@dataclass
class ParsedReference:
    citation: Citation
    title_candidates: list[str] = field(default_factory=list)


# -- TEI (GROBID /api/processReferences) ---------------------------------------------------
def parse_tei(data: bytes) -> list[ParsedReference]:
    try:
        root = ElementTree.fromstring(data)
    except Exception as exc:  # defusedxml raises several types for hostile or broken XML
        raise UnreadableReferences(f"GROBID answer is not XML: {exc}") from exc
    if not root.tag.startswith(TEI):
        raise UnreadableReferences(f"GROBID answer is not TEI: root element {root.tag}")
    out = []
    for bibl in root.iter(f"{TEI}biblStruct"):
        if len(out) >= MAX_REFERENCES:
            break
        analytic, monogr = bibl.find(f"{TEI}analytic"), bibl.find(f"{TEI}monogr")
        title = _title(analytic) or _title(monogr)
        authors = _authors(analytic) or _authors(monogr)
        doi = _idno(bibl, "DOI")
        arxiv = _idno(bibl, "arXiv")
        when = None
        date = bibl.find(f".//{TEI}imprint/{TEI}date")
        if date is not None:
            when = date.get("when") or (date.text or "")
        raw = None
        for note in bibl.iter(f"{TEI}note"):
            if note.get("type") == "raw_reference":
                raw = _text(note)
        if not (title or doi or arxiv or raw):
            continue
        citation = Citation(
            title=title,
            doi=normalize_doi(doi) if doi else None,
            arxiv_id=normalize_arxiv(arxiv) if arxiv else None,
            year=_year(when or ""),
            authors=authors,
            raw=raw[:MAX_RAW] if raw else None,
        )
        out.append(ParsedReference(citation, [title] if title else []))
    return out


def _text(element) -> str:
    return " ".join("".join(element.itertext()).split())


def _title(part) -> str | None:
    if part is None:
        return None
    titles = part.findall(f"{TEI}title")
    for t in titles:
        if t.get("type") == "main" and _text(t):
            return _text(t)
    for t in titles:
        if _text(t):
            return _text(t)
    return None


def _authors(part) -> list[str]:
    if part is None:
        return []
    names = []
    for pers in part.iter(f"{TEI}persName"):
        given = [_text(f) for f in pers.findall(f"{TEI}forename")]
        surname = pers.find(f"{TEI}surname")
        name = " ".join([*given, _text(surname) if surname is not None else ""]).strip()
        if name:
            names.append(name[:200])
    return names[:50]


def _idno(bibl, kind: str) -> str | None:
    for idno in bibl.iter(f"{TEI}idno"):
        if (idno.get("type") or "").lower() == kind.lower() and _text(idno):
            return _text(idno)
    return None


# -- plain text of a PDF -------------------------------------------------------------------
_HEADING = re.compile(
    r"(?im)^[ \t]*(?:\d+\.?[ \t]*)?(references|bibliography|works cited|literature cited)"
    r"[ \t]*:?[ \t]*$"
)
_NUMBERED = re.compile(r"(?m)^[ \t]*(?:\[(\d{1,4})\]|(\d{1,4})[.)])[ \t]+")
_ARXIV = re.compile(
    r"(?i)(?:arxiv[:\s]*|arxiv\.org/abs/)(\d{4}\.\d{4,5}(?:v\d+)?|[a-z\-]+(?:\.[a-z]{2})?/\d{7})"
)
_URL = re.compile(r"(?i)\b(?:https?://|doi:\s*)\S+")
_DOI_TEXT = re.compile(r"10\.\d{4,9}/\S+")
_YEAR = re.compile(r"\b(19\d{2}|20\d{2})\b")
_QUOTED = re.compile(r"[\"“”]([^\"“”]{8,})[\"“”]")
# A sentence ends at ". " unless the dot closes an initial ("J. Smith").
_SENTENCE = re.compile(r"(?<!\b[A-Z])\.\s+")


def reference_section(text: str) -> str | None:
    """The text after the last reference-list heading, or None if there is none."""
    headings = list(_HEADING.finditer(text))
    return text[headings[-1].end() :] if headings else None


def split_entries(section: str) -> list[str]:
    """Entries of a reference list: numbered ([1] or 1.) when it is, else blank-line
    separated blocks, else one per line. Wrapped lines are joined."""
    markers = _numbered(section)
    if markers:
        ends = [*(m.start() for m in markers[1:]), len(section)]
        chunks = [section[m.end() : e] for m, e in zip(markers, ends, strict=True)]
    elif "\n\n" in section.strip():
        chunks = section.split("\n\n")
    else:
        chunks = section.splitlines()
    entries = [_join_lines(c) for c in chunks]
    return [e for e in entries if len(e) >= 10][:MAX_REFERENCES]


def _numbered(section: str) -> list[re.Match]:
    """Entry markers numbered 1, 2, 3... in order: a wrapped line that happens to start with
    "2021." or "[7]" out of sequence is text, not a new entry."""
    markers: list[re.Match] = []
    for match in _NUMBERED.finditer(section):
        if int(match.group(1) or match.group(2)) == len(markers) + 1:
            markers.append(match)
    return markers


def _join_lines(chunk: str) -> str:
    out = ""
    for line in chunk.splitlines():
        line = line.strip()
        if not line:
            continue
        if out.endswith("-") or not out:
            out += line
        else:
            out += " " + line
    return out


def parse_entry(entry: str) -> ParsedReference:
    raw = " ".join(entry.split())[:MAX_RAW]
    doi_match = _DOI_TEXT.search(raw)
    arxiv_match = _ARXIV.search(raw)
    year_match = _YEAR.search(raw)
    rest = _URL.sub(" ", _ARXIV.sub(" ", _DOI_TEXT.sub(" ", raw)))
    quoted = _QUOTED.search(rest)
    stripped = (s.strip(" ,;:()") for s in _SENTENCE.split(rest))
    segments = [s for s in stripped if len(s.split()) >= 2 and not _YEAR.fullmatch(s.strip("."))]
    candidates: list[str] = []
    if quoted:
        candidates.append(quoted.group(1).strip(" ,.;:"))
    # "Authors. Title. Venue, year." is the common shape: the second segment first.
    candidates += segments[1:2] + segments[:1] + segments[2:]
    candidates = list(dict.fromkeys(c for c in candidates if c))
    citation = Citation(
        title=candidates[0] if candidates else None,
        doi=normalize_doi(doi_match.group(0)) if doi_match else None,
        arxiv_id=normalize_arxiv(arxiv_match.group(1)) if arxiv_match else None,
        year=int(year_match.group(1)) if year_match else None,
        raw=raw,
    )
    return ParsedReference(citation, candidates)


def references_from_text(text: str) -> list[ParsedReference]:
    section = reference_section(text)
    if section is None:
        return []
    return [parse_entry(e) for e in split_entries(section)]


def _year(when: str) -> int | None:
    match = _YEAR.search(when)
    return int(match.group(1)) if match else None
