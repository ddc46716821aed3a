"""The event-log port: what services need from a log, whichever adapter backs it.

A log holds topics split into a fixed number of partitions; records are appended with a key
(same key, same partition, in order) and read either

- by a *reader*: no group, all partitions, from positions the caller stores itself (projections
  keep them in the same transaction as their state), or
- by a *group consumer*: members of one group share the partitions; the group's committed
  offsets say where a member that takes a partition over starts.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import msgspec

from events.waiting import Backoff


class Message(msgspec.Struct, frozen=True):
    topic: str
    partition: int
    offset: int
    key: str
    value: bytes
    headers: dict[str, str]
    timestamp_ms: int


class Position(msgspec.Struct, frozen=True):
    partition: int
    offset: int


class Entry(msgspec.Struct, frozen=True):
    """One record to append."""

    key: str
    value: bytes
    headers: dict[str, str]


class LogUnavailable(RuntimeError):
    """The log could not take or serve records now (broker down, timeout)."""


PartitionsCallback = Callable[[set[int]], Awaitable[None]]


class Reader(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def poll(self, timeout: float) -> list[Message]:
        """Next records in partition order per partition; [] when none came within timeout."""

    async def caught_up(self, partition: int) -> bool:
        """True when this reader has read everything appended to the partition so far."""


class GroupConsumer(Reader, Protocol):
    def assignment(self) -> set[int]: ...

    async def commit(self, offsets: dict[int, int]) -> None:
        """Store, per partition, the offset of the next record the group should read."""


class EventLog(Protocol):
    partitions: int

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ensure_topics(self, topics: Sequence[str]) -> None: ...

    async def append(self, topic: str, entries: Sequence[Entry]) -> list[Position]:
        """Append durably (acks=all / committed transaction) and return each entry's position."""

    def partition_of(self, key: str) -> int:
        """The partition an entry with this key is appended to."""

    def reader(self, topic: str, start: dict[int, int] | None = None) -> Reader: ...

    async def end_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the offset the next record appended will get."""

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        """Per partition, the offset a group has committed (partitions it never committed are
        absent)."""

    def group_consumer(
        self,
        topic: str,
        group: str,
        on_assigned: PartitionsCallback | None = None,
        on_revoked: PartitionsCallback | None = None,
    ) -> GroupConsumer: ...


async def append_patiently(
    event_log: EventLog, topic: str, entries: Sequence[Entry], *, max_delay_s: float = 5.0
) -> list[Position]:
    """Append, waiting out an outage of the log (with capped backoff) instead of failing:
    for writers whose output must not be lost, such as a worker's records and outcomes."""
    backoff = Backoff(cap_s=max_delay_s)
    for attempt in itertools.count():
        try:
            return await event_log.append(topic, entries)
        except LogUnavailable as exc:
            logging.getLogger(__name__).warning("append to %s failed, retrying: %s", topic, exc)
            await asyncio.sleep(backoff.delay(attempt))
    raise AssertionError("unreachable")


def folded_through(ends: dict[int, int], positions: dict[int, int]) -> bool:
    """`positions` (the next offset a reader will take, per partition) have reached `ends`
    (offsets a topic had reached) on every partition."""
    return all(positions.get(p, 0) >= end for p, end in ends.items())


async def caught_up_everywhere(reader: Reader, partitions: int) -> bool:
    """True when the reader has read everything appended to every partition so far."""
    return all([await reader.caught_up(p) for p in range(partitions)])


async def read_to_end(event_log: EventLog, topic: str) -> list[Message]:
    """Everything appended to `topic` so far, group-less, in per-partition order."""
    reader = event_log.reader(topic)
    await reader.start()
    out: list[Message] = []
    try:
        while True:
            out.extend(await reader.poll(0.1))
            if await caught_up_everywhere(reader, event_log.partitions):
                return out
    finally:
        await reader.stop()
