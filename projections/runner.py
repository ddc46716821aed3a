"""Feeds a projection from the log, starting at the projection's stored positions, and lets
callers wait until it has folded past a given position (read-your-writes)."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from events.log import EventLog, LogUnavailable, Message, Position
from events.pulse import Pulse

log = logging.getLogger(__name__)

_RETRY_DELAY = 1.0


class Projection(Protocol):
    topic: str

    async def positions(self) -> dict[int, int]: ...

    async def apply(self, messages: list[Message]) -> list[str]: ...


class ProjectionRunner:
    def __init__(self, event_log: EventLog, projection: Projection, name: str) -> None:
        self._log = event_log
        self._projection = projection
        self._name = name
        self._positions: dict[int, int] = {}
        self._advanced = Pulse()
        self.poisoned = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Fold until `stop` is set; waits and reconnects while the log is unavailable."""
        self._positions = await self._projection.positions()
        while not stop.is_set():
            reader = self._log.reader(self._projection.topic, dict(self._positions))
            try:
                await reader.start()
                while not stop.is_set():
                    messages = await reader.poll(0.2)
                    if messages:
                        await self._fold(messages)
            except LogUnavailable as exc:
                log.warning("%s: log unavailable, retrying: %s", self._name, exc)
                await _wait(stop, _RETRY_DELAY)
            finally:
                await reader.stop()

    async def _fold(self, messages: list[Message]) -> None:
        for poison in await self._projection.apply(messages):
            self.poisoned += 1
            log.error("%s: skipped undecodable event %s", self._name, poison)
        for m in messages:
            self._positions[m.partition] = m.offset + 1
        self._advanced.fire()

    def passed(self, position: Position) -> bool:
        return self._positions.get(position.partition, 0) > position.offset

    async def wait_past(self, position: Position, timeout: float) -> bool:
        """True once the projection has folded the event at `position`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.passed(position):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            await self._advanced.wait(remaining)
        return True


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
