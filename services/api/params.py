"""What each backfill type takes, and the checks the lexicon cannot express.

Pure functions: turn a lexicon-valid trigger body into the normalised parameters an operation
carries, or say precisely what is wrong with it.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from events import model
from events.model import BACKFILL_TYPES
from services.api.xrpc import invalid_request
from services.atproto.errors import XrpcError
from services.atproto.syntax import is_http_url, parse_at_uri

# Parameters each type accepts; any other given parameter is an error naming it.
ACCEPTS: dict[str, frozenset[str]] = {
    "didSync": frozenset({"did"}),
    "pdsScan": frozenset({"pdsUrl"}),
    "citationExtraction": frozenset({"uri"}),
    "fullReindex": frozenset({"batchSize"}),
    "freshnessScan": frozenset(),
    "governanceSync": frozenset(),
}
KNOWN = frozenset({"type", "did", "uri", "pdsUrl", "batchSize"})


def normalize_pds_url(url: str) -> str:
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, "", ""))


def backfill_params(raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(type, params) from the raw body (before lexicon defaults), or an XrpcError."""
    kind = raw["type"]
    if kind not in BACKFILL_TYPES:
        raise XrpcError(
            400,
            "InvalidBackfillType",
            f"Unknown backfill type {kind!r}; expected one of {', '.join(BACKFILL_TYPES)}",
        )
    given = {k for k, v in raw.items() if v is not None}
    unknown = sorted(given - KNOWN)
    if unknown:
        raise invalid_request(f"Unknown parameter: {', '.join(unknown)}")
    extra = sorted(given - ACCEPTS[kind] - {"type"})
    if extra:
        raise invalid_request(f"Parameter {', '.join(extra)} does not apply to {kind}")
    params: dict[str, Any] = {}
    if kind == "didSync":
        if "did" not in given:
            raise invalid_request("didSync requires did")
        params["did"] = raw["did"]
    elif kind == "pdsScan" and "pdsUrl" in given:
        url = raw["pdsUrl"]
        if not is_http_url(url):
            raise invalid_request("pdsUrl must be an absolute http(s) URL")
        params["pdsUrl"] = normalize_pds_url(url)
    elif kind == "citationExtraction" and "uri" in given:
        parsed = parse_at_uri(raw["uri"])
        if parsed is None or parsed[2] is None:
            raise invalid_request("uri must be a full record at-uri (at://did/collection/rkey)")
        if parsed[1] != "pub.chive.eprint.submission" or not parsed[0].startswith("did:"):
            raise invalid_request(
                "uri must name an eprint: at://<did>/pub.chive.eprint.submission/<rkey>"
            )
        params["uri"] = raw["uri"]
    elif kind == "fullReindex":
        params["batchSize"] = raw.get("batchSize", model.FULL_REINDEX_BATCH_SIZE)
    return kind, params


def dedupe_key(kind: str, params: dict[str, Any]) -> str:
    return kind + ":" + json.dumps(params, sort_keys=True, separators=(",", ":"))
