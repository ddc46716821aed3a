"""The embedded log's one writer: a thread of its own with its own SQLite connection, which
commits every write waiting at that moment as one transaction (group commit).

Each write is a function run on that thread inside the shared transaction, under a savepoint
of its own: a write that raises is rolled back alone and its caller gets the error; the others
commit. A caller is answered only once the transaction has committed with synchronous=FULL,
so what it was told is written survives a power cut. Under load many appends share one fsync;
a lone append costs one thread hop and one fsync (aiosqlite would take a hop per statement,
and has no way to run a transaction's statements in one).

A caller cancelled while it waits does not take its write back: it may still commit, as a
produce request a Kafka client gave up on may.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
Write = Callable[[sqlite3.Connection], Any]


class GroupWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="chive-log-writer")
        self._conn: sqlite3.Connection | None = None
        self._waiting: list[tuple[Write, asyncio.Future]] = []
        self._committing: asyncio.Task | None = None
        # Transactions committed: fewer than writes when writes came together.
        self.transactions = 0

    async def open(self, schema: str) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._open, schema)

    async def close(self) -> None:
        if self._committing is not None:
            await asyncio.wait([self._committing])
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)

    async def write(self, write: Callable[[sqlite3.Connection], T]) -> T:
        """`write(connection)`'s result, once the transaction it ran in has committed."""
        if self._conn is None:
            raise sqlite3.ProgrammingError("the log's writer is closed")
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        self._waiting.append((write, done))
        if self._committing is None:
            self._committing = loop.create_task(self._commit_waiting())
        return await done

    async def _commit_waiting(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                writes = [write for write, _ in group]
                try:
                    outcomes = await loop.run_in_executor(self._thread, self._commit, writes)
                except Exception as exc:  # the commit failed: none of the group is written
                    for _, done in group:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                for (_, done), (ok, value) in zip(group, outcomes, strict=True):
                    if done.done():
                        continue
                    if ok:
                        done.set_result(value)
                    else:
                        done.set_exception(value)
        finally:
            self._committing = None

    # -- on the writer's thread ------------------------------------------------------------
    def _open(self, schema: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(schema)
        self._conn = conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _commit(self, writes: list[Write]) -> list[tuple[bool, Any]]:
        conn = self._conn
        assert conn is not None
        outcomes: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for write in writes:
                conn.execute("SAVEPOINT one_write")
                try:
                    outcomes.append((True, write(conn)))
                except Exception as exc:
                    conn.execute("ROLLBACK TO one_write")
                    outcomes.append((False, exc))
                conn.execute("RELEASE one_write")
            conn.execute("COMMIT")
            self.transactions += 1
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes
