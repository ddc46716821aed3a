"""Feeds a projection from the log, starting at the projection's stored positions, and lets
callers wait until it has folded past a given position (read-your-writes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from events import dlq, model
from events.log import EventLog, LogUnavailable, Message, Position, caught_up_everywhere
from events.pulse import Pulse
from events.waiting import sleep_unless_stopped

log = logging.getLogger(__name__)

_RETRY_DELAY = 1.0


class Projection(Protocol):
    topic: str

    async def positions(self) -> dict[int, int]: ...

    async def apply(self, events: list[model.AnyEvent], positions: dict[int, int]) -> None:
        """Fold `events` and store `positions` in one transaction."""


def decode_batch(
    messages: list[Message],
) -> tuple[list[tuple[Message, model.AnyEvent]], list[tuple[Message, str]]]:
    """(decoded, undecodable with the reason)."""
    good, poison = [], []
    for m in messages:
        try:
            good.append((m, model.decode(m.value)))
        except model.DecodeError as exc:
            poison.append((m, f"undecodable: {exc}"))
    return good, poison


def positions_after(messages: list[Message]) -> dict[int, int]:
    return {m.partition: m.offset + 1 for m in messages}


Park = Callable[[list[tuple[Message, str]]], Awaitable[None]]


async def apply_isolated(
    projection: Projection, messages: list[Message], park: Park | None = None
) -> None:
    """Fold a batch. An event that cannot be decoded or folded goes to `park` (the live runner
    dead-letters it first; a replay passes none, the live runner parked it already) and is
    skipped; the rest of the batch is not held back."""
    good, poison = decode_batch(messages)
    if park is not None:
        await park(poison)
    try:
        await projection.apply([e for _, e in good], positions_after(messages))
        return
    except LogUnavailable:
        raise
    except Exception:
        log.warning("batch fold failed; folding it event by event", exc_info=True)
    for message, event in good:
        try:
            await projection.apply([event], positions_after([message]))
        except Exception as exc:
            if park is not None:
                await park([(message, f"fold failed: {type(exc).__name__}: {exc}")])
            await projection.apply([], positions_after([message]))
    # Undecodable events at the end of the batch are moved past too.
    await projection.apply([], positions_after(messages))


def prepared_fold(projection: Projection, messages: list[Message]) -> Callable[[], Awaitable[None]]:
    """The fold of a batch, decoded and (for a projection that can: `prepare`) its statements
    built here and now; what it writes is written when called. A batch that cannot be
    prepared or written whole is folded event by event (apply_isolated). Nothing is parked:
    for replays and rebuilds, whose events the live runner has parked already."""
    prepare = getattr(projection, "prepare", None)
    if prepare is None:
        return lambda: apply_isolated(projection, messages)
    good, _poison = decode_batch(messages)
    try:
        write = prepare([event for _, event in good])
    except Exception:
        return lambda: apply_isolated(projection, messages)
    positions = positions_after(messages)

    async def run() -> None:
        try:
            await projection.commit_in_one_hop(positions, write)
        except LogUnavailable:
            raise
        except Exception:
            await apply_isolated(projection, messages)

    return run


class WritesInOrder:
    """Batch writes one at a time, in order, with the next batch prepared (decoded, statements
    built, on the caller's thread) while the last one is written on its connection's thread."""

    def __init__(self) -> None:
        self._writing: asyncio.Task | None = None

    async def submit(self, write: Callable[[], Awaitable[None]]) -> None:
        """Wait for the write before (its error is raised here), then start this one."""
        await self.drain()
        self._writing = asyncio.ensure_future(write())

    async def drain(self) -> None:
        """Every submitted write has committed (or its error is raised)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing

    async def settle(self) -> None:
        """On the way out of a failure: let the write in flight end, whatever its outcome (a
        write handed to its connection's thread commits or not regardless of a cancel; what
        follows reads the store's positions, so it must have ended)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            await asyncio.gather(writing, return_exceptions=True)


class ProjectionRunner:
    def __init__(self, event_log: EventLog, projection: Projection, name: str) -> None:
        self._log = event_log
        self._projection = projection
        self._name = name
        self._positions: dict[int, int] = {}
        self._advanced = Pulse()
        # Fired only when a batch was folded (the state changed), not on every idle poll.
        self._folded = Pulse()
        self._caught_up_at = float("-inf")
        # Why the log cannot be read now (None while it can).
        self._outage: str | None = None
        # Held while a batch folds; fullReindex holds it to swap the store's database.
        self._fold_lock = asyncio.Lock()
        self._reseek = False

    @property
    def positions(self) -> dict[int, int]:
        return dict(self._positions)

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """No batch folds while inside (the one in progress finishes first)."""
        async with self._fold_lock:
            yield

    async def reseek(self) -> None:
        """Call while paused, after the store's database was replaced: read on from the
        positions the store holds now; batches read before are dropped unfolded."""
        self._positions = await self._projection.positions()
        self._reseek = True

    async def run(self, stop: asyncio.Event) -> None:
        """Fold until `stop` is set; waits and reconnects while the log is unavailable."""
        self._positions = await self._projection.positions()
        while not stop.is_set():
            reader = self._log.reader(self._projection.topic, dict(self._positions))
            try:
                await reader.start()
                while not stop.is_set():
                    checked_at = asyncio.get_running_loop().time()
                    messages = await reader.poll(0.2)
                    self._outage = None
                    if self._reseek:
                        self._reseek = False
                        break
                    if messages:
                        await self._fold(messages)
                    elif await caught_up_everywhere(reader, self._log.partitions):
                        self._caught_up_at = checked_at
                        self._advanced.fire()
            except LogUnavailable as exc:
                self._outage = str(exc) or type(exc).__name__
                log.warning("%s: log unavailable, retrying: %s", self._name, exc)
                await sleep_unless_stopped(stop, _RETRY_DELAY)
            finally:
                await reader.stop()

    async def _fold(self, messages: list[Message]) -> None:
        async with self._fold_lock:
            if not self._reseek:
                await self._fold_unlocked(messages)

    async def _fold_unlocked(self, messages: list[Message]) -> None:
        await apply_isolated(self._projection, messages, self._park)
        self._positions.update(positions_after(messages))
        self._advanced.fire()
        self._folded.fire()

    async def _park(self, poison: list[tuple[Message, str]]) -> None:
        """Dead-letter first, durably, so skipping an event never loses it."""
        for message, reason in poison:
            log.error(
                "%s: parking %s@%s in the DLQ: %s",
                self._name,
                message.partition,
                message.offset,
                reason,
            )
        await dlq.park(self._log, [dlq.letter(m, r, f"projection:{self._name}") for m, r in poison])

    def readiness(self, max_lag_s: float) -> str | None:
        """Why this projection is not ready (the log is unreachable, or it has not been caught
        up with the log for `max_lag_s`); None when it is."""
        if self._outage is not None:
            return f"projection {self._name}: log unavailable: {self._outage}"
        if asyncio.get_running_loop().time() - self._caught_up_at > max_lag_s:
            return f"projection {self._name}: not caught up with the log"
        return None

    async def wait_caught_up(self, timeout: float) -> bool:
        """True once the projection has folded everything appended before this call."""
        loop = asyncio.get_running_loop()
        since = loop.time()
        deadline = since + timeout
        while self._caught_up_at < since:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await self._advanced.wait(remaining)
        return True

    async def wait_folded(self, timeout: float) -> bool:
        """True once a batch was folded within `timeout` seconds (the state may have changed)."""
        return await self._folded.wait(timeout)

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
