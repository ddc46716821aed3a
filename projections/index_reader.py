"""A reader of the record index in another process (the API, the CLI, a worker without its
own replica): it serves whichever index file the data dir's pointer names and moves to the new
one on the first query after fullReindex switches it (projections/index_location.py)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiosqlite

from projections import index_location, tracking
from projections.records import RecordIndex


class FollowingIndex(RecordIndex):
    def __init__(self, data_dir: Path) -> None:
        super().__init__(index_location.active_path(data_dir))
        self._data_dir = data_dir
        self._stamp: tuple[int, int] | None = None

    async def open(self) -> None:
        # A reader never creates the index: if the pointer moved on and the file it named is
        # gone already, read the pointer again.
        for _ in range(10):
            self._stamp = index_location.pointer_stamp(self._data_dir)
            self.path = index_location.active_path(self._data_dir)
            try:
                self._conn = await tracking.connect(self.path, self.schema, create=False)
                return
            except sqlite3.OperationalError:
                await asyncio.sleep(0.05)
        raise RuntimeError(f"no record index in {self._data_dir}")

    async def _current(self) -> aiosqlite.Connection:
        if index_location.pointer_stamp(self._data_dir) != self._stamp:
            old = self._conn
            await self.open()
            if old is not None:
                await old.close()
        return self.conn
