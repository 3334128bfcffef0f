"""The embedded API of the spec, call by call: results, errors, clocks and the delta log."""

from __future__ import annotations

import time

import numpy as np
import pytest

import engine
from engine import (ClockError, Engine, ExpressionError, SegmentExists, SegmentInUse, SequenceTooOld,
                    UnknownSegment)

BASE = 1_700_000_000_000
H = 3_600_000


def view(uid, t, **props):
    return {"user_id": uid, "type": "view_product", "timestamp_ms": t, "properties": props}


def test_public_names_are_importable():
    for name in ("Engine", "ExpressionError", "SegmentExists", "UnknownSegment"):
        assert name in engine.__all__ and hasattr(engine, name)
    assert issubclass(ExpressionError, ValueError)
    assert issubclass(UnknownSegment, KeyError)


def test_ingest_result_and_clock():
    eng = Engine(clock="event", retention="30d")
    r = eng.ingest([view("u1", BASE, product_id="p9"), view("u2", BASE + 5)])
    assert (r.accepted, r.rejected, r.rejections, r.now_ms) == (2, 0, [], BASE + 5)
    assert eng.now_ms == BASE + 5
    assert eng.advance_clock(BASE + 10) == BASE + 10
    assert eng.advance_clock(BASE) == BASE + 10          # never backwards


def test_rejections_name_the_problem_and_keep_the_rest():
    eng = Engine(clock="event", retention="1d")
    eng.ingest([view("u1", BASE + 2 * 24 * H)])
    r = eng.ingest([view("", BASE + 2 * 24 * H), view("u2", BASE), {"user_id": "u3", "type": "x",
                    "timestamp_ms": BASE + 2 * 24 * H, "colour": "red"}, view("u4", BASE + 2 * 24 * H)])
    assert (r.accepted, r.rejected) == (1, 3)
    reasons = {x.index: x.reason for x in r.rejections}
    assert set(reasons) == {0, 1, 2}
    assert "user_id" in reasons[0]
    assert "retention" in reasons[1] or "old" in reasons[1]
    assert "colour" in reasons[2]
    eng.create_segment("all", "count(view_product, 1d) >= 1")
    assert eng.members("all") == {"u1", "u4"}


def test_columnar_path_matches_dicts():
    a, b = Engine(), Engine()
    for e in (a, b):
        e.create_segment("s", 'count(view_product where product_id == "p1", 1d) >= 2')
    ids = ["u1", "u1", "u2", "u2"]
    ts = np.array([BASE, BASE + 1, BASE + 2, BASE + 3], np.int64)
    pids = ["p1", "p1", "p1", None]
    a.ingest_columns(user_id=ids, type=["view_product"] * 4, timestamp_ms=ts, properties={"product_id": pids})
    b.ingest([view(u, int(t), **({"product_id": p} if p else {})) for u, t, p in zip(ids, ts, pids)])
    assert a.members("s") == b.members("s") == {"u1"}


def test_segment_errors():
    eng = Engine()
    with pytest.raises(ExpressionError) as e:
        eng.create_segment("bad", "count(view_product, 48) >= 3")
    assert str(e.value).startswith("1:21: ")
    eng.create_segment("a", "count(view_product, 1d) >= 1")
    with pytest.raises(SegmentExists):
        eng.create_segment("a", "count(view_product, 1d) >= 2")
    with pytest.raises(UnknownSegment):
        eng.delete_segment("nope")
    with pytest.raises(UnknownSegment):
        eng.members("nope")
    with pytest.raises(ExpressionError, match="unknown segment"):
        eng.create_segment("b", 'segment("nope")')
    eng.create_segment("b", 'segment("a")')
    with pytest.raises(SegmentInUse):
        eng.delete_segment("a")
    with pytest.raises(ExpressionError, match="cycle"):
        eng.replace_segment("a", 'segment("b")')
    with pytest.raises(ExpressionError, match="retention"):
        eng.create_segment("long", "count(view_product, 45d) >= 1")


def test_create_replace_delete_preview_and_deltas():
    eng = Engine()
    eng.ingest([view("u1", BASE), view("u1", BASE + 1), view("u2", BASE + 2)])
    info = eng.create_segment("two", "count(view_product, 1d) >= 2", description="two views")
    assert (info.size, info.version, info.description) == (1, 1, "two views")
    assert eng.preview_segment("count(view_product, 1d) >= 1") == (2, ["u1", "u2"])
    info = eng.replace_segment("two", "count(view_product, 1d) == 1")
    assert (info.size, info.version) == (1, 2)
    assert [s.name for s in eng.list_segments()] == ["two"]
    eng.delete_segment("two")
    got = [(d.sequence, d.user_id, d.kind, d.cause) for d in eng.deltas()]
    assert got == [(1, "u1", "ENTER", "SEGMENT_CREATED"), (2, "u1", "EXIT", "SEGMENT_CREATED"),
                   (3, "u2", "ENTER", "SEGMENT_CREATED"), (4, "u2", "EXIT", "SEGMENT_DELETED")]
    assert [d.sequence for d in eng.deltas(after_sequence=2)] == [3, 4]
    assert eng.deltas(after_sequence=4) == []


def test_delta_log_is_bounded_and_says_when_a_resume_point_is_gone():
    eng = Engine(delta_log_capacity=3)
    eng.create_segment("s", "count(view_product, 1d) >= 1")
    eng.ingest([view(f"u{i}", BASE + i) for i in range(10)])
    assert eng.last_sequence == 10
    assert [d.sequence for d in eng.deltas(after_sequence=7)] == [8, 9, 10]
    with pytest.raises(SequenceTooOld, match="no longer retained"):
        eng.deltas(after_sequence=2)


def test_user_views_and_deletion():
    eng = Engine()
    eng.create_segment("tr", 'trait.country == "TR"')
    eng.create_segment("v", "count(view_product, 1d) >= 1")
    eng.set_traits("u1", {"country": "TR", "vip": True, "score": 3.5}, timestamp_ms=BASE)
    eng.ingest([view("u1", BASE + 1)])
    assert eng.user_segments("u1") == ["tr", "v"]
    view_ = eng.get_user("u1")
    assert view_["known"] and view_["traits"] == {"country": "TR", "vip": True, "score": 3.5}
    eng.set_traits("u1", {"vip": None})
    assert "vip" not in eng.get_user("u1")["traits"]
    eng.delete_user("u1")
    assert eng.get_user("u1")["known"] is False
    assert eng.user_segments("u1") == []
    assert [(d.kind, d.cause) for d in eng.deltas()][-2:] == [("EXIT", "USER_DELETED")] * 2
    assert eng.get_user("nobody") == {"user_id": "nobody", "known": False, "segments": [], "traits": {},
                                      "scores": {}}


def test_wall_clock_fires_timers_by_itself():
    eng = Engine(clock="wall", retention="1d", tick_interval_ms=5)
    try:
        with pytest.raises(ClockError):
            eng.advance_clock(0)
        eng.create_segment("recent", "count(view_product, 300ms) >= 1")
        now = int(time.time() * 1000)
        eng.ingest([view("u1", now)])
        assert eng.members("recent") == {"u1"}
        deadline = time.time() + 5
        while eng.members("recent") and time.time() < deadline:
            time.sleep(0.02)
        assert eng.members("recent") == set()
        exit_ = eng.deltas()[-1]
        assert (exit_.kind, exit_.cause) == ("EXIT", "TIME")
        assert now + 300 <= exit_.at_ms <= now + 300 + 1000
    finally:
        eng.close()


def test_wall_clock_defaults_missing_timestamps_to_now():
    eng = Engine(clock="wall")
    before = int(time.time() * 1000)
    r = eng.ingest([{"user_id": "u", "type": "view_product"}])
    assert r.accepted == 1
    eng.create_segment("s", "since(view_product) < 1h")
    assert eng.members("s") == {"u"}
    assert eng.now_ms >= before
