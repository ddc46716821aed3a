"""Servers that misbehave on purpose, on loopback: a listener that records whoever reaches it
(what an SSRF would hit), and an HTTP server whose routes answer with a gzip bomb, a trickle,
a redirect or an endless body. Raw asyncio streams, so every byte and delay is the test's."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import threading
from collections.abc import Callable
from dataclasses import dataclass

from testkit.broker import free_port, wait_for_port


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"{}"
    headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)
    # Seconds between single bytes of the body (a trickle); 0 sends it at once.
    trickle_s: float = 0.0
    # Bytes of zeros streamed after `body`, with no content-length (an endless body).
    endless: bool = False


def gzip_bomb(decoded_bytes: int) -> Reply:
    """A small gzip body that inflates to `decoded_bytes` of JSON-looking whitespace."""
    body = gzip.compress(b"{" + b" " * decoded_bytes + b"}", compresslevel=9)
    return Reply(
        body=body,
        headers=(("content-type", "application/json"), ("content-encoding", "gzip")),
    )


class HostileServer:
    """`routes` maps a path prefix to a Reply (or a function of the request line to one);
    `requests` records every request line that arrived, `connections` counts them."""

    def __init__(self, routes: dict[str, Reply | Callable[[str], Reply]] | None = None) -> None:
        self.routes = routes or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[str] = []
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> HostileServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        wait_for_port("127.0.0.1", self.port)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            line = (await reader.readline()).decode(errors="replace").strip()
            if not line:  # a port probe, not a request
                writer.close()
                return
            self.connections += 1
            while (await reader.readline()).strip():
                pass
            self.requests.append(line)
            path = line.split(" ")[1] if line.count(" ") >= 2 else "/"
            reply = next(
                (r for prefix, r in self.routes.items() if path.startswith(prefix)),
                Reply(404, b'{"error":"NotFound","message":"nothing here"}'),
            )
            if callable(reply):
                reply = reply(line)
            head = [
                f"HTTP/1.1 {reply.status} X",
                "connection: close",
                *(f"{k}: {v}" for k, v in reply.headers),
            ]
            if not reply.endless:
                head.append(f"content-length: {len(reply.body)}")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
            if reply.trickle_s:
                for byte in reply.body:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(reply.trickle_s)
            else:
                writer.write(reply.body)
            if reply.endless:
                chunk = b" " * 65536
                while True:
                    writer.write(chunk)
                    await writer.drain()
            await writer.drain()
        writer.close()
