"""The typed syntax tree of segment expressions (see ../shared/spec/EXPRESSIONS.md).

Every node is a frozen dataclass with ``line``/``col`` (1-based) of its first token. The
parser builds these; the type checker, the compiler and the reference evaluator read them.

Inside a ``where`` filter the same node classes are used, with ``PropRef`` and ``Literal``
leaves and ``ExistsProp`` instead of calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

# ----------------------------------------------------------------------------- leaves


@dataclass(frozen=True)
class Literal:
    """A number, string, bool or null. Durations are numbers (ms) with ``is_duration`` set;
    distances (only in ``near``) are numbers in metres with ``is_distance`` set."""

    value: float | str | bool | None
    line: int = 0
    col: int = 0
    is_duration: bool = False
    is_distance: bool = False

    @property
    def kind(self) -> str:
        if self.value is None:
            return "null"
        if isinstance(self.value, bool):
            return "bool"
        if isinstance(self.value, str):
            return "string"
        return "number"


@dataclass(frozen=True)
class TraitRef:
    """``trait.NAME``: the user's trait value, null if unset."""

    name: str
    line: int = 0
    col: int = 0


@dataclass(frozen=True)
class PropRef:
    """A property of the event inside a ``where`` filter; ``value`` is the event's value."""

    name: str
    line: int = 0
    col: int = 0


# ----------------------------------------------------------------------------- operators


@dataclass(frozen=True)
class Neg:
    operand: "Expr"
    line: int = 0
    col: int = 0


@dataclass(frozen=True)
class Not:
    operand: "Expr"
    line: int = 0
    col: int = 0


@dataclass(frozen=True)
class Arith:
    """``op`` is one of ``+ - * /``."""

    op: str
    left: "Expr"
    right: "Expr"
    line: int = 0
    col: int = 0


@dataclass(frozen=True)
class Compare:
    """``op`` is one of ``== != < <= > >=``."""

    op: str
    left: "Expr"
    right: "Expr"
    line: int = 0
    col: int = 0


@dataclass(frozen=True)
class In:
    """``operand [not] in [items]``; items are literals."""

    operand: "Expr"
    items: tuple[Literal, ...]
    negated: bool = False
    line: int = 0
    col: int = 0


@dataclass(frozen=True)
class Between:
    """``operand between low and high``, inclusive at both ends."""

    operand: "Expr"
    low: "Expr"
    high: "Expr"
    line: int = 0
    col: int = 0


@dataclass(frozen=True)
class BoolOp:
    """``op`` is ``and`` or ``or``; ``operands`` has two or more items (flattened)."""

    op: str
    operands: tuple["Expr", ...]
    line: int = 0
    col: int = 0


# ----------------------------------------------------------------------------- calls


@dataclass(frozen=True)
class EventSource:
    """The event argument of an aggregate: ``EVENT[.PROP] [where FILTER]``."""

    event: str
    prop: str | None = None
    filter: "Expr | None" = None
    line: int = 0
    col: int = 0


AGGREGATES = ("count", "sum", "avg", "min", "max", "distinct", "top_count", "active_days", "affinity",
              "affinity_score", "affinity_rank")


@dataclass(frozen=True)
class Aggregate:
    """``func(source, window)``, func in AGGREGATES. ``count`` and ``active_days`` take an
    event without a property; the others need ``source.prop``.

    Extensions (docs/expressions.md, "Extensions of the spec"): ``affinity_score`` and
    ``affinity_rank`` are ``func(source, VALUE, window)`` with ``value`` the literal VALUE
    (a string or a number); ``active_days(source, window, "ZONE")`` has ``zone``, an IANA time
    zone name whose local calendar days are counted (None: UTC days)."""

    func: str
    source: EventSource
    window_ms: int
    line: int = 0
    col: int = 0
    # Position of the window literal, for errors about the window (0 when absent or implied);
    # not part of equality, like every position in practice.
    window_line: int = field(default=0, compare=False)
    window_col: int = field(default=0, compare=False)
    value: "Literal | None" = None
    zone: str | None = None
    # Position of the zone string, for errors about the zone (0 when absent).
    zone_line: int = field(default=0, compare=False)
    zone_col: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Since:
    """``since(E [where F])``: now - t of the latest matching event with t <= now; +inf if none."""

    source: EventSource
    line: int = 0
    col: int = 0


@dataclass(frozen=True)
class SinceFirst:
    """``since_first(E [where F])``: now - t of the earliest retained matching event."""

    source: EventSource
    line: int = 0
    col: int = 0


@dataclass(frozen=True)
class TraitTime:
    """``since(trait.NAME)`` (``func == "since"``: now - trait) or ``until(trait.NAME)``
    (``func == "until"``: trait - now)."""

    func: str
    name: str
    line: int = 0
    col: int = 0


@dataclass(frozen=True)
class Sequence:
    """``sequence(E1, ..., En, W)`` with n >= 2."""

    steps: tuple[EventSource, ...]
    window_ms: int
    line: int = 0
    col: int = 0
    # Position of the window literal, for errors about the window (0 when absent or implied);
    # not part of equality, like every position in practice.
    window_line: int = field(default=0, compare=False)
    window_col: int = field(default=0, compare=False)


@dataclass(frozen=True)
class ExistsTrait:
    name: str
    line: int = 0
    col: int = 0


@dataclass(frozen=True)
class ExistsProp:
    """``exists(PROP)`` inside a filter."""

    name: str
    line: int = 0
    col: int = 0


@dataclass(frozen=True)
class Near:
    lat: float
    lon: float
    distance_m: float
    line: int = 0
    col: int = 0


@dataclass(frozen=True)
class SegmentRef:
    name: str
    line: int = 0
    col: int = 0


@dataclass(frozen=True)
class Rfm:
    """``rfm_r/rfm_f/rfm_m/rfm_tier(E [, W])``; ``window_ms`` defaults to 365d."""

    func: str
    source: EventSource
    window_ms: int
    line: int = 0
    col: int = 0
    # Position of the window literal, for errors about the window (0 when absent or implied);
    # not part of equality, like every position in practice.
    window_line: int = field(default=0, compare=False)
    window_col: int = field(default=0, compare=False)


@dataclass(frozen=True)
class ModelCall:
    """``score("M")``, ``bucket("M")``, ``likely("M", P)`` (``precision`` only for likely)."""

    func: str
    model: str
    precision: float | None = None
    line: int = 0
    col: int = 0


Expr = Union[
    Literal, TraitRef, PropRef, Neg, Not, Arith, Compare, In, Between, BoolOp, Aggregate, Since,
    SinceFirst, TraitTime, Sequence, ExistsTrait, ExistsProp, Near, SegmentRef, Rfm, ModelCall,
]

DAY_MS = 86_400_000
