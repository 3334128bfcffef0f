"""Recursive-descent parser: text -> AST (engine/expr/ast.py).

The grammar and the lexical rules are those of spec/EXPRESSIONS.md. Every node gets the
line/col of its first token. Errors are ExpressionError("line:col: expected X, found Y ...")
at the offending token.
"""

from __future__ import annotations

from engine.errors import ExpressionError
from engine.expr import ast as A
from engine.expr._lexer import (
    DISTANCE_UNITS_M,
    DURATION_UNITS_MS,
    EOF,
    IDENT,
    KEYWORDS,
    KW,
    MAX_DURATION_MS,
    NUM,
    OP,
    QTY,
    STR,
    Token,
    check_text,
    is_identifier,
    tokenize,
)
from engine.expr._shape import check_shape
from engine.expr._zones import is_zone
from engine.limits import DEFAULT_LIMITS

RFM_DEFAULT_WINDOW_MS = 365 * A.DAY_MS

EVENT_FUNCTIONS = ("count", "active_days")
PROPERTY_FUNCTIONS = ("sum", "avg", "min", "max", "distinct", "top_count", "affinity")
RFM_FUNCTIONS = ("rfm_r", "rfm_f", "rfm_m", "rfm_tier")
MODEL_FUNCTIONS = ("score", "bucket", "likely")
# Extensions of the spec (docs/expressions.md): func(E.p [where F], VALUE, W).
VALUE_FUNCTIONS = ("affinity_score", "affinity_rank")
FUNCTIONS = frozenset(
    EVENT_FUNCTIONS + PROPERTY_FUNCTIONS + VALUE_FUNCTIONS + RFM_FUNCTIONS + MODEL_FUNCTIONS
    + ("since", "since_first", "until", "sequence", "exists", "near", "segment")
)
# Inside ``where`` only exists(PROP) and prop("NAME") (a property whose name is not an
# identifier: there a quoted string is a string literal) are calls.

_COMPARE_OPS = ("==", "!=", "<", "<=", ">", ">=")


def parse(text: str, *, limits=None) -> A.Expr:
    """Parse one segment expression. Raises ExpressionError on the first error, whatever
    the text (``limits``: ``engine.limits.Limits``, for the length, depth and name limits;
    default: the defaults)."""
    if not isinstance(text, str):
        raise TypeError(f"an expression is a str, not {type(text).__name__}")
    limits = limits or DEFAULT_LIMITS
    check_text(text, limits.max_expression_chars)
    parser = _Parser(text, limits.max_expression_depth)
    try:
        tree = parser.parse()
    except RecursionError:
        tok = parser.peek()
        raise ExpressionError(tok.line, tok.col, "the expression is nested too deeply: "
                                                 "use fewer parentheses or split it into segments") from None
    check_shape(tree, limits)
    return tree


def name_text(name: str) -> str:
    """A name as written in an expression: bare if it is an identifier, else quoted."""
    return name if is_identifier(name) else quote(name)


def quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def duration_text(ms: int) -> str:
    """``ms`` in the largest unit that expresses it exactly (``86400000`` -> ``1d``)."""
    if ms == 0:
        return "0s"
    for unit in ("w", "d", "h", "m", "s"):
        size = DURATION_UNITS_MS[unit]
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


class _Parser:
    def __init__(self, text: str, max_depth: int = DEFAULT_LIMITS.max_expression_depth):
        self.tokens = tokenize(text)
        self.pos = 0
        self.in_filter = False
        # Nesting (parentheses, not, minus, where) is bounded while parsing, before Python's
        # own recursion limit can be reached: each level costs about a dozen frames.
        self.depth = 0
        self.max_depth = max_depth

    # ------------------------------------------------------------------ token helpers

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.pos + ahead, len(self.tokens) - 1)]

    def advance(self) -> Token:
        tok = self.tokens[self.pos]
        if tok.kind != EOF:
            self.pos += 1
        return tok

    def at_op(self, op: str, ahead: int = 0) -> bool:
        tok = self.peek(ahead)
        return tok.kind == OP and tok.value == op

    def at_kw(self, kw: str, ahead: int = 0) -> bool:
        tok = self.peek(ahead)
        return tok.kind == KW and tok.value == kw

    @staticmethod
    def error(tok: Token, message: str) -> ExpressionError:
        return ExpressionError(tok.line, tok.col, message)

    def nest(self, tok: Token) -> None:
        """One level deeper at ``tok``; ``unnest`` when the construct is parsed."""
        self.depth += 1
        if self.depth > self.max_depth:
            raise self.error(tok, f"the expression is nested too deeply: more than {self.max_depth} "
                                  "levels (max_expression_depth); use fewer parentheses, or split it "
                                  'into segments and combine them with segment("NAME")')

    def unnest(self) -> None:
        self.depth -= 1

    def expected(self, what: str, tok: Token | None = None) -> ExpressionError:
        tok = tok or self.peek()
        return self.error(tok, f"expected {what}, found {tok.describe()}")

    def expect_op(self, op: str, what: str | None = None) -> Token:
        if not self.at_op(op):
            raise self.expected(what or f'"{op}"')
        return self.advance()

    # ------------------------------------------------------------------ expressions

    def parse(self) -> A.Expr:
        if self.peek().kind == EOF:
            raise self.error(self.peek(), "the expression is empty: write a condition such as count(purchase, 7d) >= 1")
        node = self.expr()
        tok = self.peek()
        if tok.kind != EOF:
            if tok.kind == OP and tok.value == ")":
                raise self.error(tok, 'unmatched ")": remove it or add the "(" it closes')
            if tok.kind == IDENT and tok.value.lower() in KEYWORDS:
                raise self.error(tok, f'keywords are lowercase: write "{tok.value.lower()}"')
            raise self.expected('"and", "or" or the end of the expression', tok)
        return node

    def expr(self) -> A.Expr:
        return self.bool_op("or", self.and_expr)

    def and_expr(self) -> A.Expr:
        return self.bool_op("and", self.not_expr)

    def bool_op(self, op: str, operand) -> A.Expr:
        start = self.peek()
        operands = [operand()]
        while self.at_kw(op):
            self.advance()
            operands.append(operand())
        if len(operands) == 1:
            return operands[0]
        return A.BoolOp(op, tuple(operands), start.line, start.col)

    def not_expr(self) -> A.Expr:
        if self.at_kw("not"):
            tok = self.advance()
            self.nest(tok)
            node = A.Not(self.not_expr(), tok.line, tok.col)
            self.unnest()
            return node
        return self.cmp_expr()

    def cmp_expr(self) -> A.Expr:
        start = self.peek()
        left = self.arith()
        tok = self.peek()
        if tok.kind == OP and tok.value in _COMPARE_OPS:
            self.advance()
            node = A.Compare(tok.value, left, self.arith(), start.line, start.col)
        elif self.at_kw("in") or (self.at_kw("not") and self.at_kw("in", 1)):
            negated = self.at_kw("not")
            self.advance()
            if negated:
                self.advance()
            node = A.In(left, self.literal_list(), negated, start.line, start.col)
        elif self.at_kw("between"):
            self.advance()
            low = self.arith()
            if not self.at_kw("and"):
                raise self.expected('"and" in "between LOW and HIGH"')
            self.advance()
            high = self.arith()
            node = A.Between(left, low, high, start.line, start.col)
        else:
            return left
        tok = self.peek()
        if (tok.kind == OP and tok.value in _COMPARE_OPS) or self.at_kw("in") or self.at_kw("between") \
                or (self.at_kw("not") and self.at_kw("in", 1)):
            raise self.error(tok, "comparisons cannot be chained: join them with and, e.g. a < b and b < c")
        return node

    def arith(self) -> A.Expr:
        return self.binary(("+", "-"), self.term)

    def term(self) -> A.Expr:
        return self.binary(("*", "/"), self.unary)

    def binary(self, ops: tuple[str, ...], operand) -> A.Expr:
        start = self.peek()
        left = operand()
        while self.peek().kind == OP and self.peek().value in ops:
            tok = self.advance()
            if self.in_filter:
                raise self.error(tok, f'arithmetic ("{tok.value}") is not available inside where: '
                                      "compare a property with a literal")
            left = A.Arith(tok.value, left, operand(), start.line, start.col)
        return left

    def unary(self) -> A.Expr:
        if self.at_op("-"):
            tok = self.advance()
            if self.in_filter:
                return self.negative_literal(tok, "inside where, only a number can follow a minus sign")
            self.nest(tok)
            node = A.Neg(self.unary(), tok.line, tok.col)
            self.unnest()
            return node
        return self.atom()

    def negative_literal(self, minus: Token, message: str) -> A.Literal:
        """``-NUMBER`` or ``-DURATION`` folded into one literal (lists, filters, near)."""
        tok = self.peek()
        if tok.kind == NUM:
            self.advance()
            return A.Literal(-tok.value, minus.line, minus.col)
        if tok.kind == QTY:
            self.advance()
            return A.Literal(-self.duration(tok), minus.line, minus.col, is_duration=True)
        raise self.error(tok, f"{message}, found {tok.describe()}")

    def atom(self) -> A.Expr:
        tok = self.peek()
        if tok.kind == NUM:
            self.advance()
            return A.Literal(tok.value, tok.line, tok.col)
        if tok.kind == QTY:
            self.advance()
            return A.Literal(self.duration(tok), tok.line, tok.col, is_duration=True)
        if tok.kind == STR:
            self.advance()
            return A.Literal(tok.value, tok.line, tok.col)
        if tok.kind == KW:
            if tok.value in ("true", "false", "null"):
                self.advance()
                value = {"true": True, "false": False, "null": None}[tok.value]
                return A.Literal(value, tok.line, tok.col)
            if tok.value == "trait":
                if self.in_filter:
                    raise self.error(tok, "a filter can only use the event's own properties and literals, "
                                          "not traits: move the trait condition outside the function")
                self.advance()
                return A.TraitRef(self.trait_name(), tok.line, tok.col)
            raise self.expected("a value", tok)
        if tok.kind == OP and tok.value == "(":
            self.advance()
            self.nest(tok)
            node = self.expr()
            if not self.at_op(")"):
                raise self.expected(f'")" to close the "(" at {tok.line}:{tok.col}')
            self.advance()
            self.unnest()
            return node
        if tok.kind == IDENT:
            if self.at_op("(", 1):
                return self.call()
            return self.bare_name(tok)
        if tok.kind == OP and tok.value == "[":
            raise self.error(tok, 'a list can only follow "in" or "not in"')
        raise self.expected("a value", tok)

    def bare_name(self, tok: Token) -> A.Expr:
        name = tok.value
        if self.in_filter:
            if self.at_op(".", 1):
                raise self.error(self.peek(1), f'inside where, name the property alone: write the part after "{name}."')
            self.advance()
            return A.PropRef(name, tok.line, tok.col)
        if name.lower() in KEYWORDS:
            raise self.error(tok, f'keywords are lowercase: write "{name.lower()}"')
        if name in FUNCTIONS:
            raise self.expected(f'"(" after {name}', self.peek(1))
        raise self.error(tok, f'unknown name "{name}": write trait.{name} for a trait, or use an event '
                              f"inside a function, e.g. count({name}, 7d) >= 1")

    def literal_list(self) -> tuple[A.Literal, ...]:
        self.expect_op("[", 'a list such as ["a", "b"] after "in"')
        items: list[A.Literal] = []
        if self.at_op("]"):
            self.advance()
            return ()
        while True:
            items.append(self.list_literal())
            if self.at_op("]"):
                self.advance()
                return tuple(items)
            if not self.at_op(","):
                raise self.expected('"," or "]" in the list')
            self.advance()

    def list_literal(self) -> A.Literal:
        tok = self.peek()
        if tok.kind == OP and tok.value == "-":
            self.advance()
            return self.negative_literal(tok, "expected a number after the minus sign")
        if tok.kind in (NUM, QTY, STR) or (tok.kind == KW and tok.value in ("true", "false", "null")):
            node = self.atom()
            assert isinstance(node, A.Literal)
            return node
        raise self.expected("a literal (a number, string, true, false or null) in the list", tok)

    # ------------------------------------------------------------------ literals with units

    def duration(self, tok: Token) -> int:
        number, unit = tok.value
        if unit in DURATION_UNITS_MS:
            if len(number) > 20:  # int() of thousands of digits is slow, then refused
                raise self.error(tok, f'the duration "{tok.text[:24]}..." is too large')
            if "." in number:
                raise self.error(tok, f'a duration is a whole number with a unit: "{tok.text}" has a fraction; '
                                      "use a smaller unit (90m rather than 1.5h)")
            ms = int(number) * DURATION_UNITS_MS[unit]
            if ms > MAX_DURATION_MS:
                raise self.error(tok, f'the duration "{tok.text}" is too large')
            return ms
        if unit in DISTANCE_UNITS_M:
            raise self.error(tok, f'distances such as "{tok.text}" are only allowed as the third argument of '
                                  "near(LAT, LON, DIST)")
        raise self.error(tok, f'unknown unit "{unit}" in "{tok.text}": durations use ms, s, m, h, d or w')

    def distance(self) -> float:
        tok = self.peek()
        if tok.kind != QTY:
            raise self.expected('a distance such as 500m, 5km or 3mi after ","', tok)
        number, unit = tok.value
        if unit not in DISTANCE_UNITS_M:
            raise self.expected('a distance such as 500m, 5km or 3mi after ","', tok)
        self.advance()
        return float(number) * DISTANCE_UNITS_M[unit]

    # ------------------------------------------------------------------ names

    def trait_name(self) -> str:
        """After the keyword ``trait``: ``.NAME``."""
        if not self.at_op("."):
            raise self.expected('"." and a trait name after trait, as in trait.plan')
        self.advance()
        return self.name_after_dot("a trait name")

    def name_after_dot(self, what: str) -> str:
        tok = self.peek()
        if tok.kind in (IDENT, KW, STR):  # after "." a keyword can only be a name
            self.advance()
            if tok.value == "":
                raise self.error(tok, f"{what} cannot be empty")
            return tok.value
        raise self.expected(f'{what} after "."', tok)

    def quoted_name(self, func: str, what: str, example: str) -> str:
        tok = self.peek()
        if tok.kind != STR:
            raise self.expected(f'{what} in quotes, such as {func}("{example}")', tok)
        self.advance()
        if tok.value == "":
            raise self.error(tok, f"{what} cannot be empty")
        return tok.value

    # ------------------------------------------------------------------ calls

    def call(self) -> A.Expr:
        tok = self.advance()
        name = tok.value
        self.advance()  # "("
        if self.in_filter:
            if name == "exists":
                node = A.ExistsProp(self.prop_name("exists"), tok.line, tok.col)
            elif name == "prop":
                node = A.PropRef(self.prop_name("prop"), tok.line, tok.col)
            elif name in FUNCTIONS:
                raise self.error(tok, f"{name}() cannot be used inside where: a filter compares the event's "
                                      "properties with literals (exists(PROP) is allowed)")
            else:
                raise self.error(tok, f'unknown function "{name}"')
            self.close(name, "one property")
            return node
        if name not in FUNCTIONS:
            if name == "prop":
                raise self.error(tok, 'prop("NAME") is only used inside where, to name a property')
            raise self.error(tok, f'unknown function "{name}"')
        return getattr(self, "call_" + name, self.call_generic)(tok)

    def close(self, func: str, takes: str) -> None:
        if self.at_op(","):
            raise self.error(self.peek(), f'too many arguments: {func}() takes {takes}; expected ")", found ","')
        self.expect_op(")", f'")" to close {func}(')

    def prop_name(self, func: str) -> str:
        tok = self.peek()
        if tok.kind in (IDENT, STR):
            self.advance()
            if tok.value == "":
                raise self.error(tok, "a property name cannot be empty")
            if tok.kind == IDENT and self.at_op("."):
                raise self.error(self.peek(), f'inside where, name the property alone: write the part after "{tok.value}."')
            return tok.value
        if tok.kind == KW and tok.value == "trait":
            raise self.error(tok, f"inside where, {func}() takes a property of the event, not a trait")
        raise self.expected(f"a property name in {func}()", tok)

    def source(self, func: str, needs_prop: bool) -> A.EventSource:
        tok = self.peek()
        if tok.kind == KW and tok.value == "trait":
            raise self.error(tok, f"{func} takes an event type, not a trait")
        if tok.kind not in (IDENT, STR):
            raise self.expected(f"an event type in {func}()", tok)
        self.advance()
        event = tok.value
        if event == "":
            raise self.error(tok, "an event type cannot be empty")
        if self.at_op("("):
            raise self.error(self.peek(), f"{func}() takes an event type, not a function call")
        prop = None
        if self.at_op("."):
            self.advance()
            prop_tok = self.peek()
            prop = self.name_after_dot("a property name")
            if not needs_prop:
                raise self.error(prop_tok, f"{func} takes an event, not a property: write {func}({name_text(event)}, ...)")
        elif needs_prop:
            raise self.error(tok, f"{func} needs a property: write {name_text(event)}.PROP")
        filt = None
        if self.at_kw("where"):
            self.advance()
            if self.peek().kind == EOF or self.at_op(",") or self.at_op(")"):
                raise self.expected('a condition after "where"')
            outer, self.in_filter = self.in_filter, True
            self.nest(tok)
            try:
                filt = self.expr()
            finally:
                self.in_filter = outer
            self.unnest()
        return A.EventSource(event, prop, filt, tok.line, tok.col)

    def window(self, func: str, example: str) -> Token:
        """``, DURATION``; returns the duration token (its value is checked by ``duration``)."""
        if not self.at_op(","):
            if self.at_op(")"):
                raise self.error(self.peek(), f'{func} needs a time window: write {example}')
            raise self.expected(f'"," and a time window in {func}()')
        self.advance()
        tok = self.peek()
        if tok.kind != QTY:
            raise self.expected('a duration after ","', tok)
        self.advance()
        return tok

    def call_generic(self, tok: Token) -> A.Expr:
        name = tok.value
        if name in EVENT_FUNCTIONS or name in PROPERTY_FUNCTIONS:
            needs_prop = name in PROPERTY_FUNCTIONS
            source = self.source(name, needs_prop)
            what = "a property and a window" if needs_prop else "an event and a window"
            shown = name_text(source.event) + ("." + name_text(source.prop) if source.prop else "")
            wtok = self.window(name, f"{name}({shown}, 7d)")
            window_ms = self.duration(wtok)
            zone, ztok = None, None
            if name == "active_days" and self.at_op(","):
                self.advance()
                ztok = self.zone_name()
                zone = ztok.value
                what = 'an event, a window and an optional time zone such as "Europe/Istanbul"'
            self.close(name, what)
            return A.Aggregate(name, source, window_ms, tok.line, tok.col, wtok.line, wtok.col,
                               zone=zone, zone_line=ztok.line if ztok else 0, zone_col=ztok.col if ztok else 0)
        if name in RFM_FUNCTIONS:
            source = self.source(name, False)
            window_ms, wline, wcol = RFM_DEFAULT_WINDOW_MS, 0, 0
            if self.at_op(","):
                self.advance()
                wtok = self.peek()
                if wtok.kind != QTY:
                    raise self.expected('a duration after ","', wtok)
                self.advance()
                window_ms, wline, wcol = self.duration(wtok), wtok.line, wtok.col
            self.close(name, "an event and an optional window")
            return A.Rfm(name, source, window_ms, tok.line, tok.col, wline, wcol)
        raise AssertionError(name)  # every other function has its own method

    def zone_name(self) -> Token:
        """After ``active_days(E, W,``: an IANA time zone name in quotes."""
        tok = self.peek()
        if tok.kind != STR:
            raise self.expected('a time zone name in quotes, such as "Europe/Istanbul"', tok)
        self.advance()
        if not is_zone(tok.value):
            raise self.error(tok, f'unknown time zone "{tok.value}": use an IANA zone name such as '
                                  '"Europe/Istanbul", "America/New_York" or "UTC"')
        return tok

    def call_affinity_score(self, tok: Token) -> A.Expr:
        return self.value_call(tok)

    def call_affinity_rank(self, tok: Token) -> A.Expr:
        return self.value_call(tok)

    def value_call(self, tok: Token) -> A.Expr:
        """``func(E.p [where F], VALUE, W)``: VALUE a literal string or number."""
        name = tok.value
        source = self.source(name, True)
        shown = name_text(source.event) + "." + name_text(source.prop)
        if not self.at_op(","):
            if self.at_op(")"):
                raise self.error(self.peek(), f'{name} needs a value and a time window: write '
                                              f'{name}({shown}, "VALUE", 7d)')
            raise self.expected(f'"," and a value in {name}()')
        self.advance()
        vtok = self.peek()
        value = self.value_literal(name, shown)
        if value.is_duration and self.at_op(")"):
            raise self.error(vtok, f'{name} needs a value before the window: write {name}({shown}, "VALUE", '
                                   f"{vtok.text})")
        wtok = self.window(name, f"{name}({shown}, {vtok.text if vtok.kind != OP else 'VALUE'}, 7d)")
        window_ms = self.duration(wtok)
        self.close(name, "a property, a value and a window")
        return A.Aggregate(name, source, window_ms, tok.line, tok.col, wtok.line, wtok.col, value=value)

    def value_literal(self, func: str, shown: str) -> A.Literal:
        tok = self.peek()
        if tok.kind == OP and tok.value == "-":
            self.advance()
            return self.negative_literal(tok, f"expected a number after the minus sign in {func}()")
        if tok.kind in (NUM, QTY, STR):
            node = self.atom()
            assert isinstance(node, A.Literal)
            return node
        if tok.kind == KW and tok.value in ("true", "false", "null"):
            raise self.error(tok, f"the value of {func}() is a string or a number, found {tok.value}: "
                                  f'write e.g. {func}({shown}, "shoes", 30d)')
        raise self.expected(f'a value (a string or a number) after "," in {func}(), as in '
                            f'{func}({shown}, "shoes", 30d)', tok)

    def call_since(self, tok: Token) -> A.Expr:
        if self.at_kw("trait"):
            self.advance()
            node = A.TraitTime("since", self.trait_name(), tok.line, tok.col)
        else:
            node = A.Since(self.source("since", False), tok.line, tok.col)
        if self.at_op(","):
            raise self.error(self.peek(), 'since takes no window (it is the time since the latest event); '
                                          'expected ")", found ","')
        self.close("since", "one event or trait.NAME")
        return node

    def call_since_first(self, tok: Token) -> A.Expr:
        node = A.SinceFirst(self.source("since_first", False), tok.line, tok.col)
        if self.at_op(","):
            raise self.error(self.peek(), 'since_first takes no window (it looks back over the retention); '
                                          'expected ")", found ","')
        self.close("since_first", "one event")
        return node

    def call_until(self, tok: Token) -> A.Expr:
        if not self.at_kw("trait"):
            raise self.expected("a timestamp trait in until(), as in until(trait.trial_end)")
        self.advance()
        node = A.TraitTime("until", self.trait_name(), tok.line, tok.col)
        self.close("until", "one trait")
        return node

    def call_exists(self, tok: Token) -> A.Expr:
        if not self.at_kw("trait"):
            raise self.expected("trait.NAME in exists() (to test for events write count(E, 30d) >= 1)")
        self.advance()
        node = A.ExistsTrait(self.trait_name(), tok.line, tok.col)
        self.close("exists", "one trait")
        return node

    def call_sequence(self, tok: Token) -> A.Expr:
        steps: list[A.EventSource] = [self.sequence_step()]
        while True:
            if self.at_op(")"):
                raise self.error(self.peek(), "sequence needs a time window as its last argument, "
                                              "e.g. sequence(a, b, 7d)")
            if not self.at_op(","):
                raise self.expected('"," in sequence()')
            self.advance()
            if self.peek().kind == QTY:
                wtok = self.advance()
                window_ms = self.duration(wtok)
                break
            steps.append(self.sequence_step())
        if len(steps) < 2:
            raise self.error(tok, "sequence needs at least two events before the window, e.g. sequence(a, b, 7d)")
        self.close("sequence", "events and then one window")
        return A.Sequence(tuple(steps), window_ms, tok.line, tok.col, wtok.line, wtok.col)

    def sequence_step(self) -> A.EventSource:
        tok = self.peek()
        if tok.kind == NUM:
            raise self.expected('an event type or a duration such as 7d', tok)
        return self.source("sequence", False)

    def call_near(self, tok: Token) -> A.Expr:
        lat = self.coordinate("a latitude", 90.0)
        self.expect_op(",", '"," after the latitude')
        lon = self.coordinate("a longitude", 180.0)
        self.expect_op(",", '"," after the longitude')
        dist = self.distance()
        self.close("near", "a latitude, a longitude and a distance")
        return A.Near(lat, lon, dist, tok.line, tok.col)

    def coordinate(self, what: str, limit: float) -> float:
        start = self.peek()
        sign = 1.0
        if self.at_op("-"):
            self.advance()
            sign = -1.0
        tok = self.peek()
        if tok.kind != NUM:
            raise self.expected(f"{what} (a number of degrees)", tok)
        self.advance()
        value = sign * tok.value
        if not -limit <= value <= limit:
            raise self.error(start, f"{what} must be between -{limit:g} and {limit:g}, found {value:g}")
        return value

    def call_segment(self, tok: Token) -> A.Expr:
        node = A.SegmentRef(self.quoted_name("segment", "a segment name", "vip"), tok.line, tok.col)
        self.close("segment", "one segment name")
        return node

    def call_score(self, tok: Token) -> A.Expr:
        return self.model_call(tok)

    def call_bucket(self, tok: Token) -> A.Expr:
        return self.model_call(tok)

    def call_likely(self, tok: Token) -> A.Expr:
        model = self.quoted_name("likely", "a model name", "purchase_7d")
        self.expect_op(",", '"," and a precision level such as 0.8 after the model name')
        ptok = self.peek()
        if ptok.kind != NUM:
            raise self.expected("a precision level between 0 and 1 (0.8 means 80 %)", ptok)
        self.advance()
        if not 0.0 <= ptok.value <= 1.0:
            raise self.error(ptok, f"the precision level must be between 0 and 1 (0.8 means 80 %), found {ptok.text}")
        self.close("likely", "a model name and a precision level")
        return A.ModelCall("likely", model, ptok.value, tok.line, tok.col)

    def model_call(self, tok: Token) -> A.Expr:
        name = tok.value
        model = self.quoted_name(name, "a model name", "churn_14d")
        self.close(name, "one model name")
        return A.ModelCall(name, model, None, tok.line, tok.col)
