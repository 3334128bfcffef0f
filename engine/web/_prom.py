"""``/metrics``: the engine's figures as Prometheus metrics (``prometheus_client``).

Two sources of the same names: :class:`GatewaySource` reads the gateway of this process
(inside ``rtseg serve``: cumulative histograms, the queue, the log writer), and
:class:`RemoteSource` what ``GetStats`` tells a console that runs apart from its server
(``rtseg console --target``: counters and gauges, latency windows as quantile gauges). A scrape
first gathers a snapshot on the event loop, then renders it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

__all__ = ["GatewaySource", "RemoteSource", "MetricsEndpoint", "CONTENT_TYPE_LATEST"]

QUANTILES = (("0.5", "p50_ms"), ("0.99", "p99_ms"), ("0.999", "p999_ms"), ("1", "max_ms"))


class GatewaySource:
    """The in-process gateway (read on its own event loop)."""

    remote = False

    def __init__(self, gateway):
        self.gw = gateway

    async def snapshot(self) -> dict:
        gw = self.gw
        stats = await gw.stats()
        segments = await gw.list_segments() if gw.ready else []
        hist = {}
        for name, attr in (("ingest", "ingest_latency"), ("delta", "delta_latency"),
                           ("round", "round_latency"), ("loop", "loop_lag")):
            window = getattr(gw, attr, None)
            h = getattr(window, "histogram", None)
            if h is not None:
                hist[name] = (h.cumulative(), h.sum_ms)
        return {"stats": stats, "sizes": {s["name"]: int(s["size"]) for s in segments},
                "histograms": hist, "rounds_in_flight": len(gw.applier.in_flight),
                "subscriber_lag": gw.subscriptions.lag(),
                "log": stats.get("log")}


class RemoteSource:
    """A server elsewhere, through ``engine.client.Client`` (GetStats and ListSegments)."""

    remote = True

    def __init__(self, client):
        self.client = client

    async def snapshot(self) -> dict:
        def read():
            stats = self.client.stats()
            sizes = {s.name: int(s.size) for s in self.client.list_segments()}
            return stats, sizes
        stats, sizes = await run_in_threadpool(read)
        d = stats.get("durability") or {}
        log = None
        if d.get("fsync"):
            log = {"fsync_p99_ms": d.get("fsync_p99_ms"), "bytes_written": d.get("log_bytes"),
                   "last_lsn": d.get("log_last_position")}
        return {"stats": stats, "sizes": sizes, "histograms": {}, "log": log}


class _Snapshot:
    """A collector that yields the families of the snapshot last set."""

    def __init__(self):
        self.families: list = []

    def collect(self) -> Iterable:
        return list(self.families)


class MetricsEndpoint:
    """Renders a source's snapshot in the Prometheus text format."""

    def __init__(self, source):
        self.source = source
        self._collector = _Snapshot()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self._collector)
        self._lock = asyncio.Lock()

    async def render(self) -> bytes:
        async with self._lock:
            snap = await self.source.snapshot()
            self._collector.families = families(snap)
            return generate_latest(self.registry)


def _s(ms: Any) -> float:
    return float(ms or 0.0) / 1000.0


def families(snap: dict) -> list:
    """A snapshot -> metric families (the names documented in docs/console.md)."""
    st = snap["stats"]
    out: list = []

    def counter(name, doc, value):
        out.append(CounterMetricFamily(name, doc, value=float(value or 0)))

    def gauge(name, doc, value):
        out.append(GaugeMetricFamily(name, doc, value=float(value or 0)))

    counter("rtseg_events_accepted", "Events accepted by Ingest since the server started.",
            st.get("events_accepted"))
    counter("rtseg_events_rejected", "Events rejected by Ingest (with a reason) since the "
            "server started.", st.get("events_rejected"))
    counter("rtseg_deltas", "Deltas (ENTER/EXIT) sequenced: the newest delta's sequence number.",
            st.get("last_sequence"))
    gauge("rtseg_delta_log_first_sequence", "Oldest delta still retained for Subscribe resume "
          "(0: none).", st.get("first_sequence"))
    gauge("rtseg_ingest_events_per_second", "Events accepted per second over the last seconds.",
          st.get("ingest_events_per_s"))
    gauge("rtseg_users", "Users known over all shards.", st.get("users"))
    gauge("rtseg_events_retained", "Events retained over all shards.", st.get("events"))
    gauge("rtseg_segments", "Segments defined.", st.get("segments"))
    gauge("rtseg_shards", "Shard actors.", st.get("shards"))
    gauge("rtseg_subscribers", "Subscribe streams open (the console's own feed included).",
          st.get("subscribers"))
    if "subscriber_lag" in snap:
        lag_max, lag_sum = snap["subscriber_lag"]
        gauge("rtseg_subscriber_lag_max_deltas", "Deltas sequenced that the furthest-behind open "
              "subscription has not read yet.", lag_max)
        gauge("rtseg_subscriber_lag_deltas", "Deltas sequenced and not yet read, summed over the "
              "open subscriptions.", lag_sum)
    gauge("rtseg_uptime_seconds", "Seconds since the server started.", _s(st.get("uptime_ms")))
    if "queue_ops" in st:
        gauge("rtseg_queue_ops", "Operations waiting in the gateway queue for the shards.",
              st.get("queue_ops"))
    if "rounds_in_flight" in snap:
        gauge("rtseg_rounds_in_flight", "Micro-batch rounds sent to the shards and not yet "
              "published.", snap["rounds_in_flight"])

    sizes = GaugeMetricFamily("rtseg_segment_size", "Members of each segment.",
                              labels=["segment"])
    for name, size in sorted(snap.get("sizes", {}).items()):
        sizes.add_metric([name], float(size))
    out.append(sizes)

    for key, name, doc in (
            ("ingest", "rtseg_ingest_latency_seconds",
             "Ingest operations: received by the gateway -> applied and durable."),
            ("delta", "rtseg_ingest_to_delta_latency_seconds",
             "Ingest and trait operations that changed membership: received by the gateway -> "
             "their deltas published to subscribers."),
            ("round", "rtseg_round_latency_seconds",
             "Micro-batch rounds: sent to the shards -> published."),
            ("loop", "rtseg_event_loop_lag_seconds",
             "The gateway's event loop: how late a probe that sleeps 10 ms wakes up, i.e. how "
             "long a request waited then for the loop (ingestion, reads and deltas share it).")):
        if key not in snap.get("histograms", {}):
            continue
        cumulative, sum_ms = snap["histograms"][key]
        buckets = [("+Inf" if b == float("inf") else repr(b / 1000.0), n) for b, n in cumulative]
        out.append(HistogramMetricFamily(name, doc, buckets=buckets, sum_value=sum_ms / 1000.0))

    for key, name, doc in (("ingest_latency", "rtseg_ingest_latency_window_seconds",
                            "Ingest latency quantiles over the most recent operations."),
                           ("round_latency", "rtseg_round_latency_window_seconds",
                            "Round latency quantiles over the most recent rounds."),
                           ("loop_lag", "rtseg_event_loop_lag_window_seconds",
                            "The gateway's event-loop lag, quantiles over the most recent "
                            "probes (every 10 ms).")):
        window = st.get(key) or {}
        g = GaugeMetricFamily(name, doc, labels=["quantile"])
        for q, field in QUANTILES:
            g.add_metric([q], _s(window.get(field)))
        out.append(g)

    shard_stats = st.get("shard_stats") or []
    if shard_stats:
        users = GaugeMetricFamily("rtseg_shard_users", "Users per shard.", labels=["shard"])
        events = GaugeMetricFamily("rtseg_shard_events_retained", "Events retained per shard.",
                                   labels=["shard"])
        dropped = CounterMetricFamily("rtseg_shard_events_dropped", "Events dropped per shard "
                                      "(past max_events_per_type).", labels=["shard"])
        apply = GaugeMetricFamily("rtseg_shard_apply_latency_seconds", "Per shard: one round's "
                                  "steps applied (events, timers, model scoring), quantiles over "
                                  "recent rounds.", labels=["shard", "quantile"])
        scoring = CounterMetricFamily("rtseg_model_scoring_seconds", "Per shard: time spent "
                                      "scoring users with the deployed models (features and "
                                      "ONNX runs).", labels=["shard"])
        scored = CounterMetricFamily("rtseg_model_scored_rows", "Per shard: user rows scored.",
                                     labels=["shard"])
        for s in shard_stats:
            i = str(s.get("shard", 0))
            scoring.add_metric([i], float(s.get("model_scoring_s", 0)))
            scored.add_metric([i], float(s.get("model_scored_rows", 0)))
            users.add_metric([i], float(s.get("users", 0)))
            events.add_metric([i], float(s.get("events", 0)))
            dropped.add_metric([i], float(s.get("events_dropped", 0)))
            lat = s.get("apply_latency") or {}
            for q, field in QUANTILES:
                apply.add_metric([i, q], _s(lat.get(field)))
        out += [users, events, dropped, apply, scoring, scored]

    log = snap.get("log")
    if log:
        fs = GaugeMetricFamily("rtseg_log_fsync_latency_seconds", "Write-ahead log fsync "
                               "latency quantiles over recent fsyncs.", labels=["quantile"])
        for q, field in (("0.5", "fsync_p50_ms"), ("0.99", "fsync_p99_ms"), ("1", "fsync_max_ms")):
            if log.get(field) is not None:
                fs.add_metric([q], _s(log[field]))
        out.append(fs)
        if log.get("fsyncs") is not None:
            counter("rtseg_log_fsyncs", "fsync calls of the write-ahead log.", log["fsyncs"])
        if log.get("bytes_written") is not None:
            counter("rtseg_log_written_bytes", "Bytes written to the write-ahead log since "
                    "start.", log["bytes_written"])
        if log.get("last_lsn") is not None:
            gauge("rtseg_log_last_position", "Frames ever logged (the log's last position).",
                  log["last_lsn"])
        if log.get("pending_frames") is not None:
            gauge("rtseg_log_pending_frames", "Frames waiting for the log writer.",
                  log["pending_frames"])
    return out
