"""GROBID, the reference extractor Chive uses: `GET /api/isalive`, then
`POST /api/processReferences` with the PDF in the multipart field `input`.

GROBID answers 503 while all its workers are busy (retried with backoff), 204 when the
document has no references, 500 when it cannot read the document (final: that document is
unreadable, GROBID is fine).
"""

from __future__ import annotations

import httpx

from services.outbound import Fetcher
from services.workers.xrpc_client import Retry, RetryPolicy, SourceUnavailable, request, retrying


class GrobidUnavailable(RuntimeError):
    """GROBID did not answer, or stayed busy, through every attempt."""


class GrobidRejected(ValueError):
    """GROBID could not process this document."""


class Grobid:
    def __init__(self, fetcher: Fetcher, url: str, policy: RetryPolicy) -> None:
        self._fetcher = fetcher
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
        async def attempt() -> httpx.Response:
            async with self._fetcher.connection():
                response = await request(
                    self._fetcher.http.request(method, url, timeout=timeout, **kwargs)
                )
            if response.status_code in (200, 204):
                return response
            if response.status_code in (400, 500):
                raise GrobidRejected(f"GROBID {response.status_code}: {response.text[:200]}")
            raise Retry(f"HTTP {response.status_code}")

        url = self.url + path
        # A document takes GROBID far longer than a PDS takes to answer a query.
        timeout = self._policy.timeout_s * 4
        try:
            return await retrying(self._policy, attempt, f"GROBID at {self.url}")
        except SourceUnavailable as exc:
            raise GrobidUnavailable(str(exc)) from exc
