"""The Kafka adapter's producer under errors, on the suite's broker: a producer left broken by
a fatal error (what an idempotent producer meets after a broker restart: OutOfOrderSequence,
UnknownProducerId) is rebuilt and the append retried; a failed multi-entry append leaves no
delivery future with an unretrieved exception behind."""

from __future__ import annotations

import asyncio
import gc

import pytest
from aiokafka.errors import KafkaTimeoutError, OutOfOrderSequenceNumber, UnknownProducerId

from events.kafka_log import KafkaEventLog
from events.log import Entry, LogUnavailable
from testkit.harness import kafka_idempotence


@pytest.fixture
async def log(kafka_bootstrap, unique):
    log = KafkaEventLog(kafka_bootstrap, 3, enable_idempotence=kafka_idempotence())
    await log.start()
    log.topic = f"producer.{unique}"
    await log.ensure_topics([log.topic])
    yield log
    await log.close()


def entries(n: int) -> list[Entry]:
    return [Entry(f"k{i}", f"v{i}".encode(), {}) for i in range(n)]


@pytest.mark.parametrize("fatal", [OutOfOrderSequenceNumber, UnknownProducerId])
async def test_a_producer_broken_by_a_fatal_error_is_rebuilt(log, fatal):
    broken = log._producer

    async def fails(*args, **kwargs):
        raise fatal()

    broken.send = fails
    positions = await log.append(log.topic, entries(3))
    assert len(positions) == 3
    assert log._producer is not broken, "the broken producer was reused"
    # And the new one keeps working.
    assert len(await log.append(log.topic, entries(2))) == 2
    reader = log.reader(log.topic)
    await reader.start()
    got = []
    try:
        while len(got) < 5:
            got.extend(await reader.poll(0.5))
    finally:
        await reader.stop()
    assert sorted(m.value for m in got) == sorted([b"v0", b"v1", b"v2", b"v0", b"v1"])


async def test_a_failed_append_retrieves_every_delivery_future(log):
    loop = asyncio.get_running_loop()
    unretrieved = []
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context["message"]))

    sent = 0

    async def undelivered(*args, **kwargs):
        # Two records are queued (their delivery then fails), the third is refused at once.
        nonlocal sent
        sent += 1
        if sent == 3:
            raise KafkaTimeoutError()
        future = loop.create_future()
        future.set_exception(KafkaTimeoutError())
        return future

    producer = log._producer
    producer.send = undelivered
    with pytest.raises(LogUnavailable):
        await log.append(log.topic, entries(5))
    assert log._producer is producer, "a retriable error does not rebuild the producer"
    assert sent == 3
    gc.collect()  # an unretrieved exception is reported when its future is collected
    assert unretrieved == []
    loop.set_exception_handler(None)
