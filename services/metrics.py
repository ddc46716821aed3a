"""Prometheus metrics of a process (prometheus_client, one registry per process).

What is counted as it happens (events appended per topic, requests to sources per host) is a
counter of this process. What describes operations (how many per type and status, records
processed, durations, running and stalled ones) is read from the operations projection at
scrape time: derived from the folded log, it cannot count an event twice, however often the
log delivers it or the process restarts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.utils import floatToGoString

from events.log import Entry, EventLog, Position
from projections.operations import Operation

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# chive_backfill_duration_seconds buckets: 1 s to 1 h.
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.appended = Counter(
            "chive_backfill_events_appended",
            "Events this process appended to the log, per topic.",
            ["topic"],
            registry=self.registry,
        )
        self.source_requests = Counter(
            "chive_backfill_source_requests",
            "Requests to PDSes, the PLC directory and GROBID, per host and outcome.",
            ["host", "outcome"],
            registry=self.registry,
        )
        self.projection_position = Gauge(
            "chive_backfill_projection_position",
            "Events a projection of this process has folded, per partition.",
            ["projection", "partition"],
            registry=self.registry,
        )
        self.projection_lag = Gauge(
            "chive_backfill_projection_lag",
            "Events appended that a projection of this process has not folded yet.",
            ["projection", "partition"],
            registry=self.registry,
        )
        self.consumer_lag = Gauge(
            "chive_backfill_consumer_lag",
            "Operation events a worker type's consumer group has not committed past.",
            ["group", "partition"],
            registry=self.registry,
        )
        self.dlq_size = Gauge(
            "chive_backfill_dlq_size",
            "Events parked in the dead-letter topic.",
            registry=self.registry,
        )
        self._operations: _OperationsCollector | None = None

    def source_request(self, url: str, outcome: str) -> None:
        self.source_requests.labels(urlsplit(url).netloc or "?", outcome).inc()

    def observe_operations(self, stall_after_ms: int) -> _OperationsCollector:
        self._operations = _OperationsCollector(stall_after_ms)
        self.registry.register(self._operations)
        return self._operations

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _OperationsCollector:
    """The operations metrics of the latest snapshot (taken just before each scrape)."""

    def __init__(self, stall_after_ms: int) -> None:
        self.stall_after_ms = stall_after_ms
        self._ops: list[Operation] = []
        self._now_ms = 0

    def update(self, ops: list[Operation], now_ms: int) -> None:
        self._ops, self._now_ms = ops, now_ms

    def collect(self) -> Iterable:
        total = CounterMetricFamily(
            "chive_backfill_operations",
            "Backfill operations, per type and status.",
            labels=["type", "status"],
        )
        records = CounterMetricFamily(
            "chive_backfill_records_processed",
            "Records processed by backfill operations, per type.",
            labels=["type"],
        )
        running = GaugeMetricFamily(
            "chive_backfill_running_operations", "Running operations, per type.", labels=["type"]
        )
        stalled = GaugeMetricFamily(
            "chive_backfill_stalled_operations",
            "Running operations with no event for longer than CHIVE_STALL_AFTER_S, per type.",
            labels=["type"],
        )
        counts: dict[tuple[str, str], int] = {}
        processed: dict[str, int] = {}
        live: dict[str, int] = {}
        silent: dict[str, int] = {}
        durations: dict[str, list[float]] = {}
        for op in self._ops:
            counts[op.type, op.status] = counts.get((op.type, op.status), 0) + 1
            processed[op.type] = processed.get(op.type, 0) + op.records_processed
            if op.status == "running":
                live[op.type] = live.get(op.type, 0) + 1
                if self._now_ms - op.updated_at > self.stall_after_ms:
                    silent[op.type] = silent.get(op.type, 0) + 1
            elif op.status == "completed" and op.completed_at is not None:
                seconds = (op.completed_at - op.started_at) / 1000
                durations.setdefault(op.type, []).append(seconds)
        for (kind, status), n in sorted(counts.items()):
            total.add_metric([kind, status], n)
        for kind, n in sorted(processed.items()):
            records.add_metric([kind], n)
        for kind in sorted(live):
            running.add_metric([kind], live[kind])
            stalled.add_metric([kind], silent.get(kind, 0))
        duration = HistogramMetricFamily(
            "chive_backfill_duration_seconds",
            "Duration of completed backfill operations, per type.",
            labels=["type"],
        )
        for kind, values in sorted(durations.items()):
            buckets = [(floatToGoString(b), sum(v <= b for v in values)) for b in DURATION_BUCKETS]
            duration.add_metric([kind], [*buckets, ("+Inf", len(values))], sum(values))
        yield from (total, records, running, stalled, duration)


class CountedLog:
    """An event log that counts what this process appends (the port, delegated)."""

    def __init__(self, inner: EventLog, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics
        self.partitions = inner.partitions

    async def start(self) -> None:
        await self._inner.start()

    async def close(self) -> None:
        await self._inner.close()

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        await self._inner.ensure_topics(topics)

    async def append(self, topic: str, entries: Sequence[Entry]) -> list[Position]:
        positions = await self._inner.append(topic, entries)
        self._metrics.appended.labels(topic).inc(len(entries))
        return positions

    def partition_of(self, key: str) -> int:
        return self._inner.partition_of(key)

    def reader(self, topic: str, start: dict[int, int] | None = None):
        return self._inner.reader(topic, start)

    def group_consumer(self, topic, group, on_assigned=None, on_revoked=None):
        return self._inner.group_consumer(topic, group, on_assigned, on_revoked)

    async def end_offsets(self, topic: str) -> dict[int, int]:
        return await self._inner.end_offsets(topic)

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        return await self._inner.committed(group, topic)
