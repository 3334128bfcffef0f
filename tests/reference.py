"""The reference evaluator: slow, obviously correct, and the truth the engine is checked against.

``ReferenceEngine`` offers the embedded API of ``engine.Engine`` (spec/API.md) and follows
spec/EXPRESSIONS.md and docs/semantics.md to the letter, with none of the engine's machinery:

* per user, one plain list of events in (timestamp, arrival) order and a dict of traits;
* at every evaluation point (after every operation) EVERY segment is evaluated for EVERY
  known user from scratch, by walking the AST, at the clock's ``now``;
* deltas are the difference between the previous and the new membership.

There are no timers: a time-driven change simply shows up at the next evaluation point, which
is exactly what docs/semantics.md asks of the engine ("a timer never fires late with respect
to an evaluation point").

Models: ``deploy_model`` gives the reference a model as a plain function from feature values
to probabilities. A user's score is computed from the reference's own evaluation of the
feature expressions, at these moments only (docs/predictive.md): for every known user when
the model is deployed and at ``rescore()``, and for a user whose batch brings an event of a
type that a feature reads, or whose update sets a trait that a feature reads. ``score``,
``bucket`` and ``likely`` read those scores.

RFM (``rfm_*``): the reference keeps each source's boundaries, computed from its own
evaluation of ``count(E, W)``, ``since(E)`` and ``sum(E.value, W)`` over every known user with
an ``E`` in ``W``, by sorting (boundary k is the value at index ``floor(k * n / 5)``, recency
taken as ``-since``), at the moments the engine computes them: before a segment (or a
replacement) first reads a source, at ``recompute_rfm()``, and after any operation that leaves
the clock ``rfm_interval`` (default 60 s, ``0``: never) past the last tick of the schedule
(then everything is evaluated again, changes with cause TIME; a tick while no segment reads
a source does nothing but start the next interval). A score is 1 plus the number of
boundaries the value reaches (recency: ``since <= boundary``); the tier comes from the table
of EXPRESSIONS.md.
"""

from __future__ import annotations

import bisect
import datetime
import math
import re
import time
import zoneinfo
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from engine.errors import ClockError, ConfigError, ExpressionError, SegmentExists, SegmentInUse, UnknownSegment
from engine.expr import ast as A

DAY_MS = A.DAY_MS
EARTH_RADIUS_M = 6_371_008.8
INF = math.inf
DEFAULT_MAX_EVENTS_PER_TYPE = 4096

_DURATION_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": DAY_MS, "w": 7 * DAY_MS}
_DURATION_RE = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")

EVENT_FIELDS = frozenset({"user_id", "type", "timestamp_ms", "value", "properties"})

# EXPRESSIONS.md's RFM map: tier -> (R scores, F scores)
RFM_TIERS = {
    "champions": ({5}, {4, 5}), "loyal": ({3, 4}, {4, 5}), "potential_loyalist": ({4, 5}, {2, 3}),
    "new_customer": ({5}, {1}), "promising": ({4}, {1}), "need_attention": ({3}, {3}),
    "about_to_sleep": ({3}, {1, 2}), "at_risk": ({1, 2}, {3, 4}), "cannot_lose": ({1, 2}, {5}),
    "hibernating": ({2}, {1, 2}), "lost": ({1}, {1, 2}),
}

ENTER, EXIT = "ENTER", "EXIT"
EVENT, TIME, TRAIT = "EVENT", "TIME", "TRAIT"
SEGMENT_CREATED, SEGMENT_DELETED, USER_DELETED = "SEGMENT_CREATED", "SEGMENT_DELETED", "USER_DELETED"

_AST_TYPES = tuple(
    getattr(A, n)
    for n in (
        "Literal TraitRef PropRef Neg Not Arith Compare In Between BoolOp Aggregate Since SinceFirst "
        "TraitTime Sequence ExistsTrait ExistsProp Near SegmentRef Rfm ModelCall"
    ).split()
)


def parse_duration_ms(value: str | int) -> int:
    """``"30d"`` or an int number of milliseconds -> int milliseconds."""
    if isinstance(value, bool):
        raise ConfigError(f"not a duration: {value!r}")
    if isinstance(value, int):
        return value
    m = _DURATION_RE.match(str(value).strip())
    if not m:
        raise ConfigError(f"not a duration: {value!r} (use e.g. 30d, 12h, 250ms or an int of ms)")
    return int(m.group(1)) * _DURATION_UNITS_MS[m.group(2)]


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Rejection:
    index: int
    reason: str


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    rejected: int
    rejections: list[Rejection]
    now_ms: int


@dataclass(frozen=True)
class Delta:
    sequence: int
    segment: str
    user_id: str
    kind: str  # "ENTER" / "EXIT"
    at_ms: int
    cause: str  # the proto enum name, e.g. "EVENT"


@dataclass(frozen=True)
class SegmentInfo:
    name: str
    expression: str
    size: int


@dataclass(frozen=True)
class _Event:
    type: str
    t: int
    arrival: int  # global arrival counter: ties on t keep arrival order
    value: float
    props: Mapping[str, Any]  # only present properties; numbers are floats

    @property
    def order(self) -> tuple[int, int]:
        return (self.t, self.arrival)


@dataclass
class _User:
    events: list[_Event] = field(default_factory=list)  # kept events, sorted by (t, arrival)
    traits: dict[str, Any] = field(default_factory=dict)
    type_counts: Counter = field(default_factory=Counter)  # kept events per type


@dataclass
class _Segment:
    name: str
    text: str
    tree: Any
    deps: frozenset[str]
    created: int  # creation counter, the tie-break of the dependency order


@dataclass
class _Model:
    features: list[Any]                       # checked ASTs
    predict: Callable[[list[list[Any]]], list[float]]
    bucket_high: float
    bucket_medium: float
    threshold: Callable[[float], float] | None
    types: frozenset[str]                     # event types the features read
    traits: frozenset[str]                    # traits the features read
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class _Ctx:
    """What an expression is evaluated against: one user at one ``now``."""

    user: _User
    now: int
    visible: list[_Event]  # kept, retained (t > now - retention) and t <= now, in order
    members: Mapping[str, set[str]]  # memberships of the segments evaluated so far
    user_id: str
    event: _Event | None = None  # set inside a ``where`` filter


# ----------------------------------------------------------------------------- values


def kind_of(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (int, float)):
        return "number"
    raise TypeError(f"not a value: {v!r}")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _norm(v: Any) -> Any:
    """Numbers become floats (-0.0 folded into 0.0); other kinds stay."""
    if _is_num(v):
        return float(v) + 0.0
    return v


def _key(v: Any) -> tuple[str, Any]:
    """Grouping key: values of different kinds never compare equal (``"1" != 1 != true``)."""
    return (kind_of(v), _norm(v))


def _compare(op: str, a: Any, b: Any) -> bool | None:
    if a is None or b is None:
        return None
    if kind_of(a) != kind_of(b):
        return False
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    if not _is_num(a):
        return False  # ordering of non-numbers is false
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    if op == ">=":
        return a >= b
    raise ValueError(f"unknown comparison {op!r}")


def _arith(op: str, a: Any, b: Any) -> float | None:
    if not (_is_num(a) and _is_num(b)):
        return None  # null operand, or a non-number at run time
    a, b = float(a), float(b)
    if op == "+":
        r = a + b
    elif op == "-":
        r = a - b
    elif op == "*":
        r = a * b
    elif op == "/":
        if b == 0.0:
            return None
        r = a / b
    else:
        raise ValueError(f"unknown operator {op!r}")
    return None if math.isnan(r) else r + 0.0


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = math.radians(lat2 - lat1)
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2.0 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def _walk(node: Any):
    """Every AST node under ``node`` (itself included)."""
    yield node
    if isinstance(node, (list, tuple)):
        for x in node:
            yield from _walk(x)
        return
    if not isinstance(node, _AST_TYPES + (A.EventSource,)):
        return
    for name in node.__dataclass_fields__:
        child = getattr(node, name)
        if isinstance(child, _AST_TYPES + (A.EventSource, tuple, list)):
            yield from _walk(child)


# ----------------------------------------------------------------------------- engine


class ReferenceEngine:
    """The embedded API of ``engine.Engine`` on top of a from-scratch evaluator."""

    def __init__(
        self,
        clock: str = "event",
        retention: str | int = "30d",
        max_events_per_type: int = DEFAULT_MAX_EVENTS_PER_TYPE,
        wall_clock_ms: Callable[[], int] | None = None,
        rfm_interval: str | int = "60s",
    ):
        if clock not in ("event", "wall"):
            raise ConfigError(f"clock must be 'event' or 'wall', not {clock!r}")
        if max_events_per_type < 1:
            raise ConfigError("max_events_per_type must be at least 1")
        self.clock = clock
        self.retention_ms = parse_duration_ms(retention)
        self.max_events_per_type = int(max_events_per_type)
        self._wall = wall_clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._now = 0
        self._users: dict[str, _User] = {}
        self._segments: dict[str, _Segment] = {}
        self._members: dict[str, set[str]] = {}
        self._log: list[Delta] = []
        self._arrivals = 0
        self._created = 0
        self.events_dropped = 0
        self._models: dict[str, _Model] = {}
        self.rfm_interval_ms = 0 if rfm_interval in (0, "0", "off") else parse_duration_ms(rfm_interval)
        self._rfm: dict[str, list[float]] = {}     # key -> 12 boundaries ([]: empty population)
        self._rfm_last: int | None = None
        self._in_rfm = False

    # ------------------------------------------------------------------ clock

    @property
    def now_ms(self) -> int:
        return self._now

    def _tick(self) -> None:
        """Start of an operation: the wall clock is read once per operation."""
        if self.clock == "wall":
            self._now = max(self._now, int(self._wall()))

    def advance_clock(self, now_ms: int) -> int:
        if self.clock != "event":
            raise ClockError("advance_clock needs the event clock (clock='event')")
        self._now = max(self._now, int(now_ms))
        self._commit(lambda seg, uid: TIME)
        return self._now

    # ------------------------------------------------------------------ ingest

    def ingest(self, events: Iterable[Mapping[str, Any]]) -> IngestResult:
        return self._ingest_rows(list(events))

    def ingest_columns(self, user_id, type, timestamp_ms, value=None, properties=None) -> IngestResult:  # noqa: A002
        n = len(user_id)
        columns = {"type": type, "timestamp_ms": timestamp_ms}
        if value is not None:
            columns["value"] = value
        for name, col in {**columns, **{f"properties[{k}]": v for k, v in (properties or {}).items()}}.items():
            if len(col) != n:
                raise ValueError(f"column {name} has {len(col)} rows, user_id has {n}: columns must have equal length")
        rows = []
        for i in range(n):
            row: dict[str, Any] = {
                "user_id": _py(user_id[i]),
                "type": _py(type[i]),
                "timestamp_ms": _py(timestamp_ms[i]),
            }
            if value is not None:
                row["value"] = _py(value[i])
            props = {}
            for name, col in (properties or {}).items():
                v = _py(col[i])
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    props[name] = v
            row["properties"] = props
            rows.append(row)
        return self._ingest_rows(rows)

    def _validate_event(self, ev: Any, now_before: int) -> str | None:
        """The rejection reason of one event, or None if it is accepted."""
        if not isinstance(ev, Mapping):
            return "an event must be a dict"
        unknown = set(ev) - EVENT_FIELDS
        if unknown:
            return f"unknown field(s) {sorted(map(str, unknown))}"
        uid = ev.get("user_id")
        if not isinstance(uid, str) or not uid:
            return "user_id must be a non-empty string"
        etype = ev.get("type")
        if not isinstance(etype, str) or not etype:
            return "type must be a non-empty string"
        ts = ev.get("timestamp_ms")
        if not isinstance(ts, int) or isinstance(ts, bool):
            return "timestamp_ms must be an integer (ms since the epoch)"
        value = ev.get("value", 0.0)
        if value is not None and (not _is_num(value) or not math.isfinite(value)):
            return "value must be a finite number"
        props = ev.get("properties") or {}
        if not isinstance(props, Mapping):
            return "properties must be a dict"
        for k, v in props.items():
            if not isinstance(k, str) or not k:
                return "property names must be non-empty strings"
            if k == "value":
                return 'a property may not be named "value": use the event\'s value field'
            if v is not None and not isinstance(v, (str, bool, int, float)):
                return f"property {k!r} must be a string, number or bool"
        if ts <= now_before - self.retention_ms:
            return "timestamp_ms is older than the retention"
        return None

    def _ingest_rows(self, rows: list[Any]) -> IngestResult:
        self._tick()
        now_before = self._now
        rejections: list[Rejection] = []
        touched: set[str] = set()
        touched_types: set[tuple[str, str]] = set()
        newest = None
        for i, ev in enumerate(rows):
            ev = _py_row(ev)
            reason = self._validate_event(ev, now_before)
            if reason is not None:
                rejections.append(Rejection(i, reason))
                continue
            props = {}
            for k, v in (ev.get("properties") or {}).items():
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    continue  # absent
                props[k] = _norm(v)
            value = ev.get("value")
            self._arrivals += 1
            self._store(
                ev["user_id"],
                _Event(ev["type"], int(ev["timestamp_ms"]), self._arrivals, 0.0 if value is None else _norm(value), props),
            )
            touched.add(ev["user_id"])
            touched_types.add((ev["user_id"], ev["type"]))
            newest = int(ev["timestamp_ms"]) if newest is None else max(newest, int(ev["timestamp_ms"]))
        if self.clock == "event" and newest is not None:
            self._now = max(self._now, newest)
        for m in self._models.values():
            self._score(m, sorted({u for u, t in touched_types if t in m.types}))
        self._commit(lambda seg, uid: EVENT if uid in touched else TIME)
        return IngestResult(len(rows) - len(rejections), len(rejections), rejections, self._now)

    def _store(self, uid: str, ev: _Event) -> None:
        user = self._users.setdefault(uid, _User())
        bisect.insort(user.events, ev, key=lambda e: e.order)
        user.type_counts[ev.type] += 1
        if user.type_counts[ev.type] > self.max_events_per_type:
            # the oldest of that type goes; when the new event is the oldest, it is the one
            oldest = next(e for e in user.events if e.type == ev.type)
            user.events.remove(oldest)
            user.type_counts[ev.type] -= 1
            self.events_dropped += 1

    # ------------------------------------------------------------------ traits

    def set_traits(self, user_id: str, traits: Mapping[str, Any], timestamp_ms: int | None = None) -> IngestResult:
        self._tick()
        reason = None
        if not isinstance(user_id, str) or not user_id:
            reason = "user_id must be a non-empty string"
        elif not isinstance(traits, Mapping):
            reason = "traits must be a dict"
        elif timestamp_ms is not None and (not isinstance(timestamp_ms, int) or isinstance(timestamp_ms, bool)):
            reason = "timestamp_ms must be an integer or None"
        else:
            for k, v in traits.items():
                if not isinstance(k, str) or not k:
                    reason = "trait names must be non-empty strings"
                elif v is not None and not isinstance(_py(v), (str, bool, int, float)):
                    reason = f"trait {k!r} must be a string, number, bool or None (unset)"
        if reason is not None:
            self._commit(lambda seg, uid: TIME)
            return IngestResult(0, 1, [Rejection(0, reason)], self._now)
        user = self._users.setdefault(user_id, _User())
        for k, v in traits.items():
            v = _py(v)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                user.traits.pop(k, None)
            else:
                user.traits[k] = _norm(v)
        if self.clock == "event" and timestamp_ms is not None:
            self._now = max(self._now, int(timestamp_ms))
        for m in self._models.values():
            if m.traits & set(traits):
                self._score(m, [user_id])
        self._commit(lambda seg, uid: TRAIT if uid == user_id else TIME)
        return IngestResult(1, 0, [], self._now)

    # ------------------------------------------------------------------ users

    def delete_user(self, user_id: str) -> None:
        self._tick()
        if user_id in self._users:
            for name in self._order():
                if user_id in self._members[name]:
                    self._members[name].discard(user_id)
                    self._emit(name, user_id, EXIT, USER_DELETED)
            del self._users[user_id]
            for m in self._models.values():
                m.scores.pop(user_id, None)
        self._commit(lambda seg, uid: TIME)

    # ------------------------------------------------------------------ models

    def deploy_model(self, name: str, features: list[str], predict: Callable[[list[list[Any]]], list[float]], *,
                     bucket_high: float = 0.75, bucket_medium: float = 0.5,
                     threshold: Callable[[float], float] | None = None) -> None:
        """(Re)deploy a model: ``predict`` maps rows of raw feature values (as ``evaluate``
        returns them) to probabilities. Everyone is scored; changes have cause MODEL_UPDATED."""
        from engine.expr import check, parse, event_types, trait_names

        trees = []
        for text in features:
            tree = parse(text)
            check(tree, retention_ms=self.retention_ms, condition=False)
            trees.append(tree)
        types = frozenset().union(*(event_types(t) for t in trees)) if trees else frozenset()
        traits = frozenset().union(*(trait_names(t) for t in trees)) if trees else frozenset()
        self._models[name] = _Model(trees, predict, bucket_high, bucket_medium, threshold, types, traits)
        self._score(self._models[name], self.known_users())
        self._commit(lambda seg, uid: "MODEL_UPDATED")

    def rescore(self) -> None:
        """Score every known user with every model, now (changes have cause TIME)."""
        self._tick()
        for m in self._models.values():
            self._score(m, self.known_users())
        self._commit(lambda seg, uid: TIME)

    def scores(self, user_id: str) -> dict[str, float]:
        return {n: m.scores[user_id] for n, m in self._models.items() if user_id in m.scores}

    def _score(self, m: _Model, users: list[str]) -> None:
        if not users:
            return
        rows = [[self.evaluate(u, f) for f in m.features] for u in users]
        for u, p in zip(users, m.predict(rows)):
            if math.isfinite(p):
                m.scores[u] = float(p)
            else:                       # a model that gives no number leaves the user unscored
                m.scores.pop(u, None)

    def known_users(self) -> list[str]:
        return sorted(self._users)

    def user_segments(self, user_id: str) -> list[str]:
        return sorted(name for name, m in self._members.items() if user_id in m)

    def traits(self, user_id: str) -> dict[str, Any]:
        user = self._users.get(user_id)
        return dict(user.traits) if user else {}

    # ------------------------------------------------------------------ segments

    def create_segment(self, name: str, text: Any) -> SegmentInfo:
        if name in self._segments:
            raise SegmentExists(f'segment "{name}" already exists (use replace_segment to change it)')
        tree, deps = self._compile(name, text, replacing=False)
        self._tick()
        self._rfm_first_use(tree)
        self._created += 1
        self._segments[name] = _Segment(name, text if isinstance(text, str) else repr(text), tree, deps, self._created)
        self._members[name] = set()
        affected = self._dependents(name)
        self._commit(lambda seg, uid: SEGMENT_CREATED if seg in affected else TIME)
        return SegmentInfo(name, self._segments[name].text, len(self._members[name]))

    def replace_segment(self, name: str, text: Any) -> SegmentInfo:
        if name not in self._segments:
            raise UnknownSegment(f'no segment named "{name}"')
        tree, deps = self._compile(name, text, replacing=True)
        self._tick()
        self._rfm_first_use(tree)
        seg = self._segments[name]
        seg.text, seg.tree, seg.deps = (text if isinstance(text, str) else repr(text)), tree, deps
        affected = self._dependents(name)
        self._commit(lambda s, uid: SEGMENT_CREATED if s in affected else TIME)
        return SegmentInfo(name, seg.text, len(self._members[name]))

    def delete_segment(self, name: str) -> SegmentInfo:
        if name not in self._segments:
            raise UnknownSegment(f'no segment named "{name}"')
        users = [s for s in self._segments.values() if name in s.deps]
        if users:
            raise SegmentInUse(f'segment "{name}" is used by {sorted(s.name for s in users)}; delete those first')
        self._tick()
        seg = self._segments[name]
        info = SegmentInfo(name, seg.text, len(self._members[name]))
        for uid in sorted(self._members[name]):
            self._emit(name, uid, EXIT, SEGMENT_DELETED)
        del self._segments[name], self._members[name]
        self._commit(lambda s, uid: TIME)
        return info

    def members(self, name: str) -> set[str]:
        if name not in self._segments:
            raise UnknownSegment(f'no segment named "{name}"')
        return set(self._members[name])

    def segment_names(self) -> list[str]:
        return list(self._order())

    def segment_text(self, name: str) -> str:
        return self._segments[name].text

    # ------------------------------------------------------------------ deltas and stats

    def deltas(self, after_sequence: int = 0) -> list[Delta]:
        return [d for d in self._log if d.sequence > after_sequence]

    def stats(self) -> dict[str, int]:
        return {
            "users": len(self._users),
            "segments": len(self._segments),
            "events": sum(len(u.events) for u in self._users.values()),
            "events_dropped": self.events_dropped,
        }

    # ------------------------------------------------------------------ evaluation points

    def _order(self) -> list[str]:
        """Segment names, dependencies first, then by creation."""
        done: list[str] = []
        left = sorted(self._segments.values(), key=lambda s: s.created)
        while left:
            ready = next(s for s in left if s.deps <= set(done))
            done.append(ready.name)
            left.remove(ready)
        return done

    def _dependents(self, name: str) -> set[str]:
        """``name`` and every segment that references it, directly or not."""
        out = {name}
        grew = True
        while grew:
            grew = False
            for s in self._segments.values():
                if s.name not in out and s.deps & out:
                    out.add(s.name)
                    grew = True
        return out

    def _emit(self, segment: str, user_id: str, kind: str, cause: str) -> None:
        self._log.append(Delta(len(self._log) + 1, segment, user_id, kind, self._now, cause))

    def _commit(self, cause_of: Callable[[str, str], str]) -> None:
        """Re-evaluate every segment for every known user; emit the difference."""
        new: dict[str, set[str]] = {}
        for name in self._order():
            tree = self._segments[name].tree
            new[name] = {uid for uid in self._users if self._holds(tree, uid, new)}
            old = self._members.get(name, set())
            for uid in sorted(old ^ new[name]):
                self._emit(name, uid, ENTER if uid in new[name] else EXIT, cause_of(name, uid))
        self._members = new
        if (not self._in_rfm and self.rfm_interval_ms
                and (self._rfm_last is None or self._now - self._rfm_last >= self.rfm_interval_ms)):
            keys = self._rfm_keys()
            self._rfm_last = self._now          # a tick without sources only starts the next interval
            if keys:
                self._in_rfm = True
                try:
                    self._compute_rfm(keys)
                    self._commit(lambda seg, uid: TIME)
                finally:
                    self._in_rfm = False

    # ------------------------------------------------------------------ rfm

    def recompute_rfm(self) -> None:
        """Every source's boundaries now (changes have cause TIME)."""
        self._tick()
        self._compute_rfm(self._rfm_keys())
        self._rfm_last = self._now
        self._in_rfm = True
        try:
            self._commit(lambda seg, uid: TIME)
        finally:
            self._in_rfm = False

    def _rfm_first_use(self, tree) -> None:
        missing = {k: n for k, n in self._rfm_keys([tree]).items() if k not in self._rfm}
        if missing:
            self._compute_rfm(missing)

    def rfm_bounds(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in self._rfm.items()}

    def _rfm_keys(self, trees=None) -> dict[str, A.Rfm]:
        from engine._rfm import key_of      # a key names a source; the rest is computed here

        out: dict[str, A.Rfm] = {}
        for tree in (trees if trees is not None else [s.tree for s in self._segments.values()]):
            for node in _walk(tree):
                if isinstance(node, A.Rfm):
                    out.setdefault(key_of(node), node)
        return out

    def _rfm_metrics(self, node: A.Rfm, ctx: _Ctx) -> tuple[int, float, float]:
        src = A.EventSource(node.source.event, None, node.source.filter)
        events = self._matching(src, ctx, node.window_ms)
        spend = sum(ev.value for ev in events if isinstance(ev.value, float) and math.isfinite(ev.value))
        since = float(ctx.now - events[-1].t) if events else INF
        return len(events), since, float(spend)

    def _compute_rfm(self, keys: Mapping[str, A.Rfm]) -> None:
        for key, node in keys.items():
            rows = []
            for uid in self._users:
                c, since, spend = self._rfm_metrics(node, self._context(uid, self._members))
                if c > 0:
                    rows.append((c, since, spend))
            n = len(rows)
            if n == 0:
                self._rfm[key] = []
                continue
            at = [k * n // 5 for k in range(1, 5)]
            recency = sorted(-r[1] for r in rows)
            freq = sorted(float(r[0]) for r in rows)
            money = sorted(r[2] for r in rows)
            self._rfm[key] = [-recency[i] for i in at] + [freq[i] for i in at] + [money[i] for i in at]

    def _context(self, user_id: str, members: Mapping[str, set[str]]) -> _Ctx:
        user = self._users.get(user_id) or _User()
        now = self._now
        low = now - self.retention_ms
        visible = [e for e in user.events if low < e.t <= now]
        return _Ctx(user, now, visible, members, user_id)

    def _holds(self, tree: Any, user_id: str, members: Mapping[str, set[str]]) -> bool:
        return self._eval(tree, self._context(user_id, members)) is True

    def evaluate(self, user_id: str, expr: Any) -> Any:
        """The raw value of an expression (AST or text) for one user at ``now`` (for tests)."""
        tree = self._parse(expr) if isinstance(expr, str) else expr
        return self._eval(tree, self._context(user_id, self._members))

    # ------------------------------------------------------------------ compilation

    def _parse(self, text: str) -> Any:
        """Text -> checked AST, through the project's parser and type checker (which also
        rejects windows longer than the retention, with the engine's messages)."""
        try:
            from engine.expr import compile_expression
        except ImportError as err:
            raise RuntimeError("engine.expr is not available: pass an AST instead of text") from err
        return compile_expression(text, retention_ms=self.retention_ms)

    def _compile(self, name: str, text: Any, replacing: bool) -> tuple[Any, frozenset[str]]:
        tree = self._parse(text) if isinstance(text, str) else text
        deps: set[str] = set()
        for node in _walk(tree):
            window = getattr(node, "window_ms", None)
            if isinstance(node, A.ModelCall):
                if node.model not in self._models:
                    raise ExpressionError(node.line, node.col, f'unknown model "{node.model}"')
                if node.func == "likely" and self._models[node.model].threshold is None:
                    raise ExpressionError(node.line, node.col, f'model "{node.model}" has no validation curve')
            if isinstance(node, (A.Aggregate, A.Sequence, A.Rfm)) and window > self.retention_ms:
                raise ExpressionError(
                    node.line, node.col, f"window of {window} ms is longer than the retention ({self.retention_ms} ms)"
                )
            if isinstance(node, A.SegmentRef):
                if node.name not in self._segments or (node.name == name and not replacing):
                    raise ExpressionError(node.line, node.col, f'unknown segment "{node.name}"')
                if node.name == name or name in self._reaches(node.name):
                    raise ExpressionError(node.line, node.col, f'segment("{node.name}") makes a cycle through "{name}"')
                deps.add(node.name)
        return tree, frozenset(deps)

    def _reaches(self, start: str) -> set[str]:
        """Every segment that ``start`` references, directly or not (current definitions)."""
        seen: set[str] = set()
        stack = [start]
        while stack:
            for d in self._segments[stack.pop()].deps:
                if d not in seen:
                    seen.add(d)
                    stack.append(d)
        return seen

    # ------------------------------------------------------------------ the interpreter

    def _eval(self, node: Any, ctx: _Ctx) -> Any:
        method = getattr(self, "_e_" + type(node).__name__, None)
        if method is None:
            raise TypeError(f"the reference cannot evaluate {type(node).__name__}")
        return method(node, ctx)

    def _e_Literal(self, node: A.Literal, ctx: _Ctx) -> Any:
        return _norm(node.value)

    def _e_TraitRef(self, node: A.TraitRef, ctx: _Ctx) -> Any:
        return ctx.user.traits.get(node.name)

    def _e_PropRef(self, node: A.PropRef, ctx: _Ctx) -> Any:
        if ctx.event is None:
            raise TypeError(f"property {node.name!r} outside a where filter")
        return _prop(ctx.event, node.name)

    def _e_ExistsProp(self, node: A.ExistsProp, ctx: _Ctx) -> bool:
        if ctx.event is None:
            raise TypeError(f"exists({node.name}) outside a where filter")
        return _prop(ctx.event, node.name) is not None

    def _e_ExistsTrait(self, node: A.ExistsTrait, ctx: _Ctx) -> bool:
        return node.name in ctx.user.traits

    def _e_Neg(self, node: A.Neg, ctx: _Ctx) -> Any:
        v = self._eval(node.operand, ctx)
        return -float(v) + 0.0 if _is_num(v) else None

    def _e_Not(self, node: A.Not, ctx: _Ctx) -> bool:
        return self._eval(node.operand, ctx) is not True  # null counts as false

    def _e_BoolOp(self, node: A.BoolOp, ctx: _Ctx) -> bool:
        values = [self._eval(x, ctx) is True for x in node.operands]
        if node.op == "and":
            return all(values)
        if node.op == "or":
            return any(values)
        raise ValueError(f"unknown boolean operator {node.op!r}")

    def _e_Arith(self, node: A.Arith, ctx: _Ctx) -> Any:
        return _arith(node.op, self._eval(node.left, ctx), self._eval(node.right, ctx))

    def _e_Compare(self, node: A.Compare, ctx: _Ctx) -> Any:
        return _compare(node.op, self._eval(node.left, ctx), self._eval(node.right, ctx))

    def _e_In(self, node: A.In, ctx: _Ctx) -> Any:
        x = self._eval(node.operand, ctx)
        if x is None:
            return None
        items = [self._eval(item, ctx) for item in node.items]
        if node.negated:  # x != a and x != b and ...; a kind mismatch makes != false
            return all(_compare("!=", x, item) is True for item in items)
        return any(_compare("==", x, item) is True for item in items)

    def _e_Between(self, node: A.Between, ctx: _Ctx) -> Any:
        x, lo, hi = (self._eval(n, ctx) for n in (node.operand, node.low, node.high))
        if x is None or lo is None or hi is None:
            return None
        if not (_is_num(x) and _is_num(lo) and _is_num(hi)):
            return False
        return lo <= x <= hi

    def _e_SegmentRef(self, node: A.SegmentRef, ctx: _Ctx) -> bool:
        if node.name not in ctx.members:
            raise KeyError(f"segment {node.name!r} is evaluated before its dependency")
        return ctx.user_id in ctx.members[node.name]

    def _e_TraitTime(self, node: A.TraitTime, ctx: _Ctx) -> Any:
        v = ctx.user.traits.get(node.name)
        if not _is_num(v):
            return None
        if node.func == "since":
            return _arith("-", float(ctx.now), v)
        if node.func == "until":
            return _arith("-", v, float(ctx.now))
        raise ValueError(f"unknown trait-time function {node.func!r}")

    def _e_Near(self, node: A.Near, ctx: _Ctx) -> bool:
        lat, lon = ctx.user.traits.get("lat"), ctx.user.traits.get("lon")
        if not (_is_num(lat) and _is_num(lon)):
            return False
        return haversine_m(lat, lon, node.lat, node.lon) <= node.distance_m

    # events ---------------------------------------------------------------------------------

    def _matching(self, source: A.EventSource, ctx: _Ctx, window_ms: int | None) -> list[_Event]:
        """Visible events of ``source.event`` passing its filter (and in the window), in order."""
        out = []
        for ev in ctx.visible:
            if ev.type != source.event:
                continue
            if window_ms is not None and not (ctx.now - window_ms < ev.t <= ctx.now):
                continue
            if source.filter is not None:
                ctx.event = ev
                try:
                    passed = self._eval(source.filter, ctx) is True
                finally:
                    ctx.event = None
                if not passed:
                    continue
            out.append(ev)
        return out

    def _e_Aggregate(self, node: A.Aggregate, ctx: _Ctx) -> Any:
        events = self._matching(node.source, ctx, node.window_ms)
        func = node.func
        if func == "count":
            return float(len(events))
        if func == "active_days":
            if node.zone is not None:
                return float(len({_local_date(ev.t, node.zone) for ev in events}))
            return float(len({ev.t // DAY_MS for ev in events}))
        if node.source.prop is None:
            raise TypeError(f"{func}() needs EVENT.PROP")
        values = [(ev, _prop(ev, node.source.prop)) for ev in events]
        values = [(ev, v) for ev, v in values if v is not None]
        numbers = [float(v) for _, v in values if _is_num(v)]
        if func == "sum":
            return math.fsum(numbers) + 0.0
        if func == "avg":
            return _arith("/", math.fsum(numbers), float(len(numbers))) if numbers else None
        if func == "min":
            return min(numbers) if numbers else None
        if func == "max":
            return max(numbers) if numbers else None
        counts = Counter(_key(v) for _, v in values)
        if func == "distinct":
            return float(len(counts))
        if func == "top_count":
            return float(max(counts.values(), default=0))
        if func == "affinity":
            if not counts:
                return None
            latest = {_key(v): ev.order for ev, v in values}  # events are in order: the last wins
            best = max(counts, key=lambda k: (counts[k], latest[k]))
            return best[1]
        if func == "affinity_score":
            # sum of 2^(-(now - t)/H) over p == VALUE / the same over every p set, H = W/2. Every
            # weight is scaled by 2^((now - t_last)/H) (t_last: the latest of these events),
            # which cancels in the ratio: the share does not depend on now.
            if not values:
                return None
            want = _key(_norm(node.value.value))
            t_last = values[-1][0].t
            half = node.window_ms / 2.0
            num = den = 0.0
            for ev, v in values:
                weight = 2.0 ** ((ev.t - t_last) / half)
                den += weight
                if _key(v) == want:
                    num += weight
            return num / den
        if func == "affinity_rank":
            want = _key(_norm(node.value.value))
            if want not in counts:
                return None
            latest = {_key(v): ev.order for ev, v in values}
            ranked = sorted(counts, key=lambda k: (counts[k], latest[k]), reverse=True)
            return float(ranked.index(want) + 1)
        raise ValueError(f"unknown aggregate {func!r}")

    def _e_Since(self, node: A.Since, ctx: _Ctx) -> float:
        events = self._matching(node.source, ctx, None)
        return float(ctx.now - events[-1].t) if events else INF

    def _e_SinceFirst(self, node: A.SinceFirst, ctx: _Ctx) -> float:
        events = self._matching(node.source, ctx, None)
        return float(ctx.now - events[0].t) if events else INF

    def _e_Sequence(self, node: A.Sequence, ctx: _Ctx) -> bool:
        # Taking, step by step, the earliest event after the previous one is optimal: any
        # later choice leaves a subset of the options for the following steps.
        last = -math.inf
        for step in node.steps:
            later = [ev for ev in self._matching(step, ctx, node.window_ms) if ev.t > last]
            if not later:
                return False
            last = later[0].t
        return True

    def _e_Rfm(self, node: A.Rfm, ctx: _Ctx) -> Any:
        from engine._rfm import key_of

        b = self._rfm.get(key_of(node)) or []
        c, since, spend = self._rfm_metrics(node, ctx)
        if c == 0 or len(b) != 12:
            return None
        r = 1 + sum(1 for x in b[0:4] if since <= x)
        f = 1 + sum(1 for x in b[4:8] if c >= x)
        m = 1 + sum(1 for x in b[8:12] if spend >= x)
        if node.func == "rfm_tier":
            return next(t for t, (rs, fs) in RFM_TIERS.items() if r in rs and f in fs)
        return float({"rfm_r": r, "rfm_f": f, "rfm_m": m}[node.func])

    def _e_ModelCall(self, node: A.ModelCall, ctx: _Ctx) -> Any:
        m = self._models[node.model]
        s = m.scores.get(ctx.user_id)
        if node.func == "score":
            return s
        if s is None:
            return None
        if node.func == "bucket":
            return "high" if s >= m.bucket_high else "medium" if s >= m.bucket_medium else "low"
        return s >= m.threshold(node.precision)


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _local_date(t_ms: int, zone: str) -> datetime.date:
    """The calendar date of the instant ``t_ms`` in the IANA zone ``zone``, straight from
    zoneinfo."""
    return (_EPOCH + datetime.timedelta(milliseconds=t_ms)).astimezone(zoneinfo.ZoneInfo(zone)).date()


def _prop(ev: _Event, name: str) -> Any:
    if name == "value":
        return ev.value
    return ev.props.get(name)


def _py_row(ev: Any) -> Any:
    """A dict event with numpy scalars turned into Python values (other things unchanged)."""
    if not isinstance(ev, Mapping):
        return ev
    row = {k: _py(v) for k, v in ev.items()}
    props = row.get("properties")
    if isinstance(props, Mapping):
        row["properties"] = {k: _py(v) for k, v in props.items()}
    return row


def _py(v: Any) -> Any:
    """numpy scalars -> Python values."""
    item = getattr(v, "item", None)
    if item is not None and not isinstance(v, (str, bytes, bool, int, float)):
        try:
            return item()
        except (TypeError, ValueError):
            return v
    return v
