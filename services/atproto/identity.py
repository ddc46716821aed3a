"""DID resolution (did:plc through a PLC directory, did:web, did:key) with a document cache.

Used by the API to find a caller's signing key and by workers to find a repo's PDS.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import httpx

from services import outbound
from services.atproto.syntax import is_did

STALE_AFTER_S = 3600.0
MAX_AGE_S = 86400.0
# Bounds that keep callers with made-up DIDs from growing memory or fanning out to the PLC
# directory: least recently used documents go first (by count and by bytes); a DID found
# missing is not asked again for a while (a fresh lookup, as didSync does, still asks).
MAX_ENTRIES = 10_000
MAX_CACHE_BYTES = 32 * 1024 * 1024
NOT_FOUND_TTL_S = 300.0
# A "fresh" lookup (after a signature did not verify) refetches a DID's document at most once
# in this long: bad signatures, which anyone can send, cannot turn into a fetch each.
FRESH_INTERVAL_S = 30.0


class DidNotFound(LookupError):
    pass


class ResolutionError(RuntimeError):
    """The DID's directory or host could not be reached or answered nonsense."""


@dataclass
class _Cached:
    document: dict[str, Any]
    fetched_at: float
    size: int


_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)


def did_web_url(did: str) -> str:
    """Where a did:web document lives, as the AT Protocol allows did:web: a hostname only (no
    path), a port only for `localhost` (written `%3A`), http only for `localhost`. Anything
    else is DidNotFound before any request is made."""
    if not is_did(did) or not did.startswith("did:web:"):
        raise DidNotFound(f"not a did:web: {did[:100]}")
    authority = did[len("did:web:") :]
    if ":" in authority:
        raise DidNotFound("did:web with a path is not supported by the AT Protocol")
    host, sep, port = authority.lower().partition("%3a")
    if "%" in host or "%" in port or not _HOSTNAME.match(host):
        raise DidNotFound(f"did:web host is not a hostname: {did[:100]}")
    if sep:
        if host != "localhost":
            raise DidNotFound("a did:web port is allowed only for localhost")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise DidNotFound(f"did:web port is not a port number: {did[:100]}")
        return f"http://localhost:{int(port)}/.well-known/did.json"
    scheme = "http" if host == "localhost" else "https"
    return f"{scheme}://{host}/.well-known/did.json"


class DidResolver:
    def __init__(
        self,
        fetcher: outbound.Fetcher,
        plc_url: str,
        deadline_s: float,
        fresh_interval_s: float = FRESH_INTERVAL_S,
    ) -> None:
        """`deadline_s`: each document fetch, whole (CHIVE_SOURCE_TIMEOUT_S).
        `fresh_interval_s`: the least time between two fresh fetches of one DID."""
        self._fresh_interval_s = fresh_interval_s
        self._deadline_s = deadline_s
        self._fetcher = fetcher
        self._plc_url = plc_url.rstrip("/")
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._cache_bytes = 0
        self._missing: OrderedDict[str, float] = OrderedDict()
        self._fresh_at: OrderedDict[str, float] = OrderedDict()
        # One fetch per DID at a time: concurrent lookups of one DID share it.
        self._inflight: dict[str, asyncio.Future[tuple[dict[str, Any], int]]] = {}
        self.fetches = 0

    async def resolve(self, did: str, *, fresh: bool = False) -> dict[str, Any]:
        """The DID document; cached for an hour, served stale up to a day if the source fails."""
        if not is_did(did):
            raise DidNotFound(f"not a DID: {did[:100]}")
        now = time.monotonic()
        if fresh:
            last = self._fresh_at.get(did)
            fresh = last is None or now - last >= self._fresh_interval_s
            if fresh:
                _remember(self._fresh_at, did, now)
        missing_since = self._missing.get(did)
        if missing_since is not None and not fresh and now - missing_since < NOT_FOUND_TTL_S:
            raise DidNotFound(f"{did} not found (cached)")
        cached = self._cache.get(did)
        age = now - cached.fetched_at if cached else None
        if cached and not fresh and age < STALE_AFTER_S:
            self._cache.move_to_end(did)
            return cached.document
        try:
            document, size = await self._fetch_once(did)
        except ResolutionError:
            if cached and age < MAX_AGE_S and not fresh:
                return cached.document
            raise
        except DidNotFound:
            _remember(self._missing, did, now)
            raise
        self._missing.pop(did, None)
        self._store(did, _Cached(document, time.monotonic(), size))
        return document

    async def _fetch_once(self, did: str) -> tuple[dict[str, Any], int]:
        pending = self._inflight.get(did)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._inflight[did] = future
        try:
            result = await self._fetch(did)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, none may exist
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[did]

    def _store(self, did: str, entry: _Cached) -> None:
        old = self._cache.pop(did, None)
        if old is not None:
            self._cache_bytes -= old.size
        self._cache[did] = entry
        self._cache_bytes += entry.size
        while self._cache and (
            len(self._cache) > MAX_ENTRIES or self._cache_bytes > MAX_CACHE_BYTES
        ):
            _, evicted = self._cache.popitem(last=False)
            self._cache_bytes -= evicted.size

    async def _fetch(self, did: str) -> tuple[dict[str, Any], int]:
        if did.startswith("did:plc:"):
            url = f"{self._plc_url}/{did}"
        elif did.startswith("did:web:"):
            url = did_web_url(did)
        else:
            raise DidNotFound(f"unsupported DID method: {did[:100]}")
        self.fetches += 1
        try:
            response = await self._fetcher.fetch(
                url, max_bytes=outbound.DID_DOCUMENT_BYTES, deadline_s=self._deadline_s
            )
        except outbound.FetchRefused as exc:
            raise DidNotFound(f"{did} cannot be resolved here: {exc}") from None
        except TimeoutError:
            raise ResolutionError(
                f"resolving {did}: no answer within {self._deadline_s:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise ResolutionError(f"cannot resolve {did}: {type(exc).__name__}") from exc
        if response.status in (404, 410):
            raise DidNotFound(f"{did} not found")
        if response.status != 200:
            raise ResolutionError(f"resolving {did}: HTTP {response.status}")
        try:
            document = json.loads(response.body)
        except ValueError as exc:
            raise ResolutionError(f"resolving {did}: body is not JSON") from exc
        if not isinstance(document, dict) or document.get("id") != did:
            raise ResolutionError(f"resolving {did}: document id does not match")
        return document, len(response.body)


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
