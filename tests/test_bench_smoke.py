"""The guard that the core benchmark keeps working (bench/), and checks of its parts.

* the workload is deterministic, independent of the batch size, and its segments cover every
  function family;
* the pure-Python baseline agrees with the reference evaluator (tests/reference.py) after every
  operation, on hand-made timer cases and on random expressions and streams: its heap of
  next-check times never fires late;
* a tiny run of ``bench.core_bench.run`` (workload + engine + baseline, the benchmark's own
  code path) finds equal membership for all 21 segments and returns every JSON key.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.baseline_python import BaselineEngine
from bench.workload import (
    BLOCK,
    ONE_SEGMENT,
    SEGMENTS,
    Workload,
    WorkloadConfig,
)
from engine.expr import ast as A
from engine.expr import compile_expression, walk
from tests.reference import ReferenceEngine
from tests.strategies import COUNTRIES, EVENT_TYPES, LATS, LONS, PLANS, PRICES, SKUS, expressions

DAY = 86_400_000
HOUR = 3_600_000
MIN = 60_000
T0 = 1_700_006_400_000


# ----------------------------------------------------------------------------- workload


def _same(a, b) -> None:
    assert a.user_id.tolist() == b.user_id.tolist()
    assert a.type.tolist() == b.type.tolist()
    assert np.array_equal(a.timestamp_ms, b.timestamp_ms)
    assert np.array_equal(a.value, b.value)
    assert a.properties.keys() == b.properties.keys()
    for k in a.properties:
        assert a.properties[k].tolist() == b.properties[k].tolist()


def test_workload_is_seeded_and_independent_of_batch_size():
    cfg = WorkloadConfig(users=3_000, events=BLOCK + 5_000, days=10, seed=7)
    w1, w2 = Workload(cfg), Workload(cfg)
    whole = w1.slice(0, cfg.events)
    assert len(whole) == cfg.events
    parts = list(w2.batches(7_777))
    glued = type(whole).concat(parts)
    _same(whole, glued)
    other = Workload(WorkloadConfig(users=3_000, events=BLOCK + 5_000, days=10, seed=8)).slice(0, 1000)
    assert other.user_id.tolist() != whole.user_id[:1000].tolist()
    assert w1.traits_of(5) == w2.traits_of(5)


def test_workload_shape():
    cfg = WorkloadConfig(users=5_000, events=50_000, days=10, seed=3)
    w = Workload(cfg)
    b = w.slice(0, cfg.events)
    assert set(b.type.tolist()) == {"app_open", "view_product", "add_to_cart", "checkout", "purchase", "search"}
    late = np.mean(b.timestamp_ms < np.maximum.accumulate(b.timestamp_ms))
    assert 0.01 < late < 0.06
    assert b.timestamp_ms.min() > cfg.start_ms - cfg.max_late_ms - 1
    assert b.timestamp_ms.max() <= cfg.start_ms + cfg.span_ms
    counts = np.bincount(b.user_index, minlength=cfg.users)
    assert counts.max() > 20 * max(np.median(counts), 1)  # skewed activity
    assert counts.max() <= cfg.max_events_per_user * 1.5
    purchases = b.type == "purchase"
    assert np.all(b.value[purchases] > 0) and np.all(b.value[~purchases] == 0)
    assert np.all(np.round(b.value * 4) == b.value * 4)  # exact sums in any order
    pid, q, disc = b.properties["product_id"], b.properties["query"], b.properties["discount"]
    assert all((p is None) == (t not in ("view_product", "add_to_cart", "purchase")) for p, t in zip(pid, b.type))
    assert all((x is None) == (t != "search") for x, t in zip(q, b.type))
    present = [d for d in disc if d is not None]
    assert 0 < len(present) < len(disc) and 0.0 in present
    assert 1_000 < len(set(pid) - {None}) <= cfg.products
    assert all(isinstance(v, str) for v in w.trait_columns()["country"])


def test_segments_parse_and_mix_every_function_family():
    assert len(SEGMENTS) == 20
    seen: set[str] = set()
    for text in [*SEGMENTS.values(), ONE_SEGMENT]:
        tree = compile_expression(text, retention_ms=30 * DAY)
        for node in walk(tree):
            if isinstance(node, A.Aggregate):
                seen.add(node.func)
                assert node.window_ms <= 30 * DAY
                if node.source.filter is not None:
                    seen.add("where")
            elif isinstance(node, A.Sequence):
                seen.add("sequence")
            elif isinstance(node, (A.Since, A.SinceFirst)):
                seen.add(type(node).__name__)
                if node.source.filter is not None:
                    seen.add("where")
            elif isinstance(node, A.TraitTime):
                seen.add("trait_" + node.func)
            elif isinstance(node, (A.TraitRef, A.Near, A.SegmentRef, A.Arith, A.In, A.Between, A.ExistsProp)):
                seen.add(type(node).__name__)
    assert seen >= {"count", "sum", "avg", "min", "max", "distinct", "top_count", "active_days", "affinity",
                    "sequence", "Since", "SinceFirst", "where", "trait_since", "trait_until", "TraitRef", "Near",
                    "SegmentRef", "Arith", "In", "Between", "ExistsProp"}


# ----------------------------------------------------------------------------- baseline vs reference


def _drive(segments: dict[str, str], ops, retention_ms: int = 30 * DAY, cap: int = 4096):
    """Apply ``ops`` to the baseline and the reference; memberships must agree after each."""
    base = BaselineEngine(retention_ms=retention_ms, max_events_per_type=cap)
    ref = ReferenceEngine(clock="event", retention=retention_ms, max_events_per_type=cap)
    both = (base, ref)
    for e in both:
        e.advance_clock(T0)

    def check(step):
        assert base.now_ms == ref.now_ms, step
        for name in base.segment_names():
            assert base.members(name) == ref.members(name), (step, name, segments.get(name))
        full = base.recompute_members()
        for name in base.segment_names():
            assert full[name] == base.members(name), ("timers", step, name)

    for i, op in enumerate(ops):
        kind = op[0]
        if kind == "seg":
            for e in both:
                e.create_segment(op[1], op[2])
        elif kind == "ev":
            evs = op[1]
            cols = {"user_id": [x[0] for x in evs], "type": [x[1] for x in evs],
                    "timestamp_ms": np.array([x[2] for x in evs], dtype=np.int64),
                    "value": np.array([x[3] for x in evs], dtype=np.float64)}
            names = sorted({k for x in evs for k in x[4]})
            cols["properties"] = {k: [x[4].get(k) for x in evs] for k in names}
            for e in both:
                e.ingest_columns(**cols)
        elif kind == "adv":
            for e in both:
                e.advance_clock(op[1])
        elif kind == "traits":
            for e in both:
                e.set_traits(op[1], op[2], op[3])
        check((i, op))
    return base, ref


def test_baseline_timers_on_hand_cases():
    segs = {
        "abandon": "since(add_to_cart) >= 15m and since(checkout) > since(add_to_cart)",
        "trial": "until(trait.trial_end) between 0 and 3d",
        "fresh": "since(trait.signup_at) <= 1d",
        "first": "since_first(purchase) <= 2d",
        "seq": "sequence(search, view_product, add_to_cart where discount >= 10, 1h)",
        "aff": 'affinity(view_product.category, 1d) == "shoes"',
        "product": "since(view_product) * since(search) > 1h * 1h",  # not linear in time
        "half": "since(view_product) / 2 >= 10m and -since(view_product) > -40d",
        "ret": "since(search) < 40d",  # becomes +inf when the search leaves the retention
        "win": "count(view_product, 2h) >= 2 or segment(\"abandon\")",
    }
    ops = [("traits", "a", {"trial_end": T0 + 5 * DAY, "signup_at": T0 - 12 * HOUR}, None)]
    ops += [("seg", n, t) for n, t in segs.items()]
    ops += [
        ("ev", [("a", "search", T0 + 1, 0.0, {"query": "q"}),
                ("a", "view_product", T0 + 2, 0.0, {"category": "shoes"}),
                ("a", "add_to_cart", T0 + 3, 0.0, {"discount": 10.0}),
                ("b", "view_product", T0 + 5, 0.0, {"category": "books"}),
                ("b", "view_product", T0 + 6, 0.0, {"category": "shoes"})]),
        ("adv", T0 + 15 * MIN + 2), ("adv", T0 + 15 * MIN + 3), ("adv", T0 + 20 * MIN + 2),
        ("adv", T0 + 20 * MIN + 3),
        ("ev", [("b", "purchase", T0 + HOUR, 30.0, {}), ("a", "checkout", T0 + HOUR, 0.0, {})]),
        ("adv", T0 + HOUR + 4), ("adv", T0 + 2 * HOUR + 5), ("adv", T0 + 2 * HOUR + 6),
        ("adv", T0 + 12 * HOUR), ("adv", T0 + 12 * HOUR + 1),
        ("ev", [("b", "view_product", T0 + 13 * HOUR - 5, 0.0, {"category": "books"})]),  # late
        ("adv", T0 + 2 * DAY + HOUR - 1), ("adv", T0 + 2 * DAY + HOUR),
        ("adv", T0 + 2 * DAY + HOUR + 1),
        ("adv", T0 + 2 * DAY), ("adv", T0 + 5 * DAY - 1), ("adv", T0 + 5 * DAY), ("adv", T0 + 5 * DAY + 1),
        ("adv", T0 + 30 * DAY), ("adv", T0 + 30 * DAY + 1), ("adv", T0 + 30 * DAY + 2),
        ("adv", T0 + 30 * DAY + 7),
    ]
    base, ref = _drive(segs, ops)
    assert base.enters + base.exits == len(ref.deltas()) > 10


_USERS = ("u0", "u1", "u2")
_OFFSETS = (1, 250, 1_000, MIN, 15 * MIN, HOUR, 6 * HOUR, DAY, 3 * DAY, 8 * DAY)


@st.composite
def _baseline_scripts(draw):
    retention_ms = draw(st.sampled_from((2 * DAY, 7 * DAY, 30 * DAY)))
    cap = draw(st.sampled_from((4096, 4096, 3)))
    segs: dict[str, str] = {}
    for i in range(draw(st.integers(1, 3))):
        segs[f"s{i}"] = draw(expressions(retention_ms=retention_ms, segments=tuple(segs)))
    ops: list = [("seg", n, t) for n, t in segs.items()]
    now = T0
    for _ in range(draw(st.integers(1, 14))):
        what = draw(st.sampled_from(("ev", "ev", "ev", "adv", "adv", "traits")))
        if what == "ev":
            evs = []
            for _ in range(draw(st.integers(1, 4))):
                etype = draw(st.sampled_from(EVENT_TYPES))
                t = now + draw(st.sampled_from(_OFFSETS)) * draw(st.sampled_from((-1, 0, 1, 1)))
                props = {}
                if etype != "open":
                    if draw(st.integers(0, 4)):
                        props["sku"] = draw(st.sampled_from(SKUS + (1.0,)))
                    if draw(st.integers(0, 4)):
                        props["price"] = draw(st.sampled_from(PRICES + ("cheap",)))
                    if etype == "buy" and draw(st.booleans()):
                        props["promo"] = draw(st.booleans())
                evs.append((draw(st.sampled_from(_USERS)), etype, t, draw(st.sampled_from((0.0, 1.0, 12.25))), props))
            ops.append(("ev", evs))
            now = max(now, max(e[2] for e in evs))
        elif what == "adv":
            now += draw(st.sampled_from(_OFFSETS)) * draw(st.integers(1, 3))
            ops.append(("adv", now))
        else:
            traits = {}
            for name in draw(st.lists(st.sampled_from(("country", "plan", "signup_at", "lat", "lon", "score_x")),
                                      min_size=1, max_size=4, unique=True)):
                if name == "country":
                    traits[name] = draw(st.sampled_from(COUNTRIES + (3,)))
                elif name == "plan":
                    traits[name] = draw(st.sampled_from(PLANS + (None,)))
                elif name == "signup_at":
                    traits[name] = now + draw(st.sampled_from(_OFFSETS)) * draw(st.sampled_from((-1, 1)))
                elif name == "lat":
                    traits[name] = draw(st.sampled_from(LATS))
                elif name == "lon":
                    traits[name] = draw(st.sampled_from(LONS))
                else:
                    traits[name] = draw(st.sampled_from((0.0, 2.5, -1.0, "high")))
            ops.append(("traits", draw(st.sampled_from(_USERS)), traits, None))
    return segs, ops, retention_ms, cap


@given(_baseline_scripts())
def test_baseline_matches_reference_on_random_scripts(script):
    segs, ops, retention_ms, cap = script
    _drive(segs, ops, retention_ms=retention_ms, cap=cap)


# ----------------------------------------------------------------------------- the benchmark path


def test_core_bench_tiny_run():
    pytest.importorskip("engine._engine")
    from bench import core_bench

    result = core_bench.run(users=2_000, events=20_000, batch=2_000, seed=1, days=10.0,
                            baseline_fraction=0.5, measure_startup=False, progress=False)
    assert set(core_bench.RESULT_KEYS) <= set(result)
    json.dumps(result)  # plain JSON
    assert result["mismatches"] == {}
    assert result["membership_equal"] is True
    assert result["deltas_equal"] is True
    assert len(result["segment_sizes"]) == 21
    assert sum(1 for n in result["segment_sizes"].values() if n > 0) >= 15  # a workload that moves
    assert result["baseline"]["events"] > 0 and result["engine_events_per_s"] > 0
    assert result["bytes_per_user"] > 0 and result["bytes_per_retained_event"] > 0
