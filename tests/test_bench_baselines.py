"""Each baseline of the benchmark suite reaches the engine's membership on a tiny workload.

The suite fails a run when a baseline disagrees with rtseg; these tests catch such a baseline
before a long run does. Redis and bytewax are skipped (with the reason) only when the tool is
not installed; pure Python and DuckDB always run (duckdb must be installed: the ``bench``
extra).
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.baselines import ONE, mismatch, run_rtseg
from bench.workload import ONE_SEGMENT, ONE_SEGMENT_NAME, SEGMENTS, Batch, Workload, WorkloadConfig

HOUR = 3_600_000
DAY = 86_400_000
T0 = 1_700_006_400_000


@pytest.fixture(scope="module")
def tiny():
    """Some hundred users over a few days: windows fill and empty, timers fire."""
    cfg = WorkloadConfig(users=400, events=12_000, days=5.0, seed=11)
    w = Workload(cfg)
    segs = {ONE_SEGMENT_NAME: ONE_SEGMENT}
    eng, n, _ = run_rtseg(w.batches(1_500), segs, cfg.start_ms)
    members = eng.members(ONE_SEGMENT_NAME)
    assert 5 < len(members) < 400  # a workload that moves
    return w, members, eng.now_ms


def _batches(w):
    return lambda: w.batches(1_500)


def _hand_batches() -> list[Batch]:
    """Late events, a purchase that expires, a user who leaves by time alone."""
    def batch(rows):
        n = len(rows)
        obj = lambda xs: np.array(xs, dtype=object)  # noqa: E731
        return Batch(np.zeros(n, dtype=np.int64), obj([r[0] for r in rows]), obj([r[1] for r in rows]),
                     np.array([r[2] for r in rows], dtype=np.int64), np.zeros(n),
                     {"product_id": obj([None] * n)})

    v, p = "view_product", "purchase"
    return [
        batch([("a", v, T0), ("a", v, T0 + 1), ("b", v, T0 + 2 * HOUR + 2), ("b", p, T0 + 3),
               ("c", "search", T0 + 4)]),
        batch([("a", v, T0 + HOUR), ("b", v, T0 + 2 * HOUR), ("b", v, T0 + 2 * HOUR + 1), ("d", v, T0 + 2 * HOUR)]),
        batch([("d", v, T0 + HOUR), ("d", v, T0 + 3 * HOUR), ("c", "app_open", T0 + 47 * HOUR)]),  # late view
        batch([("e", v, T0 + 48 * HOUR + 3)]),  # b's purchase leaves the window: b enters by time
        batch([("e", v, T0 + 49 * HOUR), ("e", v, T0 + 49 * HOUR + 5), ("x", "search", T0 + 49 * HOUR + 10)]),
    ]  # a's and d's oldest views have left by the end: both exit by time; b stays


def _engine_members(batches) -> tuple[set, int]:
    eng, _, _ = run_rtseg(batches, {ONE_SEGMENT_NAME: ONE_SEGMENT}, T0)
    return eng.members(ONE_SEGMENT_NAME), eng.now_ms


def test_hand_case_engine_expectation():
    members, now = _engine_members(_hand_batches())
    assert now == T0 + 49 * HOUR + 10
    assert members == {"b", "e"}


def test_one_segment_constant_matches_workload():
    assert ONE.text() == ONE_SEGMENT


def test_pure_python_baseline(tiny):
    from bench.baseline_python import BaselineEngine

    w, members, now = tiny
    base = BaselineEngine(retention_ms=30 * DAY)
    base.advance_clock(w.config.start_ms)
    base.create_segment(ONE_SEGMENT_NAME, ONE_SEGMENT)
    for b in w.batches(1_500):
        base.ingest_columns(**b.columns())
    assert base.now_ms == now
    assert mismatch(members, base.members(ONE_SEGMENT_NAME)) is None


def test_duckdb_every_sql_segment_matches_engine(tiny):
    from bench.baselines import duckdb_poll

    w, _, _ = tiny
    segs = {n: (ONE_SEGMENT if n == ONE_SEGMENT_NAME else SEGMENTS[n]) for n in duckdb_poll.DUCKDB_SEGMENTS}
    eng, _, _ = run_rtseg(w.batches(1_500), segs, w.config.start_ms)
    run, members = duckdb_poll.run(w.batches(1_500), w.config.start_ms, repeats=1)
    assert run.status == "ok" and run.now_ms == eng.now_ms
    for name in segs:
        assert mismatch(eng.members(name), members[name]) is None, name
    assert sum(1 for n in segs if members[n]) >= 6  # most segments have members
    assert run.extra["refresh_ms_all"] > 0


def test_duckdb_hand_case():
    from bench.baselines import duckdb_poll

    expected, now = _engine_members(_hand_batches())
    run, _ = duckdb_poll.run(_hand_batches(), T0, segments=[ONE_SEGMENT_NAME], repeats=1)
    assert run.now_ms == now and run.members == expected


def _redis_or_skip():
    from bench.baselines import redis_zset

    ok, why = redis_zset.redis_available()
    if not ok:
        pytest.skip(f"Redis baseline not runnable here: {why}")
    return redis_zset


@pytest.mark.parametrize("variant", ["pipelined", "lua"])
def test_redis_baselines(tiny, variant):
    redis_zset = _redis_or_skip()
    w, members, now = tiny
    expected_hand, now_hand = _engine_members(_hand_batches())
    with redis_zset.RedisServer() as server:
        fn = redis_zset.run_pipelined if variant == "pipelined" else redis_zset.run_lua
        run = fn(server, w.batches(1_500), start_ms=w.config.start_ms)
        assert run.events == w.config.events and run.now_ms == now
        assert mismatch(members, run.members) is None
        hand = fn(server, _hand_batches(), start_ms=T0)
        assert hand.members == expected_hand and hand.now_ms == now_hand
        proc = server.proc
    assert proc.poll() is not None  # the server is stopped on exit


def test_redis_missing_is_reported_not_silent(monkeypatch):
    from bench.baselines import redis_zset

    monkeypatch.setattr(redis_zset, "redis_available", lambda: (False, "no redis-server here"))
    runs = redis_zset.run_both(lambda: [], start_ms=T0)
    assert [(r.name, r.status, r.reason) for r in runs] == [
        ("redis_pipelined", "skipped", "no redis-server here"), ("redis_lua", "skipped", "no redis-server here")]
    assert runs[0].to_json()["reason"] == "no redis-server here"


def test_bytewax_baseline(tiny):
    from bench.baselines import bytewax_flow

    ok, why = bytewax_flow.bytewax_available()
    if not ok:
        pytest.skip(why)
    w, members, now = tiny
    run = bytewax_flow.run(w.batches(1_500), start_ms=w.config.start_ms)
    assert run.status == "ok" and run.now_ms == now and run.events == w.config.events
    assert mismatch(members, run.members) is None
    expected_hand, now_hand = _engine_members(_hand_batches())
    hand = bytewax_flow.run(_hand_batches(), start_ms=T0)
    assert hand.members == expected_hand and hand.now_ms == now_hand
