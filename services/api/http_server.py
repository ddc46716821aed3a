"""The API's HTTP server: uvicorn with the limits a public endpoint needs. A connection gets
a fixed time to send a request's headers (counted from when it opened or its last response
ended, so trickling bytes does not extend it), idle keep-alive connections close quickly,
headers are size-bounded, and past `max_connections` new connections get 503."""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5
MAX_HEADER_BYTES = 16 * 1024


class _HeaderDeadlineH11(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for each request's headers."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
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
    return uvicorn.Server(
        uvicorn.Config(
            app,
            http=_HeaderDeadlineH11,
            lifespan="off",
            log_level="warning",
            access_log=False,
            limit_concurrency=max_connections,
            timeout_keep_alive=KEEP_ALIVE_S,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            server_header=False,
        )
    )


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts: a port in use is a clear error."""
    try:
        return socket.create_server((host, port))
    except OSError as exc:
        raise RuntimeError(f"API cannot listen on {host}:{port}: {exc.strerror or exc}") from None
