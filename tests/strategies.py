"""Hypothesis strategies: random segment expressions (as text) and random operation scripts.

The vocabulary is small on purpose so that users, values, windows and timestamps collide:
timestamps sit on a grid of a few units (1 ms ... 1 d) around ``BASE_MS`` and windows are
drawn from the same units, so events land exactly on window bounds, ``since`` comparisons
cross their bounds and clock jumps push events out of windows and out of the retention.

Scripts are generated against a small model of the engine (its event clock, the live
segments and their references), so that every generated operation is meaningful: segment
references point at live segments, deletions never remove a referenced segment, and
deliberately bad operations are marked ``expect_error``.
"""

from __future__ import annotations

import datetime
import re
import zoneinfo
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

# "ghost" appears in expressions only: no stream ever has such an event.

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
BASE_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z; not a day boundary, so active_days varies

EVENT_TYPES = ("view", "cart", "buy", "open")
EVENT_PROPS = {"view": ("sku", "price"), "cart": ("sku", "price"), "buy": ("sku", "price", "promo"), "open": ()}
SKUS = ("a", "b", "c")
# Dyadic numbers: every sum of a few of them is exact, whatever the summation order.
PRICES = (0.0, 1.0, 2.5, 10.0, 99.5, 100.0, 250.0)
VALUES = (0.0, 0.5, 1.0, 3.0, 12.25, 40.0)
USERS = ("u0", "u1", "u2", "u3")
COUNTRIES = ("TR", "DE", "US")
PLANS = ("free", "pro", "team")
LATS = (41.0, 41.01, 41.05, 40.0)
LONS = (29.0, 29.02, 28.9)
SCORES = (0.0, 1.0, 2.5, 10.0, -1.0)

DURATIONS = (
    ("1ms", 1),
    ("250ms", 250),
    ("1s", SECOND_MS),
    ("30s", 30 * SECOND_MS),
    ("1m", MINUTE_MS),
    ("15m", 15 * MINUTE_MS),
    ("1h", HOUR_MS),
    ("6h", 6 * HOUR_MS),
    ("48h", 2 * DAY_MS),
    ("1d", DAY_MS),
    ("2d", 2 * DAY_MS),
    ("7d", 7 * DAY_MS),
    ("1w", 7 * DAY_MS),
    ("30d", 30 * DAY_MS),
)
RETENTIONS = (("2d", 2 * DAY_MS), ("7d", 7 * DAY_MS), ("30d", 30 * DAY_MS))
TOO_LONG_WINDOW = {"2d": "3d", "7d": "8d", "30d": "31d"}
TIME_UNITS_MS = (1, 250, SECOND_MS, MINUTE_MS, 15 * MINUTE_MS, HOUR_MS, DAY_MS)
NUMBER_LITERALS = ("0", "1", "2", "3", "0.5", "10", "100", "2.5", "-1", "1e6")
NEAR_POINTS = ((41.0, 29.0), (41.01, 29.02), (40.5, 28.95))
NEAR_DISTANCES = ("500m", "1km", "2km", "5km", "50km", "3mi", "100km")

# Time zones of active_days(E, W, "ZONE"): DST with a 1 h step (New York), a fall-back at local
# midnight (Santiago: 00:00 -> 23:00 of the day before), a 30 min DST step (Lord Howe), fixed
# offsets (Istanbul +3, Kolkata +5:30) and UTC itself.
ZONES = ("UTC", "America/New_York", "Europe/Istanbul", "America/Santiago", "Australia/Lord_Howe", "Asia/Kolkata")
# Anchors just at a DST change, for scripts and streams across it (scripts(base_ms=...)):
# New York falls back (25 h day) 2023-11-05T06:00Z and springs forward (23 h day)
# 2024-03-10T07:00Z; Santiago falls back at local midnight 2024-04-07T03:00Z; Lord Howe
# falls back by 30 min 2024-04-06T15:00Z.
DST_BASES_MS = (1_699_164_000_000, 1_710_054_000_000, 1_712_458_800_000, 1_712_415_600_000)
AFFINITY_SHARES = ("0", "0.25", "0.5", "0.6", "0.75", "1")
RANKS = ("1", "2", "3")

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def local_midnight_after(t_ms: int, zone: str) -> int:
    """The first local midnight of ``zone`` after the instant ``t_ms`` (ms; for events on a
    local day boundary). Where midnight does not exist (a DST jump at 00:00) it is the first
    instant of the next local day."""
    tz = zoneinfo.ZoneInfo(zone)
    local = (_EPOCH + datetime.timedelta(milliseconds=t_ms)).astimezone(tz)
    day = local.date() + datetime.timedelta(days=1)
    guess = datetime.datetime(day.year, day.month, day.day, tzinfo=tz)
    ms = int((guess - _EPOCH).total_seconds() * 1000)
    # step back while the instant before is still on the new day (a midnight that repeats)
    while (_EPOCH + datetime.timedelta(milliseconds=ms - 1)).astimezone(tz).date() >= day:
        ms -= 15 * MINUTE_MS
    while (_EPOCH + datetime.timedelta(milliseconds=ms)).astimezone(tz).date() < day:
        ms += 1
    return ms


# ----------------------------------------------------------------------------- expressions


@dataclass
class ExprContext:
    """What an expression may use; ``refs`` collects the segments it references."""

    retention_ms: int
    segments: tuple[str, ...] = ()
    refs: set[str] = field(default_factory=set)


def _pick(draw, options):
    return draw(st.sampled_from(options))


def _duration(draw, ctx: ExprContext) -> str:
    return _pick(draw, [text for text, ms in DURATIONS if ms <= ctx.retention_ms])


def _string_list(items) -> str:
    return ", ".join(f'"{s}"' for s in items)


def _filter_atom(draw) -> str:
    i = draw(st.integers(0, 12))
    num = _pick(draw, ("0", "1", "2.5", "10", "100"))
    op = _pick(draw, ("==", "!=", "<", "<=", ">", ">="))
    if i == 0:
        return f"price {op} {num}"
    if i == 1:
        return f"value {op} {num}"
    if i == 2:
        return f'sku == "{_pick(draw, SKUS)}"'
    if i == 3:
        return f'sku != "{_pick(draw, SKUS)}"'
    if i == 4:
        items = draw(st.lists(st.sampled_from(SKUS), min_size=1, max_size=3, unique=True))
        neg = _pick(draw, ("", "not "))
        return f"sku {neg}in [{_string_list(items)}]"
    if i == 5:
        return f"promo == {_pick(draw, ('true', 'false'))}"
    if i == 6:
        return "promo != true"
    if i == 7:
        return f"exists({_pick(draw, ('promo', 'sku', 'price', 'value'))})"
    if i == 8:
        return f"price between {_pick(draw, ('0', '1', '2.5'))} and {_pick(draw, ('10', '99.5', '100'))}"
    if i == 9:
        return f"value between {_pick(draw, ('0', '0.5'))} and {_pick(draw, ('1', '3', '12.25'))}"
    if i == 10:
        return "sku == 1"  # kind mismatch: false at run time
    if i == 11:
        return 'price == "a"'
    return f"price in [{_pick(draw, ('1', '2.5'))}, {_pick(draw, ('10', '100'))}]"


def _filter(draw, depth: int) -> str:
    i = draw(st.integers(0, 4 if depth > 0 else 0))
    if i <= 1:
        return _filter_atom(draw)
    if i == 2:
        return f"({_filter(draw, depth - 1)}) and ({_filter(draw, depth - 1)})"
    if i == 3:
        return f"({_filter(draw, depth - 1)}) or ({_filter(draw, depth - 1)})"
    return f"not ({_filter(draw, depth - 1)})"


def _where(draw) -> str:
    return f" where {_filter(draw, 1)}" if draw(st.booleans()) else ""


def _event(draw) -> str:
    return _pick(draw, EVENT_TYPES + EVENT_TYPES + ("ghost",))


def _source(draw) -> str:
    """``EVENT [where F]``"""
    return _event(draw) + _where(draw)


def _prop_source(draw, numeric: bool) -> str:
    """``EVENT.PROP [where F]``; numeric functions mostly get numeric props."""
    props = ("price", "price", "value", "sku") if numeric else ("sku", "sku", "price", "promo", "value")
    return f"{_event(draw)}.{_pick(draw, props)}{_where(draw)}"


COUNT_THRESHOLDS = ("0", "1", "2", "3")
MONEY_THRESHOLDS = ("0", "1", "2.5", "10", "99.5", "100")
SCORE_THRESHOLDS = ("0", "1", "2.5", "-1")


def _durations_upto(ctx: ExprContext) -> tuple[str, ...]:
    return tuple(text for text, ms in DURATIONS if ms <= ctx.retention_ms)


def feature_expr(draw, ctx: ExprContext, depth: int) -> tuple[str, tuple[str, ...]]:
    """A number computed from the user's data, and literals worth comparing it with (so that
    comparisons flip for real rather than being always true or always false)."""
    i = draw(st.sampled_from(tuple(range(16)) if depth > 0 else tuple(range(11)) + (13, 14, 15)))
    counts, money, times = COUNT_THRESHOLDS, MONEY_THRESHOLDS, _durations_upto(ctx)
    if i >= 13:
        return _extension_feature(draw, ctx, i)
    if i == 0:
        return f"count({_source(draw)}, {_duration(draw, ctx)})", counts
    if i == 1:
        func = _pick(draw, ("sum", "avg", "min", "max"))
        return f"{func}({_prop_source(draw, True)}, {_duration(draw, ctx)})", money
    if i == 2:
        func = _pick(draw, ("distinct", "top_count"))
        return f"{func}({_prop_source(draw, False)}, {_duration(draw, ctx)})", counts
    if i == 3:
        return f"active_days({_source(draw)}, {_duration(draw, ctx)})", counts
    if i == 4:
        return f"since({_source(draw)})", times
    if i == 5:
        return f"since_first({_source(draw)})", times
    if i == 6:
        return f"{_pick(draw, ('since', 'until'))}(trait.signup_at)", times + ("0", "-1d")
    if i == 7:
        return "trait.score_x", SCORE_THRESHOLDS
    if i == 8:
        return f"affinity({_event(draw)}.price{_where(draw)}, {_duration(draw, ctx)})", money
    if i == 9:
        return _pick(draw, ("trait.lat", "trait.signup_at")), ("41", "41.01", str(BASE_MS), str(BASE_MS + DAY_MS))
    if i == 10:
        return f"count({_source(draw)}, {_duration(draw, ctx)})", counts
    if i == 11:
        text, lits = feature_expr(draw, ctx, depth - 1)
        return f"-({text})", tuple(l[1:] if l.startswith("-") else "-" + l for l in lits)
    left, lits = feature_expr(draw, ctx, depth - 1)
    op = _pick(draw, ("+", "-", "*", "/"))
    if draw(st.booleans()):
        right = _pick(draw, NUMBER_LITERALS + times[:3])
    else:
        right, _ = feature_expr(draw, ctx, depth - 1)
    return f"({left} {op} {right})", lits + ("0", "1", "10")


def number_expr(draw, ctx: ExprContext, depth: int) -> str:
    """Any number: a feature or a literal."""
    if draw(st.integers(0, 3)) == 0:
        return _pick(draw, NUMBER_LITERALS + _durations_upto(ctx))
    return feature_expr(draw, ctx, depth)[0]


def string_expr(draw, ctx: ExprContext) -> tuple[str, tuple[str, ...]]:
    """A string-valued expression and the strings it is likely to take."""
    i = draw(st.integers(0, 3))
    if i == 0:
        return "trait.country", COUNTRIES
    if i == 1:
        return "trait.plan", PLANS
    return f"affinity({_event(draw)}.sku{_where(draw)}, {_duration(draw, ctx)})", SKUS


_TYPICAL_WINDOWS = ("1m", "15m", "1h", "6h", "1d", "48h")


def _typical(draw, ctx: ExprContext) -> str:
    """The conditions real segments are made of: often true, and flipping with time."""
    e = _pick(draw, EVENT_TYPES)
    windows = [t for t, ms in DURATIONS if (t in _TYPICAL_WINDOWS or ms == ctx.retention_ms) and ms <= ctx.retention_ms]
    w = _pick(draw, windows)
    return _pick(
        draw,
        (
            f'affinity({e}.sku, {w}) == "{_pick(draw, SKUS)}"',
            f"distinct({e}.sku, {w}) >= 2",
            f"top_count({e}.sku, {w}) >= 2",
            f"active_days({e}, {w}) >= 2",
            f"count({e}, {w}) >= 1",
            f"count({e}, {w}) >= 2",
            f"count({e}, {w}) == 0",
            f"since({e}) <= {w}",
            f"since({e}) > {w}",
            f"sum({e}.value, {w}) > 0",
            f"active_days({e}, {w}) >= 1",
            f"since_first({e}) >= {w}",
            f'affinity_rank({e}.sku, "{_pick(draw, SKUS)}", {w}) == 1',
            f'affinity_rank({e}.sku, "{_pick(draw, SKUS)}", {w}) >= 2',
            f'affinity_score({e}.sku, "{_pick(draw, SKUS)}", {w}) > 0.5',
            f'affinity_score({e}.sku, "{_pick(draw, SKUS)}", {w}) >= {_pick(draw, AFFINITY_SHARES)}',
            f'active_days({e}, {w}, "{_pick(draw, ZONES)}") >= 2',
        ),
    )


# Categories of conditions; repetition sets their weights.
_LEAF_KINDS = ("typical",) * 5 + ("compare",) * 3 + (
    "string_eq", "string_in", "between", "sequence", "near", "exists", "segment", "literal", "mismatch", "until",
)
_NODE_KINDS = ("not", "and", "or", "and")


def bool_expr(draw, ctx: ExprContext, depth: int) -> str:
    what = _pick(draw, _LEAF_KINDS + (_NODE_KINDS * 3 if depth > 0 else ()))
    i = {
        "compare": 0, "string_eq": 2, "string_in": 3, "between": 4, "sequence": 5, "near": 6, "exists": 7,
        "segment": 8, "literal": 9, "mismatch": 10, "until": 11, "not": 12, "and": 13, "or": 13, "typical": 14,
    }[what]
    if i == 14:
        return _typical(draw, ctx)
    if i in (0, 1):
        op = _pick(draw, ("==", "!=", "<", "<=", ">", ">="))
        text, lits = feature_expr(draw, ctx, min(depth, 1))
        other = number_expr(draw, ctx, 0) if draw(st.integers(0, 4)) == 0 else _pick(draw, lits)
        return f"{text} {op} {other}"
    if i == 2:
        op = _pick(draw, ("==", "!="))
        text, vocab = string_expr(draw, ctx)
        return f'{text} {op} "{_pick(draw, vocab)}"'
    if i == 3:
        text, vocab = string_expr(draw, ctx)
        items = draw(st.lists(st.sampled_from(vocab), min_size=1, max_size=3, unique=True))
        neg = _pick(draw, ("", "not "))
        return f"{text} {neg}in [{_string_list(items)}]"
    if i == 4:
        text, lits = feature_expr(draw, ctx, min(depth, 1))
        low = number_expr(draw, ctx, 0) if draw(st.integers(0, 4)) == 0 else _pick(draw, lits)
        return f"{text} between {low} and {_pick(draw, lits)}"
    if i == 5:
        steps = [_source(draw) for _ in range(draw(st.integers(2, 3)))]
        return f"sequence({', '.join(steps)}, {_duration(draw, ctx)})"
    if i == 6:
        lat, lon = _pick(draw, NEAR_POINTS)
        return f"near({lat}, {lon}, {_pick(draw, NEAR_DISTANCES)})"
    if i == 7:
        return f"exists(trait.{_pick(draw, ('country', 'plan', 'signup_at', 'lat', 'score_x'))})"
    if i == 8:
        if not ctx.segments:
            return f"count({_source(draw)}, {_duration(draw, ctx)}) == 0"
        name = _pick(draw, ctx.segments)
        ctx.refs.add(name)
        return f'segment("{name}")'
    if i == 9:
        return _pick(draw, ("true", "false"))
    if i == 10:
        # kinds that only meet at run time: false, never an error
        return _pick(draw, ("trait.country == 3", 'trait.score_x == "high"', "trait.plan != 1", "trait.score_x > 1"))
    if i == 11:
        return f'until(trait.signup_at) between 0 and {_duration(draw, ctx)}'
    if i == 12:
        return f"not ({bool_expr(draw, ctx, depth - 1)})"
    return f"({bool_expr(draw, ctx, depth - 1)}) {what} ({bool_expr(draw, ctx, depth - 1)})"


def extension_expr(draw, ctx: ExprContext, depth: int) -> str:
    """A condition on the extensions (affinity_score, affinity_rank, active_days with a time
    zone), possibly combined with another condition."""
    op = _pick(draw, ("==", "!=", "<", "<=", ">", ">=", ">=", ">"))
    text, lits = _extension_feature(draw, ctx, _pick(draw, (13, 14, 15)))
    cond = f"{text} {op} {_pick(draw, lits)}"
    if depth > 0 and draw(st.booleans()):
        other = bool_expr(draw, ctx, depth - 1) if draw(st.booleans()) else extension_expr(draw, ctx, depth - 1)
        return f"({cond}) {_pick(draw, ('and', 'or'))} ({other})"
    if depth > 0 and draw(st.integers(0, 3)) == 0:
        return f"not ({cond})"
    return cond


def _extension_feature(draw, ctx: ExprContext, i: int) -> tuple[str, tuple[str, ...]]:
    """13: affinity_score, 14: affinity_rank, 15: active_days with a time zone."""
    if i == 13:
        if draw(st.integers(0, 3)) == 0:
            src, value = f"{_event(draw)}.price{_where(draw)}", _pick(draw, ("2.5", "10", "100", '"a"'))
        else:
            src, value = f"{_event(draw)}.sku{_where(draw)}", _pick(draw, ('"a"', '"b"', '"c"', "1", '"1"'))
        return f"affinity_score({src}, {value}, {_duration(draw, ctx)})", AFFINITY_SHARES
    if i == 14:
        value = _pick(draw, ('"a"', '"b"', '"c"', "1"))
        return f"affinity_rank({_prop_source(draw, False)}, {value}, {_duration(draw, ctx)})", RANKS
    return f'active_days({_source(draw)}, {_duration(draw, ctx)}, "{_pick(draw, ZONES)}")', COUNT_THRESHOLDS


@st.composite
def extension_expressions(draw, retention_ms: int = 30 * DAY_MS, segments: tuple[str, ...] = (),
                          max_depth: int = 1) -> str:
    """A random, valid segment expression that uses the extensions of the spec."""
    return extension_expr(draw, ExprContext(retention_ms, tuple(segments)), draw(st.integers(0, max_depth)))


@st.composite
def expressions(draw, retention_ms: int = 30 * DAY_MS, segments: tuple[str, ...] = (), max_depth: int = 2) -> str:
    """A random, valid segment expression (text) over the fixed vocabulary."""
    return bool_expr(draw, ExprContext(retention_ms, tuple(segments)), draw(st.integers(0, max_depth)))


# ----------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Ingest:
    events: tuple[dict, ...]
    columns: bool = False  # send through ingest_columns instead of ingest


@dataclass(frozen=True)
class SetTraits:
    user_id: str
    traits: dict
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class Advance:
    now_ms: int


@dataclass(frozen=True)
class Create:
    """``expect_error``: True, the expression is bad on purpose; False, it must be accepted;
    None, no expectation (both sides must still agree)."""

    name: str
    text: str
    expect_error: bool | None = False


@dataclass(frozen=True)
class Replace:
    name: str
    text: str
    expect_error: bool | None = False


@dataclass(frozen=True)
class DeleteSegment:
    name: str


@dataclass(frozen=True)
class DeleteUser:
    user_id: str


Op = Ingest | SetTraits | Advance | Create | Replace | DeleteSegment | DeleteUser


@dataclass
class Script:
    retention: str
    retention_ms: int
    max_events_per_type: int
    ops: list = field(default_factory=list)

    def __repr__(self) -> str:
        lines = [f"Script(retention={self.retention!r}, max_events_per_type={self.max_events_per_type}, ops=["]
        lines += [f"    {op!r}," for op in self.ops]
        return "\n".join(lines + ["])"])


def events_to_columns(events) -> dict[str, Any]:
    """The ``ingest_columns`` keyword arguments for a list of well-formed dict events."""
    import numpy as np

    names = sorted({k for ev in events for k in ev.get("properties", {})})
    return {
        "user_id": [ev["user_id"] for ev in events],
        "type": [ev["type"] for ev in events],
        "timestamp_ms": np.array([ev["timestamp_ms"] for ev in events], dtype=np.int64),
        "value": np.array([ev.get("value", 0.0) for ev in events], dtype=np.float64),
        "properties": {n: [ev.get("properties", {}).get(n) for ev in events] for n in names},
    }


_UNIT_MS = {"ms": 1, "s": SECOND_MS, "m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS, "w": 7 * DAY_MS}


def durations_in(text: str) -> set[int]:
    """The durations (ms) written in an expression: its windows and time thresholds."""
    text = re.sub(r"near\([^)]*\)", "", text)  # distances: 500m is metres there
    return {int(n) * _UNIT_MS[u] for n, u in re.findall(r"\b(\d+)(ms|s|m|h|d|w)\b", text)}


class _Model:
    """Just enough of the engine to generate meaningful operations."""

    def __init__(self, retention: str, retention_ms: int, cap: int, base_ms: int = BASE_MS):
        self.base_ms = base_ms
        self.extensions = base_ms != BASE_MS  # scripts across a DST change favour the extensions
        self.retention = retention
        self.retention_ms = retention_ms
        self.cap = cap
        self.now = 0
        self.segments: dict[str, frozenset[str]] = {}  # live segment -> segments it references
        self.next_id = 0
        self.durations: set[int] = set()  # every duration written in a segment so far
        self.times: list[int] = []  # timestamps of recently accepted events

    @property
    def anchor(self) -> int:
        return self.now or self.base_ms

    def add_segment(self, name: str, refs, text: str) -> None:
        self.segments[name] = frozenset(refs)
        self.durations.update(durations_in(text))

    def accepted(self, timestamps) -> None:
        self.times = (self.times + list(timestamps))[-64:]
        if timestamps:
            self.now = max(self.now, max(timestamps))

    def dependents(self, name: str) -> set[str]:
        out, grew = {name}, True
        while grew:
            grew = False
            for s, deps in self.segments.items():
                if s not in out and deps & out:
                    out.add(s)
                    grew = True
        return out


def _offset(draw, allow_negative: bool = True, big: bool = False) -> int:
    unit = _pick(draw, TIME_UNITS_MS)
    mult = draw(st.integers(0, 3))
    off = unit * mult
    if big and draw(st.integers(0, 3)) == 0:
        off += _pick(draw, (DAY_MS, 3 * DAY_MS, 8 * DAY_MS, 31 * DAY_MS))
    if allow_negative and draw(st.integers(0, 3)) == 0:
        off = -off
    return off


def _props(draw, etype: str) -> dict:
    props: dict[str, Any] = {}
    for p in EVENT_PROPS[etype]:
        if draw(st.integers(0, 5)) == 0:
            continue  # missing
        if p == "sku":
            props[p] = _pick(draw, SKUS + SKUS + (1.0, True, "1"))  # sometimes another kind
        elif p == "price":
            props[p] = _pick(draw, PRICES + ("cheap",))
        else:
            props[p] = draw(st.booleans())
    return props


def _event_dict(draw, model: _Model) -> tuple[dict, bool, str]:
    """One event, whether it is well-formed, and its kind ("ok", "old", "bad")."""
    etype = _pick(draw, EVENT_TYPES)
    uid = _pick(draw, USERS)
    kind = draw(st.integers(0, 11))
    t = model.anchor + _offset(draw)
    if kind == 6 and model.now and model.durations:
        t = model.now - _pick(draw, sorted(model.durations)) + _pick(draw, (0, 1))  # on a window bound
    elif kind == 7:
        if draw(st.booleans()):
            t = (model.anchor // DAY_MS + 1) * DAY_MS + _pick(draw, (-1, 0, 1))  # around UTC midnight
        else:  # around a local midnight of one of the zones
            t = local_midnight_after(model.anchor + _offset(draw), _pick(draw, ZONES[1:])) + _pick(draw, (-1, 0, 1))
    elif kind == 9 and model.now:
        extra = _pick(draw, (0, 1, HOUR_MS))  # 0: exactly at now - retention, still too old
        t = model.now - model.retention_ms - extra
    elif kind == 8 and model.now:
        t = model.now - model.retention_ms + 1  # the oldest timestamp still accepted
    ev: dict[str, Any] = {"user_id": uid, "type": etype, "timestamp_ms": t}
    if draw(st.booleans()):
        ev["value"] = _pick(draw, VALUES)
    props = _props(draw, etype)
    if props or draw(st.booleans()):
        ev["properties"] = props
    if kind == 10:
        bad = draw(st.integers(0, 2))
        if bad == 0:
            ev["user_id"] = ""
        elif bad == 1:
            ev["timestamp"] = t  # unknown field
        else:
            ev["properties"] = {**props, "value": 1.0}
        return ev, False, "bad"
    return ev, True, "ok"


def _burst(draw, model: _Model) -> list[dict]:
    """More events of one user and type than a small cap keeps, some of them late."""
    uid, etype = _pick(draw, USERS), _pick(draw, EVENT_TYPES)
    n = min(model.cap, 6) + draw(st.integers(1, 3))
    out = []
    for _ in range(n):
        ev = {"user_id": uid, "type": etype, "timestamp_ms": model.anchor + _offset(draw), "value": _pick(draw, VALUES)}
        props = _props(draw, etype)
        if props:
            ev["properties"] = props
        out.append(ev)
    return out


def _ingest(draw, model: _Model) -> Ingest:
    events, dict_only = [], False
    accepted_ts = []
    drawn = [_event_dict(draw, model) for _ in range(draw(st.integers(0, 6)))]
    if draw(st.integers(0, 4)) == 0:
        drawn += [(ev, True, "ok") for ev in _burst(draw, model)]
    for ev, ok, _kind in drawn:
        events.append(ev)
        if not ok:
            dict_only |= "timestamp" in ev or "value" in ev.get("properties", {})
        elif ev["timestamp_ms"] > model.now - model.retention_ms:
            accepted_ts.append(ev["timestamp_ms"])
    model.accepted(accepted_ts)
    columns = bool(events) and not dict_only and draw(st.integers(0, 3)) == 0
    return Ingest(tuple(events), columns)


def _set_traits(draw, model: _Model) -> SetTraits:
    uid = _pick(draw, USERS + USERS + ("",))
    # min_size=1: an empty update is its own regression test (test_empty_trait_update_is_a_trait_update)
    names = draw(
        st.lists(st.sampled_from(("country", "plan", "signup_at", "lat", "lon", "score_x")), min_size=1, max_size=4, unique=True)
    )
    traits: dict[str, Any] = {}
    for n in names:
        if draw(st.integers(0, 4)) == 0:
            traits[n] = None  # unset
        elif n == "country":
            traits[n] = _pick(draw, COUNTRIES + (3,))  # rarely a number
        elif n == "plan":
            traits[n] = _pick(draw, PLANS)
        elif n == "signup_at":
            traits[n] = model.anchor + _offset(draw, big=True) * _pick(draw, (1, -1))
        elif n == "lat":
            traits[n] = _pick(draw, LATS)
        elif n == "lon":
            traits[n] = _pick(draw, LONS)
        else:
            traits[n] = _pick(draw, SCORES + ("high", True))  # rarely another kind
    ts = None if draw(st.booleans()) else model.anchor + _offset(draw)
    if uid and ts is not None:
        model.now = max(model.now, ts)
    return SetTraits(uid, traits, ts)


def _advance(draw, model: _Model) -> Advance:
    how = draw(st.integers(0, 7))
    # the moments at which an event crosses a window bound or a since threshold
    crossings = sorted({t + d for t in model.times for d in model.durations if t + d >= model.now})
    if how >= 6 and crossings:
        target = _pick(draw, crossings) + _pick(draw, (0, -1, 1))
    elif how == 0:
        # the newest event reaches the retention bound (give or take 1 ms)
        target = model.anchor + model.retention_ms + _pick(draw, (0, -1, 1))
    elif how <= 3:
        # a window's length, give or take 1 ms: lands events exactly on window bounds
        target = model.anchor + _pick(draw, [ms for _, ms in DURATIONS]) + _pick(draw, (0, -1, 1))
    else:
        target = model.anchor + _offset(draw, big=True)
    model.now = max(model.now, target)
    return Advance(target)


def _create(draw, model: _Model) -> Create:
    name = f"s{model.next_id}"
    model.next_id += 1
    bad = draw(st.integers(0, 15))
    if bad == 0:
        return Create(name, f"count(view, {TOO_LONG_WINDOW[model.retention]}) > 0", expect_error=True)
    if bad == 1:
        return Create(name, 'segment("nope") or count(view, 1d) > 0', expect_error=True)
    ctx = ExprContext(model.retention_ms, tuple(model.segments))
    if model.extensions and draw(st.booleans()):
        text = extension_expr(draw, ctx, draw(st.integers(0, 2)))
    else:
        text = bool_expr(draw, ctx, draw(st.integers(0, 3)))
    model.add_segment(name, ctx.refs, text)
    return Create(name, text)


def _replace(draw, model: _Model) -> Replace:
    name = _pick(draw, sorted(model.segments))
    dependents = model.dependents(name)
    if len(dependents) > 1 and draw(st.integers(0, 5)) == 0:
        other = _pick(draw, sorted(dependents - {name}))
        return Replace(name, f'segment("{other}")', expect_error=True)  # a cycle
    allowed = tuple(s for s in model.segments if s not in dependents)
    ctx = ExprContext(model.retention_ms, allowed)
    text = bool_expr(draw, ctx, draw(st.integers(0, 3)))
    model.add_segment(name, ctx.refs, text)
    return Replace(name, text)


def _delete_segment(draw, model: _Model) -> DeleteSegment | None:
    unused = sorted(s for s in model.segments if not any(s in deps for deps in model.segments.values()))
    if not unused:
        return None
    name = _pick(draw, unused)
    del model.segments[name]
    return DeleteSegment(name)


@st.composite
def scripts(draw, max_steps: int = 20, base_ms: int | None = None) -> Script:
    """A random script of operations with its engine configuration; timestamps start around
    ``base_ms`` (default ``BASE_MS``; ``DST_BASES_MS`` put them across a DST change)."""
    retention, retention_ms = _pick(draw, RETENTIONS)
    cap = _pick(draw, (4096, 4096, 3, 5))
    model = _Model(retention, retention_ms, cap, BASE_MS if base_ms is None else base_ms)
    script = Script(retention, retention_ms, cap)
    for _ in range(draw(st.integers(0, 2))):
        script.ops.append(_create(draw, model))
    for _ in range(draw(st.integers(max(1, max_steps // 4), max_steps))):
        what = _pick(
            draw,
            ("ingest", "ingest", "ingest", "advance", "traits", "advance", "create", "ingest", "advance", "create")
            + ("replace", "delete_segment", "delete_user", "traits"),
        )
        if what == "ingest":
            op = _ingest(draw, model)
        elif what == "traits":
            op = _set_traits(draw, model)
        elif what == "advance":
            op = _advance(draw, model)
        elif what == "create" or (what == "replace" and not model.segments):
            op = _create(draw, model)
        elif what == "replace":
            op = _replace(draw, model)
        elif what == "delete_segment":
            op = _delete_segment(draw, model) or _ingest(draw, model)
        else:
            op = DeleteUser(_pick(draw, USERS))
        script.ops.append(op)
    return script
