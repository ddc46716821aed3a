"""The dead-letter topic: events a consumer could not decode or fold, with the reason.

A consumer parks such an event here (durably, before it moves past it) and goes on; nothing
behind it is blocked. `chive-backfill dlq list` shows them; `dlq replay` appends the original
records to their topics again, for after a fix (say, an upcaster) has been deployed.
"""

from __future__ import annotations

import msgspec

from events import model
from events.log import Entry, EventLog, Message, read_to_end

DLQ_TOPIC = "chive.backfill.dlq"


class DeadLetter(msgspec.Struct, frozen=True):
    topic: str
    partition: int
    offset: int
    key: str
    headers: dict[str, str]
    value: bytes
    reason: str
    consumer: str
    dead_at: int


def letter(message: Message, reason: str, consumer: str) -> DeadLetter:
    return DeadLetter(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        headers=dict(message.headers),
        value=message.value,
        reason=reason,
        consumer=consumer,
        dead_at=model.now_ms(),
    )


async def park(event_log: EventLog, letters: list[DeadLetter]) -> None:
    if not letters:
        return
    await event_log.append(
        DLQ_TOPIC,
        [
            Entry(
                f"{d.topic}/{d.partition}/{d.offset}",
                msgspec.json.encode(d),
                {"consumer": d.consumer},
            )
            for d in letters
        ],
    )


async def read_all(event_log: EventLog) -> list[DeadLetter]:
    letters = [
        msgspec.json.decode(m.value, type=DeadLetter)
        for m in await read_to_end(event_log, DLQ_TOPIC)
    ]
    return sorted(letters, key=lambda d: d.dead_at)


async def replay(event_log: EventLog, letters: list[DeadLetter]) -> int:
    """Append each parked record to its topic again (once per distinct record)."""
    seen: set[tuple[str, int, int]] = set()
    count = 0
    for d in letters:
        if (d.topic, d.partition, d.offset) in seen:
            continue
        seen.add((d.topic, d.partition, d.offset))
        await event_log.append(_logical(d.topic), [Entry(d.key, d.value, d.headers)])
        count += 1
    return count


def _logical(topic: str) -> str:
    """The topic name without a Kafka namespace prefix (the adapter adds it back)."""
    for name in (model.OPERATIONS_TOPIC, model.RECORDS_TOPIC):
        if topic.endswith(name):
            return name
    return topic
