"""Token buckets per client address: what keeps one client from making the service (or, through
it, a PLC directory) do unbounded work. Memory is bounded: the least recently seen clients are
forgotten first, which only ever gives a forgotten client a full bucket back."""

from __future__ import annotations

import time
from collections import OrderedDict

MAX_CLIENTS = 100_000


class RateLimiter:
    def __init__(self, per_minute: float, burst: float | None = None) -> None:
        """`per_minute` 0 means no limit. `burst`: requests allowed at once (default: a
        tenth of a minute's worth, at least 10)."""
        self.rate = per_minute / 60.0
        self.burst = burst if burst is not None else max(10.0, per_minute / 10)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str, now: float | None = None) -> float | None:
        """None when `client` may go on, else the seconds until it may (Retry-After)."""
        if self.rate <= 0:
            return None
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        wait = None
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
        return wait
