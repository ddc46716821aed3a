"""Embedded, durable event log in one SQLite file: the one-machine default.

Same contract as Kafka for what the services use: fixed partitions, per-partition order,
positions, group offsets. Appends commit with synchronous=FULL before they return. One process
owns a group here (all partitions go to the one member); scale-out is what Kafka is for.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import aiosqlite

from events.local_reader import LocalLog
from events.log import Entry, LogUnavailable, Message, Position
from events.pulse import Pulse

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY, partitions INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    key TEXT NOT NULL, headers TEXT NOT NULL, value BLOB NOT NULL, ts INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_offsets (
    grp TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, partition)
);
"""

# Other processes (the CLI, a second service process) append too; a reader notices their
# records by polling at this interval, and its own process's appends at once.
_CROSS_PROCESS_POLL = 0.1


def partition_for(key: str, partitions: int) -> int:
    return zlib.crc32(key.encode()) % partitions


class SqliteEventLog(LocalLog):
    def __init__(self, path: Path, partitions: int) -> None:
        self.path = path
        self.partitions = partitions
        self._write: aiosqlite.Connection | None = None
        self._read: aiosqlite.Connection | None = None
        self._appended = Pulse()
        self._write_lock = asyncio.Lock()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write = await _connect(self.path)
        await self._write.executescript(_SCHEMA)
        await self._write.commit()
        self._read = await _connect(self.path)

    async def close(self) -> None:
        for conn in (self._read, self._write):
            if conn is not None:
                await conn.close()
        self._read = self._write = None

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        assert self._write is not None
        for name in topics:
            await self._write.execute(
                "INSERT OR IGNORE INTO topics (name, partitions) VALUES (?, ?)",
                (name, self.partitions),
            )
            async with self._write.execute(
                "SELECT partitions FROM topics WHERE name = ?", (name,)
            ) as cur:
                (existing,) = await cur.fetchone()
            if existing != self.partitions:
                raise ValueError(
                    f"topic {name} has {existing} partitions, configured {self.partitions}: "
                    "the partition count is fixed when a log is created"
                )
        await self._write.commit()

    def partition_of(self, key: str) -> int:
        return partition_for(key, self.partitions)

    async def append(self, topic: str, entries: Sequence[Entry]) -> list[Position]:
        if self._write is None:
            raise LogUnavailable("event log is closed")
        ts = int(time.time() * 1000)
        positions: list[Position] = []
        async with self._write_lock:
            conn = self._write
            await conn.execute("BEGIN IMMEDIATE")
            try:
                next_offsets: dict[int, int] = {}
                rows = []
                for entry in entries:
                    p = partition_for(entry.key, self.partitions)
                    if p not in next_offsets:
                        async with conn.execute(
                            "SELECT COALESCE(MAX(offset) + 1, 0) FROM records "
                            "WHERE topic = ? AND partition = ?",
                            (topic, p),
                        ) as cur:
                            (next_offsets[p],) = await cur.fetchone()
                    offset = next_offsets[p]
                    next_offsets[p] = offset + 1
                    rows.append(
                        (topic, p, offset, entry.key, json.dumps(entry.headers), entry.value, ts)
                    )
                    positions.append(Position(p, offset))
                await conn.executemany(
                    "INSERT INTO records (topic, partition, offset, key, headers, value, ts) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                await conn.commit()
            except BaseException:
                await conn.rollback()
                raise
        self._appended.fire()
        return positions

    async def fetch(self, topic: str, partition: int, offset: int, limit: int) -> list[Message]:
        assert self._read is not None
        async with self._read.execute(
            "SELECT offset, key, headers, value, ts FROM records "
            "WHERE topic = ? AND partition = ? AND offset >= ? ORDER BY offset LIMIT ?",
            (topic, partition, offset, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [
            Message(topic, partition, o, k, bytes(v), json.loads(h), ts) for o, k, h, v, ts in rows
        ]

    async def end(self, topic: str, partition: int) -> int:
        assert self._read is not None
        async with self._read.execute(
            "SELECT COALESCE(MAX(offset) + 1, 0) FROM records WHERE topic = ? AND partition = ?",
            (topic, partition),
        ) as cur:
            (end,) = await cur.fetchone()
        return end

    async def wait_for_append(self, timeout: float) -> None:
        await self._appended.wait(min(timeout, _CROSS_PROCESS_POLL))

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        assert self._read is not None
        async with self._read.execute(
            "SELECT partition, offset FROM group_offsets WHERE grp = ? AND topic = ?",
            (group, topic),
        ) as cur:
            return {p: o for p, o in await cur.fetchall()}

    async def commit(self, group: str, topic: str, offsets: dict[int, int]) -> None:
        assert self._write is not None
        async with self._write_lock:
            await self._write.executemany(
                "INSERT INTO group_offsets (grp, topic, partition, offset) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (grp, topic, partition) DO UPDATE SET offset = excluded.offset",
                [(group, topic, p, o) for p, o in offsets.items()],
            )
            await self._write.commit()


async def _connect(path: Path) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None, timeout=30)
    await conn.execute("PRAGMA journal_mode=WAL")
    await conn.execute("PRAGMA synchronous=FULL")
    return conn
