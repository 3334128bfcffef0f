"""The service's parts without Ray: wire codec, slot planning, delta merging, the error map,
the token interceptor, and the gateway itself with in-process shards (``LocalShard``) behind a
real gRPC server: concurrency, reconnect-and-resume through a proxy that drops connections."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import Engine, SegmentExists, SequenceTooOld, UnknownSegment
from engine import errors as E
from engine._coded import SMALL_DECODE, CodedStrings, CodedValues
from engine._deltas import DeltaBatch
from engine._pb import pb
from engine.client import Client
from engine.config import ServerConfig
from engine.server import _codec as codec
from engine.server._sequencer import merge_delta_batches
from engine.server._errors import engine_error_from_rpc, status_of
from engine.server._routing import N_SLOTS, plan_moves, slot_of

T0 = 1_700_000_000_000


# ----------------------------------------------------------------------------- codec

_values = st.one_of(st.none(), st.text(max_size=6), st.booleans(),
                    st.floats(allow_nan=False, allow_infinity=False, width=64),
                    st.integers(-2**40, 2**40))


@settings(max_examples=60)
@given(rows=st.lists(st.tuples(st.text(min_size=1, max_size=5), st.sampled_from(["a", "b", "ü"]),
                               st.integers(1, 2**50), st.floats(-1e6, 1e6), _values, _values),
                     max_size=30))
def test_columnar_round_trip(rows):
    users = [r[0] for r in rows]
    types = [r[1] for r in rows]
    ts = np.array([r[2] for r in rows], dtype=np.int64)
    vals = np.array([r[3] for r in rows], dtype=np.float64)
    props = {"p": [r[4] for r in rows], "q": [r[5] for r in rows]}
    msg = pb.ColumnarEvents.FromString(
        codec.encode_columns(users, types, ts, vals, props).SerializeToString())
    out = codec.decode_columns(msg)
    assert list(out["user_id"]) == users and list(out["type"]) == types
    assert out["timestamp_ms"].tolist() == ts.tolist() and out["value"].tolist() == vals.tolist()
    for name in ("p", "q"):
        for got, want in zip(out["properties"][name].tolist(), props[name]):
            if isinstance(want, bool):
                assert got is want
            elif want is None:
                assert got is None
            elif isinstance(want, str):
                assert got == want
            else:
                assert got == float(want) and not isinstance(got, bool)


def test_numpy_columns_and_bad_columns():
    msg = codec.encode_columns(np.array(["x", "y", "x"]), np.array(["t", "t", "t"]),
                               np.array([1, 2, 3]), None,
                               {"n": np.array([1.0, np.nan, 3.0]), "s": np.array(["a", "b", "a"])})
    out = codec.decode_columns(msg)
    assert out["properties"]["n"].tolist() == [1.0, None, 3.0]
    assert out["properties"]["s"].tolist() == ["a", "b", "a"]
    assert out["value"].tolist() == [0.0, 0.0, 0.0]
    broken = pb.ColumnarEvents()
    broken.CopyFrom(msg)
    broken.count = 4
    with pytest.raises(ValueError):
        codec.decode_columns(broken)
    broken.CopyFrom(msg)
    broken.user_ids.codes = np.array([0, 1, 7], dtype="<i4").tobytes()
    with pytest.raises(ValueError, match="code outside"):
        codec.decode_columns(broken)
    with pytest.raises(TypeError):
        codec.encode_columns([1, 2], ["a", "b"], [1, 2])


def test_events_and_columns_in_one_batch():
    batch = pb.EventBatch(events=[pb.Event(user_id="e", type="t", timestamp_ms=5,
                                           properties={"k": pb.Value(string_value="v")})])
    batch.columns.CopyFrom(codec.encode_columns(["c"], ["t"], [6], [1.5], {"z": [True]}))
    cols = codec.batch_to_columns(batch)
    assert list(cols["user_id"]) == ["e", "c"] and cols["timestamp_ms"].tolist() == [5, 6]
    assert cols["properties"]["k"].tolist() == ["v", None]
    assert cols["properties"]["z"].tolist() == [None, True]


def test_trait_updates_decode_in_pieces_with_the_loop_free_between(monkeypatch):
    """SetTraits decodes a large batch a piece at a time: other work on the event loop runs
    between the pieces, and the updates come out whole and in order."""
    from engine.server import _servicer

    monkeypatch.setattr(_servicer, "TRAIT_DECODE_PIECE", 10)
    batch = pb.TraitBatch()
    for i in range(95):
        u = batch.updates.add(user_id=f"u{i}", timestamp_ms=T0 + i if i % 3 else 0)
        codec.value_to_pb(f"plan{i % 4}", u.traits["plan"])
        codec.value_to_pb(float(i), u.traits["age"])
        if i % 5 == 0:
            codec.value_to_pb(i % 2 == 0, u.traits["vip"])
        u.traits["gone"].SetInParent()          # a Value with no kind: the trait is unset
    want = [(f"u{i}", dict({"plan": f"plan{i % 4}", "age": float(i), "gone": None},
                           **({"vip": i % 2 == 0} if i % 5 == 0 else {})),
             T0 + i if i % 3 else None) for i in range(95)]

    async def run():
        turns = 0
        done = False

        async def other():
            nonlocal turns
            while not done:
                turns += 1
                await asyncio.sleep(0)
        task = asyncio.ensure_future(other())
        await asyncio.sleep(0)
        before = turns
        got = await _servicer.decode_trait_updates(batch.updates)
        done = True
        await task
        return got, turns - before

    got, turns = asyncio.run(run())
    assert got == want
    assert turns >= 9                    # 10 pieces: the other task ran between each two


# ----------------------------------------------------------------------------- routing


def test_slot_of_is_the_engines_hash():
    from engine._batch import prepare_events

    ids = ["u1", "user-42", "ü∂", "", "x" * 100]
    cols, _ = prepare_events(ids[:3] + ids[4:], ["t"] * 4, [1] * 4, now_ms=0,
                             retention_ms=10**9, clock="event")
    assert cols.slots().tolist() == [slot_of(u) for u in ids[:3] + ids[4:]]
    assert all(0 <= slot_of(u) < N_SLOTS for u in ids)


@pytest.mark.parametrize("current,target", [(1, 2), (2, 4), (4, 1), (3, 5), (5, 3), (2, 2), (1, 7)])
def test_plan_moves_balances_with_few_moves(current, target):
    slot_map = (np.arange(N_SLOTS) * current // N_SLOTS).astype(np.int32)
    moves = plan_moves(slot_map, current, target)
    new = slot_map.copy()
    moved = 0
    for src, dst, slots in moves:
        assert np.all(new[slots] == src) and src != dst
        new[slots] = dst
        moved += len(slots)
    counts = np.bincount(new, minlength=max(current, target))
    assert counts[:target].max() - counts[:target].min() <= 1 and counts[target:].sum() == 0
    # nothing moves that did not have to
    keep = sum(min(int((slot_map == i).sum()), int(counts[i])) for i in range(min(current, target)))
    assert moved == N_SLOTS - keep or current == target


def test_merge_orders_by_segment_then_user():
    a = DeltaBatch(["s2", "s1"], ["b", "z"], np.array([1, 1], np.int8), np.array([1, 1], np.int8),
                   np.array([5, 5], np.int64))
    b = DeltaBatch(["s1", "s2"], ["a", "a"], np.array([2, 1], np.int8), np.array([2, 1], np.int8),
                   np.array([5, 5], np.int64))
    m = merge_delta_batches([a, b], {"s1": 0, "s2": 1})
    assert list(zip(m.segments, m.user_ids)) == [("s1", "a"), ("s1", "z"), ("s2", "a"), ("s2", "b")]
    assert m.kind.tolist() == [2, 1, 1, 1]
    assert merge_delta_batches([a, DeltaBatch()], {}) is a


# ----------------------------------------------------------------------------- errors


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code, details, trailers=()):
        self._c, self._d, self._t = code, details, trailers

    def code(self):
        return self._c

    def details(self):
        return self._d

    def trailing_metadata(self):
        return self._t


@pytest.mark.parametrize("exc,code", [
    (E.ExpressionError(1, 7, "expected x"), grpc.StatusCode.INVALID_ARGUMENT),
    (E.SegmentExists("dup"), grpc.StatusCode.ALREADY_EXISTS),
    (E.UnknownSegment("nope"), grpc.StatusCode.NOT_FOUND),
    (E.SegmentInUse("used"), grpc.StatusCode.FAILED_PRECONDITION),
    (E.ClockError("wall"), grpc.StatusCode.FAILED_PRECONDITION),
    (E.SequenceTooOld("old"), grpc.StatusCode.OUT_OF_RANGE),
    (ValueError("bad"), grpc.StatusCode.INVALID_ARGUMENT),
    (RuntimeError("boom"), grpc.StatusCode.INTERNAL),
])
def test_error_map_round_trips(exc, code):
    got, message = status_of(exc)
    assert got == code
    trailers = (("rtseg-error", type(exc).__name__),) if isinstance(exc, E.EngineError) else ()
    back = engine_error_from_rpc(_FakeRpcError(got, message, trailers))
    if isinstance(exc, E.EngineError):
        assert type(back) is type(exc) and str(back) == str(exc)
    if isinstance(exc, E.ExpressionError):
        assert (back.line, back.col, back.message) == (1, 7, "expected x")


# ----------------------------------------------------------------------------- in-process server


class LocalServer:
    """The real gRPC server and gateway with in-process shards (no Ray), in a thread."""

    def __init__(self, **overrides):
        from engine.server._shards import LocalShard
        from engine.server._app import run_server

        cfg = ServerConfig(**{"port": 0, "shards": 3, "clock": "event", "data_dir": "",
                              "allow_reset": True, "no_console": True, **overrides})
        self._box: dict = {}
        started = threading.Event()

        def run():
            async def main():
                self._box["stop"] = asyncio.Event()
                self._box["loop"] = asyncio.get_running_loop()
                await run_server(cfg, on_ready=lambda p: (self._box.update(port=p), started.set()),
                                 stop=self._box["stop"], install_signals=False,
                                 actor_factory=LocalShard)
            try:
                asyncio.run(main())
            finally:
                started.set()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert started.wait(120) and "port" in self._box, "local server did not start"
        self.port = self._box["port"]
        self.target = f"127.0.0.1:{self.port}"

    def stop(self):
        self._box["loop"].call_soon_threadsafe(self._box["stop"].set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def local_server():
    srv = LocalServer(token="tok")
    yield srv
    srv.stop()


@pytest.fixture
def client(local_server):
    with Client(local_server.target, "tok", timeout_s=60) as c:
        c.reset()
        yield c


def test_a_start_that_fails_raises_its_own_error(monkeypatch):
    """A gateway whose start fails (here the kernels' warm-up) stops cleanly and the server
    raises that failure, not an error of the shutdown."""
    from engine.server import _actor
    from engine.server._app import run_server
    from engine.server._shards import LocalShard

    def fail(self):
        raise RuntimeError("warm-up failed")

    monkeypatch.setattr(_actor.ShardHost, "warm_up", fail)
    cfg = ServerConfig(port=0, shards=1, clock="event", data_dir="", no_console=True)

    async def main():
        await run_server(cfg, stop=asyncio.Event(), install_signals=False, actor_factory=LocalShard)

    with pytest.raises(RuntimeError, match="warm-up failed"):
        asyncio.run(main())


def test_local_server_basics_and_token(local_server, client):
    with Client(local_server.target, None, timeout_s=10) as anon:
        with pytest.raises(grpc.RpcError) as info:
            anon.stats()
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert anon.health() == "SERVING"               # health needs no token
    client.create_segment("s", "count(v, 1d) >= 1")
    with pytest.raises(SegmentExists):
        client.create_segment("s", "true")
    with pytest.raises(UnknownSegment):
        client.get_segment("x")
    r = client.ingest([{"user_id": "a", "type": "v", "timestamp_ms": T0}])
    assert r.accepted == 1 and client.members("s") == {"a"}


def test_concurrent_producers_are_applied_once_each(local_server, client):
    client.create_segment("many", "count(v, 1d) >= 3")
    embedded = Engine(clock="event")
    embedded.create_segment("many", "count(v, 1d) >= 3")
    batches = [[{"user_id": f"p{k}-u{i % 40}", "type": "v", "timestamp_ms": T0 + i}
                for i in range(120)] for k in range(12)]
    results = []

    def produce(k):
        with Client(local_server.target, "tok", timeout_s=60) as c:
            results.append(c.ingest(batches[k]).accepted)

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for b in batches:
        embedded.ingest(b)
    assert sorted(results) == [120] * 12
    assert client.members("many") == embedded.members("many")
    assert client.stats()["events"] == 12 * 120
    seqs = [d.sequence for d in client.deltas()]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) == len(embedded.deltas())


class DroppingProxy:
    """A TCP proxy whose connections can all be cut at once (a network blip)."""

    def __init__(self, upstream_port: int):
        self._up = upstream_port
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._closed:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self._up))
            with self._lock:
                self._conns += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self):
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def close(self):
        self._closed = True
        self.cut()
        self._listener.close()


def test_subscription_resumes_after_a_dropped_connection(local_server, client):
    client.create_segment("s", "count(v, 1d) >= 1")
    proxy = DroppingProxy(local_server.port)
    try:
        with Client(f"127.0.0.1:{proxy.port}", "tok", timeout_s=30) as via_proxy:
            sub = via_proxy.subscribe(["s"])
            got = []

            def read():
                for d in sub:
                    got.append(d)
                    if len(got) >= 30:
                        return

            reader = threading.Thread(target=read)
            reader.start()
            time.sleep(0.3)
            for k in range(30):
                client.ingest([{"user_id": f"u{k}", "type": "v", "timestamp_ms": T0 + k}])
                if k in (9, 19):
                    deadline = time.monotonic() + 10
                    while len(got) < k + 1 and time.monotonic() < deadline:
                        time.sleep(0.01)
                    proxy.cut()                     # the network drops; deltas keep coming
            reader.join(60)
            sub.close()
            assert sub.reconnects >= 2
            assert [d.sequence for d in got] == list(range(1, 31))        # no gap, no repeat
            assert [d.user_id for d in got] == [f"u{k}" for k in range(30)]
    finally:
        proxy.close()


def test_subscription_from_empty_log_survives_reconnect(local_server, client):
    proxy = DroppingProxy(local_server.port)
    try:
        with Client(f"127.0.0.1:{proxy.port}", "tok", timeout_s=30) as via_proxy:
            sub = via_proxy.subscribe()
            first = []
            reader = threading.Thread(target=lambda: first.extend(
                d for _, d in zip(range(2), sub)))
            reader.start()
            time.sleep(0.3)
            proxy.cut()                              # before any delta exists
            time.sleep(0.2)
            client.create_segment("s", "count(v, 1d) >= 1")
            client.ingest([{"user_id": "a", "type": "v", "timestamp_ms": T0},
                           {"user_id": "b", "type": "v", "timestamp_ms": T0}])
            reader.join(30)
            sub.close()
            assert [d.sequence for d in first] == [1, 2]
    finally:
        proxy.close()


def test_reset_ends_old_subscriptions(local_server, client):
    client.create_segment("s", "count(v, 1d) >= 1")
    sub = client.subscribe()
    errors = []

    def read():
        try:
            for _ in sub:
                pass
        except SequenceTooOld as err:
            errors.append(err)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.3)
    client.reset()
    reader.join(30)
    assert errors and "reset" in str(errors[0])


# ----------------------------------------------------------------------------- shard host


def test_shard_host_runs_steps_and_reports_its_next_timer():
    from engine._batch import prepare_events
    from engine._segments import SegmentRegistry
    from engine._steps import Step
    from engine.server._actor import NO_TIMER_MS, ShardHost

    day, hour = 86_400_000, 3_600_000
    host = ShardHost(0, {"retention_ms": 30 * day})
    assert host.next_due_ms() == NO_TIMER_MS
    defn = SegmentRegistry(30 * day).validate("recent", "count(v, 1h) >= 1", now_ms=T0)
    host.run([(Step.CREATE_SEGMENT, defn, T0)])
    cols, _ = prepare_events(["a"], ["v"], [T0], now_ms=T0, retention_ms=30 * day, clock="event")
    batches, due, rows = host.run([(Step.EVENTS, cols, T0), (Step.ADVANCE, None, T0 + 10)])
    assert [len(b) for b in batches] == [1, 0]
    assert T0 < due <= T0 + hour                     # the event leaves the window then
    batches, due, rows = host.run([(Step.ADVANCE, None, T0 + hour)])
    assert batches[0].user_ids == ["a"] and batches[0].kind.tolist() == [2]
    assert due == NO_TIMER_MS or due > T0 + hour
    with pytest.raises(ValueError, match="unknown step kind"):
        host.run([(99, None, T0 + hour)])
    assert host.host_stats()["events_applied"] == 1


def test_wall_clock_rescore_in_slices_reaches_every_user():
    """A live server re-scores a large population slice by slice (one slice per round, the
    ticker making rounds while nothing else does): in the end every user is re-scored."""
    from tests.test_models_engine import tanh_logistic_onnx

    srv = LocalServer(clock="wall", rescore_interval="1s", model_slice_users=10)
    try:
        with Client(srv.target, timeout_s=60) as c:
            now = int(time.time() * 1000)
            users = [f"u{i}" for i in range(120)]
            c.ingest([{"user_id": u, "type": "buy", "timestamp_ms": now - i} for i, u in enumerate(users)])
            onnx, _ = tanh_logistic_onnx(1, seed=2, scale=[0.01])
            c.deploy_model("m", onnx, ["since(buy) / 1s"])
            first = {u: c.get_user(u)["scores"]["m"] for u in users}
            deadline = time.monotonic() + 60
            stale = set(users)
            while stale and time.monotonic() < deadline:
                stale = {u for u in stale if c.get_user(u)["scores"]["m"] == first[u]}
            assert not stale, f"{len(stale)} users never re-scored"
    finally:
        srv.stop()


def _mixed_events(rng, n, t0):
    """Event dicts as users send them: absent and None fields, mixed property types, and
    events the engine rejects (bad ids, reserved or long names, old or future stamps)."""
    out = []
    for i in range(n):
        ev = {"user_id": f"u{rng.randrange(30)}", "type": rng.choice(["view", "buy", "open"]),
              "timestamp_ms": t0 + rng.randrange(0, 3_600_000)}
        r = rng.random()
        if r < 0.3:
            ev["value"] = rng.choice([1, 2.5, 0, None, 10**3])
        if r < 0.6:
            ev["properties"] = {"sku": rng.choice(["a", "b", 7, True, None, 3.25]),
                                "n": rng.choice([1, 2, None])}
        bad = rng.random()
        if bad < 0.04:
            ev["user_id"] = ""
        elif bad < 0.06:
            ev["properties"] = {"value": 1}
        elif bad < 0.08:
            ev["type"] = "x" * 300
        elif bad < 0.10:
            ev["timestamp_ms"] = t0 - 40 * 86_400_000
        elif bad < 0.12:
            del ev["timestamp_ms"]                     # required with the event clock
        out.append(ev)
    return out


def test_plain_event_dicts_go_as_columns_with_the_same_results_as_event_messages(client, monkeypatch):
    """``Client.ingest`` sends plain dicts in the columnar form: the accepted events, every
    rejection (index and reason), the deltas and the members are those of the per-event
    messages; anything but plain values takes the per-event path."""
    import random

    import engine.client as C

    real = C._plain_columns
    batches = [_mixed_events(random.Random(k), 60, T0 + k * 3_600_000) for k in range(8)]

    def run(force_rows: bool):
        client.reset()
        client.advance_clock(T0)
        client.create_segment("viewers", "count(view, 2h) >= 2")
        client.create_segment("sku_a", 'count(view where sku == "a", 1d) >= 1 or count(buy where n >= 2, 1d) >= 1')
        used = []
        monkeypatch.setattr(C, "_plain_columns",
                            (lambda evs: used.append(False)) if force_rows
                            else (lambda evs: used.append(real(evs) is not None) or real(evs)))
        results = [client.ingest(b) for b in batches]
        return results, client.deltas(), client.members("viewers"), client.members("sku_a"), used

    cols, rows = run(False), run(True)
    assert all(cols[4]) and not any(rows[4])           # the paths compared are the two paths
    for a, b in zip(cols[0], rows[0]):
        assert (a.accepted, a.rejected) == (b.accepted, b.rejected)
        assert [(r.index, r.reason) for r in a.rejections] == [(r.index, r.reason) for r in b.rejections]
    assert sum(r.rejected for r in cols[0]) > 0 and sum(r.accepted for r in cols[0]) > 0
    assert cols[1:4] == rows[1:4]
    assert real([{"user_id": "u", "type": "v", "value": np.float64(1.0)}]) is None
    assert real([{"user_id": "u", "type": "v", "value": float("nan")}]) is None
    assert real([{"user_id": "u\0", "type": "v"}]) is None
    assert real([{"user_id": "u", "type": "v", "timestamp_ms": 2**70}]) is None


def test_a_shard_applies_a_large_batch_in_parts_with_reads_let_in_between():
    """ShardHost.run applies an events step of more than ``part_events`` events in parts (a
    read may go in between two) with exactly the deltas and state of one whole step."""
    from engine._batch import prepare_events
    from engine._segments import SegmentRegistry
    from engine._steps import Step
    from engine.server._actor import ShardHost

    day = 86_400_000
    reg = SegmentRegistry(retention_ms=30 * day)
    defs = [reg.validate("views", "count(view, 1h) >= 2", now_ms=T0),
            reg.validate("quiet", "since(view) > 10m and count(buy, 1d) == 0", now_ms=T0)]
    rng = np.random.default_rng(4)

    def batch(t, n):
        users = [f"u{k}" for k in rng.integers(0, 40, n)]
        types = rng.choice(["view", "buy"], n, p=[0.8, 0.2]).tolist()
        cols, _ = prepare_events(users, types, (t + np.sort(rng.integers(0, 60_000, n))).tolist(), None, None,
                                 now_ms=t + 60_000, retention_ms=30 * day, clock="event")
        return cols

    steps = [(Step.CREATE_SEGMENT, d, T0) for d in defs]
    t = T0
    for k in range(6):                         # timers come due between the batches
        t += 15 * 60_000
        steps.append((Step.EVENTS, batch(t, 50), t + 60_000))
    hosts = [ShardHost(0, {"retention_ms": 30 * day}), ShardHost(1, {"retention_ms": 30 * day})]
    hosts[1].part_events = 7
    hosts[1].part_target_ms = None              # parts of 7 throughout (not sized by time)
    hosts[1].gate.last_read_s = float("inf")    # as if reads kept coming: parts
    entries = []
    real = hosts[1].gate.let_readers_in
    hosts[1].gate.let_readers_in = lambda: (entries.append(1), real())
    whole, parts = (h.run(steps) for h in hosts)
    assert len(entries) > len(steps)           # more points where a read may go in than steps
    assert not hosts[0].gate.reads_lately(1.0)  # no reads: whole steps
    def key(batches):
        return [(b.segments, b.user_ids, b.kind.tolist(), b.cause.tolist(), b.at_ms.tolist())
                for b in batches]
    assert key(whole[0]) == key(parts[0])
    assert sum(map(len, whole[0])) > 0 and whole[1:] == parts[1:]
    for u in (f"u{k}" for k in range(40)):
        assert hosts[0].user_view(u) == hosts[1].user_view(u)


def test_part_size_follows_what_the_parts_cost():
    """A shard sizes its parts so that each takes about the target CPU time: halfway from the
    current size to the size the median part says, within the bounds."""
    from engine.server._actor import next_part_events

    assert next_part_events(300, [], 1.0) == 300                      # nothing measured
    assert next_part_events(300, [0.9, 1.1, 1.0], 1.0) == 300         # on target
    assert next_part_events(300, [4.0, 3.0, 50.0], 1.0) == 187        # median 4 ms: aim 75
    assert next_part_events(300, [0.25, 0.2, 0.3], 1.0) == 750        # aim 1,200
    assert next_part_events(300, [100.0], 1.0, bounds=(64, 8192)) == 151
    assert next_part_events(100, [100.0], 1.0, bounds=(64, 8192)) == 64
    assert next_part_events(8000, [0.01], 1.0, bounds=(64, 8192)) == 8192
    size = 300                                  # converges when the cost is linear
    for _ in range(12):
        size = next_part_events(size, [0.05 + size * 0.003], 1.0)
    assert abs(0.05 + size * 0.003 - 1.0) < 0.02


def _string_column(pieces: list[bytes], codes) -> "pb.StringColumn":
    offsets = np.zeros(len(pieces) + 1, np.int64)
    np.cumsum([len(p) for p in pieces], out=offsets[1:])
    return pb.StringColumn(blob=b"".join(pieces), offsets=offsets.tobytes(),
                           codes=np.asarray(codes, np.int32).tobytes())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from("ab\0\u015f\u65e5"), max_size=4), min_size=1,
                max_size=SMALL_DECODE + 40, unique=True))
def test_decode_strings_small_and_large_columns_agree(strings):
    """A string column decodes to its strings whether it is decoded by slices (few strings,
    ASCII) or by one split (many strings, or non-ASCII), NULs and multi-byte text included."""
    col = _string_column([s.encode() for s in strings], list(range(len(strings))) + [-1])
    got = codec.decode_strings(col, len(strings) + 1, "ids")
    assert list(got.uniques) == strings and got.codes.tolist() == list(range(len(strings))) + [-1]


def test_decode_strings_refuses_an_offset_inside_a_character():
    """A blob that is UTF-8 as a whole but cut inside a character is refused."""
    col = _string_column(["\u015f".encode()[:1], "\u015f".encode()[1:]], [0, 1])
    with pytest.raises(codec.ColumnsError, match="not valid UTF-8"):
        codec.decode_strings(col, 2, "ids")
    ok = codec.decode_strings(_string_column([b"x", "\u015f".encode()], [1, 0]), 2, "ids")
    assert list(ok.uniques) == ["x", "\u015f"]
    for pieces in (["\ud800".encode("utf-8", "surrogatepass")], [b"a", b"\xff"]):
        with pytest.raises(codec.ColumnsError, match="not valid UTF-8"):
            codec.decode_strings(_string_column(pieces, [0] * len(pieces)), len(pieces), "ids")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from("ab\0\u015f\u65e5"), max_size=3), min_size=1, max_size=12),
       st.data())
def test_strings_split_from_their_bytes_as_from_their_text(strings, data):
    """A wire dictionary (duplicates, unused entries, empty and multi-byte strings, NULs)
    validates to the same column and the same rejections whether its strings are split from
    the request's bytes or from decoded text (the path of any other input)."""
    from engine._batch import prepare_events

    n = data.draw(st.integers(1, 20))
    codes = data.draw(st.lists(st.integers(0, len(strings) - 1), min_size=n, max_size=n))
    types = data.draw(st.lists(st.integers(0, len(strings) - 1), min_size=n, max_size=n))
    users = codec.decode_strings(_string_column([s.encode() for s in strings], codes), n, "ids")
    prop = pb.PropertyColumn(name="p", kinds=np.full(n, 2, np.uint8).tobytes(),
                             strings=_string_column([s.encode() for s in strings], types))
    coded = codec.decode_property(prop, n)
    assert (users.raw is None) == any("\0" in s for s in strings)
    ts = np.full(n, 5, np.int64)

    def validate(u, p):
        return prepare_events(u, ["view"] * n, ts, None, {"p": p}, now_ms=10, retention_ms=100,
                              clock="event")

    got, got_rej = validate(users, coded)
    # the same dictionaries as decoded text: the column must be the same, byte for byte
    as_text = CodedStrings(list(users.uniques), users.codes)
    prop_text = CodedValues(coded.kinds, coded.numbers,
                            CodedStrings(list(coded.strings.uniques), coded.strings.codes))
    want, want_rej = validate(as_text, prop_text)
    assert got_rej == want_rej
    for a, b in ((got.user, want.user), (got.prop_strings, want.prop_strings)):
        assert a.uniques() == b.uniques() and a.codes.tolist() == b.codes.tolist()
        assert a.hashes.tolist() == b.hashes.tolist()
    assert got.props["p"].view(np.int64).tolist() == want.props["p"].view(np.int64).tolist()
    # and the values and reasons of plain lists
    plain, plain_rej = validate([strings[c] for c in codes], [strings[c] for c in types])
    assert got_rej == plain_rej and got.user.values() == plain.user.values()
