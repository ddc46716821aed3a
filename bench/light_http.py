"""A minimal HTTP/1.1 keep-alive client for timing servers: the request is written and the
response read on a pooled connection with asyncio streams, nothing else. httpx costs about
2 ms per request on this machine, more than the server under test spends on a bare endpoint;
a latency measured through it is mostly the client's.

Only what the benches send and receive: JSON bodies, responses with a Content-Length.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlencode


class Response:
    def __init__(self, status_code: int, body: bytes) -> None:
        self.status_code = status_code
        self.content = body

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class LightClient:
    def __init__(self, host: str, port: int, connections: int = 32) -> None:
        self._host, self._port = host, port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(connections)

    async def get(
        self, path: str, params: dict[str, str] | None = None, headers: dict | None = None
    ) -> Response:
        if params:
            path += "?" + urlencode(params)
        return await self._request("GET", path, b"", headers or {})

    async def post(self, path: str, json_body: Any, headers: dict | None = None) -> Response:
        body = json.dumps(json_body).encode()
        return await self._request(
            "POST", path, body, {**(headers or {}), "content-type": "application/json"}
        )

    async def _request(self, method: str, path: str, body: bytes, headers: dict) -> Response:
        async with self._slots:
            reader, writer = self._idle.pop() if self._idle else await self._connect()
            lines = [f"{method} {path} HTTP/1.1", f"host: {self._host}:{self._port}"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            lines.append(f"content-length: {len(body)}")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split(" ", 2)[1])
            fields = dict(
                (name.strip().lower(), value.strip())
                for name, _, value in (h.partition(":") for h in header_lines if h)
            )
            content = await reader.readexactly(int(fields["content-length"]))
            if fields.get("connection", "").lower() == "close":
                writer.close()
            else:
                self._idle.append((reader, writer))
            return Response(status, content)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self._host, self._port)

    async def aclose(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()
