"""Calls to AT Protocol servers (PDS, PLC) with bounded retries.

Transient faults (connection errors, timeouts, 5xx, 429, bodies that are not the JSON we
expect) are retried with exponential backoff and jitter, honouring Retry-After; after the last
attempt the source is reported unreachable. Other 4xx answers are final and carry the XRPC
error name (`RecordNotFound`, `RepoNotFound`, ...).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import msgspec

from events.waiting import Backoff
from services import outbound

T = TypeVar("T")
R = TypeVar("R")


class SourceUnavailable(RuntimeError):
    """The server could not be reached or kept failing."""


class XrpcCallError(RuntimeError):
    def __init__(self, url: str, status: int, error: str, message: str) -> None:
        super().__init__(f"{url}: {status} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message


@dataclass
class RetryPolicy:
    attempts: int = 5
    backoff: Backoff = field(default_factory=lambda: Backoff(jitter=True))
    max_retry_after_s: float = 30.0
    timeout_s: float = 15.0


class XrpcClient:
    """Calls under the outbound fetch policy: each response kind has its byte cap, each
    request a total deadline (`RetryPolicy.timeout_s`), and no redirect is followed."""

    def __init__(
        self,
        fetcher: outbound.Fetcher,
        policy: RetryPolicy | None = None,
        observe: Callable[[str, str], None] | None = None,
    ) -> None:
        """`observe(url, outcome)`: told of every attempt; outcome "ok", the HTTP status of
        an error answer, or "unreachable"."""
        self._fetcher = fetcher
        self.policy = policy or RetryPolicy()
        self._observe = observe or (lambda _url, _outcome: None)

    async def query(
        self,
        base_url: str,
        nsid: str,
        params: dict[str, Any],
        into: type[T],
        max_bytes: int = outbound.PAGE_BYTES,
    ) -> T:
        url = f"{base_url.rstrip('/')}/xrpc/{nsid}"
        query = {k: v for k, v in params.items() if v is not None}
        return await self.get(url, query, into, max_bytes)

    async def get(
        self, url: str, params: dict[str, Any], into: type[T], max_bytes: int = outbound.PAGE_BYTES
    ) -> T:
        return await self._get(url, params, max_bytes, lambda b: msgspec.json.decode(b, type=into))

    async def stream_into(
        self,
        base_url: str,
        nsid: str,
        params: dict[str, Any],
        max_bytes: int,
        start: Callable[[], Callable[[bytes], None]],
    ) -> None:
        """A query whose answer is not JSON (a CAR), handed to a consumer as it streams in, at
        most `max_bytes` (XrpcCallError "ResponseTooLarge" past it). `start()` gives the
        consumer for each attempt: an attempt that fails midway is retried from the start, into
        a fresh consumer. What the consumer raises ends the call."""
        url = f"{base_url.rstrip('/')}/xrpc/{nsid}"
        query = {k: v for k, v in params.items() if v is not None}
        await self._get(url, query, max_bytes, lambda _empty: None, start=start)

    async def blob(self, base_url: str, did: str, cid: str, max_bytes: int) -> bytes:
        """com.atproto.sync.getBlob; XrpcCallError("BlobTooLarge") past max_bytes (counted as
        it streams in, never after the whole download), "BlobNotFound" for a missing blob."""
        url = f"{base_url.rstrip('/')}/xrpc/com.atproto.sync.getBlob"
        params = {"did": did, "cid": cid}
        try:
            return await self._get(url, params, max_bytes, lambda b: b, too_large="BlobTooLarge")
        except XrpcCallError as exc:
            # The reference PDS (0.5.x) answers a missing blob with 400 InvalidRequest "Blob
            # not found"; callers get the lexicon's name for it.
            if (exc.status, exc.error, exc.message) != (400, "InvalidRequest", "Blob not found"):
                raise
            raise XrpcCallError(url, 400, "BlobNotFound", exc.message) from None

    async def _get(
        self,
        url: str,
        params: dict[str, Any],
        max_bytes: int,
        parse: Callable[[bytes], T],
        too_large: str = "ResponseTooLarge",
        start: Callable[[], Callable[[bytes], None]] | None = None,
    ) -> T:
        async def attempt() -> T:
            try:
                response = await request(
                    self._fetcher.fetch(
                        url,
                        params=params,
                        max_bytes=max_bytes,
                        deadline_s=self.policy.timeout_s,
                        into=None if start is None else start(),
                    )
                )
            except outbound.ResponseTooLarge as exc:
                # An answer, just too big: final, like an XRPC error (never retried).
                self._observe(url, "too large")
                raise XrpcCallError(url, 200, too_large, str(exc)) from None
            except (Retry, SourceUnavailable):
                self._observe(url, "unreachable")
                raise
            status = response.status
            self._observe(url, "ok" if status == 200 else str(status))
            if status == 200:
                try:
                    return parse(response.body)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise Retry(f"unexpected response body: {exc}") from exc
            # 501: the server does not implement the method; asking again will not change that.
            if status == 429 or (status >= 500 and status != 501):
                cap = self.policy.max_retry_after_s
                raise Retry(f"HTTP {status}", _retry_after(response.headers, cap))
            error, message = _error_body(response)
            raise XrpcCallError(url, status, error, message)

        return await retrying(self.policy, attempt, url)


class Retry(Exception):
    """One attempt failed in a way another attempt may not (after `retry_after` s at least)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


async def request(sending: Awaitable[R]) -> R:
    """The response, or Retry when the request did not get one (connection, timeout). A
    refusal by the fetch policy is final: SourceUnavailable at once, never retried; a response
    over its cap passes through as ResponseTooLarge."""
    try:
        return await sending
    except outbound.ResponseTooLarge:
        raise  # the caller names it
    except outbound.FetchRefused as exc:
        raise SourceUnavailable(f"refused by the outbound fetch policy: {exc}") from None
    except TimeoutError:
        raise Retry("no complete answer within the request deadline") from None
    except httpx.HTTPError as exc:
        raise Retry(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc


async def retrying(policy: RetryPolicy, attempt: Callable[[], Awaitable[T]], what: str) -> T:
    """`attempt()` until it returns, with backoff between attempts that raise Retry; after
    the last, SourceUnavailable naming `what` and the last reason. Other errors pass through."""
    last = "no attempt made"
    for n in range(policy.attempts):
        try:
            return await attempt()
        except Retry as exc:
            last = str(exc)
            if n + 1 < policy.attempts:
                await asyncio.sleep(policy.backoff.delay(n, exc.retry_after or 0.0))
    raise SourceUnavailable(f"{what} failed after {policy.attempts} attempts: {last}")


def _retry_after(headers: httpx.Headers, cap: float) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return min(cap, max(0.0, float(value)))
    except ValueError:
        return None


def _error_body(response: outbound.Fetched) -> tuple[str, str]:
    """The XRPC error name and message; nothing of a body that is not an XRPC error (it could
    be anything a server answers, and it ends up in an operation's error)."""
    try:
        body = msgspec.json.decode(response.body)
        error, message = body.get("error", "Error"), body.get("message", "")
    except (msgspec.DecodeError, AttributeError):
        return f"HTTP{response.status}", ""
    if not isinstance(error, str) or not isinstance(message, str):
        return f"HTTP{response.status}", ""
    return error[:100], message[:200]
