"""What a process tells about itself: its health checks and metrics, and the refreshes that
read positions, lags and the DLQ's size from the log at each scrape. Every part of a process
registers here; the status endpoints (services/status.py) serve it."""

from __future__ import annotations

from dataclasses import dataclass, field

from events import dlq, model
from events.log import EventLog, LogUnavailable
from projections.runner import ProjectionRunner
from services.health import Health
from services.metrics import Metrics
from services.status import Refresh

# A projection that has not been caught up with the log for this long is not ready.
READY_LAG_S = 30.0


@dataclass
class Observability:
    """A process's health checks and metrics, and what refreshes the metrics read at scrape
    time: every part registers here, and the status endpoints serve it."""

    metrics: Metrics = field(default_factory=Metrics)
    health: Health = field(default_factory=Health)
    refresh: list[Refresh] = field(default_factory=list)
    # name -> (runner, topic) of each projection of this process; its worker types' groups.
    projections: dict[str, tuple[ProjectionRunner, str]] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)
    _log_watched: bool = False

    def watch_projection(self, runner: ProjectionRunner, name: str, topic: str) -> None:
        self.health.add(lambda: runner.readiness(READY_LAG_S))
        self.projections[name] = (runner, topic)

    def watch_log(self, event_log: EventLog) -> None:
        """Positions, lags and the DLQ's size, read at each scrape (once per process)."""
        if self._log_watched:
            return
        self._log_watched = True
        m = self.metrics

        async def positions() -> None:
            ends: dict[str, dict[int, int]] = {}
            for name, (runner, _topic) in self.projections.items():
                for partition, offset in runner.positions.items():
                    m.projection_position.labels(name, str(partition)).set(offset)
            try:
                for topic in (model.OPERATIONS_TOPIC, model.RECORDS_TOPIC, dlq.DLQ_TOPIC):
                    ends[topic] = await event_log.end_offsets(topic)
                committed = {
                    g: await event_log.committed(g, model.OPERATIONS_TOPIC) for g in self.groups
                }
            except LogUnavailable:
                return  # /readyz says so; the lags keep their last values
            m.dlq_size.set(sum(ends[dlq.DLQ_TOPIC].values()))
            for name, (runner, topic) in self.projections.items():
                folded = runner.positions
                for partition, end in ends[topic].items():
                    lag = end - folded.get(partition, 0)
                    m.projection_lag.labels(name, str(partition)).set(lag)
            for group, offsets in committed.items():
                for partition, end in ends[model.OPERATIONS_TOPIC].items():
                    lag = end - offsets.get(partition, 0)
                    m.consumer_lag.labels(group, str(partition)).set(lag)

        self.refresh.append(positions)
