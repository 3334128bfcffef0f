"""AST -> canonical text, and small walkers over the tree.

``parse(unparse(e))`` equals ``e`` up to positions for every tree the parser produces:
operators get exactly the parentheses their precedence needs, names are quoted only when
they are not identifiers, durations use the largest exact unit.
"""

from __future__ import annotations

import dataclasses
import math
from decimal import Decimal
from typing import Iterator

from engine.expr import ast as A
from engine.expr._lexer import DISTANCE_UNITS_M, is_identifier
from engine.expr._parser import RFM_DEFAULT_WINDOW_MS, duration_text, name_text, quote

# Binding strength, loosest first (the grammar's levels).
_OR, _AND, _NOT, _CMP, _ADD, _MUL, _UNARY, _ATOM = range(1, 9)


def unparse(expr: A.Expr) -> str:
    """The canonical text of ``expr``."""
    return _text(expr, 0)


def _level(node) -> int:
    if isinstance(node, A.BoolOp):
        return _OR if node.op == "or" else _AND
    if isinstance(node, A.Not):
        return _NOT
    if isinstance(node, (A.Compare, A.In, A.Between)):
        return _CMP
    if isinstance(node, A.Arith):
        return _ADD if node.op in "+-" else _MUL
    if isinstance(node, A.Neg):
        return _UNARY
    if isinstance(node, A.Literal) and _is_negative(node):
        return _UNARY
    return _ATOM


def _is_negative(lit: A.Literal) -> bool:
    v = lit.value
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (v < 0 or math.copysign(1.0, v) < 0)


def _text(node, min_level: int) -> str:
    s = _bare(node)
    return f"({s})" if _level(node) < min_level else s


def _bare(node) -> str:
    if isinstance(node, A.BoolOp):
        inner = _AND if node.op == "or" else _NOT  # nested same-op BoolOps keep their parentheses
        return f" {node.op} ".join(_text(o, inner) for o in node.operands)
    if isinstance(node, A.Not):
        return "not " + _text(node.operand, _NOT)
    if isinstance(node, A.Compare):
        return f"{_text(node.left, _ADD)} {node.op} {_text(node.right, _ADD)}"
    if isinstance(node, A.In):
        items = ", ".join(literal_text(i) for i in node.items)
        return f"{_text(node.operand, _ADD)} {'not in' if node.negated else 'in'} [{items}]"
    if isinstance(node, A.Between):
        return (f"{_text(node.operand, _ADD)} between {_text(node.low, _ADD)} "
                f"and {_text(node.high, _ADD)}")
    if isinstance(node, A.Arith):
        own = _level(node)
        return f"{_text(node.left, own)} {node.op} {_text(node.right, own + 1)}"
    if isinstance(node, A.Neg):
        return "-" + _text(node.operand, _UNARY)
    if isinstance(node, A.Literal):
        return literal_text(node)
    if isinstance(node, A.TraitRef):
        return "trait." + name_text(node.name)
    if isinstance(node, A.PropRef):
        return node.name if is_identifier(node.name) else f"prop({quote(node.name)})"
    if isinstance(node, A.ExistsProp):
        return f"exists({name_text(node.name)})"
    if isinstance(node, A.ExistsTrait):
        return f"exists(trait.{name_text(node.name)})"
    if isinstance(node, A.Aggregate):
        value = "" if node.value is None else literal_text(node.value) + ", "
        zone = "" if node.zone is None else ", " + quote(node.zone)
        return f"{node.func}({_source(node.source)}, {value}{duration_text(node.window_ms)}{zone})"
    if isinstance(node, A.Since):
        return f"since({_source(node.source)})"
    if isinstance(node, A.SinceFirst):
        return f"since_first({_source(node.source)})"
    if isinstance(node, A.TraitTime):
        return f"{node.func}(trait.{name_text(node.name)})"
    if isinstance(node, A.Sequence):
        steps = ", ".join(_source(s) for s in node.steps)
        return f"sequence({steps}, {duration_text(node.window_ms)})"
    if isinstance(node, A.Near):
        return f"near({_number(node.lat)}, {_number(node.lon)}, {distance_text(node.distance_m)})"
    if isinstance(node, A.SegmentRef):
        return f"segment({quote(node.name)})"
    if isinstance(node, A.Rfm):
        window = "" if node.window_ms == RFM_DEFAULT_WINDOW_MS else ", " + duration_text(node.window_ms)
        return f"{node.func}({_source(node.source)}{window})"
    if isinstance(node, A.ModelCall):
        if node.func == "likely":
            return f"likely({quote(node.model)}, {_number(node.precision)})"
        return f"{node.func}({quote(node.model)})"
    raise TypeError(f"not an expression node: {node!r}")


def _source(src: A.EventSource) -> str:
    s = name_text(src.event)
    if src.prop is not None:
        s += "." + name_text(src.prop)
    if src.filter is not None:
        s += " where " + _text(src.filter, 0)
    return s


def literal_text(lit: A.Literal) -> str:
    v = lit.value
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return quote(v)
    if lit.is_duration:
        return ("-" + duration_text(-int(v))) if v < 0 else duration_text(int(v))
    if lit.is_distance:
        return distance_text(v)
    return _number(v)


def _number(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if math.copysign(1.0, v) < 0:
        return "-" + _number(-v)
    if v.is_integer() and v < 1e16:
        return str(int(v))
    return repr(float(v))


def _positional(v: float) -> str:
    """Shortest round-tripping text of ``v`` without an exponent (a unit may follow it)."""
    s = format(Decimal(repr(float(v))), "f")
    return s[:-2] if s.endswith(".0") else s


def distance_text(metres: float) -> str:
    """Metres in the largest unit that expresses them exactly (``5000`` -> ``5km``)."""
    for unit in ("mi", "km"):
        size = DISTANCE_UNITS_M[unit]
        k = round(metres / size)
        if k > 0 and k * size == metres:
            return f"{k}{unit}"
    return _positional(metres) + "m"


# ----------------------------------------------------------------------------- walkers


def _children(node) -> Iterator:
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if isinstance(value, tuple):
            yield from (v for v in value if dataclasses.is_dataclass(v))
        elif dataclasses.is_dataclass(value):
            yield value


def walk(expr) -> Iterator:
    """Every node of ``expr``, depth-first, parents before children (EventSources, filters and
    list items included)."""
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(list(_children(node))))


def segment_refs(expr) -> set[str]:
    """Names of the segments ``expr`` references with segment("NAME")."""
    return {n.name for n in walk(expr) if isinstance(n, A.SegmentRef)}


def event_types(expr) -> set[str]:
    """Event types ``expr`` reads (aggregates, since, sequence, rfm)."""
    return {n.event for n in walk(expr) if isinstance(n, A.EventSource)}


def trait_names(expr) -> set[str]:
    """Traits ``expr`` reads; near() reads the traits ``lat`` and ``lon``."""
    names: set[str] = set()
    for n in walk(expr):
        if isinstance(n, (A.TraitRef, A.TraitTime, A.ExistsTrait)):
            names.add(n.name)
        elif isinstance(n, A.Near):
            names.update(("lat", "lon"))
    return names


def strip_positions(expr):
    """A copy of ``expr`` with every position (line, col, window_line, window_col, zone_line,
    zone_col) set to 0."""
    changes = {}
    for f in dataclasses.fields(expr):
        value = getattr(expr, f.name)
        if f.name in ("line", "col", "window_line", "window_col", "zone_line", "zone_col"):
            changes[f.name] = 0
        elif isinstance(value, tuple):
            changes[f.name] = tuple(strip_positions(v) if dataclasses.is_dataclass(v) else v for v in value)
        elif dataclasses.is_dataclass(value):
            changes[f.name] = strip_positions(value)
    return dataclasses.replace(expr, **changes)
