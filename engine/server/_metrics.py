"""Small, allocation-free metrics for GetStats: latency percentiles over the most recent
samples and an events-per-second rate over a sliding few seconds."""

from __future__ import annotations

import time

import numpy as np


class LatencyWindow:
    """The last ``capacity`` latencies (in ms), for percentiles."""

    def __init__(self, capacity: int = 65536):
        self._buf = np.zeros(capacity, np.float64)
        self._n = 0

    def record_ms(self, ms: float) -> None:
        self._buf[self._n % len(self._buf)] = ms
        self._n += 1

    def record_since(self, t0_ns: int) -> None:
        self.record_ms((time.perf_counter_ns() - t0_ns) / 1e6)

    def summary(self) -> dict:
        n = min(self._n, len(self._buf))
        if n == 0:
            return {"count": 0, "p50_ms": 0.0, "p99_ms": 0.0, "p999_ms": 0.0, "max_ms": 0.0}
        data = self._buf[:n]
        p50, p99, p999 = np.percentile(data, [50, 99, 99.9])
        return {"count": self._n, "p50_ms": float(p50), "p99_ms": float(p99),
                "p999_ms": float(p999), "max_ms": float(data.max())}


class RateMeter:
    """Events per second over the last ``window_s`` seconds, in one-second buckets."""

    def __init__(self, window_s: int = 5):
        self._window_s = window_s
        self._buckets: dict[int, int] = {}

    def add(self, n: int) -> None:
        sec = int(time.monotonic())
        self._buckets[sec] = self._buckets.get(sec, 0) + n
        if len(self._buckets) > 2 * self._window_s:
            for old in [s for s in self._buckets if s < sec - self._window_s]:
                del self._buckets[old]

    def per_second(self) -> float:
        now = int(time.monotonic())
        # complete seconds only: the current one is still filling
        total = sum(v for s, v in self._buckets.items() if now - self._window_s <= s < now)
        return total / self._window_s
