"""Two local Ray nodes (``ray start --head`` + ``ray start --address``), ``rtseg serve
--address`` joining them: the shards run on both nodes and the engine works across them.

Slow (two Ray nodes plus a server take a while to start): ``pytest -m slow
tests/test_server_cluster.py``. The nodes run with ``--block`` in their own sessions, so the
teardown stops exactly them (never a machine-wide ``ray stop``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time

import pytest

from engine.client import Client
from tests.test_server_support import start_server

pytestmark = [pytest.mark.ray, pytest.mark.slow]

T0 = 1_700_000_000_000
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_node(*args: str, log) -> subprocess.Popen:
    env = {**os.environ, **RAY_ENV}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(["ray", "start", "--block", "--num-cpus", "1",
                             "--disable-usage-stats", *args],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    """Stop the node's whole process group (its session): the ``ray start`` process may have
    left already while its raylet and workers are still running."""
    for sig, grace_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        if not _group_alive(proc.pid):
            break
        os.killpg(proc.pid, sig)
        deadline = time.monotonic() + grace_s
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def _alive_nodes(address: str) -> int:
    out = subprocess.run(
        ["python", "-c", "import ray; ray.init(address=%r, logging_level='ERROR'); "
                         "print(sum(1 for n in ray.nodes() if n['Alive']))" % address],
        capture_output=True, text=True, env={**os.environ, **RAY_ENV}, timeout=120)
    try:
        return int(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return 0


@contextlib.contextmanager
def two_nodes(logs):
    """A head and a worker node in their own sessions -> (address, worker process)."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head_log = open(logs / "head.log", "w")
    worker_log = open(logs / "worker.log", "w")
    head = _ray_node("--head", f"--port={port}", "--include-dashboard=false", log=head_log)
    worker = None
    try:
        time.sleep(5)
        worker = _ray_node(f"--address={address}", log=worker_log)
        deadline = time.monotonic() + 180
        while _alive_nodes(address) < 2:
            assert time.monotonic() < deadline, (logs / "head.log").read_text()[-3000:]
            time.sleep(2)
        yield address, worker
    finally:
        if worker is not None:
            _stop(worker)
        _stop(head)
        head_log.close()
        worker_log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with two_nodes(tmp_path_factory.mktemp("ray-nodes")) as (address, _):
        yield address


def test_shards_run_on_both_nodes(cluster, tmp_path_factory):
    srv = start_server(tmp_path_factory, "--address", cluster, "--shards", "4", "--clock", "event",
                       env=RAY_ENV)
    try:
        with Client(srv.target, timeout_s=120) as c:
            st = c.stats()
            nodes = {s["node"] for s in st["shard_stats"]}
            assert st["shards"] == 4 and len(nodes) == 2, nodes
            c.create_segment("viewers", "count(view, 1d) >= 2")
            users = [f"u{i}" for i in range(2000)]
            r = c.ingest_columns(users * 2, ["view"] * 4000, [T0 + i for i in range(4000)])
            assert r.accepted == 4000
            assert c.get_segment("viewers").size == 2000
            assert all(s["users"] > 0 for s in c.stats()["shard_stats"])
            assert c.scale(2)["shards"] == 2
            assert c.members("viewers") == set(users)
    finally:
        assert srv.stop() == 0, srv.stderr_tail()


@pytest.fixture
def doomed_cluster(tmp_path_factory):
    """Two nodes of its own: the test stops the worker."""
    with two_nodes(tmp_path_factory.mktemp("ray-nodes-doomed")) as nodes:
        yield nodes


def test_a_stopped_node_loses_no_data(doomed_cluster, tmp_path_factory):
    """The worker node stops with shards on it: each lost shard is rebuilt on the node left
    from the newest snapshot and the log, and every acknowledged event is still counted."""
    from engine import Engine

    address, worker = doomed_cluster
    srv = start_server(tmp_path_factory, "--address", address, "--shards", "4", "--clock", "event",
                       "--snapshot-interval", "1s", env=RAY_ENV)
    ref = Engine(clock="event")
    try:
        with Client(srv.target, timeout_s=300) as c:
            st = c.stats()
            assert len({s["node"] for s in st["shard_stats"]}) == 2
            for eng in (c, ref):
                eng.create_segment("viewers", "count(view, 1d) >= 2")
            users = [f"u{i}" for i in range(2000)]
            for k in range(4):
                cols = dict(user_id=users, type=["view"] * 2000,
                            timestamp_ms=[T0 + k * 10_000 + i for i in range(2000)])
                c.ingest_columns(**cols, batch_id=f"b{k}")
                ref.ingest_columns(**cols)
                if k == 1:
                    _stop(worker)                  # the node and its shards are gone
            assert c.members("viewers") == ref.members("viewers") == set(users)
            assert c.stats()["durability"]["shard_restarts"] >= 1
            assert c.deltas() == ref.deltas()
    finally:
        srv.stop()
