"""Kafka adapter of the event-log port (aiokafka)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)
from aiokafka.partitioner import murmur2

from events.log import Entry, LogUnavailable, Message, PartitionsCallback, Position

_TOPIC_EXISTS = 36
# Errors after which an idempotent producer stays broken (its sender task has ended, or its
# producer id is no longer valid at the broker): the producer is rebuilt, not reused.
_FATAL_TO_PRODUCER = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerFenced,
)


class KafkaEventLog:
    def __init__(
        self,
        bootstrap_servers: str,
        partitions: int,
        *,
        replication_factor: int = 1,
        enable_idempotence: bool = True,
        request_timeout_ms: int = 10_000,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        namespace: str = "",
    ) -> None:
        # Prefix of every topic and group name, so several deployments can share a cluster.
        self._ns = f"{namespace}." if namespace else ""
        self.bootstrap_servers = bootstrap_servers
        self.partitions = partitions
        self._replication_factor = replication_factor
        self._idempotence = enable_idempotence
        self._request_timeout_ms = request_timeout_ms
        self._session_timeout_ms = session_timeout_ms
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._producer: AIOKafkaProducer | None = None
        self._rebuilding = asyncio.Lock()
        # Started on first use, for end offsets and group offsets (metrics).
        self._offsets: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None

    async def start(self) -> None:
        self._producer = await self._new_producer()

    async def _new_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            acks="all",
            enable_idempotence=self._idempotence,
            request_timeout_ms=self._request_timeout_ms,
            # A trigger is one record: waiting to fill a batch would only delay it. Records
            # sent while a request is in flight still go out together.
            linger_ms=0,
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise LogUnavailable(f"cannot reach Kafka at {self.bootstrap_servers}: {exc}") from exc
        return producer

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._offsets is not None:
            await self._offsets.stop()
            self._offsets = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    async def end_offsets(self, topic: str) -> dict[int, int]:
        tps = [TopicPartition(self._ns + topic, p) for p in range(self.partitions)]
        try:
            async with asyncio.timeout(self._request_timeout_ms / 1000):
                if self._offsets is None:
                    consumer = self._consumer(None)
                    await consumer.start()
                    self._offsets = consumer
                ends = await self._offsets.end_offsets(tps)
        except (KafkaError, TimeoutError) as exc:
            raise LogUnavailable(f"end offsets of {topic}: {exc or type(exc).__name__}") from exc
        return {tp.partition: offset for tp, offset in ends.items()}

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        try:
            async with asyncio.timeout(self._request_timeout_ms / 1000):
                if self._admin is None:
                    admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
                    await admin.start()
                    self._admin = admin
                offsets = await self._admin.list_consumer_group_offsets(self._ns + group)
        except (KafkaError, TimeoutError) as exc:
            raise LogUnavailable(f"offsets of {group}: {exc or type(exc).__name__}") from exc
        return {
            tp.partition: meta.offset
            for tp, meta in offsets.items()
            if tp.topic == self._ns + topic and meta.offset >= 0
        }

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
        await admin.start()
        try:
            # Infinite retention, never compacted: the operations topic is the audit trail.
            response = await admin.create_topics(
                [
                    NewTopic(
                        self._ns + name,
                        num_partitions=self.partitions,
                        replication_factor=self._replication_factor,
                        topic_configs={"retention.ms": "-1", "cleanup.policy": "delete"},
                    )
                    for name in topics
                ]
            )
            for name, code, message in response.topic_errors:
                if code not in (0, _TOPIC_EXISTS):
                    raise LogUnavailable(f"cannot create topic {name}: {code} {message}")
        finally:
            await admin.close()

    def partition_of(self, key: str) -> int:
        # The producer's default partitioner (Kafka's own: positive murmur2 modulo count).
        return (murmur2(key.encode()) & 0x7FFFFFFF) % self.partitions

    async def append(self, topic: str, entries: Sequence[Entry]) -> list[Position]:
        producer = self._producer
        if producer is None:
            raise LogUnavailable("event log is closed")
        try:
            return await self._send_all(producer, topic, entries)
        except KafkaError as exc:
            if not _broken(producer, exc):
                raise LogUnavailable(f"append to {topic} failed: {exc}") from exc
        # Retried once on a new producer: a duplicate of what the old one may have written is
        # harmless (consumers dedupe by event id), a producer left broken is not.
        await self._replace_producer(producer)
        try:
            return await self._send_all(self._producer, topic, entries)
        except KafkaError as exc:
            raise LogUnavailable(f"append to {topic} failed: {exc}") from exc

    async def _send_all(
        self, producer: AIOKafkaProducer, topic: str, entries: Sequence[Entry]
    ) -> list[Position]:
        futures: list[asyncio.Future] = []
        try:
            for e in entries:
                futures.append(
                    await producer.send(
                        self._ns + topic,
                        value=e.value,
                        key=e.key.encode(),
                        headers=[(k, v.encode()) for k, v in e.headers.items()],
                    )
                )
        finally:
            # Every delivery future is awaited, so a failed batch leaves no "exception was
            # never retrieved" behind; the first error is the one raised.
            results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [Position(m.partition, m.offset) for m in results]

    async def _replace_producer(self, broken: AIOKafkaProducer) -> None:
        async with self._rebuilding:
            if self._producer is not broken:
                return  # another append rebuilt it already
            self._producer = None
            with contextlib.suppress(Exception):
                await broken.stop()
            self._producer = await self._new_producer()

    def _consumer(self, group: str | None) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Readers wait on the broker for new records; a short wait keeps read-your-writes
            # and cancellation latency low (the default 500 ms dominated a trigger's latency).
            fetch_max_wait_ms=50,
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=self._heartbeat_interval_ms,
            request_timeout_ms=max(self._request_timeout_ms, self._session_timeout_ms + 5000),
        )

    def reader(self, topic: str, start: dict[int, int] | None = None) -> KafkaReader:
        return KafkaReader(
            self._consumer(None), self._ns + topic, self.partitions, dict(start or {})
        )

    def group_consumer(
        self,
        topic: str,
        group: str,
        on_assigned: PartitionsCallback | None = None,
        on_revoked: PartitionsCallback | None = None,
    ) -> KafkaGroupConsumer:
        return KafkaGroupConsumer(
            self._consumer(self._ns + group), self._ns + topic, on_assigned, on_revoked
        )


def _broken(producer: AIOKafkaProducer, exc: KafkaError) -> bool:
    task = producer._sender.sender_task if producer._sender is not None else None
    return isinstance(exc, _FATAL_TO_PRODUCER) or (task is not None and task.done())


def _message(record) -> Message:
    return Message(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key.decode() if record.key is not None else "",
        value=record.value,
        headers={k: v.decode() for k, v in record.headers},
        timestamp_ms=record.timestamp,
    )


class _KafkaPolling:
    _consumer: AIOKafkaConsumer
    _topic: str

    async def stop(self) -> None:
        try:
            await self._consumer.stop()
        except asyncio.CancelledError:
            # aiokafka lets the cancellation of its own coordinator task escape stop() when a
            # consumer stops right after starting; re-raise only a cancellation of ours.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise

    async def poll(self, timeout: float) -> list[Message]:
        try:
            batches = await self._consumer.getmany(timeout_ms=int(timeout * 1000), max_records=500)
        except KafkaError as exc:
            raise LogUnavailable(f"read from {self._topic} failed: {exc}") from exc
        out: list[Message] = []
        for records in batches.values():
            out.extend(_message(r) for r in records)
        return out

    async def caught_up(self, partition: int) -> bool:
        tp = TopicPartition(self._topic, partition)
        end = self._consumer.highwater(tp)
        if end is None:
            end = (await self._consumer.end_offsets([tp]))[tp]
        return await self._consumer.position(tp) >= end


class KafkaReader(_KafkaPolling):
    def __init__(
        self, consumer: AIOKafkaConsumer, topic: str, partitions: int, start: dict[int, int]
    ) -> None:
        self._consumer = consumer
        self._topic = topic
        self._partitions = partitions
        self._start = start

    async def start(self) -> None:
        try:
            await self._consumer.start()
        except KafkaError as exc:
            raise LogUnavailable(f"cannot start reader on {self._topic}: {exc}") from exc
        tps = [TopicPartition(self._topic, p) for p in range(self._partitions)]
        self._consumer.assign(tps)
        for tp in tps:
            self._consumer.seek(tp, self._start.get(tp.partition, 0))


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: KafkaGroupConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked) -> None:
        if self._owner._on_revoked is not None and revoked:
            await self._owner._on_revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned) -> None:
        if self._owner._on_assigned is not None and assigned:
            await self._owner._on_assigned({tp.partition for tp in assigned})


class KafkaGroupConsumer(_KafkaPolling):
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topic: str,
        on_assigned: PartitionsCallback | None,
        on_revoked: PartitionsCallback | None,
    ) -> None:
        self._consumer = consumer
        self._topic = topic
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked

    async def start(self) -> None:
        try:
            await self._consumer.start()
        except KafkaError as exc:
            raise LogUnavailable(f"cannot start consumer on {self._topic}: {exc}") from exc
        self._consumer.subscribe([self._topic], listener=_Listener(self))

    def assignment(self) -> set[int]:
        return {tp.partition for tp in self._consumer.assignment()}

    async def commit(self, offsets: dict[int, int]) -> None:
        owned = self.assignment()
        mine = {TopicPartition(self._topic, p): o for p, o in offsets.items() if p in owned}
        if not mine:
            return
        try:
            await self._consumer.commit(mine)
        except KafkaError as exc:
            raise LogUnavailable(f"commit on {self._topic} failed: {exc}") from exc
