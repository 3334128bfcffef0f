"""Baseline (c): the one segment as a bytewax dataflow with a keyed stateful operator.

    input (one workload batch per poll) -> filter (types the segment reads)
      -> stateful_batch keyed by user (sorted view / purchase timestamps, membership)
      -> output (membership changes)

Run in-process with ``bytewax.testing.run_main`` (one worker). Each item carries the event
clock after its batch (the largest timestamp so far), so a user is evaluated at the same
``now`` as rtseg evaluates it. bytewax's timers (``notify_at``) are wall-clock only, so the
time-driven exits of an event-clock stream cannot fire in the middle of it: a user leaves
late (at its next event). At end of input every key's ``on_eof`` re-evaluates it at the
stream's final ``now``, so the final membership is exact; intermediate exits are late, which
makes this baseline do less work than rtseg does, not more.

Items are built from the columns before the clock starts (the conversion to Python objects
is not timed): the measured time is the dataflow's.
"""

from __future__ import annotations

import time
from bisect import bisect_right, insort
from typing import Iterable

from bench.baselines import ONE, BaselineRun, OneSegment, batch_now, type_codes
from bench.workload import Batch


def bytewax_available() -> tuple[bool, str]:
    try:
        import bytewax  # noqa: F401
        from bytewax.testing import run_main  # noqa: F401
    except ImportError:
        return False, "bytewax is not installed (pip install 'bytewax==0.21.1', part of the bench extra)"
    return True, "bytewax " + _version()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("bytewax")
    except Exception:  # noqa: BLE001 - only informative
        return "?"


class _Clock:
    """The event clock as the source last set it; read by ``on_eof`` (one worker, one thread)."""

    now_ms = 0


def build_flow(item_batches: list[list], clock: _Clock, changes: list, spec: OneSegment = ONE):
    """The dataflow over pre-built ``(user, (ts, kind, now))`` item batches (kind 1 = view,
    2 = purchase, 0 = other)."""
    from bytewax import operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.inputs import DynamicSource, StatelessSourcePartition
    from bytewax.operators import StatefulBatchLogic
    from bytewax.testing import TestingSink

    w, min_views = spec.window_ms, spec.min_views

    class _Part(StatelessSourcePartition):
        def __init__(self):
            self._it = iter(item_batches)

        def next_batch(self):
            batch = next(self._it)  # StopIteration ends the input
            if batch:
                clock.now_ms = max(clock.now_ms, batch[-1][1][2])
            return batch

    class _Source(DynamicSource):
        def build(self, step_id, worker_index, worker_count):
            return _Part()

    class _UserWindows(StatefulBatchLogic):
        __slots__ = ("views", "buys", "member")

        def __init__(self, _resume):
            self.views: list[int] = []
            self.buys: list[int] = []
            self.member = False

        def _evaluate(self, now: int):
            cut = now - w
            views, buys = self.views, self.buys
            if views and views[0] <= cut:
                del views[:bisect_right(views, cut)]
            if buys and buys[0] <= cut:
                del buys[:bisect_right(buys, cut)]
            inside = len(views) >= min_views and not buys
            if inside != self.member:
                self.member = inside
                return (inside,)
            return ()

        def on_batch(self, values):
            now = 0
            for ts, kind, at in values:
                insort(self.views if kind == 1 else self.buys, ts)
                if at > now:
                    now = at
            return self._evaluate(now), StatefulBatchLogic.RETAIN

        def on_eof(self):
            return self._evaluate(clock.now_ms), StatefulBatchLogic.RETAIN

        def snapshot(self):
            return (list(self.views), list(self.buys), self.member)

    flow = Dataflow("rtseg_bench_one_segment")
    items = op.input("events", flow, _Source())
    relevant = op.filter("segment_types", items, lambda kv: kv[1][1] != 0)
    states = op.stateful_batch("user_windows", relevant, _UserWindows)
    op.output("changes", states, TestingSink(changes))
    return flow


def make_items(batches: Iterable[Batch], spec: OneSegment = ONE, start_ms: int = 0) -> tuple[list, int, int]:
    """(item batches, events, final now)."""
    out = []
    events = 0
    now = start_ms
    for b, now in batch_now(batches, start_ms):
        code = type_codes(b, spec).tolist()
        out.append([(u, (t, k, now)) for u, t, k in zip(b.user_id.tolist(), b.timestamp_ms.tolist(), code)])
        events += len(b)
    return out, events, now


def run(batches: Iterable[Batch], spec: OneSegment = ONE, start_ms: int = 0) -> BaselineRun:
    from bench.baselines import skipped

    ok, why = bytewax_available()
    if not ok:
        return skipped("bytewax", why)
    from bytewax.testing import run_main

    t0 = time.perf_counter()
    item_batches, events, now = make_items(batches, spec, start_ms)
    prepare_s = time.perf_counter() - t0
    clock = _Clock()
    clock.now_ms = start_ms
    changes: list = []
    flow = build_flow(item_batches, clock, changes, spec)
    t0 = time.perf_counter()
    run_main(flow)
    seconds = time.perf_counter() - t0
    members: set[str] = set()
    enters = exits = 0
    for uid, inside in changes:
        if inside:
            members.add(uid)
            enters += 1
        else:
            members.discard(uid)
            exits += 1
    return BaselineRun("bytewax", events, seconds, members, clock.now_ms, extra={
        "variant": f"{why}; run_main (1 worker), stateful_batch keyed by user, final sweep in on_eof",
        "prepare_items_s": round(prepare_s, 3), "enters": enters, "exits": exits,
        "final_now_ms": now})
