"""The extensions of the spec (docs/expressions.md, "Extensions of the spec"):
``affinity_score(E.p, VALUE, W)``, ``affinity_rank(E.p, VALUE, W)`` and
``active_days(E, W, "ZONE")``: parsing, printing, type checking and their errors (with
positions), the time zone tables against ``zoneinfo``, and the engine against the reference
evaluator on properties the functions promise."""

from __future__ import annotations

import datetime
import random
import zoneinfo

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import ExpressionError
from engine.expr import ast as A
from engine.expr import check, compile_expression, parse, strip_positions, unparse
from engine.expr._zones import (
    TABLE_END_MS,
    TABLE_START_MS,
    is_zone,
    local_day,
    transitions,
)
from tests.strategies import DAY_MS, DST_BASES_MS, HOUR_MS, ZONES, extension_expressions
from tests.test_differential import Pair, ev

DAY = A.DAY_MS
RETENTION_30D = 30 * DAY
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def error_of(text: str) -> str:
    with pytest.raises(ExpressionError) as info:
        compile_expression(text, retention_ms=RETENTION_30D)
    return str(info.value)


# ----------------------------------------------------------------------------- syntax


@pytest.mark.parametrize("text, canonical", [
    ('affinity_score(buy.sku, "a", 7d) > 0.5', 'affinity_score(buy.sku, "a", 1w) > 0.5'),
    ('affinity_score(buy.sku where price > 1, "a", 48h) >= 0.25',
     'affinity_score(buy.sku where price > 1, "a", 2d) >= 0.25'),
    ("affinity_rank(buy.price, -2.5, 1d) == 1", "affinity_rank(buy.price, -2.5, 1d) == 1"),
    ("affinity_rank(buy.price, 10, 1d) <= 2", "affinity_rank(buy.price, 10, 1d) <= 2"),
    ("affinity_rank(buy.wait, 90m, 1d) == 1", "affinity_rank(buy.wait, 90m, 1d) == 1"),
    ('affinity_rank("Add to Cart"."the sku", "x y", 1d) == 1', 'affinity_rank("Add to Cart"."the sku", "x y", 1d) == 1'),
    ('active_days(open, 7d, "America/New_York") >= 2', 'active_days(open, 1w, "America/New_York") >= 2'),
    ('active_days(open where x == 1, 7d, "UTC") >= 2', 'active_days(open where x == 1, 1w, "UTC") >= 2'),
    ("active_days(open, 7d) >= 2", "active_days(open, 1w) >= 2"),
])
def test_round_trip(text, canonical):
    tree = compile_expression(text, retention_ms=RETENTION_30D)
    assert unparse(tree) == canonical
    assert strip_positions(parse(canonical)) == strip_positions(tree)


def test_tree_fields():
    tree = parse('affinity_score(buy.sku, "a", 7d) > 0.5')
    agg = tree.left
    assert (agg.func, agg.source.prop, agg.value.value, agg.window_ms, agg.zone) == ("affinity_score", "sku", "a", 7 * DAY, None)
    assert (agg.value.line, agg.value.col, agg.window_col) == (1, 25, 30)
    tree = parse('active_days(open, 1d, "Europe/Istanbul") >= 1')
    assert (tree.left.zone, tree.left.zone_line, tree.left.zone_col, tree.left.value) == ("Europe/Istanbul", 1, 23, None)
    neg = parse("affinity_rank(buy.price, -3, 1d) == 1").left.value
    assert (neg.value, neg.col) == (-3, 26)
    assert check(parse('affinity_rank(buy.sku, "a", 1d)'), condition=False) == "number"
    assert check(parse('affinity_score(buy.sku, "a", 1d)'), condition=False) == "number"


@pytest.mark.parametrize("text, message", [
    ('active_days(open, 7d, "Mars/Olympus") >= 2',
     '1:23: unknown time zone "Mars/Olympus": use an IANA zone name such as "Europe/Istanbul", '
     '"America/New_York" or "UTC"'),
    ('active_days(open, 7d, "utc") >= 2', '1:23: unknown time zone "utc"'),
    ('active_days(open, 7d, "localtime") >= 2', '1:23: unknown time zone "localtime"'),
    ('active_days(open, 7d, "../../etc/passwd") >= 2', '1:23: unknown time zone "../../etc/passwd"'),
    ('active_days(open, 7d, "") >= 2', '1:23: unknown time zone ""'),
    ("active_days(open, 7d, 3) >= 2", '1:23: expected a time zone name in quotes, such as "Europe/Istanbul", found "3"'),
    ('active_days(open, 7d, "UTC", 1) >= 2',
     '1:28: too many arguments: active_days() takes an event, a window and an optional time zone such as '
     '"Europe/Istanbul"; expected ")", found ","'),
    ('count(open, 7d, "UTC") >= 2', '1:15: too many arguments: count() takes an event and a window; expected ")", found ","'),
    ('affinity_score(buy.sku, true, 7d) > 0.5',
     '1:25: the value of affinity_score() is a string or a number, found true: write e.g. '
     'affinity_score(buy.sku, "shoes", 30d)'),
    ('affinity_rank(buy.sku, null, 7d) == 1', "1:24: the value of affinity_rank() is a string or a number, found null"),
    ('affinity_score(buy.sku, 7d) > 0.5',
     '1:25: affinity_score needs a value before the window: write affinity_score(buy.sku, "VALUE", 7d)'),
    ('affinity_score(buy.sku, "a") > 0.5', '1:28: affinity_score needs a time window: write affinity_score(buy.sku, "a", 7d)'),
    ("affinity_rank(buy.sku) == 1",
     '1:22: affinity_rank needs a value and a time window: write affinity_rank(buy.sku, "VALUE", 7d)'),
    ('affinity_rank(buy, "a", 7d) == 1', "1:15: affinity_rank needs a property: write buy.PROP"),
    ("affinity_rank(buy.sku, trait.x, 7d) == 1", '1:24: expected a value (a string or a number) after "," in affinity_rank()'),
    ('affinity_rank(buy.sku, "a", 7d, 1) == 1',
     '1:31: too many arguments: affinity_rank() takes a property, a value and a window; expected ")", found ","'),
    ('affinity_score(buy.sku, "a", 31d) > 0', "1:30: window 31d is longer than the retention (30d): use a window of at most 30d"),
    ('affinity_score(buy.sku, "a", 1d) == "a"', "1:37: cannot compare a number with a string: they are never equal"),
    ('affinity_rank(buy.sku, "a", 1d)', "1:1: the expression must be a condition (true/false), found a number"),
    ('count(buy where affinity_rank(x, "a", 1d) == 1, 1d) > 0', "1:17: affinity_rank() cannot be used inside where"),
])
def test_errors_name_the_problem_and_its_position(text, message):
    assert error_of(text).startswith(message)


def test_checker_rejects_bad_trees_built_by_hand():
    src = A.EventSource("buy", "sku")
    cases = [
        (A.Aggregate("affinity_score", src, DAY, 1, 1), "1:1: the value of affinity_score() is a literal string or number"),
        (A.Aggregate("affinity_rank", src, DAY, 1, 1, value=A.Literal(True, 1, 20)),
         "1:20: the value of affinity_rank() is a literal string or number"),
        (A.Aggregate("count", A.EventSource("buy"), DAY, 1, 1, value=A.Literal("a")), "1:1: count() takes no value argument"),
        (A.Aggregate("count", A.EventSource("buy"), DAY, 1, 1, zone="UTC", zone_line=1, zone_col=17),
         "1:17: only active_days() takes a time zone, not count()"),
        (A.Aggregate("active_days", A.EventSource("buy"), DAY, 1, 1, zone="Nowhere/City", zone_line=1, zone_col=22),
         '1:22: unknown time zone "Nowhere/City"'),
    ]
    for agg, message in cases:
        with pytest.raises(ExpressionError) as info:
            check(A.Compare(">", agg, A.Literal(1.0)))
        assert str(info.value).startswith(message), (agg, str(info.value))


# ----------------------------------------------------------------------------- time zones


def _zoneinfo_day(t_ms: int, zone: str) -> int:
    local = (EPOCH + datetime.timedelta(milliseconds=t_ms)).astimezone(zoneinfo.ZoneInfo(zone)).date()
    return (local - datetime.date(1970, 1, 1)).days


@pytest.mark.parametrize("zone", ZONES + ("Europe/Dublin", "Pacific/Apia", "Africa/Casablanca", "Pacific/Chatham"))
def test_zone_tables_agree_with_zoneinfo(zone):
    """At every transition (and 1 ms either side) and at random instants 1900..2100, the
    kernel's rule floor((t + offset(t)) / 1d) over the table gives zoneinfo's local date."""
    starts, offsets = transitions(zone)
    assert starts.dtype == np.int64 and len(starts) == len(offsets) and np.all(np.diff(starts[1:]) > 0)
    assert starts[0] == np.iinfo(np.int64).min
    rnd = random.Random(zone)
    instants = [rnd.randrange(TABLE_START_MS, TABLE_END_MS) for _ in range(3000)]
    for s in starts[1:]:
        instants += [int(s) - 1, int(s), int(s) + 1, int(s) - HOUR_MS, int(s) + HOUR_MS]
    for t in instants:
        assert local_day(t, zone) == _zoneinfo_day(t, zone), (zone, t)


def test_dst_days_are_23_and_25_hours_long():
    ny = "America/New_York"
    starts, offsets = transitions(ny)
    spring = int(np.searchsorted(starts, 1_710_054_000_000))
    assert starts[spring] == 1_710_054_000_000 and offsets[spring] == -4 * HOUR_MS  # 2024-03-10T07:00Z: EDT
    assert offsets[spring - 1] == -5 * HOUR_MS
    # local midnights of 2024-03-10 and -11 are 23 h apart; of 2023-11-05 and -06, 25 h
    for first, length in ((1_710_046_800_000, 23), (1_699_156_800_000, 25)):
        nxt = first + length * HOUR_MS
        assert local_day(first - 1, ny) + 1 == local_day(first, ny) == local_day(nxt - 1, ny) == local_day(nxt, ny) - 1


def test_zone_names():
    assert all(is_zone(z) for z in ZONES)
    assert not any(is_zone(z) for z in ("", "utc", "localtime", "Mars/Olympus", "America/", "/etc/passwd", None, 3))


def test_the_plan_holds_one_table_per_zone():
    from engine import _plan
    from engine.kernels import _eval as K

    class Schema:
        def type_id(self, name):
            return 0

        def column(self, t, prop):
            return 1

        def trait_col(self, name):
            return 0

        def string_code(self, s):
            return 7

    class Def:
        def __init__(self, name, text):
            self.name, self.ast = name, compile_expression(text)

    defs = [Def("a", 'active_days(open, 1d, "America/New_York") >= 1 and active_days(open, 2d, "America/New_York") >= 2'),
            Def("b", 'active_days(open, 1d, "Asia/Kolkata") >= 1 or affinity_rank(buy.sku, "x", 1d) == 1')]
    plan = _plan.build_plan(defs, Schema(), {"a": 0, "b": 1}.__getitem__)
    days = plan.leaves[plan.leaves[:, 0] == K.L_DAYS]
    assert days[0, 6] == days[1, 6] and days[0, 7] == days[1, 7] == len(transitions("America/New_York")[0])
    assert days[2, 7] == len(transitions("Asia/Kolkata")[0])
    off, n = days[2, 6], days[2, 7]
    assert plan.consts[off] == -np.inf
    assert list(plan.consts[off + n: off + 2 * n]) == [float(x) for x in transitions("Asia/Kolkata")[1]]
    rank = plan.leaves[plan.leaves[:, 0] == K.L_AFF_RANK]
    assert len(rank) == 1 and rank[0, 7] == 0


# ----------------------------------------------------------------------------- engine vs reference


SKU = st.sampled_from(("a", "b", "c", 1.0, "1", True))


@given(data=st.data())
def test_rank_one_is_affinity_and_score_is_a_share(engine_factory, data):
    """On random purchases: affinity_rank(E.p, v, W) == 1 exactly when affinity(E.p, W) == v,
    affinity_score lies in [0, 1] and is null exactly when affinity is, at every clock move;
    the engine agrees with the reference evaluator throughout (Pair checks every step)."""
    base = data.draw(st.sampled_from(DST_BASES_MS), label="base")
    w = data.draw(st.sampled_from(("1h", "6h", "1d")), label="window")
    p = Pair(engine_factory)
    for v in ("a", "b", "1"):
        p.create(f"rank_{v}", f'affinity_rank(buy.sku, "{v}", {w}) == 1')
        p.create(f"aff_{v}", f'affinity(buy.sku, {w}) == "{v}"')
    p.create("share_range", f'affinity_score(buy.sku, "a", {w}) between 0 and 1')
    p.create("has_aff", f"affinity(buy.sku, {w}) == affinity(buy.sku, {w})")
    score = parse(f'affinity_score(buy.sku, "a", {w})')
    n = data.draw(st.integers(1, 25), label="n")
    times = sorted(base + data.draw(st.integers(0, 48), label="t") * 15 * 60_000 for _ in range(n))
    for t in times:
        props = {"sku": data.draw(SKU, label="sku")} if data.draw(st.integers(0, 5)) else {}
        p.ingest([ev(data.draw(st.sampled_from(("u", "v")), label="user"), "buy", t, **props)])
        for when in (t + 1, t + 30 * 60_000):
            p.advance(max(when, p.ref.now_ms))
            for v in ("a", "b", "1"):
                assert p.members(f"rank_{v}") == p.members(f"aff_{v}")
            assert p.members("share_range") == p.members("has_aff")
            for uid in ("u", "v"):
                s = p.ref.evaluate(uid, score)
                assert s is None or 0.0 <= s <= 1.0


@given(text=extension_expressions(retention_ms=30 * DAY_MS, max_depth=2))
def test_extension_expressions_round_trip(text):
    tree = compile_expression(text, retention_ms=30 * DAY_MS)
    assert strip_positions(compile_expression(unparse(tree), retention_ms=30 * DAY_MS)) == strip_positions(tree)
