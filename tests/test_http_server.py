"""The API's listening socket: connections accepted from it get TCP_NODELAY (asyncio sets it
only for sockets made with proto=IPPROTO_TCP); without it every small response waited about
40 ms on a delayed ACK. The service runs on uvloop (services/cli.py), the tests' in-process
services on asyncio's loop: both are checked."""

from __future__ import annotations

import asyncio
import socket

import uvloop

from services.api import http_server


async def test_accepted_connections_have_nodelay():
    assert await _nodelay_of_an_accepted_connection() != 0


def test_accepted_connections_have_nodelay_on_uvloop():
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(_nodelay_of_an_accepted_connection()) != 0


async def _nodelay_of_an_accepted_connection() -> int:
    sock = http_server.listen("127.0.0.1", 0)
    assert sock.proto == socket.IPPROTO_TCP
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            raw = transport.get_extra_info("socket")
            accepted.set_result(raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
    try:
        port = sock.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(accepted, 10)
        finally:
            writer.close()
    finally:
        server.close()
        await server.wait_closed()
