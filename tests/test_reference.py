"""The reference evaluator on small, hand-computed cases: the oracle must be right on its own.

Expressions are built as AST objects (engine/expr/ast.py) so these tests do not depend on the
parser; a few text-based tests at the end run once ``engine.expr.parse`` exists.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import ClockError, ExpressionError, SegmentExists, SegmentInUse, UnknownSegment
from engine.expr import ast as A
from tests.reference import INF, ReferenceEngine, haversine_m, parse_duration_ms
from tests.strategies import DAY_MS, HOUR_MS, MINUTE_MS, expressions

B = 1_700_000_000_000  # 22:13:20 UTC; the next UTC day starts at B + 6_400_000
NEXT_DAY = B + 6_400_000
H, D, M = HOUR_MS, DAY_MS, MINUTE_MS


# ----------------------------------------------------------------------------- AST helpers


def lit(v):
    return v if not isinstance(v, (int, float, str, bool, type(None))) else A.Literal(v)


def src(event, prop=None, where=None):
    return A.EventSource(event, prop, where)


def agg(func, event, window_ms, prop=None, where=None):
    return A.Aggregate(func, src(event, prop, where), window_ms)


def cmp(op, left, right):
    return A.Compare(op, lit(left), lit(right))


def and_(*xs):
    return A.BoolOp("and", tuple(lit(x) for x in xs))


def or_(*xs):
    return A.BoolOp("or", tuple(lit(x) for x in xs))


def not_(x):
    return A.Not(lit(x))


def in_(x, items, negated=False):
    return A.In(lit(x), tuple(A.Literal(i) for i in items), negated)


def between(x, lo, hi):
    return A.Between(lit(x), lit(lo), lit(hi))


def arith(op, a, b):
    return A.Arith(op, lit(a), lit(b))


def trait(name):
    return A.TraitRef(name)


def prop(name):
    return A.PropRef(name)


def ev(uid, etype, t, value=None, **props):
    e = {"user_id": uid, "type": etype, "timestamp_ms": t}
    if value is not None:
        e["value"] = value
    if props:
        e["properties"] = props
    return e


def engine_with(*events, retention="30d", cap=4096):
    ref = ReferenceEngine(clock="event", retention=retention, max_events_per_type=cap)
    r = ref.ingest(list(events))
    assert r.rejected == 0, r.rejections
    return ref


def kinds(ref, after=0):
    return [(d.segment, d.user_id, d.kind, d.cause) for d in ref.deltas(after)]


# ----------------------------------------------------------------------------- config


def test_durations():
    assert parse_duration_ms("30d") == 30 * D
    assert parse_duration_ms("250ms") == 250
    assert parse_duration_ms("2w") == 14 * D
    assert parse_duration_ms(1234) == 1234
    with pytest.raises(ValueError):
        parse_duration_ms("30 days")


# ----------------------------------------------------------------------------- count and windows


def test_count_window_is_half_open():
    ref = engine_with(ev("u", "view", B - H), ev("u", "view", B - H + 1), ev("u", "view", B))
    assert ref.now_ms == B
    assert ref.evaluate("u", agg("count", "view", H)) == 2  # B - H is outside (now - W, now]
    assert ref.evaluate("u", agg("count", "view", H + 1)) == 3
    assert ref.evaluate("u", agg("count", "view", 1)) == 1
    assert ref.evaluate("u", agg("count", "ghost", H)) == 0
    assert ref.evaluate("nobody", agg("count", "view", H)) == 0


def test_count_with_filter_and_missing_property():
    ref = engine_with(
        ev("u", "buy", B - 3, price=5.0),
        ev("u", "buy", B - 2, price=50.0),
        ev("u", "buy", B - 1),  # no price
        ev("u", "buy", B, price="50"),  # a string: never > 10
    )
    assert ref.evaluate("u", agg("count", "buy", H, where=cmp(">", prop("price"), 10))) == 1
    # a missing property makes the comparison null, and not(null) is true
    assert ref.evaluate("u", agg("count", "buy", H, where=not_(cmp(">", prop("price"), 10)))) == 3
    assert ref.evaluate("u", agg("count", "buy", H, where=A.ExistsProp("price"))) == 3
    assert ref.evaluate("u", agg("count", "buy", H, where=A.ExistsProp("value"))) == 4
    assert ref.evaluate("u", agg("count", "buy", H, where=cmp("==", prop("price"), "50"))) == 1
    assert ref.evaluate("u", agg("count", "buy", H, where=cmp("==", prop("value"), 0))) == 4


def test_filter_in_between_and_or():
    ref = engine_with(
        ev("u", "view", B - 3, sku="a", price=1.0),
        ev("u", "view", B - 2, sku="b", price=10.0),
        ev("u", "view", B - 1, sku="c"),
        ev("u", "view", B, price=100.0),
    )
    sku_in = in_(prop("sku"), ["a", "b"])
    sku_not_in = in_(prop("sku"), ["a", "b"], negated=True)
    assert ref.evaluate("u", agg("count", "view", H, where=sku_in)) == 2
    assert ref.evaluate("u", agg("count", "view", H, where=sku_not_in)) == 1  # missing sku: null
    assert ref.evaluate("u", agg("count", "view", H, where=not_(sku_in))) == 2
    assert ref.evaluate("u", agg("count", "view", H, where=between(prop("price"), 1, 10))) == 2
    both = and_(sku_in, cmp(">", prop("price"), 5))
    either = or_(cmp("==", prop("sku"), "c"), cmp(">=", prop("price"), 100))
    assert ref.evaluate("u", agg("count", "view", H, where=both)) == 1
    assert ref.evaluate("u", agg("count", "view", H, where=either)) == 2


# ----------------------------------------------------------------------------- numeric aggregates


def test_sum_avg_min_max():
    ref = engine_with(
        ev("u", "buy", B - 4 * H, 100.0, price=7.0),  # outside a 3h window
        ev("u", "buy", B - 2 * H, 2.0, price=1.0),
        ev("u", "buy", B - H, 3.0, price="x"),  # not a number: ignored
        ev("u", "buy", B, 5.5, price=2.5),
        ev("u", "buy", B, 0.0),  # no price
    )
    w = 3 * H
    assert ref.evaluate("u", agg("sum", "buy", w, "price")) == 3.5
    assert ref.evaluate("u", agg("avg", "buy", w, "price")) == 1.75
    assert ref.evaluate("u", agg("min", "buy", w, "price")) == 1.0
    assert ref.evaluate("u", agg("max", "buy", w, "price")) == 2.5
    assert ref.evaluate("u", agg("sum", "buy", w, "value")) == 10.5
    assert ref.evaluate("u", agg("avg", "buy", w, "value")) == 10.5 / 4
    assert ref.evaluate("u", agg("max", "buy", 5 * H, "value")) == 100.0
    assert ref.evaluate("u", agg("sum", "buy", w, "price", where=cmp(">", prop("value"), 2.5))) == 2.5


def test_numeric_aggregates_over_nothing():
    ref = engine_with(ev("u", "buy", B, 1.0, sku="a"))
    assert ref.evaluate("u", agg("sum", "view", H, "price")) == 0
    assert ref.evaluate("u", agg("sum", "buy", H, "sku")) == 0  # strings are ignored
    for func in ("avg", "min", "max"):
        assert ref.evaluate("u", agg(func, "view", H, "price")) is None
        assert ref.evaluate("u", agg(func, "buy", H, "sku")) is None
    # null in a comparison is false at the top level, and not(null) is true
    assert ref.evaluate("u", not_(cmp(">", agg("avg", "view", H, "price"), 5))) is True
    assert ref.evaluate("u", cmp(">", agg("avg", "view", H, "price"), 5)) is None


def test_distinct_and_top_count_count_values_of_every_kind():
    ref = engine_with(
        ev("u", "view", B - 5, sku="1"),
        ev("u", "view", B - 4, sku=1),  # stored as 1.0: a number, not "1"
        ev("u", "view", B - 3, sku=True),  # a bool, neither 1 nor "1"
        ev("u", "view", B - 2, sku=1.0),
        ev("u", "view", B - 1, sku="a"),
        ev("u", "view", B),  # no sku
    )
    assert ref.evaluate("u", agg("distinct", "view", H, "sku")) == 4
    assert ref.evaluate("u", agg("top_count", "view", H, "sku")) == 2  # 1 and 1.0
    assert ref.evaluate("u", agg("top_count", "view", 3, "sku")) == 1
    assert ref.evaluate("u", agg("distinct", "cart", H, "sku")) == 0
    assert ref.evaluate("u", agg("top_count", "cart", H, "sku")) == 0
    assert ref.evaluate("u", agg("distinct", "view", H, "sku", where=cmp("!=", prop("sku"), "a"))) == 1


def test_active_days_are_utc_days():
    ref = engine_with(
        ev("u", "open", NEXT_DAY - 2 * D),  # two days earlier
        ev("u", "open", NEXT_DAY - 1),  # last ms of a day
        ev("u", "open", NEXT_DAY - 2),
        ev("u", "open", NEXT_DAY),  # first ms of the next day
        ev("u", "open", NEXT_DAY + H),
    )
    now = NEXT_DAY + H
    assert ref.now_ms == now
    assert ref.evaluate("u", agg("active_days", "open", H + 1)) == 1
    assert ref.evaluate("u", agg("active_days", "open", H + 2)) == 2
    assert ref.evaluate("u", agg("active_days", "open", 3 * D)) == 3
    assert ref.evaluate("u", agg("active_days", "open", 3 * D, where=cmp("<", prop("value"), 0))) == 0


# ----------------------------------------------------------------------------- since, since_first


def test_since_and_since_first():
    ref = engine_with(ev("u", "buy", B - 2 * H, price=1.0), ev("u", "buy", B - H, price=20.0), ev("u", "open", B))
    assert ref.evaluate("u", A.Since(src("buy"))) == H
    assert ref.evaluate("u", A.SinceFirst(src("buy"))) == 2 * H
    assert ref.evaluate("u", A.Since(src("buy", where=cmp("<", prop("price"), 10)))) == 2 * H
    assert ref.evaluate("u", A.Since(src("view"))) == INF
    assert ref.evaluate("u", A.SinceFirst(src("view"))) == INF
    assert ref.evaluate("u", A.Since(src("open"))) == 0
    # +inf is above every number; +inf == +inf
    assert ref.evaluate("u", cmp(">", A.Since(src("view")), 1e300)) is True
    assert ref.evaluate("u", cmp("==", A.Since(src("view")), A.SinceFirst(src("cart")))) is True


def test_since_bound_crossing():
    ref = engine_with(ev("u", "cart", B))
    gt = cmp(">", A.Since(src("cart")), 15 * M)
    ge = cmp(">=", A.Since(src("cart")), 15 * M)
    ref.advance_clock(B + 15 * M - 1)
    assert (ref.evaluate("u", gt), ref.evaluate("u", ge)) == (False, False)
    ref.advance_clock(B + 15 * M)
    assert (ref.evaluate("u", gt), ref.evaluate("u", ge)) == (False, True)
    ref.advance_clock(B + 15 * M + 1)
    assert (ref.evaluate("u", gt), ref.evaluate("u", ge)) == (True, True)


def test_retention_forgets_events():
    ref = engine_with(ev("u", "buy", B), ev("u", "buy", B + H), retention="2d")
    ref.advance_clock(B + 2 * D - 1)
    assert ref.evaluate("u", A.SinceFirst(src("buy"))) == 2 * D - 1
    ref.advance_clock(B + 2 * D)  # B == now - retention: forgotten
    assert ref.evaluate("u", A.SinceFirst(src("buy"))) == 2 * D - H
    assert ref.evaluate("u", agg("count", "buy", 2 * D)) == 1
    ref.advance_clock(B + H + 2 * D)
    assert ref.evaluate("u", A.Since(src("buy"))) == INF
    assert ref.evaluate("u", agg("count", "buy", 2 * D)) == 0


# ----------------------------------------------------------------------------- sequence


def seq(window_ms, *steps):
    return A.Sequence(tuple(s if isinstance(s, A.EventSource) else src(s) for s in steps), window_ms)


def test_sequence_needs_strictly_increasing_times():
    ref = engine_with(ev("u", "a", B - 10), ev("u", "b", B - 10), ev("u", "c", B - 5), ev("u", "open", B))
    assert ref.evaluate("u", seq(H, "a", "c")) is True
    assert ref.evaluate("u", seq(H, "a", "b")) is False  # equal timestamps
    assert ref.evaluate("u", seq(H, "c", "a")) is False
    assert ref.evaluate("u", seq(H, "a", "b", "c")) is False
    assert ref.evaluate("u", seq(H, "a", "a")) is False  # one a only
    assert ref.evaluate("u", seq(10, "a", "c")) is False  # B - 10 is outside (now - 10, now]
    assert ref.evaluate("u", seq(11, "a", "c")) is True


def test_sequence_picks_the_right_events():
    # a at 1, b at 2, a at 3, c at 4, b at 5: a->c->b needs the a at 1 or 3, c at 4, b at 5
    ref = engine_with(*(ev("u", e, B - 10 + t) for e, t in [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)]))
    assert ref.evaluate("u", seq(H, "a", "c", "b")) is True
    assert ref.evaluate("u", seq(H, "a", "b", "a", "c", "b")) is True
    assert ref.evaluate("u", seq(H, "b", "a", "b", "a")) is False
    assert ref.evaluate("u", seq(H, "a", "a")) is True
    only_b2 = src("b", where=cmp("==", prop("value"), 1))
    ref.ingest([ev("u", "b", B - 10 + 2, 1.0)])  # another b at 2, value 1; now unchanged
    assert ref.evaluate("u", seq(H, "a", only_b2, "c")) is True
    assert ref.evaluate("u", seq(H, "c", only_b2)) is False


def test_sequence_with_a_late_event():
    ref = engine_with(ev("u", "cart", B), ev("u", "buy", B + 10))
    assert ref.evaluate("u", seq(H, "view", "cart", "buy")) is False
    ref.ingest([ev("u", "view", B - 5)])  # late: before the cart
    assert ref.now_ms == B + 10
    assert ref.evaluate("u", seq(H, "view", "cart", "buy")) is True
    assert ref.evaluate("u", seq(15, "view", "cart", "buy")) is False
    assert ref.evaluate("u", seq(16, "view", "cart", "buy")) is True


# ----------------------------------------------------------------------------- affinity


def test_affinity_most_frequent_then_most_recent():
    ref = engine_with(
        ev("u", "buy", B - 6, cat="shoes"),
        ev("u", "buy", B - 5, cat="bags"),
        ev("u", "buy", B - 4, cat="shoes"),
        ev("u", "buy", B - 3, cat="bags"),  # 2 vs 2: bags seen most recently
        ev("u", "buy", B - 2),
    )
    assert ref.evaluate("u", agg("affinity", "buy", H, "cat")) == "bags"
    ref.ingest([ev("u", "buy", B - 7, cat="shoes")])  # late, but a third shoes
    assert ref.evaluate("u", agg("affinity", "buy", H, "cat")) == "shoes"
    assert ref.evaluate("u", agg("affinity", "buy", 5, "cat")) == "bags"  # (B-5, B]: one bags
    assert ref.evaluate("u", agg("affinity", "view", H, "cat")) is None
    assert ref.evaluate("u", cmp("==", agg("affinity", "buy", H, "cat"), "shoes")) is True


def test_affinity_ties_at_equal_timestamps_go_to_the_later_arrival():
    ref = engine_with(ev("u", "buy", B, cat="x"), ev("u", "buy", B, cat="y"))
    assert ref.evaluate("u", agg("affinity", "buy", H, "cat")) == "y"
    ref.ingest([ev("u", "buy", B, cat="x")])
    assert ref.evaluate("u", agg("affinity", "buy", H, "cat")) == "x"
    ref.ingest([ev("u", "buy", B, cat="y")])
    assert ref.evaluate("u", agg("affinity", "buy", H, "cat")) == "y"


def test_affinity_of_numbers_and_kinds():
    ref = engine_with(ev("u", "buy", B - 2, price=10), ev("u", "buy", B - 1, price="10"), ev("u", "buy", B, price=10.0))
    assert ref.evaluate("u", agg("affinity", "buy", H, "price")) == 10.0
    assert ref.evaluate("u", cmp("==", agg("affinity", "buy", H, "price"), "10")) is False


# ----------------------------------------------------------------------------- traits, geography


def test_traits_exists_and_kinds():
    ref = ReferenceEngine()
    ref.set_traits("u", {"country": "TR", "plan": "pro", "age": 30, "vip": True})
    assert ref.evaluate("u", trait("country")) == "TR"
    assert ref.evaluate("u", trait("age")) == 30.0
    assert ref.evaluate("u", trait("missing")) is None
    assert ref.evaluate("u", A.ExistsTrait("plan")) is True
    assert ref.evaluate("u", A.ExistsTrait("missing")) is False
    assert ref.evaluate("u", cmp("==", trait("country"), "TR")) is True
    assert ref.evaluate("u", cmp("==", trait("country"), 3)) is False  # kinds differ: false, not null
    assert ref.evaluate("u", cmp("!=", trait("country"), 3)) is False
    assert ref.evaluate("u", cmp("<", trait("country"), "UK")) is False  # ordering of strings
    assert ref.evaluate("u", cmp("==", trait("vip"), True)) is True
    assert ref.evaluate("u", cmp("==", trait("vip"), 1)) is False
    assert ref.evaluate("u", in_(trait("plan"), ["pro", "team"])) is True
    assert ref.evaluate("u", in_(trait("plan"), ["free"], negated=True)) is True
    assert ref.evaluate("u", in_(trait("country"), [1, 2], negated=True)) is False  # kinds differ
    ref.set_traits("u", {"plan": None, "country": "DE"})
    assert ref.traits("u") == {"country": "DE", "age": 30.0, "vip": True}


def test_null_in_and_not_in():
    ref = ReferenceEngine()
    ref.set_traits("u", {"country": "TR"})
    assert ref.evaluate("u", in_(trait("plan"), ["pro"])) is None
    assert ref.evaluate("u", in_(trait("plan"), ["pro"], negated=True)) is None
    assert ref.evaluate("u", not_(in_(trait("plan"), ["pro"]))) is True
    assert ref.evaluate("u", cmp("==", trait("plan"), A.Literal(None))) is None
    assert ref.evaluate("u", cmp("==", A.Literal(None), A.Literal(None))) is None
    assert ref.evaluate("u", between(trait("plan"), 1, 2)) is None
    assert ref.evaluate("u", and_(True, cmp("==", trait("plan"), "pro"))) is False
    assert ref.evaluate("u", or_(cmp("==", trait("plan"), "pro"), True)) is True
    assert ref.evaluate("u", or_(cmp("==", trait("plan"), "pro"), False)) is False


def test_trait_time_since_and_until():
    ref = engine_with(ev("u", "open", B))
    ref.set_traits("u", {"signup_at": B - D, "trial_end": B + 3 * D, "name": "x", "flag": True})
    assert ref.evaluate("u", A.TraitTime("since", "signup_at")) == D
    assert ref.evaluate("u", A.TraitTime("until", "trial_end")) == 3 * D
    assert ref.evaluate("u", A.TraitTime("until", "signup_at")) == -D
    for name in ("name", "flag", "missing"):
        assert ref.evaluate("u", A.TraitTime("since", name)) is None
    trial = between(A.TraitTime("until", "trial_end"), 0, 3 * D)  # inclusive at both ends
    assert ref.evaluate("u", trial) is True
    ref.advance_clock(B - 1)  # backwards: no-op
    assert ref.now_ms == B
    ref.advance_clock(B + 3 * D)
    assert ref.evaluate("u", trial) is True
    ref.advance_clock(B + 3 * D + 1)
    assert ref.evaluate("u", trial) is False


def test_near_uses_haversine_with_the_mean_earth_radius():
    one_degree = math.pi / 180 * 6_371_008.8
    assert haversine_m(41.0, 29.0, 42.0, 29.0) == pytest.approx(one_degree, rel=1e-12)
    assert haversine_m(0.0, 0.0, 0.0, 1.0) == pytest.approx(one_degree, rel=1e-12)
    assert haversine_m(0.0, 0.0, 0.0, 180.0) == pytest.approx(math.pi * 6_371_008.8, rel=1e-12)
    ref = ReferenceEngine()
    ref.set_traits("u", {"lat": 41.0, "lon": 29.0})
    ref.set_traits("v", {"lat": 41.0})
    ref.set_traits("w", {"lat": "41.0", "lon": 29.0})
    assert ref.evaluate("u", A.Near(42.0, 29.0, one_degree + 0.01)) is True
    assert ref.evaluate("u", A.Near(42.0, 29.0, one_degree - 0.01)) is False
    assert ref.evaluate("u", A.Near(41.0, 29.0, 0.0)) is True
    assert ref.evaluate("u", A.Near(41.01, 29.0, 1_000.0)) is False  # 1111.95 m away
    assert ref.evaluate("u", A.Near(41.01, 29.0, 1_200.0)) is True
    assert ref.evaluate("v", A.Near(41.0, 29.0, 1e9)) is False  # lon unset
    assert ref.evaluate("w", A.Near(41.0, 29.0, 1e9)) is False  # lat is not a number
    assert ref.evaluate("nobody", A.Near(41.0, 29.0, 1e9)) is False


# ----------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize(
    "expr, expected",
    [
        (arith("+", 1, 2), 3.0),
        (arith("-", 1, 2.5), -1.5),
        (arith("*", 3, 0.5), 1.5),
        (arith("/", 3, 2), 1.5),
        (arith("/", 3, 0), None),
        (arith("/", 0, 0), None),
        (arith("/", -3, 0), None),
        (arith("+", 1, A.Literal(None)), None),
        (arith("+", 1, "a"), None),
        (arith("-", INF, INF), None),
        (arith("*", 0, INF), None),
        (arith("/", INF, INF), None),
        (arith("/", 1, INF), 0.0),
        (arith("+", INF, 1), INF),
        (A.Neg(A.Literal(2.0)), -2.0),
        (A.Neg(A.Literal(None)), None),
        (cmp("<", 1e308, INF), True),
        (cmp("<", A.Neg(A.Literal(INF)), -1e308), True),
        (cmp("==", arith("/", 1, 0), arith("/", 1, 0)), None),
        (cmp(">=", 2, 2), True),
        (between(2, 1, 2), True),
        (between(1, 1, 2), True),
        (between(3, 1, 2), False),
        (between(2, 3, 1), False),
        (between("b", "a", "c"), False),
        (cmp("==", True, True), True),
        (cmp("<", True, False), False),
        (not_(True), False),
        (not_(A.Literal(None)), True),
        (in_(2, [1, 2]), True),
        (in_(2, [1, 3], negated=True), True),
        (in_(2, [], negated=True), True),
        (in_(2, []), False),
    ],
)
def test_values(expr, expected):
    got = ReferenceEngine().evaluate("u", expr)
    if expected is None or isinstance(expected, bool):
        assert got is expected
    else:
        assert got == expected and not isinstance(got, bool)


# ----------------------------------------------------------------------------- ingest and clock


def test_rejections_and_clock():
    ref = ReferenceEngine(retention="2d")
    assert ref.now_ms == 0
    r = ref.ingest([ev("u", "view", B), ev("v", "view", B - 5 * D)])  # the clock was 0: both accepted
    assert (r.accepted, r.rejected, r.now_ms) == (2, 0, B)
    batch = [
        ev("u", "view", B - 2 * D),  # == now - retention: too old
        ev("u", "view", B - 2 * D + 1),
        ev("", "view", B),
        {**ev("u", "view", B), "extra": 1},
        ev("u", "view", B, price=1.0, value=2.0),  # keyword "value" is the event value: fine
        {"user_id": "u", "type": "view", "timestamp_ms": B, "properties": {"value": 1.0}},
        ev("u", "view", B + H),
        ev("u", "view", B - 2 * D + 2),  # still judged against now before the batch
        {"user_id": "u", "type": "", "timestamp_ms": B},
        {"user_id": "u", "type": "view"},
    ]
    r = ref.ingest(batch)
    assert [x.index for x in r.rejections] == [0, 2, 3, 5, 8, 9]
    assert (r.accepted, r.rejected, r.now_ms) == (4, 6, B + H)
    assert all(x.reason for x in r.rejections)
    assert ref.known_users() == ["u", "v"]


def test_accepted_events_aged_out_by_their_own_batch_stop_counting():
    ref = ReferenceEngine(retention="2d")
    r = ref.ingest([ev("u", "view", B - 3 * D), ev("u", "view", B)])
    assert (r.accepted, r.now_ms) == (2, B)
    assert ref.evaluate("u", agg("count", "view", 2 * D)) == 1
    assert ref.evaluate("u", A.SinceFirst(src("view"))) == 0
    # and an unknown user with only rejected events is not known
    ref.ingest([ev("w", "view", B - 3 * D)])
    assert ref.known_users() == ["u"]


def test_trait_timestamps_move_the_event_clock():
    ref = ReferenceEngine()
    r = ref.set_traits("u", {"plan": "pro"})
    assert (r.accepted, r.rejected, r.now_ms) == (1, 0, 0)
    assert ref.set_traits("u", {"plan": "team"}, timestamp_ms=B).now_ms == B
    assert ref.set_traits("u", {"plan": "free"}, timestamp_ms=B - D).now_ms == B  # old: still written
    assert ref.traits("u") == {"plan": "free"}
    r = ref.set_traits("", {"plan": "x"}, timestamp_ms=B + D)
    assert (r.accepted, r.rejected, [x.index for x in r.rejections], r.now_ms) == (0, 1, [0], B)
    assert ref.advance_clock(B + H) == B + H
    assert ref.advance_clock(B) == B + H


def test_wall_clock():
    clock = [B]
    ref = ReferenceEngine(clock="wall", wall_clock_ms=lambda: clock[0])
    with pytest.raises(ClockError):
        ref.advance_clock(B + 1)
    ref.create_segment("s", cmp(">=", agg("count", "view", H), 1))
    r = ref.ingest([ev("u", "view", B + 10)])  # from the future: kept, counts from B + 10
    assert r.now_ms == B and r.accepted == 1
    assert ref.members("s") == set()
    clock[0] = B + 10
    ref.set_traits("x", {})
    assert ref.members("s") == {"u"}
    assert kinds(ref)[-1] == ("s", "u", "ENTER", "TIME")


def test_ingest_columns_matches_ingest():
    import numpy as np

    rows = [ev("u", "view", B, 1.0, sku="a"), ev("", "view", B), ev("v", "buy", B - H, 2.0, price=3.0), ev("u", "view", B + 1)]
    a = ReferenceEngine()
    ra = a.ingest(rows)
    b = ReferenceEngine()
    rb = b.ingest_columns(
        user_id=np.array(["u", "", "v", "u"]),
        type=["view", "view", "buy", "view"],
        timestamp_ms=np.array([B, B, B - H, B + 1], dtype=np.int64),
        value=np.array([1.0, 0.0, 2.0, 0.0]),
        properties={"sku": ["a", None, None, None], "price": np.array([np.nan, np.nan, 3.0, np.nan])},
    )
    assert (ra.accepted, ra.rejected, [x.index for x in ra.rejections], ra.now_ms) == (
        rb.accepted,
        rb.rejected,
        [x.index for x in rb.rejections],
        rb.now_ms,
    )
    for expr in (agg("sum", "buy", D, "price"), agg("distinct", "view", D, "sku"), agg("sum", "view", D, "value")):
        assert a.evaluate("u", expr) == b.evaluate("u", expr) and a.evaluate("v", expr) == b.evaluate("v", expr)
    with pytest.raises(ValueError):
        b.ingest_columns(user_id=["u"], type=["view", "view"], timestamp_ms=[B])


# ----------------------------------------------------------------------------- the per-type cap


def test_cap_keeps_the_newest_events_of_each_type():
    ref = ReferenceEngine(max_events_per_type=3)
    ref.ingest([ev("u", "view", B + i) for i in range(5)] + [ev("u", "buy", B)])
    assert ref.evaluate("u", agg("count", "view", D)) == 3
    assert ref.evaluate("u", A.SinceFirst(src("view"))) == 2  # kept: B+2, B+3, B+4
    assert ref.evaluate("u", agg("count", "buy", D)) == 1
    assert ref.stats()["events_dropped"] == 2
    ref.ingest([ev("u", "view", B)])  # older than every kept event: it is the one dropped
    assert ref.evaluate("u", A.SinceFirst(src("view"))) == 2
    ref.ingest([ev("u", "view", B + 2, 7.0)])  # ties with the oldest: the earlier arrival goes
    assert ref.evaluate("u", agg("count", "view", D)) == 3
    assert ref.evaluate("u", agg("sum", "view", D, "value")) == 7.0
    assert ref.evaluate("u", A.SinceFirst(src("view"))) == 2
    assert ref.stats()["events_dropped"] == 4


def test_cap_4096():
    ref = ReferenceEngine()
    ref.ingest([ev("u", "view", B - 4096 + i) for i in range(4097)])
    assert ref.now_ms == B
    assert ref.evaluate("u", agg("count", "view", D)) == 4096
    assert ref.evaluate("u", A.SinceFirst(src("view"))) == 4095
    assert ref.stats()["events_dropped"] == 1


# ----------------------------------------------------------------------------- segments and deltas


def test_deltas_alternate_with_causes():
    ref = ReferenceEngine(retention="7d")
    ref.ingest([ev("u", "view", B), ev("v", "view", B)])
    ref.create_segment("recent", cmp(">=", agg("count", "view", H), 1))
    assert kinds(ref) == [("recent", "u", "ENTER", "SEGMENT_CREATED"), ("recent", "v", "ENTER", "SEGMENT_CREATED")]
    n = len(ref.deltas())
    ref.ingest([ev("u", "view", B + H)])  # u stays (new event); v leaves with time
    assert kinds(ref, n) == [("recent", "v", "EXIT", "TIME")]
    n = len(ref.deltas())
    ref.ingest([ev("v", "view", B + H), ev("w", "open", B + H)])
    assert kinds(ref, n) == [("recent", "v", "ENTER", "EVENT")]
    n = len(ref.deltas())
    ref.advance_clock(B + 5 * H)  # both leave; entering and leaving inside one jump is no delta
    assert kinds(ref, n) == [("recent", "u", "EXIT", "TIME"), ("recent", "v", "EXIT", "TIME")]
    ref.create_segment("pro", cmp("==", trait("plan"), "pro"))
    n = len(ref.deltas())
    ref.set_traits("w", {"plan": "pro"}, timestamp_ms=B + 5 * H)
    assert kinds(ref, n) == [("pro", "w", "ENTER", "TRAIT")]
    n = len(ref.deltas())
    ref.delete_user("w")
    assert kinds(ref, n) == [("pro", "w", "EXIT", "USER_DELETED")]
    assert "w" not in ref.known_users()
    ref.set_traits("w", {})  # comes back afresh
    assert ref.traits("w") == {} and ref.user_segments("w") == []
    n = len(ref.deltas())
    ref.set_traits("u", {"plan": "pro"})
    ref.delete_segment("pro")
    assert kinds(ref, n) == [("pro", "u", "ENTER", "TRAIT"), ("pro", "u", "EXIT", "SEGMENT_DELETED")]
    seqs = [d.sequence for d in ref.deltas()]
    assert seqs == list(range(1, len(seqs) + 1))
    assert all(d.at_ms == ref.now_ms for d in ref.deltas()[-2:])
    with pytest.raises(UnknownSegment):
        ref.members("pro")


def test_segment_references_and_replace():
    ref = ReferenceEngine()
    ref.ingest([ev("u", "buy", B, 50.0), ev("v", "buy", B, 5.0)])
    ref.create_segment("big", cmp(">", agg("sum", "buy", D, "value"), 10))
    ref.create_segment("not_big", and_(not_(A.SegmentRef("big")), cmp(">=", agg("count", "buy", D), 1)))
    assert ref.members("big") == {"u"} and ref.members("not_big") == {"v"}
    n = len(ref.deltas())
    ref.ingest([ev("v", "buy", B, 6.0)])  # v moves from not_big to big in one evaluation point
    assert kinds(ref, n) == [("big", "v", "ENTER", "EVENT"), ("not_big", "v", "EXIT", "EVENT")]
    assert ref.user_segments("v") == ["big"]
    n = len(ref.deltas())
    ref.replace_segment("big", cmp(">", agg("sum", "buy", D, "value"), 20))
    assert kinds(ref, n) == [("big", "v", "EXIT", "SEGMENT_CREATED"), ("not_big", "v", "ENTER", "SEGMENT_CREATED")]
    with pytest.raises(SegmentInUse):
        ref.delete_segment("big")  # still referenced by not_big
    with pytest.raises(ExpressionError):
        ref.replace_segment("big", A.SegmentRef("not_big"))  # a cycle
    with pytest.raises(ExpressionError):
        ref.replace_segment("big", A.SegmentRef("big"))
    with pytest.raises(ExpressionError):
        ref.create_segment("x", A.SegmentRef("nope"))
    with pytest.raises(SegmentExists):
        ref.create_segment("big", A.Literal(True))
    with pytest.raises(UnknownSegment):
        ref.replace_segment("nope", A.Literal(True))
    with pytest.raises(UnknownSegment):
        ref.delete_segment("nope")
    assert ref.members("big") == {"u"}  # the failed operations changed nothing
    ref.delete_segment("not_big")
    ref.delete_segment("big")
    assert ref.segment_names() == []


def test_dependency_order_after_replace():
    ref = ReferenceEngine()
    ref.set_traits("u", {"plan": "pro"})
    ref.create_segment("a", A.Literal(True))
    ref.create_segment("b", cmp("==", trait("plan"), "pro"))
    ref.replace_segment("a", A.SegmentRef("b"))  # a now depends on a later segment
    assert ref.segment_names() == ["b", "a"]
    n = len(ref.deltas())
    ref.set_traits("u", {"plan": "free"})
    assert kinds(ref, n) == [("b", "u", "EXIT", "TRAIT"), ("a", "u", "EXIT", "TRAIT")]


def test_creation_errors():
    ref = ReferenceEngine(retention="2d")
    with pytest.raises(ExpressionError) as err:
        ref.create_segment("s", cmp(">", A.Aggregate("count", src("view"), 2 * D + 1, line=1, col=1), 0))
    assert str(err.value).startswith("1:1: ")
    ref.create_segment("s", cmp(">", agg("count", "view", 2 * D), 0))  # == retention: fine
    with pytest.raises(ExpressionError):
        ref.create_segment("q", A.Sequence((src("a"), src("b")), 3 * D))
    with pytest.raises(ExpressionError):
        ref.create_segment("r", cmp(">", A.Rfm("rfm_r", src("buy"), 3 * D), 3))   # longer than the retention
    assert ref.segment_names() == ["s"]


def test_backfill_covers_known_users_only():
    ref = ReferenceEngine()
    ref.ingest([ev("u", "view", B), ev("", "view", B)])
    ref.set_traits("t", {"plan": None})  # an accepted update, even if it only unsets: known
    ref.create_segment("nobody_views", cmp("==", agg("count", "view", D), 0))
    assert ref.members("nobody_views") == {"t"}
    ref.create_segment("all", A.Literal(True))
    assert ref.members("all") == {"u", "t"}


# ----------------------------------------------------------------------------- with the parser


def _parser():
    expr = pytest.importorskip("engine.expr", reason="the parser (engine.expr) is not there yet")
    if not hasattr(expr, "parse"):
        pytest.skip("engine.expr.parse is not there yet")
    return expr.parse


def test_text_expressions():
    _parser()
    ref = ReferenceEngine()
    ref.ingest([ev("u", "view_product", B - H, product_id="p1"), ev("u", "view_product", B, product_id="p1")])
    ref.ingest([ev("u", "view_product", B, product_id="p1"), ev("v", "add_to_cart", B - 20 * M)])
    ref.set_traits("v", {"country": "TR", "plan": "team"})
    ref.create_segment("browsers", "count(view_product, 48h) >= 3 and count(purchase, 48h) == 0")
    ref.create_segment("same", "top_count(view_product.product_id, 5d) >= 3 and count(checkout, 5d) == 0")
    ref.create_segment("abandoned", "since(add_to_cart) >= 15m and since(checkout) > since(add_to_cart)")
    ref.create_segment("tr", 'trait.country == "TR" and trait.plan in ["pro", "team"]')
    ref.create_segment("neither", 'not segment("tr") and not segment("browsers")')
    assert ref.members("browsers") == {"u"}
    assert ref.members("same") == {"u"}
    assert ref.members("abandoned") == {"v"}
    assert ref.members("tr") == {"v"}
    assert ref.members("neither") == set()


@given(st.data())
def test_generated_expressions_are_accepted(data):
    _parser()
    ref = ReferenceEngine(retention="7d")
    ref.ingest([ev("u", "view", B, sku="a", price=1.0), ev("u", "buy", B, promo=True)])
    ref.set_traits("u", {"country": "TR", "signup_at": B - D, "lat": 41.0, "lon": 29.0})
    ref.create_segment("s0", "count(view, 1d) > 0")
    text = data.draw(expressions(retention_ms=7 * D, segments=("s0",)))
    ref.create_segment("s1", text)
    ref.ingest([ev("u", "cart", B + 1)])
