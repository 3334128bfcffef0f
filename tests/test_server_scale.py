"""Scaling shards live (real Ray): slots move between shard actors with their state while a
producer keeps ingesting, and nothing is lost or duplicated: the served engine ends up exactly
where the embedded ``Engine`` does after the same operations."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from engine import Engine
from engine.client import Client
from tests.test_server_support import start_server

pytestmark = pytest.mark.ray

T0 = 1_700_000_000_000
MIN = 60_000
SEGMENTS = {
    "active": "count(view, 1h) >= 2",
    "buyers": "count(buy, 1d) >= 1 and sum(buy.value, 1d) > 50",
    "fans": 'top_count(view.sku, 1d) >= 3',
    "vip_active": 'segment("active") and trait.tier == "gold"',
    "lapsed": "since(view) > 30m and count(view, 1d) >= 1",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory, "--shards", "2", "--clock", "event", "--allow-reset")
    yield srv
    assert srv.stop() == 0, srv.stderr_tail()


def _script(seed: int, n_batches: int, n_users: int = 4000, batch: int = 400) -> list[tuple]:
    """Seeded operations: columnar batches, trait updates and clock moves."""
    rng = np.random.default_rng(seed)
    ops = []
    types = np.array(["view", "view", "view", "buy"], dtype=object)
    skus = np.array(["a", "b", "c", "d"], dtype=object)
    for k in range(n_batches):
        users = np.array([f"user-{i}" for i in rng.integers(0, n_users, batch)], dtype=object)
        ts = T0 + k * 2 * MIN + rng.integers(0, 2 * MIN, batch)
        ops.append(("ingest", dict(user_id=users, type=types[rng.integers(0, 4, batch)],
                                   timestamp_ms=ts, value=rng.gamma(2.0, 30.0, batch),
                                   properties={"sku": skus[rng.integers(0, 4, batch)]})))
        if k % 5 == 0:
            ops.append(("traits", [(f"user-{i}", {"tier": "gold" if i % 3 else "silver"}, None)
                                   for i in rng.integers(0, n_users, 50)]))
        if k % 7 == 6:
            ops.append(("advance", int(T0 + (k + 1) * 2 * MIN + 20 * MIN)))
    return ops


def _run(target, op):
    kind, arg = op
    if kind == "ingest":
        r = target.ingest_columns(**arg)
        return (r.accepted, r.rejected, r.now_ms)
    if kind == "traits":
        r = target.set_traits_many(arg)
        return (r.accepted, r.rejected, r.now_ms)
    return target.advance_clock(arg)


def _delta_groups(deltas):
    """Deltas by operation (consecutive equal at_ms), each group as a sorted list."""
    groups, current, last_at = [], [], None
    for d in deltas:
        if d.at_ms != last_at and current:
            groups.append(sorted(current))
            current = []
        current.append((d.segment, d.user_id, d.kind, d.cause))
        last_at = d.at_ms
    if current:
        groups.append(sorted(current))
    return groups


def test_scale_2_4_1_while_ingesting(server):
    ops = _script(seed=11, n_batches=500)
    with Client(server.target, timeout_s=300) as client:
        client.reset("event", "30d")
        embedded = Engine(clock="event", retention="30d")
        for name, text in SEGMENTS.items():
            client.create_segment(name, text)
            embedded.create_segment(name, text)

        served_results: list = []
        done_at: list[float] = []
        errors: list = []
        progress = threading.Event()

        def producer():
            try:
                with Client(server.target, timeout_s=300) as c:
                    for i, op in enumerate(ops):
                        served_results.append(_run(c, op))
                        done_at.append(time.monotonic())
                        if i == 20:
                            progress.set()
            except Exception as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)
                progress.set()

        thread = threading.Thread(target=producer)
        thread.start()
        assert progress.wait(120)
        t_up = time.monotonic()
        up = client.scale(4)
        t_mid = time.monotonic()
        assert up["shards"] == 4 and up["slots_moved"] == 2048
        mid = client.stats()
        assert mid["shards"] == 4 and [s["slots"] for s in mid["shard_stats"]] == [1024] * 4
        t_down = time.monotonic()
        down = client.scale(1)
        t_end = time.monotonic()
        assert down["shards"] == 1 and down["slots_moved"] == 3072
        thread.join(300)
        # ingestion went on while each scaling ran
        assert any(t_up < t < t_mid for t in done_at), (t_up, t_mid)
        assert any(t_down < t < t_end for t in done_at), (t_down, t_end)
        assert done_at[-1] > t_end
        assert not errors, errors
        assert len(served_results) == len(ops)
        assert len(served_results) > 0 and not thread.is_alive()

        embedded_results = [_run(embedded, op) for op in ops]
        assert served_results == embedded_results
        for name in SEGMENTS:
            assert client.members(name) == embedded.members(name), name
        st = client.stats()
        est = embedded.stats()
        assert (st["shards"], st["users"], st["events"]) == (1, est["users"], est["events_retained"])
        served_deltas = client.deltas()
        embedded_deltas = embedded.deltas()
        assert [d.sequence for d in served_deltas] == [d.sequence for d in embedded_deltas]
        assert _delta_groups(served_deltas) == _delta_groups(embedded_deltas)

        # and back up, then more traffic: still the same engine
        assert client.scale(3)["shards"] == 3
        more = _script(seed=12, n_batches=10)
        for op in more:
            assert _run(client, op) == _run(embedded, op)
        for name in SEGMENTS:
            assert client.members(name) == embedded.members(name), name
        assert _delta_groups(client.deltas(len(served_deltas))) == \
            _delta_groups(embedded.deltas(len(embedded_deltas)))


def test_scale_rejects_nonsense(server):
    import grpc

    with Client(server.target, timeout_s=60) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.scale(0)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        t = time.monotonic()
        assert client.scale(client.stats()["shards"])["slots_moved"] == 0
        assert time.monotonic() - t < 30
