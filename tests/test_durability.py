"""Durability: the write-ahead log and snapshots bring an engine back exactly as it was.

Each test runs an engine on a data dir, stops it without a goodbye (nothing closed: what was
acknowledged must already be in the log) or gracefully, starts a new one on the same dir and
compares it with an engine that never stopped: same members, same deltas with the same
sequence numbers, same replies for retried batch ids.
"""

from __future__ import annotations

import random
import threading

import pytest

from engine import Engine
from engine.client import Client
from engine.durability import snapshot as S
from tests.test_server_units import LocalServer

T0 = 1_700_000_000_000
MIN = 60_000
HOUR = 60 * MIN
SEGMENTS = {
    "viewers": "count(view, 1h) >= 2",
    "buyers": "count(buy, 1d) >= 1 and trait.plan == \"pro\"",
    "lapsed": "since(buy) > 2h",
    "fans": 'top_count(view.item, 1d) >= 3 and not segment("buyers")',
}


def random_ops(seed: int, n: int = 60):
    """A random stream: event batches, trait updates, clock moves, segment changes,
    deletions of users."""
    rng = random.Random(seed)
    now = T0
    users = [f"u{i}" for i in range(40)]
    ops = []
    for k in range(n):
        now += rng.randrange(0, 20 * MIN)
        r = rng.random()
        if r < 0.6:
            ops.append(("events", [{"user_id": rng.choice(users), "type": rng.choice(["view", "buy"]),
                                    "timestamp_ms": now - rng.randrange(0, 5 * MIN),
                                    "properties": {"item": rng.choice("abc")}}
                                   for _ in range(rng.randrange(1, 30))]))
        elif r < 0.75:
            ops.append(("traits", [(rng.choice(users), {"plan": rng.choice(["pro", "free", None])}, now)]))
        elif r < 0.85:
            ops.append(("clock", now + rng.randrange(0, 3 * HOUR)))
        elif r < 0.92:
            ops.append(("delete_user", rng.choice(users)))
        else:
            ops.append(("replace", rng.choice(["viewers", "lapsed"])))
    return ops


def apply_op(eng, op) -> None:
    kind, arg = op
    if kind == "events":
        eng.ingest(arg)
    elif kind == "traits":
        eng.set_traits_many(arg)
    elif kind == "clock":
        eng.advance_clock(arg)
    elif kind == "delete_user":
        eng.delete_user(arg)
    elif kind == "replace":
        expr = {"viewers": ["count(view, 1h) >= 2", "count(view, 2h) >= 3"],
                "lapsed": ["since(buy) > 2h", "since(buy) > 90m"]}[arg]
        current = eng.get_segment(arg).expression
        eng.replace_segment(arg, expr[1] if current == expr[0] else expr[0])


def state_of(eng) -> tuple:
    return ({n: sorted(eng.members(n)) for n in SEGMENTS}, eng.deltas(), eng.now_ms)


def new_engine(data_dir=None, **kw) -> Engine:
    eng = Engine(clock="event", retention="7d", data_dir=data_dir, snapshot_interval=0, **kw)
    if not eng.list_segments():
        for name, expr in SEGMENTS.items():
            eng.create_segment(name, expr)
    return eng


def abandon(eng: Engine) -> None:
    """Stop using an engine as a crash after its last reply would: no snapshot; its log is
    closed (everything acknowledged is in it already) so that nothing more reaches it."""
    eng._store.close()
    eng._store = None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_embedded_engine_recovers_log_and_snapshot_exactly(tmp_path, seed):
    ops = random_ops(seed)
    ref = new_engine()
    for op in ops:
        apply_op(ref, op)
    cut1, cut2 = len(ops) // 3, 2 * len(ops) // 3
    eng = new_engine(tmp_path)
    for op in ops[:cut1]:
        apply_op(eng, op)
    eng.snapshot()                               # recovery = this snapshot + the log after it
    for op in ops[cut1:cut2]:
        apply_op(eng, op)
    abandon(eng)
    eng2 = new_engine(tmp_path)
    assert eng2.recovery["snapshot_lsn"] > 0 and eng2.recovery["frames_replayed"] > 0
    for op in ops[cut2:]:
        apply_op(eng2, op)
    assert state_of(eng2) == state_of(ref)
    eng2.close()                                 # graceful: a snapshot, nothing to replay
    eng3 = new_engine(tmp_path)
    assert eng3.recovery["frames_replayed"] == 0
    assert state_of(eng3) == state_of(ref)
    eng3.close()


def test_a_corrupt_snapshot_falls_back_to_the_one_before(tmp_path, caplog):
    ops = random_ops(7)
    ref = new_engine()
    eng = new_engine(tmp_path)
    for i, op in enumerate(ops):
        apply_op(ref, op)
        apply_op(eng, op)
        if i in (15, 35):
            eng.snapshot()
    abandon(eng)
    snaps = S.list_snapshots(tmp_path / "snapshots")
    assert len(snaps) == 2
    newest = snaps[0]
    part = next(p for p in newest.iterdir() if p.name.startswith("shard-0"))
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x40                 # one flipped bit
    part.write_bytes(bytes(data))
    eng2 = new_engine(tmp_path)
    assert eng2.recovery["snapshot_lsn"] < int(newest.name.split("-")[1])
    assert state_of(eng2) == state_of(ref)
    assert "could not be restored" in caplog.text
    eng2.close()


def test_a_torn_last_frame_is_cut_off_and_the_rest_recovered(tmp_path, caplog):
    ops = random_ops(11)
    eng = new_engine(tmp_path)
    ref = new_engine()
    for op in ops:
        apply_op(eng, op)
        apply_op(ref, op)
    abandon(eng)
    seg = sorted((tmp_path / "wal").glob("wal-*.log"))[-1]
    with open(seg, "ab") as f:
        f.write(b"\x40\x00\x00\x00garbage: half a frame")
    eng2 = new_engine(tmp_path)
    assert state_of(eng2) == state_of(ref)
    assert "torn" in caplog.text.lower() or "cut" in caplog.text.lower()
    eng2.close()


def test_a_deleted_user_stays_deleted_and_leaves_the_next_snapshot(tmp_path):
    eng = new_engine(tmp_path)
    secret = "user-with-a-very-distinctive-id-7f3a"
    eng.ingest([{"user_id": secret, "type": "view", "timestamp_ms": T0 + i} for i in range(3)])
    eng.ingest([{"user_id": "other", "type": "view", "timestamp_ms": T0 + i} for i in range(3)])
    assert eng.members("viewers") == {secret, "other"}
    eng.snapshot()                               # holds the user
    eng.delete_user(secret)
    abandon(eng)
    eng2 = new_engine(tmp_path)                  # snapshot + the logged tombstone
    assert eng2.get_user(secret)["known"] is False
    assert eng2.members("viewers") == {"other"}
    eng2.close()                                 # a new snapshot, without the user
    newest = S.list_snapshots(tmp_path / "snapshots")[0]
    for f in newest.iterdir():
        if f.name.startswith("shard-"):
            assert secret.encode() not in f.read_bytes()
    eng3 = new_engine(tmp_path)
    assert eng3.get_user(secret)["known"] is False
    eng3.close()


# ----------------------------------------------------------------------------- served


def served_run(srv, ops, create: bool) -> list:
    with Client(srv.target, timeout_s=60) as c:
        if create:
            for name, expr in SEGMENTS.items():
                c.create_segment(name, expr)
        for op in ops:
            apply_op(c, op)
        return c.deltas()


def test_server_restart_keeps_segments_members_and_the_delta_stream(tmp_path):
    """Stopped once without a snapshot (recovery replays the log) and once gracefully (a
    snapshot), then served on another number of shards: the deltas are those of a server
    that never stopped, with the same sequence numbers, and a subscriber that resumes
    after a restart gets exactly the ones it missed."""
    ops = [op for op in random_ops(5, 90) if op[0] != "replace"]
    ref = LocalServer(shards=2)
    try:
        expected = served_run(ref, ops, True)
        with Client(ref.target, timeout_s=60) as c:
            ref_members = {n: c.members(n) for n in SEGMENTS}
    finally:
        ref.stop()
    data = str(tmp_path / "data")
    srv = LocalServer(data_dir=data, shards=2, shutdown_snapshot_s=0)    # no snapshot: a crash
    try:
        seen = served_run(srv, ops[:40], True)
    finally:
        srv.stop()
    srv = LocalServer(data_dir=data, shards=2)
    try:
        assert served_run(srv, ops[40:60], False)[:len(seen)] == seen
    finally:
        srv.stop()                               # graceful: a snapshot
    srv = LocalServer(data_dir=data, shards=3)
    try:
        with Client(srv.target, timeout_s=60) as c:
            assert [s.name for s in c.list_segments()] == sorted(SEGMENTS)
            before = c.deltas()
            assert before == expected[:len(before)]
            last = before[-1].sequence
            got: list = []
            done = threading.Event()
            sub = c.subscribe(after_sequence=last)

            def read():
                for d in sub:
                    got.append(d)
                    if d.sequence >= expected[-1].sequence:
                        done.set()
            t = threading.Thread(target=read, daemon=True)
            t.start()
            for op in ops[60:]:
                apply_op(c, op)
            assert done.wait(60), "the subscriber did not get every delta"
            sub.close()
            assert before + got == expected          # no gap, no repeat, same numbers
            for name in SEGMENTS:
                assert c.members(name) == ref_members[name]
            assert c.stats()["shards"] == 3
    finally:
        srv.stop()


def test_batch_ids_are_applied_once_also_after_a_restart(tmp_path):
    data = str(tmp_path / "data")
    batch = [{"user_id": "a", "type": "view", "timestamp_ms": T0 + i} for i in range(3)]
    batch.append({"user_id": "", "type": "view", "timestamp_ms": T0})       # rejected
    srv = LocalServer(data_dir=data, shards=2)
    try:
        with Client(srv.target, timeout_s=60) as c:
            c.create_segment("v3", "count(view, 1d) >= 3")
            c.create_segment("v6", "count(view, 1d) >= 6")
            first = c.ingest(batch, batch_id="b-1")
            again = c.ingest(batch, batch_id="b-1")
            assert (again.accepted, again.rejected, again.now_ms) == (first.accepted, first.rejected,
                                                                       first.now_ms) == (3, 1, T0 + 2)
            assert [r.reason for r in again.rejections] == [r.reason for r in first.rejections]
            assert c.members("v3") == {"a"} and c.members("v6") == set()
    finally:
        srv.stop()
    srv = LocalServer(data_dir=data, shards=2)
    try:
        with Client(srv.target, timeout_s=60) as c:
            after = c.ingest(batch, batch_id="b-1")
            assert (after.accepted, after.rejected) == (3, 1)
            assert c.members("v6") == set()       # not applied a second time
            c.ingest(batch, batch_id="b-2")
            assert c.members("v6") == {"a"}
    finally:
        srv.stop()


def test_a_model_deleted_after_the_last_snapshot_does_not_stop_a_restart(tmp_path):
    """The log still deploys the model (before its deletion): its files stay in the model
    registry's trash until snapshots cover those frames."""
    from tests.test_models_engine import tanh_logistic_onnx

    eng = new_engine(tmp_path)
    eng.ingest([{"user_id": f"u{i}", "type": "view", "timestamp_ms": T0 + i} for i in range(20)])
    eng.snapshot()
    onnx, _ = tanh_logistic_onnx(1, seed=3)
    eng.deploy_model("m", onnx, ["count(view, 1d)"])
    eng.create_segment("scored", 'score("m") >= 0.0')
    assert len(eng.members("scored")) == 20
    eng.delete_segment("scored")
    eng.delete_model("m")
    eng.ingest([{"user_id": "late", "type": "view", "timestamp_ms": T0 + 100} for _ in range(2)])
    abandon(eng)
    eng2 = new_engine(tmp_path)                  # replays the deployment, the deletions
    assert eng2.list_models() == [] and "scored" not in {s.name for s in eng2.list_segments()}
    assert "late" in eng2.members("viewers")
    eng2.snapshot()
    eng2.snapshot()                              # two snapshots past the deletion: purged
    assert not any((tmp_path / "models" / ".trash").iterdir())
    eng2.close()
