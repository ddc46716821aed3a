"""Calls to AT Protocol servers (PDS, PLC) with bounded retries.

Transient faults (connection errors, timeouts, 5xx, 429, bodies that are not the JSON we
expect) are retried with exponential backoff and jitter, honouring Retry-After; after the last
attempt the source is reported unreachable. Other 4xx answers are final and carry the XRPC
error name (`RecordNotFound`, `RepoNotFound`, ...).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import msgspec

T = TypeVar("T")


class SourceUnavailable(RuntimeError):
    """The server could not be reached or kept failing."""


class XrpcCallError(RuntimeError):
    def __init__(self, url: str, status: int, error: str, message: str) -> None:
        super().__init__(f"{url}: {status} {error}: {message}")
        self.status = status
        self.error = error


@dataclass
class RetryPolicy:
    attempts: int = 5
    base_delay_s: float = 0.2
    max_delay_s: float = 5.0
    max_retry_after_s: float = 30.0
    timeout_s: float = 15.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Exponential backoff with jitter after attempt `attempt` (0-based), at least what
        the server asked for."""
        delay = min(self.max_delay_s, self.base_delay_s * 2**attempt)
        return max(delay * (0.5 + random.random() / 2), retry_after or 0.0)


class XrpcClient:
    def __init__(self, http: httpx.AsyncClient, policy: RetryPolicy | None = None) -> None:
        self._http = http
        self.policy = policy or RetryPolicy()

    async def query(self, base_url: str, nsid: str, params: dict[str, Any], into: type[T]) -> T:
        url = f"{base_url.rstrip('/')}/xrpc/{nsid}"
        query = {k: v for k, v in params.items() if v is not None}
        return await self.get(url, query, into)

    async def get(self, url: str, params: dict[str, Any], into: type[T]) -> T:
        return await self._get(url, params, lambda r: msgspec.json.decode(r.content, type=into))

    async def blob(self, base_url: str, did: str, cid: str, max_bytes: int) -> bytes:
        """com.atproto.sync.getBlob; XrpcCallError("BlobTooLarge") past max_bytes."""
        url = f"{base_url.rstrip('/')}/xrpc/com.atproto.sync.getBlob"

        def body(response: httpx.Response) -> bytes:
            if len(response.content) > max_bytes:
                raise XrpcCallError(url, 200, "BlobTooLarge", f"over {max_bytes} bytes")
            return response.content

        return await self._get(url, {"did": did, "cid": cid}, body)

    async def _get(
        self, url: str, params: dict[str, Any], parse: Callable[[httpx.Response], T]
    ) -> T:
        async def attempt() -> T:
            response = await request(self._http.get(url, params=params, timeout=timeout))
            status = response.status_code
            if status == 200:
                try:
                    return parse(response)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise Retry(f"unexpected response body: {exc}") from exc
            if status == 429 or status >= 500:
                cap = self.policy.max_retry_after_s
                raise Retry(f"HTTP {status}", _retry_after(response, cap))
            error, message = _error_body(response)
            raise XrpcCallError(url, status, error, message)

        timeout = self.policy.timeout_s
        return await retrying(self.policy, attempt, url)


class Retry(Exception):
    """One attempt failed in a way another attempt may not (after `retry_after` s at least)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


async def request(sending: Awaitable[httpx.Response]) -> httpx.Response:
    """The response, or Retry when the request did not get one (connection, timeout)."""
    try:
        return await sending
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
                await asyncio.sleep(policy.delay(n, exc.retry_after))
    raise SourceUnavailable(f"{what} failed after {policy.attempts} attempts: {last}")


def _retry_after(response: httpx.Response, cap: float) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return min(cap, max(0.0, float(value)))
    except ValueError:
        return None


def _error_body(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
        return str(body.get("error", "Error")), str(body.get("message", ""))
    except (ValueError, AttributeError):
        return f"HTTP{response.status_code}", response.text[:200]
