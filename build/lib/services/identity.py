"""DID resolution (did:plc through a PLC directory, did:web, did:key) with a document cache.

Used by the API to find a caller's signing key and by workers to find a repo's PDS.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpx

from services.api.formats import is_did

STALE_AFTER_S = 3600.0
MAX_AGE_S = 86400.0
# Bounds that keep callers with made-up DIDs from growing memory or fanning out to the PLC
# directory: least recently used documents go first; a DID found missing is not asked again
# for a while (a fresh lookup, as didSync does, still asks).
MAX_ENTRIES = 10_000
NOT_FOUND_TTL_S = 300.0


class DidNotFound(LookupError):
    pass


class ResolutionError(RuntimeError):
    """The DID's directory or host could not be reached or answered nonsense."""


@dataclass
class _Cached:
    document: dict[str, Any]
    fetched_at: float


def did_web_url(did: str) -> str:
    parts = [unquote(p) for p in did[len("did:web:") :].split(":")]
    host, path = parts[0], parts[1:]
    hostname = host.split(":")[0]
    scheme = "http" if hostname in ("localhost", "127.0.0.1", "[::1]") else "https"
    if path:
        return f"{scheme}://{host}/{'/'.join(path)}/did.json"
    return f"{scheme}://{host}/.well-known/did.json"


class DidResolver:
    def __init__(self, http: httpx.AsyncClient, plc_url: str) -> None:
        self._http = http
        self._plc_url = plc_url.rstrip("/")
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._missing: OrderedDict[str, float] = OrderedDict()

    async def resolve(self, did: str, *, fresh: bool = False) -> dict[str, Any]:
        """The DID document; cached for an hour, served stale up to a day if the source fails."""
        if not is_did(did):
            raise DidNotFound(f"not a DID: {did}")
        now = time.monotonic()
        missing_since = self._missing.get(did)
        if missing_since is not None and not fresh and now - missing_since < NOT_FOUND_TTL_S:
            raise DidNotFound(f"{did} not found (cached)")
        cached = self._cache.get(did)
        age = now - cached.fetched_at if cached else None
        if cached and not fresh and age < STALE_AFTER_S:
            self._cache.move_to_end(did)
            return cached.document
        try:
            document = await self._fetch(did)
        except ResolutionError:
            if cached and age < MAX_AGE_S and not fresh:
                return cached.document
            raise
        except DidNotFound:
            _remember(self._missing, did, now)
            raise
        self._missing.pop(did, None)
        _remember(self._cache, did, _Cached(document, now))
        return document

    async def _fetch(self, did: str) -> dict[str, Any]:
        if did.startswith("did:plc:"):
            url = f"{self._plc_url}/{did}"
        elif did.startswith("did:web:"):
            url = did_web_url(did)
        else:
            raise DidNotFound(f"unsupported DID method: {did}")
        try:
            response = await self._http.get(url, timeout=10.0)
        except httpx.HTTPError as exc:
            raise ResolutionError(f"cannot resolve {did} at {url}: {exc!r}") from exc
        if response.status_code in (404, 410):
            raise DidNotFound(f"{did} not found at {url}")
        if response.status_code != 200:
            raise ResolutionError(f"resolving {did} at {url}: HTTP {response.status_code}")
        try:
            document = response.json()
        except ValueError as exc:
            raise ResolutionError(f"resolving {did}: body is not JSON") from exc
        if not isinstance(document, dict) or document.get("id") != did:
            raise ResolutionError(f"resolving {did}: document id does not match")
        return document


def _remember(cache: OrderedDict, key: str, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > MAX_ENTRIES:
        cache.popitem(last=False)


def signing_key_method(document: dict[str, Any]) -> tuple[str | None, str] | None:
    """(type, publicKeyMultibase) of the `#atproto` verification method."""
    did = document.get("id")
    for method in document.get("verificationMethod") or []:
        if not isinstance(method, dict):
            continue
        if method.get("id") in ("#atproto", f"{did}#atproto"):
            key, kind = method.get("publicKeyMultibase"), method.get("type")
            if not isinstance(key, str) or not (kind is None or isinstance(kind, str)):
                return None
            return kind, key
    return None


def pds_endpoint(document: dict[str, Any]) -> str | None:
    """serviceEndpoint of the `#atproto_pds` service."""
    did = document.get("id")
    for service in document.get("service") or []:
        if not isinstance(service, dict):
            continue
        if (
            service.get("id") in ("#atproto_pds", f"{did}#atproto_pds")
            and service.get("type") == "AtprotoPersonalDataServer"
        ):
            endpoint = service.get("serviceEndpoint")
            return endpoint.rstrip("/") if isinstance(endpoint, str) else None
    return None
