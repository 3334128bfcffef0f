"""Two-level timers (``timer`` / ``timer2`` / ``tmask``, kernels._eval._run): every bound they
keep is a lower bound of the segment's own next time-driven change, so no flip is ever late,
and a fired timer evaluates only the segments it names."""

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


def _exact_next(core, now):
    """Per timed segment (plan index), each known row's exact next change, read from a forced
    evaluation of that segment alone with every other bound out of the way; the state is
    put back after each."""
    rows = core._known_rows()
    saved = {k: getattr(core, k).copy() for k in ("member", "timer", "timer2", "tmask", "tblock")}
    out = {}
    p = core.plan
    for s in range(len(p.names)):
        if not p.seg_tab[s, SEG_TIMEDEP]:
            continue
        core.tmask[:] = 0
        core.timer2[:] = KE.INF_MS
        m = len(rows)
        z = np.zeros(m, np.uint64)
        f = np.zeros(m, np.bool_)
        fi, _, _ = KE.run_segments(p, core, rows, z, z, f, f, np.array([s], np.int64), np.ones(1, np.bool_),
                                   now, 10)
        assert len(fi) == 0, f"{p.names[s]}: membership was not up to date at {now}"
        out[s] = core.timer[rows].copy()
        for k, v in saved.items():
            getattr(core, k)[...] = v
    return rows, out


def _check_bounds(eng):
    core = eng._core
    rows, exact = _exact_next(core, eng.now_ms)
    t1, t2, mask = core.timer[rows], core.timer2[rows], core.tmask[rows]
    assert np.all(t1 <= t2)
    p = core.plan
    for s, nxt in exact.items():
        bit = np.uint64(1) << np.uint64(p.seg_tab[s, SEG_SLOT] & 63)
        bound = np.where((mask & bit) != 0, t1, t2)
        late = np.flatnonzero(bound > nxt)
        assert not len(late), (p.names[s], rows[late[:5]], bound[late[:5]], nxt[late[:5]])
    blocks = rows >> 10
    assert np.all(core.tblock[blocks] <= t1)
    return int(np.sum(mask != np.uint64(0xFFFF_FFFF_FFFF_FFFF)))


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


def test_a_fired_timer_evaluates_only_the_segments_it_names():
    eng = Engine(clock="event", retention="2d")
    eng.advance_clock(BASE)
    eng.create_segment("short", "count(view, 1h) >= 1")
    eng.create_segment("long", "count(buy, 10h) >= 1")
    eng.ingest_columns(user_id=["u", "u"], type=["view", "buy"], timestamp_ms=[BASE, BASE])
    core = eng._core
    r = int(core._known_rows()[0])
    short_bit = np.uint64(1) << np.uint64(core.slots["short"] & 63)
    assert core.timer[r] == BASE + H                # the view leaves the 1h window
    assert core.tmask[r] == short_bit               # only "short" may change then
    assert core.timer2[r] == BASE + 10 * H           # "long" waits for the second bound
    eng.advance_clock(BASE + 2 * H)
    assert eng.members("short") == set() and eng.members("long") == {"u"}
    long_bit = np.uint64(1) << np.uint64(core.slots["long"] & 63)
    assert core.tmask[r] == long_bit and core.timer2[r] == KE.INF_MS
