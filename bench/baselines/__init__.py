"""What a user would build instead of rtseg, run on the same events and checked against it.

Each baseline consumes the stream as ``bench.workload.Batch`` objects (the batches rtseg
ingests), keeps the one-segment workload's state its own way and returns a ``BaselineRun``
with its final membership at the stream's final ``now`` (event clock), which the suite
compares with rtseg's: a difference fails the run.

* ``bench.baseline_python``: pure Python, dicts of deques (every segment, written elsewhere);
* ``redis_zset``: Redis sorted sets per (user, event type), pipelined commands or one Lua
  script call per event, against a ``redis-server`` started on loopback;
* ``bytewax_flow``: a bytewax dataflow with a keyed stateful operator;
* ``duckdb_poll``: DuckDB recomputing segments with SQL over the retained events (a poller).

The one segment every baseline expresses is ``ONE_SEGMENT`` of bench/workload.py; its
parameters are pinned in ``ONE`` below (and checked against the text at import).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from bench.workload import ONE_SEGMENT, Batch

HOUR_MS = 3_600_000


@dataclass(frozen=True)
class OneSegment:
    """``count(VIEW, W) >= MIN_VIEWS and count(PURCHASE, W) == 0`` in plain numbers."""

    view_type: str = "view_product"
    purchase_type: str = "purchase"
    window_ms: int = 48 * HOUR_MS
    min_views: int = 3

    def text(self) -> str:
        return (f"count({self.view_type}, {self.window_ms // HOUR_MS}h) >= {self.min_views}"
                f" and count({self.purchase_type}, {self.window_ms // HOUR_MS}h) == 0")


ONE = OneSegment()
assert ONE.text() == ONE_SEGMENT, "bench.workload.ONE_SEGMENT changed: update baselines.ONE"


@dataclass
class BaselineRun:
    """One baseline's run: throughput, final membership and anything else it measured."""

    name: str
    events: int = 0
    seconds: float = 0.0
    members: set[str] = field(default_factory=set)
    now_ms: int = 0
    status: str = "ok"  # ok | skipped | error
    reason: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def events_per_s(self) -> float | None:
        return self.events / self.seconds if self.seconds > 0 and self.events else None

    def to_json(self) -> dict:
        out = {"name": self.name, "status": self.status, "events": self.events,
               "seconds": round(self.seconds, 4), "events_per_s": _round(self.events_per_s),
               "members": len(self.members), "now_ms": self.now_ms}
        if self.reason:
            out["reason"] = self.reason
        out.update(self.extra)
        return out


def skipped(name: str, reason: str) -> BaselineRun:
    return BaselineRun(name=name, status="skipped", reason=reason)


def _round(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(float(x), digits)


def mismatch(expected: set[str], got: set[str], limit: int = 5) -> dict | None:
    """None when equal, else sizes and a few users on each side."""
    if expected == got:
        return None
    return {"rtseg": len(expected), "baseline": len(got),
            "only_rtseg": sorted(expected - got)[:limit], "only_baseline": sorted(got - expected)[:limit]}


def batch_now(batches: Iterable[Batch], start_ms: int = 0) -> Iterator[tuple[Batch, int]]:
    """Each batch with the event clock after it (the largest timestamp so far)."""
    now = start_ms
    for b in batches:
        if len(b):
            now = max(now, int(b.timestamp_ms.max()))
        yield b, now


def type_codes(b: Batch, spec: OneSegment = ONE) -> np.ndarray:
    """int8 per event: 1 = view, 2 = purchase, 0 = a type the segment ignores."""
    t = b.type
    code = np.zeros(len(t), dtype=np.int8)
    code[t == spec.view_type] = 1
    code[t == spec.purchase_type] = 2
    return code


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(pred, timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll ``pred`` until true or ``timeout_s`` (a bounded loop)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval_s)
    return bool(pred())


def run_rtseg(batches: Iterable[Batch], segments: dict[str, str], start_ms: int,
              retention: str = "30d", traits: list | None = None):
    """rtseg's in-process engine on the same batches: (engine, events, seconds in
    ``ingest_columns``). The clock starts at ``start_ms``; ``traits`` are
    ``(user, traits, None)`` updates set before the segments are created."""
    from engine import Engine

    eng = Engine(clock="event", retention=retention)
    eng.advance_clock(start_ms)
    if traits:
        eng.set_traits_many(traits)
    for name, text in segments.items():
        eng.create_segment(name, text)
    events = 0
    seconds = 0.0
    for b in batches:
        cols = b.columns()
        t0 = time.perf_counter()
        eng.ingest_columns(**cols)
        seconds += time.perf_counter() - t0
        events += len(b)
    return eng, events, seconds
