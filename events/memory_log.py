"""The event-log port in memory: lists per partition, nothing durable. For the fast test
tier (handlers, runners and folds in milliseconds) and anything else that wants a log without
a file or a broker. It passes the same contract suite as the SQLite and Kafka adapters, and
like the embedded log gives every member of a group every partition."""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Sequence

from events.log import Entry, LogUnavailable, Message, PartitionsCallback, Position
from events.pulse import Pulse


class MemoryEventLog:
    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._topics: dict[str, list[list[Message]]] = {}
        self._committed: dict[tuple[str, str], dict[int, int]] = {}
        self._appended = Pulse()
        self._open = False
        # Set to make appends fail as an unreachable broker's would (fault injection).
        self.unavailable = False

    async def start(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        for name in topics:
            self._topics.setdefault(name, [[] for _ in range(self.partitions)])

    def partition_of(self, key: str) -> int:
        # The embedded log's rule, so keys land alike on both.
        return zlib.crc32(key.encode()) % self.partitions

    async def append(self, topic: str, entries: Sequence[Entry]) -> list[Position]:
        if not self._open or self.unavailable:
            raise LogUnavailable("event log is closed" if not self._open else "unavailable")
        partitions = self._topics.setdefault(topic, [[] for _ in range(self.partitions)])
        ts = int(time.time() * 1000)
        positions = []
        for entry in entries:
            p = self.partition_of(entry.key)
            offset = len(partitions[p])
            partitions[p].append(
                Message(topic, p, offset, entry.key, entry.value, dict(entry.headers), ts)
            )
            positions.append(Position(p, offset))
        self._appended.fire()
        # A real log answers after a round trip: other tasks run in between, as they would.
        await asyncio.sleep(0)
        return positions

    def reader(self, topic: str, start: dict[int, int] | None = None) -> MemoryReader:
        return MemoryReader(self, topic, dict(start or {}))

    def group_consumer(
        self,
        topic: str,
        group: str,
        on_assigned: PartitionsCallback | None = None,
        on_revoked: PartitionsCallback | None = None,
    ) -> MemoryGroupConsumer:
        del on_revoked  # every member holds every partition: nothing is ever taken away
        return MemoryGroupConsumer(self, topic, group, on_assigned)

    def _partition(self, topic: str, partition: int) -> list[Message]:
        partitions = self._topics.get(topic)
        return partitions[partition] if partitions else []


class MemoryReader:
    def __init__(self, log: MemoryEventLog, topic: str, start: dict[int, int]) -> None:
        self._log = log
        self._topic = topic
        self._positions = {p: start.get(p, 0) for p in range(log.partitions)}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def poll(self, timeout: float) -> list[Message]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            out: list[Message] = []
            for p, offset in self._positions.items():
                batch = self._log._partition(self._topic, p)[offset : offset + 500]
                if batch:
                    self._positions[p] = batch[-1].offset + 1
                    out.extend(batch)
            remaining = deadline - loop.time()
            if out or remaining <= 0:
                await asyncio.sleep(0)  # a poll that finds data still yields, as I/O would
                return out
            await self._log._appended.wait(remaining)

    async def caught_up(self, partition: int) -> bool:
        return self._positions[partition] >= len(self._log._partition(self._topic, partition))


class MemoryGroupConsumer(MemoryReader):
    def __init__(
        self,
        log: MemoryEventLog,
        topic: str,
        group: str,
        on_assigned: PartitionsCallback | None,
    ) -> None:
        super().__init__(log, topic, {})
        self._key = (group, topic)
        self._on_assigned = on_assigned

    async def start(self) -> None:
        self._positions.update(self._log._committed.get(self._key, {}))
        if self._on_assigned is not None:
            await self._on_assigned(set(self._positions))

    def assignment(self) -> set[int]:
        return set(self._positions)

    async def commit(self, offsets: dict[int, int]) -> None:
        if self._log.unavailable:
            raise LogUnavailable("unavailable")
        self._log._committed.setdefault(self._key, {}).update(offsets)
