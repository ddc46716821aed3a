"""Readers of the record index.

- FollowingIndex: the index of another process (the API, the CLI, the workers beside `up`'s
  projector): it serves whichever index file the data dir's pointer names and moves to the new
  one on the first query after fullReindex switches it (projections/index_location.py).
- The IndexAccess a worker reads through (freshnessScan, citationExtraction, governanceSync):
  the index once it has folded everything appended to the log before the ask, folded in the
  worker's own process (FoldedHere) or by the projector's (ProjectorsIndex).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Protocol

import aiosqlite

from events.log import EventLog, folded_through
from events.model import RECORDS_TOPIC
from projections import index_location, tracking
from projections.records import RecordIndex
from projections.runner import ProjectionRunner

log = logging.getLogger(__name__)


# How long a connection to an index the pointer moved away from stays open: queries that
# were already running on it finish there.
RETIRE_AFTER_S = 60.0


class FollowingIndex(RecordIndex):
    def __init__(self, data_dir: Path) -> None:
        super().__init__(index_location.active_path(data_dir))
        self._data_dir = data_dir
        self._stamp: tuple[int, int] | None = None
        # Queries running together all see the pointer move; one of them moves the
        # connection, or each would open its own and all but the last would leak.
        self._moving = asyncio.Lock()
        self._retired: list[tuple[float, aiosqlite.Connection]] = []

    async def open(self) -> None:
        # A reader never creates the index: if the pointer moved on and the file it named is
        # gone already, read the pointer again. The stamp, path and connection change
        # together once connected: a query that sees the new stamp gets the new connection.
        for _ in range(10):
            stamp = index_location.pointer_stamp(self._data_dir)
            path = index_location.active_path(self._data_dir)
            try:
                conn = await tracking.connect(path, self.schema, create=False)
            except sqlite3.OperationalError:
                await asyncio.sleep(0.05)
                continue
            self._stamp, self.path, self._conn = stamp, path, conn
            return
        raise RuntimeError(f"no record index in {self._data_dir}")

    async def close(self) -> None:
        for _, conn in self._retired:
            await conn.close()
        self._retired.clear()
        await super().close()

    async def _current(self) -> aiosqlite.Connection:
        now = asyncio.get_running_loop().time()
        while self._retired and now - self._retired[0][0] >= RETIRE_AFTER_S:
            await self._retired.pop(0)[1].close()
        if index_location.pointer_stamp(self._data_dir) != self._stamp:
            async with self._moving:
                if index_location.pointer_stamp(self._data_dir) != self._stamp:
                    old = self._conn
                    await self.open()
                    if old is not None:
                        # Not closed yet: queries begun on it may still be reading.
                        self._retired.append((now, old))
        return self.conn

    async def positions(self) -> dict[int, int]:
        await self._current()
        return await super().positions()


class IndexPositions:
    """How far the record index in a data dir has folded the records topic, for a process
    that reads the index but does not fold it (the API beside `up`'s work process). None while
    the data dir holds no index (the API of a deployment whose index lives elsewhere)."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._index: FollowingIndex | None = None
        self._opening = asyncio.Lock()

    async def __call__(self) -> dict[int, int] | None:
        index = self._index or await self._open()
        if index is None:
            return None
        try:
            return await index.positions()
        except sqlite3.Error as exc:
            log.warning("cannot read the record index's positions: %s", exc)
            return None

    @property
    def index(self) -> FollowingIndex | None:
        return self._index

    async def _open(self) -> FollowingIndex | None:
        async with self._opening:
            if self._index is None and index_location.active_path(self._data_dir).exists():
                index = FollowingIndex(self._data_dir)
                try:
                    await index.open()
                except RuntimeError:
                    return None
                self._index = index
            return self._index

    async def close(self) -> None:
        if self._index is not None:
            await self._index.close()
            self._index = None


class IndexAccess(Protocol):
    async def caught_up(self, timeout: float) -> RecordIndex | None:
        """The index once it has folded everything appended to the log before this call;
        None if it has not within `timeout` seconds."""


class FoldedHere:
    """An index this process folds (a worker's own replica, or the projector's beside it)."""

    def __init__(self, index: RecordIndex, runner: ProjectionRunner) -> None:
        self.index = index
        self.runner = runner

    async def caught_up(self, timeout: float) -> RecordIndex | None:
        return self.index if await self.runner.wait_caught_up(timeout) else None


# How often a worker looks again at how far the projector process has folded.
POLL_S = 0.02


class ProjectorsIndex:
    """The index the projector process keeps in this data dir (under `up`, the workers'
    process beside it): caught up once its tracking positions, committed with its writes,
    reach the log's end offsets as they were when asked. Opened on first use: at start the
    projector may not have created it yet."""

    def __init__(self, data_dir: Path, event_log: EventLog) -> None:
        self._log = event_log
        self._index = IndexPositions(data_dir)

    async def caught_up(self, timeout: float) -> RecordIndex | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        ends = await self._log.end_offsets(RECORDS_TOPIC)
        while True:
            folded = await self._index()
            if folded is not None and folded_through(ends, folded):
                return self._index.index
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(POLL_S)

    async def close(self) -> None:
        await self._index.close()
