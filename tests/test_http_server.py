"""The API's listening socket: connections accepted from it get TCP_NODELAY (asyncio sets it
only for sockets made with proto=IPPROTO_TCP); without it every small response waited about
40 ms on a delayed ACK."""

from __future__ import annotations

import asyncio
import socket

from services.api import http_server


async def test_accepted_connections_have_nodelay():
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
        assert await asyncio.wait_for(accepted, 10) != 0
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
