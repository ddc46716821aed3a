"""How many requests a worker process has in flight to the PDSes it reads: at most
CHIVE_SOURCE_CONCURRENCY in all and CHIVE_SOURCE_CONCURRENCY_PER_PDS to any one PDS, across
every operation it runs (two scans of one PDS share its allowance: politeness is owed per
server, not per operation). More replicas of a worker type, more requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class SourceSlots:
    def __init__(self, overall: int, per_pds: int) -> None:
        self._overall = asyncio.Semaphore(overall)
        self._per_pds_limit = per_pds
        self._per_pds: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def held(self, pds_url: str) -> AsyncIterator[None]:
        """A slot of `pds_url` and one of the overall allowance, always in that order: a task
        holds an overall slot only once it may talk to its PDS, so tasks queued on one busy
        PDS never keep the others waiting (nor deadlock against each other)."""
        per_pds = self._per_pds.get(pds_url)
        if per_pds is None:
            per_pds = self._per_pds[pds_url] = asyncio.Semaphore(self._per_pds_limit)
        self._users[pds_url] = self._users.get(pds_url, 0) + 1
        try:
            async with per_pds, self._overall:
                yield
        finally:
            # A PDS nobody waits on is forgotten: a scan of 10,000 PDSes leaves nothing behind.
            self._users[pds_url] -= 1
            if not self._users[pds_url]:
                del self._users[pds_url], self._per_pds[pds_url]
