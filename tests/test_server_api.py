"""Every RPC of the gRPC API against a real ``rtseg serve`` (real Ray, 2 shards, event clock,
bearer token): happy paths and the status codes of the contract."""

from __future__ import annotations

import re
import threading
import time

import grpc
import numpy as np
import pytest

from engine import ExpressionError, SegmentExists, SequenceTooOld, UnknownSegment
from engine._pb import pb, pb_grpc
from engine.client import Client
from tests.test_server_support import TOKEN, start_server, wait_until

pytestmark = pytest.mark.ray

T0 = 1_700_000_000_000
H = 3_600_000
D = 24 * H
LOG_SIZE = 300
LINE_COL = re.compile(r"^\d+:\d+: ")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory, "--shards", "2", "--clock", "event", "--token", TOKEN,
                       "--delta-log-size", str(LOG_SIZE), "--allow-reset")
    yield srv
    assert srv.stop() == 0, srv.stderr_tail()


@pytest.fixture
def client(server):
    with Client(server.target, TOKEN, timeout_s=60) as c:
        c.reset(clock="event", retention="30d")
        yield c


@pytest.fixture
def stub(server):
    channel = grpc.insecure_channel(server.target)
    yield pb_grpc.SegmentEngineStub(channel)
    channel.close()


AUTH = (("authorization", f"Bearer {TOKEN}"),)


def code_of(fn, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        result = fn(*args, **kwargs)
        if hasattr(result, "__iter__") and not isinstance(result, (str, bytes)):
            list(result)
    return info.value.code(), info.value.details()


def ev(uid, etype, t, value=0.0, **props):
    return {"user_id": uid, "type": etype, "timestamp_ms": t, "value": value, "properties": props}


# ----------------------------------------------------------------------------- auth, health


def test_health_reflection_and_token(server, stub):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = grpc.insecure_channel(server.target)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="rtseg.v1.SegmentEngine"),
                             timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = list(refl.ServerReflectionInfo(iter([req]), metadata=AUTH, timeout=10))
        names = {s.name for s in replies[0].list_services_response.service}
        assert {"rtseg.v1.SegmentEngine", "grpc.health.v1.Health"} <= names
        code, _ = code_of(refl.ServerReflectionInfo, iter([req]), timeout=10)
        assert code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        channel.close()


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong"),),
                                      (("authorization", TOKEN),)])
def test_unauthenticated_on_every_kind_of_call(stub, metadata):
    kw = {"metadata": metadata, "timeout": 10}
    assert code_of(stub.GetStats, pb.StatsRequest(), **kw)[0] == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(stub.Ingest, pb.EventBatch(), **kw)[0] == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(stub.Subscribe, pb.SubscribeRequest(), **kw)[0] == \
        grpc.StatusCode.UNAUTHENTICATED
    assert code_of(stub.IngestStream, iter([pb.EventBatch()]), **kw)[0] == \
        grpc.StatusCode.UNAUTHENTICATED
    assert code_of(stub.ExportSegment, pb.SegmentRef(name="x"), **kw)[0] == \
        grpc.StatusCode.UNAUTHENTICATED


def test_client_with_wrong_token_fails(server):
    with Client(server.target, "nope", timeout_s=10) as c:
        with pytest.raises(grpc.RpcError) as info:
            c.list_segments()
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


# ----------------------------------------------------------------------------- segments


def test_segment_lifecycle_and_errors(client, stub):
    client.ingest([ev("u1", "view", T0), ev("u1", "view", T0 + 1), ev("u2", "view", T0 + 2)])
    seg = client.create_segment("browsers", "count(view, 48h) >= 2", "two views")
    assert (seg.name, seg.size, seg.version, seg.description) == ("browsers", 1, 1, "two views")
    assert seg.created_ms == T0 + 2
    assert client.get_segment("browsers") == seg
    assert [s.name for s in client.list_segments()] == ["browsers"]
    assert [(d.user_id, d.kind, d.cause) for d in client.deltas()] == \
        [("u1", "ENTER", "SEGMENT_CREATED")]

    # errors with their status codes, raw
    code, details = code_of(stub.CreateSegment, pb.SegmentSpec(name="x", expression="count(view, 48) >= 2"),
                            metadata=AUTH)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and LINE_COL.match(details), details
    assert details.startswith("1:")
    code, _ = code_of(stub.CreateSegment, pb.SegmentSpec(name="browsers", expression="true"),
                      metadata=AUTH)
    assert code == grpc.StatusCode.ALREADY_EXISTS
    for call, req in ((stub.GetSegment, pb.SegmentRef(name="nope")),
                      (stub.DeleteSegment, pb.SegmentRef(name="nope")),
                      (stub.ExportSegment, pb.SegmentRef(name="nope")),
                      (stub.ReplaceSegment, pb.SegmentSpec(name="nope", expression="true"))):
        assert code_of(call, req, metadata=AUTH)[0] == grpc.StatusCode.NOT_FOUND
    code, details = code_of(stub.PreviewSegment, pb.SegmentSpec(expression="count(view,"),
                            metadata=AUTH)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and LINE_COL.match(details)
    code, details = code_of(stub.ReplaceSegment, pb.SegmentSpec(name="browsers", expression="1 +"),
                            metadata=AUTH)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and LINE_COL.match(details)

    # the same errors as the embedded engine's exceptions, through the client
    with pytest.raises(ExpressionError) as info:
        client.create_segment("bad", 'count(view, 48h) >= "x" and')
    assert info.value.line >= 1 and info.value.col >= 1
    with pytest.raises(SegmentExists):
        client.create_segment("browsers", "true")
    with pytest.raises(UnknownSegment):
        client.delete_segment("nope")

    # replace: deltas for the difference only, version + 1
    seen = client.last_sequence
    seg2 = client.replace_segment("browsers", "count(view, 48h) >= 1")
    assert seg2.version == 2 and seg2.size == 2 and seg2.description == "two views"
    assert [(d.user_id, d.kind, d.cause) for d in client.deltas(seen)] == \
        [("u2", "ENTER", "SEGMENT_CREATED")]

    # delete: EXIT for every member
    seen = client.last_sequence
    gone = client.delete_segment("browsers")
    assert gone.size == 2
    assert sorted((d.user_id, d.kind, d.cause) for d in client.deltas(seen)) == \
        [("u1", "EXIT", "SEGMENT_DELETED"), ("u2", "EXIT", "SEGMENT_DELETED")]
    assert client.list_segments() == []


def test_segment_in_use_cannot_be_deleted(client, stub):
    client.create_segment("a", "count(view, 1d) >= 1")
    client.create_segment("b", 'segment("a") and count(buy, 1d) == 0')
    code, details = code_of(stub.DeleteSegment, pb.SegmentRef(name="a"), metadata=AUTH)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "b" in details
    code, details = code_of(stub.CreateSegment, pb.SegmentSpec(name="c", expression='segment("zz")'),
                            metadata=AUTH)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and LINE_COL.match(details)


def test_preview_and_export_in_pages(client, stub):
    n = 2500
    users = np.array([f"user-{i:05d}" for i in range(n)], dtype=object)
    r = client.ingest_columns(users, np.array(["view"] * n, dtype=object),
                              T0 + np.arange(n, dtype=np.int64))
    assert (r.accepted, r.rejected) == (n, 0)
    size, sample = client.preview_segment("count(view, 1d) >= 1")
    assert size == n and len(sample) == 10 and set(sample) <= set(users)
    assert client.list_segments() == []          # preview saves nothing
    client.create_segment("viewers", "count(view, 1d) >= 1")
    pages = list(stub.ExportSegment(pb.SegmentRef(name="viewers"), metadata=AUTH))
    assert len(pages) >= 3 and all(len(p.user_ids) <= 1000 for p in pages)
    exported = [u for p in pages for u in p.user_ids]
    assert len(exported) == n and set(exported) == set(users)
    assert client.members("viewers") == set(users)


# ----------------------------------------------------------------------------- ingestion


def test_ingest_rejections_one_by_one(client, stub):
    client.ingest([ev("u0", "view", T0)])                # the clock: T0
    batch = pb.EventBatch(events=[
        pb.Event(user_id="u1", type="view", timestamp_ms=T0),
        pb.Event(user_id="", type="view", timestamp_ms=T0),              # empty user
        pb.Event(user_id="u2", type="view", timestamp_ms=0),             # no timestamp
        pb.Event(user_id="u3", type="view", timestamp_ms=T0, value=float("nan")),
        pb.Event(user_id="u4", type="view", timestamp_ms=T0,
                 properties={"value": pb.Value(number_value=1)}),        # reserved name
        pb.Event(user_id="u5", type="", timestamp_ms=T0),                # empty type
    ])
    from engine.server._codec import encode_columns

    batch.columns.CopyFrom(encode_columns(["c1", "c2", ""], ["view", "view", "view"],
                                          [T0 + 1, T0 - 40 * D, T0 + 2]))
    reply = stub.Ingest(batch, metadata=AUTH)
    assert (reply.accepted, reply.rejected) == (2, 7)
    assert [r.index for r in reply.rejections] == [1, 2, 3, 4, 5, 7, 8]
    reasons = {r.index: r.reason for r in reply.rejections}
    assert "too old" in reasons[7]
    assert "user_id" in reasons[1] and "user_id" in reasons[8]
    assert reply.now_ms == T0 + 1


def test_ingest_dicts_and_columns_through_the_client(client):
    r = client.ingest([ev("u1", "view", T0, 2.5, product="p1", price=9.5, sale=True),
                       {"user_id": 7, "type": "view", "timestamp_ms": T0},
                       ev("u2", "view", T0 + 5),
                       {"user_id": "u3", "type": "view", "timestamp_ms": T0, "extra": 1}])
    assert (r.accepted, r.rejected, [x.index for x in r.rejections]) == (2, 2, [1, 3])
    assert r.now_ms == T0 + 5
    r = client.ingest_columns(["u1", "u2", None], ["buy", "buy", "buy"], [T0 + 6, 1.5, T0 + 7],
                              [1.0, 2.0, 3.0], {"kind": ["a", 1.0, None]})
    assert (r.accepted, r.rejected, [x.index for x in r.rejections]) == (1, 2, [1, 2])
    client.create_segment("cheap", 'count(view where product == "p1" and sale == true, 1d) >= 1')
    assert client.members("cheap") == {"u1"}


def test_ingest_stream_totals(client, stub):
    from engine.server._codec import encode_columns

    def batches():
        for k in range(5):
            yield pb.EventBatch(columns=encode_columns(
                [f"u{k}", f"v{k}"], ["view", "view"], [T0 + k, 0]))
    reply = stub.IngestStream(batches(), metadata=AUTH)
    assert (reply.accepted, reply.rejected) == (5, 5)
    assert [r.index for r in reply.rejections] == [1, 3, 5, 7, 9]
    assert reply.now_ms == T0 + 4
    r = client.ingest_stream([{"user_id": ["a"], "type": ["view"], "timestamp_ms": [T0 + 10]}])
    assert (r.accepted, r.now_ms) == (1, T0 + 10)


def test_traits_get_user_and_delete_user(client, stub):
    client.create_segment("turks", 'trait.country == "TR"')
    r = client.set_traits("u1", {"country": "TR", "age": 30, "vip": True}, timestamp_ms=T0)
    assert (r.accepted, r.rejected, r.now_ms) == (1, 0, T0)
    view = client.get_user("u1")
    assert view["known"] and view["segments"] == ["turks"]
    assert view["traits"] == {"country": "TR", "age": 30.0, "vip": True}
    raw = stub.GetUser(pb.UserRef(user_id="u1"), metadata=AUTH)
    assert raw.traits["country"].string_value == "TR"
    # a Value without a kind unsets the trait
    stub.SetTraits(pb.TraitBatch(updates=[pb.TraitUpdate(user_id="u1",
                                                         traits={"country": pb.Value()})]),
                   metadata=AUTH)
    assert client.get_user("u1")["segments"] == []
    assert "country" not in client.get_user("u1")["traits"]
    client.set_traits("u2", {"country": "TR"})
    seen = client.last_sequence
    gone = stub.DeleteUser(pb.UserRef(user_id="u2"), metadata=AUTH)
    assert gone.known and list(gone.segments) == ["turks"]
    assert [(d.user_id, d.kind, d.cause) for d in client.deltas(seen)] == \
        [("u2", "EXIT", "USER_DELETED")]
    assert stub.GetUser(pb.UserRef(user_id="u2"), metadata=AUTH).known is False
    assert stub.GetUser(pb.UserRef(user_id="never"), metadata=AUTH).known is False
    r = client.set_traits_many([("u3", {"x": 1}, None), (5, {"x": 1}, None),
                                ("u4", {"x": [1]}, None)])
    assert (r.accepted, r.rejected, [x.index for x in r.rejections]) == (1, 2, [1, 2])


def test_advance_clock_applies_time_driven_changes(client, stub):
    client.create_segment("recent", "count(view, 1h) >= 1")
    client.ingest([ev("u1", "view", T0), ev("u2", "view", T0 + 30 * 60_000)])
    assert client.members("recent") == {"u1", "u2"}
    seen = client.last_sequence
    assert client.advance_clock(T0 + H) == T0 + H
    assert [(d.user_id, d.kind, d.cause, d.at_ms) for d in client.deltas(seen)] == \
        [("u1", "EXIT", "TIME", T0 + H)]
    assert client.advance_clock(T0) == T0 + H            # never backwards
    assert stub.AdvanceClock(pb.ClockRequest(now_ms=T0 + 2 * H), metadata=AUTH).now_ms == T0 + 2 * H
    assert client.members("recent") == set()
    assert client.now_ms == T0 + 2 * H


# ----------------------------------------------------------------------------- subscribe


def _read(stream, n, timeout_s=30):
    out = []
    deadline = time.monotonic() + timeout_s
    it = iter(stream)
    while len(out) < n and time.monotonic() < deadline:
        out.append(next(it))
    return out


def test_subscribe_live_filtered_and_resumed_without_gaps(client, stub):
    client.create_segment("a", "count(view, 1d) >= 1")
    client.create_segment("b", "count(buy, 1d) >= 1")
    live = stub.Subscribe(pb.SubscribeRequest(), metadata=AUTH)
    only_b = stub.Subscribe(pb.SubscribeRequest(segments=["b"]), metadata=AUTH)
    start = dict(live.initial_metadata())["rtseg-start-sequence"]
    assert int(start) == client.last_sequence
    for k in range(20):
        client.ingest([ev(f"u{k}", "view", T0 + k), ev(f"u{k}", "buy", T0 + k)])
    got = _read(live, 40)
    seqs = [d.sequence for d in got]
    assert seqs == list(range(int(start) + 1, int(start) + 41))      # no gaps, no repeats
    got_b = _read(only_b, 20)
    assert {d.segment for d in got_b} == {"b"}
    assert [d.sequence for d in got_b] == [d.sequence for d in got if d.segment == "b"]
    live.cancel()
    only_b.cancel()

    # resume from the middle: first the retained ones, then live ones, seamlessly
    middle = seqs[15]
    resumed = client.subscribe(after_sequence=middle)
    out = []
    reader = threading.Thread(target=lambda: out.extend(_read(resumed, 40 - 16 + 4)))
    reader.start()
    wait_until(lambda: resumed.position >= seqs[-1], 30)     # caught up with the retained
    client.ingest([ev("late", "view", T0 + 100), ev("late", "buy", T0 + 100),
                   ev("late2", "view", T0 + 101), ev("late2", "buy", T0 + 101)])
    reader.join(30)
    resumed.close()
    assert [d.sequence for d in out] == list(range(middle + 1, seqs[-1] + 5))
    assert sorted(d.user_id for d in out[-4:]) == ["late", "late", "late2", "late2"]


def test_subscribe_out_of_range(client, stub):
    client.create_segment("a", "count(view, 1d) >= 1")
    n = LOG_SIZE + 100
    for k in range(0, n, 50):    # the log drops whole operations: several small ones
        users = [f"u{i}" for i in range(k, k + 50)]
        client.ingest_columns(users, ["view"] * 50, [T0] * 50)
    assert client.last_sequence == n
    code, details = code_of(stub.Subscribe, pb.SubscribeRequest(after_sequence=1), metadata=AUTH)
    assert code == grpc.StatusCode.OUT_OF_RANGE and "retained" in details
    code, _ = code_of(stub.Subscribe, pb.SubscribeRequest(after_sequence=n + 50), metadata=AUTH)
    assert code == grpc.StatusCode.OUT_OF_RANGE
    with pytest.raises(SequenceTooOld):
        client.deltas(1)
    with pytest.raises(SequenceTooOld):
        next(iter(client.subscribe(after_sequence=1)))
    # what is retained can still be resumed from; asking beyond the end is just nothing yet
    assert len(client.deltas(n - 10)) == 10
    assert client.deltas(n + 50) == []


def test_slow_subscriber_never_blocks_ingestion(client, stub):
    client.create_segment("a", "count(view, 1d) >= 1")
    slow = stub.Subscribe(pb.SubscribeRequest(after_sequence=0), metadata=AUTH)   # never read
    t = time.monotonic()
    total = 0
    for k in range(40):
        users = [f"k{k}-u{i}" for i in range(500)]
        total += client.ingest_columns(users, ["view"] * 500, [T0 + k] * 500).accepted
    assert total == 20_000 and time.monotonic() - t < 60
    assert client.last_sequence == 20_000
    # the stalled reader has fallen out of the retained log: it ends with OUT_OF_RANGE
    with pytest.raises(grpc.RpcError) as info:
        for _ in slow:
            pass
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE


# ----------------------------------------------------------------------------- stats


def test_stats(client):
    client.ingest_columns([f"u{i}" for i in range(100)], ["view"] * 100, [T0] * 100)
    st = client.stats()
    assert st["shards"] == 2 and st["clock"] == "event" and st["now_ms"] == T0
    assert st["users"] == 100 and st["events"] == 100
    assert sum(s["slots"] for s in st["shard_stats"]) == 4096
    assert sum(s["users"] for s in st["shard_stats"]) == 100
    assert all(s["users"] > 0 for s in st["shard_stats"])    # both shards got some
    assert st["ingest_latency"]["count"] >= 1 and st["round_latency"]["p50_ms"] > 0
    lag = st["loop_lag"]                       # probed every 10 ms since the server started
    assert lag["count"] > 0 and lag["max_ms"] >= lag["p99_ms"] >= lag["p50_ms"] >= 0
    assert st["retention_ms"] == 30 * D


def test_reset_restarts_sequences(client):
    client.create_segment("a", "count(view, 1d) >= 1")
    client.ingest([ev("u1", "view", T0)])
    assert client.last_sequence == 1
    client.reset(retention="7d")
    assert client.list_segments() == [] and client.last_sequence == 0 and client.now_ms == 0
    with pytest.raises(ExpressionError):
        client.create_segment("long", "count(view, 30d) >= 1")   # longer than the retention
