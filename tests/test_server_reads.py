"""Reads that do not wait behind ingestion: segment sizes kept from the published deltas
(``engine.server._sizes``), and shard reads between two steps of a round
(``engine.server._gate``)."""

from __future__ import annotations

import random
import threading
import time

import pytest

from engine._steps import Step
from engine.client import Client
from engine.server._gate import ReadGate
from tests.test_server_units import LocalServer

T0 = 1_700_000_000_000
HOUR = 3_600_000

SEGMENTS = {
    "viewers": "count(v, 2h) >= 2",
    "buyers": "count(p, 1d) >= 1",
    "lapsed": "since(p) > 3h and count(p, 1d) >= 1",
    "vip": 'segment("buyers") and trait.tier == "gold"',
    "not_vip_viewers": 'segment("viewers") and not segment("vip")',
}


@pytest.fixture(scope="module")
def server():
    srv = LocalServer(shards=3)
    yield srv
    srv.stop()


def _sizes_agree(c: Client) -> None:
    listed = {s.name: s.size for s in c.list_segments()}
    for name, size in listed.items():
        members = c.members(name)                   # counted by the shards themselves
        assert c.get_segment(name).size == size == len(members), name


def test_live_sizes_equal_the_shards_count_after_every_kind_of_change(server):
    rng = random.Random(7)
    users = [f"u{i}" for i in range(60)]
    with Client(server.target, timeout_s=60) as c:
        c.reset()
        c.advance_clock(T0)
        now = T0
        for name in ("viewers", "buyers", "lapsed"):
            c.create_segment(name, SEGMENTS[name])
        _sizes_agree(c)
        for step in range(40):
            op = rng.random()
            if op < 0.55:
                evs = [{"user_id": rng.choice(users), "type": rng.choice("vvp"),
                        "timestamp_ms": now + rng.randrange(0, 60_000)} for _ in range(rng.randrange(1, 40))]
                c.ingest(evs)
                now = max(now, max(e["timestamp_ms"] for e in evs))
            elif op < 0.7:
                c.set_traits(rng.choice(users), {"tier": rng.choice(["gold", "silver"])})
            elif op < 0.8:
                now += rng.randrange(1, 4) * HOUR       # windows empty, timers fire
                c.advance_clock(now)
            elif op < 0.85:
                c.delete_user(rng.choice(users))
            elif op < 0.9 and "vip" not in {s.name for s in c.list_segments()}:
                c.create_segment("vip", SEGMENTS["vip"])
                c.create_segment("not_vip_viewers", SEGMENTS["not_vip_viewers"])
            elif op < 0.95:
                c.replace_segment("viewers", rng.choice(["count(v, 2h) >= 2", "count(v, 1h) >= 1"]))
            elif "vip" in {s.name for s in c.list_segments()}:
                c.delete_segment("not_vip_viewers")
                c.delete_segment("vip")
            _sizes_agree(c)
        c.scale(2)
        _sizes_agree(c)


def test_sizes_after_a_reset_start_from_nothing(server):
    with Client(server.target, timeout_s=60) as c:
        c.reset()
        c.create_segment("any", "count(v, 1d) >= 1")
        assert c.get_segment("any").size == 0
        c.ingest([{"user_id": "a", "type": "v", "timestamp_ms": T0}])
        assert c.get_segment("any").size == 1
        assert c.get_user("a")["segments"] == ["any"]      # read between steps, after the reply


def test_a_reader_goes_in_between_two_steps_never_during_one():
    gate = ReadGate()
    steps_done = 0
    writing = threading.Event()
    started = threading.Event()
    seen: list[int] = []
    overlap: list[bool] = []

    def writer():
        nonlocal steps_done
        for _ in range(200):
            gate.let_readers_in()
            with gate.writing():
                writing.set()
                started.set()
                # a step long enough that the reader is waiting when it ends
                threading.Event().wait(0.002)
                writing.clear()
                steps_done += 1

    def reader():
        started.wait()
        for _ in range(5):
            with gate.reading():
                overlap.append(writing.is_set())
                seen.append(steps_done)

    w, r = threading.Thread(target=writer), threading.Thread(target=reader)
    w.start()
    r.start()
    r.join(30)
    w.join(30)
    assert len(seen) == 5 and not any(overlap)
    assert seen[-1] < 200, "the reader waited for every step: no handover"


def _host_of_twenty_users():
    """A ShardHost with segment ``v`` (``count(v, 1d) >= 1``) and users u0..u19 in it, and a
    function that makes an events step of one ``v`` per user at a time."""
    from engine._batch import prepare_events
    from engine._segments import SegmentRegistry
    from engine.server._actor import ShardHost

    day = 86_400_000
    host = ShardHost(0, {"retention_ms": 30 * day})
    host.run([(Step.CREATE_SEGMENT, SegmentRegistry(30 * day).validate("v", "count(v, 1d) >= 1", now_ms=T0), T0)])

    def events(users, t):
        return prepare_events(users, ["v"] * len(users), [t] * len(users), now_ms=t, retention_ms=30 * day,
                              clock="event")[0]

    host.run([(Step.EVENTS, events([f"u{i}" for i in range(20)], T0), T0)])
    return host, events


def test_a_snapshot_copies_in_pieces_with_reads_in_between_and_no_step(tmp_path, monkeypatch):
    """``ShardHost.snapshot_part`` lets a read in between two pieces of its copy, while a
    round that arrives meanwhile waits until the copy is done (the snapshot holds the state
    as it was before that round; the file is written after, the round may run meanwhile)."""
    import engine._shard as shard_mod

    monkeypatch.setattr(shard_mod, "EXPORT_PIECE_ROWS", 1)     # a piece per user and type
    host, events = _host_of_twenty_users()
    order: list[str] = []
    copying, at_gate = threading.Event(), threading.Event()
    writing = host.gate.writing

    def writing_noted():
        at_gate.set()
        return writing()

    monkeypatch.setattr(host.gate, "writing", writing_noted)
    export = host.core.export_steps

    def export_steps(slots):      # the copy, held after its first piece until a read and a round wait
        steps = export(slots)
        yield next(steps)
        copying.set()
        assert at_gate.wait(30)
        for _ in range(30_000):
            if host.gate._waiting:
                break
            time.sleep(0.001)
        state = yield from steps
        order.append("copied")
        return state

    monkeypatch.setattr(host.core, "export_steps", export_steps)
    info: dict = {}

    def snapshot():
        info.update(host.snapshot_part(str(tmp_path), "shard-0"))

    def read():
        view = host.read("user_view", "u3")
        order.append("read")
        assert view["segments"] == ["v"]

    def write():
        host.run([(Step.EVENTS, events(["late"], T0 + 1), T0 + 1)])
        order.append("round")

    threads = [threading.Thread(target=f) for f in (snapshot, read, write)]
    threads[0].start()
    assert copying.wait(30)                            # the copy has begun: then a read and a round
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(60)
    assert order == ["read", "copied", "round"]
    assert info["meta"]["users"] == 20                 # the state before the round


@pytest.mark.parametrize("fork", [True, False])
def test_a_background_snapshot_holds_the_state_of_its_start_while_rounds_go_on(tmp_path, monkeypatch, fork):
    """With ``background``, ``ShardHost.snapshot_part`` returns at once and the shard takes
    the next round while its part is written (by a forked copy of the process, or without
    fork by a thread on a copy): the part holds the state as it was when the call began."""
    from engine.durability import background as B
    from engine.durability import snapshot as S

    if fork and not B.fork_available():
        pytest.skip("this platform has no fork")
    monkeypatch.setattr(B, "fork_available", lambda: fork)
    host, events = _host_of_twenty_users()
    assert host.snapshot_part(str(tmp_path), "shard-0", background=True) == {"pending": True}
    host.run([(Step.EVENTS, events([f"late{i}" for i in range(5)], T0 + 1), T0 + 1)])
    assert len(host.core.users) == 25
    end = time.monotonic() + 120
    while (info := host.snapshot_written()) is None and time.monotonic() < end:
        time.sleep(0.01)                               # polled, as the gateway does
    assert info is not None and info["meta"]["users"] == 20
    state = S.unflatten_state(S.read_part(tmp_path, "shard-0", {"parts": {"shard-0": info}}))
    assert sorted(state["user_ids"]) == sorted(f"u{i}" for i in range(20))


def test_subscribers_sharing_encoded_pages_each_get_their_own_segments(server):
    """Pages are encoded once for all subscribers that read the same page: subscribers of
    the same segments, of others and of every segment each get exactly their deltas."""
    with Client(server.target, timeout_s=60) as c:
        c.reset()
        c.create_segment("s1", "count(v, 1d) >= 1")
        c.create_segment("s2", "count(w, 1d) >= 2")
        wanted = {"a": ["s1"], "b": ["s1"], "c": ["s2"], "d": ["s1", "s2"], "e": []}
        subs = {k: c.subscribe(v) for k, v in wanted.items()}
        got: dict[str, list] = {k: [] for k in wanted}
        threads = [threading.Thread(target=lambda k=k: [got[k].append(d) for d in subs[k]], daemon=True)
                   for k in wanted]
        for t in threads:
            t.start()
        from bench.baselines import wait_until

        assert wait_until(lambda: c.stats()["subscribers"] >= len(wanted), 30, 0.02)
        start = c.last_sequence
        for r in range(20):
            c.ingest([{"user_id": f"u{r}.{i}", "type": "vw"[i % 2], "timestamp_ms": T0 + r}
                      for i in range(30)] * 2)
        every = c.deltas(start)
        assert len(every) > 100
        for k, segs in wanted.items():
            want = [(d.sequence, d.segment, d.user_id) for d in every if not segs or d.segment in segs]
            assert wait_until(lambda k=k, n=len(want): len(got[k]) >= n, 30, 0.02), k
            assert [(d.sequence, d.segment, d.user_id) for d in got[k]] == want, k
        for s in subs.values():
            s.close()


def test_a_page_encoded_from_the_columns_equals_one_made_of_deltas():
    import numpy as np

    from engine._deltas import DeltaBatch, DeltaLog
    from engine._pb import pb
    from engine.server._servicer import _encode_page, delta_pb
    from engine.server._subscriptions import Page

    rng = random.Random(3)
    log = DeltaLog(5000)
    for _ in range(30):
        n = rng.randrange(1, 40)
        log.append(DeltaBatch([rng.choice("ab") for _ in range(n)], [f"u{rng.randrange(50)}" for _ in range(n)],
                              np.array([rng.choice([1, 2]) for _ in range(n)], np.int8),
                              np.array([rng.choice([1, 2, 3, 5, 7]) for _ in range(n)], np.int8),
                              np.arange(n, dtype=np.int64) * 1000 + T0))
    for after, segs in ((0, None), (17, {"a"}), (300, {"b"}), (100, {"a", "b"})):
        page = Page(log, log.read_parts(after, segs, 4096), ())
        want = pb.DeltaPage(deltas=[delta_pb(d) for d in log.read(after, segs)]).SerializeToString()
        assert _encode_page(page) == want and len(page) == len(log.read(after, segs))


def test_shard_stats_are_exact_when_idle_and_at_most_max_age_old_while_busy():
    import asyncio

    from engine.server._stats_cache import ShardStatsCache

    async def main():
        asks = []
        gate = asyncio.Event()
        gate.set()

        async def ask():
            asks.append(len(asks))
            await gate.wait()
            return [{"n": len(asks)}]

        busy = [False]
        cache = ShardStatsCache(ask, lambda: busy[0], max_age_s=0.2)
        assert (await cache.get())[0] == [{"n": 1}]
        assert (await cache.get())[0] == [{"n": 1}] and len(asks) == 1   # nothing changed: exact
        cache.changed()
        assert (await cache.get())[0] == [{"n": 2}]                       # idle: asked again
        busy[0] = True
        cache.changed()
        gate.clear()                                                       # the shards are busy
        value, age = await asyncio.wait_for(cache.get(), 0.05)             # answered at once
        assert value == [{"n": 2}] and 0 <= age < 0.2
        await asyncio.sleep(0.12)                                          # past half the age:
        value, _ = await asyncio.wait_for(cache.get(), 0.05)               # a refresh starts
        assert value == [{"n": 2}] and len(asks) == 3
        await asyncio.sleep(0.1)                                           # too old: must wait
        waiting = asyncio.ensure_future(cache.get())
        await asyncio.sleep(0.02)
        assert not waiting.done()
        gate.set()
        value, age = await asyncio.wait_for(waiting, 1)
        assert value == [{"n": 3}] and age == 0.0

    asyncio.run(main())
