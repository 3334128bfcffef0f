"""A wall-clock server with TLS and a bearer token (real Ray): time-driven deltas arrive within
50 ms of their due time, AdvanceClock is refused, Reset is off by default."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from engine import ClockError
from engine._pb import pb, pb_grpc
from engine.client import Client
from tests.test_server_support import TOKEN, make_self_signed, start_server

pytestmark = pytest.mark.ray

LATE_MS = 50


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, tls):
    cert, key = tls
    srv = start_server(tmp_path_factory, "--shards", "2", "--clock", "wall",
                       "--tls-cert", str(cert), "--tls-key", str(key),
                       env={"RTSEG_TOKEN": TOKEN})            # the token from the environment
    yield srv
    assert srv.stop() == 0, srv.stderr_tail()


@pytest.fixture
def client(server, tls):
    with Client(server.target, TOKEN, tls_ca=str(tls[0]), timeout_s=60) as c:
        yield c


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def test_tls_health_and_plaintext_refused(server, client, tls):
    assert client.health() == "SERVING"
    assert client.stats()["clock"] == "wall"
    with Client(server.target, TOKEN, timeout_s=5) as plain:
        with pytest.raises(grpc.RpcError) as info:
            plain.list_segments()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with Client(server.target, None, tls_ca=str(tls[0]), timeout_s=10) as anonymous:
        with pytest.raises(grpc.RpcError) as info:
            anonymous.list_segments()
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_advance_clock_and_reset_are_refused(server, client, tls):
    with pytest.raises(ClockError):
        client.advance_clock(wall_ms() + 10_000)
    creds = grpc.ssl_channel_credentials(tls[0].read_bytes())
    with grpc.secure_channel(server.target, creds) as channel:
        stub = pb_grpc.SegmentEngineStub(channel)
        md = (("authorization", f"Bearer {TOKEN}"),)
        with pytest.raises(grpc.RpcError) as info:
            stub.AdvanceClock(pb.ClockRequest(now_ms=wall_ms()), metadata=md)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as info:
            stub.Reset(pb.ResetRequest(), metadata=md)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def _collect(sub, out: list, n: int) -> None:
    for d in sub:
        out.append((d, wall_ms()))
        if len(out) >= n:
            return


def test_time_driven_deltas_arrive_within_50ms(client):
    client.create_segment("pinged_1s", "count(ping, 1s) >= 1")
    client.create_segment("soon", "count(launch, 1h) >= 1")
    sub = client.subscribe(["pinged_1s", "soon"])
    got: list = []
    reader = threading.Thread(target=_collect, args=(sub, got, 3))
    reader.start()
    time.sleep(0.2)
    t_ping = wall_ms()
    t_launch = t_ping + 700                       # an event from the future counts from then
    r = client.ingest([{"user_id": "w1", "type": "ping", "timestamp_ms": t_ping},
                       {"user_id": "w2", "type": "launch", "timestamp_ms": t_launch}])
    assert r.accepted == 2 and r.now_ms >= t_ping
    reader.join(10)
    sub.close()
    assert len(got) == 3, got
    by = {(d.segment, d.user_id, d.kind): (d, seen) for d, seen in got}
    enter, _ = by[("pinged_1s", "w1", "ENTER")]
    assert enter.cause == "EVENT"
    # the ping leaves the 1 s window at t_ping + 1000
    exit_, seen = by[("pinged_1s", "w1", "EXIT")]
    assert exit_.cause == "TIME"
    assert 0 <= exit_.at_ms - (t_ping + 1000) <= LATE_MS, exit_.at_ms - (t_ping + 1000)
    assert seen - (t_ping + 1000) <= LATE_MS + 100       # delivered promptly too
    launch, seen = by[("soon", "w2", "ENTER")]
    assert launch.cause == "TIME"
    assert 0 <= launch.at_ms - t_launch <= LATE_MS, launch.at_ms - t_launch


def test_wall_clock_ingest_without_timestamp_means_now(client):
    before = wall_ms()
    r = client.ingest([{"user_id": "n1", "type": "tap"}])
    assert r.accepted == 1 and before <= r.now_ms <= wall_ms()
    assert client.get_user("n1")["known"]
