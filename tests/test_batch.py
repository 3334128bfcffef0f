"""Input validation: prepare_events, events_from_dicts, prepare_traits (engine/_batch.py)."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine._batch import (
    EventColumns,
    Rejection,
    StringColumn,
    TraitColumns,
    events_from_dicts,
    prepare_events,
    prepare_traits,
)
from engine._values import NULL_BITS, unbox
from engine.kernels._strings import fnv1a64

NOW = 1_700_000_000_000
DAY = 86_400_000
RET = 30 * DAY
EV = dict(now_ms=NOW, retention_ms=RET, clock="event")
WALL = dict(now_ms=NOW, retention_ms=RET, clock="wall")
T = NOW - 1000


def decode_events(cols: EventColumns) -> list[dict]:
    """EventColumns -> event dicts (properties without absent ones), for comparisons."""
    strings = cols.prop_strings.uniques()
    users, types = cols.user.values(), cols.type.values()
    out = []
    for i in range(len(cols)):
        props = {}
        for name, col in cols.props.items():
            v = unbox(float(col[i]), lambda c: strings[c])
            if v is not None:
                props[name] = v
        out.append(
            {
                "user_id": users[i],
                "type": types[i],
                "timestamp_ms": int(cols.timestamp_ms[i]),
                "value": float(cols.value[i]),
                "properties": props,
            }
        )
    return out


def decode_traits(cols: TraitColumns) -> list[tuple[str, dict, int]]:
    strings = cols.strings.uniques()
    users = cols.user.values()
    out = []
    for i in range(len(cols)):
        traits = {}
        for name, (boxed, given_) in cols.traits.items():
            if given_[i]:
                traits[name] = unbox(float(boxed[i]), lambda c: strings[c])
        out.append((users[i], traits, int(cols.timestamp_ms[i])))
    return out


def reasons(rej: list[Rejection]) -> dict[int, str]:
    return {r.index: r.reason for r in rej}


def one(user="u1", type_="view", ts=T, value=None, **props):
    """prepare_events on a single event; -> (decoded events, rejections)."""
    cols, rej = prepare_events(
        [user], [type_], [ts], None if value is None else [value],
        {k: [v] for k, v in props.items()} or None, **EV,
    )
    return decode_events(cols), rej


# ----------------------------------------------------------------------------- clean path


def test_clean_lists_round_trip():
    cols, rej = prepare_events(
        ["u1", "u2", "u1"], ["view", "buy", "view"], [T, T + 1, T + 2], [0.5, 2, -0.0],
        {"sku": ["p1", "p2", "p1"], "qty": [1, 2, 3], "vip": [True, False, True]}, **EV,
    )
    assert rej == []
    assert decode_events(cols) == [
        {"user_id": "u1", "type": "view", "timestamp_ms": T, "value": 0.5,
         "properties": {"sku": "p1", "qty": 1.0, "vip": True}},
        {"user_id": "u2", "type": "buy", "timestamp_ms": T + 1, "value": 2.0,
         "properties": {"sku": "p2", "qty": 2.0, "vip": False}},
        {"user_id": "u1", "type": "view", "timestamp_ms": T + 2, "value": 0.0,
         "properties": {"sku": "p1", "qty": 3.0, "vip": True}},
    ]
    assert cols.timestamp_ms.dtype == np.int64 and cols.value.dtype == np.float64
    assert not np.signbit(cols.value).any()  # -0.0 folded
    assert cols.user.uniques() == ["u1", "u2"] and cols.user.codes.tolist() == [0, 1, 0]
    assert all(c.dtype == np.float64 and len(c) == 3 for c in cols.props.values())
    assert cols.prop_strings.uniques() == ["p1", "p2"]
    assert cols.prop_strings.codes.tolist() == [0, 1]


def test_typed_numpy_columns():
    n = 5
    cols, rej = prepare_events(
        np.array([f"u{i}" for i in range(n)]),
        np.array(["t"] * n, dtype=object),
        np.arange(T, T + n, dtype=np.int64),
        np.linspace(0, 1, n),
        {
            "f": np.array([1.5, np.nan, -0.0, np.inf, -np.inf]),
            "i": np.arange(n, dtype=np.int32),
            "b": np.array([True, False, True, False, True]),
            "s": np.array(["a", "b", "a", "", "日本"]),
        },
        **EV,
    )
    assert rej == []
    ev = decode_events(cols)
    assert [e["properties"].get("f") for e in ev] == [1.5, None, 0.0, math.inf, -math.inf]
    assert not np.signbit(cols.props["f"][2])
    assert [e["properties"]["i"] for e in ev] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [e["properties"]["b"] for e in ev] == [True, False, True, False, True]
    assert [e["properties"]["s"] for e in ev] == ["a", "b", "a", "", "日本"]
    assert [e["timestamp_ms"] for e in ev] == list(range(T, T + n))


def test_nan_payloads_are_canonical_null():
    # A NaN whose bits look like a STR box must read as absent, not as a string.
    evil = np.array([np.int64(-1970324836974592)]).view(np.float64)  # STR_TAG | 0
    cols, rej = prepare_events(["u"], ["t"], [T], None, {"p": evil}, **EV)
    assert rej == []
    assert cols.props["p"].view(np.int64)[0] == NULL_BITS


def test_value_and_properties_are_optional():
    cols, rej = prepare_events(["u"], ["t"], [T], **EV)
    assert rej == [] and cols.value.tolist() == [0.0] and cols.props == {}
    assert cols.prop_strings.n_unique == 0


def test_none_value_means_zero():
    cols, rej = prepare_events(["u", "v"], ["t", "t"], [T, T], [None, 3], **EV)
    assert rej == [] and cols.value.tolist() == [0.0, 3.0]


def _object_array(values):
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


@pytest.mark.parametrize("make", [list, _object_array], ids=["list", "object-array"])
def test_mixed_property_kinds_keep_their_kind(make):
    kinds = ["x", 1, 1.5, True, False, None, "1", float("nan"), np.int64(7), np.float32(2.5),
             np.bool_(True), np.str_("np")]
    n = len(kinds)
    cols, rej = prepare_events(["u"] * n, ["t"] * n, [T] * n, None, {"p": make(kinds)}, **EV)
    assert rej == []
    got = [e["properties"].get("p") for e in decode_events(cols)]
    assert got == ["x", 1.0, 1.5, True, False, None, "1", None, 7.0, 2.5, True, "np"]
    assert [type(v) for v in got] == [str, float, float, bool, bool, type(None), str,
                                               type(None), float, float, bool, str]
    # "1" and 1 and True are three different boxed values
    bits = cols.props["p"].view(np.int64)
    assert len({int(bits[1]), int(bits[3]), int(bits[6])}) == 3


def test_sparse_object_columns_like_the_gateway_sends():
    n = 6
    p = np.full(n, None, dtype=object)
    p[[1, 4]] = ["a", "b"]
    q = np.full(n, None, dtype=object)
    q[[0, 4]] = [2.5, True]
    cols, rej = prepare_events([f"u{i}" for i in range(n)], ["t"] * n, [T] * n, None,
                               {"p": p, "q": q}, **EV)
    assert rej == []
    assert [e["properties"] for e in decode_events(cols)] == [
        {"q": 2.5}, {"p": "a"}, {}, {}, {"p": "b", "q": True}, {}]


def test_one_string_table_for_all_property_columns():
    cols, rej = prepare_events(
        ["u", "v"], ["t", "t"], [T, T], None,
        {"a": ["red", "blue"], "b": np.array(["blue", "green"]), "c": ["red", 3]}, **EV,
    )
    assert rej == []
    assert sorted(cols.prop_strings.uniques()) == ["blue", "green", "red"]
    a, b = cols.props["a"].view(np.int64), cols.props["b"].view(np.int64)
    assert a[1] == b[0]  # equal strings, equal bits
    assert decode_events(cols)[0]["properties"] == {"a": "red", "b": "blue", "c": "red"}


def test_accepted_events_keep_input_order():
    ids = [f"u{i % 7}" for i in range(50)]
    ts = [T - i for i in range(50)]
    ts[10] = 0  # rejected (event clock)
    cols, rej = prepare_events(ids, ["t"] * 50, ts, list(range(50)), **EV)
    assert [r.index for r in rej] == [10]
    assert cols.value.tolist() == [float(i) for i in range(50) if i != 10]
    assert cols.user.values() == [ids[i] for i in range(50) if i != 10]


# ------------------------------------------------------------------------------ rejections


def test_length_mismatch_raises_naming_the_column():
    with pytest.raises(ValueError, match=r"column type has 1 values but user_id has 2"):
        prepare_events(["a", "b"], ["t"], [T, T], **EV)
    with pytest.raises(ValueError, match=r"column timestamp_ms has 3 values but user_id has 2"):
        prepare_events(["a", "b"], ["t", "t"], [T, T, T], **EV)
    with pytest.raises(ValueError, match=r"column value has 1 values"):
        prepare_events(["a", "b"], ["t", "t"], [T, T], [1.0], **EV)
    with pytest.raises(ValueError, match=r'column properties\["sku"\] has 1 values but user_id has 2'):
        prepare_events(["a", "b"], ["t", "t"], [T, T], None, {"sku": ["x"]}, **EV)


def test_a_bare_string_is_not_a_column():
    with pytest.raises(TypeError, match="column user_id must be an array or a sequence, got str"):
        prepare_events("abc", ["t"] * 3, [T] * 3, **EV)
    with pytest.raises(TypeError, match=r'properties\["p"\]'):
        prepare_events(["a"], ["t"], [T], None, {"p": "x"}, **EV)


def test_bad_clock_raises():
    with pytest.raises(ValueError, match="clock"):
        prepare_events(["a"], ["t"], [T], now_ms=NOW, retention_ms=RET, clock="lunar")


@pytest.mark.parametrize(
    "user, expected",
    [
        ("", "user_id must not be empty"),
        (None, "user_id is required"),
        (42, "user_id must be a string, got int"),
        ("a\0b", "user_id must not contain a NUL character"),
        ("\udc80", "user_id is not valid Unicode text"),
    ],
)
def test_bad_user_id(user, expected):
    cols, rej = prepare_events(["ok", user, "ok2"], ["t"] * 3, [T] * 3, **EV)
    assert len(rej) == 1 and rej[0].index == 1 and rej[0].reason.startswith(expected)
    assert cols.user.values() == ["ok", "ok2"]
    assert cols.user.uniques() == ["ok", "ok2"]  # the rejected id's unique is gone


@pytest.mark.parametrize(
    "type_, expected",
    [("", "type must not be empty"), (None, "type is required"),
     (3.5, "type must be a string, got float"), ("v\0", "type must not contain a NUL")],
)
def test_bad_type(type_, expected):
    _, rej = prepare_events(["u", "u"], ["ok", type_], [T, T], **EV)
    assert [r.index for r in rej] == [1] and rej[0].reason.startswith(expected)


@pytest.mark.parametrize(
    "ts, expected",
    [
        (None, "timestamp_ms is required"),
        (0, "timestamp_ms is required"),
        (-5, "timestamp_ms is required"),
        (float("nan"), "timestamp_ms is required"),
        (1.5, "timestamp_ms must be an integer number of ms, got 1.5"),
        ("123", "timestamp_ms must be an integer number of ms, got str"),
        (True, "timestamp_ms must be an integer number of ms, got bool"),
        (2**70, f"timestamp_ms {2**70} is out of range"),
    ],
)
def test_bad_timestamp_event_clock(ts, expected):
    _, rej = prepare_events(["u", "u"], ["t", "t"], [T, ts], **EV)
    assert [r.index for r in rej] == [1] and rej[0].reason.startswith(expected)


def test_integral_float_timestamps_are_accepted():
    cols, rej = prepare_events(["u", "u"], ["t", "t"], [float(T), np.float64(T + 1)], **EV)
    assert rej == [] and cols.timestamp_ms.tolist() == [T, T + 1]
    cols, rej = prepare_events(["u", "u"], ["t", "t"], np.array([T, 1.5]), **EV)
    assert [r.index for r in rej] == [1] and "integer" in rej[0].reason


def test_too_old_names_timestamp_cutoff_and_retention():
    cutoff = NOW - RET
    cols, rej = prepare_events(["u"] * 3, ["t"] * 3, [cutoff, cutoff + 1, cutoff - 10], **EV)
    assert [r.index for r in rej] == [0, 2]
    r = rej[0].reason
    assert "too old" in r and str(cutoff) in r and "30d" in r and str(RET) in r
    assert f"timestamp_ms {cutoff}" in r and str(NOW) in r
    assert cols.timestamp_ms.tolist() == [cutoff + 1]


def test_too_old_uses_numpy_path_too():
    ts = np.array([NOW - RET - 1, NOW], dtype=np.int64)
    _, rej = prepare_events(["u", "u"], ["t", "t"], ts, **EV)
    assert [r.index for r in rej] == [0] and "too old" in rej[0].reason


def test_wall_clock_zero_or_none_means_now():
    cols, rej = prepare_events(["u"] * 4, ["t"] * 4, [0, None, T, NOW + 5000], **WALL)
    assert rej == []
    assert cols.timestamp_ms.tolist() == [NOW, NOW, T, NOW + 5000]
    cols, rej = prepare_events(["u"], ["t"], None, **WALL)
    assert rej == [] and cols.timestamp_ms.tolist() == [NOW]


def test_wall_clock_negative_timestamp_is_rejected():
    _, rej = prepare_events(["u"], ["t"], [-1], **WALL)
    assert [r.index for r in rej] == [0] and "Unix epoch" in rej[0].reason and "-1" in rej[0].reason


def test_event_clock_without_history_accepts_any_positive_time():
    cols, rej = prepare_events(["u"], ["t"], [1], now_ms=0, retention_ms=RET, clock="event")
    assert rej == [] and cols.timestamp_ms.tolist() == [1]


@pytest.mark.parametrize(
    "value, expected",
    [
        (float("nan"), "value must be a finite number, got nan"),
        (float("inf"), "value must be a finite number, got inf"),
        (-float("inf"), "value must be a finite number, got -inf"),
        ("3", "value must be a number, got str"),
        (True, "value must be a number, got bool"),
        ([1], "value must be a number, got list"),
        (10**400, "is too large"),
    ],
)
def test_bad_value(value, expected):
    _, rej = prepare_events(["u", "u"], ["t", "t"], [T, T], [1.0, value], **EV)
    assert [r.index for r in rej] == [1] and expected in rej[0].reason


def test_bad_value_numpy_path():
    _, rej = prepare_events(["u"] * 3, ["t"] * 3, [T] * 3, np.array([1.0, np.nan, np.inf]), **EV)
    assert [(r.index, r.reason) for r in rej] == [
        (1, "value must be a finite number, got nan"),
        (2, "value must be a finite number, got inf"),
    ]


@pytest.mark.parametrize("make", [list, _object_array], ids=["list", "object-array"])
@pytest.mark.parametrize("bad", [[1, 2], {"a": 1}, (1,), b"x", object()])
def test_unsupported_property_value(bad, make):
    _, rej = prepare_events(["u", "u"], ["t", "t"], [T, T], None, {"p": make(["ok", bad])}, **EV)
    assert [r.index for r in rej] == [1]
    assert rej[0].reason == (
        f'property "p" has a value of unsupported type {type(bad).__name__} '
        "(use a string, number or bool)"
    )


@pytest.mark.parametrize("column", [["x", 10**400], [1, 10**400]], ids=["mixed", "ints"])
def test_property_number_too_large(column):
    _, rej = prepare_events(["u", "u"], ["t", "t"], [T, T], None, {"p": column}, **EV)
    assert [r.index for r in rej] == [1] and "too large" in rej[0].reason


def test_property_named_value_is_reserved():
    cols, rej = prepare_events(
        ["u", "u"], ["t", "t"], [T, T], None, {"value": [None, 3.0], "x": [1, 2]}, **EV
    )
    assert [r.index for r in rej] == [1]
    assert 'property "value" is reserved' in rej[0].reason and "value field" in rej[0].reason
    assert "value" not in cols.props and len(cols) == 1


@pytest.mark.parametrize(
    "name, expected",
    [("", "must not be empty"), (3, "must be strings, got int"), ("a\0", "NUL")],
)
def test_bad_property_names(name, expected):
    cols, rej = prepare_events(["u", "u"], ["t", "t"], [T, T], None, {name: ["x", None]}, **EV)
    assert [r.index for r in rej] == [0] and expected in rej[0].reason
    assert len(cols) == 1 and cols.props == {}


@pytest.mark.parametrize("make", [list, _object_array], ids=["list", "object-array"])
def test_property_string_with_nul_is_rejected(make):
    _, rej = prepare_events(["u", "u"], ["t", "t"], [T, T], None, {"p": make(["ok", "a\0b"])}, **EV)
    assert [r.index for r in rej] == [1]
    assert rej[0].reason == 'property "p" must not contain a NUL character (\\0)'


def test_object_columns_of_strings_and_nones_beside_others():
    """Optional string properties (object arrays of str and None, joined once), one with a NUL
    and a lone surrogate, beside a column that starts with strings and holds a number."""
    n = 12
    p = np.full(n, None, dtype=object)
    p[[0, 3, 9]] = ["a", "b\0", "a"]
    q = np.full(n, None, dtype=object)
    q[[10, 11]] = ["\ud800", "z"]                 # the head (first 8) is all None
    r = _object_array(["x"] * 8 + [2.5, None, "y", "x"])
    cols, rej = prepare_events([f"u{i}" for i in range(n)], ["t"] * n, [T] * n, None,
                               {"p": p, "q": q, "r": r}, **EV)
    assert [x.index for x in rej] == [3, 10]
    assert "NUL" in rej[0].reason and 'property "p"' in rej[0].reason
    assert "surrogate" in rej[1].reason and 'property "q"' in rej[1].reason
    props = [e["properties"] for e in decode_events(cols)]     # rows 3 and 10 left out
    assert props[0] == {"p": "a", "r": "x"} and props[7] == {"r": 2.5}
    assert props[8] == {"p": "a"} and props[9] == {"q": "z", "r": "x"}


def test_nan_property_is_absent_and_inf_is_allowed():
    ev, rej = one(p=float("nan"))
    assert rej == [] and ev[0]["properties"] == {}
    ev, rej = one(p=float("inf"), q=-float("inf"))
    assert rej == [] and ev[0]["properties"] == {"p": math.inf, "q": -math.inf}


def test_first_problem_wins_and_each_event_is_rejected_once():
    _, rej = prepare_events(["", "u"], [None, None], [0, 0], [float("nan")] * 2, **EV)
    assert reasons(rej) == {0: "user_id must not be empty", 1: "type is required"}


def test_every_event_rejected_gives_empty_columns():
    cols, rej = prepare_events(["", ""], ["t", "t"], [T, T], None, {"p": ["x", "y"]}, **EV)
    assert len(rej) == 2 and len(cols) == 0
    assert cols.user.n_unique == 0 and cols.prop_strings.n_unique == 0
    assert cols.slots().tolist() == [] and cols.max_timestamp() is None


def test_rejected_rows_strings_are_compacted_away():
    cols, rej = prepare_events(
        ["a", "b", "c"], ["t", "t", "t"], [T, 0, T], None,
        {"p": ["keep", "drop", "keep2"], "q": ["drop2", None, None]}, **EV,
    )
    assert [r.index for r in rej] == [1]
    assert sorted(cols.prop_strings.uniques()) == ["drop2", "keep", "keep2"]
    assert decode_events(cols)[1]["properties"] == {"p": "keep2"}


def test_empty_input():
    cols, rej = prepare_events([], [], [], [], {"p": []}, **EV)
    assert rej == [] and len(cols) == 0


# ------------------------------------------------------------------ take, slots, pickling


def _sample_cols():
    cols, rej = prepare_events(
        ["a", "b", "c", "a"], ["x", "y", "x", "z"], [T, T + 1, T + 2, T + 3], [1, 2, 3, 4],
        {"p": ["s1", "s2", 5, "s1"], "q": [None, "s3", None, True]}, **EV,
    )
    assert rej == []
    return cols


def test_take_selects_and_recompacts():
    cols = _sample_cols()
    sub = cols.take(np.array([1, 3]))
    full = decode_events(cols)
    assert decode_events(sub) == [full[1], full[3]]
    assert sub.user.uniques() == ["b", "a"] or sorted(sub.user.uniques()) == ["a", "b"]
    assert sorted(sub.prop_strings.uniques()) == ["s1", "s2", "s3"]
    sub2 = cols.take(np.array([False, False, True, False]))
    assert decode_events(sub2) == [full[2]]
    assert sub2.prop_strings.n_unique == 0  # event 2 has no string properties
    assert len(cols.take(np.array([], dtype=np.int64))) == 0


def test_slots_are_user_hash_mod_4096():
    cols = _sample_cols()
    expected = [fnv1a64(u.encode()) % 4096 for u in ["a", "b", "c", "a"]]
    assert cols.slots().dtype == np.int32
    assert cols.slots().tolist() == expected


def test_max_timestamp_and_empty():
    cols = _sample_cols()
    assert cols.max_timestamp() == T + 3
    e = EventColumns.empty()
    assert len(e) == 0 and e.max_timestamp() is None and e.max_timestamp(-1) == -1
    assert e.slots().tolist() == [] and decode_events(e) == []
    assert len(e.take(np.array([], dtype=np.int64))) == 0


def test_columns_pickle():
    cols = _sample_cols()
    back = pickle.loads(pickle.dumps(cols))
    assert decode_events(back) == decode_events(cols)
    t, _ = prepare_traits([("u", {"a": "x"}, None)], **EV)
    assert decode_traits(pickle.loads(pickle.dumps(t))) == decode_traits(t)


def _arrays(cols: EventColumns) -> list[np.ndarray]:
    out = [cols.timestamp_ms, cols.value, *cols.props.values()]
    for sc in (cols.user, cols.type, cols.prop_strings):
        out += [sc.blob, sc.offsets, sc.hashes, sc.codes]
    return out


@pytest.mark.parametrize("protocol", [4, 5])
def test_columns_pickle_as_one_buffer(protocol):
    """EventColumns pickle as one buffer of all their arrays: every array comes back equal,
    with its dtype and shape, writable and aligned (the kernels take them as they are)."""
    cols = _sample_cols()
    for c in (cols, EventColumns.empty(), cols.take(np.array([1], dtype=np.int64))):
        back = pickle.loads(pickle.dumps(c, protocol=protocol))
        assert decode_events(back) == decode_events(c)
        assert list(back.props) == list(c.props)
        for a, b in zip(_arrays(c), _arrays(back)):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert a.tobytes() == b.tobytes()
            assert b.flags.writeable and b.flags.aligned and b.ctypes.data % 8 == 0
        back.timestamp_ms[:] = 0          # the arrays own separate parts of the buffer
        assert decode_events(back)[:1] != decode_events(c)[:1] or len(c) == 0
        assert back.value.tolist() == c.value.tolist()


# --------------------------------------------------------------------- events_from_dicts


def ev(uid="u1", type_="view", ts=T, **extra):
    return {"user_id": uid, "type": type_, "timestamp_ms": ts, **extra}


def test_dicts_round_trip():
    events = [
        ev(value=2.5, properties={"sku": "p9", "n": 3, "ok": True}),
        ev("u2", "buy"),
        ev("u3", properties={}),
        ev("u4", properties=None, value=None),
    ]
    cols, rej = events_from_dicts(events, **EV)
    assert rej == []
    out = decode_events(cols)
    assert out[0] == {"user_id": "u1", "type": "view", "timestamp_ms": T, "value": 2.5,
                      "properties": {"sku": "p9", "n": 3.0, "ok": True}}
    assert out[1]["properties"] == {} and out[1]["value"] == 0.0
    assert [e["user_id"] for e in out] == ["u1", "u2", "u3", "u4"]


def test_dict_rejections_refer_to_the_original_indices():
    events = [
        ev("a"),
        "not a dict",
        ev("b", foo=1),
        ev("", properties={"x": 1}),
        ev("c", properties=["x"]),
        ev("d", properties={"value": 1}),
        ev("e", ts=None),
        ev("f", properties={"p": {"nested": 1}}),
        ev("g", value="high"),
        ev("h", bar=1, baz=2),
        ev("i"),
    ]
    cols, rej = events_from_dicts(events, **EV)
    r = reasons(rej)
    assert sorted(r) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert r[1] == "an event must be a dict, got str"
    assert r[2].startswith('unknown field "foo"')
    assert r[3] == "user_id must not be empty"
    assert r[4].startswith("properties must be a dict")
    assert 'property "value" is reserved' in r[5]
    assert r[6].startswith("timestamp_ms is required")
    assert r[7].startswith('property "p" has a value of unsupported type dict')
    assert r[8] == "value must be a number, got str"
    assert r[9].startswith('unknown fields "bar", "baz"')
    assert cols.user.values() == ["a", "i"]


def test_dicts_missing_fields():
    _, rej = events_from_dicts([{}], **EV)
    assert reasons(rej) == {0: "user_id is required"}
    cols, rej = events_from_dicts([{"user_id": "u", "type": "t"}], **WALL)
    assert rej == [] and cols.timestamp_ms.tolist() == [NOW]


def test_dicts_sparse_properties():
    events = [ev(properties={"a": 1}), ev(properties={"b": "x"}), ev(properties={"a": "y", "b": 2})]
    cols, rej = events_from_dicts(events, **EV)
    assert rej == []
    assert [e["properties"] for e in decode_events(cols)] == [{"a": 1.0}, {"b": "x"}, {"a": "y", "b": 2.0}]


def test_empty_dict_list():
    cols, rej = events_from_dicts([], **EV)
    assert len(cols) == 0 and rej == []


# ---------------------------------------------------------------------------------- traits


def test_traits_round_trip():
    cols, rej = prepare_traits(
        [
            ("u1", {"country": "TR", "age": 31, "vip": True, "score": -0.0}, None),
            ("u2", {"country": "US", "plan": None}, T),
            ("u1", {}, None),
        ],
        **EV,
    )
    assert rej == []
    assert decode_traits(cols) == [
        ("u1", {"country": "TR", "age": 31.0, "vip": True, "score": 0.0}, NOW),
        ("u2", {"country": "US", "plan": None}, T),
        ("u1", {}, NOW),
    ]
    boxed, given_ = cols.traits["plan"]
    assert given_.tolist() == [False, True, False]
    assert boxed.view(np.int64)[1] == NULL_BITS
    assert not np.signbit(cols.traits["score"][0][0])
    assert sorted(cols.strings.uniques()) == ["TR", "US"]


def test_trait_nan_unsets_and_inf_is_kept():
    cols, rej = prepare_traits([("u", {"a": float("nan"), "b": float("inf")}, None)], **EV)
    assert rej == [] and decode_traits(cols) == [("u", {"a": None, "b": math.inf}, NOW)]


def test_trait_rejections():
    cols, rej = prepare_traits(
        [
            ("", {"a": 1}, None),
            (None, {"a": 1}, None),
            ("u", ["a"], None),
            ("u", {"a": [1]}, None),
            ("u", {"a": "x\0"}, None),
            ("u", {"": 1}, None),
            ("u", {"a": 1}, 1.5),
            ("u", {"a": 1}, -3),
            ("u",),
            "nope",
            ("ok", {"a": "fine"}, 0),
        ],
        **EV,
    )
    r = reasons(rej)
    assert sorted(r) == list(range(10))
    assert r[0] == "user_id must not be empty"
    assert r[1] == "user_id is required"
    assert r[2] == "traits must be a dict of name -> value, got list"
    assert r[3] == 'trait "a" has a value of unsupported type list (use a string, number or bool)'
    assert r[4] == 'trait "a" must not contain a NUL character (\\0)'
    assert "trait names" in r[5]
    assert r[6] == "timestamp_ms must be an integer number of ms, got 1.5"
    assert "-3" in r[7]
    assert "tuple (user_id, traits, timestamp_ms)" in r[8] and "tuple" in r[9]
    assert decode_traits(cols) == [("ok", {"a": "fine"}, NOW)]


def test_trait_take_and_slots():
    cols, _ = prepare_traits(
        [("a", {"c": "x"}, None), ("b", {"c": "y", "d": 1}, None), ("c", {"d": "z"}, None)], **EV
    )
    sub = cols.take(np.array([0, 2]))
    assert decode_traits(sub) == [("a", {"c": "x"}, NOW), ("c", {"d": "z"}, NOW)]
    assert sorted(sub.strings.uniques()) == ["x", "z"]
    assert sub.slots().tolist() == [fnv1a64(b"a") % 4096, fnv1a64(b"c") % 4096]
    assert len(TraitColumns.empty()) == 0


def test_empty_traits():
    cols, rej = prepare_traits([], **EV)
    assert len(cols) == 0 and rej == [] and cols.traits == {}


# ----------------------------------------------------------------- agreement (hypothesis)

user_ids = st.one_of(
    st.sampled_from(["u1", "u2", "日本", ""]), st.none(), st.integers(0, 3),
    st.text(alphabet="ab\0", max_size=3),
)
prop_values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True),
    st.sampled_from(["x", "y", "", "a\0"]), st.just([1]),
)
timestamps = st.one_of(
    st.none(), st.integers(-2, 2), st.sampled_from([T, NOW - RET, NOW - RET + 1, NOW + 10]),
    st.sampled_from([1.5, float(T), float("nan")]),
)
values = st.one_of(st.none(), st.floats(allow_nan=True), st.integers(-3, 3), st.just("s"))
events_st = st.lists(
    st.fixed_dictionaries(
        {"user_id": user_ids, "type": st.sampled_from(["view", "buy", "", None]),
         "timestamp_ms": timestamps, "value": values},
        optional={"properties": st.dictionaries(
            st.sampled_from(["a", "b", "value", ""]), prop_values, max_size=3)},
    ),
    max_size=12,
)


def reference_accepts(e: dict, clock: str) -> bool:
    """Obviously correct per-event version of the acceptance rules."""
    uid, typ, ts, val = e["user_id"], e["type"], e["timestamp_ms"], e["value"]
    if not isinstance(uid, str) or uid == "" or "\0" in uid:
        return False
    if not isinstance(typ, str) or typ == "":
        return False
    if isinstance(ts, float):
        if math.isnan(ts):
            ts = None
        elif ts != int(ts):
            return False
        else:
            ts = int(ts)
    if ts is None or ts == 0 or (clock == "event" and ts < 0):
        if clock == "event":
            return False
        ts = NOW
    if ts < 0 or ts <= NOW - RET:
        return False
    if val is not None and (isinstance(val, str) or not math.isfinite(val)):
        return False
    for k, v in (e.get("properties") or {}).items():
        present = v is not None and not (isinstance(v, float) and math.isnan(v))
        if present and (k in ("value", "") or isinstance(v, list) or (isinstance(v, str) and "\0" in v)):
            return False
    return True


@settings(max_examples=150, deadline=None)
@given(events_st, st.sampled_from(["event", "wall"]))
def test_dicts_agree_with_reference_and_columns(events, clock):
    kw = dict(now_ms=NOW, retention_ms=RET, clock=clock)
    cols, rej = events_from_dicts(events, **kw)
    accepted = [i for i, e in enumerate(events) if reference_accepts(e, clock)]
    assert sorted(set(range(len(events))) - {r.index for r in rej}) == accepted
    assert len(cols) == len(accepted)
    got = decode_events(cols)
    for g, i in zip(got, accepted):
        e = events[i]
        assert g["user_id"] == e["user_id"] and g["type"] == e["type"]
        want_props = {}
        for k, v in (e.get("properties") or {}).items():
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            want_props[k] = float(v) if isinstance(v, int) and not isinstance(v, bool) else v
        assert g["properties"] == want_props
        assert g["value"] == (0.0 if e["value"] is None else float(e["value"]))
    # the columnar path gives the same answer
    names = {k for e in events for k in (e.get("properties") or {})}
    cols2, rej2 = prepare_events(
        [e["user_id"] for e in events], [e["type"] for e in events],
        [e["timestamp_ms"] for e in events], [e["value"] for e in events],
        {k: [(e.get("properties") or {}).get(k) for e in events] for k in names}, **kw,
    )
    assert [r.index for r in rej2] == [r.index for r in rej]
    assert decode_events(cols2) == got


def test_string_column_reexported():
    assert StringColumn.__module__ == "engine.kernels._strings"
