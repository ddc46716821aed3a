"""The API's HTTP server: uvicorn with the limits a public endpoint needs. A connection gets
a fixed time to send a request's headers (counted from when it opened or its last response
ended, so trickling bytes does not extend it), idle keep-alive connections close quickly,
headers are size-bounded, and past `max_connections` open connections a new one gets an XRPC
503 `NotEnoughResources` and is closed."""

from __future__ import annotations

import asyncio
import json
import socket

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5
MAX_HEADER_BYTES = 16 * 1024


_OVERLOADED_BODY = json.dumps(
    {"error": "NotEnoughResources", "message": "Too many connections; try again shortly"}
).encode()
_OVERLOADED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 1\r\nconnection: close\r\n"
    + f"content-length: {len(_OVERLOADED_BODY)}\r\n\r\n".encode()
    + _OVERLOADED_BODY
)


class _GuardedH11(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for each request's headers and a cap on open
    connections."""

    max_connections = 1000
    _deadline: asyncio.TimerHandle | None = None

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

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:
            self._disarm()  # a request is being served: its headers arrived in time

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
    protocol = type("GuardedH11", (_GuardedH11,), {"max_connections": max_connections})
    return uvicorn.Server(
        uvicorn.Config(
            app,
            http=protocol,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_keep_alive=KEEP_ALIVE_S,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
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
