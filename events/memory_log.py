"""The event-log port in memory: lists per partition, nothing durable. For the fast test
tier (handlers, runners and folds in milliseconds) and anything else that wants a log without
a file or a broker. It passes the same contract suite as the SQLite and Kafka adapters, and
shares the embedded log's readers (events/local_reader.py)."""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Sequence

from events.local_reader import LocalLog
from events.log import Entry, LogUnavailable, Message, Position
from events.pulse import Pulse


class MemoryEventLog(LocalLog):
    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._topics: dict[str, list[list[Message]]] = {}
        self._committed: dict[tuple[str, str], dict[int, int]] = {}
        self._appended = Pulse()
        self._open = False
        # Set to make appends and reads fail as an unreachable broker's would (fault injection).
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

    # -- what its readers read (events/local_reader.py) -------------------------------------
    async def fetch(self, topic: str, partition: int, offset: int, limit: int) -> list[Message]:
        if self.unavailable:
            raise LogUnavailable("unavailable")
        partitions = self._topics.get(topic)
        batch = partitions[partition][offset : offset + limit] if partitions else []
        # A real log answers after a round trip: other tasks run in between, as they would.
        await asyncio.sleep(0)
        return batch

    async def end_offsets(self, topic: str) -> dict[int, int]:
        if self.unavailable:
            raise LogUnavailable("unavailable")
        partitions = self._topics.get(topic)
        return {p: len(partitions[p]) if partitions else 0 for p in range(self.partitions)}

    async def wait_for_append(self, timeout: float) -> None:
        await self._appended.wait(timeout)

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        return dict(self._committed.get((group, topic), {}))

    async def commit(self, group: str, topic: str, offsets: dict[int, int]) -> None:
        if self.unavailable:
            raise LogUnavailable("unavailable")
        self._committed.setdefault((group, topic), {}).update(offsets)
