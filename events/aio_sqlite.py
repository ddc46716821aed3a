"""aiosqlite connections whose thread never holds the interpreter at exit.

aiosqlite runs each connection on a non-daemon thread that ends only when the connection is
closed. One left open anywhere (a part cancelled halfway through starting, a bug) makes the
process hang at exit after its work is done, waiting for that thread. The service closes
every connection it opens; this makes a miss cost nothing worse than a crash would, which
SQLite's WAL is built to survive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiosqlite


async def connect(database: str | Path, **kwargs: Any) -> aiosqlite.Connection:
    connection = aiosqlite.connect(database, **kwargs)
    # Not started until awaited. `_thread` is aiosqlite's, stable across the pinned versions.
    connection._thread.daemon = True
    return await connection
