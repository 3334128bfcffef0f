"""Segment evaluation kernels.

A compiled plan (engine/_plan.py) is a set of flat int64 tables (``seg_tab``, ``leaves``,
``steps``, ``prog``, ``fprog``) and the boxed constants ``consts`` they index. Their columns,
the opcodes and the leaf kinds are named once, in engine/kernels/_layout.py; the kernels
read them as compile-time constants. Callers outside the kernels use the documented wrappers
at the end of this module (``run_segments``, ``feature_values``, ``collect_due``,
``touched_rows``, ``seen_by``), which own the kernels' argument lists.

Values on the program stack are boxed float64 with a **slope**: the derivative of the value
with respect to ``now`` (``since(E)`` has slope 1, ``until(trait.x)`` slope -1, everything
else 0). Between two discontinuities (an event entering or leaving a window) every value is
therefore affine in time, and each comparison can compute exactly when it will flip. The
minimum of those times and of the leaves' discontinuities is the user's next possible change:
its timer. Products or quotients of two time-varying values are not affine; their slope is
NaN and the user is then re-checked at every clock step (``now + 1``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .._rfm import RFM_F, RFM_M, RFM_R, RFM_TIER  # the modes' one definition
from ._bits import (K_BOOL, K_NULL, K_NUMBER, K_STRING, bool_value, f2i, haversine_m, i2f,
                    is_true, kind_of, null_value, number_or_null, prefetch)
from ._layout import (  # also read as K.* by the compiler and the tests
    L_AFF, L_AFF_RANK, L_AFF_SCORE, L_AVG, L_COUNT, L_DAYS, L_DISTINCT, L_MAX, L_MIN, L_SEQ,
    L_SINCE, L_SINCE_FIRST, L_SUM, L_TOP, LEAF_AUX, LEAF_AUX_LEN, LEAF_CMP_CONST, LEAF_CMP_OP,
    LEAF_COL, LEAF_FLEN, LEAF_FOFF, LEAF_KIND, LEAF_TYPE, LEAF_WINDOW, MAX_STACK, OP_ADD, OP_AND,
    OP_BETWEEN, OP_BUCKET, OP_CONST, OP_DIV, OP_EQ, OP_EXISTS_PROP, OP_EXISTS_TRAIT, OP_GE,
    OP_GT, OP_IN, OP_LE, OP_LEAF, OP_LT, OP_MUL, OP_NE, OP_NEAR, OP_NEG, OP_NOT, OP_OR, OP_PROP,
    OP_RFM, OP_SEG, OP_SKIP, OP_SUB, OP_TRAIT, OP_TRAIT_TIME, PROG_A1, PROG_A2, PROG_A3, PROG_OP,
    SEG_DLEN, SEG_DOFF, SEG_EVMASK, SEG_LLEN, SEG_LOFF, SEG_PLEN, SEG_POFF, SEG_SLOT,
    SEG_TIMEDEP, SEG_TRMASK, STEP_FLEN, STEP_FOFF, STEP_TYPE)
from ._store import NO_BLOCK, _upper_bound, _upper_bound_back, _upper_bound_last, h_len, h_off, h_start

INF_MS = np.iinfo(np.int64).max
TIMER_LEVELS = 3      # timer levels per row (``_run``): 16 bytes a row for each beyond the first
DAY_MS = 86_400_000
SMALL_VALUES = 16     # distinct values a value-frequency aggregate searches one by one (``_count_few``)
CODE_MASK = 0xFFFFFFFF   # a boxed string's code (engine/_values.py: codes < 2**32)

# Helpers that never allocate are compiled with ``_nrt=False``: without it, Numba increments
# and decrements an atomic reference count for every array argument of every call, which
# cost ~150 ns per leaf evaluation here (more than the evaluation itself).


@njit(cache=True, _nrt=False)
def _min(a, b):
    return a if a < b else b


@njit(cache=True, _nrt=False)
def _compare(op, a, b):
    """Boxed TRUE/FALSE/NULL of ``a op b`` (null operand -> null; kinds differ -> false)."""
    ka = kind_of(a)
    kb = kind_of(b)
    if ka == K_NULL or kb == K_NULL:
        return null_value()
    if ka != kb:
        return bool_value(False)
    if ka == K_NUMBER:
        if op == OP_EQ:
            return bool_value(a == b)
        if op == OP_NE:
            return bool_value(a != b)
        if op == OP_LT:
            return bool_value(a < b)
        if op == OP_LE:
            return bool_value(a <= b)
        if op == OP_GT:
            return bool_value(a > b)
        return bool_value(a >= b)
    same = f2i(a) == f2i(b)
    if op == OP_EQ:
        return bool_value(same)
    if op == OP_NE:
        return bool_value(not same)
    return bool_value(False)


@njit(cache=True, _nrt=False)
def _cross(a, sa, b, sb, now, nxt):
    """Earliest integer time > now at which ``a + sa*dt`` vs ``b + sb*dt`` may change order."""
    if sa == 0.0 and sb == 0.0:
        return nxt
    if sa != sa or sb != sb:
        return _min(nxt, now + 1)
    if not (math.isfinite(a) and math.isfinite(b)):
        return nxt
    s = sa - sb
    if s == 0.0:
        return nxt
    tau = (b - a) / s
    if tau < 0.0:
        return nxt
    c = math.floor(now + tau)
    if c <= now:
        return _min(nxt, now + 1)
    if c >= 9.0e18:
        return nxt
    return _min(nxt, np.int64(c))


@njit(cache=True, _nrt=False)
def _match(ar, e, foff, flen, fprog, consts, st):
    """Does the event at word ``e`` satisfy the filter program ``fprog[foff:foff+flen]``?"""
    if flen == 0:
        return True
    sp = 0
    for pc in range(foff, foff + flen):
        op = fprog[pc, PROG_OP]
        if op == OP_PROP:
            st[sp] = ar[e + fprog[pc, PROG_A1]]
            sp += 1
        elif op == OP_CONST:
            st[sp] = consts[fprog[pc, PROG_A1]]
            sp += 1
        elif op == OP_EXISTS_PROP:
            v = ar[e + fprog[pc, PROG_A1]]
            st[sp] = bool_value(kind_of(v) != K_NULL)
            sp += 1
        elif op >= OP_EQ and op <= OP_GE:
            sp -= 1
            st[sp - 1] = _compare(op, st[sp - 1], st[sp])
        elif op == OP_IN:
            x = st[sp - 1]
            st[sp - 1] = _in(x, consts, fprog[pc, PROG_A1], fprog[pc, PROG_A2], fprog[pc, PROG_A3])
        elif op == OP_BETWEEN:
            sp -= 2
            st[sp - 1] = _between(st[sp - 1], st[sp], st[sp + 1])
        elif op == OP_AND:
            n = fprog[pc, PROG_A1]
            ok = True
            for j in range(sp - n, sp):
                if not is_true(st[j]):
                    ok = False
            sp -= n - 1
            st[sp - 1] = bool_value(ok)
        elif op == OP_OR:
            n = fprog[pc, PROG_A1]
            ok = False
            for j in range(sp - n, sp):
                if is_true(st[j]):
                    ok = True
            sp -= n - 1
            st[sp - 1] = bool_value(ok)
        elif op == OP_NOT:
            st[sp - 1] = bool_value(not is_true(st[sp - 1]))
    return is_true(st[0])


@njit(cache=True, _nrt=False)
def _in(x, consts, off, n, negated):
    kx = kind_of(x)
    if kx == K_NULL:
        return null_value()
    found = False
    comparable = n == 0
    for j in range(off, off + n):
        c = consts[j]
        if kind_of(c) == kx:
            comparable = True
            if kx == K_NUMBER:
                if c == x:
                    found = True
            elif f2i(c) == f2i(x):
                found = True
    if not comparable:  # a value of another kind than the list's: false, as for == and !=
        return bool_value(False)
    if negated:
        return bool_value(not found)
    return bool_value(found)


@njit(cache=True, _nrt=False)
def _between(x, lo, hi):
    a = _compare(OP_GE, x, lo)
    b = _compare(OP_LE, x, hi)
    if kind_of(a) == K_NULL or kind_of(b) == K_NULL:
        return null_value()
    return bool_value(is_true(a) and is_true(b))


@njit(cache=True, _nrt=False)
def _leaf(j, r, now, retention_ms, leaves, steps, fprog, consts, arena, width, h, fst, keys, idx, mt):
    """Value, slope and next discontinuity of leaf ``j`` for user row ``r``.

    The next discontinuity is the earliest of: the next future event entering the window, and
    the departure (``t + W``) of the oldest matching event in the window, or, for a leaf that
    is compared with a constant (``LEAF_CMP_OP`` / ``LEAF_CMP_CONST``), the first departure
    after which that comparison can change (see ``_threshold_departure``), or for
    ``affinity``, ``min`` and ``max`` the first departure after which the value can change
    (``_affinity_departure``, ``_extreme_departure``).

    This finds the user's list and the window bounds, then hands over to the kind's own
    function (``_leaf_count``, ``_leaf_numeric``, ``_leaf_days``, ``_leaf_values``,
    ``_leaf_since``, ``_sequence``). Scratch: ``fst`` the filter stack, ``keys``/``idx``/``mt``
    room for one window's (value bits, event index, word position) triples; past
    ``len(keys)``, ``mt`` holds the string slots of ``_count_many`` (all 0, left all 0)."""
    kind = leaves[j, LEAF_KIND]
    if kind == L_SEQ:
        return _sequence(j, r, now, leaves, steps, fprog, consts, arena, width, h, fst)
    t = leaves[j, LEAF_TYPE]
    nxt = INF_MS
    hd = h[r, t]
    if hd == NO_BLOCK:
        if kind == L_COUNT or kind == L_SUM or kind == L_DISTINCT or kind == L_TOP or kind == L_DAYS:
            return 0.0, 0.0, nxt
        if kind == L_SINCE or kind == L_SINCE_FIRST:
            return np.inf, 0.0, nxt
        return null_value(), 0.0, nxt
    off = h_off(hd)
    w = width[t]
    base = h_start(hd)
    end = base + h_len(hd)
    hi = _upper_bound_last(arena, off, w, base, end, float(now))
    if hi < end:
        nxt = np.int64(arena[off + hi * w])
    if kind == L_SINCE:     # scans back from the newest: no search for the retention's start
        return _leaf_since(j, now, retention_ms, leaves, fprog, consts, arena, off, w, base, hi, nxt, fst)
    if kind == L_SINCE_FIRST:
        cut = float(now - retention_ms)
        lo = base if hi == base or arena[off + base * w] > cut else _upper_bound(arena, off, w, base, hi, cut)
        return _leaf_since(j, now, retention_ms, leaves, fprog, consts, arena, off, w, lo, hi, nxt, fst)
    lo = _upper_bound_back(arena, off, w, base, hi, float(now - leaves[j, LEAF_WINDOW]))
    if kind == L_COUNT:
        return _leaf_count(j, leaves, fprog, consts, arena, off, w, lo, hi, nxt, fst, mt)
    if kind == L_DAYS:
        return _leaf_days(j, leaves, fprog, consts, arena, off, w, lo, hi, nxt, fst, keys, idx, mt)
    if kind == L_SUM or kind == L_AVG or kind == L_MIN or kind == L_MAX:
        return _leaf_numeric(j, leaves, fprog, consts, arena, off, w, lo, hi, nxt, fst, mt)
    return _leaf_values(j, leaves, fprog, consts, arena, off, w, lo, hi, nxt, fst, keys, idx, mt)


# The kind functions below share one signature shape: leaf ``j`` of ``leaves``, its filter in
# ``fprog`` (stack ``fst``), ``consts``, and the user's list of this type in ``arena`` at word
# ``off`` with ``w`` words per event, where events ``lo:hi`` are the window (or, for since,
# the retention) and ``nxt`` is the next future event's time (INF_MS if none). Each returns
# (boxed value, slope, next discontinuity). They are inlined into ``_leaf`` (``inline="always"``):
# as calls, passing their arrays cost ~10 % of the evaluation (measured).

@njit(cache=True, _nrt=False, inline="always")
def _leaf_since(j, now, retention_ms, leaves, fprog, consts, arena, off, w, lo, hi, nxt, fst):
    """``since(E)`` (the latest matching event) and ``since_first(E)`` (the oldest still
    retained): now - t, slope 1, until the event leaves the retention; +inf if none. For
    ``since``, ``lo`` may be the list's start: the scan back stops at the first event past
    the retention (at or before ``now - retention_ms``)."""
    foff = leaves[j, LEAF_FOFF]
    flen = leaves[j, LEAF_FLEN]
    if leaves[j, LEAF_KIND] == L_SINCE:
        cut = float(now - retention_ms)
        k = hi - 1
        while k >= lo:
            if arena[off + k * w] <= cut:
                break
            if _match(arena, off + k * w, foff, flen, fprog, consts, fst):
                tk = np.int64(arena[off + k * w])
                return float(now - tk), 1.0, _min(nxt, tk + retention_ms)
            k -= 1
        return np.inf, 0.0, nxt
    for k in range(lo, hi):
        if _match(arena, off + k * w, foff, flen, fprog, consts, fst):
            tk = np.int64(arena[off + k * w])
            return float(now - tk), 1.0, _min(nxt, tk + retention_ms)
    return np.inf, 0.0, nxt


@njit(cache=True, _nrt=False, inline="always")
def _departure(j, leaves, consts, arena, win, col, val, cnt, mt, nxt, threshold):
    """``nxt`` lowered to when events leaving the window may change the leaf: the first
    matching event's departure, or, for a ``threshold`` kind compared with a constant, the
    first departure that may flip the comparison. ``mt[:cnt]``: the matching events' word
    positions, oldest first."""
    if cnt == 0:
        return nxt
    cop = leaves[j, LEAF_CMP_OP]
    if cop == 0 or not threshold:
        return _min(nxt, np.int64(arena[mt[0]]) + win)
    return _min(nxt, _threshold_departure(leaves[j, LEAF_KIND], cop, consts[leaves[j, LEAF_CMP_CONST]],
                                          val, cnt, col, arena, mt, win))


@njit(cache=True, _nrt=False, inline="always")
def _leaf_count(j, leaves, fprog, consts, arena, off, w, lo, hi, nxt, fst, mt):
    """``count(E, W)``: matching events in the window."""
    win = leaves[j, LEAF_WINDOW]
    foff = leaves[j, LEAF_FOFF]
    flen = leaves[j, LEAF_FLEN]
    if flen == 0:  # every event matches: no scan
        n = hi - lo
        if n > 0:
            cop = leaves[j, LEAF_CMP_OP]
            if cop == 0:
                nxt = _min(nxt, np.int64(arena[off + lo * w]) + win)
            else:
                c = consts[leaves[j, LEAF_CMP_CONST]]
                now_true = _num_cmp(cop, float(n), c)
                for k in range(1, n + 1):
                    if _num_cmp(cop, float(n - k), c) != now_true:
                        nxt = _min(nxt, np.int64(arena[off + (lo + k - 1) * w]) + win)
                        break
        return float(hi - lo), 0.0, nxt
    need = _needed(leaves[j, LEAF_CMP_OP], consts[leaves[j, LEAF_CMP_CONST]])
    if need > 0:
        # compared with >= / >: matches counted from the newest back, up to the need-th
        n, e = _count_back(arena, off, w, lo, hi, foff, flen, fprog, consts, fst, need)
        return float(n), 0.0, nxt if e < 0 else _min(nxt, np.int64(arena[e]) + win)
    cnt = 0
    for k in range(lo, hi):
        e = off + k * w
        if _match(arena, e, foff, flen, fprog, consts, fst):
            mt[cnt] = e
            cnt += 1
    val = float(cnt)
    return val, 0.0, _departure(j, leaves, consts, arena, win, 0, val, cnt, mt, nxt, True)


@njit(cache=True, _nrt=False)
def _needed(cop, c):
    """For a whole-number aggregate compared ``agg >= c`` or ``agg > c`` (``cop``): the least
    count ``n >= 1`` that makes it true, else 0 (another comparison, or one that every count
    or no count satisfies: NaN, ``c < 0``, ``>= 0``, ``c >= 2**31``).

    Such a comparison is decided by the newest ``n`` matches alone (``_count_back``,
    ``_distinct_back``): with them in the window it is true, and it stays true until the
    oldest of them leaves, since departures go oldest first and the older matches leave
    before it; with fewer it is false, and departures alone cannot make it true. Its leaf
    gives ``n`` as its value, which compares as the whole count would."""
    if cop != OP_GE and cop != OP_GT:
        return 0
    if not (c >= 0.0 and c < 2147483647.0):
        return 0
    return np.int64(math.ceil(c)) if cop == OP_GE else np.int64(math.floor(c)) + 1


@njit(cache=True, _nrt=False)
def _count_back(arena, off, w, lo, hi, foff, flen, fprog, consts, fst, need):
    """The events of ``lo:hi`` that match the filter, counted from the newest back until
    ``need`` -> (matches counted, word position of the need-th or -1 when there are fewer)."""
    n = 0
    k = hi - 1
    while k >= lo:
        e = off + k * w
        if _match(arena, e, foff, flen, fprog, consts, fst):
            n += 1
            if n == need:
                return n, e
        k -= 1
    return n, np.int64(-1)


@njit(cache=True, _nrt=False)
def _distinct_back(arena, off, w, lo, hi, col, foff, flen, fprog, consts, fst, keys, need):
    """The distinct non-null values of column ``col`` over the matching events of ``lo:hi``,
    from the newest back until ``need`` (at most ``len(keys)``, which holds them) ->
    (values found, word position of the event that brought the need-th or -1 when fewer).
    A value's first event seen is its latest, so with ``need`` found the comparison holds
    until that event leaves (``_needed``)."""
    nu = 0
    k = hi - 1
    while k >= lo:
        e = off + k * w
        k -= 1
        if flen != 0 and not _match(arena, e, foff, flen, fprog, consts, fst):
            continue
        v = arena[e + col]
        if kind_of(v) == K_NULL:
            continue
        key = f2i(v)
        u = 0
        while u < nu and keys[u] != key:
            u += 1
        if u == nu:
            keys[nu] = key
            nu += 1
            if nu == need:
                return nu, e
    return nu, np.int64(-1)


@njit(cache=True, _nrt=False, inline="always")
def _leaf_numeric(j, leaves, fprog, consts, arena, off, w, lo, hi, nxt, fst, mt):
    """``sum`` / ``avg`` / ``min`` / ``max`` of a numeric property over the matching events
    (values that are not numbers are skipped; ``sum`` of none is 0, the others null)."""
    kind = leaves[j, LEAF_KIND]
    col = leaves[j, LEAF_COL]
    win = leaves[j, LEAF_WINDOW]
    foff = leaves[j, LEAF_FOFF]
    flen = leaves[j, LEAF_FLEN]
    cnt = 0
    total = 0.0
    nnum = 0
    best = 0.0
    for k in range(lo, hi):
        e = off + k * w
        if flen != 0 and not _match(arena, e, foff, flen, fprog, consts, fst):
            continue
        mt[cnt] = e
        cnt += 1
        v = arena[e + col]
        if v == v:
            if nnum == 0:
                best = v
            elif kind == L_MIN and v < best:
                best = v
            elif kind == L_MAX and v > best:
                best = v
            total += v
            nnum += 1
    if kind == L_SUM:
        val = total
    elif kind == L_AVG:
        val = total / nnum if nnum else null_value()
    else:
        val = best if nnum else null_value()
        return val, 0.0, _extreme_departure(arena, mt, cnt, col, best, nnum, win, nxt)
    return val, 0.0, _departure(j, leaves, consts, arena, win, col, val, cnt, mt, nxt,
                                kind == L_SUM or kind == L_AVG)


@njit(cache=True, _nrt=False)
def _last_value_departure(arena, mt, cnt, col, win, nxt):
    """``nxt`` lowered to the departure of the newest matching event with a non-null value
    (after it the window holds no value). ``mt[:cnt]``: word positions, oldest first."""
    for q in range(cnt - 1, -1, -1):
        e = mt[q]
        if kind_of(arena[e + col]) != K_NULL:
            return _min(nxt, np.int64(arena[e]) + win)
    return nxt


@njit(cache=True, _nrt=False)
def _extreme_departure(arena, mt, cnt, col, best, nnum, win, nxt):
    """``nxt`` lowered to when ``min`` / ``max`` changes by time alone: when the newest event
    holding the extreme value (the same bits: 0.0 and -0.0 differ) leaves; no other departure
    moves it, and without a number in the window it stays null. ``mt[:cnt]``: the matching
    events' word positions, oldest first."""
    if nnum == 0:
        return nxt
    key = f2i(best)
    for q in range(cnt - 1, -1, -1):
        e = mt[q]
        if f2i(arena[e + col]) == key:
            return _min(nxt, np.int64(arena[e]) + win)
    return nxt


@njit(cache=True, _nrt=False, inline="always")
def _leaf_days(j, leaves, fprog, consts, arena, off, w, lo, hi, nxt, fst, keys, idx, mt):
    """``active_days(E, W)``: distinct UTC days (events are in time order, so a day change
    is a new day), or with a time zone (``LEAF_AUX_LEN`` > 0) distinct local days."""
    win = leaves[j, LEAF_WINDOW]
    foff = leaves[j, LEAF_FOFF]
    flen = leaves[j, LEAF_FLEN]
    zoff = leaves[j, LEAF_AUX]
    zlen = leaves[j, LEAF_AUX_LEN]
    cnt = 0
    days = 0
    last_day = -1
    nk = 0
    for k in range(lo, hi):
        e = off + k * w
        if flen != 0 and not _match(arena, e, foff, flen, fprog, consts, fst):
            continue
        mt[cnt] = e
        cnt += 1
        if zlen != 0:  # local days of a time zone: distinct days counted below
            keys[nk] = _local_day(np.int64(arena[e]), consts, zoff, zlen)
            nk += 1
            continue
        d = np.int64(arena[e]) // DAY_MS
        if d != last_day:
            days += 1
            last_day = d
    val = float(days) if zlen == 0 else float(_distinct_sorted(keys, idx, nk))
    return val, 0.0, _departure(j, leaves, consts, arena, win, 0, val, cnt, mt, nxt, True)


@njit(cache=True, _nrt=False, inline="always")
def _leaf_values(j, leaves, fprog, consts, arena, off, w, lo, hi, nxt, fst, keys, idx, mt):
    """Value-frequency aggregates over a property's non-null values: ``distinct`` (number of
    values), ``top_count`` (count of the most frequent), ``affinity`` (the most frequent,
    ties to the latest), ``affinity_score`` / ``affinity_rank`` of VALUE (``consts[LEAF_AUX]``).

    ``distinct``, ``top_count`` and ``affinity`` count the values in a table while they scan
    (``_count_few``: a short list, then one step per string); a window with more than
    ``SMALL_VALUES`` distinct values that are not strings is collected (``_collect_values``)
    and sorted. Both give the same answer: the most frequent value with the latest event
    among equals is unique whatever the order."""
    kind = leaves[j, LEAF_KIND]
    col = leaves[j, LEAF_COL]
    win = leaves[j, LEAF_WINDOW]
    if kind == L_DISTINCT or kind == L_TOP:
        need = _needed(leaves[j, LEAF_CMP_OP], consts[leaves[j, LEAF_CMP_CONST]])
        if need > 0:
            # compared with >= / >: values counted from the newest back, up to the need-th
            # distinct value or a value's need-th event (n < 0: too many values to count)
            foff = leaves[j, LEAF_FOFF]
            flen = leaves[j, LEAF_FLEN]
            if kind == L_TOP:
                n, e = _top_back(arena, off, w, lo, hi, col, foff, flen, fprog, consts, fst, keys, idx, mt, need)
            elif need <= SMALL_VALUES:
                n, e = _distinct_back(arena, off, w, lo, hi, col, foff, flen, fprog, consts, fst, keys, need)
            else:
                n, e = np.int64(-1), np.int64(-1)
            if n >= 0:
                return float(n), 0.0, nxt if e < 0 else _min(nxt, np.int64(arena[e]) + win)
    nu = -1
    if kind == L_DISTINCT or kind == L_TOP or kind == L_AFF:
        cnt, nu = _count_few(j, leaves, fprog, consts, arena, off, w, lo, hi, fst, keys, idx, mt)
    if nu < 0:
        cnt, nk = _collect_values(j, leaves, fprog, consts, arena, off, w, lo, hi, fst, keys, idx, mt)
    else:
        nk = nu
    if nk == 0:
        val = null_value() if kind == L_AFF or kind == L_AFF_SCORE or kind == L_AFF_RANK else 0.0
        if kind == L_AFF:     # no value in the window: departures leave it null
            return val, 0.0, nxt
    elif kind == L_AFF_SCORE:
        val = _affinity_score(keys, idx, nk, f2i(consts[leaves[j, LEAF_AUX]]), arena, off, w, win)
    elif kind == L_AFF_RANK:
        val = _affinity_rank(keys, idx, nk, f2i(consts[leaves[j, LEAF_AUX]]))
    else:
        runs = 0
        top = 0
        second = 0     # the runner-up's count (ties with the top count included)
        top_key = np.int64(0)
        top_last = -1
        # affinity == a string (LEAF_CMP_OP, engine/_plan.py): that string's count in the window
        vs = kind == L_AFF and leaves[j, LEAF_CMP_OP] != 0
        vkey = f2i(consts[leaves[j, LEAF_CMP_CONST]]) if vs else np.int64(0)
        vrun = 0
        if nu >= 0:   # the table: keys[:nu], idx[:nu] = count << 32 | latest event index
            runs = nu
            for u in range(nu):
                run = idx[u] >> 32
                last = idx[u] & 0xFFFFFFFF
                if vs and keys[u] == vkey:
                    vrun = run
                if run > top or (run == top and last > top_last):
                    second = top
                    top = run
                    top_key = keys[u]
                    top_last = last
                elif run > second:
                    second = run
        else:         # the collected (value bits, event index) pairs, sorted by value
            _sort_pairs(keys, idx, nk)
            i = 0
            while i < nk:
                key = keys[i]
                i, run, last = _run_of(keys, idx, i, nk)
                runs += 1
                if vs and key == vkey:
                    vrun = run
                if run > top or (run == top and last > top_last):
                    second = top
                    top = run
                    top_key = key
                    top_last = last
                elif run > second:
                    second = run
        if kind == L_DISTINCT:
            val = float(runs)
        elif kind == L_TOP:
            val = float(top)
        else:
            val = i2f(top_key)
            if vs and top_key != vkey:
                # == "VALUE" is false until VALUE takes the top's place: after
                # top - count(VALUE) of the top's departures at the earliest; a VALUE absent
                # from the window never does, and the comparison changes only when the
                # window's last value leaves (affinity null: the comparison null)
                if vrun == 0:
                    return val, 0.0, _last_value_departure(arena, mt, cnt, col, win, nxt)
                return val, 0.0, _affinity_departure(arena, mt, cnt, col, top_key, top - vrun, win, nxt)
            return val, 0.0, _affinity_departure(arena, mt, cnt, col, top_key, top - second, win, nxt)
    return val, 0.0, _departure(j, leaves, consts, arena, win, col, val, cnt, mt, nxt,
                                kind == L_DISTINCT or kind == L_TOP)


@njit(cache=True, _nrt=False)
def _top_back(arena, off, w, lo, hi, col, foff, flen, fprog, consts, fst, keys, idx, mt, need):
    """The count of the most frequent non-null value of column ``col`` over the matching
    events of ``lo:hi``, counted from the newest back until a value has ``need`` events ->
    (that count, word position of the event that brought a value to ``need`` or -1 when none
    has that many), or (-1, -1) when more than ``SMALL_VALUES`` values have no string slot.
    With a value at ``need``, no other has ``need`` events newer than that one (it would
    have got there first), so the comparison holds until that event leaves (``_needed``).
    Counts go in ``idx`` beside the values in ``keys``; strings find theirs through the
    slots of ``_count_many`` (set back to 0 before this returns)."""
    spos = mt[keys.shape[0]:]
    nu = 0
    others = 0
    best = 0
    found = np.int64(-1)
    k = hi - 1
    while k >= lo:
        e = off + k * w
        k -= 1
        if flen != 0 and not _match(arena, e, foff, flen, fprog, consts, fst):
            continue
        v = arena[e + col]
        kd = kind_of(v)
        if kd == K_NULL:
            continue
        u, nu, others = _entry(keys, idx, spos, nu, others, f2i(v), kd == K_STRING)
        if u < 0:
            best = -1
            break
        idx[u] += 1
        if idx[u] > best:
            best = idx[u]
            if best == need:
                found = e
                break
    _mark_slots(keys, nu, spos, False)
    if best < 0:
        return np.int64(-1), np.int64(-1)
    return np.int64(best), found


@njit(cache=True, _nrt=False)
def _affinity_departure(arena, mt, cnt, col, top_key, lead, win, nxt):
    """``nxt`` lowered to the first departure after which ``affinity`` may change: events
    leave oldest first, and only the departure of an event of the top value can take its
    place (another value's count only falls), so the top keeps it until ``lead`` (its count
    minus the runner-up's, at least 1: a tie is decided by the latest event) of its events
    have left. ``mt[:cnt]``: the matching events' word positions, oldest first."""
    need = lead if lead > 1 else 1
    seen = 0
    for q in range(cnt):
        e = mt[q]
        if f2i(arena[e + col]) == top_key:
            seen += 1
            if seen == need:
                return _min(nxt, np.int64(arena[e]) + win)
    return nxt


@njit(cache=True, _nrt=False, inline="always")
def _count_few(j, leaves, fprog, consts, arena, off, w, lo, hi, fst, keys, idx, mt):
    """The matching events of leaf ``j`` in ``lo:hi`` (word positions into ``mt``) and their
    non-null values counted in a table: ``keys[:nu]`` the value bits, ``idx[:nu]`` count << 32
    | the latest event index, in order of first appearance. -> (matches, nu), or (0, -1) when
    the window holds too many distinct values for the table.

    Up to ``SMALL_VALUES`` values the table is a list searched one by one; past that the scan
    goes on in ``_count_many``. Inlined into ``_leaf_values``: as a call it cost 11-21 % of the
    20-segment evaluation (captured batches, same process); ``_count_many`` is not, because
    a larger ``_leaf`` made every segment's evaluation slower (measured: 0.7-0.8x)."""
    col = leaves[j, LEAF_COL]
    foff = leaves[j, LEAF_FOFF]
    flen = leaves[j, LEAF_FLEN]
    cnt = 0
    nu = 0
    for k in range(lo, hi):
        e = off + k * w
        if flen != 0 and not _match(arena, e, foff, flen, fprog, consts, fst):
            continue
        mt[cnt] = e
        cnt += 1
        v = arena[e + col]
        if kind_of(v) == K_NULL:
            continue
        key = f2i(v)
        u = 0
        while u < nu and keys[u] != key:
            u += 1
        if u == nu:
            if nu == SMALL_VALUES:
                if mt.shape[0] == keys.shape[0]:    # no string slots
                    return 0, -1
                return _count_many(j, leaves, fprog, consts, arena, off, w, k, hi, fst, keys, idx, mt,
                                   cnt - 1, nu)
            keys[u] = key
            idx[u] = 0
            nu += 1
        idx[u] = (((idx[u] >> 32) + 1) << 32) | k
    return cnt, nu


@njit(cache=True, _nrt=False)
def _count_many(j, leaves, fprog, consts, arena, off, w, lo, hi, fst, keys, idx, mt, cnt, nu):
    """``_count_few``'s scan from event ``lo`` on, its table holding ``nu`` values and ``cnt``
    matches so far: a string whose code is below the number of string slots (``spos``, the
    words of ``mt`` past ``len(keys)``) finds its entry in one step (``spos[code]``: position
    + 1, 0 = none; set back to all 0 before this returns), other values are searched one by
    one, and past ``SMALL_VALUES`` of those -> (0, -1). (The slots share ``mt``'s array: one
    more argument through ``_program`` and ``_leaf`` made every evaluation slower, measured.)"""
    col = leaves[j, LEAF_COL]
    foff = leaves[j, LEAF_FOFF]
    flen = leaves[j, LEAF_FLEN]
    spos = mt[keys.shape[0]:]
    others = _mark_slots(keys, nu, spos, True)     # entries without a slot
    for k in range(lo, hi):
        e = off + k * w
        if flen != 0 and not _match(arena, e, foff, flen, fprog, consts, fst):
            continue
        mt[cnt] = e
        cnt += 1
        v = arena[e + col]
        kd = kind_of(v)
        if kd == K_NULL:
            continue
        u, nu, others = _entry(keys, idx, spos, nu, others, f2i(v), kd == K_STRING)
        if u < 0:
            cnt = -1
            break
        idx[u] = (((idx[u] >> 32) + 1) << 32) | k
    _mark_slots(keys, nu, spos, False)
    if cnt < 0:
        return 0, -1
    return cnt, nu


@njit(cache=True, _nrt=False, inline="always")
def _entry(keys, idx, spos, nu, others, key, is_string):
    """The entry of value bits ``key`` in the table ``keys[:nu]`` (a new one with ``idx`` 0 if
    it has none): a string whose code has a slot in ``spos`` finds it in one step (position +
    1, 0 = none), other values are searched one by one, ``others`` of them so far ->
    (entry, nu, others), entry -1 when ``SMALL_VALUES`` values without a slot fill the table."""
    code = key & CODE_MASK
    if is_string and code < spos.shape[0]:
        u = spos[code] - 1
        if u < 0:
            u = nu
            spos[code] = u + 1
            keys[u] = key
            idx[u] = 0
            nu += 1
        return u, nu, others
    u = 0
    while u < nu and keys[u] != key:
        u += 1
    if u == nu:
        if others == SMALL_VALUES:
            return -1, nu, others
        keys[u] = key
        idx[u] = 0
        nu += 1
        others += 1
    return u, nu, others


@njit(cache=True, _nrt=False, inline="always")
def _mark_slots(keys, nu, spos, mark):
    """The slots of the strings among ``keys[:nu]`` set to their positions + 1 (``mark``) or
    back to 0; -> the entries that have no slot."""
    nslots = spos.shape[0]
    rest = 0
    for u in range(nu):
        code = keys[u] & CODE_MASK
        if kind_of(i2f(keys[u])) == K_STRING and code < nslots:
            spos[code] = u + 1 if mark else 0
        else:
            rest += 1
    return rest


@njit(cache=True, _nrt=False)
def _collect_values(j, leaves, fprog, consts, arena, off, w, lo, hi, fst, keys, idx, mt):
    """The matching events of leaf ``j`` in ``lo:hi`` (word positions into ``mt``) and their
    non-null values (bits into ``keys``, event index into ``idx``): (matches, values)."""
    col = leaves[j, LEAF_COL]
    foff = leaves[j, LEAF_FOFF]
    flen = leaves[j, LEAF_FLEN]
    cnt = 0
    nk = 0
    for k in range(lo, hi):
        e = off + k * w
        if flen != 0 and not _match(arena, e, foff, flen, fprog, consts, fst):
            continue
        mt[cnt] = e
        cnt += 1
        v = arena[e + col]
        if kind_of(v) != K_NULL:
            keys[nk] = f2i(v)
            idx[nk] = k
            nk += 1
    return cnt, nk


@njit(cache=True, _nrt=False)
def _local_day(t, consts, off, n):
    """Local calendar day (days since 1970-01-01) of the instant ``t`` in a time zone whose
    offset table is ``consts[off:off+n]`` (instants from which an offset applies, the first
    -inf) and ``consts[off+n:off+2n]`` (the offsets, ms): floor((t + offset(t)) / 1d)."""
    lo = 0
    hi = n
    ft = float(t)
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if consts[off + mid] <= ft:
            lo = mid
        else:
            hi = mid
    return (t + np.int64(consts[off + n + lo])) // DAY_MS


@njit(cache=True, _nrt=False)
def _distinct_sorted(keys, idx, n):
    """Number of distinct values among ``keys[:n]`` (sorts them in place)."""
    _sort_pairs(keys, idx, n)
    runs = 0
    for i in range(n):
        if i == 0 or keys[i] != keys[i - 1]:
            runs += 1
    return runs


@njit(cache=True, _nrt=False)
def _affinity_score(keys, idx, n, vkey, arena, off, w, win):
    """Recency-weighted share of VALUE (bits ``vkey``) among the ``n`` collected values (event
    indices ``idx``, oldest first): weights 2^((t - t_last) / (W/2)), t_last the latest of the
    events. That equals the definition's 2^(-(now - t) / (W/2)) weights up to a common factor,
    so the share is the same at every ``now`` until an event enters or leaves the window."""
    tref = arena[off + idx[n - 1] * w]
    half = win / 2.0
    num = 0.0
    den = 0.0
    for i in range(n):
        wt = 2.0 ** ((arena[off + idx[i] * w] - tref) / half)
        den += wt
        if keys[i] == vkey:
            num += wt
    return num / den


@njit(cache=True, _nrt=False, inline="always")
def _run_of(keys, idx, i, n):
    """The run of equal ``keys`` starting at ``i`` (pairs sorted by key) -> (the index after
    it, its length, its latest event index)."""
    key = keys[i]
    run = 0
    last = -1
    while i < n and keys[i] == key:
        run += 1
        if idx[i] > last:
            last = idx[i]
        i += 1
    return i, run, last


@njit(cache=True, _nrt=False)
def _affinity_rank(keys, idx, n, vkey):
    """Rank (1 = favourite) of VALUE (bits ``vkey``) among the collected values, ordered as
    affinity() picks: by count, ties to the value whose latest event is the latest; null if
    VALUE is not among them. Sorts the pairs in place."""
    vrun = 0
    vlast = -1
    for i in range(n):
        if keys[i] == vkey:
            vrun += 1
            if idx[i] > vlast:
                vlast = idx[i]
    if vrun == 0:
        return null_value()
    _sort_pairs(keys, idx, n)
    rank = 1
    i = 0
    while i < n:
        key = keys[i]
        i, run, last = _run_of(keys, idx, i, n)
        if key != vkey and (run > vrun or (run == vrun and last > vlast)):
            rank += 1
    return float(rank)


@njit(cache=True, _nrt=False)
def _num_cmp(op, a, b):
    if op == OP_EQ:
        return a == b
    if op == OP_NE:
        return a != b
    if op == OP_LT:
        return a < b
    if op == OP_LE:
        return a <= b
    if op == OP_GT:
        return a > b
    return a >= b


@njit(cache=True, _nrt=False)
def _threshold_departure(kind, op, c, val, cnt, col, arena, mt, win):
    """Earliest departure after which ``val op c`` may change, given the ``cnt`` matching
    events in the window (word positions ``mt[:cnt]``, oldest first).

    ``sum`` and ``avg`` are simulated (their value after the k oldest leave), a result within
    rounding of the constant taken as a change (and ``avg`` changes to null when its last
    number leaves). ``count``,
    ``distinct``, ``top_count`` and ``active_days`` lose at most 1 per departure and reach 0
    when all have left, so after k departures they lie in [max(val - k, 0), val]: the first k
    where ``val - k`` (or 0) compares differently is the earliest possible change (exact for
    ``count``). Returns INF_MS when departures alone cannot change the comparison."""
    if c != c:
        return INF_MS
    now_true = _num_cmp(op, val, c)
    if kind == L_SUM or kind == L_AVG:
        # the running total minus what left can differ in its last bits from the sum that an
        # evaluation then makes afresh (oldest first): |difference| <= ~3 n u sum|v|. A total
        # that close to the constant counts as a possible change (early, never late).
        mag = 0.0
        total = 0.0       # avg: the total and the count of the numbers
        nnum = 0
        for k in range(cnt):
            v = arena[mt[k] + col]
            if v == v:
                mag += abs(v)
                total += v
                nnum += 1
        tol = 4.5e-16 * (cnt + 2) * mag
        if kind == L_SUM:
            rest = val
            for k in range(cnt):
                v = arena[mt[k] + col]
                if v == v:
                    rest -= v
                after = rest if k + 1 < cnt else 0.0
                if _num_cmp(op, after, c) != now_true or abs(after - c) <= tol:
                    return np.int64(arena[mt[k]]) + win
            return INF_MS
        # avg: the total and the count of numbers left; null (the comparison null) once the
        # last number has left
        if val != val:
            return INF_MS
        for k in range(cnt):
            v = arena[mt[k] + col]
            if v != v:
                continue
            total -= v
            nnum -= 1
            if nnum == 0:
                return np.int64(arena[mt[k]]) + win
            after = total / nnum
            if (_num_cmp(op, after, c) != now_true
                    or abs(after - c) <= tol / nnum + 4.5e-16 * abs(after)):
                return np.int64(arena[mt[k]]) + win
        return INF_MS
    for k in range(1, cnt + 1):
        after = val - k if k < cnt else 0.0
        if after < 0.0:
            after = 0.0
        if _num_cmp(op, after, c) != now_true:
            return np.int64(arena[mt[k - 1]]) + win
    return INF_MS


@njit(cache=True, _nrt=False)
def _sort_pairs(keys, idx, n):
    """Sort ``keys[:n]`` (carrying ``idx``) in place, without allocating: insertion sort
    for short runs (the usual window), heap sort beyond."""
    if n <= 32:
        for i in range(1, n):
            k = keys[i]
            v = idx[i]
            j = i - 1
            while j >= 0 and keys[j] > k:
                keys[j + 1] = keys[j]
                idx[j + 1] = idx[j]
                j -= 1
            keys[j + 1] = k
            idx[j + 1] = v
        return
    for start in range((n - 2) // 2, -1, -1):
        _sift(keys, idx, start, n)
    for end in range(n - 1, 0, -1):
        keys[0], keys[end] = keys[end], keys[0]
        idx[0], idx[end] = idx[end], idx[0]
        _sift(keys, idx, 0, end)


@njit(cache=True, _nrt=False)
def _sift(keys, idx, root, n):
    while True:
        child = 2 * root + 1
        if child >= n:
            return
        if child + 1 < n and keys[child + 1] > keys[child]:
            child += 1
        if keys[root] >= keys[child]:
            return
        keys[root], keys[child] = keys[child], keys[root]
        idx[root], idx[child] = idx[child], idx[root]
        root = child


@njit(cache=True, _nrt=False)
def _sequence(j, r, now, leaves, steps, fprog, consts, arena, width, h, fst):
    """``sequence(S1, S2, ..., W)``: true when the steps ``steps[LEAF_AUX:+LEAF_AUX_LEN]``
    occur in order (strictly increasing times) within the window; its next discontinuity is
    the next event of any step's type or, while it holds, the first departure from the
    window."""
    win = leaves[j, LEAF_WINDOW]
    soff = leaves[j, LEAF_AUX]
    slen = leaves[j, LEAF_AUX_LEN]
    nxt = INF_MS
    lower = float(now - win)  # exclusive bound for the next step's timestamp
    ok = True
    dep = INF_MS  # earliest departure from the window (only matters while it holds)
    for s in range(soff, soff + slen):
        t = steps[s, STEP_TYPE]
        hd = h[r, t]
        if hd == NO_BLOCK:
            ok = False
            continue
        off = h_off(hd)
        w = width[t]
        base = h_start(hd)
        end = base + h_len(hd)
        # from the newest end, as ``_leaf`` searches: windows end at ``now``, near the newest
        hi = _upper_bound_last(arena, off, w, base, end, float(now))
        lo_w = _upper_bound_back(arena, off, w, base, hi, float(now - win))
        if hi < end:
            nxt = _min(nxt, np.int64(arena[off + hi * w]))
        if lo_w < hi:
            dep = _min(dep, np.int64(arena[off + lo_w * w]) + win)
        if not ok:
            continue
        # the first step starts at the window's start, found just above
        k = lo_w if s == soff else _upper_bound(arena, off, w, lo_w, hi, lower)
        found = False
        while k < hi:
            if _match(arena, off + k * w, steps[s, STEP_FOFF], steps[s, STEP_FLEN], fprog, consts, fst):
                found = True
                lower = arena[off + k * w]
                break
            k += 1
        if not found:
            ok = False
    if ok:
        nxt = _min(nxt, dep)
    return bool_value(ok), 0.0, nxt


@njit(cache=True, _nrt=False)
def _program(r, now, poff, plen, prog, consts, lv, ls, lnx, traits, member, vst, sst, nst,
             lazy, loff, retention_ms, leaves, steps, fprog, arena, width, h, fst, keys, idx, mt):
    """Run a segment's program ``prog[poff:poff+plen]`` for row ``r``; returns (boxed value,
    next possible change).

    Leaves: with ``lazy``, each ``OP_LEAF`` evaluates its leaf (``_leaf``, leaf ``loff + a1``
    over the user's events: ``retention_ms`` ... ``mt`` are ``_leaf``'s arguments) when the
    program reaches it, and an ``OP_SKIP`` that finds its and/or decided jumps over the
    operands left, whose leaves are then never evaluated. Without ``lazy`` the leaves' values,
    slopes and next changes are read from ``lv``, ``ls``, ``lnx`` (a test gives them).

    Every stack entry carries its value, its slope and the earliest time it may change by
    time alone (``nst``). Comparisons add the time their affine operands cross. A false
    ``and`` can only turn true once every false operand has changed, so it takes the latest
    of their times (a true ``or`` likewise); otherwise the earliest. So a user kept out of a
    segment by something time cannot change (a trait, a count that only events can raise)
    gets no timer from the rest of the expression."""
    sp = 0
    pc = poff
    end = poff + plen
    while pc < end:
        ip = pc
        op = prog[ip, PROG_OP]
        a1 = prog[ip, PROG_A1]
        pc += 1
        if op == OP_CONST:
            vst[sp] = consts[a1]
            sst[sp] = 0.0
            nst[sp] = INF_MS
            sp += 1
        elif op == OP_LEAF:
            if lazy:
                vst[sp], sst[sp], nst[sp] = _leaf(loff + a1, r, now, retention_ms, leaves, steps, fprog, consts,
                                                  arena, width, h, fst, keys, idx, mt)
            else:
                vst[sp] = lv[a1]
                sst[sp] = ls[a1]
                nst[sp] = lnx[a1]
            sp += 1
        elif op == OP_SKIP:
            # an operand of an and (a3 = 1) / or (a3 = 0) that is false / true and cannot change
            # by time alone decides it, with the same value and time as the whole: pop this
            # and/or's a2 operands so far, push its result, jump a1 instructions past this one
            x = vst[sp - 1]
            if nst[sp - 1] == INF_MS and is_true(x) != (prog[ip, PROG_A3] != 0):
                sp -= prog[ip, PROG_A2]
                vst[sp] = bool_value(prog[ip, PROG_A3] == 0)
                sst[sp] = 0.0
                nst[sp] = INF_MS
                sp += 1
                pc += a1
        elif op == OP_TRAIT:
            vst[sp] = traits[r, a1]
            sst[sp] = 0.0
            nst[sp] = INF_MS
            sp += 1
        elif op == OP_TRAIT_TIME:
            v = traits[r, a1]
            nst[sp] = INF_MS
            if kind_of(v) != K_NUMBER:
                vst[sp] = null_value()
                sst[sp] = 0.0
            elif prog[ip, PROG_A2] > 0:
                vst[sp] = number_or_null(float(now) - v)
                sst[sp] = 1.0 if math.isfinite(v) else 0.0
            else:
                vst[sp] = number_or_null(v - float(now))
                sst[sp] = -1.0 if math.isfinite(v) else 0.0
            sp += 1
        elif op == OP_EXISTS_TRAIT:
            vst[sp] = bool_value(kind_of(traits[r, a1]) != K_NULL)
            sst[sp] = 0.0
            nst[sp] = INF_MS
            sp += 1
        elif op == OP_NEAR:
            lat = traits[r, prog[ip, PROG_A2]]
            lon = traits[r, prog[ip, PROG_A3]]
            inside = False
            if kind_of(lat) == K_NUMBER and kind_of(lon) == K_NUMBER:
                inside = haversine_m(lat, lon, consts[a1], consts[a1 + 1]) <= consts[a1 + 2]
            vst[sp] = bool_value(inside)
            sst[sp] = 0.0
            nst[sp] = INF_MS
            sp += 1
        elif op == OP_SEG:
            # another segment's changes reach this one through dependency propagation
            vst[sp] = bool_value(((member[r, a1 >> 6] >> np.uint64(a1 & 63)) & np.uint64(1)) != 0)
            sst[sp] = 0.0
            nst[sp] = INF_MS
            sp += 1
        elif op == OP_NEG:
            x = vst[sp - 1]
            if kind_of(x) == K_NUMBER:
                vst[sp - 1] = -x
                sst[sp - 1] = -sst[sp - 1]
            else:
                vst[sp - 1] = null_value()
                sst[sp - 1] = 0.0
        elif op >= OP_ADD and op <= OP_DIV:
            sp -= 1
            x = vst[sp - 1]
            y = vst[sp]
            sx = sst[sp - 1]
            sy = sst[sp]
            nst[sp - 1] = _min(nst[sp - 1], nst[sp])
            if kind_of(x) != K_NUMBER or kind_of(y) != K_NUMBER:
                vst[sp - 1] = null_value()
                sst[sp - 1] = 0.0
                continue
            if op == OP_ADD:
                v = x + y
                sl = sx + sy
            elif op == OP_SUB:
                v = x - y
                sl = sx - sy
            elif op == OP_MUL:
                v = x * y
                if sx == 0.0:
                    sl = x * sy
                elif sy == 0.0:
                    sl = y * sx
                else:
                    sl = np.nan
            else:
                if y == 0.0:
                    vst[sp - 1] = null_value()
                    sst[sp - 1] = 0.0
                    if sy != 0.0:    # a denominator that time moves off 0: defined a moment later
                        nst[sp - 1] = _min(nst[sp - 1], now + 1)
                    continue
                v = x / y
                sl = sx / y if sy == 0.0 else np.nan
            if v != v:
                vst[sp - 1] = null_value()
                sst[sp - 1] = 0.0
                if sx != 0.0 or sy != 0.0:   # e.g. 0 * inf with the 0 moving: defined a moment later
                    nst[sp - 1] = _min(nst[sp - 1], now + 1)
            else:
                vst[sp - 1] = v
                if math.isfinite(v):
                    sst[sp - 1] = sl
                else:
                    sst[sp - 1] = 0.0
                    if op == OP_MUL or op == OP_DIV:
                        # an infinite product or quotient turns null, then changes sign, when
                        # a finite factor that time moves crosses 0 (inf * since(...))
                        if sx != 0.0 and math.isfinite(x):
                            nst[sp - 1] = _cross(x, sx, 0.0, 0.0, now, nst[sp - 1])
                        if sy != 0.0 and math.isfinite(y):
                            nst[sp - 1] = _cross(y, sy, 0.0, 0.0, now, nst[sp - 1])
        elif op >= OP_EQ and op <= OP_GE:
            sp -= 1
            x = vst[sp - 1]
            y = vst[sp]
            t = _min(nst[sp - 1], nst[sp])
            if kind_of(x) == K_NUMBER and kind_of(y) == K_NUMBER:
                t = _cross(x, sst[sp - 1], y, sst[sp], now, t)
            vst[sp - 1] = _compare(op, x, y)
            sst[sp - 1] = 0.0
            nst[sp - 1] = t
        elif op == OP_IN:
            x = vst[sp - 1]
            t = nst[sp - 1]
            if kind_of(x) == K_NUMBER and sst[sp - 1] != 0.0:
                for c in range(a1, a1 + prog[ip, PROG_A2]):
                    if kind_of(consts[c]) == K_NUMBER:
                        t = _cross(x, sst[sp - 1], consts[c], 0.0, now, t)
            vst[sp - 1] = _in(x, consts, a1, prog[ip, PROG_A2], prog[ip, PROG_A3])
            sst[sp - 1] = 0.0
            nst[sp - 1] = t
        elif op == OP_BETWEEN:
            sp -= 2
            x = vst[sp - 1]
            lo = vst[sp]
            hi = vst[sp + 1]
            t = _min(nst[sp - 1], _min(nst[sp], nst[sp + 1]))
            if kind_of(x) == K_NUMBER:
                if kind_of(lo) == K_NUMBER:
                    t = _cross(x, sst[sp - 1], lo, sst[sp], now, t)
                if kind_of(hi) == K_NUMBER:
                    t = _cross(x, sst[sp - 1], hi, sst[sp + 1], now, t)
            vst[sp - 1] = _between(x, lo, hi)
            sst[sp - 1] = 0.0
            nst[sp - 1] = t
        elif op == OP_AND or op == OP_OR:
            is_and = op == OP_AND
            decided = False      # and: some operand false / or: some operand true
            t_any = INF_MS       # earliest change of any operand
            t_dec = np.int64(0)  # latest change among the deciding operands
            for q in range(sp - a1, sp):
                tv = is_true(vst[q])
                if tv != is_and:
                    decided = True
                    if nst[q] > t_dec:
                        t_dec = nst[q]
                if nst[q] < t_any:
                    t_any = nst[q]
            sp -= a1 - 1
            vst[sp - 1] = bool_value(not decided if is_and else decided)
            sst[sp - 1] = 0.0
            nst[sp - 1] = t_dec if decided else t_any
        elif op == OP_NOT:
            vst[sp - 1] = bool_value(not is_true(vst[sp - 1]))
            sst[sp - 1] = 0.0
        elif op == OP_BUCKET:
            x = vst[sp - 1]
            if kind_of(x) != K_NUMBER:
                vst[sp - 1] = null_value()
            elif x >= consts[a1]:
                vst[sp - 1] = consts[a1 + 2]
            elif x >= consts[a1 + 1]:
                vst[sp - 1] = consts[a1 + 3]
            else:
                vst[sp - 1] = consts[a1 + 4]
            sst[sp - 1] = 0.0
        elif op == OP_RFM:
            mode = prog[ip, PROG_A2]
            if mode == RFM_F:
                cnt = vst[sp - 1]
                x = cnt
                sx = 0.0
                t = nst[sp - 1]
            else:
                sp -= 1
                cnt = vst[sp - 1]
                x = vst[sp]
                sx = sst[sp]
                t = _min(nst[sp - 1], nst[sp])
                if mode == RFM_M and kind_of(x) != K_NUMBER:
                    x = 0.0             # events without a value spend nothing
            nst[sp - 1] = t
            sst[sp - 1] = 0.0
            if (kind_of(cnt) != K_NUMBER or not cnt > 0.0 or kind_of(x) != K_NUMBER
                    or kind_of(consts[a1]) != K_NUMBER):
                vst[sp - 1] = null_value()
                continue
            s = 1
            if mode == RFM_R or mode == RFM_TIER:
                for k in range(4):       # recency: since at most the boundary
                    if x <= consts[a1 + k]:
                        s += 1
                    t = _cross(x, sx, consts[a1 + k], 0.0, now, t)
            else:
                for k in range(4):
                    if x >= consts[a1 + k]:
                        s += 1
            nst[sp - 1] = t
            if mode == RFM_TIER:
                f = 1
                for k in range(4):
                    if cnt >= consts[a1 + 4 + k]:
                        f += 1
                vst[sp - 1] = consts[a1 + 8 + (s - 1) * 5 + (f - 1)]
            else:
                vst[sp - 1] = float(s)
    return vst[0], nst[0]


@njit(cache=True, _nrt=False)
def _level_of(bit, masks):
    """The timer level of a segment with this bit: the first mask holding it, else the last."""
    for k in range(masks.shape[0]):
        if (masks[k] & bit) != 0:
            return k
    return masks.shape[0]


@njit(cache=True, _nrt=False)
def _level_due(bit, times, masks, now):
    """Is a segment with this bit due in a row whose timer fired (level 0 is, by firing)?"""
    k = _level_of(bit, masks)
    return k == 0 or times[k] <= now


@njit(cache=True)
def _scratch(seg_tab, max_per, nslots):
    """Working arrays of one evaluation pass: leaf values, slopes and next changes (as many
    as the largest program has leaves), the value/slope/time and filter stacks, and room for
    one window's (key, index, position) triples, the positions followed by ``nslots`` string
    slots (``_count_many``), all 0."""
    maxleaf = 1
    for s in range(seg_tab.shape[0]):
        if seg_tab[s, SEG_LLEN] > maxleaf:
            maxleaf = seg_tab[s, SEG_LLEN]
    return (np.empty(maxleaf, dtype=np.float64), np.empty(maxleaf, dtype=np.float64),
            np.empty(maxleaf, dtype=np.int64), np.empty(MAX_STACK, dtype=np.float64),
            np.empty(MAX_STACK, dtype=np.float64), np.empty(MAX_STACK, dtype=np.int64),
            np.empty(MAX_STACK, dtype=np.float64), np.empty(max_per + 1, dtype=np.int64),
            np.empty(max_per + 1, dtype=np.int64), _positions(max_per + 1, nslots))


@njit(cache=True)
def _positions(n, nslots):
    """``n`` words for positions, then ``nslots`` string slots set to 0."""
    mt = np.empty(n + nslots, dtype=np.int64)
    mt[n:] = 0
    return mt


@njit(cache=True, nogil=True)   # a read's thread registers meanwhile (server/_gate.py)
def _run(rows, evmask, trmask, is_new, is_due, order, force, dry,
         seg_tab, dep_list, prog, consts, leaves, steps, fprog,
         arena, width, h, traits, member, timer, tnext, tmask, tblock, tblock_shift,
         now, retention_ms, max_per, nslots):
    """Evaluate segments ``order`` (plan indices, dependencies first) for user rows ``rows``.

    ``seg_tab`` columns: engine/kernels/_layout.py (``SEG_*``). A segment is evaluated for a
    row when forced, when the row is new, when the row's touched event types / traits meet
    the segment's, when the row's timer fired and the segment depends on time, or when a
    segment it references flipped for that row.

    Row-major: each user is evaluated for every segment before the next user, so its event
    lists, traits and bits stay in cache. Returns flips as (row list index, plan index, kind
    1=ENTER/2=EXIT). In ``dry`` mode nothing is written and every row where the segment holds
    is returned as ENTER.

    **Timer levels.** Per row, ``timer`` (T0) and ``tnext[r]`` (T1 <= T2 ...: ``TIMER_LEVELS``
    times in all) are lower bounds of the next time-driven change of the row's time-dependent
    segments, and ``tmask[r, k]`` names (bits ``slot & 63``) the segments of level ``k``: a
    segment belongs to the first level whose mask holds its bit, or else to the last level,
    and changes at that level's time at the earliest. A row whose timer fired (``is_due``)
    evaluates the segments of level 0 and of every other level whose time has come. After a
    row is evaluated the levels are set anew from what is known of each time-dependent
    segment (the exact next change of those just evaluated, the old level's time for the
    others): level 0 is the segments at the earliest of those times, level 1 the segments
    at the earliest time among the rest, ..., and the last level bounds all that remain. A
    row whose timer did not fire keeps its levels when none of the segments it evaluated
    changes sooner than its level's time (still lower bounds; that costs nothing per row).
    Bits that alias only make more segments evaluate: never a late timer.
    """
    m = rows.shape[0]
    nseg = seg_tab.shape[0]
    flipped = np.zeros(nseg, dtype=np.bool_)
    cap = max(1024, 2 * nseg)             # room for a row's flips at the least
    out_i = np.empty(cap, dtype=np.int64)
    out_s = np.empty(cap, dtype=np.int64)
    out_k = np.empty(cap, dtype=np.int8)
    n_out = 0
    lv, ls, lnx, vst, sst, nst, fst, keys, idx, mt = _scratch(seg_tab, max_per, nslots)
    # the time-dependent segments, their tmask bits, and per row what evaluating them gave
    ntd = 0
    for s in range(nseg):
        if seg_tab[s, SEG_TIMEDEP] != 0:
            ntd += 1
    td = np.empty(ntd, dtype=np.int64)
    tdi = np.full(nseg, -1, dtype=np.int64)    # plan index -> position in td
    k = 0
    for s in range(nseg):
        if seg_tab[s, SEG_TIMEDEP] != 0:
            td[k] = s
            tdi[s] = k
            k += 1
    sbit = np.empty(nseg, dtype=np.uint64)
    for s in range(nseg):
        sbit[s] = np.uint64(1) << np.uint64(seg_tab[s, SEG_SLOT] & 63)
    seg_nxt = np.empty(nseg, dtype=np.int64)
    lbs = np.empty(ntd, dtype=np.int64)
    placed = np.zeros(ntd, dtype=np.bool_)
    ran = np.empty(nseg, dtype=np.int64)       # the time-dependent segments a row evaluated
    nlev = tnext.shape[1] + 1
    t_old = np.empty(nlev, dtype=np.int64)
    m_old = np.empty(nlev - 1, dtype=np.uint64)
    i = 0
    while True:
        i, n_out = _run_rows(i, n_out, rows, evmask, trmask, is_new, is_due, order, force, dry,
                             seg_tab, dep_list, prog, consts, leaves, steps, fprog,
                             arena, width, h, traits, member, timer, tnext, tmask, tblock, tblock_shift,
                             now, retention_ms, max_per,
                             flipped, lv, ls, lnx, vst, sst, nst, fst, keys, idx, mt, td, tdi, sbit, seg_nxt,
                             lbs, placed, ran, t_old, m_old, out_i, out_s, out_k)
        if i >= m:
            break
        cap *= 2
        n_i = np.empty(cap, dtype=np.int64)
        n_s = np.empty(cap, dtype=np.int64)
        n_k = np.empty(cap, dtype=np.int8)
        n_i[:n_out] = out_i[:n_out]
        n_s[:n_out] = out_s[:n_out]
        n_k[:n_out] = out_k[:n_out]
        out_i, out_s, out_k = n_i, n_s, n_k
    return out_i[:n_out], out_s[:n_out], out_k[:n_out]


@njit(cache=True, _nrt=False)
def _run_rows(i0, n_out, rows, evmask, trmask, is_new, is_due, order, force, dry,
              seg_tab, dep_list, prog, consts, leaves, steps, fprog,
              arena, width, h, traits, member, timer, tnext, tmask, tblock, tblock_shift,
              now, retention_ms, max_per,
              flipped, lv, ls, lnx, vst, sst, nst, fst, keys, idx, mt, td, tdi, sbit, seg_nxt, lbs, placed, ran,
              t_old, m_old, out_i, out_s, out_k):
    """``_run``'s rows from ``i0``, flips appended to ``out_*`` from ``n_out``: returns
    ``(i, n_out)``, ``i < len(rows)`` when the output has no room for row ``i``'s flips.
    Nothing here allocates or reference-counts (``_nrt=False``): the arrays live in ``_run``."""
    m = rows.shape[0]
    nseg = seg_tab.shape[0]
    ntd = td.shape[0]
    cap = out_i.shape[0]
    nlev = tnext.shape[1] + 1
    ntypes = h.shape[1]
    ntraits = traits.shape[1]
    nwords = member.shape[1]
    for i in range(i0, m):
        if n_out + nseg > cap:
            return i, n_out                   # the caller grows the output first
        # prefetch: user rows 8 ahead (headers, traits, bits, timer), event blocks 4 ahead
        if i + 8 < m:
            r8 = rows[i + 8]
            prefetch(h, r8 * ntypes)
            if ntraits:
                prefetch(traits, r8 * ntraits)
            prefetch(member, r8 * nwords)
            prefetch(timer, r8)
            prefetch(tnext, r8 * (nlev - 1))
            prefetch(tmask, r8 * (nlev - 1))
        if i + 4 < m:
            r4 = rows[i + 4]
            for t in range(ntypes):
                hd = h[r4, t]
                if hd != NO_BLOCK:
                    # the newest events (where windows end and searches start) and the oldest
                    w4 = width[t]
                    last = h_off(hd) + (h_start(hd) + h_len(hd) - 1) * w4
                    prefetch(arena, last)
                    prefetch(arena, max(last - 4 * w4, h_off(hd)))
                    prefetch(arena, h_off(hd) + h_start(hd) * w4)
        r = rows[i]
        any_flip = False
        nran = 0
        t_old[0] = timer[r]
        for k in range(nlev - 1):
            t_old[k + 1] = tnext[r, k]
            m_old[k] = tmask[r, k]
        for oi in range(order.shape[0]):
            s = order[oi]
            timedep = seg_tab[s, SEG_TIMEDEP] != 0
            need = force[oi] or is_new[i] or (evmask[i] & np.uint64(seg_tab[s, SEG_EVMASK])) != 0 \
                or (trmask[i] & np.uint64(seg_tab[s, SEG_TRMASK])) != 0 \
                or (is_due[i] and timedep and _level_due(sbit[s], t_old, m_old, now))
            if not need and any_flip:
                for d in range(seg_tab[s, SEG_DOFF], seg_tab[s, SEG_DOFF] + seg_tab[s, SEG_DLEN]):
                    if flipped[dep_list[d]]:
                        need = True
                        break
            if not need:
                continue
            # leaves are evaluated as the program reaches them (lazy): a decided and/or skips some
            val, nxt = _program(r, now, seg_tab[s, SEG_POFF], seg_tab[s, SEG_PLEN], prog, consts, lv, ls, lnx,
                                traits, member, vst, sst, nst, True, seg_tab[s, SEG_LOFF], retention_ms,
                                leaves, steps, fprog, arena, width, h, fst, keys, idx, mt)
            res = is_true(val)
            if dry:
                if not res:
                    continue
                kind = 1
            else:
                if timedep:
                    seg_nxt[s] = nxt
                    ran[nran] = s
                    nran += 1
                slot = seg_tab[s, SEG_SLOT]
                word = slot >> 6
                bit = np.uint64(slot & 63)
                old = ((member[r, word] >> bit) & np.uint64(1)) != 0
                if res == old:
                    continue
                if res:
                    member[r, word] |= np.uint64(1) << bit
                    kind = 1
                else:
                    member[r, word] &= ~(np.uint64(1) << bit)
                    kind = 2
                if not any_flip:
                    flipped[:] = False
                    any_flip = True
                flipped[s] = True
            out_i[n_out] = i
            out_s[n_out] = s
            out_k[n_out] = kind
            n_out += 1
        if dry:
            continue
        if nran == 0 and not is_due[i]:
            continue                              # nothing new is known of its timers
        if not is_due[i]:
            # the levels still hold when no segment just evaluated changes sooner than the
            # bound of its level: keep them (a firing sets them anew anyway)
            keep = True
            for q in range(nran):
                s = ran[q]
                if seg_nxt[s] < t_old[_level_of(sbit[s], m_old)]:
                    keep = False
            if keep:
                continue
        # the row's timer levels anew (see the docstring)
        for k in range(ntd):
            lbs[k] = t_old[_level_of(sbit[td[k]], m_old)]
            placed[k] = False
        for q in range(nran):
            lbs[tdi[ran[q]]] = seg_nxt[ran[q]]
        t1 = INF_MS
        for lev in range(nlev):
            tl = INF_MS
            for k in range(ntd):
                if not placed[k] and lbs[k] < tl:
                    tl = lbs[k]
            if lev == 0:
                t1 = tl
                timer[r] = tl
            else:
                tnext[r, lev - 1] = tl
            if lev == nlev - 1:
                break
            lmask = np.uint64(0)
            for k in range(ntd):
                if not placed[k] and lbs[k] == tl:
                    lmask |= sbit[td[k]]
            for k in range(ntd):                 # a bit in this mask places its segments here
                if (lmask & sbit[td[k]]) != 0:
                    placed[k] = True
            tmask[r, lev] = lmask
        b = r >> tblock_shift
        if t1 < tblock[b]:
            tblock[b] = t1
    return m, n_out


VALUE_CHUNK = 2048


@njit(cache=True, parallel=True)
def _values(rows, seg_tab, prog, consts, leaves, steps, fprog, arena, width, h, traits, member,
            now, retention_ms, max_per, nslots, out):
    """Numeric values of the programs ``seg_tab`` (feature expressions, same layout as segments)
    for user rows ``rows`` at ``now``, into ``out[len(rows), nprog]``: numbers as they are
    (``since`` of nothing is +inf), true/false as 1/0, null and strings as NaN.

    Read-only over the shard's state, so chunks of rows run on every core (a re-score of
    every user is the one large call)."""
    m = rows.shape[0]
    nchunks = (m + VALUE_CHUNK - 1) // VALUE_CHUNK
    for c in prange(nchunks):
        _values_chunk(rows, c * VALUE_CHUNK, min(m, (c + 1) * VALUE_CHUNK), seg_tab, prog, consts,
                      leaves, steps, fprog, arena, width, h, traits, member, now, retention_ms,
                      max_per, nslots, out)


@njit(cache=True)
def _values_chunk(rows, a, b, seg_tab, prog, consts, leaves, steps, fprog, arena, width, h, traits,
                  member, now, retention_ms, max_per, nslots, out):
    nf = seg_tab.shape[0]
    lv, ls, lnx, vst, sst, nst, fst, keys, idx, mt = _scratch(seg_tab, max_per, nslots)
    ntypes = h.shape[1]
    for i in range(a, b):
        if i + 4 < b:
            r4 = rows[i + 4]
            prefetch(h, r4 * ntypes)
            for t in range(ntypes):
                hd = h[r4, t]
                if hd != NO_BLOCK:
                    prefetch(arena, h_off(hd) + h_start(hd) * width[t])
        r = rows[i]
        for s in range(nf):
            val, _ = _program(r, now, seg_tab[s, SEG_POFF], seg_tab[s, SEG_PLEN], prog, consts, lv, ls, lnx,
                              traits, member, vst, sst, nst, True, seg_tab[s, SEG_LOFF], retention_ms,
                              leaves, steps, fprog, arena, width, h, fst, keys, idx, mt)
            k = kind_of(val)
            if k == K_NUMBER:
                out[i, s] = val
            elif k == K_BOOL:
                out[i, s] = 1.0 if is_true(val) else 0.0
            else:
                out[i, s] = np.nan


@njit(cache=True)
def _seen_by(nrows, ntypes, arena, width, h, known, after_ms, t_ms, out):
    """``out[r]`` = the user row has a stored event with ``after_ms < t <= t_ms`` (the
    training population at a cutoff: users seen by then, among events still retained)."""
    for r in range(nrows):
        ok = False
        if known[r]:
            for t in range(ntypes):
                hd = h[r, t]
                if hd == NO_BLOCK:
                    continue
                off = h_off(hd)
                w = width[t]
                base = h_start(hd)
                end = base + h_len(hd)
                k = _upper_bound(arena, off, w, base, end, float(after_ms))
                if k < end and arena[off + k * w] <= t_ms:
                    ok = True
                    break
        out[r] = ok


@njit(cache=True)
def _collect_due(timer, tblock, tblock_shift, nrows, now):
    """Rows whose timer is due (<= now); their timers are reset to 'never' (the caller
    re-evaluates them, which sets them anew). Block minima are recomputed as it goes.

    The output is sized for every row of the due blocks (untouched memory past what is
    used): an array that grows inside the loop would be reference-counted at every write."""
    bsize = np.int64(1) << tblock_shift
    nblocks = (nrows + bsize - 1) >> tblock_shift
    ndue = 0
    for b in range(nblocks):
        if tblock[b] <= now:
            ndue += 1
    out = np.empty(ndue * bsize, dtype=np.int64)
    n = _collect_due_into(timer, tblock, tblock_shift, nrows, now, out)
    return out[:n]


@njit(cache=True, _nrt=False)
def _collect_due_into(timer, tblock, tblock_shift, nrows, now, out):
    n = 0
    bsize = np.int64(1) << tblock_shift
    nblocks = (nrows + bsize - 1) >> tblock_shift
    for b in range(nblocks):
        if tblock[b] > now:
            continue
        lo = b * bsize
        hi = min(lo + bsize, nrows)
        bmin = INF_MS
        for r in range(lo, hi):
            t = timer[r]
            if t <= now:
                out[n] = r
                n += 1
                timer[r] = INF_MS
            elif t < bmin:
                bmin = t
        tblock[b] = bmin
    return n


@njit(cache=True, _nrt=False)
def _place(r, pos, rows, m):
    """Position of row ``r`` in the merged list (appending it if new); returns (p, m)."""
    p = pos[r]
    if p < 0:
        p = m
        pos[r] = m
        rows[m] = r
        m += 1
    return p, m


@njit(cache=True)
def _touched(rows_ev, tids, trows, tmask, due, is_known, pos):
    """Merge event rows (with their type bits), trait rows (with trait bits) and due rows into
    one unique row list with per-row masks. ``pos`` is scratch of -1s, one per user row,
    restored to -1 before returning."""
    n = rows_ev.shape[0] + trows.shape[0] + due.shape[0]
    rows = np.empty(n, dtype=np.int64)
    evm = np.zeros(n, dtype=np.uint64)
    trm = np.zeros(n, dtype=np.uint64)
    isdue = np.zeros(n, dtype=np.bool_)
    m = 0
    for i in range(rows_ev.shape[0]):
        p, m = _place(rows_ev[i], pos, rows, m)
        evm[p] |= np.uint64(1) << np.uint64(tids[i] & 63)
    for i in range(trows.shape[0]):
        p, m = _place(trows[i], pos, rows, m)
        trm[p] |= tmask[i]
    for i in range(due.shape[0]):
        p, m = _place(due[i], pos, rows, m)
        isdue[p] = True
    isnew = np.empty(m, dtype=np.bool_)
    for i in range(m):
        isnew[i] = not is_known[rows[i]]
        pos[rows[i]] = -1
    return rows[:m], evm[:m], trm[:m], isdue[:m], isnew


# -- the kernels' interface ---------------------------------------------------------------
# One wrapper per public kernel: it owns the kernel's argument list, so callers name what
# they pass and a change of arguments is made in one place. ``plan`` is an ``engine._plan.Plan``
# (tables laid out as engine/kernels/_layout.py says). ``state`` is a shard's storage (an
# ``engine._shard.ShardCore``; any object with these attributes):
#   arena     float64[words]           every event list: per event ``width[t]`` words, the
#                                      timestamp (ms) first, then the type's property columns
#   width     int64[ntypes]            words per event of each type
#   h         int64[nrows, ntypes]     header of each user's list of each type (NO_BLOCK: none;
#                                      kernels/_store.py: h_off / h_start / h_len)
#   traits    float64[nrows, ntraits]  boxed trait values
#   member    uint64[nrows, nwords]    membership bits (bit ``slot`` of a segment)
#   timer     int64[nrows]             each user's next possible change (INF_MS: never)
#   tblock    int64[nblocks]           minimum of ``timer`` over each block of rows
#   known     bool[nrows]              the row holds a user
#   nrows     int                      rows in use
#   retention_ms, max_per: int         event retention; room per list (scratch sizes)
#   strings   StringTable              the shard's strings: ``len(strings)`` bounds the codes of
#                                      the boxed strings in the arena and traits


STRING_SLOTS = 1 << 16   # string codes below this get a slot in value-frequency scans (``_count_many``)


def _slots(state) -> int:
    """String slots for an evaluation over ``state``: one per code its strings may hold, at
    most ``STRING_SLOTS`` (8 bytes each, set to 0 per call; larger codes are searched as
    other values are)."""
    return min(len(state.strings), STRING_SLOTS)


def run_segments(plan, state, rows, evmask, trmask, is_new, is_due, order, force, now_ms,
                 tblock_shift, dry=False):
    """Evaluate segments for some users (``_run``); updates ``state.member`` and, unless
    ``dry``, the users' timer levels (``state.timer``, ``state.tnext``, ``state.tmask``; see
    ``_run``) and ``state.tblock``.

    rows          int64[m]   user rows, unique
    evmask        uint64[m]  per row: bits (``type_id & 63``) of the event types just appended
    trmask        uint64[m]  per row: bits (``trait_col & 63``) of the traits just set
    is_new        bool[m]    per row: first evaluation (every segment is evaluated)
    is_due        bool[m]    per row: its timer fired (the time-dependent segments its timer
                             names are evaluated: level 0 and the levels now due)
    order         int64[k]   plan indices to evaluate, dependencies first
    force         bool[k]    per entry of ``order``: evaluate it for every row
    now_ms        int        the evaluation time
    tblock_shift  int        log2 of the rows per ``tblock`` entry
    dry           bool       write nothing; report every row where a segment holds

    Returns (i int64[f], s int64[f], kind int8[f]): ``rows[i]`` flipped in plan index ``s``,
    kind 1 = ENTER, 2 = EXIT (dry: 1 for every row that holds)."""
    p = plan
    return _run(rows, evmask, trmask, is_new, is_due, order, force, dry,
                p.seg_tab, p.dep_list, p.prog, p.consts, p.leaves, p.steps, p.fprog,
                state.arena, state.width, state.h, state.traits, state.member, state.timer,
                state.tnext, state.tmask, state.tblock, tblock_shift, now_ms, state.retention_ms,
                state.max_per, _slots(state))


def feature_values(plan, state, rows, now_ms, out, parallel=False):
    """Numeric values of the plan's programs (feature expressions, built by
    ``_plan.build_value_plan``) for user rows ``rows`` (int64[m], C-contiguous) at ``now_ms``,
    written into ``out`` (float64[m, len(plan.names)]): numbers as they are (``since`` of
    nothing is +inf), true/false as 1/0, null and strings as NaN. Reads ``state`` only.
    ``parallel``: chunks of rows on every core (``_values``); otherwise one thread
    (``_values_chunk``, no thread hand-off for a batch's users). Returns ``out``."""
    p = plan
    args = (p.seg_tab, p.prog, p.consts, p.leaves, p.steps, p.fprog, state.arena, state.width,
            state.h, state.traits, state.member, now_ms, state.retention_ms, state.max_per,
            _slots(state), out)
    if parallel:
        _values(rows, *args)
    else:
        _values_chunk(rows, 0, len(rows), *args)
    return out


def collect_due(state, tblock_shift, now_ms):
    """int64 rows among the first ``state.nrows`` whose timer is due (<= ``now_ms``); their
    timers are reset to INF_MS and ``state.tblock`` (blocks of ``1 << tblock_shift`` rows)
    recomputed (``_collect_due``)."""
    return _collect_due(state.timer, state.tblock, tblock_shift, state.nrows, now_ms)


def touched_rows(ev_rows, tids, tr_rows, tmask, due, known, pos):
    """Merge the rows a batch touched into one unique list with per-row masks (``_touched``).

    ev_rows int64[a], tids int64[a]   rows with appended events and each event's type id
    tr_rows int64[b], tmask uint64[b] rows with set traits and the traits' bits
    due     int64[c]                  rows whose timer fired
    known   bool[nrows]               rows already evaluated once (the others are new)
    pos     int64[nrows]              scratch, all -1 (left so)

    Returns (rows int64[m], evmask uint64[m], trmask uint64[m], is_due bool[m],
    is_new bool[m]) in first-seen order: the inputs of ``run_segments``."""
    return _touched(ev_rows, tids, tr_rows, tmask, due, known, pos)


def seen_by(state, ntypes, after_ms, t_ms, out):
    """``out[r]`` (bool[state.nrows]) = known row ``r`` has a stored event of one of the first
    ``ntypes`` types with ``after_ms < t <= t_ms`` (``_seen_by``). Returns ``out``."""
    _seen_by(state.nrows, ntypes, state.arena, state.width, state.h, state.known, after_ms, t_ms, out)
    return out
