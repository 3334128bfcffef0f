"""Hard input limits (engine/limits.py): every limit rejects with a reason that names it, and
the accepted events of the same batch are intact."""

from __future__ import annotations

import json
import pickle
import time

import msgpack
import pytest

from engine import Engine
from engine._batch import events_from_dicts, prepare_events, prepare_traits
from engine._pb import pb
from engine._segments import SegmentRegistry
from engine.errors import ClockError, ConfigError, ExpressionError, Overloaded
from engine.expr import compile_expression, parse
from engine.limits import DEFAULT_LIMITS, LimitExceeded, Limits, NameBudget, check_clock_move
from engine.server import _codec as codec

DAY = 86_400_000
T0 = 1_700_000_000_000
RET = 30 * DAY
EV = dict(now_ms=T0, retention_ms=RET, clock="event")


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def reasons(result) -> dict[int, str]:
    rej = result.rejections if hasattr(result, "rejections") else result
    return {r.index: r.reason for r in rej}


# ----------------------------------------------------------------------------- Limits


def test_defaults_are_documented_values():
    lim = Limits()
    assert lim.max_future_ms == DAY and lim.max_batch_events == 1_000_000
    assert (lim.max_id_bytes, lim.max_name_bytes, lim.max_string_bytes) == (1024, 256, 65536)
    assert (lim.max_event_types, lim.max_properties_per_type, lim.max_traits) == (1024, 256, 1024)
    assert lim.max_properties_per_event == 256 and lim.max_segments == 10_000
    assert (lim.max_expression_chars, lim.max_expression_depth) == (65536, 64)
    assert lim.max_message_bytes == 64 * 2**20 and lim.max_queue_ops == 10_000
    assert (lim.max_subscribers, lim.subscriber_buffer) == (1000, 100_000)
    assert DEFAULT_LIMITS == lim and pickle.loads(pickle.dumps(lim)) == lim


@pytest.mark.parametrize("kw", [dict(max_batch_events=0), dict(max_future_ms=-1), dict(max_traits=True),
                                dict(max_name_bytes="256"), dict(max_segments=2.5), dict(max_traits=2**63)])
def test_bad_values_are_config_errors_naming_the_field(kw):
    with pytest.raises(ConfigError, match=next(iter(kw))):
        Limits(**kw)


def test_from_mapping():
    lim = Limits.from_mapping({"max_future_ms": "90m", "max_batch_events": "10_000", "max_traits": 7.0})
    assert (lim.max_future_ms, lim.max_batch_events, lim.max_traits) == (90 * 60_000, 10_000, 7)
    assert Limits.from_mapping({"max_future_ms": "0"}).max_future_ms == 0
    assert Limits.from_mapping({}) == Limits() and Limits.from_mapping(lim.to_dict()) == lim
    with pytest.raises(ConfigError, match="unknown limit 'max_users'"):
        Limits.from_mapping({"max_users": 1})
    with pytest.raises(ConfigError, match="max_traits must be a whole number"):
        Limits.from_mapping({"max_traits": "many"})
    with pytest.raises(ConfigError, match="max_future_ms"):
        Limits.from_mapping({"max_future_ms": "soon"})
    with pytest.raises(ConfigError):
        Limits.from_mapping([("max_traits", 1)])


def test_docstring_examples_run():
    import doctest

    import engine.limits

    assert doctest.testmod(engine.limits).failed == 0


def test_future_bound_is_relative_to_the_later_of_now_and_the_machine_clock():
    lim = Limits(max_future_ms=1000)
    assert lim.future_bound_ms(0, wall_ms=5000) == 6000
    assert lim.future_bound_ms(9000, wall_ms=5000) == 10_000


# ----------------------------------------------------------------------------- the clock


@pytest.mark.parametrize("clock", ["event", "wall"])
def test_far_future_timestamp_is_rejected_and_later_real_events_still_work(clock):
    eng = Engine(clock=clock)
    eng.create_segment("viewers", "count(view, 1d) >= 1")
    real = wall_ms() if clock == "wall" else T0
    r = eng.ingest([{"user_id": "a", "type": "view", "timestamp_ms": 2**62},
                    {"user_id": "b", "type": "view", "timestamp_ms": real}])
    assert r.accepted == 1 and list(reasons(r)) == [0]
    assert "timestamp_ms 4611686018427387904 is too far in the future" in r.rejections[0].reason
    assert "max_future_ms" in r.rejections[0].reason
    assert r.now_ms < 2**62 and eng.now_ms < wall_ms() + 2 * DAY
    later = eng.ingest_columns(["c"], ["view"], [wall_ms() if clock == "wall" else T0 + 1000])
    assert later.accepted == 1 and later.rejections == []
    assert eng.members("viewers") == {"b", "c"}
    assert not eng.get_user("a")["known"]


def test_event_clock_replay_of_history_from_zero_is_not_refused():
    eng = Engine(clock="event")
    r = eng.ingest_columns(["u"] * 3, ["e"] * 3, [T0 - 2 * 365 * DAY, T0, wall_ms()])
    assert r.accepted == 3


def test_future_bound_in_columns_and_traits():
    bound_ish = wall_ms() + DAY
    cols, rej = prepare_events(["a", "b", "c"], ["e"] * 3, [T0, bound_ish + 3_600_000, bound_ish - 3_600_000], **EV)
    assert [r.index for r in rej] == [1] and cols.user.values() == ["a", "c"]
    cols, rej = prepare_traits([("u", {"x": 1}, 2**62), ("v", {"x": 2}, T0)], **EV)
    assert [r.index for r in rej] == [0] and "too far in the future" in rej[0].reason
    assert cols.user.values() == ["v"]
    lim = Limits(max_future_ms=0)
    _, rej = prepare_events(["a"], ["e"], [wall_ms() + 3_600_000], **EV, limits=lim)
    assert "max_future_ms 0 = 0ms" in rej[0].reason


def test_check_clock_move():
    lim = Limits(max_future_ms=DAY)
    now = wall_ms()
    assert check_clock_move(now + DAY // 2, now, lim) == now + DAY // 2
    with pytest.raises(ClockError, match="allow_far_future"):
        check_clock_move(now + 2 * DAY, now, lim)
    assert check_clock_move(2**62, now, lim, allow_far_future=True) == 2**62
    # relative to max(now, machine clock): an event-clock engine at 0 may move to today
    assert check_clock_move(now, 0, lim) == now
    # and relative to now once now is ahead of the machine clock (moved there on purpose)
    assert check_clock_move(2**62 + DAY // 2, 2**62, lim) == 2**62 + DAY // 2
    assert check_clock_move(10, 0, lim, wall_ms=0) == 10
    with pytest.raises(ClockError):
        check_clock_move(DAY + 1, 0, lim, wall_ms=0)
    for bad in (1.5, "1", None, True, 2**64):
        with pytest.raises(ClockError):
            check_clock_move(bad, 0)


# ----------------------------------------------------------------------------- sizes


def test_sizes_reject_just_their_events_and_the_rest_is_intact():
    lim = Limits(max_id_bytes=8, max_name_bytes=6, max_string_bytes=5)
    eng = Engine(clock="event", limits=lim)
    eng.create_segment("seen", "count(e, 1d) >= 1")
    eng.create_segment("sku", 'count(e where sku == "abc", 1d) >= 1')
    r = eng.ingest([
        {"user_id": "ok1", "type": "e", "timestamp_ms": T0, "properties": {"sku": "abc"}},
        {"user_id": "u" * 9, "type": "e", "timestamp_ms": T0},
        {"user_id": "ü" * 5, "type": "e", "timestamp_ms": T0},                     # 10 bytes
        {"user_id": "ok2", "type": "toolong", "timestamp_ms": T0},
        {"user_id": "ok3", "type": "e", "timestamp_ms": T0, "properties": {"longname": 1}},
        {"user_id": "ok4", "type": "e", "timestamp_ms": T0, "properties": {"sku": "abcdef"}},
        {"user_id": "ok5", "type": "e", "timestamp_ms": T0, "properties": {"sku": "abcde"}},
    ])
    got = reasons(r)
    assert r.accepted == 2 and sorted(got) == [1, 2, 3, 4, 5]
    assert got[1] == "user_id is 9 bytes long (UTF-8); at most 8 (max_id_bytes)"
    assert got[2] == "user_id is 10 bytes long (UTF-8); at most 8 (max_id_bytes)"
    assert got[3] == "type is 7 bytes long (UTF-8); at most 6 (max_name_bytes)"
    assert got[4] == 'property name "longname" is 8 bytes long (UTF-8); at most 6 (max_name_bytes)'
    assert got[5] == 'property "sku" value is 6 bytes long (UTF-8); at most 5 = 5 bytes (max_string_bytes)'
    assert eng.members("seen") == {"ok1", "ok5"} and eng.members("sku") == {"ok1"}
    assert eng.get_user("ok1")["known"] and not eng.get_user("ok4")["known"]


def test_fifty_megabyte_user_id_is_rejected():
    big = "x" * (50 * 2**20)
    cols, rej = prepare_events([big, "small"], ["e", "e"], [T0, T0], **EV)
    assert reasons(rej) == {0: f"user_id is {len(big)} bytes long (UTF-8); at most 1024 (max_id_bytes)"}
    assert cols.user.values() == ["small"] and cols.user.blob.nbytes == 5
    _, rej = prepare_traits([(big, {"a": 1}, None)], **EV)
    assert "max_id_bytes" in rej[0].reason


def test_trait_sizes():
    lim = Limits(max_name_bytes=4, max_string_bytes=3)
    cols, rej = prepare_traits([("u", {"plan": "pro"}, None), ("v", {"plans": 1}, None),
                                ("w", {"plan": "team"}, None)], **EV, limits=lim)
    got = reasons(rej)
    assert got == {1: 'trait name "plans" is 5 bytes long (UTF-8); at most 4 (max_name_bytes)',
                   2: 'trait "plan" value is 4 bytes long (UTF-8); at most 3 = 3 bytes (max_string_bytes)'}
    assert cols.user.values() == ["u"]


def test_too_many_properties_in_one_event():
    lim = Limits(max_properties_per_event=3)
    p3 = {f"p{i}": i for i in range(3)}
    p4 = {f"p{i}": i for i in range(4)}
    # absent values (None, NaN) do not count
    p3_and_absent = {**p3, "q": None, "r": float("nan")}
    cols, rej = events_from_dicts(
        [{"user_id": "a", "type": "e", "timestamp_ms": T0, "properties": p3},
         {"user_id": "b", "type": "e", "timestamp_ms": T0, "properties": p4},
         {"user_id": "c", "type": "e", "timestamp_ms": T0, "properties": p3_and_absent}], **EV, limits=lim)
    assert reasons(rej) == {1: "the event has more than 3 properties (max_properties_per_event)"}
    assert cols.user.values() == ["a", "c"]
    _, rej2 = prepare_events(["a", "b", "c"], ["e"] * 3, [T0] * 3, None,
                                 {"p0": [0, 0, 0], "p1": [1, 1, 1], "p2": [2, 2, 2], "p3": [None, 3, None]},
                                 **EV, limits=lim)
    assert [r.index for r in rej2] == [1] and rej2[0].reason == rej[0].reason


def test_two_hundred_thousand_properties_in_one_event():
    eng = Engine(clock="event")
    eng.create_segment("seen", "count(e, 1d) >= 1")
    huge = {f"p{i}": i for i in range(200_000)}
    r = eng.ingest([{"user_id": "big", "type": "e", "timestamp_ms": T0, "properties": huge},
                    {"user_id": "small", "type": "e", "timestamp_ms": T0, "properties": {"p1": 1}}])
    assert r.accepted == 1 and reasons(r) == {0: "the event has more than 256 properties (max_properties_per_event)"}
    assert eng.members("seen") == {"small"} and not eng.get_user("big")["known"]


def test_grpc_event_with_a_hundred_thousand_properties_is_rejected_without_reading_them_all():
    ev = pb.Event(user_id="big", type="e", timestamp_ms=T0)
    for i in range(100_000):
        ev.properties[f"p{i}"].number_value = i
    batch = pb.EventBatch(events=[ev, pb.Event(user_id="small", type="e", timestamp_ms=T0)])
    cols = codec.batch_to_columns(batch)
    assert len(cols["properties"]) <= 258      # max_properties_per_event + 1 read, + the small one
    out, rej = prepare_events(cols["user_id"], cols["type"], cols["timestamp_ms"], cols["value"],
                              cols["properties"], **EV)
    assert reasons(rej) == {0: "the event has more than 256 properties (max_properties_per_event)"}
    assert out.user.values() == ["small"]


# ----------------------------------------------------------------------------- whole batches


def test_batch_larger_than_max_batch_events_raises():
    lim = Limits(max_batch_events=3)
    with pytest.raises(LimitExceeded, match=r"the batch has 4 events; at most 3 \(max_batch_events\)"):
        prepare_events(["u"] * 4, ["e"] * 4, [T0] * 4, **EV, limits=lim)
    with pytest.raises(LimitExceeded, match="max_batch_events"):
        events_from_dicts([{"user_id": "u", "type": "e", "timestamp_ms": T0}] * 4, **EV, limits=lim)
    with pytest.raises(LimitExceeded, match="4 trait updates"):
        prepare_traits([("u", {"a": 1}, None)] * 4, **EV, limits=lim)
    with pytest.raises(LimitExceeded, match="max_batch_events"):
        codec.batch_to_columns(pb.EventBatch(events=[pb.Event(user_id="u", type="e")] * 4), lim)
    msg = codec.encode_columns(["u"] * 4, ["e"] * 4, [T0] * 4)
    with pytest.raises(LimitExceeded):
        codec.decode_columns(msg, lim)
    # exactly at the limit is fine; nothing was applied by the refused calls
    eng = Engine(clock="event", limits=lim)
    with pytest.raises(LimitExceeded):
        eng.ingest_columns(["u"] * 4, ["e"] * 4, [T0] * 4)
    eng.create_segment("three", "count(e, 1d) >= 3")
    assert eng.members("three") == set()
    assert eng.ingest_columns(["u"] * 3, ["e"] * 3, [T0] * 3).accepted == 3
    assert eng.members("three") == {"u"}


def test_limit_exceeded_is_invalid_argument():
    grpc = pytest.importorskip("grpc")
    from engine.server._errors import status_of

    assert isinstance(LimitExceeded("x"), (ConfigError, ValueError))
    assert status_of(LimitExceeded("x"))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(codec.ColumnsError("x"))[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_max_batch_cells():
    lim = Limits(max_batch_cells=10)
    with pytest.raises(LimitExceeded, match="max_batch_cells"):
        prepare_events(["u"] * 4, ["e"] * 4, [T0] * 4, None, {"a": [1] * 4, "b": [1] * 4, "c": [1] * 4},
                       **EV, limits=lim)
    # dicts: the event that would take the batch past the cells is rejected, not the batch
    events = [{"user_id": "u", "type": "e", "timestamp_ms": T0, "properties": {"a": 1, "b": 2}},
              {"user_id": "v", "type": "e", "timestamp_ms": T0, "properties": {"c": 1, "d": 2}},
              {"user_id": "w", "type": "e", "timestamp_ms": T0, "properties": {"b": 3, "a": 4}},
              {"user_id": "x", "type": "e", "timestamp_ms": T0, "properties": {"e": 1}}]
    cols, rej = events_from_dicts(events, **EV, limits=lim)
    assert [r.index for r in rej] == [1, 3] and "max_batch_cells" in rej[0].reason
    assert cols.user.values() == ["u", "w"]
    with pytest.raises(LimitExceeded, match="max_batch_cells"):
        codec.events_to_columns([pb.Event(user_id="u", type="e", properties={
            k: pb.Value(number_value=1) for k in "abc"})] * 4, lim)


# ----------------------------------------------------------------------------- names


def test_twenty_thousand_distinct_types_in_one_batch():
    eng = Engine(clock="event", limits=Limits(max_event_types=64))
    eng.create_segment("viewers", "count(view, 1d) >= 1")
    assert eng.ingest_columns(["a", "b", "c"], ["view", "cart", "buy"], [T0] * 3).accepted == 3
    n = 20_000
    users = [f"u{i}" for i in range(n)]
    types = [f"t{i}" for i in range(n)]
    types[5000] = "view"            # known types in the same batch are accepted
    r = eng.ingest_columns(users, types, [T0 + 1] * n)
    assert r.accepted == 64 - 3 + 1 and r.rejected == n - r.accepted
    rej = reasons(r)
    assert 5000 not in rej and all(i not in rej for i in range(61))   # the first seen win
    assert rej[61] == 'event type "t61" would be one more than max_event_types (64 distinct event types)'
    assert eng.members("viewers") == {"a", "u5000"}
    assert eng.get_user("u0")["known"] and not eng.get_user("u61")["known"]
    # the engine is full: new types are refused, known ones accepted
    r = eng.ingest_columns(["x", "y"], ["brand_new", "t3"], [T0 + 2] * 2)
    assert r.accepted == 1 and list(reasons(r)) == [0]


def test_default_event_type_limit_counts_existing_types():
    names = NameBudget()
    names.add(types=[f"old{i}" for i in range(10)])
    n = 20_000
    cols, rej = prepare_events(["u"] * n, [f"t{i}" for i in range(n)], [T0] * n, **EV, names=names)
    assert len(cols) == 1024 - 10 and len(rej) == n - len(cols)
    assert names.n_types == 1024


def test_properties_per_type():
    lim = Limits(max_properties_per_type=3)
    names = NameBudget(lim)
    names.add(properties={"e": ["a"]})
    cols, rej = prepare_events(
        ["u1", "u2", "u3", "u4", "u5"], ["e", "e", "f", "e", "e"], [T0] * 5, None,
        {"a": [1, None, None, 1, None], "b": [None, 1, 1, None, None], "c": [None, 1, None, None, None],
         "d": [None, None, None, None, 1]}, **EV, names=names)
    assert reasons(rej) == {4: 'property "d" of event type "e" would be one more than max_properties_per_type '
                               "(3 distinct properties of one event type)"}
    assert cols.user.values() == ["u1", "u2", "u3", "u4"]
    assert names.to_dict()["types"] == {"e": ["a", "b", "c"], "f": ["b"]}


def test_traits_limit():
    eng = Engine(clock="event", limits=Limits(max_traits=3))
    eng.create_segment("pro", 'trait.plan == "pro"')
    r = eng.set_traits_many([("a", {"plan": "pro", "country": "TR"}, None),
                             ("b", {"age": 3, "team": "x"}, None),     # 2 new, 1 place left
                             ("c", {"plan": "pro", "age": 5}, None),
                             ("d", {"team": 1}, None)])
    assert reasons(r) == {1: 'trait "team" would be one more than max_traits (3 distinct traits)',
                          3: 'trait "team" would be one more than max_traits (3 distinct traits)'}
    assert eng.members("pro") == {"a", "c"} and eng.get_user("c")["traits"]["age"] == 5
    assert not eng.get_user("b")["known"]
    r = eng.set_traits_many([("e", {f"t{i}": i for i in range(5000)}, None)])
    assert "max_traits" in r.rejections[0].reason


def test_trait_columns_are_bounded_by_max_batch_cells():
    lim = Limits(max_batch_cells=6)
    cols, rej = prepare_traits([("u", {"a": 1, "b": 2}, None), ("v", {"c": 1}, None),
                                ("w", {"a": 3}, None)], **EV, limits=lim)
    assert [r.index for r in rej] == [1] and "max_batch_cells" in rej[0].reason
    assert cols.user.values() == ["u", "w"]


def test_rejected_events_do_not_use_up_names():
    lim = Limits(max_event_types=2)
    names = NameBudget(lim)
    _, rej = prepare_events(["", "u"], ["x", "y"], [T0, T0], **EV, names=names)   # "" is bad
    assert [r.index for r in rej] == [0] and names.types() == ["y"]
    cols, rej = prepare_events(["u", "v"], ["z", "w"], [T0, T0], **EV, names=names)
    assert [r.index for r in rej] == [1] and names.types() == ["y", "z"] and cols.user.values() == ["u"]


def test_names_limits_hold_per_batch_without_a_budget():
    lim = Limits(max_event_types=2)
    cols, rej = prepare_events(["u"] * 3, ["a", "b", "c"], [T0] * 3, **EV, limits=lim)
    assert [r.index for r in rej] == [2] and cols.type.values() == ["a", "b"]
    _, rej = prepare_events(["u"] * 2, ["c", "d"], [T0] * 2, **EV, limits=lim)
    assert rej == []


def test_name_budget_round_trips_and_seeds_are_never_refused():
    lim = Limits(max_event_types=2, max_properties_per_type=1, max_traits=1)
    b = NameBudget.from_names(types=["a", "b", "c"], properties={"a": ["x", "y"]}, traits=["t", "s"], limits=lim)
    d = b.to_dict()
    assert d == {"types": {"a": ["x", "y"], "b": [], "c": []}, "traits": ["s", "t"]}
    assert NameBudget.from_dict(json.loads(json.dumps(d)), lim) == b
    assert NameBudget.from_dict(msgpack.unpackb(msgpack.packb(d)), lim) == b
    assert NameBudget.from_dict(None) == NameBudget() and NameBudget.from_dict({}).n_types == 0
    # recorded names keep working beyond a lowered limit; new ones are refused
    _, rej = prepare_events(["u"] * 3, ["a", "c", "d"], [T0] * 3, None, {"y": [1, None, None]},
                            **EV, names=b)
    assert [r.index for r in rej] == [2]
    _, rej = prepare_traits([("u", {"s": 1}, None), ("u", {"new": 1}, None)], **EV, names=b)
    assert [r.index for r in rej] == [1]
    assert b.copy() == b and b.copy() is not b and "3 types" in repr(b)
    with pytest.raises(ConfigError):
        NameBudget.from_dict({"types": ["a"]})


def test_note_columns_records_what_a_log_replays():
    cols, _ = prepare_events(["u", "v"], ["e", "f"], [T0, T0], None, {"p": [1, None], "q": [None, "x"]}, **EV)
    tcols, _ = prepare_traits([("u", {"plan": "pro", "gone": None}, None)], **EV)
    b = NameBudget()
    b.note_columns(cols, events=True)
    b.note_columns(tcols, events=False)
    assert b.to_dict() == {"types": {"e": ["p"], "f": ["q"]}, "traits": ["gone", "plan"]}


# ----------------------------------------------------------------------------- segments


def test_max_segments():
    reg = SegmentRegistry(RET, limits=Limits(max_segments=2))
    for name in ("a", "b"):
        reg.put(reg.validate(name, "count(e, 1d) >= 1"))
    with pytest.raises(Overloaded, match=r"at most 2 \(max_segments\)"):
        reg.validate("c", "count(e, 1d) >= 1")
    assert reg.validate("a", "count(e, 2d) >= 1", replacing=True).version == 2   # replacing is fine
    assert reg.validate_expression("count(e, 1d) >= 2").name == "\x00preview"


def test_segment_name_and_description_sizes():
    reg = SegmentRegistry(RET)
    with pytest.raises(ExpressionError, match="max_name_bytes"):
        reg.validate("ü" * 150, "count(e, 1d) >= 1")
    with pytest.raises(ExpressionError, match="not valid Unicode"):
        reg.validate("a\ud800", "count(e, 1d) >= 1")
    with pytest.raises(ExpressionError, match="max_string_bytes"):
        reg.validate("a", "count(e, 1d) >= 1", "d" * 70_000)


# ----------------------------------------------------------------------------- expressions


def _chain(n: int, op: str = "and") -> str:
    return f" {op} ".join(f"count(e{i % 7}, 1d) >= 1" for i in range(n))


@pytest.mark.parametrize("n", [64, 65, 500, 2000])
def test_wide_and_chains_compile_pickle_and_evaluate(n):
    reg = SegmentRegistry(RET)
    defn = reg.validate("wide", _chain(n))
    again = pickle.loads(pickle.dumps(defn))         # what crosses Ray to the shards
    assert again == defn
    from engine._shard import ShardCore

    ShardCore(RET, 16).create_segment(again, T0)     # a shard compiles it
    eng = Engine(clock="event")
    eng.create_segment("all", _chain(n))
    eng.create_segment("any", _chain(n, "or"))
    eng.ingest([{"user_id": "full", "type": f"e{i}", "timestamp_ms": T0} for i in range(7)]
               + [{"user_id": "one", "type": "e3", "timestamp_ms": T0}])
    assert eng.members("all") == {"full"} and eng.members("any") == {"full", "one"}


def test_wide_filters_fit_the_filter_stack():
    where = " and ".join(f"p{i} == 1" for i in range(300))
    eng = Engine(clock="event")
    eng.create_segment("s", f"count(e where {where}, 1d) >= 1")
    props = {f"p{i}": 1 for i in range(300)}
    r = eng.ingest([{"user_id": "yes", "type": "e", "timestamp_ms": T0, "properties": dict(props)},
                    {"user_id": "no", "type": "e", "timestamp_ms": T0, "properties": {**props, "p7": 2}}])
    assert r.rejected == 2      # 301 properties: more than max_properties_per_event
    eng = Engine(clock="event", limits=Limits(max_properties_per_event=300, max_properties_per_type=300))
    eng.create_segment("s", f"count(e where {where}, 1d) >= 1")
    r = eng.ingest([{"user_id": "yes", "type": "e", "timestamp_ms": T0, "properties": dict(props)},
                    {"user_id": "no", "type": "e", "timestamp_ms": T0, "properties": {**props, "p7": 2}}])
    assert r.accepted == 2 and eng.members("s") == {"yes"}


def test_plan_stack_matches_the_kernels():
    from engine.expr._shape import PLAN_STACK
    from engine.kernels import _eval

    assert PLAN_STACK == _eval.MAX_STACK


def test_what_no_regrouping_fits_is_an_expression_error_at_creation():
    # each operand needs 61 slots; 8 of them side by side need 68 however they are grouped
    deep = "(trait.a" + " + (trait.a" * 60 + ")" * 60 + " > 0)"
    with pytest.raises(ExpressionError, match="^1:1: the expression needs 68 values on the evaluation stack"):
        compile_expression(" and ".join([deep] * 8))


HOSTILE = [
    ('trait.x == "\0"', r"^1:13: a string cannot hold a NUL character"),
    ('trait.x == "\ud800"', r"^1:13: character U\+D800 is not valid Unicode"),
    ("count(a, 1d) > 1 \0", r"^1:18: unexpected character U\+0000"),
    ("\x07", r"^1:1: unexpected character U\+0007"),
    ("(" * 65 + "trait.a" + ")" * 65, r"^1:65: the expression is nested too deeply: more than 64 levels"),
    ("not " * 65 + "trait.a", r"nested too deeply"),
    ("trait.a" + " + 1" * 64 + " > 0", r"nested too deeply"),
    ("a" * 70_000, r"^1:1: the expression has 70000 characters; at most 65536 \(max_expression_chars\)"),
    ("count(" + "a" * 257 + ", 1d) > 1", r'^1:7: event type "a{40}\.\.\." is 257 bytes long'),
    ("trait." + "b" * 300 + " == 1", r"^1:1: trait name .*\(max_name_bytes\)"),
    ('trait.x == "' + "ü" * 33_000 + '"', r"^1:12: the string is 66000 bytes long .*max_string_bytes"),
    ("count(a, " + "9" * 5000 + "d) > 1", r"^1:10: the duration .* is too large"),
    ("count(a, 1d) > " + "9" * 400, r"is too large"),
]


@pytest.mark.parametrize("text, match", HOSTILE, ids=[f"hostile{i}" for i in range(len(HOSTILE))])
def test_hostile_expressions_are_expression_errors(text, match):
    with pytest.raises(ExpressionError, match=match):
        compile_expression(text)


def test_expression_limits_are_configurable():
    lim = Limits(max_expression_depth=3, max_expression_chars=40)
    assert parse("((trait.a))", limits=Limits()) is not None
    with pytest.raises(ExpressionError, match="more than 3 levels"):
        parse("((((trait.a))))", limits=lim)
    with pytest.raises(ExpressionError, match="at most 40"):
        parse("trait.a == " + "1" * 40, limits=lim)
    reg = SegmentRegistry(RET, limits=lim)
    with pytest.raises(ExpressionError, match="max_expression_depth"):
        reg.validate("s", "not not not not trait.a")
