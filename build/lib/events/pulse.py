"""A lock-free wake-up for many waiters.

asyncio.Condition makes a cancelled waiter re-acquire the lock before it can leave, which on
Python 3.11 (with wait_for) can deadlock shutdown; an Event swapped on every fire wakes every
current waiter and never blocks a cancellation.
"""

from __future__ import annotations

import asyncio


class Pulse:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self, timeout: float) -> bool:
        """True if fired within `timeout` seconds."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        return True
