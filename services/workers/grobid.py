"""GROBID, the reference extractor Chive uses: `GET /api/isalive`, then
`POST /api/processReferences` with the PDF in the multipart field `input`.

GROBID answers 503 while all its workers are busy (retried with backoff), 204 when the
document has no references, 500 when it cannot read the document (final: that document is
unreadable, GROBID is fine).
"""

from __future__ import annotations

import asyncio

import httpx

from services.workers.xrpc_client import RetryPolicy


class GrobidUnavailable(RuntimeError):
    """GROBID did not answer, or stayed busy, through every attempt."""


class GrobidRejected(ValueError):
    """GROBID could not process this document."""


class Grobid:
    def __init__(self, http: httpx.AsyncClient, url: str, policy: RetryPolicy) -> None:
        self._http = http
        self.url = url.rstrip("/")
        self._policy = policy

    async def check_alive(self) -> None:
        response = await self._call("GET", "/api/isalive")
        if response.text.strip().lower() != "true":
            raise GrobidUnavailable(f"GROBID at {self.url} is not alive: {response.text[:100]!r}")

    async def references(self, pdf: bytes) -> bytes | None:
        """The TEI of the document's reference list; None when it has none."""
        response = await self._call(
            "POST",
            "/api/processReferences",
            files={"input": ("document.pdf", pdf, "application/pdf")},
            data={"consolidateCitations": "0", "includeRawCitations": "1"},
        )
        return None if response.status_code == 204 else response.content

    async def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        policy = self._policy
        last = "no attempt made"
        for attempt in range(policy.attempts):
            try:
                response = await self._http.request(
                    method, self.url + path, timeout=policy.timeout_s * 4, **kwargs
                )
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if response.status_code in (200, 204):
                    return response
                if response.status_code in (400, 500):
                    raise GrobidRejected(f"GROBID {response.status_code}: {response.text[:200]}")
                last = f"HTTP {response.status_code}"
            if attempt + 1 < policy.attempts:
                await asyncio.sleep(policy.delay(attempt))
        raise GrobidUnavailable(
            f"GROBID at {self.url} failed after {policy.attempts} attempts: {last}"
        )
