"""The expression front end: lexer, parser, unparser and walkers (engine.expr)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import ExpressionError
from engine.expr import event_types, parse, segment_refs, strip_positions, trait_names, unparse, walk
from engine.expr import ast as A

DAY = A.DAY_MS
HOUR = 3_600_000
MINUTE = 60_000

SPEC_EXAMPLES = [
    "count(view_product, 48h) >= 3 and count(purchase, 48h) == 0",
    "top_count(view_product.product_id, 5d) >= 3 and count(checkout, 5d) == 0   # same product 3+ times",
    "since(add_to_cart) >= 15m and since(checkout) > since(add_to_cart)         # abandoned cart, 15 min later",
    "since(purchase) > 60d and count(purchase, 365d) >= 2                       # lapsed repeat buyer",
    "sum(purchase.value, 90d) / count(purchase, 90d) > 100                      # average order value above 100",
    "count(purchase where discount > 0, 90d) / count(purchase, 90d) >= 0.5      # discount-sensitive",
    "active_days(app_open, 30d) >= 20                                           # highly engaged",
    'trait.country == "TR" and trait.plan in ["pro", "team"]',
    "since(trait.signup_at) <= 1d and count(view_product, 1d) == 0             # new, no browsing",
    "until(trait.trial_end) between 0 and 3d                                    # trial ends within 3 days",
    "near(41.0082, 28.9784, 5km)                                                # last known location",
    "sequence(view_loan_calculator, compare_rates, apply_start, 7d)",
    'affinity(purchase.category, 90d) == "shoes"',
    'rfm_tier(purchase) in ["at_risk", "cannot_lose"]',
    'likely("purchase_7d", 0.8) and not segment("vip")                          # precision level 80 %',
    'bucket("churn_14d") == "high"',
]


def p(text: str):
    """The parsed tree without positions."""
    return strip_positions(parse(text))


def lit(value, **kw):
    return A.Literal(value, **kw)


def dur(ms):
    return A.Literal(ms, is_duration=True)


def count(event, window_ms, prop=None, filt=None, func="count"):
    return A.Aggregate(func, A.EventSource(event, prop, filt), window_ms)


T = A.TraitRef


# ----------------------------------------------------------------------------- spec examples


@pytest.mark.parametrize("text", SPEC_EXAMPLES)
def test_every_spec_example_parses_and_round_trips(text):
    tree = parse(text)
    assert strip_positions(parse(unparse(tree))) == strip_positions(tree)


def test_spec_examples_trees():
    assert p(SPEC_EXAMPLES[0]) == A.BoolOp("and", (
        A.Compare(">=", count("view_product", 48 * HOUR), lit(3.0)),
        A.Compare("==", count("purchase", 48 * HOUR), lit(0.0)),
    ))
    assert p(SPEC_EXAMPLES[1]).operands[0].left == count("view_product", 5 * DAY, "product_id", func="top_count")
    assert p(SPEC_EXAMPLES[2]) == A.BoolOp("and", (
        A.Compare(">=", A.Since(A.EventSource("add_to_cart")), dur(15 * MINUTE)),
        A.Compare(">", A.Since(A.EventSource("checkout")), A.Since(A.EventSource("add_to_cart"))),
    ))
    assert p(SPEC_EXAMPLES[4]) == A.Compare(">", A.Arith(
        "/", count("purchase", 90 * DAY, "value", func="sum"), count("purchase", 90 * DAY)), lit(100.0))
    assert p(SPEC_EXAMPLES[5]).left.left == count(
        "purchase", 90 * DAY, filt=A.Compare(">", A.PropRef("discount"), lit(0.0)))
    assert p(SPEC_EXAMPLES[7]) == A.BoolOp("and", (
        A.Compare("==", T("country"), lit("TR")),
        A.In(T("plan"), (lit("pro"), lit("team"))),
    ))
    assert p(SPEC_EXAMPLES[8]).operands[0] == A.Compare("<=", A.TraitTime("since", "signup_at"), dur(DAY))
    assert p(SPEC_EXAMPLES[9]) == A.Between(A.TraitTime("until", "trial_end"), lit(0.0), dur(3 * DAY))
    assert p(SPEC_EXAMPLES[10]) == A.Near(41.0082, 28.9784, 5000.0)
    assert p(SPEC_EXAMPLES[11]) == A.Sequence(
        (A.EventSource("view_loan_calculator"), A.EventSource("compare_rates"), A.EventSource("apply_start")),
        7 * DAY)
    assert p(SPEC_EXAMPLES[12]) == A.Compare(
        "==", count("purchase", 90 * DAY, "category", func="affinity"), lit("shoes"))
    assert p(SPEC_EXAMPLES[13]) == A.In(
        A.Rfm("rfm_tier", A.EventSource("purchase"), 365 * DAY), (lit("at_risk"), lit("cannot_lose")))
    assert p(SPEC_EXAMPLES[14]) == A.BoolOp("and", (
        A.ModelCall("likely", "purchase_7d", 0.8), A.Not(A.SegmentRef("vip"))))
    assert p(SPEC_EXAMPLES[15]) == A.Compare("==", A.ModelCall("bucket", "churn_14d"), lit("high"))


# ----------------------------------------------------------------------------- precedence


def test_or_is_looser_than_and():
    assert p("trait.a or trait.b and trait.c") == A.BoolOp("or", (T("a"), A.BoolOp("and", (T("b"), T("c")))))
    assert p("trait.a and trait.b or trait.c") == A.BoolOp("or", (A.BoolOp("and", (T("a"), T("b"))), T("c")))


def test_bool_ops_are_flattened_but_parentheses_are_kept():
    assert p("trait.a and trait.b and trait.c") == A.BoolOp("and", (T("a"), T("b"), T("c")))
    assert p("trait.a or trait.b or trait.c or trait.d").operands == (T("a"), T("b"), T("c"), T("d"))
    assert p("trait.a and (trait.b and trait.c)") == A.BoolOp("and", (T("a"), A.BoolOp("and", (T("b"), T("c")))))


def test_not_is_looser_than_comparison_and_tighter_than_and():
    assert p("not trait.a == 1") == A.Not(A.Compare("==", T("a"), lit(1.0)))
    assert p("not trait.a and trait.b") == A.BoolOp("and", (A.Not(T("a")), T("b")))
    assert p("not not trait.a") == A.Not(A.Not(T("a")))


def test_arithmetic_precedence_and_left_associativity():
    assert p("trait.a + trait.b * trait.c > 1").left == A.Arith("+", T("a"), A.Arith("*", T("b"), T("c")))
    assert p("trait.a - trait.b - trait.c > 1").left == A.Arith("-", A.Arith("-", T("a"), T("b")), T("c"))
    assert p("trait.a / trait.b / trait.c > 1").left == A.Arith("/", A.Arith("/", T("a"), T("b")), T("c"))
    assert p("(trait.a + trait.b) * trait.c > 1").left == A.Arith("*", A.Arith("+", T("a"), T("b")), T("c"))


def test_unary_minus_is_tightest():
    assert p("-trait.a * 2 > 1").left == A.Arith("*", A.Neg(T("a")), lit(2.0))
    assert p("trait.a > -3") == A.Compare(">", T("a"), A.Neg(lit(3.0)))
    assert p("trait.a > - -3").right == A.Neg(A.Neg(lit(3.0)))
    assert p("trait.a > -1d").right == A.Neg(dur(DAY))


def test_comparison_operands_are_arithmetic():
    assert p("trait.a + 1 >= trait.b * 2") == A.Compare(
        ">=", A.Arith("+", T("a"), lit(1.0)), A.Arith("*", T("b"), lit(2.0)))


def test_in_not_in_and_between():
    assert p("trait.a not in [1, -2, 3d]") == A.In(T("a"), (lit(1.0), lit(-2.0), dur(3 * DAY)), negated=True)
    assert p("trait.a in []") == A.In(T("a"), ())
    assert p("trait.a in [true, false, null]").items == (lit(True), lit(False), lit(None))
    assert p("trait.a between 1 and 2 and trait.b") == A.BoolOp(
        "and", (A.Between(T("a"), lit(1.0), lit(2.0)), T("b")))
    assert p("trait.a between 1 + 1 and 2 * 3") == A.Between(
        T("a"), A.Arith("+", lit(1.0), lit(1.0)), A.Arith("*", lit(2.0), lit(3.0)))
    assert p("not trait.a in [1]") == A.Not(A.In(T("a"), (lit(1.0),)))


# ----------------------------------------------------------------------------- lexical rules


def test_numbers():
    assert p("trait.a == 12").right == lit(12.0)
    assert p("trait.a == 0.5").right == lit(0.5)
    assert p("trait.a == 1e6").right == lit(1e6)
    assert p("trait.a == 2.5E-3").right == lit(0.0025)
    assert type(p("trait.a == 12").right.value) is float


@pytest.mark.parametrize("text, ms", [
    ("250ms", 250), ("30s", 30_000), ("15m", 15 * MINUTE), ("48h", 48 * HOUR), ("7d", 7 * DAY),
    ("2w", 14 * DAY), ("0s", 0),
])
def test_durations_are_milliseconds(text, ms):
    node = p(f"trait.a == {text}").right
    assert node == dur(ms) and node.is_duration and type(node.value) is int


@pytest.mark.parametrize("text, metres", [("500m", 500.0), ("5km", 5000.0), ("3mi", 3 * 1609.344), ("1.5km", 1500.0)])
def test_distances_in_near(text, metres):
    assert p(f"near(-33.86, 151.2, {text})") == A.Near(-33.86, 151.2, metres)


def test_5m_is_minutes_outside_near_and_metres_inside():
    assert p("since(x) > 5m").right == dur(5 * MINUTE)
    assert p("near(0, 0, 5m)").distance_m == 5.0


def test_strings_and_escapes():
    assert p(r'trait.a == "say \"hi\"\\ \n"').right == lit('say "hi"\\ \n')
    assert p('trait.a == "# not a comment"').right == lit("# not a comment")
    assert p('trait.a == ""').right == lit("")
    assert p('trait.a == "İstanbul ✓"').right == lit("İstanbul ✓")


def test_comments():
    text = "# lapsed buyers\ncount(purchase, 30d) >= 1 # bought\n  and # still\n trait.x # here\n"
    assert p(text) == A.BoolOp("and", (A.Compare(">=", count("purchase", 30 * DAY), lit(1.0)), T("x")))


def test_identifiers_may_hold_colons_and_dashes():
    assert p("count(app:open, 1d) > 0").left.source.event == "app:open"
    assert p("trait.plan-tier == 1").left == T("plan-tier")
    # a "-" right after an identifier is part of it: write spaces around minus
    assert p("trait.a - 1 > 0").left == A.Arith("-", T("a"), lit(1.0))


def test_quoted_names():
    assert p('count("Add to Cart", 1d) > 0').left.source.event == "Add to Cart"
    assert p('sum("Order Placed"."Order Value", 1d) > 0').left.source == A.EventSource("Order Placed", "Order Value")
    assert p('trait."first name" == "Ada"').left == T("first name")
    assert p('count("in", 1d) > 0').left.source.event == "in"
    assert p("trait.in == 1").left == T("in")  # after "." a keyword is a name
    assert p('sequence("a b", c, 1d)').steps[0].event == "a b"


def test_keywords_and_functions_are_lowercase():
    with pytest.raises(ExpressionError, match='keywords are lowercase: write "and"'):
        parse("trait.a AND trait.b")
    with pytest.raises(ExpressionError, match='unknown function "COUNT"'):
        parse("COUNT(a, 1d) > 1")


def test_function_names_are_ordinary_event_names():
    assert p("count(count, 1d) > 0").left.source.event == "count"


def test_positions_are_one_based_first_tokens():
    e = parse("count(a, 1d) >= 3 and\n  (trait.x == 1 or trait.y)")
    assert (e.line, e.col) == (1, 1)
    cmp_, or_ = e.operands
    assert (cmp_.line, cmp_.col) == (1, 1)
    assert (cmp_.left.source.line, cmp_.left.source.col) == (1, 7)
    assert (cmp_.left.window_line, cmp_.left.window_col) == (1, 10)
    assert (cmp_.right.line, cmp_.right.col) == (1, 17)
    assert (or_.line, or_.col) == (2, 4)  # the node inside the parentheses
    assert (or_.operands[0].right.line, or_.operands[0].right.col) == (2, 15)
    neg = parse("trait.a > -3").right
    assert (neg.line, neg.col) == (1, 11)
    assert parse("(trait.a) or trait.b").col == 1  # a binary node starts at its first token


# ----------------------------------------------------------------------------- functions


def test_aggregate_sources_with_filters():
    e = p('count(purchase where discount > 0 and category in ["a", "b"] or not exists(coupon), 7d) > 0').left
    assert e.source.filter == A.BoolOp("or", (
        A.BoolOp("and", (A.Compare(">", A.PropRef("discount"), lit(0.0)),
                         A.In(A.PropRef("category"), (lit("a"), lit("b"))))),
        A.Not(A.ExistsProp("coupon")),
    ))
    e = p('avg(purchase.value where value between -5 and 1e3 and (vip == true), 1d) > 0').left
    assert e.func == "avg" and e.source.prop == "value"
    assert e.source.filter.operands[0] == A.Between(A.PropRef("value"), lit(-5.0), lit(1000.0))
    assert p('count(a where prop("Order Value") > 3 and exists("gift card"), 1d) > 0').left.source.filter == \
        A.BoolOp("and", (A.Compare(">", A.PropRef("Order Value"), lit(3.0)), A.ExistsProp("gift card")))


@pytest.mark.parametrize("func", ["sum", "avg", "min", "max", "distinct", "top_count", "affinity"])
def test_property_aggregates(func):
    assert p(f"{func}(e.p, 2h) == 1").left == count("e", 2 * HOUR, "p", func=func)


@pytest.mark.parametrize("func", ["count", "active_days"])
def test_event_aggregates(func):
    assert p(f"{func}(e where x == 1, 30s) == 1").left == count(
        "e", 30_000, filt=A.Compare("==", A.PropRef("x"), lit(1.0)), func=func)


def test_since_and_until():
    assert p("since(a where x > 1) > 1h").left == A.Since(A.EventSource("a", None, A.Compare(">", A.PropRef("x"), lit(1.0))))
    assert p("since_first(a) > 1h").left == A.SinceFirst(A.EventSource("a"))
    assert p("since(trait.signup_at) > 1h").left == A.TraitTime("since", "signup_at")
    assert p("until(trait.trial_end) < 1h").left == A.TraitTime("until", "trial_end")


def test_sequence_steps_may_filter():
    e = p("sequence(a where x == 1, b, c where y in [2], 1h)")
    assert e == A.Sequence((A.EventSource("a", None, A.Compare("==", A.PropRef("x"), lit(1.0))), A.EventSource("b"),
                            A.EventSource("c", None, A.In(A.PropRef("y"), (lit(2.0),)))), HOUR)


def test_traits_exists_segment_models():
    assert p("exists(trait.email)") == A.ExistsTrait("email")
    assert p('segment("big spenders")') == A.SegmentRef("big spenders")
    assert p('score("m") > 0.5').left == A.ModelCall("score", "m")
    assert p('likely("m", 1)') == A.ModelCall("likely", "m", 1.0)


def test_rfm_window_defaults_to_365d():
    assert p("rfm_r(purchase) >= 4").left == A.Rfm("rfm_r", A.EventSource("purchase"), 365 * DAY)
    assert p("rfm_m(purchase, 30d) >= 4").left == A.Rfm("rfm_m", A.EventSource("purchase"), 30 * DAY)
    assert p("rfm_f(purchase where x > 1, 2w) >= 4").left.source.filter is not None


def test_near_with_negative_coordinates():
    assert p("near(-90, -180, 0m)") == A.Near(-90.0, -180.0, 0.0)


# ----------------------------------------------------------------------------- errors

ERRORS = [
    # the spec's example: the column of the offending token
    ("count(view_product, 48) >= 3", '1:21: expected a duration after ",", found "48"'),
    ("foo(x) > 1", '1:1: unknown function "foo"'),
    ("count(purchase.value, 1d) > 1", "1:16: count takes an event, not a property: write count(purchase, ...)"),
    ("sum(purchase, 1d) > 1", "1:5: sum needs a property: write purchase.PROP"),
    ('trait.a == "abc', '1:12: unterminated string: close it with " on the same line'),
    ('trait.a == "abc\n" ', '1:12: unterminated string: close it with " on the same line'),
    (r'trait.a == "a\tb"', r'1:14: unknown escape "\t" in a string: only \" \\ and \n are allowed'),
    ("count(a, 1d) >=", "1:16: expected a value, found end of input"),
    ("count(", "1:7: expected an event type in count(), found end of input"),
    ("count(a, 1d", '1:12: expected ")" to close count(, found end of input'),
    ("(trait.a", '1:9: expected ")" to close the "(" at 1:1, found end of input'),
    ("trait.a)", '1:8: unmatched ")": remove it or add the "(" it closes'),
    ("count(a,1d) > 1 x", '1:17: expected "and", "or" or the end of the expression, found "x"'),
    ("trait.a\n  trait.b", '2:3: expected "and", "or" or the end of the expression, found "trait"'),
    ("", "1:1: the expression is empty: write a condition such as count(purchase, 7d) >= 1"),
    ("# nothing\n", "2:1: the expression is empty: write a condition such as count(purchase, 7d) >= 1"),
    ("trait.a = 1", '1:9: unexpected "=": write == to compare'),
    ("trait.a ! 1", '1:9: unexpected "!": write != to compare, or not to negate'),
    ("trait.a && trait.b", '1:9: unexpected "&&": write and'),
    ("trait.a || trait.b", '1:9: unexpected "||": write or'),
    ("trait.a == 'x'", "1:12: unexpected \"'\": strings and quoted names use double quotes"),
    ("trait.a == @", '1:12: unexpected character "@"'),
    ("trait.a < trait.b < 3", "1:19: comparisons cannot be chained: join them with and, e.g. a < b and b < c"),
    ("trait.a == 1 in [1]", "1:14: comparisons cannot be chained: join them with and, e.g. a < b and b < c"),
    ('trait.a in "x"', '1:12: expected a list such as ["a", "b"] after "in", found the string "x"'),
    ("trait.a in [1,]", '1:15: expected a literal (a number, string, true, false or null) in the list, found "]"'),
    ("trait.a in [1 2]", '1:15: expected "," or "]" in the list, found "2"'),
    ("trait.a in [trait.b]",
     '1:13: expected a literal (a number, string, true, false or null) in the list, found "trait"'),
    ("trait.a between 1 or 2", '1:19: expected "and" in "between LOW and HIGH", found "or"'),
    ("[1]", '1:1: a list can only follow "in" or "not in"'),
    ("trait.a not 3", '1:9: expected "and", "or" or the end of the expression, found "not"'),
    ("purchase > 3", '1:1: unknown name "purchase": write trait.purchase for a trait, or use an event inside '
                     "a function, e.g. count(purchase, 7d) >= 1"),
    ("count > 3", '1:7: expected "(" after count, found ">"'),
    ("trait", '1:6: expected "." and a trait name after trait, as in trait.plan, found end of input'),
    ("trait.", '1:7: expected a trait name after ".", found end of input'),
    ("trait.a == 1e999", "1:12: the number 1e999 is too large"),
    # durations and windows
    ("count(a, 1.5h) > 1", '1:10: a duration is a whole number with a unit: "1.5h" has a fraction; '
                           "use a smaller unit (90m rather than 1.5h)"),
    ("count(a, 3x) > 1", '1:10: unknown unit "x" in "3x": durations use ms, s, m, h, d or w'),
    ("count(a, 1e6d) > 1",
     '1:13: unexpected "d" after the number 1e6: a duration is a whole number with a unit, such as 90m'),
    ("count(a, 5km) > 1",
     '1:10: distances such as "5km" are only allowed as the third argument of near(LAT, LON, DIST)'),
    ("count(a, 99999999999999w) > 1", '1:10: the duration "99999999999999w" is too large'),
    ("count(a, trait.w) > 1", '1:10: expected a duration after ",", found "trait"'),
    ("count(a) > 1", "1:8: count needs a time window: write count(a, 7d)"),
    ("sum(a.v) > 1", "1:8: sum needs a time window: write sum(a.v, 7d)"),
    ("count(a b, 1d) > 1", '1:9: expected "," and a time window in count(), found "b"'),
    ("count(a, 1d, 2d) > 1",
     '1:12: too many arguments: count() takes an event and a window; expected ")", found ","'),
    ("sum(a.v, 1d, 2d) > 1",
     '1:12: too many arguments: sum() takes a property and a window; expected ")", found ","'),
    # sources
    ("count(trait.x, 1d) > 1", "1:7: count takes an event type, not a trait"),
    ("count(1, 1d) > 1", '1:7: expected an event type in count(), found "1"'),
    ('count("", 1d) > 1', "1:7: an event type cannot be empty"),
    ("count(count(a, 1d), 1d) > 1", "1:12: count() takes an event type, not a function call"),
    ("count(a., 1d) > 1", '1:9: expected a property name after ".", found ","'),
    # filters
    ("count(a where , 1d) > 1", '1:15: expected a condition after "where", found ","'),
    ("count(a where trait.x > 1, 1d) > 1", "1:15: a filter can only use the event's own properties and "
                                          "literals, not traits: move the trait condition outside the function"),
    ("count(a where a.x > 1, 1d) > 1", '1:16: inside where, name the property alone: write the part after "a."'),
    ("count(a where count(b, 1d) > 1, 1d) > 1", "1:15: count() cannot be used inside where: a filter compares "
                                               "the event's properties with literals (exists(PROP) is allowed)"),
    ("count(a where foo(x), 1d) > 1", '1:15: unknown function "foo"'),
    ("count(a where x + 1 > 2, 1d) > 1",
     '1:17: arithmetic ("+") is not available inside where: compare a property with a literal'),
    ("count(a where -x > 1, 1d) > 1", '1:16: inside where, only a number can follow a minus sign, found "x"'),
    ("count(a where exists(trait.x), 1d) > 1", "1:22: inside where, exists() takes a property of the event, "
                                              "not a trait"),
    ('prop("x") > 1', '1:1: prop("NAME") is only used inside where, to name a property'),
    # since, until, exists, sequence
    ("since(a, 1d) > 1", '1:8: since takes no window (it is the time since the latest event); '
                         'expected ")", found ","'),
    ("since(a.value) > 1", "1:9: since takes an event, not a property: write since(a, ...)"),
    ("since_first(trait.x) > 1", "1:13: since_first takes an event type, not a trait"),
    ("since_first(a, 1d) > 1", '1:14: since_first takes no window (it looks back over the retention); '
                               'expected ")", found ","'),
    ("until(a) > 1", '1:7: expected a timestamp trait in until(), as in until(trait.trial_end), found "a"'),
    ("exists(a)", '1:8: expected trait.NAME in exists() (to test for events write count(E, 30d) >= 1), found "a"'),
    ("exists(trait.a, trait.b)", '1:15: too many arguments: exists() takes one trait; expected ")", found ","'),
    ("sequence(a, b)", "1:14: sequence needs a time window as its last argument, e.g. sequence(a, b, 7d)"),
    ("sequence(a, 1d)", "1:1: sequence needs at least two events before the window, e.g. sequence(a, b, 7d)"),
    ("sequence(a, 3)", '1:13: expected an event type or a duration such as 7d, found "3"'),
    ("sequence(a.x, b, 1d)", "1:12: sequence takes an event, not a property: write sequence(a, ...)"),
    ("sequence(a, b, 1d, c)",
     '1:18: too many arguments: sequence() takes events and then one window; expected ")", found ","'),
    # near
    ("near(a, 1, 1km)", '1:6: expected a latitude (a number of degrees), found "a"'),
    ("near(91, 0, 5km)", "1:6: a latitude must be between -90 and 90, found 91"),
    ("near(1, -200, 1km)", "1:9: a longitude must be between -180 and 180, found -200"),
    ("near(1, 2, 5)", '1:12: expected a distance such as 500m, 5km or 3mi after ",", found "5"'),
    ("near(1, 2, 5h)", '1:12: expected a distance such as 500m, 5km or 3mi after ",", found "5h"'),
    ("near(1 2, 5km)", '1:8: expected "," after the latitude, found "2"'),
    ("near(1, 2, 3km, 4)",
     '1:15: too many arguments: near() takes a latitude, a longitude and a distance; expected ")", found ","'),
    # segments and models
    ("segment(vip)", '1:9: expected a segment name in quotes, such as segment("vip"), found "vip"'),
    ('segment("")', "1:9: a segment name cannot be empty"),
    ('likely("m")', '1:11: expected "," and a precision level such as 0.8 after the model name, found ")"'),
    ('likely("m", 80)', "1:13: the precision level must be between 0 and 1 (0.8 means 80 %), found 80"),
    ('likely("m", x)', '1:13: expected a precision level between 0 and 1 (0.8 means 80 %), found "x"'),
    ('score("m", 1) > 1', '1:10: too many arguments: score() takes one model name; expected ")", found ","'),
    ('bucket(m) == "high"', '1:8: expected a model name in quotes, such as bucket("churn_14d"), found "m"'),
    ("rfm_r(a.value) > 1", "1:9: rfm_r takes an event, not a property: write rfm_r(a, ...)"),
    ("rfm_r(a, 3) > 1", '1:10: expected a duration after ",", found "3"'),
    ("rfm_r(a, 1d, 2d) > 1",
     '1:12: too many arguments: rfm_r() takes an event and an optional window; expected ")", found ","'),
]


@pytest.mark.parametrize("text, message", ERRORS)
def test_error_messages(text, message):
    with pytest.raises(ExpressionError) as info:
        parse(text)
    assert str(info.value) == message
    line, col, rest = message.split(":", 2)
    assert (info.value.line, info.value.col, info.value.message) == (int(line), int(col), rest[1:])


def test_deep_nesting_is_an_expression_error():
    with pytest.raises(ExpressionError, match="the expression is nested too deeply"):
        parse("(" * 5000 + "trait.a" + ")" * 5000)


def test_parse_rejects_non_strings():
    with pytest.raises(TypeError):
        parse(b"count(a, 1d) > 1")


# ----------------------------------------------------------------------------- unparse


@pytest.mark.parametrize("text, canonical", [
    ("count(a,48h)>=3", "count(a, 2d) >= 3"),
    ("since(a) > 90m", "since(a) > 90m"),
    ("since(a) > 1500ms", "since(a) > 1500ms"),
    ("since(a) > 14d", "since(a) > 2w"),
    ("(trait.a or trait.b) and trait.c", "(trait.a or trait.b) and trait.c"),
    ("trait.a or (trait.b or trait.c)", "trait.a or (trait.b or trait.c)"),
    ("trait.a - (trait.b - 1) > 0", "trait.a - (trait.b - 1) > 0"),
    ("(trait.a - trait.b) - 1 > 0", "trait.a - trait.b - 1 > 0"),
    ("-(trait.a + 1) > 0", "-(trait.a + 1) > 0"),
    ("not (trait.a == 1)", "not trait.a == 1"),
    ("(trait.a == 1) == true", "(trait.a == 1) == true"),
    ('trait."a b" in ["x", "y\\"z"]', 'trait."a b" in ["x", "y\\"z"]'),
    ('count("in", 1d) > 0', 'count("in", 1d) > 0'),
    ("count(a where x > -1 and y not in [-2], 1d) > 0", "count(a where x > -1 and y not in [-2], 1d) > 0"),
    ('count(a where prop("p q") == 1, 1d) > 0', 'count(a where prop("p q") == 1, 1d) > 0'),
    ("near(41.0082, -28.9784, 5000m)", "near(41.0082, -28.9784, 5km)"),
    ("near(0, 0, 1.5m)", "near(0, 0, 1.5m)"),
    ("rfm_tier(p, 365d) == \"x\"", 'rfm_tier(p) == "x"'),
    ('likely("m", 0.8)', 'likely("m", 0.8)'),
    ("trait.a == 1e20", "trait.a == 1e+20"),
])
def test_unparse_is_canonical(text, canonical):
    assert unparse(parse(text)) == canonical
    assert p(canonical) == p(text)


# ----------------------------------------------------------------------------- walkers


def test_walkers():
    e = parse('count(a where exists(x), 1d) > 1 and sequence(b, "c d", 1h) and segment("s") '
              'and since(trait.t) > 1 and exists(trait.e) and near(1, 2, 3km) and trait.z == rfm_r(r)')
    assert event_types(e) == {"a", "b", "c d", "r"}
    assert trait_names(e) == {"t", "e", "lat", "lon", "z"}
    assert segment_refs(e) == {"s"}
    nodes = list(walk(e))
    assert nodes[0] is e
    kinds = {type(n).__name__ for n in nodes}
    assert {"EventSource", "ExistsProp", "Literal", "Sequence", "Near", "Rfm", "TraitRef"} <= kinds
    # depth-first, parents before children, left to right
    assert [type(n).__name__ for n in nodes[:6]] == ["BoolOp", "Compare", "Aggregate", "EventSource",
                                                     "ExistsProp", "Literal"]


def test_in_list_items_are_walked():
    assert [n.value for n in walk(parse("trait.a in [1, 2]")) if isinstance(n, A.Literal)] == [1.0, 2.0]


def test_strip_positions_zeroes_every_position():
    e = strip_positions(parse("count(a where x > 1, 1d) > 1 or sequence(a, b, 1d)"))
    for node in walk(e):
        for name in ("line", "col", "window_line", "window_col"):
            assert getattr(node, name, 0) == 0


# ----------------------------------------------------------------------------- round trip (hypothesis)

names = st.text(min_size=1, max_size=8).filter(lambda s: "\x00" not in s) | st.sampled_from(
    ["a", "view_product", "app:open", "x-y", "in", "count", "trait", "A b", 'q"uote', "back\\slash", "new\nline"])
non_negative = st.floats(min_value=0, max_value=1e300, allow_nan=False) | st.integers(0, 10**6).map(float)
durations = st.integers(0, 2**53).map(lambda ms: A.Literal(ms, is_duration=True)) | st.sampled_from(
    [1, 1000, 60_000, HOUR, DAY, 7 * DAY]).map(lambda ms: A.Literal(ms * 3, is_duration=True))
windows = st.integers(0, 2**53) | st.sampled_from([HOUR, DAY, 30 * DAY])
plain_literals = st.one_of(
    non_negative.map(A.Literal),
    durations,
    st.text(max_size=6).filter(lambda s: "\x00" not in s).map(A.Literal),  # NUL: refused by the lexer
    st.sampled_from([True, False, None]).map(A.Literal),
)


def negated(lit_: A.Literal) -> A.Literal:
    return A.Literal(-lit_.value, is_duration=lit_.is_duration)


numeric_literals = non_negative.map(A.Literal) | durations
list_items = st.lists(plain_literals | numeric_literals.map(negated), max_size=4).map(tuple)


def filters():
    operand = st.one_of(names.map(A.PropRef), plain_literals, numeric_literals.map(negated))
    leaf = st.one_of(
        names.map(A.ExistsProp),
        st.builds(A.Compare, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), operand, operand),
        st.builds(A.In, operand, list_items, st.booleans()),
        st.builds(A.Between, operand, operand, operand),
        operand,
    )
    return st.recursive(leaf, lambda inner: st.one_of(
        inner.map(A.Not),
        st.builds(A.BoolOp, st.sampled_from(["and", "or"]), st.lists(inner, min_size=2, max_size=3).map(tuple)),
    ), max_leaves=6)


def sources(with_prop: bool):
    props = names if with_prop else st.none()
    return st.builds(A.EventSource, names, props, st.none() | filters())


def calls():
    return st.one_of(
        st.builds(A.Aggregate, st.sampled_from(["count", "active_days"]), sources(False), windows),
        st.builds(A.Aggregate, st.sampled_from(["sum", "avg", "min", "max", "distinct", "top_count", "affinity"]),
                  sources(True), windows),
        st.builds(A.Since, sources(False)),
        st.builds(A.SinceFirst, sources(False)),
        st.builds(A.TraitTime, st.sampled_from(["since", "until"]), names),
        st.builds(A.Sequence, st.lists(sources(False), min_size=2, max_size=3).map(tuple), windows),
        names.map(A.ExistsTrait),
        st.builds(A.Near, st.floats(-90, 90), st.floats(-180, 180),
                  non_negative | st.integers(1, 100).map(lambda k: k * 1609.344)),
        names.map(A.SegmentRef),
        st.builds(A.Rfm, st.sampled_from(["rfm_r", "rfm_f", "rfm_m", "rfm_tier"]), sources(False),
                  windows | st.just(365 * DAY)),
        st.builds(A.ModelCall, st.sampled_from(["score", "bucket"]), names),
        st.builds(A.ModelCall, st.just("likely"), names, st.floats(0, 1)),
        names.map(A.TraitRef),
    )


def expressions():
    leaf = plain_literals | calls()
    return st.recursive(leaf, lambda inner: st.one_of(
        inner.map(A.Neg),
        inner.map(A.Not),
        st.builds(A.Arith, st.sampled_from(["+", "-", "*", "/"]), inner, inner),
        st.builds(A.Compare, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), inner, inner),
        st.builds(A.In, inner, list_items, st.booleans()),
        st.builds(A.Between, inner, inner, inner),
        st.builds(A.BoolOp, st.sampled_from(["and", "or"]), st.lists(inner, min_size=2, max_size=3).map(tuple)),
    ), max_leaves=10)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions())
def test_round_trip_random_trees(tree):
    text = unparse(tree)
    again = strip_positions(parse(text))
    # repr, not ==: it also tells 1.0 from True and 0.0 from -0.0
    assert repr(again) == repr(tree), text
    assert unparse(again) == text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('count(a, 1d)>=3 and trait.x"in[]-#\nwhere5kmsequence,.')), max_size=40))
def test_arbitrary_text_parses_or_raises_expression_error(text):
    try:
        tree = parse(text)
    except ExpressionError as err:
        assert err.line >= 1 and err.col >= 1
    else:
        assert strip_positions(parse(unparse(tree))) == strip_positions(tree)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_any_text_parses_or_raises_expression_error(text):
    try:
        parse(text)
    except ExpressionError as err:
        assert err.line >= 1 and err.col >= 1


def test_non_ascii_names_must_be_quoted():
    with pytest.raises(ExpressionError) as info:
        parse("trait.şehir == 1")
    assert str(info.value) == ('1:7: unexpected character "ş": a name with characters other than A-Z, a-z, 0-9, '
                               '_ : - is written in double quotes, as in "Café"')
    assert p('trait."şehir" == 1').left == T("şehir")
    with pytest.raises(ExpressionError, match='unexpected character "\u212a"'):  # the Kelvin sign
        parse("trait.\u212a == 1")
    with pytest.raises(ExpressionError, match='unexpected character "٣"'):
        parse("trait.a == ٣")
