"""The type checker: what kind of value each node has, and where that does not fit.

Types are "bool", "number", "string", "null" (the null literal) and "any" (known only at run
time: traits, properties, affinity). "any" and "null" fit everywhere a value is needed; a
mismatch between two known kinds is an error at the offending node.
"""

from __future__ import annotations

from engine.errors import ExpressionError
from engine.expr import ast as A
from engine.expr._parser import (
    EVENT_FUNCTIONS,
    PROPERTY_FUNCTIONS,
    RFM_FUNCTIONS,
    VALUE_FUNCTIONS,
    duration_text,
    name_text,
)
from engine.expr._zones import is_zone

BOOL, NUMBER, STRING, NULL, ANY = "bool", "number", "string", "null", "any"

_ARTICLE = {BOOL: "a condition (true/false)", NUMBER: "a number", STRING: "a string", NULL: "null", ANY: "a value"}
_NUMERIC = (NUMBER, ANY, NULL)
_CONDITION = (BOOL, ANY, NULL)
_ORDERING = ("<", "<=", ">", ">=")


def check(expr: A.Expr, *, retention_ms: int | None = None, allow_predictive: bool = False,
          condition: bool = True) -> str:
    """Type-check ``expr`` and return its type ("bool", "number", "string", "any" or "null").

    With ``condition`` (the default) the expression must be a condition (bool or any), as a
    segment must be. Windows longer than ``retention_ms`` and, unless ``allow_predictive``,
    the population-relative and predictive functions are rejected. Raises ExpressionError at
    the offending node.
    """
    try:
        t = _Checker(retention_ms, allow_predictive).type_of(expr)
    except RecursionError:
        raise _err(expr, "the expression is nested too deeply: split it into segments") from None
    if condition and t not in (BOOL, ANY):
        raise _err(expr, f"the expression must be a condition (true/false), found {_ARTICLE[t]}; "
                         "compare it with a value, as in count(purchase, 7d) >= 1")
    return t


def _err(node, message: str) -> ExpressionError:
    return ExpressionError(node.line, node.col, message)


def _describe(t: str) -> str:
    return _ARTICLE[t]


class _Checker:
    def __init__(self, retention_ms: int | None, allow_predictive: bool):
        self.retention_ms = retention_ms
        self.allow_predictive = allow_predictive

    # ------------------------------------------------------------------ helpers

    def need_condition(self, node) -> None:
        t = self.type_of(node)
        if t not in _CONDITION:
            raise _err(node, f"expected a condition, found {_describe(t)}")

    def need_number(self, node, context: str) -> str:
        t = self.type_of(node)
        if t == STRING:
            raise _err(node, f"{context} needs numbers, found a string: strings compare only with == != in")
        if t == BOOL:
            raise _err(node, f"{context} needs numbers, found a condition (true/false)")
        return t

    def window(self, node, window_ms: int, func: str) -> None:
        line = getattr(node, "window_line", 0) or node.line
        col = getattr(node, "window_col", 0) or node.col
        if not isinstance(window_ms, int) or isinstance(window_ms, bool) or window_ms <= 0:
            raise ExpressionError(line, col, "a window must be a positive duration, such as 7d")
        if self.retention_ms is not None and window_ms > self.retention_ms:
            text, limit = duration_text(window_ms), duration_text(self.retention_ms)
            if getattr(node, "window_line", 0) == 0 and isinstance(node, A.Rfm):
                raise ExpressionError(line, col, f"{func}() uses a {text} window by default, longer than the "
                                                 f"retention ({limit}): give a window, e.g. {func}(E, {limit})")
            raise ExpressionError(line, col, f"window {text} is longer than the retention ({limit}): "
                                             f"use a window of at most {limit}")

    def source(self, src: A.EventSource, func: str, needs_prop: bool) -> None:
        if not isinstance(src, A.EventSource) or not src.event:
            raise _err(src, f"{func} needs an event type")
        if needs_prop and src.prop is None:
            raise _err(src, f"{func} needs a property: write {name_text(src.event)}.PROP")
        if not needs_prop and src.prop is not None:
            raise _err(src, f"{func} takes an event, not a property: write {func}({name_text(src.event)}, ...)")
        if src.filter is not None:
            t = _FilterChecker().type_of(src.filter)
            if t not in _CONDITION:
                raise _err(src.filter, f"expected a condition after where, found {_describe(t)}")

    def predictive(self, node, func: str) -> None:
        if not self.allow_predictive:
            raise _err(node, f"{func}() is not available yet: population-relative functions "
                             "arrive in a later version")

    # ------------------------------------------------------------------ nodes

    def type_of(self, node) -> str:
        method = getattr(self, "t_" + type(node).__name__, None)
        if method is None:
            raise _err(node, f"unexpected {type(node).__name__} in an expression")
        return method(node)

    def t_Literal(self, node: A.Literal) -> str:
        return node.kind

    def t_TraitRef(self, node: A.TraitRef) -> str:
        return ANY

    def t_PropRef(self, node: A.PropRef) -> str:
        raise _err(node, f'"{node.name}" is a property: properties are used inside where, '
                         f"or as E.{node.name} in a function")

    def t_ExistsProp(self, node: A.ExistsProp) -> str:
        raise _err(node, "exists(PROP) is only used inside where; outside it, write exists(trait.NAME)")

    def t_Neg(self, node: A.Neg) -> str:
        self.need_number(node.operand, "a minus sign")
        return NUMBER

    def t_Arith(self, node: A.Arith) -> str:
        self.need_number(node.left, "arithmetic")
        self.need_number(node.right, "arithmetic")
        return NUMBER

    def t_Not(self, node: A.Not) -> str:
        self.need_condition(node.operand)
        return BOOL

    def t_BoolOp(self, node: A.BoolOp) -> str:
        for operand in node.operands:
            self.need_condition(operand)
        return BOOL

    def t_Compare(self, node: A.Compare) -> str:
        if node.op in _ORDERING:
            self.need_number(node.left, f'"{node.op}"')
            self.need_number(node.right, f'"{node.op}"')
        else:
            _same_kind(node.right, self.type_of(node.left), self.type_of(node.right))
        return BOOL

    def t_In(self, node: A.In) -> str:
        t = self.type_of(node.operand)
        _check_list(node)
        if node.items:
            _same_kind(node.items[0], t, node.items[0].kind)
        return BOOL

    def t_Between(self, node: A.Between) -> str:
        for part in (node.operand, node.low, node.high):
            self.need_number(part, '"between"')
        return BOOL

    def t_Aggregate(self, node: A.Aggregate) -> str:
        func = node.func
        if func not in EVENT_FUNCTIONS and func not in PROPERTY_FUNCTIONS and func not in VALUE_FUNCTIONS:
            raise _err(node, f'unknown function "{func}"')
        self.source(node.source, func, func not in EVENT_FUNCTIONS)
        if func in VALUE_FUNCTIONS:
            v = node.value
            if not isinstance(v, A.Literal) or v.kind not in (STRING, NUMBER):
                raise _err(v if isinstance(v, A.Literal) and v.line else node,
                           f"the value of {func}() is a literal string or number, as in "
                           f'{func}({name_text(node.source.event)}.PROP, "shoes", 30d)')
        elif node.value is not None:
            raise _err(node, f"{func}() takes no value argument")
        if node.zone is not None:
            line, col = (node.zone_line, node.zone_col) if node.zone_line else (node.line, node.col)
            if func != "active_days":
                raise ExpressionError(line, col, f"only active_days() takes a time zone, not {func}()")
            if not is_zone(node.zone):
                raise ExpressionError(line, col, f'unknown time zone "{node.zone}": use an IANA zone name '
                                                 'such as "Europe/Istanbul", "America/New_York" or "UTC"')
        self.window(node, node.window_ms, func)
        return ANY if func == "affinity" else NUMBER

    def t_Since(self, node: A.Since) -> str:
        self.source(node.source, "since", False)
        return NUMBER

    def t_SinceFirst(self, node: A.SinceFirst) -> str:
        self.source(node.source, "since_first", False)
        return NUMBER

    def t_TraitTime(self, node: A.TraitTime) -> str:
        return NUMBER

    def t_Sequence(self, node: A.Sequence) -> str:
        if len(node.steps) < 2:
            raise _err(node, "sequence needs at least two events before the window, e.g. sequence(a, b, 7d)")
        for step in node.steps:
            self.source(step, "sequence", False)
        self.window(node, node.window_ms, "sequence")
        return BOOL

    def t_ExistsTrait(self, node: A.ExistsTrait) -> str:
        return BOOL

    def t_Near(self, node: A.Near) -> str:
        if not -90.0 <= node.lat <= 90.0:
            raise _err(node, f"a latitude must be between -90 and 90, found {node.lat:g}")
        if not -180.0 <= node.lon <= 180.0:
            raise _err(node, f"a longitude must be between -180 and 180, found {node.lon:g}")
        if not node.distance_m >= 0.0:
            raise _err(node, "a distance cannot be negative")
        return BOOL

    def t_SegmentRef(self, node: A.SegmentRef) -> str:
        return BOOL

    def t_Rfm(self, node: A.Rfm) -> str:
        if node.func not in RFM_FUNCTIONS:
            raise _err(node, f'unknown function "{node.func}"')
        self.source(node.source, node.func, False)
        self.window(node, node.window_ms, node.func)
        return STRING if node.func == "rfm_tier" else NUMBER

    def t_ModelCall(self, node: A.ModelCall) -> str:
        types = {"score": NUMBER, "bucket": STRING, "likely": BOOL}
        if node.func not in types:
            raise _err(node, f'unknown function "{node.func}"')
        if node.func == "likely" and not (node.precision is not None and 0.0 <= node.precision <= 1.0):
            raise _err(node, "the precision level must be between 0 and 1 (0.8 means 80 %)")
        return types[node.func]


class _FilterChecker(_Checker):
    """Inside ``where``: property names, literals, comparisons, in, between, exists, and/or/not."""

    def __init__(self):
        super().__init__(None, False)

    def type_of(self, node) -> str:
        if not isinstance(node, (A.Literal, A.PropRef, A.ExistsProp, A.Compare, A.In, A.Between,
                                 A.BoolOp, A.Not)):
            if isinstance(node, (A.Arith, A.Neg)):
                raise _err(node, "arithmetic is not available inside where: compare a property with a literal")
            raise _err(node, "a filter can only use the event's properties and literals: "
                             "comparisons, in, between, exists(PROP), and, or, not")
        return super().type_of(node)

    def t_PropRef(self, node: A.PropRef) -> str:
        return ANY

    def t_ExistsProp(self, node: A.ExistsProp) -> str:
        return BOOL

    def t_Compare(self, node: A.Compare) -> str:
        if node.op in _ORDERING:
            for side in (node.left, node.right):
                if isinstance(side, A.Literal) and side.kind == STRING:
                    raise _err(side, f'"{node.op}" needs numbers, found a string: strings compare only with == != in')
        return super().t_Compare(node)


def _same_kind(node, left: str, right: str) -> None:
    known = (BOOL, NUMBER, STRING)
    if left in known and right in known and left != right:
        raise _err(node, f"cannot compare {_describe(left)} with {_describe(right)}: they are never equal")


def _check_list(node: A.In) -> None:
    kinds = set()
    for item in node.items:
        if not isinstance(item, A.Literal):
            raise _err(item, "a list can only hold literals (numbers, strings, true, false)")
        if item.kind == NULL:
            raise _err(item, "null in a list never matches: use exists(...) to test whether a value is set")
        kinds.add(item.kind)
        if len(kinds) > 1:
            raise _err(item, "the items of a list must all be of one kind (all strings, all numbers or all true/false)")
