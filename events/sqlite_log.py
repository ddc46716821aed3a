"""Embedded, durable event log in one SQLite file: the one-machine default.

Same contract as Kafka for what the services use: fixed partitions, per-partition order,
positions, group offsets. Appends commit with synchronous=FULL before they return; every write
goes through one writer thread that commits the writes waiting together (events/sqlite_writer.py),
reads through an aiosqlite connection of their own. One process owns a group here (all
partitions go to the one member); scale-out is what Kafka is for.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import aiosqlite
import msgspec

from events import aio_sqlite
from events.local_reader import LocalLog
from events.log import Entry, LogUnavailable, Message, Position
from events.pulse import Pulse
from events.sqlite_writer import GroupWriter

# Headers are stored as JSON text; msgspec reads a batch's worth several times faster than json.
_encode_headers = msgspec.json.Encoder().encode
_decode_headers = msgspec.json.Decoder().decode

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

# Each partition's end by its own lookup of the primary key's last entry (a GROUP BY would
# scan the topic), all in one query.
_ENDS = """
WITH RECURSIVE ps(p) AS (SELECT 0 UNION ALL SELECT p + 1 FROM ps WHERE p + 1 < ?)
SELECT p, (SELECT MAX(offset) + 1 FROM records WHERE topic = ? AND partition = p) FROM ps
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
        self._writer: GroupWriter | None = None
        self._read: aiosqlite.Connection | None = None
        self._appended = Pulse()
        # Per topic, the partitions' end offsets known, and when the file was last asked.
        self._ends: dict[str, dict[int, int]] = {}
        self._ends_asked: dict[str, float] = {}

    async def start(self) -> None:
        writer = GroupWriter(self.path)
        await writer.open(_SCHEMA)
        self._writer = writer
        # Reads only (the writer made the file WAL): nothing to set up on it.
        self._read = await aio_sqlite.connect(self.path, isolation_level=None, timeout=30)

    async def close(self) -> None:
        if self._read is not None:
            await self._read.close()
        if self._writer is not None:
            await self._writer.close()
        self._read = self._writer = None

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        assert self._writer is not None
        partitions = self.partitions

        def ensure(conn: sqlite3.Connection) -> None:
            for name in topics:
                conn.execute(
                    "INSERT OR IGNORE INTO topics (name, partitions) VALUES (?, ?)",
                    (name, partitions),
                )
                (existing,) = conn.execute(
                    "SELECT partitions FROM topics WHERE name = ?", (name,)
                ).fetchone()
                if existing != partitions:
                    raise ValueError(
                        f"topic {name} has {existing} partitions, configured {partitions}: "
                        "the partition count is fixed when a log is created"
                    )

        await self._writer.write(ensure)

    def partition_of(self, key: str) -> int:
        return partition_for(key, self.partitions)

    async def append(self, topic: str, entries: Sequence[Entry]) -> list[Position]:
        if self._writer is None:
            raise LogUnavailable("event log is closed")
        ts = int(time.time() * 1000)
        partitions = self.partitions
        # Everything but the offsets is worked out here, before the write lock is taken: the
        # other process's appends wait while it is held.
        prepared = [
            (
                partition_for(entry.key, partitions),
                entry.key,
                _encode_headers(entry.headers).decode(),
                entry.value,
            )
            for entry in entries
        ]

        def append(conn: sqlite3.Connection) -> list[Position]:
            next_offsets: dict[int, int] = {}
            rows, positions = [], []
            for p, key, headers, value in prepared:
                if p not in next_offsets:
                    (next_offsets[p],) = conn.execute(
                        "SELECT COALESCE(MAX(offset) + 1, 0) FROM records "
                        "WHERE topic = ? AND partition = ?",
                        (topic, p),
                    ).fetchone()
                offset = next_offsets[p]
                next_offsets[p] = offset + 1
                rows.append((topic, p, offset, key, headers, value, ts))
                positions.append(Position(p, offset))
            conn.executemany(
                "INSERT INTO records (topic, partition, offset, key, headers, value, ts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            return positions

        positions = await self._writer.write(append, rows=len(prepared))
        # This process's readers see its appends at once, without asking the file.
        for position in positions:
            self._saw(topic, position.partition, position.offset + 1)
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
            Message(topic, partition, o, k, v, _decode_headers(h), ts) for o, k, h, v, ts in rows
        ]

    async def end_offsets(self, topic: str) -> dict[int, int]:
        assert self._read is not None
        now = asyncio.get_running_loop().time()
        if now - self._ends_asked.get(topic, float("-inf")) >= _CROSS_PROCESS_POLL:
            # What other processes appended since the last look: one query, all partitions.
            self._ends_asked[topic] = now
            async with self._read.execute(_ENDS, (self.partitions, topic)) as cur:
                for partition, end in await cur.fetchall():
                    self._saw(topic, partition, end or 0)
        known = self._ends.get(topic, {})
        return {p: known.get(p, 0) for p in range(self.partitions)}

    def _saw(self, topic: str, partition: int, end: int) -> None:
        known = self._ends.setdefault(topic, {})
        known[partition] = max(end, known.get(partition, 0))

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
        assert self._writer is not None
        rows = [(group, topic, p, o) for p, o in offsets.items()]

        def commit(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO group_offsets (grp, topic, partition, offset) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (grp, topic, partition) DO UPDATE SET offset = excluded.offset",
                rows,
            )

        await self._writer.write(commit)
