"""Consumed positions stored in the projection's own database, in the same transaction as the
state they produced (the `eventsourcing` library's tracking records): a projection applies each
event's effect exactly once however often the log delivers it."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import aiosqlite

from events import aio_sqlite

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS tracking (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
"""


# Per connection: the pages a fold of a large batch touches (the records table and its
# indexes) stay in memory instead of being read back from the file.
CACHE_KIB = 16 * 1024
# WAL pages before a checkpoint copies them into the database (SQLite's default is 1,000):
# fewer, larger checkpoints while a scan or a rebuild folds hundreds of thousands of events.
CHECKPOINT_PAGES = 10_000


async def connect(
    path: Path, schema: str, create: bool = True, scratch: bool = False
) -> aiosqlite.Connection:
    """`create=False`: open an existing database only (sqlite3.OperationalError if missing).
    `scratch`: a database nobody else reads and nobody keeps after a crash (an audit's
    replay): its rollback journal stays in memory and nothing waits for the disk."""
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aio_sqlite.connect(path, isolation_level=None, timeout=30)
    else:
        uri = path.absolute().as_uri() + "?mode=rw"  # noqa: ASYNC240 (no I/O: string only)
        conn = await aio_sqlite.connect(uri, uri=True, isolation_level=None, timeout=30)
    try:
        await conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        if scratch:
            await conn.execute("PRAGMA journal_mode = MEMORY")
            await conn.execute("PRAGMA synchronous = OFF")
        else:
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute(f"PRAGMA wal_autocheckpoint = {CHECKPOINT_PAGES}")
            # NORMAL, not FULL: a commit here does not wait for the disk. A power cut may
            # take back the last folds, but never tears one (WAL), and the tracking rows go
            # back with the state they produced, so the projection refolds those events from
            # the log (which commits FULL). The log owes durability; a projection owes only
            # consistency.
            await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.executescript(SCHEMA + schema)
    except BaseException:
        # Setting up failed or was cancelled (a service stopped while starting): close the
        # connection, or its thread outlives the event loop it answers to.
        await conn.close()
        raise
    return conn


def read_positions(conn: sqlite3.Connection, topic: str) -> dict[int, int]:
    """The positions stored for `topic` (on the connection's thread: see TrackedStore.run)."""
    rows = conn.execute(
        "SELECT partition, next_offset FROM tracking WHERE topic = ?", (topic,)
    ).fetchall()
    return dict(rows)


_SAVE = (
    "INSERT INTO tracking (topic, partition, next_offset) VALUES (?, ?, ?) "
    "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset"
)


class TrackedStore:
    """A projection's SQLite database: its connection, its stored positions, and the one
    transaction shape every fold uses (state and positions commit together)."""

    topic: str
    schema: str
    # What a scratch copy (an audit's replay) creates instead of `schema`: None, the same.
    scratch_schema: str | None = None

    def __init__(self, path: Path, scratch: bool = False) -> None:
        self.path = path
        self.scratch = scratch  # see connect()
        self._conn: aiosqlite.Connection | None = None

    async def open(self) -> None:
        schema = (self.scratch_schema if self.scratch else None) or self.schema
        self._conn = await connect(self.path, schema, scratch=self.scratch)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def take_over(self, other: TrackedStore) -> None:
        """Serve from `other`'s database from now on (its connection moves here, this one's
        closes). The caller has stopped writes to both."""
        old, self._conn, other._conn = self._conn, other._conn, None
        self.path = other.path
        if old is not None:
            await old.close()

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError(f"{self.path} is not open")
        return self._conn

    async def positions(self) -> dict[int, int]:
        topic = self.topic
        return await self.run(lambda conn: read_positions(conn, topic))

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work(connection)` on the connection's own thread: one hop for all its statements
        (through aiosqlite, each statement is a hop, and each hop waits for a turn of a loop
        that workers keep busy). aiosqlite has no public call for this; `_execute` and `_conn`
        are its internals, stable across the pinned versions (pyproject)."""
        conn = self.conn
        return await conn._execute(work, conn._conn)

    async def commit_in_one_hop(
        self, positions: dict[int, int], write: Callable[[sqlite3.Connection], T]
    ) -> T:
        """`write(connection)` and `positions` in one transaction, in one hop (see `run`);
        what `write` returned, once committed."""
        topic = self.topic

        def transaction(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = write(conn)
                conn.executemany(_SAVE, [(topic, p, o) for p, o in positions.items()])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return result

        return await self.run(transaction)
