"""Hostile input, generated: the expression parser, the ingestion front door and the gRPC
column decoder only ever answer with their documented errors (or a result)."""

from __future__ import annotations

import math
import pickle
import re
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine._batch import events_from_dicts, prepare_events
from engine._pb import pb
from engine._values import unbox
from engine.errors import ExpressionError
from engine.expr import compile_expression, parse, unparse
from engine.expr._shape import PLAN_STACK, filter_need, stack_need
from engine.limits import LimitExceeded, Limits, NameBudget
from engine.server import _codec as codec
from tests.strategies import expressions

DAY = 86_400_000
T0 = 1_700_000_000_000
RET = 30 * DAY
LINE_COL = re.compile(r"^\d+:\d+: \S")
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ----------------------------------------------------------------------------- expressions


def compiles_or_expression_error(text: str):
    """The contract: a tree, or ExpressionError "line:col: message" -- nothing else."""
    try:
        tree = compile_expression(text, retention_ms=RET)
    except ExpressionError as err:
        assert LINE_COL.match(str(err)), str(err)
        assert err.line >= 1 and err.col >= 1
        return None
    # what compiles crosses Ray, prints and stays within the kernels' stack
    assert pickle.loads(pickle.dumps(tree)) == tree
    assert parse(unparse(tree)) is not None
    assert stack_need(tree) <= PLAN_STACK
    return tree


any_char = st.characters(codec=None, exclude_categories=())     # lone surrogates too
TOKENS = ["count(", "sum(", "avg(", "since(", "sequence(", "near(", "exists(", "segment(", "likely(",
          "score(", "bucket(", "until(", "rfm_tier(", "prop(", "a", "b.p", "x.value", "trait", ".", "where",
          "and", "or", "not", "in", "between", "(", ")", "[", "]", ",", "1d", "48h", "0ms", "5km", "1e6",
          "0.5", "-", "+", "*", "/", "==", "!=", ">=", "<", "null", "true", '"s"', '"\\n"', '"\\q"', '"\0"',
          '"\ud800"', "\0", "\x01", "\ud800", "#c\n", "\n", "ü", "9" * 30 + "d", "1e999", "9" * 400]


@FUZZ
@given(st.text(any_char, max_size=80))
def test_any_text_compiles_or_is_an_expression_error(text):
    compiles_or_expression_error(text)


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=40), st.text(any_char, max_size=3))
def test_token_soup_compiles_or_is_an_expression_error(tokens, tail):
    compiles_or_expression_error(" ".join(tokens) + tail)


@FUZZ
@given(st.integers(1, 3000), st.sampled_from(["and", "or"]), st.sampled_from(["(", "not ", "-", ""]),
       st.integers(0, 120))
def test_long_and_deep_inputs_are_expression_errors_or_compile(width, op, nest, depth):
    core = " " + op + " ".join(["count(a, 1d) >= 1 "] * width)
    text = nest * depth + "trait.x" + (")" * depth if nest == "(" else "") + " > 0" + core
    compiles_or_expression_error(text)


@FUZZ
@given(expressions(max_depth=3))
def test_grammar_shaped_expressions_compile(text):
    assert compiles_or_expression_error(text) is not None


@FUZZ
@given(expressions(max_depth=3), st.integers(0, len(TOKENS) - 1), st.data())
def test_mutated_grammar_shaped_expressions(text, k, data):
    at = data.draw(st.integers(0, len(text)))
    cut = data.draw(st.integers(0, 3))
    compiles_or_expression_error(text[:at] + TOKENS[k] + text[at + cut:])


class _Schema:
    """A shard schema that hands out ids: enough for the plan compiler to emit programs."""

    class _Model:
        score_trait, bucket_high, bucket_medium = "\0score", 0.75, 0.5

        @staticmethod
        def threshold(p):
            return p

    def __init__(self):
        self.ids: dict = {}

    def _id(self, key) -> int:
        return self.ids.setdefault(key, len(self.ids))

    def type_id(self, name):
        return self._id(("t", name))

    def column(self, t, prop):
        return self._id(("c", t, prop))

    def trait_col(self, name):
        return self._id(("r", name))

    def string_code(self, s):
        return self._id(("s", s))

    def model(self, name):
        return self._Model()


def _max_stack(rows, start: int, length: int) -> int:
    """The deepest stack the evaluation kernels reach running ``rows[start:start+length]``."""
    from engine.kernels import _eval as K

    push = {K.OP_CONST, K.OP_LEAF, K.OP_TRAIT, K.OP_TRAIT_TIME, K.OP_EXISTS_TRAIT, K.OP_NEAR,
            K.OP_SEG, K.OP_PROP, K.OP_EXISTS_PROP}
    pop1 = {K.OP_ADD, K.OP_SUB, K.OP_MUL, K.OP_DIV, K.OP_EQ, K.OP_NE, K.OP_LT, K.OP_LE, K.OP_GT, K.OP_GE}
    sp = top = 0
    for op, a1, _, _ in rows[start:start + length]:
        if op in push:
            sp += 1
        elif op in pop1:
            sp -= 1
        elif op == K.OP_BETWEEN:
            sp -= 2
        elif op in (K.OP_AND, K.OP_OR):
            sp -= a1 - 1
        top = max(top, sp)
    assert sp == 1
    return top


def _filters(tree):
    from engine.expr import ast as A
    from engine.expr import walk

    return [n.filter for n in walk(tree) if isinstance(n, A.EventSource) and n.filter is not None]


@FUZZ
@given(st.one_of(expressions(max_depth=3),
                 st.integers(2, 400).map(lambda n: " or ".join(["count(a where p == 1 and q in [1, 2], 1d) > 0"] * n)),
                 st.integers(2, 400).map(lambda n: "count(a where " + " and ".join(["p == 1"] * n) + ", 1d) > 0")))
def test_stack_accounting_is_what_the_compiled_program_uses(text):
    from engine._plan import _Compiler

    tree = compile_expression(text, retention_ms=RET)
    c = _Compiler(_Schema())
    c._loff = 0
    poff, plen, _, _ = c.segment(tree, lambda name: 0)
    prog = [tuple(r) for r in c.prog]
    assert _max_stack(prog, poff, plen) == stack_need(tree) <= PLAN_STACK
    fprog = [tuple(r) for r in c.fprog]
    spans = [(int(leaf[4]), int(leaf[5])) for leaf in c.leaves] + [(int(s[1]), int(s[2])) for s in c.steps]
    needs = sorted(_max_stack(fprog, off, n) for off, n in spans if n)
    assert needs == sorted(filter_need(f) for f in _filters(tree))
    assert all(n <= PLAN_STACK for n in needs)


# ----------------------------------------------------------------------------- ingestion

LIM = Limits(max_id_bytes=6, max_name_bytes=5, max_string_bytes=4, max_properties_per_event=3,
             max_event_types=3, max_properties_per_type=2)
WALL = time.time_ns() // 1_000_000

users = st.sampled_from(["u", "v", "w", "üüü", "üüüü", "seven77", "", "a\0", "\ud800", None, 5, b"u"])
types = st.sampled_from(["a", "b", "c", "d", "e", "toolong", "", "a\0", "\udc00", None, 1.5])
prop_names = st.sampled_from(["p", "q", "r", "s", "value", "", "longname", "x\0", "\ud800", 3])
prop_values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from([10**400, -(10**400), 2**63]),
    st.floats(allow_nan=True), st.sampled_from(["x", "üü", "üüü", "long!", "", "a\0", "\ud800"]),
    st.sampled_from([[1], {"a": 1}, b"b", object]),
)
timestamps = st.one_of(
    st.none(), st.sampled_from([0, -5, 1, T0, T0 - RET, T0 - RET + 1, T0 + 10, WALL, WALL + 2 * DAY,
                                2**62, 2**63, -(2**63), 2**70, -(2**70)]),
    st.sampled_from([1.5, float(T0), float("nan"), float("inf"), 1e300, True, "123"]),
)
values = st.one_of(st.none(), st.floats(allow_nan=True), st.integers(-3, 3),
                   st.sampled_from([10**400, True, "s", [1.0]]))
event_dicts = st.fixed_dictionaries(
    {"user_id": users, "type": types, "timestamp_ms": timestamps, "value": values},
    optional={"properties": st.dictionaries(prop_names, prop_values, max_size=5)},
)
garbage_events = st.lists(
    st.one_of(event_dicts, event_dicts.map(lambda e: {**e, "extra": 1}), st.sampled_from([None, 5, "e", []])),
    max_size=16,
)
budgets = st.fixed_dictionaries({
    "types": st.dictionaries(st.sampled_from(["a", "b", "c", "d"]),
                             st.lists(st.sampled_from(["p", "q", "r"]), max_size=3), max_size=4),
    "traits": st.just([]),
})


def _utf8(s: str) -> int | None:
    try:
        return len(s.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def _good_text(v, max_bytes: int) -> bool:
    return isinstance(v, str) and v != "" and "\0" not in v and (_utf8(v) or 0) <= max_bytes and \
        _utf8(v) is not None


def _given(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _timestamp_ok(ts, clock: str, bound: int) -> bool:
    if isinstance(ts, bool) or not (ts is None or isinstance(ts, (int, float))):
        return False
    if isinstance(ts, float):
        if math.isnan(ts):
            ts = None
        elif not math.isfinite(ts) or ts != math.floor(ts) or abs(ts) >= 2.0**63:
            return False
        else:
            ts = int(ts)
    if ts is not None and not -(2**63) <= ts < 2**63:
        return False
    if clock == "event":
        if ts is None or ts <= 0:
            return False
    else:
        if ts is None or ts == 0:
            ts = T0
        if ts < 0:
            return False
    return T0 - RET < ts <= bound


def _number_ok(v) -> bool:
    try:
        float(v)
    except OverflowError:
        return False
    return True


def basic_ok(e, clock: str, bound: int) -> bool:
    """Obviously correct per-event rules, without the name budget (engine/limits.py LIM)."""
    if not isinstance(e, dict) or set(e) - {"user_id", "type", "timestamp_ms", "value", "properties"}:
        return False
    if not _good_text(e["user_id"], LIM.max_id_bytes) or not _good_text(e["type"], LIM.max_name_bytes):
        return False
    if not _timestamp_ok(e["timestamp_ms"], clock, bound):
        return False
    v = e["value"]
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                          or not _number_ok(v) or not math.isfinite(float(v))):
        return False
    present = [(k, v) for k, v in (e.get("properties") or {}).items() if _given(v)]
    for k, v in present:
        if not _good_text(k, LIM.max_name_bytes) or k == "value":
            return False
        if isinstance(v, str):
            if "\0" in v or _utf8(v) is None or _utf8(v) > LIM.max_string_bytes:
                return False
        elif isinstance(v, bool):
            pass
        elif isinstance(v, (int, float)):
            if not _number_ok(v):
                return False
        else:
            return False
    return len(present) <= LIM.max_properties_per_event


def _names_of(e) -> tuple[str, set[str]]:
    return e["type"], {k for k, v in (e.get("properties") or {}).items() if _given(v)}


def _decode(cols) -> list[dict]:
    strings = cols.prop_strings.uniques()
    out = []
    for i, (u, t) in enumerate(zip(cols.user.values(), cols.type.values())):
        props = {}
        for name, col in cols.props.items():
            v = unbox(float(col[i]), lambda c: strings[c])
            if v is not None:
                props[name] = v
        out.append((u, t, int(cols.timestamp_ms[i]), float(cols.value[i]), props))
    return out


def _expected(e, clock: str):
    ts = e["timestamp_ms"]
    ts = T0 if clock == "wall" and (ts is None or ts == 0 or (isinstance(ts, float) and math.isnan(ts))) else int(ts)
    props = {k: (float(v) if isinstance(v, int) and not isinstance(v, bool) else v)
             for k, v in (e.get("properties") or {}).items() if _given(v)}
    return (e["user_id"], e["type"], ts, 0.0 if e["value"] is None else float(e["value"]) + 0.0, props)


def _check_batch(events, clock, budget_dict, accepted_idx, cols, rej, before, after):
    bound = max(T0, WALL) + LIM.max_future_ms
    ok = [i for i, e in enumerate(events) if basic_ok(e, clock, bound)]
    assert set(accepted_idx) <= set(ok)
    assert sorted({r.index for r in rej} | set(accepted_idx)) == list(range(len(events)))
    assert len({r.index for r in rej}) == len(rej) and all(r.reason for r in rej)
    # rows that bring no new name are never refused
    for i in ok:
        t, props = _names_of(events[i])
        if before.has_type(t) and all(before.has_property(t, p) for p in props):
            assert i in accepted_idx
    # without competition for the last places, exactly the valid rows are accepted
    new_types = {events[i]["type"] for i in ok} - set(before.types())
    pairs: dict[str, set[str]] = {}
    for i in ok:
        t, props = _names_of(events[i])
        pairs.setdefault(t, set()).update(p for p in props if not before.has_property(t, p))
    if len(new_types) <= max(LIM.max_event_types - before.n_types, 0) and all(
            len(new) <= max(LIM.max_properties_per_type - before.n_properties(t), 0) for t, new in pairs.items()):
        assert accepted_idx == ok
    # the budget holds every accepted name and grows only within the limits
    for i in accepted_idx:
        t, props = _names_of(events[i])
        assert after.has_type(t) and all(after.has_property(t, p) for p in props)
    assert after.n_types <= max(LIM.max_event_types, before.n_types)
    for t in after.types():
        assert after.n_properties(t) <= max(LIM.max_properties_per_type, before.n_properties(t))
    assert _decode(cols) == [_expected(events[i], clock) for i in accepted_idx]


@FUZZ
@given(garbage_events, st.sampled_from(["event", "wall"]), budgets)
def test_garbage_events_are_rejected_one_by_one(events, clock, budget_dict):
    kw = dict(now_ms=T0, retention_ms=RET, clock=clock, limits=LIM)
    before = NameBudget.from_dict(budget_dict, LIM)
    names = before.copy()
    cols, rej = events_from_dicts(events, **kw, names=names)
    accepted = sorted(set(range(len(events))) - {r.index for r in rej})
    _check_batch(events, clock, budget_dict, accepted, cols, rej, before, names)
    # the columnar path, fed the same (dict-shaped) events, agrees
    dicts = [i for i, e in enumerate(events) if isinstance(e, dict) and "extra" not in e
             and len([v for v in (e.get("properties") or {}).values() if _given(v)]) <= LIM.max_properties_per_event]
    sub = [events[i] for i in dicts]
    keys = list(dict.fromkeys(k for e in sub for k, v in (e.get("properties") or {}).items() if v is not None))
    names2 = before.copy()
    cols2, rej2 = prepare_events(
        [e["user_id"] for e in sub], [e["type"] for e in sub], [e["timestamp_ms"] for e in sub],
        [e["value"] for e in sub], {k: [(e.get("properties") or {}).get(k) for e in sub] for k in keys},
        **kw, names=names2)
    accepted2 = sorted(set(range(len(sub))) - {r.index for r in rej2})
    assert [dicts[j] for j in accepted2] == [i for i in accepted if i in set(dicts)]
    assert _decode(cols2) == _decode(cols) and names2 == names


@FUZZ
@given(st.lists(st.tuples(users, types, timestamps, values), max_size=12), st.sampled_from(["event", "wall"]),
       st.sampled_from(["object", "typed"]))
def test_garbage_columns_never_raise_for_a_row(rows, clock, form):
    n = len(rows)
    cols = [list(c) for c in zip(*rows)] if rows else [[], [], [], []]
    if form == "typed":
        arrays = []
        for c in cols:
            a = np.empty(len(c), dtype=object)   # element by element: a list stays one element
            for i, v in enumerate(c):
                a[i] = v
            arrays.append(a)
        cols = arrays
    names = NameBudget(LIM)
    out, rej = prepare_events(*cols, now_ms=T0, retention_ms=RET, clock=clock, limits=LIM, names=names)
    assert len(out) + len(rej) == n and all(0 <= r.index < n for r in rej)
    bound = max(T0, WALL) + LIM.max_future_ms
    ok = [i for i, r in enumerate(rows)
          if basic_ok({"user_id": r[0], "type": r[1], "timestamp_ms": r[2], "value": r[3]}, clock, bound)]
    accepted = sorted(set(range(n)) - {r.index for r in rej})
    assert set(accepted) <= set(ok)
    if len({rows[i][1] for i in ok}) <= LIM.max_event_types:
        assert accepted == ok


def test_oversized_batches_raise_only_limit_exceeded():
    lim = Limits(max_batch_events=2, max_batch_cells=4)
    for call in (lambda: events_from_dicts([{}] * 3, now_ms=T0, retention_ms=RET, clock="event", limits=lim),
                 lambda: prepare_events(["u"] * 2, ["e"] * 2, [T0] * 2, None, {"a": [1, 1], "b": [1, 1], "c": [1, 1]},
                                        now_ms=T0, retention_ms=RET, clock="event", limits=lim)):
        try:
            call()
        except LimitExceeded as err:
            assert "max_batch" in str(err)
        else:
            raise AssertionError("expected LimitExceeded")


# ----------------------------------------------------------------------------- gRPC columns

raw = st.binary(max_size=40)
i32s = st.lists(st.integers(-3, 6), max_size=8).map(lambda xs: np.array(xs, "<i4").tobytes())
i64s = st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8).map(lambda xs: np.array(xs, "<i8").tobytes())
f64s = st.lists(st.floats(allow_nan=True), max_size=8).map(lambda xs: np.array(xs, "<f8").tobytes())
texts = st.lists(st.one_of(st.none(), st.text("abü\0", max_size=5)), max_size=8)


@st.composite
def string_columns(draw):
    col = pb.StringColumn()
    how = draw(st.sampled_from(["valid", "random", "mutated"]))
    if how != "random":
        codec.encode_strings(draw(texts), col)
        if how == "mutated":
            field = draw(st.sampled_from(["blob", "offsets", "codes"]))
            setattr(col, field, draw(st.one_of(raw, i32s, i64s)))
        return col
    return pb.StringColumn(blob=draw(raw), offsets=draw(st.one_of(raw, i64s)), codes=draw(st.one_of(raw, i32s)))


@st.composite
def property_columns(draw):
    return pb.PropertyColumn(
        name=draw(st.sampled_from(["p", "q", "value", "", "longname", "x"])),
        kinds=draw(st.one_of(raw, st.lists(st.integers(0, 5), max_size=8).map(bytes))),
        numbers=draw(st.one_of(raw, f64s)),
        strings=draw(string_columns()),
    )


@st.composite
def columnar_events(draw):
    return pb.ColumnarEvents(
        count=draw(st.integers(0, 8)), user_ids=draw(string_columns()), types=draw(string_columns()),
        timestamp_ms=draw(st.one_of(i64s, raw)), values=draw(st.one_of(st.just(b""), f64s, raw)),
        properties=draw(st.lists(property_columns(), max_size=3)),
    )


@st.composite
def valid_columnar_events(draw):
    """Well-formed messages with hostile values: NaN/inf, extreme timestamps, NUL, long strings."""
    n = draw(st.integers(0, 8))
    ts = draw(st.lists(st.sampled_from([T0, 0, -1, 2**62, 2**63 - 1, -(2**63), WALL + 2 * DAY]),
                       min_size=n, max_size=n))
    ids = draw(st.lists(st.sampled_from(["u", "", "x" * 2000, "a\0", None]), min_size=n, max_size=n))
    tys = draw(st.lists(st.sampled_from(["e", "f", "", "t" * 300]), min_size=n, max_size=n))
    vals = draw(st.lists(st.floats(allow_nan=True), min_size=n, max_size=n))
    prop = draw(st.lists(st.one_of(st.none(), st.floats(allow_nan=True), st.booleans(),
                                   st.sampled_from(["s", "y" * 70_000, "\0"])), min_size=n, max_size=n))
    msg = codec.encode_columns(ids if None not in ids else [i or "" for i in ids], tys, ts, vals, {"p": prop})
    return msg


def _decode_or_invalid_argument(msg, limits=LIM):
    try:
        cols = codec.decode_columns(pb.ColumnarEvents.FromString(msg.SerializeToString()), limits)
    except ValueError as err:     # ColumnsError or LimitExceeded: INVALID_ARGUMENT
        assert isinstance(err, (codec.ColumnsError, LimitExceeded)), type(err)
        assert str(err)
        return None
    n = int(msg.count)
    assert len(cols["user_id"]) == len(cols["type"]) == len(cols["timestamp_ms"]) == len(cols["value"]) == n
    assert all(len(c) == n for c in cols["properties"].values())
    return cols


def _ingest_decoded(cols, n):
    out, rej = prepare_events(cols["user_id"], cols["type"], cols["timestamp_ms"], cols["value"],
                              cols["properties"] or None, now_ms=T0, retention_ms=RET, clock="event",
                              limits=LIM, names=NameBudget(LIM))
    assert len(out) + len(rej) == n


def _accepted(cols, rejections):
    """What a prepared batch holds, as plain values: comparable across input forms."""
    strings = cols.prop_strings.uniques()
    props = {k: [unbox(x, strings.__getitem__) for x in v.tolist()] for k, v in cols.props.items()}
    # "too far in the future" reasons quote the machine's clock, which moves between calls
    reasons = [(r.index, re.sub(r"at most \d+ is accepted", "at most T is accepted", r.reason))
               for r in rejections]
    return (cols.user.values(), cols.type.values(), cols.timestamp_ms.tolist(), cols.value.tolist(),
            props, reasons)


def _coded_same_as_plain(cols, limits):
    """Dictionary-coded columns (as decoded) validate exactly as their plain values do."""
    from engine._coded import plain

    def prep(c):
        names = NameBudget(limits)
        return prepare_events(c["user_id"], c["type"], c["timestamp_ms"], c["value"], c["properties"] or None,
                              now_ms=T0, retention_ms=RET, clock="event", limits=limits, names=names)

    flat = {"user_id": list(plain(cols["user_id"])), "type": list(plain(cols["type"])),
            "timestamp_ms": cols["timestamp_ms"], "value": cols["value"],
            "properties": {k: plain(v) for k, v in cols["properties"].items()}}
    assert _accepted(*prep(cols)) == _accepted(*prep(flat))


@FUZZ
@given(columnar_events())
def test_malformed_columns_are_invalid_argument_never_internal(msg):
    cols = _decode_or_invalid_argument(msg)
    if cols is not None:
        _ingest_decoded(cols, int(msg.count))
        _coded_same_as_plain(cols, LIM)


@FUZZ
@given(valid_columnar_events())
def test_hostile_values_in_wellformed_columns_are_rejected_per_event(msg):
    cols = _decode_or_invalid_argument(msg, Limits())
    assert cols is not None
    _ingest_decoded(cols, int(msg.count))
    _coded_same_as_plain(cols, LIM)
    _coded_same_as_plain(cols, Limits())


@FUZZ
@given(st.lists(st.builds(
    pb.Event, user_id=st.text("uü", max_size=3), type=st.sampled_from(["e", "", "f"]),
    timestamp_ms=st.sampled_from([T0, 0, 2**62, -(2**63)]), value=st.floats(allow_nan=True),
    properties=st.dictionaries(st.text("pqrst", min_size=1, max_size=2),
                               st.builds(pb.Value, number_value=st.floats(allow_nan=True)), max_size=6)),
    max_size=6), st.one_of(st.none(), columnar_events()))
def test_event_batches_decode_or_are_invalid_argument(events, columns):
    batch = pb.EventBatch(events=events)
    if columns is not None:
        batch.columns.CopyFrom(columns)
    try:
        cols = codec.batch_to_columns(batch, LIM)
    except ValueError as err:
        assert isinstance(err, (codec.ColumnsError, LimitExceeded)), type(err)
        return
    _ingest_decoded(cols, len(cols["timestamp_ms"]))
