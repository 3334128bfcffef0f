"""A straightforward pure-Python implementation of segments: what the benchmark compares against.

This is how one would write real-time segments in plain Python without the engine:

* per user, a dict ``event type -> collections.deque`` of ``(timestamp_ms, value, props)``
  kept in timestamp order (a late event is inserted in place), and a dict of traits;
* each segment's AST (from ``engine.expr``) compiled once into nested Python closures;
* after each batch, every touched user's segments that read the batch's event types (or
  that are due, see below) are re-evaluated at the engine's ``now``;
* time-driven exits and entries use a **heap of per-user next-check times** (not a full
  sweep at each clock move, which would cost users x segments per batch). Each closure
  returns, besides its value, the earliest time its value may change without new input:
  an event leaving a window (``t + W``), a ``since``/``since_first`` event leaving the
  retention (``t + retention``), and a comparison crossing its bound. For the latter, time
  varying numbers are carried as ``value + slope * (t - now)`` (``since`` has slope 1,
  ``until`` slope -1), so a comparison knows when its two sides cross; a product or
  quotient of two time-varying numbers has no such form and is re-checked at every clock
  move. A check may come early (nothing changes); it never comes late.

Semantics follow spec/EXPRESSIONS.md and docs/semantics.md (the same choices as the
reference evaluator in tests/reference.py), so the final membership equals the engine's.
Only the event clock is supported: every stored event has ``t <= now``.
"""

from __future__ import annotations

import datetime
import math
import zoneinfo
from collections import deque, namedtuple
from heapq import heappop, heappush
from typing import Any, Callable

from engine.expr import ast as A
from engine.expr import compile_expression, event_types, segment_refs, trait_names

DAY_MS = 86_400_000
INF = math.inf
EARTH_RADIUS_M = 6_371_008.8
_NONLINEAR = math.nan  # slope of a value that is not linear in time

IngestCounts = namedtuple("IngestCounts", "accepted rejected now_ms")


def _num(x: Any) -> bool:
    t = type(x)
    return t is float or t is int


def _kind(x: Any) -> int:
    t = type(x)
    if t is float or t is int:
        return 1
    if t is str:
        return 2
    if t is bool:
        return 3
    return 0


def _key(x: Any) -> Any:
    # Python's True == 1.0; kinds must never group together.
    return ("\0bool", x) if type(x) is bool else x


def _cross(now: int, d: float, ds: float) -> float:
    """First integer time after ``now`` at which ``d + ds * (t - now)`` may change sign."""
    if ds != ds:
        return now + 1
    if ds == 0:
        return INF
    x = -d / ds
    if x < 0:
        return INF
    return now + max(1, math.floor(x))


def _compare(op: str, a: Any, b: Any) -> Any:
    if a is None or b is None:
        return None
    ka = _kind(a)
    if ka != _kind(b):
        return False
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    if ka != 1:
        return False
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    return a >= b


def _arith(op: str, a: Any, b: Any) -> Any:
    if not (_num(a) and _num(b)):
        return None
    if op == "+":
        r = a + b
    elif op == "-":
        r = a - b
    elif op == "*":
        r = a * b
    else:
        if b == 0:
            return None
        r = a / b
    return None if r != r else r


def _haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = math.radians(lat2 - lat1)
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2.0 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


class _User:
    __slots__ = ("uid", "events", "traits", "member", "nxt", "timer")

    def __init__(self, uid: str, nseg: int):
        self.uid = uid
        self.events: dict[str, deque] = {}
        self.traits: dict[str, Any] = {}
        self.member = [False] * nseg
        self.nxt = [INF] * nseg
        self.timer = INF


class _Segment:
    __slots__ = ("name", "index", "fn", "types", "traits", "members")

    def __init__(self, name, index, fn, types, traits):
        self.name = name
        self.index = index
        self.fn = fn
        self.types = types
        self.traits = traits
        self.members: set[str] = set()


# A compiled node: f(user, now) -> (value, slope, next_change_ms).
Fn = Callable[[_User, int], tuple]


class _Compiler:
    def __init__(self, retention_ms: int, seg_index: dict[str, int]):
        self.retention_ms = retention_ms
        self.seg_index = seg_index

    # ------------------------------------------------------------------ filters (per event)

    def filt(self, node) -> Callable[[tuple], Any]:
        """A ``where`` filter -> g(event) -> value (True when the event matches)."""
        if isinstance(node, A.Literal):
            v = float(node.value) if _num(node.value) else node.value
            return lambda e: v
        if isinstance(node, A.PropRef):
            name = node.name
            if name == "value":
                return lambda e: e[1]
            return lambda e: e[2].get(name)
        if isinstance(node, A.ExistsProp):
            name = node.name
            if name == "value":
                return lambda e: True
            return lambda e: name in e[2]
        if isinstance(node, A.Compare):
            op, gl, gr = node.op, self.filt(node.left), self.filt(node.right)
            return lambda e: _compare(op, gl(e), gr(e))
        if isinstance(node, A.In):
            g = self.filt(node.operand)
            items = [float(i.value) if _num(i.value) else i.value for i in node.items]
            if node.negated:
                def f_notin(e):
                    x = g(e)
                    return None if x is None else all(_compare("!=", x, i) is True for i in items)
                return f_notin

            def f_in(e):
                x = g(e)
                return None if x is None else any(_compare("==", x, i) is True for i in items)
            return f_in
        if isinstance(node, A.Between):
            g, gl, gh = self.filt(node.operand), self.filt(node.low), self.filt(node.high)

            def f_between(e):
                x, lo, hi = g(e), gl(e), gh(e)
                if x is None or lo is None or hi is None:
                    return None
                if not (_num(x) and _num(lo) and _num(hi)):
                    return False
                return lo <= x <= hi
            return f_between
        if isinstance(node, A.BoolOp):
            gs = [self.filt(o) for o in node.operands]
            if node.op == "and":
                return lambda e: all(g(e) is True for g in gs)
            return lambda e: any(g(e) is True for g in gs)
        if isinstance(node, A.Not):
            g = self.filt(node.operand)
            return lambda e: g(e) is not True
        if isinstance(node, A.Arith):
            op, gl, gr = node.op, self.filt(node.left), self.filt(node.right)
            return lambda e: _arith(op, gl(e), gr(e))
        if isinstance(node, A.Neg):
            g = self.filt(node.operand)

            def f_neg(e):
                x = g(e)
                return -x + 0.0 if _num(x) else None
            return f_neg
        raise ValueError(f"{type(node).__name__} is not allowed in a where filter")

    # ------------------------------------------------------------------ expressions (per user)

    def expr(self, node) -> Fn:
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:
            raise ValueError(f"the baseline does not implement {type(node).__name__}")
        return method(node)

    def _Literal(self, node):
        out = (float(node.value) if _num(node.value) else node.value, 0, INF)
        return lambda u, now: out

    def _TraitRef(self, node):
        name = node.name
        return lambda u, now: (u.traits.get(name), 0, INF)

    def _ExistsTrait(self, node):
        name = node.name
        return lambda u, now: (name in u.traits, 0, INF)

    def _TraitTime(self, node):
        name = node.name
        if node.func == "since":
            def f_since_trait(u, now):
                v = u.traits.get(name)
                return (now - v, 1, INF) if _num(v) else (None, 0, INF)
            return f_since_trait

        def f_until_trait(u, now):
            v = u.traits.get(name)
            return (v - now, -1, INF) if _num(v) else (None, 0, INF)
        return f_until_trait

    def _Near(self, node):
        lat0, lon0, dist = node.lat, node.lon, node.distance_m

        def f_near(u, now):
            lat, lon = u.traits.get("lat"), u.traits.get("lon")
            if not (_num(lat) and _num(lon)):
                return (False, 0, INF)
            return (_haversine_m(lat, lon, lat0, lon0) <= dist, 0, INF)
        return f_near

    def _SegmentRef(self, node):
        i = self.seg_index[node.name]
        return lambda u, now: (u.member[i], 0, u.nxt[i])

    def _Not(self, node):
        g = self.expr(node.operand)

        def f_not(u, now):
            v, _, n = g(u, now)
            return (v is not True, 0, n)
        return f_not

    def _BoolOp(self, node):
        gs = [self.expr(o) for o in node.operands]
        # Short-circuit is also right for the next-change time: while one operand of an
        # "and" is false the result stays false, whatever the others do.
        if node.op == "and":
            def f_and(u, now):
                n = INF
                for g in gs:
                    v, _, gn = g(u, now)
                    if v is not True:
                        return (False, 0, gn)
                    if gn < n:
                        n = gn
                return (True, 0, n)
            return f_and

        def f_or(u, now):
            n = INF
            for g in gs:
                v, _, gn = g(u, now)
                if v is True:
                    return (True, 0, gn)
                if gn < n:
                    n = gn
            return (False, 0, n)
        return f_or

    def _Neg(self, node):
        g = self.expr(node.operand)

        def f_neg(u, now):
            v, s, n = g(u, now)
            return (-v + 0.0, -s, n) if _num(v) else (None, 0, n)
        return f_neg

    def _Arith(self, node):
        op, gl, gr = node.op, self.expr(node.left), self.expr(node.right)

        def f_arith(u, now):
            lv, ls, ln = gl(u, now)
            rv, rs, rn = gr(u, now)
            n = ln if ln < rn else rn
            r = _arith(op, lv, rv)
            if (r is None or r == INF or r == -INF) and (ls or rs) and op in "*/" and _num(lv) and _num(rv):
                # 0 * inf, x / 0 or x * inf with a time-varying factor: leaves that state at
                # the next moment, or keeps it; check again at every clock move.
                n = now + 1
            if r is None:
                return (None, 0, n)
            if op == "+":
                s = ls + rs
            elif op == "-":
                s = ls - rs
            elif op == "*":
                s = 0 if not (ls or rs) else (lv * rs if not ls else (rv * ls if not rs else _NONLINEAR))
            else:
                s = ls / rv if not rs else _NONLINEAR
            if s and not math.isfinite(r):
                s = _NONLINEAR
            return (r, s, n)
        return f_arith

    def _Compare(self, node):
        op, gl, gr = node.op, self.expr(node.left), self.expr(node.right)

        def f_cmp(u, now):
            lv, ls, ln = gl(u, now)
            rv, rs, rn = gr(u, now)
            n = ln if ln < rn else rn
            r = _compare(op, lv, rv)
            if (ls or rs) and r is not None and _num(lv) and _num(rv) and math.isfinite(lv) and math.isfinite(rv):
                c = _cross(now, lv - rv, ls - rs)
                if c < n:
                    n = c
            return (r, 0, n)
        return f_cmp

    def _Between(self, node):
        g, gl, gh = self.expr(node.operand), self.expr(node.low), self.expr(node.high)

        def f_between(u, now):
            x, xs, xn = g(u, now)
            lo, los, lon = gl(u, now)
            hi, his, hin = gh(u, now)
            n = min(xn, lon, hin)
            if x is None or lo is None or hi is None:
                return (None, 0, n)
            if not (_num(x) and _num(lo) and _num(hi)):
                return (False, 0, n)
            if (xs or los or his) and math.isfinite(x):
                if math.isfinite(lo):
                    n = min(n, _cross(now, x - lo, xs - los))
                if math.isfinite(hi):
                    n = min(n, _cross(now, hi - x, his - xs))
            return (lo <= x <= hi, 0, n)
        return f_between

    def _In(self, node):
        g = self.expr(node.operand)
        items = [float(i.value) if _num(i.value) else i.value for i in node.items]
        negated = node.negated

        def f_in(u, now):
            x, xs, n = g(u, now)
            if x is None:
                return (None, 0, n)
            if negated:
                r = all(_compare("!=", x, i) is True for i in items)
            else:
                r = any(_compare("==", x, i) is True for i in items)
            if xs and _num(x) and math.isfinite(x):
                for i in items:
                    if _num(i):
                        n = min(n, _cross(now, x - i, xs))
            return (r, 0, n)
        return f_in

    # ------------------------------------------------------------------ events

    def _source(self, src: A.EventSource):
        return src.event, (self.filt(src.filter) if src.filter is not None else None)

    def _Aggregate(self, node):
        ev, flt = self._source(node.source)
        W = node.window_ms
        func = node.func
        prop = node.source.prop
        if prop == "value":
            get = None  # the event's value field: e[1]
        else:
            get = prop

        if func in ("count", "active_days"):
            days = func == "active_days"
            zone = getattr(node, "zone", None)

            def f_count(u, now):
                dq = u.events.get(ev)
                if not dq:
                    return (0.0, 0, INF)
                lo = now - W
                first = None
                c = 0
                seen = set()
                for e in reversed(dq):
                    t = e[0]
                    if t <= lo:
                        break
                    first = t
                    if flt is not None and flt(e) is not True:
                        continue
                    if days:
                        seen.add(t // DAY_MS if zone is None else _local_date(t, zone))
                    else:
                        c += 1
                nxt = INF if first is None else first + W
                return (float(len(seen) if days else c), 0, nxt)
            return f_count

        def values(u, now, with_time=False):
            """(values of the property over matching events in the window, newest first, as
            ``(t, value)`` with ``with_time``; the next window departure)."""
            dq = u.events.get(ev)
            if not dq:
                return (), INF
            lo = now - W
            first = None
            out = []
            for e in reversed(dq):
                t = e[0]
                if t <= lo:
                    break
                first = t
                if flt is not None and flt(e) is not True:
                    continue
                v = e[1] if get is None else e[2].get(get)
                if v is not None:
                    out.append((t, v) if with_time else v)
            return out, (INF if first is None else first + W)

        if func in ("sum", "avg", "min", "max"):
            def f_numeric(u, now):
                vals, nxt = values(u, now)
                nums = [v for v in vals if _num(v)]
                if func == "sum":
                    return (math.fsum(nums) + 0.0, 0, nxt)
                if not nums:
                    return (None, 0, nxt)
                if func == "avg":
                    return (math.fsum(nums) / len(nums), 0, nxt)
                return ((min(nums) if func == "min" else max(nums)), 0, nxt)
            return f_numeric

        if func == "distinct":
            def f_distinct(u, now):
                vals, nxt = values(u, now)
                return (float(len({_key(v) for v in vals})), 0, nxt)
            return f_distinct

        if func == "top_count":
            def f_top(u, now):
                vals, nxt = values(u, now)
                counts: dict = {}
                for v in vals:
                    k = _key(v)
                    counts[k] = counts.get(k, 0) + 1
                return (float(max(counts.values(), default=0)), 0, nxt)
            return f_top

        if func == "affinity":
            def f_affinity(u, now):
                vals, nxt = values(u, now)
                counts: dict = {}
                latest: dict = {}  # key -> -position from the newest: larger is later
                value_of: dict = {}
                for i, v in enumerate(vals):  # newest first
                    k = _key(v)
                    if k not in counts:
                        counts[k] = 0
                        latest[k] = -i
                        value_of[k] = v
                    counts[k] += 1
                if not counts:
                    return (None, 0, nxt)
                best = max(counts, key=lambda k: (counts[k], latest[k]))
                return (value_of[best], 0, nxt)
            return f_affinity

        if func in ("affinity_score", "affinity_rank"):
            want = _key(float(node.value.value) if isinstance(node.value.value, (int, float))
                        and not isinstance(node.value.value, bool) else node.value.value)
            half = W / 2.0

            def pairs(u, now):
                """(t, value) of matching events in the window with the property set, oldest first."""
                got, nxt = values(u, now, True)
                return got[::-1], nxt

            if func == "affinity_score":
                def f_affinity_score(u, now):
                    got, nxt = pairs(u, now)
                    if not got:
                        return (None, 0, nxt)
                    t_last = got[-1][0]
                    num = den = 0.0
                    for t, v in got:            # the reference's order: oldest first
                        weight = 2.0 ** ((t - t_last) / half)
                        den += weight
                        if _key(v) == want:
                            num += weight
                    return (num / den, 0, nxt)
                return f_affinity_score

            def f_affinity_rank(u, now):
                got, nxt = pairs(u, now)
                counts: dict = {}
                latest: dict = {}
                for i, (_, v) in enumerate(got):   # oldest first: the last position wins
                    k = _key(v)
                    counts[k] = counts.get(k, 0) + 1
                    latest[k] = i
                if want not in counts:
                    return (None, 0, nxt)
                ranked = sorted(counts, key=lambda k: (counts[k], latest[k]), reverse=True)
                return (float(ranked.index(want) + 1), 0, nxt)
            return f_affinity_rank
        raise ValueError(f"unknown aggregate {func!r}")

    def _Since(self, node):
        ev, flt = self._source(node.source)
        R = self.retention_ms

        def f_since(u, now):
            dq = u.events.get(ev)
            if dq:
                for e in reversed(dq):
                    if flt is None or flt(e) is True:
                        return (float(now - e[0]), 1, e[0] + R)
            return (INF, 0, INF)
        return f_since

    def _SinceFirst(self, node):
        ev, flt = self._source(node.source)
        R = self.retention_ms

        def f_since_first(u, now):
            dq = u.events.get(ev)
            if dq:
                for e in dq:
                    if flt is None or flt(e) is True:
                        return (float(now - e[0]), 1, e[0] + R)
            return (INF, 0, INF)
        return f_since_first

    def _Sequence(self, node):
        steps = [self._source(s) for s in node.steps]
        W = node.window_ms

        def f_sequence(u, now):
            # The earliest event after the previous step is always the best choice. Without
            # new events a false sequence stays false; a true one holds until the first
            # step's event leaves the window.
            prev = now - W
            first = None
            for ev, flt in steps:
                dq = u.events.get(ev)
                found = None
                if dq:
                    for e in dq:
                        if e[0] > prev and (flt is None or flt(e) is True):
                            found = e[0]
                            break
                if found is None:
                    return (False, 0, INF)
                if first is None:
                    first = found
                prev = found
            return (True, 0, first + W)
        return f_sequence

    def _Rfm(self, node):
        raise ValueError(f"{node.func}() is not implemented by the baseline")

    def _ModelCall(self, node):
        raise ValueError(f"{node.func}() is not implemented by the baseline")


class BaselineEngine:
    """Dicts of deques, closures and a timer heap; the embedded API's subset the bench uses."""

    def __init__(self, retention_ms: int = 30 * DAY_MS, max_events_per_type: int = 4096):
        self.retention_ms = int(retention_ms)
        self.max_events_per_type = int(max_events_per_type)
        self._now = 0
        self._users: dict[str, _User] = {}
        self._segs: list[_Segment] = []  # creation order, which is a dependency order
        self._by_name: dict[str, _Segment] = {}
        self._by_type: dict[str, list[int]] = {}
        self._by_trait: dict[str, list[int]] = {}
        self._heap: list[tuple[float, str]] = []
        self.enters = 0
        self.exits = 0
        self.evaluations = 0

    @property
    def now_ms(self) -> int:
        return self._now

    @property
    def users(self) -> int:
        return len(self._users)

    # ------------------------------------------------------------------ segments

    def create_segment(self, name: str, expression: str) -> None:
        if name in self._by_name:
            raise ValueError(f"segment {name!r} exists")
        tree = compile_expression(expression, retention_ms=self.retention_ms)
        refs = segment_refs(tree)
        for r in refs:
            if r not in self._by_name:
                raise ValueError(f"unknown segment {r!r}")
        index = len(self._segs)
        types = set(event_types(tree))
        traits = set(trait_names(tree))
        for r in refs:
            types |= self._by_name[r].types
            traits |= self._by_name[r].traits
        fn = _Compiler(self.retention_ms, {s.name: s.index for s in self._segs}).expr(tree)
        seg = _Segment(name, index, fn, frozenset(types), frozenset(traits))
        self._segs.append(seg)
        self._by_name[name] = seg
        for t in types:
            self._by_type.setdefault(t, []).append(index)
        for t in traits:
            self._by_trait.setdefault(t, []).append(index)
        now = self._now
        for u in self._users.values():  # backfill
            u.member.append(False)
            u.nxt.append(INF)
            self._prune(u, now)
            self._evaluate(u, (index,), now)

    def members(self, name: str) -> set[str]:
        return set(self._by_name[name].members)

    def segment_names(self) -> list[str]:
        return [s.name for s in self._segs]

    # ------------------------------------------------------------------ clock and traits

    def advance_clock(self, now_ms: int) -> int:
        if now_ms > self._now:
            self._now = int(now_ms)
        self._fire(self._now)
        return self._now

    def set_traits(self, user_id: str, traits: dict, timestamp_ms: int | None = None) -> None:
        u = self._users.get(user_id)
        new = u is None
        if new:
            u = self._users[user_id] = _User(user_id, len(self._segs))
        for k, v in traits.items():
            if v is None or (type(v) is float and v != v):
                u.traits.pop(k, None)
            else:
                u.traits[k] = v
        if timestamp_ms is not None and timestamp_ms > self._now:
            self._now = int(timestamp_ms)
        now = self._now
        if new:
            segs = range(len(self._segs))
        else:
            touched = set()
            for k in traits:
                touched.update(self._by_trait.get(k, ()))
            segs = sorted(touched | self._due(u, now))
        self._prune(u, now)
        self._evaluate(u, segs, now)
        self._fire(now)

    # ------------------------------------------------------------------ events

    def ingest_columns(self, user_id, type, timestamp_ms, value=None, properties=None) -> IngestCounts:  # noqa: A002
        """Apply one batch (events too old for the retention are rejected)."""
        floor = self._now - self.retention_ms
        cap = self.max_events_per_type
        users = self._users
        nseg = len(self._segs)
        uids = user_id.tolist() if hasattr(user_id, "tolist") else list(user_id)
        types = type.tolist() if hasattr(type, "tolist") else list(type)
        ts = timestamp_ms.tolist() if hasattr(timestamp_ms, "tolist") else list(timestamp_ms)
        n = len(uids)
        vals = [0.0] * n if value is None else (value.tolist() if hasattr(value, "tolist") else list(value))
        names = list(properties or {})
        cols = [(properties[k].tolist() if hasattr(properties[k], "tolist") else list(properties[k]))
                for k in names]
        touched: dict[str, set] = {}
        newest = self._now
        rejected = 0
        for i, (uid, typ, t, v) in enumerate(zip(uids, types, ts, vals)):
            if t <= floor:
                rejected += 1
                continue
            props = {}
            for k, col in zip(names, cols):
                x = col[i]
                if x is not None and x == x:
                    props[k] = x
            u = users.get(uid)
            if u is None:
                u = users[uid] = _User(uid, nseg)
                touched[uid] = None  # a new user: every segment
            elif uid not in touched:
                touched[uid] = set()
            tt = touched[uid]
            if tt is not None:
                tt.add(typ)
            dq = u.events.get(typ)
            if dq is None:
                dq = u.events[typ] = deque()
            e = (t, 0.0 if v is None else v, props)
            if not dq or dq[-1][0] <= t:
                dq.append(e)
            else:  # late: after the last event that is not later (equal times keep arrival order)
                j = len(dq) - 1
                while j >= 0 and dq[j][0] > t:
                    j -= 1
                dq.insert(j + 1, e)
            if len(dq) > cap:
                dq.popleft()
            if t > newest:
                newest = t
        self._now = now = newest
        by_type = self._by_type
        all_segs = range(nseg)
        for uid, tt in touched.items():
            u = users[uid]
            if tt is None:
                segs = all_segs
            else:
                s = self._due(u, now)
                for typ in tt:
                    s.update(by_type.get(typ, ()))
                segs = sorted(s)
            self._prune(u, now)
            self._evaluate(u, segs, now)
        self._fire(now)
        return IngestCounts(n - rejected, rejected, now)

    # ------------------------------------------------------------------ evaluation

    def _prune(self, u: _User, now: int) -> None:
        low = now - self.retention_ms
        for dq in u.events.values():
            while dq and dq[0][0] <= low:
                dq.popleft()

    @staticmethod
    def _due(u: _User, now: int) -> set[int]:
        return {i for i, n in enumerate(u.nxt) if n <= now} if u.timer <= now else set()

    def _evaluate(self, u: _User, segs, now: int) -> None:
        member, nxt = u.member, u.nxt
        for i in segs:
            seg = self._segs[i]
            v, _, n = seg.fn(u, now)
            m = v is True
            if m != member[i]:
                member[i] = m
                if m:
                    seg.members.add(u.uid)
                    self.enters += 1
                else:
                    seg.members.discard(u.uid)
                    self.exits += 1
            nxt[i] = n
        self.evaluations += len(segs)
        t = min(nxt) if nxt else INF
        if t != u.timer:
            u.timer = t
            if t < INF:
                heappush(self._heap, (t, u.uid))

    def _fire(self, now: int) -> None:
        heap = self._heap
        users = self._users
        while heap and heap[0][0] <= now:
            t, uid = heappop(heap)
            u = users.get(uid)
            if u is None or u.timer != t:
                continue  # stale: the user was re-evaluated since
            self._prune(u, now)
            self._evaluate(u, sorted(self._due(u, now)), now)

    def recompute_members(self) -> dict[str, set[str]]:
        """Every segment evaluated from scratch for every user at ``now`` (no timers): the
        check that the maintained membership is right."""
        out = {s.name: set() for s in self._segs}
        now = self._now
        for u in self._users.values():
            self._prune(u, now)
            saved = u.member, u.nxt
            u.member, u.nxt = [False] * len(self._segs), [INF] * len(self._segs)
            for seg in self._segs:
                v, _, n = seg.fn(u, now)
                u.member[seg.index], u.nxt[seg.index] = v is True, n
                if v is True:
                    out[seg.name].add(u.uid)
            u.member, u.nxt = saved
        return out


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _local_date(t_ms: int, zone: str) -> datetime.date:
    """The calendar date of the instant ``t_ms`` in the IANA zone ``zone``."""
    return (_EPOCH + datetime.timedelta(milliseconds=t_ms)).astimezone(zoneinfo.ZoneInfo(zone)).date()
