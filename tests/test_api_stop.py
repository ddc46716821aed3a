"""An API that is told to stop takes no new request but answers the ones in flight: their
stores are closed only after they are answered (closed under a request, it got a 500), and
closed even if the API is cancelled while it waits for them."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from services import bootstrap
from testkit.harness import Admin, Client, settings_for
from testkit.waiting import eventually

CANCEL = "pub.chive.admin.cancelBackfill"


@contextlib.asynccontextmanager
async def api(tmp_path, plc) -> AsyncIterator[tuple[Admin, int, asyncio.Task, asyncio.Event]]:
    """The API alone on an embedded log: (admin, port, its task, its stop)."""
    admin = Admin()
    settings = settings_for(tmp_path / "data", admin, plc.url)
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def on_ready(port: int) -> None:
        ready.set_result(port)

    async with bootstrap.open_log(settings) as event_log:
        task = asyncio.create_task(bootstrap.run_api(settings, event_log, stop, on_ready))
        yield admin, await asyncio.wait_for(ready, 30), task, stop


async def cancel_in_flight(admin: Admin, port: int, body: bytes, sent: int):
    """(reader, writer) of a cancelBackfill request whose body is sent up to `sent` bytes: the
    API has it in hand and waits for the rest."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            f"POST /xrpc/{CANCEL} HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            f"authorization: Bearer {admin.token(CANCEL)}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode()
        + body[:sent]
    )
    await writer.drain()
    return reader, writer


async def stopped_taking_connections(port: int) -> None:
    async def refused() -> bool:
        try:
            _, probe = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return True
        probe.close()
        return False

    await eventually(refused, timeout=10, what="the API to stop taking connections")


async def test_a_request_in_flight_when_the_api_stops_is_answered(tmp_path, plc):
    async with api(tmp_path, plc) as (admin, port, task, stop):
        client = Client(f"http://127.0.0.1:{port}", admin)
        try:  # no worker runs: the operation stays running, and can be cancelled
            op = await client.trigger(type="didSync", did="did:plc:inflight")
        finally:
            await client.close()
        # A cancel reads the operation from the store the API closes when it stops.
        body = json.dumps({"id": op["id"]}).encode()
        reader, writer = await cancel_in_flight(admin, port, body, 10)
        try:
            # Told to stop with the request in hand; once it takes no new connection, the
            # rest of the body arrives.
            stop.set()
            await stopped_taking_connections(port)
            writer.write(body[10:])
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
            await asyncio.wait_for(task, 30)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer[:500]
    assert json.loads(payload) == {"success": True}


async def test_an_api_cancelled_while_it_drains_still_closes_its_stores(tmp_path, plc):
    # `run_all` cancels its parts as soon as it stops, which can land while the API waits for a
    # request in flight: the API's stores close all the same (the autouse fixture of conftest
    # fails any test that leaves an aiosqlite connection open).
    async with api(tmp_path, plc) as (admin, port, task, stop):
        _reader, writer = await cancel_in_flight(admin, port, b"{" + b" " * 99, 1)
        try:
            stop.set()
            await stopped_taking_connections(port)
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=30)
            assert task in done and task.cancelled()
        finally:
            writer.close()
