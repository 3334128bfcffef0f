"""Slow, obviously correct twins of single evaluation kernels (engine/kernels/_eval.py,
engine/kernels/_strings.py), in plain Python over plain values.

tests/test_kernels_naive.py runs each kernel and its twin on the same random inputs, so a
failure names one kernel. The twins follow the definitions (docs/expressions.md), not the
kernels' algorithms: no binary searches, no scratch arrays, no sorting tricks.

Values are Python objects: ``None`` (null), ``float`` (number), ``bool``, ``Str(code)`` (a
string by its code in the shard's table).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

DAY_MS = 86_400_000
INF_MS = 2**63 - 1


@dataclass(frozen=True)
class Str:
    code: int


# -- leaves ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    t: int            # timestamp, ms
    num: object       # the numeric property: float or None
    sku: object       # the string property: Str or None


def in_window(events, now, window_ms, match=lambda e: True):
    """Matching events with ``now - W < t <= now``, oldest first."""
    return [e for e in events if now - window_ms < e.t <= now and match(e)]


def leaf_value(func, events, now, window_ms, match=lambda e: True, value=None, zone_offset_ms=None):
    """The value of ``func(E.prop, W)`` at ``now`` over ``events`` (one user, one type, in
    time order); ``count`` / ``active_days`` ignore the property, ``sum`` / ``avg`` / ``min`` /
    ``max`` read ``num``, the others read ``sku``; ``value`` is VALUE of affinity_score /
    affinity_rank; ``zone_offset_ms`` a fixed UTC offset of active_days' time zone."""
    win = in_window(events, now, window_ms, match)
    if func == "count":
        return float(len(win))
    if func == "active_days":
        off = zone_offset_ms or 0
        return float(len({(e.t + off) // DAY_MS for e in win}))
    if func in ("sum", "avg", "min", "max"):
        nums = [e.num for e in win if e.num is not None]
        if func == "sum":
            total = 0.0
            for x in nums:          # oldest first, as the definition sums
                total += x
            return total
        if not nums:
            return None
        if func == "avg":
            total = 0.0
            for x in nums:
                total += x
            return total / len(nums)
        return min(nums) if func == "min" else max(nums)
    vals = [(i, e.sku) for i, e in enumerate(win) if e.sku is not None]
    counts: dict[Str, int] = {}
    last: dict[Str, int] = {}
    for i, v in vals:
        counts[v] = counts.get(v, 0) + 1
        last[v] = i
    if func == "distinct":
        return float(len(counts))
    if func == "top_count":
        return float(max(counts.values(), default=0))
    if not counts:
        return None
    # affinity's order: by count, ties to the value whose latest event is the latest
    ranked = sorted(counts, key=lambda v: (counts[v], last[v]), reverse=True)
    if func == "affinity":
        return ranked[0]
    if func == "affinity_rank":
        return float(ranked.index(value) + 1) if value in counts else None
    if func == "affinity_score":
        half = window_ms / 2.0
        weights = [(v, 2.0 ** (-(now - win[i].t) / half)) for i, v in vals]
        return sum(w for v, w in weights if v == value) / sum(w for _, w in weights)
    raise ValueError(func)


def since_value(func, events, now, retention_ms, match=lambda e: True):
    """``since(E)`` / ``since_first(E)``: ``now - t`` of the latest / oldest matching event
    still retained (``now - retention < t <= now``), +inf if none."""
    kept = in_window(events, now, retention_ms, match)
    if not kept:
        return math.inf
    e = kept[-1] if func == "since" else kept[0]
    return float(now - e.t)


def leaf_next_change(func, events, now, window_ms, match=lambda e: True):
    """The leaf's next discontinuity when it is not compared with a constant: the next event
    of the type after ``now``, or the departure (``t + W``) of the oldest matching event in
    the window, whichever comes first; for ``min`` / ``max``, of the newest event holding
    the extreme value (``affinity``: ``affinity_next_change``)."""
    future = [e.t for e in events if e.t > now]
    nxt = min(future, default=INF_MS)
    win = in_window(events, now, window_ms, match)
    if func in ("min", "max"):
        # only the newest holder of the extreme value (its bits: 0.0 is not -0.0) moves it
        best = leaf_value(func, events, now, window_ms, match)
        holders = [e for e in win if e.num is not None and struct.pack("<d", e.num) == struct.pack("<d", best)]
        return min(nxt, holders[-1].t + window_ms) if holders else nxt
    if win:
        nxt = min(nxt, win[0].t + window_ms)
    return nxt


def affinity_next_change(events, now, window_ms, match=lambda e: True):
    """``affinity``'s next possible change: the next event of the type after ``now``, or the
    departure of the top value's ``lead``-th oldest event in the window, ``lead`` being its
    count minus the runner-up's (at least 1), since only the top value's departures can take
    its place."""
    future = [e.t for e in events if e.t > now]
    nxt = min(future, default=INF_MS)
    win = in_window(events, now, window_ms, match)
    top = leaf_value("affinity", events, now, window_ms, match)
    if top is None:
        return nxt
    counts: dict = {}
    for e in win:
        if e.sku is not None:
            counts[e.sku] = counts.get(e.sku, 0) + 1
    runner_up = max((c for v, c in counts.items() if v != top), default=0)
    lead = max(counts[top] - runner_up, 1)
    tops = [e for e in win if e.sku == top]
    return min(nxt, tops[lead - 1].t + window_ms)


def affinity_compare_next_change(events, now, window_ms, value, match=lambda e: True):
    """Next possible change of ``affinity(...) == value`` (a string ``value``):
    while ``value`` is the top, ``affinity_next_change``; else the next event, or the
    departure of the top's ``lead``-th oldest event, ``lead`` being its count minus
    ``value``'s (at least 1), or, with ``value`` absent from the window, the departure of the
    newest event with a value (after it the affinity is null)."""
    top = leaf_value("affinity", events, now, window_ms, match)
    if top is None or top == value:
        return affinity_next_change(events, now, window_ms, match)
    future = [e.t for e in events if e.t > now]
    nxt = min(future, default=INF_MS)
    win = in_window(events, now, window_ms, match)
    counts: dict = {}
    for e in win:
        if e.sku is not None:
            counts[e.sku] = counts.get(e.sku, 0) + 1
    if value not in counts:
        return min(nxt, [e for e in win if e.sku is not None][-1].t + window_ms)
    lead = max(counts[top] - counts[value], 1)
    tops = [e for e in win if e.sku == top]
    return min(nxt, tops[lead - 1].t + window_ms)


def since_next_change(func, events, now, retention_ms, match=lambda e: True):
    """Next discontinuity of since / since_first: the next event, or the used event leaving
    the retention."""
    future = [e.t for e in events if e.t > now]
    nxt = min(future, default=INF_MS)
    kept = in_window(events, now, retention_ms, match)
    if kept:
        e = kept[-1] if func == "since" else kept[0]
        nxt = min(nxt, e.t + retention_ms)
    return nxt


def change_times(events, now, window_ms, until):
    """Every time in (now, until) at which a window value can change: arrivals and
    departures of the events."""
    ts = set()
    for e in events:
        for x in (e.t, e.t + window_ms):
            if now < x < until:
                ts.add(x)
    return sorted(ts)


def compare(op, a, b):
    """``a op b`` on values: null if either is null, false if their kinds differ."""
    if a is None or b is None:
        return None
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return {"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    return False


# -- programs -------------------------------------------------------------------------------
# An expression tree: ("const", value) | ("leaf", q) | ("neg", x) | (op, x, y) with op in
# + - * | compare ops | ("and", [xs]) | ("or", [xs]) | ("not", x). Leaf q is affine in time:
# value ``v + s * (T - now)`` (None: null).

def program_value(tree, leaves, dt):
    """The tree's value ``dt`` ms after ``now``; ``leaves[q] = (v, slope)``."""
    op = tree[0]
    if op == "const":
        return tree[1]
    if op == "leaf":
        v, s = leaves[tree[1]]
        return None if v is None else v + s * dt
    if op == "neg":
        x = program_value(tree[1], leaves, dt)
        return -x if isinstance(x, float) else None
    if op in ("+", "-", "*"):
        x = program_value(tree[1], leaves, dt)
        y = program_value(tree[2], leaves, dt)
        if not (isinstance(x, float) and isinstance(y, float)):
            return None
        return x + y if op == "+" else x - y if op == "-" else x * y
    if op in ("==", "!=", "<", "<=", ">", ">="):
        return compare(op, program_value(tree[1], leaves, dt), program_value(tree[2], leaves, dt))
    if op == "and":
        return all(program_value(x, leaves, dt) is True for x in tree[1])
    if op == "or":
        return any(program_value(x, leaves, dt) is True for x in tree[1])
    if op == "not":
        return program_value(tree[1], leaves, dt) is not True
    raise ValueError(op)


# -- timers and touched rows ---------------------------------------------------------------

def collect_due(timer, tblock, block_rows, nrows, now):
    """(due rows ascending, new timer, new tblock): rows with ``timer <= now`` are due and
    their timers reset to never; every block whose bound says it may hold a due row gets
    its exact minimum back."""
    timer = list(timer)
    tblock = list(tblock)
    due = [r for r in range(nrows) if timer[r] <= now]
    for r in due:
        timer[r] = INF_MS
    nblocks = (nrows + block_rows - 1) // block_rows
    for b in range(nblocks):
        if tblock[b] <= now:
            rows = range(b * block_rows, min((b + 1) * block_rows, nrows))
            tblock[b] = min((timer[r] for r in rows), default=INF_MS)
    return due, timer, tblock


def touched(ev_rows, tids, tr_rows, tmask, due, known):
    """(rows, evmask, trmask, is_due, is_new): each touched row once, in first-seen order
    (events, then traits, then due rows), with the bits of what touched it."""
    order: list[int] = []
    ev: dict[int, int] = {}
    tr: dict[int, int] = {}
    dd: set[int] = set()

    def see(r):
        if r not in order:
            order.append(r)

    for r, t in zip(ev_rows, tids):
        see(r)
        ev[r] = ev.get(r, 0) | (1 << (t & 63))
    for r, m in zip(tr_rows, tmask):
        see(r)
        tr[r] = tr.get(r, 0) | int(m)
    for r in due:
        see(r)
        dd.add(r)
    return (order, [ev.get(r, 0) for r in order], [tr.get(r, 0) for r in order],
            [r in dd for r in order], [not known[r] for r in order])


# -- string tables --------------------------------------------------------------------------

class StringTable:
    """A string table: codes 0, 1, 2 ... in first-seen order."""

    def __init__(self):
        self.codes: dict[str, int] = {}

    def intern(self, values):
        return [self.codes.setdefault(v, len(self.codes)) for v in values]

    def lookup(self, values):
        return [self.codes.get(v, -1) for v in values]

    def get(self, code):
        return next(s for s, c in self.codes.items() if c == code)
