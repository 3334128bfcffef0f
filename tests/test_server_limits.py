"""The service's hard limits: a clear status for what is too much, and nothing accepted lost."""

from __future__ import annotations

import asyncio
import pickle
import threading

import grpc
import pytest

from engine._pb import pb, pb_grpc
from engine.client import Client
from engine.errors import ClockError, ExpressionError, Overloaded
from tests.test_server_units import LocalServer

T0 = 1_700_000_000_000


@pytest.fixture(scope="module")
def server():
    srv = LocalServer(shards=2, max_subscribers=2, max_message_mb=1, max_future="1h")
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    with Client(server.target, timeout_s=60) as c:
        c.reset()
        yield c


def test_far_future_timestamps_are_rejected_and_later_events_still_count(client):
    client.create_segment("v", "count(view, 1d) >= 1")
    r = client.ingest([{"user_id": "a", "type": "view", "timestamp_ms": 2**62},
                       {"user_id": "b", "type": "view", "timestamp_ms": T0}])
    assert (r.accepted, r.rejected) == (1, 1) and "max_future" in r.rejections[0].reason
    assert r.now_ms == T0
    later = client.ingest([{"user_id": "c", "type": "view", "timestamp_ms": T0 + 1000}])
    assert later.accepted == 1 and client.members("v") == {"b", "c"}


def test_advance_clock_beyond_the_bound_needs_the_flag(client):
    with pytest.raises(ClockError, match="allow_far_future"):
        client.advance_clock(2**62)
    far = 4_000_000_000_000                       # year 2096
    assert client.advance_clock(far, allow_far_future=True) == far


def test_a_message_over_the_receive_limit_is_refused_whole(client):
    client.create_segment("v", "count(view, 1d) >= 1")
    n = 40_000                                    # ~2 MB of ids: over --max-message-mb 1
    with pytest.raises(grpc.RpcError) as info:
        client.ingest_columns([f"user-{i:030d}" for i in range(n)], ["view"] * n, [T0] * n)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.ingest([{"user_id": "a", "type": "view", "timestamp_ms": T0}]).accepted == 1
    assert client.members("v") == {"a"}


def test_malformed_columns_get_invalid_argument_and_nothing_is_applied(server, client):
    client.create_segment("v", "count(view, 1d) >= 1")
    client.ingest([{"user_id": "a", "type": "view", "timestamp_ms": T0}])
    bad = pb.ColumnarEvents(count=3, timestamp_ms=b"\x00" * 8)   # 1 timestamp for 3 events
    with grpc.insecure_channel(server.target) as ch:
        stub = pb_grpc.SegmentEngineStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Ingest(pb.EventBatch(columns=bad))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert client.members("v") == {"a"} and client.stats()["events"] == 1


def test_subscribers_beyond_the_limit_are_refused(server, client):
    subs = [client.subscribe() for _ in range(2)]
    got = []
    threads = []
    for s in subs:
        t = threading.Thread(target=lambda s=s: got.extend(d for d in s), daemon=True)
        t.start()
        threads.append(t)
    try:
        def third():
            with Client(server.target, timeout_s=10) as other:
                for _ in other.subscribe(reconnect=False):
                    break
        deadline = 50
        for _ in range(deadline):                 # until both streams are open on the server
            if client.stats()["subscribers"] >= 2:
                break
            threading.Event().wait(0.1)
        with pytest.raises(Overloaded, match="max_subscribers"):
            third()
    finally:
        for s in subs:
            s.close()


def test_a_full_gateway_queue_is_overloaded_not_unbounded():
    from engine.server._rounds import Rounds

    class Gw:
        class config:
            flush_interval_us = 300
            flush_events = 1000

    async def main():
        rounds = Rounds(Gw(), max_queue_ops=2)      # no dispatcher: operations wait
        waiting = [asyncio.ensure_future(rounds.submit("clock", None)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="queue is full"):
            await rounds.submit("clock", None)
        await rounds.close()
        for w in waiting:
            with pytest.raises(Exception, match="shutting down"):
                await w
    asyncio.run(main())


def test_expression_errors_survive_pickling_with_their_position():
    err = ExpressionError(3, 7, "unknown function")
    back = pickle.loads(pickle.dumps(err))
    assert (back.line, back.col, back.message, str(back)) == (3, 7, "unknown function",
                                                                "3:7: unknown function")
