"""citationExtraction on both logs, against a loopback PDS (real PDFs as blobs) and a GROBID
stand-in answering real TEI: citations matched by DOI and by title, user citation records kept
apart and ahead, skipped documents counted with reasons, one event per eprint replacing the
earlier set; cancel; SIGKILL and resume to the exact count."""

from __future__ import annotations

import json

import msgspec

from events import model
from events.log import read_to_end
from projections.index_reader import FollowingIndex
from services import bootstrap
from testkit.broker import free_port
from testkit.documents import paper_pdf
from testkit.harness import (
    attempts,
    kill_while_running,
    process_service,
    run_cli,
    running_service,
    service_env,
    settings_for,
)
from testkit.servers import FakeGrobid, blob_cid, cid_for
from testkit.waiting import eventually

SUBMISSION = "pub.chive.eprint.submission"
PDF = "application/pdf"
DOI = "10.1234/jtest.2021.045"
CITED_BY_DOI = "Graph neural networks for citation analysis of preprints"
CITED_BY_TITLE = "Decentralized Scholarly Communication on the AT-Protocol"
REFERENCES = [
    # Cites the first eprint by its DOI, under a different title than the record's.
    "A. Smith and B. Jones. GNNs for citation analysis. Journal of Testing, 2021. "
    "doi:10.1234/jtest.2021.045",
    # Cites the second by title only, spelled differently.
    "C. Doe. Decentralized scholarly communication on the AT protocol. In Proceedings of "
    "Things, 2020.",
    "E. Roe. Quantum widgets. arXiv:2101.00001v2, 2021.",
    "G. Nobody. A work this index does not hold at all. Obscure Venue, 1999.",
]


def submission(title: str, document: dict | None, **extra) -> dict:
    value = {
        "title": title,
        "abstract": [{"text": f"Abstract of {title}."}],
        "licenseSlug": "CC-BY-4.0",
        "authors": [{"name": "Ada Lovelace", "order": 1}],
        "submittedBy": "did:plc:submitter",
        "createdAt": "2026-11-01T00:00:00.000Z",
        **extra,
    }
    if document is not None:
        value["document"] = document
    return value


def library(pds, plc, did: str) -> dict[str, str]:
    """An author's repo: eprints that cite, are cited, and cannot be read. Returns uris."""
    plc.register(did, pds_url=pds.url)
    empty = pds.add_blob(did, paper_pdf("Cited paper", []))
    uris = {
        "by_doi": pds.put_record(
            did,
            SUBMISSION,
            "3k0000000001",
            submission(CITED_BY_DOI, empty, publishedVersion={"doi": "10.1234/JTEST.2021.045"}),
        ),
        "by_title": pds.put_record(
            did, SUBMISSION, "3k0000000002", submission(CITED_BY_TITLE, empty)
        ),
        "citing": pds.put_record(
            did,
            SUBMISSION,
            "3k0000000003",
            submission("A paper that cites", pds.add_blob(did, paper_pdf("Cites", REFERENCES))),
        ),
        "no_document": pds.put_record(
            did, SUBMISSION, "3k0000000004", submission("Metadata only", None)
        ),
        "missing_blob": pds.put_record(
            did,
            SUBMISSION,
            "3k0000000005",
            submission(
                "Blob never uploaded",
                {
                    "$type": "blob",
                    "ref": {"$link": blob_cid(b"a blob the PDS never received")},
                    "mimeType": "application/pdf",
                },
            ),
        ),
        "garbage": pds.put_record(
            did,
            SUBMISSION,
            "3k0000000006",
            submission("Broken upload", pds.add_blob(did, b"%PDF-1.7\nthis is not a PDF body")),
        ),
    }
    # The author's own citation of the DOI-cited eprint: it must win over the extracted one.
    uris["user_citation"] = pds.put_record(
        did,
        "pub.chive.eprint.citation",
        "3k0000000007",
        {
            "eprintUri": uris["citing"],
            "citedWork": {
                "title": "GNNs (as the author cites it)",
                "doi": "10.1234/jtest.2021.045",
            },
            "citationType": "extends",
            "createdAt": "2026-11-02T00:00:00.000Z",
        },
    )
    return uris


async def synced(client, did: str) -> None:
    op = await client.trigger(type="didSync", did=did)
    assert (await client.wait_finished(op["id"]))["status"] == "completed"


async def extracted_events(settings, op_id: str) -> list[model.CitationsExtracted]:
    async with bootstrap.open_log(settings) as event_log:
        messages = await read_to_end(event_log, model.RECORDS_TOPIC)
    events = [model.decode(m.value) for m in messages]
    return [
        e for e in events if isinstance(e, model.CitationsExtracted) and e.operation_id == op_id
    ]


async def test_pdf_text_citations_matched_and_user_records_kept(
    kafka, admin, tmp_path, plc, fresh_pds, unique
):
    did = f"did:plc:ce{unique}"
    uris = library(fresh_pds, plc, did)
    settings = settings_for(tmp_path / "data", admin, plc.url, kafka=kafka, namespace=unique)
    async with running_service(settings, admin) as client:
        await synced(client, did)
        # Transient faults on the blob fetches are retried, not counted as skipped.
        fresh_pds.faults.fail = {"getBlob": [503, 429, 500]}
        op = await client.trigger(type="citationExtraction")
        done = await client.wait_finished(op["id"], timeout=60)
        assert done["status"] == "completed", done
        assert fresh_pds.faults.fail["getBlob"] == [], "the faults were served"
        assert (done["recordsProcessed"], done["totalRecords"]) == (6, 6)
        assert done["recordsSkipped"] == 3
        assert done["skipReasons"] == {
            "no document": 1,
            "document not found": 1,
            "unreadable document": 1,
        }

        # One event per readable eprint on the log, each with its whole set.
        events = await extracted_events(settings, op["id"])
        assert sorted(e.uri for e in events) == sorted(
            [uris["by_doi"], uris["by_title"], uris["citing"]]
        )
        citing = next(e for e in events if e.uri == uris["citing"])
        assert citing.method == "pdf-text" and len(citing.citations) == 4
        by_doi, by_title, arxiv, unknown = citing.citations
        assert (by_doi.matched_uri, by_doi.matched_by) == (uris["by_doi"], "doi")
        assert (by_title.matched_uri, by_title.matched_by) == (uris["by_title"], "title")
        assert arxiv.arxiv_id == "2101.00001" and arxiv.matched_uri is None
        assert unknown.matched_uri is None and unknown.year == 1999

        index = FollowingIndex(settings.data_dir)
        await index.open()
        try:

            async def listed() -> list[dict]:
                return await index.citations(uris["citing"])

            await eventually(lambda: listed(), what="citations in the index")
            shown = await listed()
            # The user's record first; the extracted DOI match it duplicates is not shown.
            assert [c["source"] for c in shown] == ["user", "extracted", "extracted", "extracted"]
            assert shown[0]["uri"] == uris["user_citation"]
            assert shown[0]["title"] == "GNNs (as the author cites it)"
            assert shown[1]["chiveUri"] == uris["by_title"] and shown[1]["matchedBy"] == "title"
            assert shown[2]["arxivId"] == "2101.00001"
            # The user's citation record itself is untouched.
            record = await index.get(uris["user_citation"])
            value = fresh_pds.repos[did].collections["pub.chive.eprint.citation"]["3k0000000007"]
            assert record.cid == cid_for(value) and not record.deleted
            assert await index.citations(uris["by_doi"]) == []
        finally:
            await index.close()
        cli_env = {"CHIVE_DATA_DIR": str(settings.data_dir), "CHIVE_LOG_LEVEL": "WARNING"}
        code, out, err = await run_cli(cli_env, "records", "citations", uris["citing"])
        assert code == 0, err
        assert json.loads(out) == shown
        code, _, err = await run_cli(cli_env, "records", "citations")
        assert code == 2 and "needs an argument" in err


async def test_grobid_tei_and_a_new_set_replaces_the_old(
    kafka, admin, tmp_path, plc, fresh_pds, unique
):
    did = f"did:plc:cg{unique}"
    uris = library(fresh_pds, plc, did)
    citing_pdf = paper_pdf("Cites", REFERENCES)
    grobid = FakeGrobid().start()
    grobid.register(
        citing_pdf,
        [
            {"title": "Something else entirely", "doi": "10.1234/jtest.2021.045", "year": 2021},
            {"title": CITED_BY_TITLE.upper(), "authors": ["C Doe"], "raw": "C. Doe. ..."},
            {"title": "Quantum widgets", "arxiv": "2101.00001v2"},
        ],
    )
    grobid.busy = 2  # GROBID's 503 while its workers are busy: retried
    settings = msgspec.structs.replace(
        settings_for(tmp_path / "data", admin, plc.url, kafka=kafka, namespace=unique),
        grobid_url=grobid.url,
    )
    try:
        async with running_service(settings, admin) as client:
            await synced(client, did)
            first = await client.trigger(type="citationExtraction", uri=uris["citing"])
            done = await client.wait_finished(first["id"], timeout=60)
            assert done["status"] == "completed", done
            assert (done["recordsProcessed"], done["totalRecords"]) == (1, 1)
            assert grobid.calls["isalive"] >= 1 and grobid.calls["processReferences"] == 3
            [event] = await extracted_events(settings, first["id"])
            assert event.method == "grobid" and len(event.citations) == 3
            assert [c.matched_by for c in event.citations] == ["doi", "title", None]
            assert event.citations[1].authors == ["C Doe"]

            # The author revises the reference list: the next extraction replaces the set.
            grobid.register(citing_pdf, [{"title": "Only one reference is left now"}])
            second = await client.trigger(type="citationExtraction", uri=uris["citing"])
            assert (await client.wait_finished(second["id"]))["status"] == "completed"
            index = FollowingIndex(settings.data_dir)
            await index.open()
            try:

                async def replaced() -> bool:
                    extracted = [
                        c for c in await index.citations(uris["citing"]) if c["source"] != "user"
                    ]
                    return [c["title"] for c in extracted] == ["Only one reference is left now"]

                await eventually(replaced, what="the second set to replace the first")
            finally:
                await index.close()

            # The whole index: GROBID's 500 on the broken upload is a skipped document.
            everything = await client.trigger(type="citationExtraction")
            done = await client.wait_finished(everything["id"], timeout=60)
            assert done["status"] == "completed", done
            assert done["recordsProcessed"] == 6
            assert done["skipReasons"] == {
                "no document": 1,
                "document not found": 1,
                "unreadable document": 1,
            }
    finally:
        grobid.stop()


async def test_dead_grobid_fails_the_operation_clearly(admin, tmp_path, plc, unique):
    dead = f"http://127.0.0.1:{free_port()}"
    settings = msgspec.structs.replace(
        settings_for(tmp_path / "data", admin, plc.url), grobid_url=dead, source_attempts=2
    )
    async with running_service(settings, admin) as client:
        op = await client.trigger(type="citationExtraction")
        done = await client.wait_finished(op["id"], timeout=60)
    assert done["status"] == "failed" and "GROBID" in done["error"] and dead in done["error"]


def many_eprints(pds, plc, did: str, n: int) -> None:
    plc.register(did, pds_url=pds.url)
    blob = pds.add_blob(did, paper_pdf("Shared", REFERENCES[:2]))
    for i in range(n):
        pds.put_record(did, SUBMISSION, f"3k{i:010d}", submission(f"Eprint number {i}", blob))


async def test_cancel_stops_the_extraction(kafka, admin, tmp_path, plc, fresh_pds, unique):
    did = f"did:plc:cc{unique}"
    many_eprints(fresh_pds, plc, did, 800)
    settings = settings_for(tmp_path / "data", admin, plc.url, kafka=kafka, namespace=unique)
    async with running_service(settings, admin) as client:
        await synced(client, did)
        fresh_pds.faults.delay_s = 0.03
        op = await client.trigger(type="citationExtraction")
        await client.wait_processed(op["id"])
        await client.post("pub.chive.admin.cancelBackfill", {"id": op["id"]})
        done = await client.wait_finished(op["id"])
        calls = fresh_pds.calls["getBlob"]
        fresh_pds.faults.delay_s = 0
    assert done["status"] == "cancelled" and 0 < done["recordsProcessed"] < 800
    assert calls < 800, "the work stopped at the cancel"


async def test_sigkill_mid_extraction_resumes_to_the_exact_count(
    kafka, admin, tmp_path, plc, fresh_pds, unique
):
    did = f"did:plc:ck{unique}"
    many_eprints(fresh_pds, plc, did, 1500)
    port = free_port()
    env = service_env(tmp_path / "data", port, plc.url, admin, kafka=kafka, namespace=unique)
    async with process_service(env, tmp_path / "service.log", admin) as (service, client):
        await synced(client, did)
        fresh_pds.faults.delay_s = 0.005
        op = await client.trigger(type="citationExtraction")
        await kill_while_running(service, client, op["id"], (300, 900))
        done = await client.wait_finished(op["id"], timeout=120)
        index = FollowingIndex(tmp_path / "data")
        await index.open()
        try:

            async def all_sets() -> bool:
                snapshot = await index.snapshot()
                return sum(k.startswith("citations ") for k in snapshot) == 1500

            await eventually(all_sets, timeout=30, what="a citation set for every eprint")
        finally:
            await index.close()
    assert done["status"] == "completed", done
    assert (done["recordsProcessed"], done["totalRecords"]) == (1500, 1500)
    assert "recordsSkipped" not in done
    assert await attempts(env, op["id"]) >= 2, "the kills missed the running extraction"
