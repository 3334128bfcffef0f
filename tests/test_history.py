"""Segment size history: sampling on the engine clock, the same samples embedded, through gRPC
(in-process shards and a real Ray server) and after a restart, and ``rtseg report segment``.

The oracle: after every operation the test itself works out whether the clock passed a
boundary (``now // interval > last boundary``) and, if so, reads every segment's size with
``members`` right then; the engine's history must hold exactly those samples."""

from __future__ import annotations

import random
import time

import pytest

from engine import Engine
from engine._history import SizeHistory
from engine.client import Client
from engine.errors import UnknownSegment
from tests.test_server_support import served_engine_factory
from tests.test_server_units import LocalServer

T0 = 1_700_000_000_000
SEC = 1_000
MIN = 60 * SEC
HOUR = 60 * MIN
SEGMENTS = {
    "viewers": "count(view, 10m) >= 1",
    "buyers": "count(buy, 1h) >= 2",
}


# ----------------------------------------------------------------------------- the oracle

class Oracle:
    """Expected samples, taken by reading sizes after each operation."""

    def __init__(self, interval_ms: int, retention_ms: int):
        self.interval_ms = interval_ms
        self.retention_ms = retention_ms
        self.last: int | None = None
        self.samples: dict[str, list[tuple[int, int]]] = {}

    def after(self, eng, now_ms: int) -> None:
        b = now_ms // self.interval_ms * self.interval_ms
        if self.last is None:
            self.last = b
            return
        if b <= self.last:
            return
        self.last = b
        names = [s.name for s in eng.list_segments()]
        for n in list(self.samples):
            if n not in names:
                del self.samples[n]
        for n in names:
            self.samples.setdefault(n, []).append((b, len(eng.members(n))))
        for n, got in self.samples.items():
            self.samples[n] = [(t, s) for t, s in got if t > b - self.retention_ms]

    def deleted(self, name: str) -> None:
        self.samples.pop(name, None)


def random_ops(seed: int, n: int = 120):
    """Events (some of them far apart in time), clock jumps, segment changes."""
    rng = random.Random(seed)
    now = T0
    users = [f"u{i}" for i in range(30)]
    defined = set(SEGMENTS)
    ops = [("create", n, e) for n, e in SEGMENTS.items()]
    for _ in range(n):
        r = rng.random()
        if r < 0.6:
            now += rng.choice([0, 5 * SEC, 40 * SEC, 70 * SEC, 3 * MIN])
            ops.append(("events", [{"user_id": rng.choice(users), "type": rng.choice(["view", "buy"]),
                                    "timestamp_ms": now - rng.randrange(0, 30 * SEC)}
                                   for _ in range(rng.randrange(1, 12))]))
        elif r < 0.75:
            now += rng.choice([30 * SEC, 2 * MIN, 2 * MIN, 17 * MIN, HOUR])   # jumps over intervals
            ops.append(("clock", now))
        elif r < 0.85:
            name = rng.choice(sorted(SEGMENTS) + ["late"])
            if name in defined:
                ops.append(("replace", name, rng.choice(["count(view, 5m) >= 1", "count(buy, 1h) >= 1",
                                                         SEGMENTS.get(name, "count(view, 1m) >= 1")])))
            else:
                defined.add(name)
                ops.append(("create", name, SEGMENTS.get(name, "count(view, 1m) >= 1")))
        elif r < 0.9 and defined - {"viewers"}:
            name = rng.choice(sorted(defined - {"viewers"}))
            defined.discard(name)
            ops.append(("delete", name))
    return ops


def apply_op(eng, op, oracle: Oracle | None = None) -> None:
    kind = op[0]
    if kind == "events":
        now = eng.ingest(op[1]).now_ms
    elif kind == "clock":
        now = eng.advance_clock(op[1])
    elif kind == "create":
        eng.create_segment(op[1], op[2])
        now = eng.now_ms
    elif kind == "replace":
        eng.replace_segment(op[1], op[2])
        now = eng.now_ms
    else:
        eng.delete_segment(op[1])
        now = eng.now_ms
        if oracle is not None:
            oracle.deleted(op[1])
    if oracle is not None:
        oracle.after(eng, now)


def histories(eng) -> dict[str, list[tuple[int, int]]]:
    return {s.name: eng.segment_history(s.name).samples for s in eng.list_segments()}


def expected_run(ops, interval_ms=MIN, retention_ms=30 * 86_400_000):
    """An embedded engine that never stops, checked against the oracle -> its histories."""
    eng = Engine(clock="event", history_interval=interval_ms, history_retention=retention_ms)
    oracle = Oracle(interval_ms, retention_ms)
    for op in ops:
        apply_op(eng, op, oracle)
    got = histories(eng)
    assert got == {n: oracle.samples.get(n, []) for n in got}
    return got


# ----------------------------------------------------------------------------- the store

def test_history_keeps_each_segment_from_its_first_round_and_drops_old_rounds():
    h = SizeHistory(interval_ms=10, retention_ms=100)
    assert h.note(5) is None and h.last_ms == 0          # the first operation: the start
    assert h.note(9) is None and h.note(10) == 10
    assert not h.is_due(9) and h.is_due(15)                # is_due has no side effect
    expected: dict[str, list] = {"a": []}
    for k in range(1, 2_000):
        t = 10 * k
        sizes = {"a": k * 7}
        if k >= 500:
            sizes["b"] = k
            expected.setdefault("b", [])
        h.record(t, sizes)
        for n, v in sizes.items():
            expected[n].append((t, v))
    for n, got in expected.items():
        kept = [(t, v) for t, v in got if t > 19_990 - 100]
        assert h.view(n).samples == kept
        assert len(kept) == 10
    # memory stays bounded: buffers hold at most about twice what is kept
    assert h.memory()["bytes"] <= 32 * 8 + 2 * 32 * 4
    h.record(20_000, {"a": 2**40})                   # beyond uint32: the segment widens
    assert h.view("a").samples[-1] == (20_000, 2**40)
    assert h.names() == ["a"]                         # b was not sampled: no longer a segment


def test_export_and_restore_give_back_the_same_history():
    h = SizeHistory(MIN, HOUR)
    for k in range(1, 150):
        h.record(k * MIN, {"x": k, **({"y": 3 * k} if k > 100 else {})})
    meta, arrays = h.export()
    back = SizeHistory(MIN, HOUR)
    back.restore(meta, arrays)
    assert back.last_ms == h.last_ms == 149 * MIN
    assert {n: back.view(n).samples for n in back.names()} == {n: h.view(n).samples for n in h.names()}
    back.record(150 * MIN, {"x": 0, "y": 1})
    assert back.view("y").samples[-1] == (150 * MIN, 1) and len(back.view("x").samples) == 60


# ----------------------------------------------------------------------------- embedded

def test_samples_are_taken_when_the_event_clock_passes_a_boundary():
    eng = Engine(clock="event", history_interval="1m", history_retention="10m")
    eng.create_segment("viewers", "count(view, 2m) >= 1")         # at now = 0: the start
    eng.ingest([{"user_id": "a", "type": "view", "timestamp_ms": T0}])
    b0 = T0 // MIN * MIN
    assert eng.segment_history("viewers").samples == [(b0, 1)]
    eng.ingest([{"user_id": "b", "type": "view", "timestamp_ms": b0 + 59 * SEC}])
    assert len(eng.segment_history("viewers").samples) == 1      # same interval: no sample
    eng.ingest([{"user_id": "c", "type": "view", "timestamp_ms": b0 + 60 * SEC}])
    assert eng.segment_history("viewers").samples[-1] == (b0 + MIN, 3)   # exactly on it
    eng.advance_clock(b0 + 7 * MIN + 30 * SEC)                     # jumps over 6 boundaries
    h = eng.segment_history("viewers")
    assert h.samples == [(b0, 1), (b0 + MIN, 3), (b0 + 7 * MIN, 0)]   # one sample, the last
    assert (h.interval_ms, h.retention_ms) == (MIN, 10 * MIN)
    eng.advance_clock(b0 + 12 * MIN)                                # retention: older go
    assert eng.segment_history("viewers").samples == [(b0 + 7 * MIN, 0), (b0 + 12 * MIN, 0)]


def test_created_deleted_and_replaced_segments():
    eng = Engine(clock="event")
    eng.create_segment("a", "count(view, 1h) >= 1")
    eng.ingest([{"user_id": "u1", "type": "view", "timestamp_ms": T0}])
    eng.advance_clock(T0 + MIN)
    eng.create_segment("b", "count(view, 1h) >= 1")                # later: starts then
    assert eng.segment_history("b").samples == []
    eng.advance_clock(T0 + 2 * MIN)
    b1, b2 = (T0 + MIN) // MIN * MIN, (T0 + 2 * MIN) // MIN * MIN
    assert eng.segment_history("b").samples == [(b2, 1)]
    eng.replace_segment("a", "count(buy, 1h) >= 1")                 # replaced: keeps it
    eng.advance_clock(T0 + 3 * MIN)
    assert [s for _, s in eng.segment_history("a").samples] == [1, 1, 1, 0]
    eng.delete_segment("b")                                         # deleted: it goes
    with pytest.raises(UnknownSegment):
        eng.segment_history("b")
    eng.advance_clock(T0 + 4 * MIN)
    eng.create_segment("b", "true")
    assert eng.segment_history("b").samples == []                   # a new one starts afresh
    assert eng.segment_history("a").samples[1] == (b1, 1)


def test_sampling_off():
    eng = Engine(clock="event", history_interval="off")
    eng.create_segment("a", "true")
    eng.ingest([{"user_id": "u", "type": "v", "timestamp_ms": T0}])
    eng.advance_clock(T0 + HOUR)
    h = eng.segment_history("a")
    assert h.samples == [] and h.interval_ms == 0


@pytest.mark.parametrize("seed", [1, 2])
def test_random_operations_match_the_oracle(seed):
    got = expected_run(random_ops(seed), retention_ms=2 * HOUR)
    assert sum(len(v) for v in got.values()) > 15


def test_wall_clock_samples_on_ticks():
    eng = Engine(clock="wall", history_interval="1s")
    eng.create_segment("all", "true")
    deadline = time.monotonic() + 10
    while len(eng.segment_history("all").samples) < 2 and time.monotonic() < deadline:
        eng.tick()
        time.sleep(0.05)
    samples = eng.segment_history("all").samples
    assert len(samples) >= 2 and all(t % SEC == 0 for t, _ in samples)
    assert samples[-1][0] <= eng.now_ms


def test_embedded_history_survives_a_crash_and_a_restart(tmp_path):
    ops = random_ops(3, 140)
    expected = expected_run(ops)
    data = str(tmp_path / "data")
    eng = Engine(clock="event", data_dir=data, snapshot_interval=0)
    for op in ops[:50]:
        apply_op(eng, op)
    eng.snapshot()                                   # history part of the snapshot ...
    for op in ops[50:100]:
        apply_op(eng, op)                            # ... and these replayed from the log
    eng._store.close()                               # a crash: no snapshot at the end
    eng._store = None
    eng = Engine(clock="event", data_dir=data, snapshot_interval=0)
    assert eng.recovery["frames_replayed"] > 0
    for op in ops[100:]:
        apply_op(eng, op)
    assert histories(eng) == expected
    eng.close()                                      # graceful: a snapshot
    eng = Engine(clock="event", data_dir=data, snapshot_interval=0)
    assert eng.recovery["frames_replayed"] == 0
    assert histories(eng) == expected
    eng.close()


# ----------------------------------------------------------------------------- served

@pytest.fixture(scope="module")
def local_server():
    srv = LocalServer(shards=3)
    yield srv
    srv.stop()


def test_served_history_equals_the_embedded_one(local_server):
    ops = random_ops(4)
    expected = expected_run(ops)
    with Client(local_server.target, timeout_s=60) as c:
        c.reset()
        for op in ops:
            apply_op(c, op)
        assert histories(c) == expected
        with pytest.raises(UnknownSegment, match="nope"):
            c.segment_history("nope")


def test_concurrent_ingestion_samples_right_after_the_crossing_batch(local_server):
    """Batches sent at once are taken into one round; the round is cut after the batch that
    passes a boundary, so a sample holds the size right after that batch. The order the
    batches were applied in is read back from the delta log (one ENTER each)."""
    import concurrent.futures as cf

    ts = {f"u{k}": T0 + k * 20 * SEC for k in range(80)}
    with Client(local_server.target, timeout_s=60) as c:
        c.reset()
        c.create_segment("viewers", "count(view, 1d) >= 1")
        c.ingest([{"user_id": "start", "type": "view", "timestamp_ms": T0}])
        with cf.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda u: c.ingest([{"user_id": u, "type": "view", "timestamp_ms": ts[u]}]),
                          list(ts)))
        samples = c.segment_history("viewers").samples
        order = [d.user_id for d in c.deltas() if d.kind == "ENTER"]
    assert order[0] == "start" and sorted(order[1:]) == sorted(ts)
    expected, clock, last = [(T0 // MIN * MIN, 1)], T0, T0 // MIN * MIN
    for k, user in enumerate(order[1:], start=2):
        clock = max(clock, ts[user])
        if clock // MIN * MIN > last:
            last = clock // MIN * MIN
            expected.append((last, k))
    assert samples == expected and len(samples) > 10


def test_served_history_survives_a_crash_and_a_restart(tmp_path):
    ops = random_ops(5, 140)
    expected = expected_run(ops)
    data = str(tmp_path / "data")
    srv = LocalServer(data_dir=data, shards=2, shutdown_snapshot_s=0)      # a crash
    try:
        with Client(srv.target, timeout_s=60) as c:
            for op in ops[:70]:
                apply_op(c, op)
    finally:
        srv.stop()
    srv = LocalServer(data_dir=data, shards=2)                              # replays the log
    try:
        with Client(srv.target, timeout_s=60) as c:
            assert c.stats()["durability"]["frames_replayed"] > 0
            for op in ops[70:]:
                apply_op(c, op)
            assert histories(c) == expected
    finally:
        srv.stop()                                                          # a snapshot
    srv = LocalServer(data_dir=data, shards=3)
    try:
        with Client(srv.target, timeout_s=60) as c:
            assert c.stats()["durability"]["frames_replayed"] == 0
            assert histories(c) == expected
    finally:
        srv.stop()


def test_a_wall_clock_server_samples_while_idle():
    srv = LocalServer(shards=1, clock="wall", history_interval="1s")
    try:
        with Client(srv.target, timeout_s=60) as c:
            c.create_segment("all", "true")
            c.ingest([{"user_id": "u", "type": "v", "timestamp_ms": c.now_ms}])
            deadline = time.monotonic() + 15
            while len(c.segment_history("all").samples) < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            samples = c.segment_history("all").samples
            assert len(samples) >= 3 and samples[-1][1] == 1
            assert all(t % SEC == 0 for t, _ in samples)
    finally:
        srv.stop()


@pytest.mark.ray
def test_a_ray_server_with_two_shards(tmp_path_factory):
    import grpc

    from engine._pb.rtseg.v1 import engine_pb2 as pb
    from engine._pb.rtseg.v1 import engine_pb2_grpc as pb_grpc

    ops = random_ops(6)
    expected = expected_run(ops)
    with served_engine_factory(tmp_path_factory, 2) as make:
        c = make()
        for op in ops:
            apply_op(c, op)
        assert histories(c) == expected
        stub = pb_grpc.SegmentEngineStub(c._channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.GetSegmentHistory(pb.SegmentRef(name="nope"), timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in info.value.details()
        name = next(iter(expected))
        reply = stub.GetSegmentHistory(pb.SegmentRef(name=name), timeout=30)
        assert [(s.time_ms, s.size) for s in reply.samples] == expected[name]
        assert reply.interval_ms == MIN


# ----------------------------------------------------------------------------- config, CLI

def test_flags_and_environment():
    from engine.cli import build_parser
    from engine.config import ServerConfig
    from engine.errors import ConfigError

    cfg = ServerConfig.load(build_parser().parse_args(["serve", "--history-interval", "off"]), env={})
    assert cfg.history_interval_ms == 0 and cfg.history_retention_ms == 30 * 86_400_000
    cfg = ServerConfig.load({}, env={"RTSEG_HISTORY_INTERVAL": "5m", "RTSEG_HISTORY_RETENTION": "7d"})
    assert (cfg.history_interval_ms, cfg.history_retention_ms) == (5 * MIN, 7 * 86_400_000)
    with pytest.raises(ConfigError, match="history-retention"):
        ServerConfig.load({"history_retention": "soon"}, env={})
    args = build_parser().parse_args(["report", "goal", "g1", "--out", "x.png"])
    assert (args.report_command, args.name, args.out) == ("goal", "g1", "x.png")


def test_report_segment_writes_a_png_chart(local_server, tmp_path, capsys):
    import json

    import matplotlib.image as mpimg

    from engine.cli import main

    with Client(local_server.target, timeout_s=60) as c:
        c.reset()
        for op in random_ops(7, 200):
            apply_op(c, op)
        name = "viewers"
        n = len(c.segment_history(name).samples)
    out = tmp_path / "chart.png"
    assert main(["report", "segment", name, "--target", local_server.target, "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["samples"] == n > 5 and printed["out"] == str(out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 15_000
    img = mpimg.imread(str(out))
    assert img.shape[0] > 300 and img.shape[1] > 600
    rgb = img[..., :3]
    blue = (rgb[..., 2] > 0.6) & (rgb[..., 0] < 0.3)           # the line's colour
    assert blue.sum() > 500
    assert main(["report", "segment", "nope", "--target", local_server.target,
                 "--out", str(tmp_path / "x.png")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.benchmark
def test_the_benchmark_runs_small(tmp_path):
    """``python -m bench.history --quick`` in process (excluded from the default run)."""
    import json

    from bench import history

    out = tmp_path / "history.json"
    assert history.main(["--quick", "--skip-served", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["in_process"]["steady"]["segments"] == 40
    assert result["in_process"]["burst"]["samples_taken"] == result["in_process"]["burst"]["batches"]
    assert 4 <= result["memory"]["bytes_per_sample"] < 12
