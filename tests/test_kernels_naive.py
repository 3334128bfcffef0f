"""Each evaluation kernel against its naive twin (tests/naive.py) on random inputs, one kernel
per test, so that a failure points at one kernel rather than at a whole evaluation.

The kernels get hand-built inputs laid out as engine/kernels/_layout.py says (one user's
event list in a small arena, one leaf row, one program), not a shard."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import _values as V
from engine.kernels import _eval as K
from engine.kernels import _layout as LY
from engine.kernels._store import NO_BLOCK, h_pack
from engine.kernels._strings import StringTable
from tests import naive as N

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BASE = 1_700_000_000_000          # not a day boundary
UNITS = (1, 1_000, 3_600_000, 21_600_000)
DYADIC = (0.0, 0.5, 1.0, 2.5, 10.0, 40.0)
NUM_COL, SKU_COL, WIDTH = 1, 2, 3   # arena columns of the test type: [t, num, sku]
CMP_OPS = {"==": K.OP_EQ, "!=": K.OP_NE, "<": K.OP_LT, "<=": K.OP_LE, ">": K.OP_GT, ">=": K.OP_GE}
FUNCS = {"count": K.L_COUNT, "sum": K.L_SUM, "avg": K.L_AVG, "min": K.L_MIN, "max": K.L_MAX,
         "distinct": K.L_DISTINCT, "top_count": K.L_TOP, "active_days": K.L_DAYS,
         "affinity": K.L_AFF, "affinity_score": K.L_AFF_SCORE, "affinity_rank": K.L_AFF_RANK}
THRESHOLD_FUNCS = ("count", "sum", "avg", "distinct", "top_count", "active_days")


def box(v) -> float:
    if v is None:
        return V.NULL
    if isinstance(v, bool):
        return V.box_bool(v)
    if isinstance(v, N.Str):
        return V.box_string_code(v.code)
    return float(v)


def unbox(x: float):
    bits = int(np.array([x], np.float64).view(np.int64)[0])
    if bits == int(V.NULL_BITS):
        return None
    tag = bits & int(V.TAG_MASK)
    if tag == int(V.STR_TAG):
        return N.Str(bits & int(V.PAYLOAD_MASK))
    if tag == int(V.BOOL_TAG):
        return bool(bits & int(V.PAYLOAD_MASK))
    return float(x)


def same(a, b, approx=False) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if approx:
            return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
        return a == b or (math.isinf(a) and a == b)
    return a == b and type(a) is type(b)


# -- inputs: one user's events of one type --------------------------------------------------

@st.composite
def event_lists(draw):
    unit = draw(st.sampled_from(UNITS))
    # a few values in short lists; sometimes more distinct values than the kernel searches
    # one by one (SMALL_VALUES), so that its string slots and its sorting path run too;
    # strings and numbers mixed in the sku column
    size = draw(st.sampled_from(("few", "many", "long")))
    ks = sorted(draw(st.lists(st.integers(0, 20), min_size=60 if size == "long" else 0,
                              max_size={"few": 12, "many": 40, "long": 150}[size])))
    skus = st.integers(0, {"few": 2, "many": 40, "long": 30}[size])
    nums = skus if size != "long" else st.integers(0, draw(st.sampled_from((3, 30))))
    events = [N.Event(BASE + k * unit,
                      draw(st.one_of(st.none(), st.sampled_from(DYADIC + (-0.0,)))),   # -0.0: min/max bits
                      draw(st.one_of(st.none(), st.builds(N.Str, skus), nums.map(float))))
              for k in ks]
    now = BASE + draw(st.integers(0, 24)) * unit
    window = draw(st.integers(1, 10) if size != "long" else st.integers(8, 30)) * unit
    return events, now, window


def arena_of(events):
    arena = np.zeros(max(1, len(events)) * WIDTH, np.float64)
    for i, e in enumerate(events):
        arena[i * WIDTH:(i + 1) * WIDTH] = (float(e.t), box(e.num), box(e.sku))
    h = np.full((1, 1), NO_BLOCK, np.int64)
    if events:
        h[0, 0] = h_pack(0, 0, len(events), 0)
    return arena, np.array([WIDTH], np.int64), h


def run_leaf(events, now, retention_ms, kind, window, *, col=0, filt=None, aux=(0, 0),
             cmp=(0, 0), consts=(), slots=64):
    """The ``_leaf`` kernel on one leaf row over ``events``; ``filt`` = the minimum of ``num``
    (a where filter ``num >= c``, its constant first in ``consts``); ``slots`` string slots
    (codes from ``slots`` on are looked up as other values are). The slots are all 0 again
    afterwards."""
    consts = list(consts)
    fprog = np.zeros((0, LY.PROG_NCOLS), np.int64)
    foff = flen = 0
    if filt is not None:
        consts.append(filt)
        fprog = np.array([[K.OP_PROP, NUM_COL, 0, 0], [K.OP_CONST, len(consts) - 1, 0, 0],
                          [K.OP_GE, 0, 0, 0]], np.int64)
        flen = 3
    row = np.zeros((1, LY.LEAF_NCOLS), np.int64)
    row[0, LY.LEAF_KIND], row[0, LY.LEAF_TYPE], row[0, LY.LEAF_COL] = kind, 0, col
    row[0, LY.LEAF_WINDOW], row[0, LY.LEAF_FOFF], row[0, LY.LEAF_FLEN] = window, foff, flen
    row[0, LY.LEAF_AUX], row[0, LY.LEAF_AUX_LEN] = aux
    row[0, LY.LEAF_CMP_OP], row[0, LY.LEAF_CMP_CONST] = cmp
    arena, width, h = arena_of(events)
    n = len(events) + 1
    mt = K._positions(n, slots)
    val, slope, nxt = K._leaf(0, 0, now, retention_ms, row, np.zeros((0, LY.STEP_NCOLS), np.int64), fprog,
                              np.array([box(c) for c in consts] or [0.0], np.float64), arena, width, h,
                              np.empty(LY.MAX_STACK, np.float64), np.empty(n, np.int64),
                              np.empty(n, np.int64), mt)
    assert not mt[n:].any()
    return unbox(val), slope, int(nxt)


def matcher(filt):
    return (lambda e: True) if filt is None else (lambda e: e.num is not None and e.num >= filt)


filters = st.one_of(st.none(), st.sampled_from(DYADIC))


@pytest.mark.parametrize("func", sorted(FUNCS))
@SETTINGS
@given(inp=event_lists(), filt=filters, value=st.builds(N.Str, st.integers(0, 3)),
       slots=st.sampled_from((0, 20, 64)))
def test_leaf_aggregates_match_their_definitions(func, inp, filt, value, slots):
    """Value and next discontinuity of every window aggregate (no threshold), with string
    slots for none, some or all of the codes."""
    events, now, window = inp
    col = NUM_COL if func in ("sum", "avg", "min", "max") else SKU_COL
    consts, aux = [], (0, 0)
    if func in ("affinity_score", "affinity_rank"):
        consts, aux = [value], (0, 0)
    val, slope, nxt = run_leaf(events, now, 0, FUNCS[func], window, col=col, filt=filt, aux=aux,
                               consts=consts, slots=slots)
    want = N.leaf_value(func, events, now, window, matcher(filt), value=value)
    assert same(val, want, approx=func == "affinity_score"), (func, val, want)
    assert slope == 0.0
    if func == "affinity":
        assert nxt == N.affinity_next_change(events, now, window, matcher(filt))
    else:
        assert nxt == N.leaf_next_change(func, events, now, window, matcher(filt))


@SETTINGS
@given(inp=event_lists(), filt=filters, value=st.builds(N.Str, st.integers(0, 3)))
def test_affinity_compared_with_a_string_holds_until_its_timer(inp, filt, value):
    """``affinity(...) == "VALUE"`` schedules its timer at the first departure that can
    change the comparison: while VALUE is not the top, when VALUE may take its place (never,
    when VALUE is absent: then when the window's last value leaves)."""
    op = "=="
    events, now, window = inp
    val, _, nxt = run_leaf(events, now, 0, K.L_AFF, window, col=SKU_COL, filt=filt,
                           cmp=(CMP_OPS[op], 0), consts=[value])
    m = matcher(filt)
    want = N.leaf_value("affinity", events, now, window, m)
    assert same(val, want)
    assert nxt == N.affinity_compare_next_change(events, now, window, value, m)
    held = N.compare(op, want, value)
    for t in N.change_times(events, now, window, nxt):
        assert N.compare(op, N.leaf_value("affinity", events, t, window, m), value) == held, (t, nxt)


@SETTINGS
@given(inp=event_lists(), filt=filters)
def test_affinity_holds_until_its_next_change(inp, filt):
    """``affinity`` schedules its timer at the first departure that can change it, later than
    the oldest event's when the top value leads: the value holds at every arrival or departure
    before then."""
    events, now, window = inp
    val, _, nxt = run_leaf(events, now, 0, K.L_AFF, window, col=SKU_COL, filt=filt)
    m = matcher(filt)
    want = N.leaf_value("affinity", events, now, window, m)
    assert same(val, want)
    assert nxt > now
    for t in N.change_times(events, now, window, nxt):
        assert N.leaf_value("affinity", events, t, window, m) == want, (t, nxt)


@SETTINGS
@given(event_lists(), filters, st.sampled_from((-5 * 3_600_000, 0, 3 * 3_600_000, 5_400_000)))
def test_leaf_active_days_in_a_fixed_offset_zone(inp, filt, offset_ms):
    """active_days with a time zone: distinct local days (a one-entry offset table)."""
    events, now, window = inp
    val, _, nxt = run_leaf(events, now, 0, K.L_DAYS, window, filt=filt, aux=(0, 1),
                           consts=[-math.inf, float(offset_ms)])
    assert val == N.leaf_value("active_days", events, now, window, matcher(filt), zone_offset_ms=offset_ms)
    assert nxt == N.leaf_next_change("active_days", events, now, window, matcher(filt))


@SETTINGS
@given(event_lists(), st.sampled_from(("since", "since_first")), filters, st.integers(1, 30))
def test_leaf_since_matches_its_definition(inp, func, filt, ret_units):
    events, now, window = inp
    retention = window * ret_units // 3 + 1
    kind = K.L_SINCE if func == "since" else K.L_SINCE_FIRST
    val, slope, nxt = run_leaf(events, now, retention, kind, 0, filt=filt)
    want = N.since_value(func, events, now, retention, matcher(filt))
    assert val == want
    assert slope == (0.0 if math.isinf(want) else 1.0)
    assert nxt == N.since_next_change(func, events, now, retention, matcher(filt))


@SETTINGS
@given(event_lists(), st.sampled_from(THRESHOLD_FUNCS), filters, st.sampled_from(sorted(CMP_OPS)),
       st.sampled_from((0.0, 1.0, 2.0, 3.0, 10.0, 12.5)), st.sampled_from((0, 20, 64)))
def test_leaf_threshold_timer_never_misses_a_flip(inp, func, filt, op, c, slots):
    """A leaf compared with a constant may schedule its timer later than its next departure,
    but never after the first time the comparison can flip."""
    events, now, window = inp
    col = NUM_COL if func in ("sum", "avg") else SKU_COL
    val, _, nxt = run_leaf(events, now, 0, FUNCS[func], window, col=col, filt=filt,
                           cmp=(CMP_OPS[op], 0), consts=[c], slots=slots)
    m = matcher(filt)
    true = N.leaf_value(func, events, now, window, m)
    reach = ((func in ("distinct", "top_count") or (func == "count" and filt is not None))
             and op in (">=", ">") and not (op == ">=" and c == 0))
    if reach:
        # decided by the newest matches alone (a count without a filter needs no scan): the
        # value is the whole count up to the least count that makes the comparison true
        # (K._needed), which compares as the count does
        need = math.ceil(c) if op == ">=" else math.floor(c) + 1
        assert val == min(true, need) and N.compare(op, val, c) == N.compare(op, true, c)
    else:
        assert val == true
    assert nxt >= N.leaf_next_change(func, events, now, window, m)   # never before a change
    held = N.compare(op, val, c)
    for t in N.change_times(events, now, window, nxt):
        assert N.compare(op, N.leaf_value(func, events, t, window, m), c) == held, (t, nxt)
    if reach or (func == "count" and len({e.t for e in events}) == len(events)):
        # exact for those (for another count, when no two events leave at once): the first
        # flip (a sum within rounding of the constant counts as a possible flip, so it may
        # come earlier)
        flips = [t for t in N.change_times(events, now, window, N.INF_MS)
                 if N.compare(op, N.leaf_value(func, events, t, window, m), c) != held]
        future = min((e.t for e in events if e.t > now), default=N.INF_MS)
        assert nxt == min(flips + [future, N.INF_MS])


# -- programs -------------------------------------------------------------------------------

NLEAVES = 3
nums = st.recursive(
    st.one_of(st.tuples(st.just("leaf"), st.integers(0, NLEAVES - 1)),
              st.tuples(st.just("const"), st.integers(-6, 6).map(float))),
    lambda x: st.one_of(st.tuples(st.just("neg"), x),
                        st.tuples(st.sampled_from(("+", "-", "*")), x, x)),
    max_leaves=4)
bools = st.recursive(
    st.tuples(st.sampled_from(sorted(CMP_OPS)), nums, nums),
    lambda b: st.one_of(st.tuples(st.sampled_from(("and", "or")), st.lists(b, min_size=2, max_size=3)),
                        st.tuples(st.just("not"), b)),
    max_leaves=4)
leaf_states = st.lists(st.tuples(st.one_of(st.none(), st.integers(-8, 8).map(float)),
                                 st.sampled_from((0.0, 1.0, -1.0))), min_size=NLEAVES, max_size=NLEAVES)


def postfix(tree, prog, consts, skips=False):
    """The tree as a postfix program; with ``skips``, an ``OP_SKIP`` after each operand of an
    and/or but the last, as the compiler emits them."""
    op = tree[0]
    if op == "const":
        consts.append(box(tree[1]))
        prog.append((K.OP_CONST, len(consts) - 1, 0, 0))
    elif op == "leaf":
        prog.append((K.OP_LEAF, tree[1], 0, 0))
    elif op in ("neg", "not"):
        postfix(tree[1], prog, consts, skips)
        prog.append((K.OP_NEG if op == "neg" else K.OP_NOT, 0, 0, 0))
    elif op in ("and", "or"):
        at = []
        for k, x in enumerate(tree[1]):
            postfix(x, prog, consts, skips)
            if skips and k + 1 < len(tree[1]):
                at.append(len(prog))
                prog.append(None)
        prog.append((K.OP_AND if op == "and" else K.OP_OR, len(tree[1]), 0, 0))
        for k, pc in enumerate(at):
            prog[pc] = (K.OP_SKIP, len(prog) - pc - 1, k + 1, int(op == "and"))
    else:
        postfix(tree[1], prog, consts, skips)
        postfix(tree[2], prog, consts, skips)
        code = CMP_OPS.get(op) or {"+": K.OP_ADD, "-": K.OP_SUB, "*": K.OP_MUL}[op]
        prog.append((code, 0, 0, 0))


def run_program(now, p, consts, lv, ls, lnx, stack):
    """``_program`` over given leaves (not lazy: their values, slopes and next changes are
    read from ``lv``, ``ls``, ``lnx``; the leaf-evaluation arguments are empty)."""
    i2 = np.zeros((0, 1), np.int64)
    i1 = np.zeros(1, np.int64)
    return K._program(0, now, 0, len(p), p, consts, lv, ls, lnx, np.zeros((1, 1), np.float64),
                      np.zeros((1, 1), np.uint64), *stack, False, 0, 0, i2, i2, i2, np.zeros(1),
                      i1, i2, np.zeros(1), i1, i1, i1)


@SETTINGS
@given(bools, leaf_states, st.integers(0, 10**6))
def test_program_value_and_timer(tree, leaves, now):
    """``_program`` on a stack program over affine leaves: its value is the tree's, and its
    truth does not change before the time it returns."""
    prog, consts = [], []
    postfix(tree, prog, consts)
    p = np.array(prog, np.int64).reshape(-1, LY.PROG_NCOLS)
    lv = np.array([box(v) for v, _ in leaves], np.float64)
    ls = np.array([0.0 if v is None else s for v, s in leaves], np.float64)
    lnx = np.full(NLEAVES, K.INF_MS, np.int64)
    stack = (np.empty(LY.MAX_STACK, np.float64), np.empty(LY.MAX_STACK, np.float64),
             np.empty(LY.MAX_STACK, np.int64))
    val, nxt = run_program(now, p, np.array(consts or [0.0], np.float64), lv, ls, lnx, stack)
    want = N.program_value(tree, [(v, 0.0 if v is None else s) for v, s in leaves], 0)
    assert unbox(val) == want
    assert nxt > now
    for dt in range(1, min(int(nxt) - now, 80)):
        assert (N.program_value(tree, leaves, dt) is True) == (want is True), (dt, int(nxt) - now)


@SETTINGS
@given(bools, leaf_states, st.integers(0, 10**6))
def test_program_skips_change_nothing(tree, leaves, now):
    """With an ``OP_SKIP`` after every and/or operand, ``_program`` returns the same value and
    the same next change as without."""
    stack = (np.empty(LY.MAX_STACK, np.float64), np.empty(LY.MAX_STACK, np.float64),
             np.empty(LY.MAX_STACK, np.int64))
    lv = np.array([box(v) for v, _ in leaves], np.float64)
    ls = np.array([0.0 if v is None else s for v, s in leaves], np.float64)
    lnx = np.array([K.INF_MS if k % 2 else 1000 + k for k in range(NLEAVES)], np.int64)
    got = []
    for skips in (False, True):
        prog, consts = [], []
        postfix(tree, prog, consts, skips)
        p = np.array(prog, np.int64).reshape(-1, LY.PROG_NCOLS)
        val, nxt = run_program(now, p, np.array(consts or [0.0], np.float64), lv, ls, lnx, stack)
        got.append((int(np.float64(val).view(np.int64)), int(nxt)))
    assert got[1] == got[0]


# -- timers ---------------------------------------------------------------------------------

@SETTINGS
@given(st.integers(0, 3), st.lists(st.one_of(st.just(N.INF_MS), st.integers(0, 100)), max_size=40),
       st.integers(0, 100), st.data())
def test_collect_due(shift, timers, now, data):
    nrows = len(timers)
    bsize = 1 << shift
    nblocks = (nrows >> shift) + 1
    tblock = [N.INF_MS] * nblocks
    for b in range(nblocks):       # a valid state: each block's bound at most its minimum
        lo = min(timers[b * bsize:(b + 1) * bsize], default=N.INF_MS)
        tblock[b] = lo - data.draw(st.integers(0, 5)) if lo != N.INF_MS else lo
    state = SimpleNamespace(timer=np.array(timers, np.int64), tblock=np.array(tblock, np.int64), nrows=nrows)
    due = K.collect_due(state, shift, now)
    want_due, want_timer, want_tblock = N.collect_due(timers, tblock, bsize, nrows, now)
    assert due.tolist() == want_due
    assert state.timer.tolist() == want_timer
    assert state.tblock.tolist() == want_tblock


@SETTINGS
@given(st.integers(1, 30), st.data())
def test_touched_rows(nrows, data):
    rows = st.integers(0, nrows - 1)
    ev_rows = data.draw(st.lists(rows, max_size=20))
    tids = data.draw(st.lists(st.integers(0, 70), min_size=len(ev_rows), max_size=len(ev_rows)))
    tr_rows = data.draw(st.lists(rows, max_size=10))
    tmask = data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=len(tr_rows), max_size=len(tr_rows)))
    due = data.draw(st.lists(rows, max_size=10, unique=True))
    known = data.draw(st.lists(st.booleans(), min_size=nrows, max_size=nrows))
    pos = np.full(nrows, -1, np.int64)
    got = K.touched_rows(np.array(ev_rows, np.int64), np.array(tids, np.int64), np.array(tr_rows, np.int64),
                         np.array(tmask, np.uint64), np.array(due, np.int64), np.array(known), pos)
    want = N.touched(ev_rows, tids, tr_rows, tmask, due, known)
    assert [a.tolist() for a in got] == [list(w) for w in want]
    assert (pos == -1).all()


# -- string tables --------------------------------------------------------------------------

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=6)


@SETTINGS
@given(st.lists(st.lists(texts, max_size=15), min_size=1, max_size=4), st.lists(texts, max_size=8))
def test_string_table_intern(batches, probes):
    table, twin = StringTable(capacity=4), N.StringTable()
    for batch in batches:
        assert table.intern_values(batch).tolist() == twin.intern(batch)
    assert len(table) == len(twin.codes)
    assert table.lookup_values(probes).tolist() == twin.lookup(probes)
    assert [table.get(c) for c in range(len(table))] == [twin.get(c) for c in range(len(twin.codes))]


@pytest.mark.parametrize("func", ["sum", "avg"])
@SETTINGS
@given(st.lists(st.sampled_from((0.1, 0.2, 0.3, 0.7, 1.1, 2.2)), min_size=1, max_size=12),
       st.sampled_from(sorted(CMP_OPS)), st.sampled_from((0.3, 0.5, 0.6, 1.0, 1.3, 2.5, 3.3)))
def test_sum_threshold_timer_is_never_late_with_inexact_decimals(func, nums, op, c):
    """``sum`` / ``avg`` compared with a constant, over values that binary floats cannot hold
    exactly: the remaining sum after departures, summed afresh oldest first (as an evaluation
    sums), can differ in its last bit from the running total minus what left, so the timer
    must not trust a comparison that close to the constant."""
    unit = 3_600_000
    events = [N.Event(BASE + k * unit, x, None) for k, x in enumerate(nums)]
    now, window = BASE + (len(nums) - 1) * unit, len(nums) * unit
    val, _, nxt = run_leaf(events, now, 0, FUNCS[func], window, col=NUM_COL, cmp=(CMP_OPS[op], 0), consts=[c])
    assert val == N.leaf_value(func, events, now, window)
    held = N.compare(op, val, c)
    for t in N.change_times(events, now, window, nxt):
        assert N.compare(op, N.leaf_value(func, events, t, window), c) == held, (t, nxt)


@SETTINGS
@given(st.lists(st.integers(0, 12), max_size=40), st.integers(-1, 14), st.integers(1, 3), st.data())
def test_list_searches_match_searchsorted(times, x, w, data):
    """The three searches of a list's timestamps (``_upper_bound``, and ``_upper_bound_last`` /
    ``_upper_bound_back`` that start from its newest end) all give ``searchsorted(right)``
    over any sub-range, duplicates included."""
    from engine.kernels._store import _upper_bound, _upper_bound_back, _upper_bound_last

    ts = np.sort(np.array(times, dtype=np.float64))
    lo = data.draw(st.integers(0, len(ts)))
    hi = data.draw(st.integers(lo, len(ts)))
    ar = np.full(3 + len(ts) * w, -7.0)      # words before the list, and other columns between
    off = 3
    ar[off + np.arange(len(ts)) * w] = ts
    want = lo + int(np.searchsorted(ts[lo:hi], x, side="right"))
    for search in (_upper_bound, _upper_bound_last, _upper_bound_back):
        assert search(ar, off, w, lo, hi, float(x)) == want, search.__name__
