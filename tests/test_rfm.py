"""RFM scores and tiers against a brute-force computation over the same population.

The brute force works from the raw events (pure Python): each user's count, last time and
spend in the window, the population's boundaries by *rank* (a user scores above boundary k
when more than floor(k n / 5) users' values are at most its own: the same rule as
engine/_rfm.py, written the other way round), and the RFM map of EXPRESSIONS.md written out
cell by cell. The engine's answers are its segments' members."""

from __future__ import annotations

import random

import numpy as np
import pytest

from engine import Engine
from engine import _rfm as R

DAY = 86_400_000
WINDOW = 90 * DAY
TIER_TABLE = {  # EXPRESSIONS.md, as written there
    "champions": ({5}, {4, 5}), "loyal": ({3, 4}, {4, 5}), "potential_loyalist": ({4, 5}, {2, 3}),
    "new_customer": ({5}, {1}), "promising": ({4}, {1}), "need_attention": ({3}, {3}),
    "about_to_sleep": ({3}, {1, 2}), "at_risk": ({1, 2}, {3, 4}), "cannot_lose": ({1, 2}, {5}),
    "hibernating": ({2}, {1, 2}), "lost": ({1}, {1, 2}),
}


def population(seed: int, users: int = 300, days: int = 120):
    """Events with many ties: integer spends from a small set, whole-day timestamps for some."""
    rng = random.Random(seed)
    events = []
    for u in range(users):
        n = rng.choice([0, 1, 1, 2, 3, 3, 5, 8, 13])
        for _ in range(n):
            t = rng.randrange(0, days * DAY) if rng.random() < 0.7 else rng.randrange(0, days) * DAY
            typ = "purchase" if rng.random() < 0.85 else "view"
            ev = {"user_id": f"u{u:04d}", "type": typ, "timestamp_ms": t}
            if typ == "purchase" and rng.random() < 0.9:
                ev["value"] = float(rng.choice([5, 10, 10, 20, 35, 50, 80]))
            events.append(ev)
    events.sort(key=lambda e: e["timestamp_ms"])
    return events


def metrics(events, now: int, window: int, min_value: float | None = None):
    """user -> (count, since, spend) over the users with a matching purchase in the window."""
    out: dict[str, list] = {}
    for ev in events:
        if ev["type"] != "purchase" or not (now - window < ev["timestamp_ms"] <= now):
            continue
        if min_value is not None and not ev.get("value", -1) > min_value:
            continue
        m = out.setdefault(ev["user_id"], [0, None, 0.0])
        m[0] += 1
        m[1] = now - ev["timestamp_ms"] if m[1] is None else min(m[1], now - ev["timestamp_ms"])
        m[2] += ev.get("value", 0.0)
    return {u: tuple(m) for u, m in out.items()}


def rank_bounds(values):
    """Per k = 1..4 the number of users a value must beat (at most-or-equal) to pass boundary k."""
    n = len(values)
    return n, [k * n // 5 for k in range(1, 5)]


def rank_score(v, values, higher_is_better=True):
    n, need = rank_bounds(values)
    at_most = sum(1 for w in values if (w <= v if higher_is_better else w >= v))
    return 1 + sum(1 for k in need if at_most > k)


def brute_scores(pop: dict):
    """user -> (r, f, m, tier) by ranks over ``pop`` (from ``metrics``)."""
    counts = [m[0] for m in pop.values()]
    sinces = [m[1] for m in pop.values()]
    spends = [m[2] for m in pop.values()]
    out = {}
    for u, (c, s, v) in pop.items():
        r = rank_score(s, sinces, higher_is_better=False)
        f = rank_score(c, counts)
        m = rank_score(v, spends)
        tier = [name for name, (rs, fs) in TIER_TABLE.items() if r in rs and f in fs]
        assert len(tier) == 1, (r, f, tier)
        out[u] = (r, f, m, tier[0])
    return out


def scores_with(pop: dict, bounds: list[float]):
    """user -> (r, f, m, tier) of ``pop`` against given boundaries (stale ones, as time passes)."""
    out = {}
    for u, (c, s, v) in pop.items():
        r = R.score(s, bounds[0:4], higher_is_better=False)
        f = R.score(c, bounds[4:8])
        m = R.score(v, bounds[8:12])
        out[u] = (r, f, m, R.tier_of(r, f))
    return out


def flat_bounds(boundaries) -> list[float]:
    """The 12 boundaries (recency, frequency, monetary) of the one source in ``boundaries``
    (``Engine.rfm_boundaries()`` or a ``recompute_rfm()`` reply's), or of ``b`` itself."""
    b = boundaries if isinstance(boundaries, dict) else boundaries[0]
    if not isinstance(boundaries, dict):
        assert len(boundaries) == 1, boundaries
    return b["recency"] + b["frequency"] + b["monetary"]


def make_segments(eng, source="purchase", window="90d"):
    names = {}
    for func in ("rfm_r", "rfm_f", "rfm_m"):
        for k in range(1, 6):
            names[(func, k)] = f"{func}_{k}"
            eng.create_segment(f"{func}_{k}", f"{func}({source}, {window}) == {k}")
    for tier in TIER_TABLE:
        names[("tier", tier)] = f"tier_{tier}"
        eng.create_segment(f"tier_{tier}", f'rfm_tier({source}, {window}) == "{tier}"')
    eng.create_segment("unscored", f"not (rfm_r({source}, {window}) >= 1)")
    return names


def engine_scores(eng, names):
    """user -> (r, f, m, tier) from the segments' members."""
    got: dict[str, list] = {}
    for (func, k), seg in names.items():
        for u in eng.members(seg):
            got.setdefault(u, [None, None, None, None])
            got[u][{"rfm_r": 0, "rfm_f": 1, "rfm_m": 2, "tier": 3}[func]] = k
    return {u: tuple(v) for u, v in got.items()}


# ----------------------------------------------------------------------------- the rule


@pytest.mark.parametrize("seed", range(20))
def test_bounds_rule_matches_the_rank_formulation(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    v = rng.integers(0, int(rng.integers(1, 8)), n).astype(float)    # heavy ties
    b = R.quintile_bounds(v)
    for x in v:
        assert R.score(x, b) == rank_score(x, list(v))


def test_bounds_split_distinct_values_into_fifths():
    b = R.quintile_bounds(np.arange(100, dtype=float))
    counts = np.bincount([R.score(x, b) for x in range(100)], minlength=6)[1:]
    assert list(counts) == [20, 20, 20, 20, 20]
    assert R.compute_bounds(np.zeros((0, 3))) == ([], 0)


def test_every_rf_cell_has_exactly_the_tier_of_the_spec():
    for r in range(1, 6):
        for f in range(1, 6):
            [name] = [t for t, (rs, fs) in TIER_TABLE.items() if r in rs and f in fs]
            assert R.tier_of(r, f) == name


# ----------------------------------------------------------------------------- in process


def test_scores_and_tiers_match_the_brute_force_in_process():
    events = population(1)
    eng = Engine(retention="365d", rfm_interval=0)
    eng.ingest(events)
    names = make_segments(eng)
    now = eng.now_ms
    pop = metrics(events, now, WINDOW)
    assert engine_scores(eng, names) == brute_scores(pop)
    # users without a purchase in the window score null
    assert eng.members("unscored") == {e["user_id"] for e in events} - set(pop)
    [b] = eng.rfm_boundaries()
    assert b["population"] == len(pop) and b["source"] == "purchase" and b["window_ms"] == WINDOW


def test_users_move_with_time_against_the_last_boundaries_then_with_a_recomputation():
    events = population(2)
    eng = Engine(retention="365d", rfm_interval=0)
    eng.ingest(events)
    names = make_segments(eng)
    bounds = flat_bounds(eng.rfm_boundaries())
    for step_days in (1, 3, 10, 30):
        eng.advance_clock(eng.now_ms + step_days * DAY)
        pop = metrics(events, eng.now_ms, WINDOW)
        assert engine_scores(eng, names) == scores_with(pop, bounds), step_days
    before = engine_scores(eng, names)
    res = eng.recompute_rfm()
    pop = metrics(events, eng.now_ms, WINDOW)
    after = engine_scores(eng, names)
    assert after == brute_scores(pop)
    moved = sum(1 for u in set(before) | set(after) if before.get(u) != after.get(u))
    assert moved > 0 and res["deltas"] > 0
    # and from then on with time against the new boundaries: timers set under the old ones
    # must not make anybody late
    bounds = flat_bounds(eng.rfm_boundaries())
    for step in (DAY // 3, DAY, 2 * DAY, 5 * DAY, 11 * DAY):
        eng.advance_clock(eng.now_ms + step)
        pop = metrics(events, eng.now_ms, WINDOW)
        assert engine_scores(eng, names) == scores_with(pop, bounds), step
        if step == 2 * DAY:                       # a recomputation between the moves, too
            eng.recompute_rfm()
            bounds = flat_bounds(eng.rfm_boundaries())
            assert engine_scores(eng, names) == brute_scores(metrics(events, eng.now_ms, WINDOW))


def test_a_preview_on_an_engine_without_users():
    eng = Engine(retention="365d")
    assert eng.preview_segment("rfm_f(purchase) >= 1") == (0, [])
    assert eng.preview_segment("count(purchase, 1d) >= 1") == (0, [])


def test_a_purchase_moves_its_user_at_once():
    events = population(3)
    eng = Engine(retention="365d", rfm_interval=0)
    eng.ingest(events)
    names = make_segments(eng)
    bounds = flat_bounds(eng.rfm_boundaries())
    now = eng.now_ms
    lapsed = sorted(u for u in eng.members("tier_lost"))[0]
    burst = [{"user_id": lapsed, "type": "purchase", "timestamp_ms": now, "value": 500.0}] * 20
    eng.ingest(burst)
    pop = metrics(events + burst, eng.now_ms, WINDOW)
    got = engine_scores(eng, names)
    assert got == scores_with(pop, bounds)
    assert got[lapsed][0] == 5 and got[lapsed][1] == 5 and got[lapsed][3] == "champions"


def test_a_filtered_source_and_window_have_their_own_boundaries():
    events = population(4)
    eng = Engine(retention="365d", rfm_interval=0)
    eng.ingest(events)
    names = make_segments(eng, "purchase where value > 10", "30d")
    eng.create_segment("plain", "rfm_f(purchase, 90d) >= 1")
    pop = metrics(events, eng.now_ms, 30 * DAY, min_value=10)
    assert engine_scores(eng, names) == brute_scores(pop)
    assert {b["source"] for b in eng.rfm_boundaries()} == {"purchase", "purchase where value > 10"}


def test_the_schedule_recomputes_on_the_engine_clock():
    events = population(5)
    eng = Engine(retention="365d")            # the default schedule: every 60 s
    eng.ingest(events)
    eng.create_segment("champions", 'rfm_tier(purchase, 90d) == "champions"')
    [b0] = eng.rfm_boundaries()
    eng.advance_clock(eng.now_ms + 30_000)
    assert eng.rfm_boundaries()[0]["computed_ms"] == b0["computed_ms"]
    eng.advance_clock(eng.now_ms + 31_000)
    [b1] = eng.rfm_boundaries()
    assert b1["computed_ms"] == eng.now_ms > b0["computed_ms"]
    eng.advance_clock(eng.now_ms + 20 * DAY)
    pop = metrics(events, eng.now_ms, WINDOW)
    got = {u for u, s in brute_scores(pop).items() if s[3] == "champions"}
    assert eng.members("champions") == got


def test_boundaries_and_members_survive_a_restart(tmp_path):
    events = population(6)
    with Engine(retention="365d", rfm_interval=0, data_dir=str(tmp_path)) as eng:
        eng.ingest(events[: len(events) // 2])
        names = make_segments(eng)
        eng.snapshot()
        eng.ingest(events[len(events) // 2:])
        eng.recompute_rfm()
        eng.advance_clock(eng.now_ms + 2 * DAY)
        want, bounds = engine_scores(eng, names), eng.rfm_boundaries()
        seq = eng.last_sequence
    with Engine(retention="365d", rfm_interval=0, data_dir=str(tmp_path)) as again:
        assert engine_scores(again, names) == want
        assert again.rfm_boundaries() == bounds
        assert again.last_sequence == seq
        again.advance_clock(again.now_ms + 5 * DAY)
        pop = metrics(events, again.now_ms, WINDOW)
        b = bounds[0]
        assert engine_scores(again, names) == scores_with(pop, flat_bounds(b))


# ----------------------------------------------------------------------------- served, 3 shards


@pytest.mark.ray
def test_scores_are_global_across_three_shards(tmp_path_factory):
    from engine.client import Client
    from tests.test_server_support import start_server

    srv = start_server(tmp_path_factory, "--shards", "3", "--clock", "event", "--rfm-interval", "0",
                       "--retention", "365d")
    try:
        with Client(srv.target, timeout_s=120) as client:
            events = population(7, users=600)
            for i in range(0, len(events), 500):
                client.ingest(events[i:i + 500])
            names = make_segments(client)
            pop = metrics(events, client.now_ms, WINDOW)
            assert engine_scores(client, names) == brute_scores(pop)
            client.advance_clock(client.now_ms + 7 * DAY)
            res = client.recompute_rfm()
            pop = metrics(events, client.now_ms, WINDOW)
            assert engine_scores(client, names) == brute_scores(pop)
            [b] = res["boundaries"]
            assert b["population"] == len(pop) and len(b["recency"]) == 4
            # the boundaries are global: each shard alone would split its own users in fifths
            per_tier = {t: len(client.members(f"tier_{t}")) for t in TIER_TABLE}
            assert sum(per_tier.values()) == len(pop)
            # new shards score against the same boundaries, with the users they receive
            client.scale(2)
            assert engine_scores(client, names) == brute_scores(pop)
            client.scale(4)
            client.advance_clock(client.now_ms + DAY)
            pop_later = metrics(events, client.now_ms, WINDOW)
            assert engine_scores(client, names) == scores_with(
                pop_later, flat_bounds(b))
    finally:
        assert srv.stop() == 0, srv.stderr_tail()


@pytest.mark.ray
def test_a_served_engine_recomputes_on_its_schedule(tmp_path_factory):
    from engine.client import Client
    from tests.test_server_support import start_server, wait_until

    srv = start_server(tmp_path_factory, "--shards", "2", "--clock", "event", "--retention", "365d")
    try:
        with Client(srv.target, timeout_s=120) as client:
            events = population(8)
            client.ingest(events)
            client.create_segment("r5", "rfm_r(purchase, 90d) == 5")
            pop = metrics(events, client.now_ms, WINDOW)
            assert client.members("r5") == {u for u, s in brute_scores(pop).items() if s[0] == 5}
            # 20 days on: against the old boundaries nobody is recent enough for a 5, but the
            # clock move leaves a computation due, and the new boundaries give 5s again
            client.advance_clock(client.now_ms + 20 * DAY)
            pop = metrics(events, client.now_ms, WINDOW)
            want = {u for u, s in brute_scores(pop).items() if s[0] == 5}
            assert want
            wait_until(lambda: client.members("r5") == want, timeout_s=60)
    finally:
        assert srv.stop() == 0, srv.stderr_tail()


def test_boundaries_that_move_down_bring_the_timers_forward():
    """Many users buy at once: recency boundaries shrink. Users who keep their scores must
    still leave them on time under the new boundaries (their timers were set with the old)."""
    events = population(9, users=400)
    eng = Engine(retention="365d", rfm_interval=0)
    eng.ingest(events)
    names = make_segments(eng)
    now = eng.now_ms
    buyers = sorted({e["user_id"] for e in events})[::2]
    burst = [{"user_id": u, "type": "purchase", "timestamp_ms": now + 1000, "value": 10.0} for u in buyers]
    eng.ingest(burst)
    before = eng.rfm_boundaries()[0]["recency"]
    eng.recompute_rfm()
    [b] = eng.rfm_boundaries()
    assert b["recency"][3] < before[3]          # the boundaries moved down
    bounds = flat_bounds(b)
    everything = events + burst
    for _ in range(40):
        eng.advance_clock(eng.now_ms + DAY // 4)
        pop = metrics(everything, eng.now_ms, WINDOW)
        assert engine_scores(eng, names) == scores_with(pop, bounds)


# ----------------------------------------------------------------------------- differential


def _rfm_text(draw):
    from hypothesis import strategies as st

    func = draw(st.sampled_from(["rfm_r", "rfm_f", "rfm_m", "rfm_tier"]))
    source = draw(st.sampled_from(["buy", "buy where value > 20", "view"]))
    window = draw(st.sampled_from(["", ", 2d", ", 7d", ", 20d"]))
    call = f"{func}({source}{window})"
    if func == "rfm_tier":
        tiers = draw(st.lists(st.sampled_from(sorted(TIER_TABLE)), min_size=1, max_size=3, unique=True))
        return f"{call} in [{', '.join(repr(t).replace(chr(39), chr(34)) for t in tiers)}]"
    op = draw(st.sampled_from([">=", "==", "<=", "!="]))
    text = f"{call} {op} {draw(st.integers(1, 5))}"
    if draw(st.booleans()):
        text += draw(st.sampled_from([" and count(view, 1d) >= 1", " or trait.vip == true",
                                      " and not (rfm_f(buy, 7d) >= 3)"]))
    return text


@pytest.fixture(scope="module")
def rfm_scripts():
    from hypothesis import strategies as st

    @st.composite
    def scripts(draw):
        ops = []
        users = [f"u{i}" for i in range(draw(st.integers(3, 40)))]
        t = 1_700_000_000_000
        for _ in range(draw(st.integers(4, 14))):
            kind = draw(st.sampled_from(["ingest", "ingest", "advance", "create", "recompute", "traits"]))
            if kind == "ingest":
                evs = []
                for _ in range(draw(st.integers(1, 30))):
                    t += draw(st.sampled_from([0, 1, 1000, 30_000, 3_600_000, DAY]))
                    ev = {"user_id": draw(st.sampled_from(users)), "type": draw(st.sampled_from(["buy", "view"])),
                          "timestamp_ms": t}
                    if draw(st.booleans()):
                        ev["value"] = float(draw(st.sampled_from([5, 10, 25, 40, 100])))
                    evs.append(ev)
                ops.append(("ingest", evs))
            elif kind == "advance":
                t += draw(st.sampled_from([1, 59_999, 60_000, 3_600_000, DAY, 5 * DAY]))
                ops.append(("advance", t))
            elif kind == "create":
                ops.append(("create", _rfm_text(draw)))
            elif kind == "traits":
                ops.append(("traits", (draw(st.sampled_from(users)), draw(st.booleans()))))
            else:
                ops.append(("recompute", None))
        return ops
    return scripts()


def _run_against_reference(eng, ref, ops, bounds_of) -> None:
    """Apply a random rfm script to an engine and to the reference; after every operation
    the members of every segment (and, where ``bounds_of`` can tell, the boundaries) agree."""
    made = 0
    for kind, arg in ops:
        if kind == "ingest":
            eng.ingest(arg)
            ref.ingest(arg)
        elif kind == "advance":
            eng.advance_clock(arg)
            ref.advance_clock(arg)
        elif kind == "traits":
            eng.set_traits(arg[0], {"vip": arg[1]})
            ref.set_traits(arg[0], {"vip": arg[1]})
        elif kind == "create":
            made += 1
            eng.create_segment(f"s{made}", arg)
            ref.create_segment(f"s{made}", arg)
        else:
            got = eng.recompute_rfm()
            ref.recompute_rfm()
            if bounds_of is None:           # served: the boundaries come with the reply
                for b in got["boundaries"]:
                    key = f'{b["window_ms"]}:{b["source"]}'
                    assert flat_bounds(b) == ref.rfm_bounds()[key], key
        for k in range(1, made + 1):
            assert eng.members(f"s{k}") == ref.members(f"s{k}"), (kind, k)
        if bounds_of is not None:
            got = {f'{b["window_ms"]}:{b["source"]}': b for b in bounds_of(eng)}
            for key, bounds in ref.rfm_bounds().items():
                b = got[key]
                assert flat_bounds(b) == bounds, key


@pytest.mark.ray
def test_a_served_engine_and_the_reference_agree_on_random_rfm_scripts(rfm_scripts, tmp_path_factory):
    """Through gRPC with 2 shards (boundaries on demand and at first use only: the served
    schedule runs in the background, at moments a script cannot name)."""
    from hypothesis import HealthCheck, given, settings

    from engine.client import Client
    from tests.reference import ReferenceEngine
    from tests.test_server_support import start_server

    srv = start_server(tmp_path_factory, "--shards", "2", "--clock", "event", "--allow-reset",
                       "--rfm-interval", "0")
    try:
        with Client(srv.target, timeout_s=120) as client:
            @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
            @given(rfm_scripts)
            def run(ops):
                client.reset("event", "400d")
                _run_against_reference(client, ReferenceEngine(retention="400d", rfm_interval=0), ops, None)
            run()
    finally:
        assert srv.stop() == 0, srv.stderr_tail()


def test_engine_and_reference_agree_on_random_rfm_scripts(rfm_scripts):
    from hypothesis import HealthCheck, given, settings

    from tests.reference import ReferenceEngine

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(rfm_scripts)
    def run(ops):
        eng = Engine(retention="400d")         # the default schedule: both follow it
        ref = ReferenceEngine(retention="400d")
        _run_against_reference(eng, ref, ops, lambda e: e.rfm_boundaries())
    run()


def test_an_on_demand_recompute_without_sources_starts_the_next_interval():
    """RecomputeRfm before any segment reads a source still starts the next interval, as in the
    reference: the next scheduled computation then comes 60 s after it, not after the one
    before (found by the random scripts above)."""
    from tests.reference import ReferenceEngine

    t = 1_700_000_000_000

    def ev(ts, typ="buy"):
        return {"user_id": "u0", "type": typ, "timestamp_ms": ts}

    ops = ([("ingest", [ev(t)] * 3), ("advance", t + 1), ("recompute", None), ("advance", t + 60_000),
            ("create", "rfm_r(buy) >= 1"), ("ingest", [ev(t + 60_000)]), ("create", "rfm_r(view) >= 1"),
            ("ingest", [ev(t + 60_001, "view")])])
    eng = Engine(retention="400d")
    _run_against_reference(eng, ReferenceEngine(retention="400d"), ops, lambda e: e.rfm_boundaries())
    assert eng.members("s2") == {"u0"}
