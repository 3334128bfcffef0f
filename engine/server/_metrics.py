"""Small, allocation-free metrics for GetStats and ``/metrics``: latency percentiles over the
most recent samples, cumulative latency histograms (Prometheus buckets) and an events-per-second
rate over a sliding few seconds."""

from __future__ import annotations

import bisect
import time

import numpy as np


# Upper bounds of the latency buckets, in ms (Prometheus ``le`` in seconds: these / 1000).
LATENCY_BUCKETS_MS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0,
                      1000.0, 2500.0, 5000.0, 10000.0)


class Histogram:
    """Counts of every sample since start by bucket (``le`` upper bounds in ms), with their sum:
    what a Prometheus histogram exposes, without the percentile window's forgetting."""

    def __init__(self, bounds_ms: tuple[float, ...] = LATENCY_BUCKETS_MS):
        self.bounds_ms = tuple(sorted(bounds_ms))
        self._counts = [0] * (len(self.bounds_ms) + 1)     # the last one: above every bound
        self.count = 0
        self.sum_ms = 0.0

    def observe_ms(self, ms: float) -> None:
        self._counts[bisect.bisect_left(self.bounds_ms, ms)] += 1
        self.count += 1
        self.sum_ms += ms

    def cumulative(self) -> list[tuple[float, int]]:
        """``[(le_ms, samples <= le_ms), ..., (inf, count)]``."""
        out, total = [], 0
        for bound, n in zip(self.bounds_ms + (float("inf"),), self._counts):
            total += n
            out.append((bound, total))
        return out


class LatencyWindow:
    """The last ``capacity`` latencies (in ms), for percentiles, and a :class:`Histogram` of
    all of them.

    The percentiles of :meth:`summary` cost ~1 ms over a full window, on the gateway's event
    loop: they are computed again only when new samples came and the last computation is
    ``SUMMARY_MAX_AGE_S`` old, so a client that asks for stats back to back cannot take the
    loop from ingestion and reads. ``count`` is always current."""

    SUMMARY_MAX_AGE_S = 0.1

    def __init__(self, capacity: int = 65536):
        self._buf = np.zeros(capacity, np.float64)
        self._n = 0
        self.histogram = Histogram()
        self._summary: dict | None = None
        self._summary_n = 0
        self._summary_t = 0.0

    def record_ms(self, ms: float) -> None:
        self._buf[self._n % len(self._buf)] = ms
        self._n += 1
        self.histogram.observe_ms(ms)

    def record_since(self, t0_ns: int) -> None:
        self.record_ms((time.perf_counter_ns() - t0_ns) / 1e6)

    def summary(self) -> dict:
        n = min(self._n, len(self._buf))
        if n == 0:
            return {"count": 0, "p50_ms": 0.0, "p99_ms": 0.0, "p999_ms": 0.0, "max_ms": 0.0}
        now = time.monotonic()
        if self._summary is None or (self._n != self._summary_n
                                     and now - self._summary_t >= self.SUMMARY_MAX_AGE_S):
            data = self._buf[:n]
            p50, p99, p999 = np.percentile(data, [50, 99, 99.9])
            self._summary = {"p50_ms": float(p50), "p99_ms": float(p99), "p999_ms": float(p999),
                             "max_ms": float(data.max())}
            self._summary_n, self._summary_t = self._n, now
        return dict(self._summary, count=self._n)


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
