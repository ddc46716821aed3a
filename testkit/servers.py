"""Real HTTP servers on loopback for tests: a PDS speaking the XRPC subset the workers use
(with the reference server's quirks), a PLC directory, and did:web documents.

Each runs uvicorn in its own thread and event loop, so tests, in-process services and
subprocess services all reach it over TCP alike.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

import uvicorn
from pypdf import PdfReader
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from services.atproto import car, keys
from testkit import repo_car
from testkit.broker import free_port, wait_for_port


class LoopbackServer:
    def __init__(self, app) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                lifespan="off",
                access_log=False,
            )
        )
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self._server.serve())

    def start(self) -> LoopbackServer:
        self._thread.start()
        wait_for_port("127.0.0.1", self.port)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def _error(status: int, name: str, message: str) -> JSONResponse:
    return JSONResponse({"error": name, "message": message}, status_code=status)


def cid_for(value: Any) -> str:
    """The record's CID, as a PDS computes it: its DAG-CBOR block's."""
    return str(repo_car.record_block(value)[0])


def blob_cid(data: bytes) -> str:
    return str(car.cid_for(data, car.RAW))


@dataclass
class Repo:
    did: str
    # collection -> rkey -> value
    collections: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    active: bool = True


@dataclass
class Faults:
    """Misbehaviour to inject: the next N answers of a method fail with `status`."""

    fail: dict[str, list[int]] = field(default_factory=dict)
    delay_s: float = 0.0
    retry_after: str | None = None
    # The next answers of a method: these raw bodies with status 200 (truncated, not JSON...).
    bodies: dict[str, list[bytes]] = field(default_factory=dict)
    # The next answers of a method wait this long first (longer than the client's timeout).
    stalls: dict[str, list[float]] = field(default_factory=dict)
    # listRecords never ends: every page has the same records and a fresh cursor.
    endless_cursor: bool = False
    # listRecords answers this many records whatever the limit asked (repeating the repo's).
    overfill: int = 0
    # getRepo answers 501 MethodNotImplemented, as a PDS without the sync API would.
    no_get_repo: bool = False
    # getRepo serves the CAR through this (tampering tests): (did, car bytes) -> bytes.
    car_filter: Any = None
    # The next getRepo answers send this many bytes of the CAR, then wait this long (past the
    # client's deadline) before the rest: a download cut off midway.
    car_stalls: list[tuple[int, float]] = field(default_factory=list)


class FakePds:
    def __init__(self, plc: FakePlc | None = None) -> None:
        """`plc`: a directory where each repo added here is registered (its DID pointing at
        this PDS, with the key the repo is signed with) unless the DID is there already."""
        self._plc = plc
        self._cars: dict[str, tuple[str, bytes, str, str]] = {}
        self.repos: dict[str, Repo] = {}
        self.faults = Faults()
        self.calls: dict[str, int] = {}
        self.did_web_documents: dict[str, dict[str, Any]] = {}
        # (did, cid) -> (bytes, mime type)
        self.blobs: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.app = Starlette(
            routes=[
                Route("/xrpc/com.atproto.sync.listRepos", self.list_repos),
                Route("/xrpc/com.atproto.sync.getRepo", self.get_repo),
                Route("/xrpc/com.atproto.repo.describeRepo", self.describe_repo),
                Route("/xrpc/com.atproto.repo.listRecords", self.list_records),
                Route("/xrpc/com.atproto.repo.getRecord", self.get_record),
                Route("/xrpc/com.atproto.sync.getBlob", self.get_blob),
                Route("/.well-known/did.json", self.did_web),
            ]
        )
        self._server = LoopbackServer(self.app)
        self.url = self._server.url

    def start(self) -> FakePds:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    # -- data ----------------------------------------------------------------------------
    def add_repo(self, did: str, counts: dict[str, int], active: bool = True) -> Repo:
        repo = Repo(did, active=active)
        for collection, n in counts.items():
            # rkeys sort like TIDs: newest (largest) first in listRecords.
            repo.collections[collection] = {
                f"3k{i:010d}": {"$type": collection, "n": i, "did": did} for i in range(n)
            }
        self.repos[did] = repo
        self._register(did)
        return repo

    def _register(self, did: str) -> None:
        if self._plc is not None and did not in self._plc.documents:
            self._plc.register(did, pds_url=self.url)

    def add_blob(self, did: str, data: bytes, mime: str = "application/pdf") -> dict[str, Any]:
        """Store a blob in the repo; returns the blob ref a record holds."""
        cid = blob_cid(data)
        self.blobs[(did, cid)] = (data, mime)
        return {"$type": "blob", "ref": {"$link": cid}, "mimeType": mime, "size": len(data)}

    def put_record(self, did: str, collection: str, rkey: str, value: dict[str, Any]) -> str:
        repo = self.repos.setdefault(did, Repo(did))
        self._register(did)
        repo.collections.setdefault(collection, {})[rkey] = {"$type": collection, **value}
        return f"at://{did}/{collection}/{rkey}"

    def chive_count(self, did: str) -> int:
        repo = self.repos[did]
        return sum(len(r) for c, r in repo.collections.items() if c.startswith("pub.chive."))

    def chive_uris(self) -> list[str]:
        return sorted(
            f"at://{repo.did}/{c}/{rkey}"
            for repo in self.repos.values()
            if repo.active
            for c, records in repo.collections.items()
            if c.startswith("pub.chive.")
            for rkey in records
        )

    # -- behaviour -----------------------------------------------------------------------
    async def _gate(self, method: str) -> Response | None:
        self.calls[method] = self.calls.get(method, 0) + 1
        if self.faults.delay_s:
            await asyncio.sleep(self.faults.delay_s)
        stalls = self.faults.stalls.get(method)
        if stalls:
            await asyncio.sleep(stalls.pop(0))
        bodies = self.faults.bodies.get(method)
        if bodies:
            return Response(bodies.pop(0), status_code=200, media_type="application/json")
        pending = self.faults.fail.get(method)
        if pending:
            status = pending.pop(0)
            headers = {"retry-after": self.faults.retry_after} if self.faults.retry_after else {}
            return JSONResponse(
                {"error": "InternalServerError", "message": "Internal Server Error"},
                status_code=status,
                headers=headers,
            )
        return None

    def repo_car(self, did: str) -> tuple[bytes, str, str]:
        """(CAR, rev, head) of the repo as it is now, signed with its DID's test key. The
        revision follows the content (tests edit collections in place)."""
        repo = self.repos[did]
        records = {
            f"{c}/{rkey}": value for c, rs in repo.collections.items() for rkey, value in rs.items()
        }
        digest = hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()
        cached = self._cars.get(did)
        if cached is None or cached[0] != digest:
            rev = "3k" + digest[:11]
            data = repo_car.build_car(did, records, rev)
            roots, _ = car.read_car(data)
            cached = self._cars[did] = (digest, data, rev, str(roots[0]))
        return cached[1], cached[2], cached[3]

    async def list_repos(self, request: Request) -> Response:
        if (fault := await self._gate("listRepos")) is not None:
            return fault
        limit = min(int(request.query_params.get("limit", 500)), 1000)
        cursor = request.query_params.get("cursor")
        dids = sorted(d for d in self.repos if cursor is None or d > cursor)[:limit]
        listed = []
        for d in dids:
            _, rev, head = self.repo_car(d)
            listed.append({"did": d, "head": head, "rev": rev, "active": self.repos[d].active})
        body: dict[str, Any] = {"repos": listed}
        if dids:
            body["cursor"] = dids[-1]
        return JSONResponse(body)

    async def get_repo(self, request: Request) -> Response:
        """The whole repo as a CAR; `since` is not honoured (a whole repo is a valid answer to
        it: everything in it is at least as new)."""
        if (fault := await self._gate("getRepo")) is not None:
            return fault
        if self.faults.no_get_repo:
            return _error(501, "MethodNotImplemented", "Method Not Implemented")
        did = request.query_params.get("did", "")
        repo = self.repos.get(did)
        if repo is None:
            return _error(400, "RepoNotFound", f"Could not find repo for DID: {did}")
        if not repo.active:
            return _error(400, "RepoDeactivated", f"Repo has been deactivated: {did}")
        data, _, _ = self.repo_car(did)
        if self.faults.car_filter is not None:
            data = self.faults.car_filter(did, data)
        if self.faults.car_stalls:
            sent, stall = self.faults.car_stalls.pop(0)

            async def halting():
                yield data[:sent]
                await asyncio.sleep(stall)
                yield data[sent:]

            return StreamingResponse(halting(), media_type="application/vnd.ipld.car")
        return Response(data, media_type="application/vnd.ipld.car")

    async def describe_repo(self, request: Request) -> Response:
        if (fault := await self._gate("describeRepo")) is not None:
            return fault
        repo = self.repos.get(request.query_params.get("repo", ""))
        if repo is None:
            return _error(400, "RepoNotFound", "Could not find repo")
        return JSONResponse(
            {
                "did": repo.did,
                "handle": "handle.invalid",
                "didDoc": {},
                "collections": sorted(repo.collections),
                "handleIsCorrect": False,
            }
        )

    async def list_records(self, request: Request) -> Response:
        if (fault := await self._gate("listRecords")) is not None:
            return fault
        q = request.query_params
        repo = self.repos.get(q.get("repo", ""))
        if repo is None:
            return _error(400, "RepoNotFound", "Could not find repo")
        limit = int(q.get("limit", 50))
        if not 1 <= limit <= 100:
            return _error(400, "InvalidRequest", "limit must be between 1 and 100")
        cursor = q.get("cursor")
        records = repo.collections.get(q.get("collection", ""), {})
        if self.faults.endless_cursor:
            self.calls["endless"] = self.calls.get("endless", 0) + 1
            first = sorted(records, reverse=True)[:limit]
            return JSONResponse(
                {
                    "records": [
                        {
                            "uri": f"at://{repo.did}/{q['collection']}/{k}",
                            "cid": cid_for(records[k]),
                            "value": records[k],
                        }
                        for k in first
                    ],
                    "cursor": f"c{self.calls['endless']}",
                }
            )
        rkeys = sorted((k for k in records if cursor is None or k < cursor), reverse=True)
        page = rkeys[:limit]
        if self.faults.overfill and page:
            page = (page * self.faults.overfill)[: self.faults.overfill]
        body: dict[str, Any] = {
            "records": [
                {
                    "uri": f"at://{repo.did}/{q['collection']}/{k}",
                    "cid": cid_for(records[k]),
                    "value": records[k],
                }
                for k in page
            ]
        }
        # Like the reference PDS: a cursor on every non-empty page, so the page after the
        # last full one is empty and has none.
        if page:
            body["cursor"] = page[-1]
        return JSONResponse(body)

    async def get_record(self, request: Request) -> Response:
        if (fault := await self._gate("getRecord")) is not None:
            return fault
        q = request.query_params
        repo = self.repos.get(q.get("repo", ""))
        value = repo and repo.collections.get(q.get("collection", ""), {}).get(q.get("rkey"))
        if not value:
            return _error(400, "RecordNotFound", f"Could not locate record: {q.get('rkey')}")
        uri = f"at://{repo.did}/{q['collection']}/{q['rkey']}"
        return JSONResponse({"uri": uri, "cid": cid_for(value), "value": value})

    async def get_blob(self, request: Request) -> Response:
        if (fault := await self._gate("getBlob")) is not None:
            return fault
        q = request.query_params
        if q.get("did") not in self.repos:
            return _error(400, "RepoNotFound", f"Could not find repo for DID: {q.get('did')}")
        blob = self.blobs.get((q.get("did", ""), q.get("cid", "")))
        if blob is None:
            # What the reference PDS 0.5.35 answers (tests/test_reference_atproto.py checks it).
            return _error(400, "InvalidRequest", "Blob not found")
        return Response(blob[0], media_type=blob[1])

    async def did_web(self, request: Request) -> Response:
        host = request.headers.get("host", "")
        doc = self.did_web_documents.get(host)
        if doc is None:
            return Response(status_code=404)
        return JSONResponse(doc)


class FakePlc:
    def __init__(self) -> None:
        self.documents: dict[str, dict[str, Any]] = {}
        self.requests = 0
        self.app = Starlette(routes=[Route("/{did:path}", self.resolve)])
        self._server = LoopbackServer(self.app)
        self.url = self._server.url

    def start(self) -> FakePlc:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    async def resolve(self, request: Request) -> Response:
        self.requests += 1
        doc = self.documents.get(request.path_params["did"])
        if doc is None:
            return _error(404, "NotFound", f"DID not registered: {request.path_params['did']}")
        return JSONResponse(doc)

    def register(
        self, did: str, *, pds_url: str | None = None, key_multibase: str | None = None
    ) -> dict[str, Any]:
        # As the reference PLC server does: the key in the legacy form, id "#atproto". Unless
        # told otherwise, the key the loopback PDS signs this DID's repo with.
        if key_multibase is None:
            key_multibase = repo_car.repo_key(did).public.multibase()
        self.documents[did] = did_document(
            did, pds_url=pds_url, key_multibase=key_multibase, form="legacy"
        )
        return self.documents[did]


# The verification-method type of each curve in the legacy form.
LEGACY_TYPES = {
    "ES256K": "EcdsaSecp256k1VerificationKey2019",
    "ES256": "EcdsaSecp256r1VerificationKey2019",
}


def did_document(
    did: str,
    *,
    pds_url: str | None = None,
    key_multibase: str | None = None,
    form: str = "multikey",
) -> dict[str, Any]:
    """`form`: "multikey" (prefixed compressed point, full id), "legacy" (the reference PLC's:
    type names the curve, bare uncompressed point, id "#atproto") or "legacy-compressed"."""
    doc: dict[str, Any] = {
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": did,
        "alsoKnownAs": [],
        "verificationMethod": [],
        "service": [],
    }
    if key_multibase:
        method = {
            "id": f"{did}#atproto",
            "type": "Multikey",
            "controller": did,
            "publicKeyMultibase": key_multibase,
        }
        if form.startswith("legacy"):
            key = keys.parse_multibase_key(key_multibase)
            bare = key.legacy_multibase()
            if form == "legacy-compressed":
                bare = "z" + keys.b58encode(keys.b58decode(key_multibase[1:])[2:])
            method.update(
                id="#atproto", type=LEGACY_TYPES[key.curve.jwt_alg], publicKeyMultibase=bare
            )
        doc["verificationMethod"].append(method)
    if pds_url:
        doc["service"].append(
            {"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds_url}
        )
    return doc


def wait_until(check, timeout: float = 20.0, what: str = "condition"):
    """Blocking counterpart of testkit.waiting.eventually, for synchronous tests."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class FakeGrobid:
    """A GROBID stand-in: `/api/isalive` and `/api/processReferences` (multipart `input`),
    answering with GROBID's TEI for the references registered for each PDF. A PDF registered
    with none gets 204, as GROBID answers a document without references; a body that is not
    a PDF it can open gets GROBID's 500 [BAD_INPUT_DATA]."""

    def __init__(self) -> None:
        # sha256 of the PDF -> references (dicts: title, doi, arxiv, year, authors, raw)
        self.references: dict[str, list[dict[str, Any]]] = {}
        self.received: list[str] = []
        self.calls: dict[str, int] = {}
        self.busy = 0  # the next N processReferences calls answer 503
        self.delay_s = 0.0
        self.app = Starlette(
            routes=[
                Route("/api/isalive", self.isalive),
                Route("/api/processReferences", self.process_references, methods=["POST"]),
            ]
        )
        self._server = LoopbackServer(self.app)
        self.url = self._server.url

    def start(self) -> FakeGrobid:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def register(self, pdf: bytes, references: list[dict[str, Any]]) -> None:
        self.references[hashlib.sha256(pdf).hexdigest()] = references

    async def isalive(self, request: Request) -> Response:
        self.calls["isalive"] = self.calls.get("isalive", 0) + 1
        return Response("true", media_type="text/plain")

    async def process_references(self, request: Request) -> Response:
        self.calls["processReferences"] = self.calls.get("processReferences", 0) + 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.busy:
            self.busy -= 1
            return Response(status_code=503)
        form = await request.form()
        upload = form.get("input")
        if upload is None or isinstance(upload, str):
            return Response("[GENERAL] An exception occurred: missing input", status_code=400)
        data = await upload.read()
        if not _is_pdf(data):
            return Response("[BAD_INPUT_DATA] PDF to XML conversion failed", status_code=500)
        digest = hashlib.sha256(data).hexdigest()
        self.received.append(digest)
        references = self.references.get(digest)
        if not references:
            return Response(status_code=204)
        return Response(tei(references), media_type="application/xml")


def _is_pdf(data: bytes) -> bool:
    """What GROBID's PDF parser accepts, near enough: a file a PDF reader can open."""
    try:
        return len(PdfReader(io.BytesIO(data)).pages) > 0
    except Exception:
        return False


def tei(references: list[dict[str, Any]]) -> str:
    """GROBID's processReferences TEI for these references."""
    entries = []
    for i, ref in enumerate(references):
        authors = "".join(
            "<author><persName>"
            + "".join(
                f'<forename type="first">{escape(given)}</forename>' for given in name.split()[:-1]
            )
            + f"<surname>{escape(name.split()[-1])}</surname></persName></author>"
            for name in ref.get("authors", [])
        )
        doi = f'<idno type="DOI">{escape(ref["doi"])}</idno>' if ref.get("doi") else ""
        arxiv = (
            f'<idno type="arXiv">arXiv:{escape(ref["arxiv"])}</idno>' if ref.get("arxiv") else ""
        )
        year = (
            f'<date type="published" when="{ref["year"]}">{ref["year"]}</date>'
            if ref.get("year")
            else ""
        )
        raw = f'<note type="raw_reference">{escape(ref["raw"])}</note>' if ref.get("raw") else ""
        entries.append(
            f'<biblStruct xml:id="b{i}"><analytic>'
            f'<title level="a" type="main">{escape(ref.get("title", ""))}</title>'
            f'{authors}{doi}</analytic><monogr><title level="j">{escape(ref.get("venue", ""))}'
            f"</title><imprint>{year}</imprint></monogr>{arxiv}{raw}</biblStruct>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<TEI xmlns="http://www.tei-c.org/ns/1.0" xmlns:xlink="http://www.w3.org/1999/xlink">'
        "<teiHeader/><text><front/><body/><back><div><listBibl>"
        + "".join(entries)
        + "</listBibl></div></back></text></TEI>"
    )
