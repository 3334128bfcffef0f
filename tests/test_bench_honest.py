"""The honest baselines of issue 11 (bench/baselines/straight.py, straight20.py) and bench.honest.

Each baseline must reach rtseg's membership on the same batches, at every batch end (they
evaluate where rtseg does: at the end of each batch, at the event clock's ``now``), with the
same number of ENTER/EXIT deltas, and the reference evaluator's where that is cheap. Then a
``python -m bench.honest --quick`` run emits valid JSON whose checks all pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bench.baselines.straight import NumbaKernel, StraightPython
from bench.baselines.straight20 import NAMES, Straight20
from bench.core_bench import _trait_updates, prepare
from bench.honest import THREE_TYPES, build_batches, phases, three_type_batch
from bench.workload import (
    ONE_SEGMENT,
    ONE_SEGMENT_NAME,
    SEGMENTS,
    Workload,
    WorkloadConfig,
)
from tests.test_bench_baselines import _hand_batches

HOUR = 3_600_000
DAY = 86_400_000
T0 = 1_700_006_400_000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _engine(start_ms: int, retention: str = "30d"):
    from engine import Engine

    eng = Engine(clock="event", retention=retention)
    eng.advance_clock(start_ms)
    return eng


@pytest.fixture(scope="module")
def one_stream():
    """Four hundred users over five days, three event types: windows fill and empty."""
    w = Workload(WorkloadConfig(users=400, events=12_000, days=5.0, seed=11))
    return w, build_batches(w, 1_500, three_types=True)


def test_three_type_stream_shape(one_stream):
    _, batches = one_stream
    types = set(np.concatenate([b.type for b in batches]).tolist())
    assert types == set(THREE_TYPES)
    assert all(list(b.properties) == ["product_id"] for b in batches)
    b = batches[0]
    again = three_type_batch(b)  # idempotent: already three types
    assert (again.type == b.type).all()


@pytest.mark.parametrize("make", [StraightPython, lambda start_ms: NumbaKernel(start_ms=start_ms, capacity=16)],
                         ids=["straight_python", "numba_kernel"])
def test_one_segment_baseline_matches_rtseg_at_every_batch_end(one_stream, make):
    w, batches = one_stream
    eng = _engine(w.config.start_ms)
    eng.create_segment(ONE_SEGMENT_NAME, ONE_SEGMENT)
    base = make(start_ms=w.config.start_ms)
    sizes = []
    for b in batches:
        cols = b.columns()
        seq = eng.last_sequence
        eng.ingest_columns(**cols)
        n = base.ingest_columns(**cols)
        assert base.now_ms == eng.now_ms
        assert base.members() == eng.members(ONE_SEGMENT_NAME)
        sizes.append(len(base.members()))
        # The batch's deltas, one for one (users and kinds).
        want = sorted((d.user_id, d.kind == "ENTER") for d in eng.deltas(seq))
        got = base.last_deltas() if isinstance(base, NumbaKernel) else [(u, e) for u, e, _ in base.out]
        assert sorted(got) == want and n == len(want)
    assert max(sizes) > 20 and base.deltas > 2 * max(sizes)  # users entered and left
    assert base.deltas == eng.last_sequence
    assert base.exits > 0 and base.enters - base.exits == len(base.members())
    # Time alone: far past the last event every member leaves, with one EXIT each.
    later = eng.now_ms + 3 * DAY
    eng.advance_clock(later)
    n = base.advance_clock(later)
    assert base.members() == eng.members(ONE_SEGMENT_NAME) == set()
    assert n == sizes[-1] and base.deltas == eng.last_sequence


@pytest.mark.parametrize("cls", [StraightPython, NumbaKernel])
def test_one_segment_hand_cases(cls):
    """Late events, a purchase that leaves the window (entry by time), exits by time."""
    eng = _engine(T0)
    eng.create_segment(ONE_SEGMENT_NAME, ONE_SEGMENT)
    base = cls(start_ms=T0)
    for b in _hand_batches():
        eng.ingest_columns(**b.columns())
        base.ingest_columns(**b.columns())
        assert base.members() == eng.members(ONE_SEGMENT_NAME)
    assert base.members() == {"b", "e"}
    assert base.deltas == eng.last_sequence


def test_one_segment_baselines_match_reference(one_stream):
    from tests.reference import ReferenceEngine

    w, batches = one_stream
    ref = ReferenceEngine(clock="event", retention="30d")
    ref.advance_clock(w.config.start_ms)
    ref.create_segment(ONE_SEGMENT_NAME, ONE_SEGMENT)
    sp, nk = StraightPython(start_ms=w.config.start_ms), NumbaKernel(start_ms=w.config.start_ms)
    for b in batches[:4]:
        cols = b.columns()
        ref.ingest_columns(**cols)
        sp.ingest_columns(**cols)
        nk.ingest_columns(**cols)
        expected = ref.members(ONE_SEGMENT_NAME)
        assert sp.members() == expected and nk.members() == expected


def _twenty(w: Workload):
    eng = _engine(w.config.start_ms)
    prepare(eng, w, np.arange(w.config.users), SEGMENTS)
    st = Straight20(w.config.start_ms)
    st.set_traits_many(_trait_updates(w, np.arange(w.config.users)))
    return eng, st


def test_straight20_matches_rtseg_at_every_batch_end():
    """Sixty days, so events leave the 30d retention and every window empties and refills."""
    w = Workload(WorkloadConfig(users=600, events=40_000, days=60.0, seed=5))
    eng, st = _twenty(w)
    assert st.deltas == eng.last_sequence  # the backfill at creation
    seen = dict.fromkeys(NAMES, 0)
    for b in w.batches(2_000):
        seq = eng.last_sequence
        eng.ingest_columns(**b.columns())
        st.ingest_columns(**b.columns())
        assert sorted((s, u, e) for s, u, e, _ in st.out) == \
            sorted((d.segment, d.user_id, d.kind == "ENTER") for d in eng.deltas(seq))
        for n in NAMES:
            m = st.members(n)
            assert m == eng.members(n), n
            seen[n] = max(seen[n], len(m))
    assert st.deltas == eng.last_sequence
    assert sum(1 for v in seen.values() if v > 0) >= 18  # nearly every segment has members at some point
    later = eng.now_ms + 31 * DAY
    eng.advance_clock(later)
    st.advance_clock(later)
    for n in NAMES:
        assert st.members(n) == eng.members(n), n
    assert st.deltas == eng.last_sequence


def test_straight20_matches_reference():
    from tests.reference import ReferenceEngine

    w = Workload(WorkloadConfig(users=60, events=3_000, days=40.0, seed=3))
    ref = ReferenceEngine(clock="event", retention="30d")
    ref.advance_clock(w.config.start_ms)
    for uid, traits, ts in _trait_updates(w, np.arange(60)):
        ref.set_traits(uid, traits, ts)
    for name, text in SEGMENTS.items():
        ref.create_segment(name, text)
    st = Straight20(w.config.start_ms)
    st.set_traits_many(_trait_updates(w, np.arange(60)))
    for b in w.batches(600):
        ref.ingest_columns(**b.columns())
        st.ingest_columns(**b.columns())
        for n in NAMES:
            assert st.members(n) == ref.members(n), n


def test_phases_split_burst_from_steady():
    w = Workload(WorkloadConfig(users=100, events=10_000, days=7.0, seed=2))
    batches = build_batches(w, 500, three_types=True)
    ph = phases(batches, w.config.start_ms, 48 * HOUR)
    assert any(ph.burst) and any(ph.steady)
    assert not any(a and b for a, b in zip(ph.burst, ph.steady))
    k = ph.steady.index(True)
    assert k >= len(batches) // 2 and batches[k].timestamp_ms.min() >= w.config.start_ms + 48 * HOUR
    assert all(b.timestamp_ms.max() < w.config.start_ms + 48 * HOUR for b, f in zip(batches, ph.burst) if f)


def test_honest_quick_run_emits_valid_json(tmp_path):
    out = tmp_path / "honest.json"
    proc = subprocess.run([sys.executable, "-m", "bench.honest", "--quick", "--repeats20", "2", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == res
    assert res["equal"] is True
    one, twenty = res["one_segment"], res["twenty_segments"]
    assert set(one["systems"]) == {"rtseg", "rtseg_retention_2d", "straight_python", "numba_kernel"}
    for name, c in one["checks"].items():
        assert c["batch_end_membership_equal"] and c["final_membership_equal"] and c["deltas_equal"], name
    assert twenty["checks"]["final_membership_equal"] and twenty["checks"]["deltas_equal"]
    assert twenty["systems"]["rtseg"]["repeats"] == 2 and "run 2 of 2" in proc.stderr
    for part in ("all", "burst", "steady"):
        for sysname, fig in [*one["systems"].items(), *twenty["systems"].items()]:
            assert fig[part]["events_per_s"] > 0, (sysname, part)
        assert res["summary"][part]["one_rtseg_pct_of_numba_kernel"] > 0
        assert res["summary"][part]["twenty_rtseg_over_straight20_python"] > 0
    assert one["systems"]["numba_kernel"]["kernel_only"]["all"]["events_per_s"] > 0
    assert "warm-up" in proc.stderr
    from bench.honest import main, table

    text = table(res)
    assert text.count("\n") == 11 and "20 segments: rtseg / straightforward Python" in text
    assert main(["--table", str(out)]) == 0
