"""Reference-list parsing, pure: text of a generated PDF, GROBID's TEI, hostile input."""

from __future__ import annotations

import pytest

from projections import eprints
from services.workers.pdf_text import PdfTextPool, UnreadablePdf
from services.workers.references import (
    UnreadableReferences,
    parse_tei,
    references_from_text,
    split_entries,
)
from testkit.documents import paper_pdf
from testkit.servers import tei

pytestmark = pytest.mark.unit

REFERENCES = [
    "A. Smith and B. Jones. Graph neural networks for citation analysis of preprints. "
    "Journal of Testing, 12(3):45-67, 2021. doi:10.1234/jtest.2021.045",
    "C. Doe. Decentralized scholarly communication on the AT Protocol: a long title that "
    "wraps across more than one line of the page. In Proceedings of Things, 2020.",
    "E. Roe. Quantum widgets. arXiv:2101.00001v2, 2021.",
    'F. Poe, "Quoted titles are titles too", Some Venue, 2019.',
]


@pytest.fixture
async def pdf():
    pool = PdfTextPool()
    yield pool
    await pool.close()


async def test_reference_list_of_a_generated_pdf(pdf):
    refs = references_from_text(await pdf.text(paper_pdf("A paper", REFERENCES)))
    assert len(refs) == 4
    first, second, third, fourth = (r.citation for r in refs)
    assert first.doi == "10.1234/jtest.2021.045" and first.year == 2021
    assert first.title == "Graph neural networks for citation analysis of preprints"
    assert second.title.startswith("Decentralized scholarly communication")
    assert second.title.endswith("line of the page"), "wrapped lines are joined"
    assert third.arxiv_id == "2101.00001" and third.title == "Quantum widgets"
    assert fourth.title == "Quoted titles are titles too"


async def test_a_document_without_a_reference_list_has_no_references(pdf):
    assert references_from_text(await pdf.text(paper_pdf("No refs", []))) == []


def test_line_starting_with_a_year_is_not_a_new_entry():
    entries = split_entries("[1] A. B. Title one. Venue,\n2021. More.\n[2] C. D. Title two. 2020.")
    assert len(entries) == 2 and entries[0].endswith("2021. More.")


async def test_unreadable_pdfs_are_refused(pdf):
    with pytest.raises(UnreadablePdf, match="no %PDF- header"):
        await pdf.text(b"not a pdf at all")
    with pytest.raises(UnreadablePdf) as garbage:
        await pdf.text(b"%PDF-1.7\n garbage that is not a PDF body")
    assert "Traceback" not in str(garbage.value)


def test_tei_from_grobid():
    data = tei(
        [
            {
                "title": "Graph neural networks",
                "doi": "10.1234/ABC.5",
                "authors": ["Ada B Lovelace"],
                "year": 2020,
                "raw": "raw text",
            },
            {"title": "Quantum widgets", "arxiv": "2101.00001v3"},
        ]
    ).encode()
    refs = parse_tei(data)
    assert [r.citation.title for r in refs] == ["Graph neural networks", "Quantum widgets"]
    assert refs[0].citation.doi == "10.1234/abc.5"
    assert refs[0].citation.authors == ["Ada B Lovelace"] and refs[0].citation.year == 2020
    assert refs[1].citation.arxiv_id == "2101.00001"


@pytest.mark.parametrize(
    "body",
    [
        b"<html>busy</html",
        b"<notTei/>",
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><x>&b;</x>',
    ],
)
def test_bad_or_hostile_tei_is_refused(body):
    with pytest.raises(UnreadableReferences):
        parse_tei(body)


def test_match_keys_of_a_submission():
    value = {
        "title": "Decentralized Scholarly Communication on the AT-Protocol",
        "publishedVersion": {"doi": "https://doi.org/10.5555/ABC"},
        "externalIds": {"zenodoDoi": "10.5281/zenodo.1"},
        "abstract": [{"$type": "x#textItem", "text": "We study"}, {"text": "things."}],
    }
    assert eprints.match_keys(value) == [
        ("doi", "10.5281/zenodo.1"),
        ("doi", "10.5555/abc"),
        ("title", "decentralized scholarly communication on the at protocol"),
    ]
    assert eprints.abstract_of(value) == "We study things."
    assert eprints.title_key("Results") is None, "short titles match too much by accident"
