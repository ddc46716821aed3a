"""A TCP proxy on loopback that a test can cut: `cut()` drops every connection and refuses new
ones (the broker looks down to clients), `restore()` serves again. The broker behind keeps its
data, which a restart of the in-memory Tansu broker would not."""

from __future__ import annotations

import asyncio
import threading

from testkit.broker import free_port


class CuttableProxy:
    def __init__(self, target_port: int, request_delay_s: float = 0.0) -> None:
        """`request_delay_s`: each chunk a client sends waits this long before it goes on
        (one request, one chunk: a server that far away)."""
        self.request_delay_s = request_delay_s
        self.port = free_port()
        self._target = target_port
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._serving: set[asyncio.Task] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.restore()

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def restore(self) -> None:
        self._call(self._listen())

    def cut(self) -> None:
        self._call(self._close())

    def stop(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if self._serving:
            # Their pipes end on the aborted connections: let them, before the loop may stop
            # (a task still pending then is destroyed with a warning).
            await asyncio.wait(list(self._serving), timeout=5)

    async def _serve(self, reader, writer) -> None:
        task = asyncio.current_task()
        self._serving.add(task)
        try:
            await self._pipe_both(reader, writer)
        finally:
            self._serving.discard(task)

    async def _pipe_both(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update({writer, up_writer})

        async def pipe(src, dst, delay_s: float = 0.0) -> None:
            try:
                while data := await src.read(65536):
                    if delay_s:
                        await asyncio.sleep(delay_s)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer, self.request_delay_s), pipe(up_reader, writer))
        self._writers.difference_update({writer, up_writer})
