"""The embedded log's one writer: a thread of its own with its own SQLite connection, which
commits the writes waiting at that moment as one transaction (group commit), as many as fit
in GROUP_ROWS rows and HOLD_S of holding the file's write lock.

Each write is a function run on that thread inside the shared transaction, under a savepoint
of its own: a write that raises is rolled back alone and its caller gets the error; the others
commit. A caller is answered only once the transaction has committed with synchronous=FULL,
so what it was told is written survives a power cut. Under load many appends share one fsync;
a lone append costs one thread hop and one fsync (aiosqlite would take a hop per statement,
and has no way to run a transaction's statements in one).

A caller cancelled while it waits does not take its write back: it may still commit, as a
produce request a Kafka client gave up on may.

When another process holds the file's write lock (the API and the work process of `up` share
the log), the writer asks again every half millisecond rather than with SQLite's own busy
handler, whose sleeps grow to 100 ms: a trigger then waits about as long as the other
process's transaction takes, not a multiple of it. And a writer with more to write pauses a
millisecond between transactions, so the other process is not starved of the lock.

Checkpoints (copying the write-ahead log into the database file) are not left to SQLite, which
runs one inside whichever commit finds the log long: a trigger's append would then pay for
copying megabytes of another process's records. A thread of its own, on a connection of its
own, runs a passive checkpoint (it blocks no writer) at most once a second after commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
_BUSY_RETRY_S = 0.0005
_TURN_S = 0.001
_CHECKPOINT_EVERY_S = 1.0
# A group stops growing at this many rows: a transaction holds the file's write lock, and a
# trigger from the other process waits for it (one pdsScan chunk is 500 records).
GROUP_ROWS = 1000
# And a transaction takes no further write of its group once it has held the lock this long;
# the rest go into the next one. Dozens of small writes (the workers finishing a burst of
# operations) took 50-110 ms under load here, while the API's trigger waited for the lock.
HOLD_S = 0.004


def _take_group(waiting: list) -> list:
    """The writes of the next transaction, taken from the front of `waiting`: at least one,
    then as many as fit in GROUP_ROWS."""
    taken, rows = 1, waiting[0][1]
    while taken < len(waiting) and rows + waiting[taken][1] <= GROUP_ROWS:
        rows += waiting[taken][1]
        taken += 1
    group = waiting[:taken]
    del waiting[:taken]
    return group


Write = Callable[[sqlite3.Connection], Any]


class GroupWriter:
    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        self.path = path
        # How long a transaction waits for another process's to end before it fails.
        self.busy_timeout_s = busy_timeout_s
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="chive-log-writer")
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="chive-log-checkpoint")
        self._checkpoint_conn: sqlite3.Connection | None = None
        self._checkpoint_due = 0.0
        self._conn: sqlite3.Connection | None = None
        self._waiting: list[tuple[Write, int, asyncio.Future]] = []
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
        self._checkpointer.submit(self._close_checkpoints)
        self._checkpointer.shutdown(wait=True)

    async def write(self, write: Callable[[sqlite3.Connection], T], rows: int = 1) -> T:
        """`write(connection)`'s result, once the transaction it ran in has committed. `rows`:
        about how many rows it writes (a group stops growing at GROUP_ROWS)."""
        if self._conn is None:
            raise sqlite3.ProgrammingError("the log's writer is closed")
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        self._waiting.append((write, rows, done))
        if self._committing is None:
            self._committing = loop.create_task(self._commit_waiting())
        return await done

    async def _commit_waiting(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                group = _take_group(self._waiting)
                writes = [write for write, _, _ in group]
                try:
                    outcomes = await loop.run_in_executor(self._thread, self._commit, writes)
                except Exception as exc:  # the commit failed: none of the group is written
                    for _, _, done in group:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                # The writes the transaction had no time for go first into the next.
                self._waiting[:0] = group[len(outcomes) :]
                for (_, _, done), (ok, value) in zip(group, outcomes, strict=False):
                    if done.done():
                        continue
                    if ok:
                        done.set_result(value)
                    else:
                        done.set_exception(value)
                if self._waiting:
                    # SQLite hands its write lock to whoever asks first, and this writer,
                    # with more to write, would ask again at once: leave another process
                    # (the API beside the work) a moment to take its turn.
                    await asyncio.sleep(_TURN_S)
        finally:
            self._committing = None

    # -- on the writer's thread ------------------------------------------------------------
    def _open(self, schema: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(schema)
        conn.execute("PRAGMA busy_timeout = 0")  # from here on, _begin waits instead
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpoint thread's job
        self._conn = conn
        self._checkpoint_conn = sqlite3.connect(
            self.path, isolation_level=None, timeout=30, check_same_thread=False
        )

    def _checkpoint(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # busy: the next one will do it
            if self._checkpoint_conn is not None:
                self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _close_checkpoints(self) -> None:
        if self._checkpoint_conn is not None:
            self._checkpoint_conn.close()
            self._checkpoint_conn = None

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _begin(self, conn: sqlite3.Connection) -> None:
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(_BUSY_RETRY_S)

    def _commit(self, writes: list[Write]) -> list[tuple[bool, Any]]:
        """The outcomes of the first writes, at least one, that fitted in HOLD_S."""
        conn = self._conn
        assert conn is not None
        outcomes: list[tuple[bool, Any]] = []
        self._begin(conn)
        until = time.monotonic() + HOLD_S
        try:
            for write in writes:
                if outcomes and time.monotonic() >= until:
                    break
                conn.execute("SAVEPOINT one_write")
                try:
                    outcomes.append((True, write(conn)))
                except Exception as exc:
                    conn.execute("ROLLBACK TO one_write")
                    outcomes.append((False, exc))
                conn.execute("RELEASE one_write")
            conn.execute("COMMIT")
            self.transactions += 1
            if time.monotonic() >= self._checkpoint_due:
                self._checkpoint_due = time.monotonic() + _CHECKPOINT_EVERY_S
                self._checkpointer.submit(self._checkpoint)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes
