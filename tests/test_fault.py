"""A shard actor killed mid-stream (SIGKILL of its process) is rebuilt by the gateway from the
newest snapshot and the log, while the other shard keeps its state: no acknowledged event is
lost, none is applied twice, and the delta log goes on without a gap."""

from __future__ import annotations

import os
import random
import signal
import subprocess

from engine import Engine
from engine.client import Client
from engine.config import ServerConfig
from tests.test_server_support import ServerProcess, wait_until

T0 = 1_700_000_000_000
SEGMENTS = {"active": "count(view, 30m) >= 3", "quiet": "since(view) > 20m",
            "buyers": "count(buy, 2h) >= 1"}


def shard_pids(server_pid: int) -> list[int]:
    """PIDs of the server's shard actors (Ray names actor processes ``ray::ShardHost``)."""
    out = subprocess.run(["pgrep", "-s", str(os.getsid(server_pid)), "-f", "ray::ShardHost"],
                         capture_output=True, text=True).stdout
    return sorted(int(p) for p in out.split())


def test_a_killed_shard_actor_is_rebuilt_from_snapshot_and_log(tmp_path):
    rng = random.Random(5)
    users = [f"u{i}" for i in range(200)]
    srv = ServerProcess(tmp_path, "--shards", "2", "--clock", "event", "--snapshot-interval", "1s")
    ref = Engine(clock="event")
    try:
        with Client(srv.target, timeout_s=120) as c:
            for name, expr in SEGMENTS.items():
                c.create_segment(name, expr)
                ref.create_segment(name, expr)
            now = T0

            def batch():
                nonlocal now
                now += rng.randrange(10_000, 120_000)
                return [{"user_id": rng.choice(users), "type": rng.choice(["view", "view", "buy"]),
                         "timestamp_ms": now} for _ in range(50)]
            for k in range(30):
                b = batch()
                c.ingest(b, batch_id=f"b{k}")
                ref.ingest(b)
            logged = c.stats()["durability"]["log_last_position"]
            wait_until(lambda: c.stats()["durability"]["snapshot_position"] >= logged, timeout_s=60)
            for k in range(30, 45):                   # after the snapshot: replayed from the log
                b = batch()
                c.ingest(b, batch_id=f"b{k}")
                ref.ingest(b)
            pids = wait_until(lambda: shard_pids(srv.proc.pid) or None, timeout_s=30)
            assert len(pids) >= 2, pids
            # the shards run --shard-niceness (default 5) above the gateway, not at Ray's 15
            gw_nice = os.getpriority(os.PRIO_PROCESS, srv.proc.pid)
            assert {os.getpriority(os.PRIO_PROCESS, p) - gw_nice for p in pids} == {ServerConfig().shard_niceness}
            os.kill(pids[0], signal.SIGKILL)
            wait_until(lambda: pids[0] not in shard_pids(srv.proc.pid), timeout_s=30)
            for k in range(45, 80):                   # the first round finds the shard dead
                b = batch()
                c.ingest(b, batch_id=f"b{k}")
                ref.ingest(b)
            assert c.stats()["durability"]["shard_restarts"] == 1
            for name in SEGMENTS:
                assert c.members(name) == ref.members(name), name
            assert c.deltas() == ref.deltas()       # one core: the same canonical order
            assert c.health() == "SERVING"
    finally:
        srv.stop()

