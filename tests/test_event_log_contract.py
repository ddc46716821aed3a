"""One contract suite for the event-log port, run against every adapter."""

from __future__ import annotations

import asyncio

import pytest

from events.kafka_log import KafkaEventLog
from events.log import Entry
from events.memory_log import MemoryEventLog
from events.sqlite_log import SqliteEventLog
from testkit.waiting import eventually

PARTITIONS = 3


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("sqlite", marks=pytest.mark.unit),
        "kafka",
    ]
)
async def log(request, tmp_path, unique):
    if request.param == "memory":
        log = MemoryEventLog(PARTITIONS)
    elif request.param == "sqlite":
        log = SqliteEventLog(tmp_path / "events.db", PARTITIONS)
    else:
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        log = KafkaEventLog(
            bootstrap, PARTITIONS, session_timeout_ms=2000, heartbeat_interval_ms=300
        )
    await log.start()
    log.topic = f"contract.{unique}"
    await log.ensure_topics([log.topic])
    yield log
    await log.close()


def entries(n: int, keys: int = 5) -> list[Entry]:
    return [Entry(f"k{i % keys}", f"v{i}".encode(), {"n": str(i)}) for i in range(n)]


async def read_all(reader, count: int) -> list:
    got: list = []

    async def more() -> bool:
        got.extend(await reader.poll(0.2))
        return len(got) >= count

    await eventually(more, what=f"{count} messages")
    return got


async def test_concurrent_appends_get_distinct_gapless_positions(log):
    # Appends that come together (the API under load, workers emitting at once) may be
    # committed together; each still gets its own positions, in its own order.
    batches = await asyncio.gather(
        *(
            log.append(log.topic, [Entry("same", f"{b}-{i}".encode(), {}) for i in range(3)])
            for b in range(20)
        )
    )
    positions = [pos for batch in batches for pos in batch]
    assert len({(p.partition, p.offset) for p in positions}) == 60
    (partition,) = {p.partition for p in positions}
    offsets = sorted(p.offset for p in positions)
    assert offsets == list(range(offsets[0], offsets[0] + 60))
    for batch in batches:  # a batch's entries keep their order
        assert [p.offset for p in batch] == sorted(p.offset for p in batch)
    reader = log.reader(log.topic)
    await reader.start()
    try:
        got = [m for m in await read_all(reader, 60) if m.partition == partition]
    finally:
        await reader.stop()
    by_offset = {m.offset: m.value for m in got}
    for b, batch in enumerate(batches):
        assert [by_offset[p.offset] for p in batch] == [f"{b}-{i}".encode() for i in range(3)]


async def test_append_returns_positions_and_same_key_same_partition(log):
    positions = await log.append(log.topic, entries(20))
    assert len(positions) == 20
    by_key: dict[str, set[int]] = {}
    for entry, pos in zip(entries(20), positions, strict=True):
        by_key.setdefault(entry.key, set()).add(pos.partition)
        assert 0 <= pos.partition < PARTITIONS
    assert all(len(parts) == 1 for parts in by_key.values())
    # partition_of() says where a key lands, before anything is appended with it.
    assert all(parts == {log.partition_of(key)} for key, parts in by_key.items())
    keys = [f"some-key-{i}" for i in range(40)]
    landed = await log.append(log.topic, [Entry(k, b"x", {}) for k in keys])
    assert [p.partition for p in landed] == [log.partition_of(k) for k in keys]


async def test_reader_sees_every_record_in_key_order_with_headers(log):
    sent = entries(30)
    await log.append(log.topic, sent)
    reader = log.reader(log.topic)
    await reader.start()
    try:
        got = await read_all(reader, 30)
    finally:
        await reader.stop()
    assert sorted(m.value for m in got) == sorted(e.value for e in sent)
    for key in {e.key for e in sent}:
        values = [m.value for m in got if m.key == key]
        assert values == [e.value for e in sent if e.key == key]
    assert all(m.headers["n"] == m.value.decode()[1:] for m in got)


async def test_reader_starts_at_given_positions(log):
    positions = await log.append(log.topic, entries(12, keys=1))
    partition = positions[0].partition
    reader = log.reader(log.topic, {partition: 10})
    await reader.start()
    try:
        got = await read_all(reader, 2)
        assert [m.value for m in got] == [b"v10", b"v11"]
        assert await eventually(lambda: reader.caught_up(partition), what="caught up")
    finally:
        await reader.stop()


async def test_reader_sees_records_appended_after_it_started(log):
    reader = log.reader(log.topic)
    await reader.start()
    try:
        assert await reader.poll(0.1) == []
        await log.append(log.topic, [Entry("late", b"x", {})])
        got = await read_all(reader, 1)
        assert got[0].value == b"x" and got[0].key == "late"
    finally:
        await reader.stop()


async def test_group_commit_is_where_the_next_member_resumes(log, unique):
    await log.append(log.topic, entries(10, keys=1))
    group = f"g.{unique}"
    first = log.group_consumer(log.topic, group)
    await first.start()
    try:
        got = await read_all(first, 10)
        partition = got[0].partition
        await eventually(lambda: partition in first.assignment(), what="assignment")
        await first.commit({partition: 6})
    finally:
        await first.stop()
    second = log.group_consumer(log.topic, group)
    await second.start()
    try:
        got = await read_all(second, 4)
        assert [m.value for m in got] == [b"v6", b"v7", b"v8", b"v9"]
    finally:
        await second.stop()


async def test_end_offsets_and_a_groups_committed_offsets(log, unique):
    assert await log.end_offsets(log.topic) == dict.fromkeys(range(PARTITIONS), 0)
    positions = await log.append(log.topic, entries(9))
    ends = await log.end_offsets(log.topic)
    assert sum(ends.values()) == 9
    assert all(ends[p.partition] > p.offset for p in positions)
    group = f"g.{unique}"
    assert await log.committed(group, log.topic) == {}
    consumer = log.group_consumer(log.topic, group)
    await consumer.start()
    try:
        await read_all(consumer, 9)
        partition = positions[0].partition
        await eventually(lambda: partition in consumer.assignment(), what="assignment")
        await consumer.commit({partition: 1})
    finally:
        await consumer.stop()
    assert await log.committed(group, log.topic) == {partition: 1}


async def test_group_member_is_told_its_partitions(log, unique):
    assigned: set[int] = set()

    async def on_assigned(parts: set[int]) -> None:
        assigned.update(parts)

    consumer = log.group_consumer(log.topic, f"g.{unique}", on_assigned=on_assigned)
    await consumer.start()
    try:

        async def all_assigned() -> bool:
            await consumer.poll(0.1)
            return assigned == set(range(PARTITIONS))

        await eventually(all_assigned, what="all partitions assigned")
        assert consumer.assignment() == set(range(PARTITIONS))
    finally:
        await consumer.stop()


async def test_sqlite_log_is_durable_across_reopen(tmp_path):
    path = tmp_path / "events.db"
    log = SqliteEventLog(path, PARTITIONS)
    await log.start()
    await log.ensure_topics(["t"])
    await log.append("t", entries(5))
    await log.close()
    reopened = SqliteEventLog(path, PARTITIONS)
    await reopened.start()
    reader = reopened.reader("t")
    try:
        got = await read_all(reader, 5)
        assert len(got) == 5
        with pytest.raises(ValueError, match="partition count is fixed"):
            other = SqliteEventLog(path, PARTITIONS + 1)
            await other.start()
            try:
                await other.ensure_topics(["t"])
            finally:
                await other.close()
    finally:
        await reopened.close()
