"""Timer levels (``timer`` / ``tnext`` / ``tmask``, kernels._eval._run): every bound they keep
is a lower bound of the segment's own next time-driven change, so no flip is ever late, and a
fired timer evaluates only the segments of the levels that are due."""

from __future__ import annotations

import numpy as np
import pytest

from engine import Engine
from engine.kernels import _eval as KE
from engine.kernels._layout import SEG_SLOT, SEG_TIMEDEP

BASE = 1_700_000_000_000
MIN = 60_000
H = 60 * MIN

# windows of several lengths over three types, since/until, a dependency and a ratio
SEGMENTS = {
    "views3": "count(view, 2h) >= 3",
    "no_buy": "count(view, 1h) >= 1 and count(buy, 6h) == 0",
    "spend": "sum(buy.value, 3h) > 10",
    "recent": "since(open) between 10m and 90m",
    "ratio": "count(buy, 4h) / count(view, 4h) >= 0.5",
    "days": "active_days(open, 2d) >= 2",
    "dep": 'segment("views3") and since(buy) > 30m',
    "trial": "until(trait.trial_end) between 0 and 2h",
    "plain": 'trait.plan == "pro"',
}


def _exact_next(core, now, up_to_date=True):
    """Per timed segment (plan index), each known row's exact next change, read from a forced
    evaluation of that segment alone with every other bound out of the way; the state is
    put back after each. ``up_to_date``: also check that no membership was due to flip."""
    rows = core._known_rows()
    saved = {k: getattr(core, k).copy() for k in ("member", "timer", "tnext", "tmask", "tblock")}
    out = {}
    p = core.plan
    for s in range(len(p.names)):
        if not p.seg_tab[s, SEG_TIMEDEP]:
            continue
        core.tmask[:] = 0
        core.tnext[:] = KE.INF_MS
        core.timer[:] = KE.INF_MS
        m = len(rows)
        z = np.zeros(m, np.uint64)
        f = np.zeros(m, np.bool_)
        fi, _, _ = KE.run_segments(p, core, rows, z, z, f, f, np.array([s], np.int64), np.ones(1, np.bool_),
                                   now, 10)
        assert len(fi) == 0 or not up_to_date, f"{p.names[s]}: membership was not up to date at {now}"
        out[s] = core.timer[rows].copy()
        for k, v in saved.items():
            getattr(core, k)[...] = v
    return rows, out


def _bounds(core, rows, bit):
    """Each row's bound for a segment with this bit: the time of the first level whose mask
    holds the bit, else of the last level."""
    times = np.column_stack([core.timer[rows], core.tnext[rows]])
    masks = core.tmask[rows]
    level = np.full(len(rows), masks.shape[1])
    for k in range(masks.shape[1] - 1, -1, -1):
        level = np.where((masks[:, k] & bit) != 0, k, level)
    return times[np.arange(len(rows)), level]


def _check_bounds(eng):
    core = eng._core
    rows, exact = _exact_next(core, eng.now_ms)
    times = np.column_stack([core.timer[rows], core.tnext[rows]])
    assert np.all(np.diff(times, axis=1) >= 0)         # levels in time order
    p = core.plan
    for s, nxt in exact.items():
        bit = np.uint64(1) << np.uint64(p.seg_tab[s, SEG_SLOT] & 63)
        bound = _bounds(core, rows, bit)
        late = np.flatnonzero(bound > nxt)
        assert not len(late), (p.names[s], rows[late[:5]], bound[late[:5]], nxt[late[:5]])
    blocks = rows >> 10
    assert np.all(core.tblock[blocks] <= core.timer[rows])
    return int(np.sum(core.tmask[rows, 0] != np.uint64(0xFFFF_FFFF_FFFF_FFFF)))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_bound_is_a_lower_bound_of_the_segments_next_change(seed):
    rng = np.random.default_rng(seed)
    eng = Engine(clock="event", retention="2d")
    eng.advance_clock(BASE)
    for k, v in SEGMENTS.items():
        eng.create_segment(k, v)
    t = BASE
    narrowed = 0
    for step in range(40):
        n = int(rng.integers(1, 60))
        users = [f"u{i}" for i in rng.integers(0, 40, n)]
        types = rng.choice(["view", "buy", "open"], n).tolist()
        ts = t + np.sort(rng.integers(0, 40 * MIN, n))
        vals = rng.random(n) * 12
        eng.ingest_columns(user_id=users, type=types, timestamp_ms=ts, value=vals)
        if step % 7 == 3:
            for i in rng.integers(0, 40, 5):
                eng.set_traits(f"u{i}", {"trial_end": int(t + rng.integers(0, 5 * H)),
                                         "plan": "pro" if i % 2 else "free"})
        if step == 20:                     # the segments change under the bounds
            eng.delete_segment("spend")
            eng.create_segment("spend", "sum(buy.value, 2h) > 8")
            eng.replace_segment("views3", "count(view, 90m) >= 2")
        narrowed += _check_bounds(eng)
        t = int(ts.max()) + int(rng.integers(0, 3 * H))
        eng.advance_clock(t)               # timers fire by time alone
        narrowed += _check_bounds(eng)
    assert narrowed > 0                    # timers named fewer than all segments


def test_a_fired_timer_evaluates_only_the_segments_of_its_due_levels():
    eng = Engine(clock="event", retention="2d")
    eng.advance_clock(BASE)
    eng.create_segment("short", "count(view, 1h) >= 1")
    eng.create_segment("mid", "count(open, 5h) >= 1")
    eng.create_segment("long", "count(buy, 10h) >= 1")
    eng.ingest_columns(user_id=["u"] * 3, type=["view", "open", "buy"], timestamp_ms=[BASE] * 3)
    core = eng._core
    r = int(core._known_rows()[0])
    bit = {n: np.uint64(1) << np.uint64(core.slots[n] & 63) for n in ("short", "mid", "long")}
    levels = KE.TIMER_LEVELS
    assert levels >= 2
    assert core.timer[r] == BASE + H                # the view leaves the 1h window
    assert core.tmask[r, 0] == bit["short"]          # only "short" may change then
    if levels >= 3:
        assert core.tnext[r, 0] == BASE + 5 * H and core.tmask[r, 1] == bit["mid"]
    assert core.tnext[r, -1] == BASE + 10 * H if levels == 3 else True
    eng.advance_clock(BASE + 2 * H)                 # "short" leaves; the others wait
    assert eng.members("short") == set() and eng.members("mid") == eng.members("long") == {"u"}
    assert core.timer[r] == BASE + 5 * H
    if levels >= 3:
        assert core.tmask[r, 0] == bit["mid"] and core.tnext[r, 0] == BASE + 10 * H
    eng.advance_clock(BASE + 6 * H)
    assert eng.members("mid") == set() and eng.members("long") == {"u"}
    assert core.timer[r] == BASE + 10 * H


def test_affinity_equal_to_a_string_carries_its_comparison_and_not_equal_does_not():
    """``affinity(...) == "x"`` hands its leaf the comparison (its timer then waits until "x"
    may become the top); ``!=`` does not, since a top that changes between a string and a
    number flips it; and a user without "x" in the window gets no timer from the window."""
    from engine.kernels._layout import LEAF_CMP_OP

    e = Engine(clock="event")
    e.create_segment("eq", 'affinity(v.cat, 1d) == "x"')
    e.create_segment("ne", 'affinity(v.cat, 1d) != "x"')
    leaves = np.asarray(e._core.plan.leaves)
    assert leaves[:, LEAF_CMP_OP].tolist() == [KE.OP_EQ, 0]
    e.delete_segment("ne")
    e.ingest([{"user_id": "u", "type": "v", "timestamp_ms": BASE + k * MIN, "properties": {"cat": c}}
              for k, c in enumerate(["a", "b", "a"])])
    assert int(e._core.timer[e._core._row_of("u")]) == BASE + 2 * MIN + 86_400_000   # the last value leaves
