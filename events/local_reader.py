"""Readers of a log this process reads directly (the embedded SQLite file, the in-memory log):
a poll fetches each partition from the reader's position and otherwise waits for an append.
One process owns such a log, so a group's member holds every partition and none is ever taken
away from it."""

from __future__ import annotations

import asyncio
from typing import Protocol

from events.log import Message, PartitionsCallback

BATCH = 500


class Store(Protocol):
    """What a local adapter offers its readers."""

    partitions: int

    async def fetch(self, topic: str, partition: int, offset: int, limit: int) -> list[Message]:
        """Records of the partition from `offset` on, at most `limit`."""

    async def end_offsets(self, topic: str) -> dict[int, int]:
        """Every partition's next offset (the port's end_offsets): at once for this process's
        own appends, and for other processes' as of a recent look (a poll interval at most)."""

    async def wait_for_append(self, timeout: float) -> None:
        """Return after an append (or the timeout)."""

    async def committed(self, group: str, topic: str) -> dict[int, int]: ...

    async def commit(self, group: str, topic: str, offsets: dict[int, int]) -> None: ...


class LocalReader:
    def __init__(self, store: Store, topic: str, start: dict[int, int]) -> None:
        self._store = store
        self._topic = topic
        self._positions = {p: start.get(p, 0) for p in range(store.partitions)}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def poll(self, timeout: float) -> list[Message]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            out: list[Message] = []
            ends = await self._store.end_offsets(self._topic)
            for p, offset in self._positions.items():
                # Only partitions with something new: every append wakes every reader of the
                # process, and most have nothing to read in most partitions.
                if offset >= ends[p]:
                    continue
                batch = await self._store.fetch(self._topic, p, offset, BATCH)
                if batch:
                    self._positions[p] = batch[-1].offset + 1
                    out.extend(batch)
            remaining = deadline - loop.time()
            if out or remaining <= 0:
                return out
            await self._store.wait_for_append(remaining)

    async def caught_up(self, partition: int) -> bool:
        return self._positions[partition] >= (await self._store.end_offsets(self._topic))[partition]


class LocalGroupConsumer(LocalReader):
    def __init__(
        self, store: Store, topic: str, group: str, on_assigned: PartitionsCallback | None
    ) -> None:
        super().__init__(store, topic, {})
        self._group = group
        self._on_assigned = on_assigned

    async def start(self) -> None:
        self._positions.update(await self._store.committed(self._group, self._topic))
        if self._on_assigned is not None:
            await self._on_assigned(set(self._positions))

    def assignment(self) -> set[int]:
        return set(self._positions)

    async def commit(self, offsets: dict[int, int]) -> None:
        await self._store.commit(self._group, self._topic, offsets)


class LocalLog:
    """The reading half of the port for a local log; the adapter provides the Store methods
    (fetch, end_offsets, wait_for_append, committed, commit) and `partitions`."""

    partitions: int

    def reader(self, topic: str, start: dict[int, int] | None = None) -> LocalReader:
        return LocalReader(self, topic, dict(start or {}))

    def group_consumer(
        self,
        topic: str,
        group: str,
        on_assigned: PartitionsCallback | None = None,
        on_revoked: PartitionsCallback | None = None,
    ) -> LocalGroupConsumer:
        # Every member holds every partition, so on_revoked never fires.
        del on_revoked
        return LocalGroupConsumer(self, topic, group, on_assigned)
