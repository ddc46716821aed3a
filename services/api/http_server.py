"""The API's HTTP server: uvicorn on httptools (llhttp, in C, where h11 parses in Python) with
the limits a public endpoint needs. A connection gets a fixed time to send a request's headers
(counted from when it opened or its last response ended, so trickling bytes does not extend
it), idle keep-alive connections close quickly, headers are size-bounded (431, as Node's HTTP
server answers past its 16 KiB), and past `max_connections` open connections a new one gets an
XRPC 503 `NotEnoughResources` and is closed."""

from __future__ import annotations

import asyncio
import json
import socket

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5
MAX_HEADER_BYTES = 16 * 1024


def _refusal(status: str, retry: bool, error: str, message: str) -> bytes:
    body = json.dumps({"error": error, "message": message}).encode()
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n".encode()
        + (b"retry-after: 1\r\n" if retry else b"")
        + f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )


_OVERLOADED = _refusal(
    "503 Service Unavailable", True, "NotEnoughResources", "Too many connections; try again shortly"
)
_HEADERS_TOO_LARGE = _refusal(
    "431 Request Header Fields Too Large", False, "InvalidRequest", "Request headers too large"
)
_NOT_HTTP = _refusal("400 Bad Request", False, "InvalidRequest", "Invalid HTTP request received")


class _Guarded(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus a deadline and a size cap for each request's headers
    and a cap on open connections."""

    max_connections = 1000
    _deadline: asyncio.TimerHandle | None = None
    # Whether the next bytes are a request's headers, and how many such bytes came (a body's
    # tail in the same read counts too: a bound, not an exact size).
    _in_headers = True
    _header_bytes = 0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(_OVERLOADED)
            transport.close()
            return
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._in_headers and self._header_bytes > MAX_HEADER_BYTES:
            # Still no end of headers, and more of them than any real client sends.
            self._in_headers = False
            self._disarm()
            self.transport.write(_HEADERS_TOO_LARGE)
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers bytes that are not HTTP in plain text; an XRPC client reads JSON.
        del msg
        self._in_headers = False
        self.transport.write(_NOT_HTTP)
        self.transport.close()

    def on_headers_complete(self) -> None:
        self._disarm()  # a request is being served: its headers arrived in time
        self._in_headers, self._header_bytes = False, 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_headers = True

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(HEADER_TIMEOUT_S, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()


def server(app: FastAPI, max_connections: int) -> uvicorn.Server:
    protocol = type("GuardedHttpTools", (_Guarded,), {"max_connections": max_connections})
    return uvicorn.Server(
        uvicorn.Config(
            app,
            http=protocol,
            ws="none",
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_keep_alive=KEEP_ALIVE_S,
            server_header=False,
        )
    )


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts: a port in use is a clear error.

    Made with proto=IPPROTO_TCP, as asyncio makes its own: asyncio sets TCP_NODELAY only on
    connections accepted from such a socket. From `socket.create_server` (proto 0) every small
    response waited on a delayed ACK (about 40 ms a request)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(2048)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise RuntimeError(f"API cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock
