"""The one outbound fetch policy: every request this service sends to someone else's server
(a DID document, a PDS page, a record, a blob) goes through here.

- **Where.** https only, to public unicast addresses, checked after DNS resolution on every new
  connection, and the connection is made to the address that was checked (no DNS-rebinding
  gap). No redirects. Loopback, private and link-local targets and plain http are allowed only
  with `allow_private` (CHIVE_ALLOW_PRIVATE_NETWORKS, for local development and tests). Hosts
  the operator configured (PLC directory, governance PDS, GROBID) are trusted as configured.
- **How much.** Each kind of response has a byte cap, counted on the decoded body while it
  streams in (a gzip bomb stops at the cap, not after inflating); a Content-Length over the cap
  is refused before reading.
- **How long.** A total deadline per request, whatever the server trickles.

Modelled on the reference implementation's safe fetch (@atproto-labs/fetch-node).
"""

from __future__ import annotations

import asyncio
import ipaddress
import select
import socket
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpcore
import httpx

# Byte caps per kind of response.
DID_DOCUMENT_BYTES = 512 * 1024
PAGE_BYTES = 16 * 1024 * 1024  # listRecords / listRepos / describeRepo pages
RECORD_BYTES = 2 * 1024 * 1024  # getRecord
# A whole repository (getRepo): held in memory to verify; a larger one is read page by page.
REPO_BYTES = 64 * 1024 * 1024
# (getBlob's cap is the caller's: citationExtraction's document size)


class FetchRefused(Exception):
    """The policy does not allow this request (address, scheme, size, encoding): another
    attempt would be refused too."""


class ResponseTooLarge(FetchRefused):
    pass


@dataclass(frozen=True)
class Policy:
    allow_private: bool = False
    # "host:port" of URLs the operator configured; reached as configured.
    trusted: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def for_urls(cls, allow_private: bool, urls: Iterable[str | None]) -> Policy:
        return cls(allow_private, frozenset(_origin(u) for u in urls if u))

    def check_url(self, url: str) -> None:
        """Refuse what the policy forbids before any connection is made."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise FetchRefused(f"not an http(s) URL: {url[:200]}")
        if parts.username is not None or parts.password is not None:
            raise FetchRefused("credentials in a URL are not allowed")
        if not parts.hostname:
            raise FetchRefused(f"no host in {url[:200]}")
        trusted = _origin(url) in self.trusted
        if parts.scheme == "http" and not (self.allow_private or trusted):
            raise FetchRefused(f"plain http is not allowed: {_origin(url)}")

    def address_allowed(self, host: str, port: int, address: str) -> bool:
        if self.allow_private or f"{host}:{port}" in self.trusted:
            return True
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_global and not ip.is_multicast


def _origin(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves the host itself, keeps only the addresses the policy allows, and connects to
    one of those: the address checked is the address used."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self, host, port, timeout=None, local_address=None, socket_options=None
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror}") from None
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        allowed = [a for a in addresses if self._policy.address_allowed(host, port, a)]
        if not allowed:
            raise _Refused(f"{host} resolves to no public address")
        last: Exception | None = None
        for address in allowed:
            try:
                stream = await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
                return _QuickStream(stream)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _QuickStream(httpcore.AsyncNetworkStream):
    """A connection as the pool sees it, answering "is the idle connection still good?"
    (asked of every idle connection of the pool on every request) from its socket, looked up
    once: anyio rebuilds a table of all its attributes at each ask, and with a few dozen PDSes
    at once that ask cost a scan more than its downloads did."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        return _QuickStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str):
        if info == "is_readable" and self._socket is not None:
            return _readable(self._socket)
        if info == "socket":
            return self._socket
        return self._inner.get_extra_info(info)


def _readable(sock: socket.socket) -> bool:
    """An idle connection with something to read has been closed by the server (or was sent
    what nobody asked for): either way, not one to send the next request on."""
    fd = sock.fileno()
    if fd == -1:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class _Refused(httpcore.ConnectError):
    """A refusal by policy at connection time (surfaces as httpx.ConnectError)."""


class Fetcher:
    """The outbound HTTP client and the policy it enforces, as one: whoever holds it fetches
    only as the policy allows (every connection is checked by the client built from it)."""

    def __init__(self, policy: Policy, *, max_connections: int = 100) -> None:
        self.policy = policy
        # Requests beyond the pool's connections wait here, not in the pool: httpcore's pool
        # goes over every waiting request each time a connection frees (600 fetches at once
        # took 14 s here and 500 failed with PoolTimeout; with this, 2.8 s and none), and a
        # wait for a connection of our own is not the source's time: it is not counted in
        # the fetch's deadline.
        self._connections = asyncio.Semaphore(max_connections)
        transport = httpx.AsyncHTTPTransport(trust_env=False)
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=max_connections,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=_GuardedBackend(policy),
        )
        # No redirects, no proxies from the environment, and only encodings `read_capped`
        # can bound.
        self.http = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,
            trust_env=False,
            headers={"accept-encoding": "gzip, deflate"},
        )

    def connection(self) -> asyncio.Semaphore:
        """Held around a request made with `http` directly (GROBID's uploads): it counts
        against the same `max_connections` as the fetches."""
        return self._connections

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.http.aclose()

    async def fetch(
        self,
        url: str,
        *,
        params: dict | None = None,
        max_bytes: int,
        deadline_s: float,
        into: Callable[[bytes], None] | None = None,
    ) -> Fetched:
        """One GET under the policy: FetchRefused for what it forbids, TimeoutError past the
        deadline, httpx.HTTPError for transport failures. `into`: where a 200 answer's body
        goes as it streams in, piece by piece (the Fetched body is then empty); the deadline
        counts the time `into` takes."""
        self.policy.check_url(url)
        async with self._connections:
            try:
                async with asyncio.timeout(deadline_s):
                    async with self.http.stream("GET", url, params=params) as response:
                        sink = into if response.status_code == 200 else None
                        body = await read_capped(response, max_bytes, sink)
                        return Fetched(response.status_code, response.headers, body)
            except httpx.ConnectError as exc:
                if isinstance(exc.__cause__, _Refused):
                    raise FetchRefused(str(exc)) from None
                raise


@dataclass
class Fetched:
    status: int
    headers: httpx.Headers
    body: bytes


def _decoder(encoding: str):
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    raise FetchRefused(f"unsupported content-encoding {encoding!r}")


async def read_capped(
    response: httpx.Response, max_bytes: int, into: Callable[[bytes], None] | None = None
) -> bytes:
    """The decoded body, refused as soon as it would pass `max_bytes`; with `into`, handed to
    it piece by piece instead (and b"" returned)."""
    declared = response.headers.get("content-length")
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if declared is not None and declared.isdigit() and not encoding and int(declared) > max_bytes:
        raise ResponseTooLarge(f"response of {declared} bytes is over the {max_bytes} cap")
    decoder = _decoder(encoding)
    out = bytearray()
    take = out.extend if into is None else into
    total = 0
    async for chunk in response.aiter_raw():
        if decoder is None:
            total += len(chunk)
            if total > max_bytes:
                break
            take(chunk)
            continue
        pending = chunk
        while pending and total <= max_bytes:
            # Never inflate more than one byte past the cap.
            piece = decoder.decompress(pending, max_bytes + 1 - total)
            total += len(piece)
            if total > max_bytes:
                break
            if piece:
                take(piece)
            pending = decoder.unconsumed_tail
        if total > max_bytes:
            break
    if total > max_bytes:
        raise ResponseTooLarge(f"response is over the {max_bytes}-byte cap")
    return bytes(out)
