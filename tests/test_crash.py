"""Crash test: ``rtseg serve`` as a real process (real Ray, real gRPC), killed with SIGKILL at
random moments while a producer streams events and traits with batch ids and a subscriber
follows the deltas; restarted on the same data dir each time.

Checked at the end: membership equals the embedded engine's over every acknowledged batch
(each retried batch applied once), and the deltas the subscriber collected across all the
restarts are numbered 1, 2, 3, ... with no gap and no repeat, equal to the server's log.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import grpc
import pytest

from engine import Engine
from engine.client import Client
from tests.test_server_support import ServerProcess

T0 = 1_700_000_000_000
MIN = 60_000
SEGMENTS = {
    "active": "count(view, 30m) >= 3",
    "buyers": "count(buy, 2h) >= 1",
    "pro_viewers": 'segment("active") and trait.plan == "pro"',
    "quiet": "since(view) > 20m",
}
KILLS = 3


def batches(seed: int, n: int):
    rng = random.Random(seed)
    users = [f"user-{i}" for i in range(300)]
    now = T0
    for k in range(n):
        now += rng.randrange(10_000, 2 * MIN)
        if rng.random() < 0.15:
            yield k, "traits", [(rng.choice(users), {"plan": rng.choice(["pro", "free"])}, now)
                                for _ in range(rng.randrange(1, 10))]
        else:
            yield k, "events", [{"user_id": rng.choice(users), "type": rng.choice(["view", "view", "buy"]),
                                 "timestamp_ms": now - rng.randrange(0, 30_000)}
                                for _ in range(rng.randrange(1, 80))]


def send(client, kind, payload, batch_id):
    if kind == "events":
        return client.ingest(payload, batch_id=batch_id)
    return client.set_traits_many(payload, batch_id=batch_id)


def kill_hard(srv: ServerProcess) -> None:
    """SIGKILL the server and everything it started (its Ray), as a machine failure would."""
    try:
        os.killpg(srv.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    srv.proc.wait(30)
    srv.stop()


@pytest.mark.timeout(900)
def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path):
    rng = random.Random(2026)
    work = list(batches(99, 400))
    workdir = tmp_path / "srv"
    workdir.mkdir()
    args = ("--shards", "2", "--clock", "event", "--snapshot-interval", "3s")
    acked: list[tuple[str, list]] = []       # in the order the server applied them
    collected: list = []                     # the subscriber's deltas over every restart
    pos = 0
    kill_points = sorted(rng.sample(range(40, len(work) - 40), KILLS))
    for round_no in range(KILLS + 1):
        srv = ServerProcess(workdir, *args)
        try:
            with Client(srv.target, timeout_s=60) as c:
                if round_no == 0:
                    for name, expr in SEGMENTS.items():
                        c.create_segment(name, expr)
                stop_sub = threading.Event()
                started = threading.Event()
                last = collected[-1].sequence if collected else 0

                def follow():
                    sub = c.subscribe(after_sequence=last, reconnect=False,
                                      from_oldest=last == 0)
                    started.set()
                    try:
                        for d in sub:
                            collected.append(d)
                            if stop_sub.is_set():
                                break
                    except Exception:  # noqa: BLE001 - the server was killed under it
                        pass
                t = threading.Thread(target=follow, daemon=True)
                t.start()
                assert started.wait(30)
                end = kill_points[round_no] if round_no < KILLS else len(work)
                while pos < end:
                    k, kind, payload = work[pos]
                    send(c, kind, payload, f"batch-{k}")   # a retry after a restart: same id
                    acked.append((kind, payload))
                    pos += 1
                if round_no < KILLS:
                    # one more batch in flight while the server dies: applied or not, its
                    # retry (same id) after the restart applies it exactly once
                    k, kind, payload = work[pos]
                    inflight = threading.Thread(target=lambda: _try(send, c, kind, payload, f"batch-{k}"))
                    inflight.start()
                    kill_hard(srv)
                    inflight.join(30)
                else:
                    final = {n: c.members(n) for n in SEGMENTS}
                    log = c.deltas()
                    want = log[-1].sequence if log else 0
                    deadline = time.monotonic() + 120
                    while ((not collected or collected[-1].sequence < want) and t.is_alive()
                           and time.monotonic() < deadline):
                        t.join(0.2)
                    stop_sub.set()
        finally:
            srv.stop()
    ref = Engine(clock="event")
    for name, expr in SEGMENTS.items():
        ref.create_segment(name, expr)
    for kind, payload in acked:
        if kind == "events":
            ref.ingest(payload)
        else:
            ref.set_traits_many(payload)
    for name in SEGMENTS:
        assert final[name] == ref.members(name), name
    seqs = [d.sequence for d in collected]
    assert seqs == list(range(1, len(seqs) + 1)), "gap or repeat in the resumed delta stream"
    assert collected[:len(log)] == log[:len(collected)]
    assert len(collected) >= len(log)


def _try(fn, *args):
    try:
        fn(*args)
    except (grpc.RpcError, Exception):  # noqa: BLE001 - the server died under the call
        pass
