"""The expression type checker and compile_expression (engine.expr)."""

from __future__ import annotations

import pytest

from engine.errors import ExpressionError
from engine.expr import ast as A
from engine.expr import check, compile_expression, parse, walk

DAY = A.DAY_MS
RETENTION_30D = 30 * DAY


def type_of(text: str, **kw) -> str:
    return check(parse(text), condition=False, allow_predictive=True, **kw)


def error_of(text: str, **kw) -> str:
    with pytest.raises(ExpressionError) as info:
        compile_expression(text, **kw)
    err = info.value
    assert str(err) == f"{err.line}:{err.col}: {err.message}"
    return str(err)


# ----------------------------------------------------------------------------- types


@pytest.mark.parametrize("text, expected", [
    ("1", "number"), ("1d", "number"), ('"x"', "string"), ("true", "bool"), ("null", "null"),
    ("trait.a", "any"), ("affinity(p.c, 1d)", "any"),
    ("count(a, 1d)", "number"), ("sum(a.v, 1d)", "number"), ("avg(a.v, 1d)", "number"),
    ("min(a.v, 1d)", "number"), ("max(a.v, 1d)", "number"), ("distinct(a.v, 1d)", "number"),
    ("top_count(a.v, 1d)", "number"), ("active_days(a, 1d)", "number"), ("since(a)", "number"),
    ("since_first(a)", "number"), ("since(trait.t)", "number"), ("until(trait.t)", "number"),
    ("rfm_r(a)", "number"), ("rfm_f(a)", "number"), ("rfm_m(a)", "number"), ('score("m")', "number"),
    ("rfm_tier(a)", "string"), ('bucket("m")', "string"),
    ("sequence(a, b, 1d)", "bool"), ("exists(trait.t)", "bool"), ("near(1, 2, 3km)", "bool"),
    ('segment("s")', "bool"), ('likely("m", 0.5)', "bool"),
    ("-count(a, 1d)", "number"), ("trait.a + 1", "number"), ("1 / 0", "number"), ("null + 1", "number"),
    ("trait.a == 1", "bool"), ("trait.a in [1]", "bool"), ("trait.a between 1 and 2", "bool"),
    ("not trait.a", "bool"), ("trait.a and trait.b", "bool"),
])
def test_types(text, expected):
    assert type_of(text) == expected


def test_check_requires_a_condition_by_default():
    assert check(parse("trait.flag")) == "any"
    assert check(parse("count(a, 1d) >= 1")) == "bool"
    with pytest.raises(ExpressionError, match="found a number"):
        check(parse("count(a, 1d)"))


# ----------------------------------------------------------------------------- accepted expressions


@pytest.mark.parametrize("text", [
    "count(view_product, 48h) >= 3 and count(purchase, 48h) == 0",
    "since(add_to_cart) >= 15m and since(checkout) > since(add_to_cart)",
    "sum(purchase.value, 30d) / count(purchase, 30d) > 100",
    'trait.country == "TR" and trait.plan in ["pro", "team"]',
    "until(trait.trial_end) between 0 and 3d",
    'affinity(purchase.category, 30d) == "shoes"',
    "affinity(purchase.size, 30d) == 42",
    "trait.vip",                                   # a bool trait is a condition
    "trait.a == 1 and trait.b",
    "trait.a == null or trait.b != null",          # legal: never true, see docs
    "trait.a + null > 1",
    "not (avg(purchase.value, 30d) > 5)",
    "since(x) > -1d",
    "trait.flag == true and trait.n in [1, 2d, -3]",
    'count(a where category in ["x"] and price between 1 and 5 and not exists(coupon), 30d) > 0',
    'count(a where vip and size == "L" or value >= -2, 30d) > 0',
    "count(a where label < 3, 30d) > 0",
    "since_first(a) > 29d",
    "sequence(a, b, 30d)",
    "count(a, 30d) > 0",                           # a window equal to the retention is fine
])
def test_accepted(text):
    compile_expression(text, retention_ms=RETENTION_30D)


def test_compile_returns_the_parsed_tree():
    text = "count(a, 1d) >= 1 and trait.x == 2"
    assert compile_expression(text) == parse(text)


# ----------------------------------------------------------------------------- errors

CHECK_ERRORS = [
    # the top level must be a condition
    ("count(a, 1d)", "1:1: the expression must be a condition (true/false), found a number; "
                     "compare it with a value, as in count(purchase, 7d) >= 1"),
    ('"yes"', "1:1: the expression must be a condition (true/false), found a string; "
              "compare it with a value, as in count(purchase, 7d) >= 1"),
    # and / or / not need conditions
    ("trait.a == 1 and 3", "1:18: expected a condition, found a number"),
    ("count(a, 1d) or trait.b", "1:1: expected a condition, found a number"),
    ("not count(a, 1d)", "1:5: expected a condition, found a number"),
    ('trait.b and "x"', "1:13: expected a condition, found a string"),
    # arithmetic needs numbers
    ('trait.a + "x" > 1', '1:11: arithmetic needs numbers, found a string: strings compare only with == != in'),
    ("(trait.a == 1) * 2 > 1", "1:2: arithmetic needs numbers, found a condition (true/false)"),
    ('-"x" == 1', '1:2: a minus sign needs numbers, found a string: strings compare only with == != in'),
    # ordering needs numbers
    ('trait.a < "x"', '1:11: "<" needs numbers, found a string: strings compare only with == != in'),
    ('"a" >= "b"', '1:1: ">=" needs numbers, found a string: strings compare only with == != in'),
    ("true > 1", '1:1: ">" needs numbers, found a condition (true/false)'),
    ('trait.a between "a" and "z"', '1:17: "between" needs numbers, found a string: strings compare only with == != in'),
    # == != in between known different kinds
    ('count(a, 1d) == "x"', "1:17: cannot compare a number with a string: they are never equal"),
    ("exists(trait.a) != 1", "1:20: cannot compare a condition (true/false) with a number: they are never equal"),
    ('count(a, 1d) in ["a", "b"]', "1:18: cannot compare a number with a string: they are never equal"),
    ("(trait.a == 1) in [1]", "1:20: cannot compare a condition (true/false) with a number: they are never equal"),
    # list items
    ('trait.a in [1, "a"]', "1:16: the items of a list must all be of one kind "
                            "(all strings, all numbers or all true/false)"),
    ("trait.a in [true, 1d]", "1:19: the items of a list must all be of one kind "
                              "(all strings, all numbers or all true/false)"),
    ("trait.a in [1, null]", "1:16: null in a list never matches: use exists(...) to test whether a value is set"),
    # filters
    ('count(a where x < "b", 1d) > 1', '1:19: "<" needs numbers, found a string: strings compare only with == != in'),
    ('count(a where "b" between 1 and 2, 1d) > 1',
     '1:15: "between" needs numbers, found a string: strings compare only with == != in'),
    ("count(a where 3, 1d) > 1", "1:15: expected a condition after where, found a number"),
    ("count(a where x and 3, 1d) > 1", "1:21: expected a condition, found a number"),
    ('count(a where x in [1, "b"], 1d) > 1', "1:24: the items of a list must all be of one kind "
                                            "(all strings, all numbers or all true/false)"),
    ('count(a where 1 == "b", 1d) > 1', "1:20: cannot compare a number with a string: they are never equal"),
]


@pytest.mark.parametrize("text, message", CHECK_ERRORS)
def test_check_errors(text, message):
    assert error_of(text) == message


def test_windows_longer_than_the_retention():
    msg = "window 45d is longer than the retention (30d): use a window of at most 30d"
    assert error_of("count(a, 45d) > 1", retention_ms=RETENTION_30D) == "1:10: " + msg
    assert error_of("trait.x and sum(a.v where y > 1, 45d) > 1", retention_ms=RETENTION_30D) == "1:34: " + msg
    assert error_of("sequence(a, b, 31d)", retention_ms=RETENTION_30D) == \
        "1:16: window 31d is longer than the retention (30d): use a window of at most 30d"
    assert error_of("count(a, 721h) > 1", retention_ms=RETENTION_30D) == \
        "1:10: window 721h is longer than the retention (30d): use a window of at most 30d"
    assert error_of("count(a, 2d) > 1", retention_ms=DAY + 1) == \
        "1:10: window 2d is longer than the retention (86400001ms): use a window of at most 86400001ms"
    # without a retention every window is accepted
    compile_expression("count(a, 52w) > 1")


def test_rfm_windows_and_the_retention():
    assert error_of("rfm_r(a, 45d) > 1", retention_ms=RETENTION_30D, allow_predictive=True) == \
        "1:10: window 45d is longer than the retention (30d): use a window of at most 30d"
    assert error_of("rfm_r(a) > 1", retention_ms=RETENTION_30D, allow_predictive=True) == \
        "1:1: rfm_r() uses a 365d window by default, longer than the retention (30d): give a window, " \
        "e.g. rfm_r(E, 30d)"
    compile_expression("rfm_r(a) > 1", retention_ms=400 * DAY, allow_predictive=True)


def test_zero_windows_are_rejected():
    assert error_of("count(a, 0s) > 1") == "1:10: a window must be a positive duration, such as 7d"
    assert error_of("sequence(a, b, 0ms)") == "1:16: a window must be a positive duration, such as 7d"


@pytest.mark.parametrize("text, func, col", [
    ("rfm_r(a) >= 4", "rfm_r", 1), ("rfm_f(a) >= 4", "rfm_f", 1), ("rfm_m(a) >= 4", "rfm_m", 1),
    ('trait.x and rfm_tier(a) in ["lost"]', "rfm_tier", 13),
])
def test_population_relative_functions_compile(text, func, col):
    tree = compile_expression(text)
    assert any(isinstance(n, A.Rfm) and n.func == func for n in walk(tree))


@pytest.mark.parametrize("text", ['score("m") > 0.5', 'bucket("m") == "high"', 'not likely("m", 0.8)'])
def test_model_functions_type_check_without_the_predictive_flag(text):
    # whether the model exists is checked when a segment is created (the segment registry)
    assert compile_expression(text) is not None


def test_predictive_types_are_checked_when_allowed():
    assert error_of('rfm_tier(a) > 1', allow_predictive=True) == \
        '1:1: ">" needs numbers, found a string: strings compare only with == != in'
    assert error_of('likely("m", 0.5) == 1', allow_predictive=True) == \
        "1:21: cannot compare a condition (true/false) with a number: they are never equal"
    assert error_of('bucket("m") == 1', allow_predictive=True) == \
        "1:16: cannot compare a string with a number: they are never equal"


# ----------------------------------------------------------------------------- hand-built trees


def test_hand_built_trees_are_checked_too():
    src = A.EventSource("a", "v", None, 1, 7)
    with pytest.raises(ExpressionError, match="count takes an event, not a property"):
        check(A.Compare(">", A.Aggregate("count", src, DAY, 1, 1), A.Literal(1.0)))
    with pytest.raises(ExpressionError, match=r"sum needs a property: write a.PROP"):
        check(A.Compare(">", A.Aggregate("sum", A.EventSource("a"), DAY), A.Literal(1.0)))
    arith_filter = A.EventSource("a", None, A.Compare(">", A.Arith("+", A.PropRef("x"), A.Literal(1.0)), A.Literal(2.0)))
    with pytest.raises(ExpressionError, match="arithmetic is not available inside where"):
        check(A.Compare(">", A.Aggregate("count", arith_filter, DAY), A.Literal(1.0)))
    with pytest.raises(ExpressionError, match="properties are used inside where"):
        check(A.Compare(">", A.PropRef("x"), A.Literal(1.0)))
    with pytest.raises(ExpressionError, match="a latitude must be between -90 and 90"):
        check(A.Near(100.0, 0.0, 1.0))
    with pytest.raises(ExpressionError, match="sequence needs at least two events"):
        check(A.Sequence((A.EventSource("a"),), DAY))


def test_very_long_chains_are_an_expression_error_not_a_crash():
    text = "trait.a" + " + 1" * 5000 + " > 0"
    with pytest.raises(ExpressionError, match="nested too deeply"):
        compile_expression(text)
