"""How the code waits: capped exponential backoff between attempts, and sleeps that a stop
request ends early. One rule for every retry loop (log appends, log readers, source calls)."""

from __future__ import annotations

import asyncio
import random

import msgspec


class Backoff(msgspec.Struct, frozen=True):
    base_s: float = 0.2
    cap_s: float = 5.0
    # Scales each delay by a random factor in [0.5, 1): clients retrying the same server
    # after the same fault do not come back in step.
    jitter: bool = False

    def delay(self, attempt: int, at_least: float = 0.0) -> float:
        """The pause after attempt `attempt` (0-based), never less than `at_least` (what a
        server asked for with Retry-After)."""
        delay = min(self.cap_s, self.base_s * 2 ** min(attempt, 32))
        if self.jitter:
            delay *= 0.5 + random.random() / 2
        return max(delay, at_least)


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less once `stop` is set."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
