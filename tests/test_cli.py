"""``rtseg``: the configuration rules (flags > RTSEG_* > defaults, --help naming the variables)
and the operator commands against a live server (real Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine.config import OPTIONS, ServerConfig, add_server_arguments
from engine.errors import ConfigError
from tests.test_server_support import TOKEN, start_server

T0 = 1_700_000_000_000


def rtseg(*args: str, env: dict | None = None, input: str | None = None, timeout: float = 120):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RTSEG_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True,
                          text=True, env=full_env, input=input, timeout=timeout)


# ----------------------------------------------------------------------------- configuration


def test_help_lists_every_option_with_its_variable():
    out = rtseg("serve", "--help").stdout
    for flag in ("--host", "--port", "--shards", "--clock", "--retention", "--data-dir",
                 "--address", "--tls-cert", "--tls-key", "--token"):
        assert flag in out
    for opt in OPTIONS:
        assert opt.flag in out and opt.env in out.replace("\n", " ").replace("  ", " ")
    top = rtseg("--help").stdout
    for command in ("serve", "segment", "user", "watch", "stats", "scale", "bench"):
        assert command in top


def _parse(argv, env):
    import argparse

    p = argparse.ArgumentParser()
    add_server_arguments(p)
    return ServerConfig.load(p.parse_args(argv), env=env)


def test_flags_beat_environment_beat_defaults():
    cfg = _parse([], {})
    assert (cfg.host, cfg.port, cfg.clock, cfg.retention_ms, cfg.data_dir, cfg.token) == \
        ("127.0.0.1", 50051, "wall", 30 * 86_400_000, "./rtseg-data", None)
    assert cfg.shard_count == (os.cpu_count() or 1)
    env = {"RTSEG_PORT": "6000", "RTSEG_CLOCK": "event", "RTSEG_SHARDS": "3",
           "RTSEG_TOKEN": "from-env", "RTSEG_RETENTION": "7d", "RTSEG_ADDRESS": "ray://x:10001",
           "RTSEG_ALLOW_RESET": "true"}
    cfg = _parse([], env)
    assert (cfg.port, cfg.clock, cfg.shards, cfg.token, cfg.retention_ms, cfg.address,
            cfg.allow_reset) == (6000, "event", 3, "from-env", 7 * 86_400_000, "ray://x:10001", True)
    cfg = _parse(["--port", "7000", "--token", "flag", "--shards", "5"], env)
    assert (cfg.port, cfg.token, cfg.shards, cfg.clock) == (7000, "flag", 5, "event")
    with pytest.raises(dataclasses_frozen_error()):
        cfg.port = 1


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize("argv", [["--clock", "sideways"], ["--retention", "forever"],
                                  ["--shards", "0"], ["--tls-cert", "c.pem"], ["--port", "x"],
                                  ["--shard-niceness", "20"], ["--shard-niceness", "-1"]])
def test_bad_configuration(argv):
    with pytest.raises(ConfigError):
        _parse(argv, {})


def test_serve_refuses_bad_configuration_before_starting():
    r = rtseg("serve", "--clock", "sideways", timeout=60)
    assert r.returncode == 2 and "clock" in r.stderr


def test_bench_hook_is_lazy():
    r = rtseg("bench", "--help", timeout=60)
    assert r.returncode in (0, 2)
    assert "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- operator commands


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory, "--shards", "1", "--clock", "event", "--token", TOKEN)
    yield srv
    assert srv.stop() == 0, srv.stderr_tail()


@pytest.fixture(scope="module")
def env(server):
    return {"RTSEG_TARGET": server.target, "RTSEG_TOKEN": TOKEN}


def _json(r):
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.ray
def test_operator_commands(server, env):
    from engine.client import Client

    assert rtseg("health", env=env).stdout.strip() == "SERVING"
    seg = _json(rtseg("segment", "create", "viewers", "count(view, 1d) >= 1",
                      "--description", "saw something", env=env))
    assert seg["name"] == "viewers" and seg["size"] == 0 and seg["version"] == 1
    with Client(server.target, TOKEN) as c:
        c.ingest([{"user_id": f"u{i}", "type": "view", "timestamp_ms": T0 + i} for i in range(5)])
    assert _json(rtseg("segment", "get", "viewers", env=env))["size"] == 5
    assert [s["name"] for s in _json(rtseg("segment", "list", env=env))] == ["viewers"]
    preview = _json(rtseg("segment", "preview", "-", env=env, input="count(view, 1d) >= 1\n"))
    assert preview["size"] == 5 and len(preview["sample_user_ids"]) == 5
    exported = rtseg("segment", "export", "viewers", env=env)
    assert sorted(exported.stdout.split()) == [f"u{i}" for i in range(5)]
    replaced = _json(rtseg("segment", "replace", "viewers", "count(view, 1d) >= 2", env=env))
    assert replaced["version"] == 2 and replaced["size"] == 0
    assert replaced["description"] == "saw something"
    user = _json(rtseg("user", "u1", env=env))
    assert user["known"] is True and user["segments"] == []
    assert _json(rtseg("clock", str(T0 + 10), env=env)) == {"now_ms": T0 + 10}
    stats = _json(rtseg("stats", env=env))
    assert stats["users"] == 5 and stats["shards"] == 1 and stats["segments"] == 1
    watched = rtseg("watch", "--after", "1", "--count", "3", env=env)
    lines = [json.loads(x) for x in watched.stdout.splitlines()]
    assert [d["sequence"] for d in lines] == [2, 3, 4]
    assert {d["kind"] for d in lines} == {"ENTER"} and lines[0]["segment"] == "viewers"
    scaled = _json(rtseg("scale", "--shards", "2", env=env, timeout=300))
    assert scaled["shards"] == 2
    assert _json(rtseg("stats", env=env))["shards"] == 2
    gone = _json(rtseg("user", "u1", "--delete", env=env))
    assert gone["known"] is True
    assert _json(rtseg("user", "u1", env=env))["known"] is False
    deleted = _json(rtseg("segment", "delete", "viewers", env=env))
    assert deleted["name"] == "viewers"


@pytest.mark.ray
def test_operator_errors(server, env):
    r = rtseg("segment", "create", "bad", "count(view, 48) >= 1", env=env)
    assert r.returncode == 1 and "1:" in r.stderr and "expected a duration" in r.stderr
    rtseg("segment", "create", "dup", "true", env=env)
    r = rtseg("segment", "create", "dup", "true", env=env)
    assert r.returncode == 1 and "already exists" in r.stderr
    r = rtseg("segment", "get", "nope", env=env)
    assert r.returncode == 1 and "does not exist" in r.stderr
    r = rtseg("stats", "--token", "wrong", env={"RTSEG_TARGET": env["RTSEG_TARGET"]})
    assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr
    r = rtseg("stats", env={"RTSEG_TARGET": env["RTSEG_TARGET"]})        # no token at all
    assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr
    r = rtseg("stats", "--target", env["RTSEG_TARGET"], "--token", TOKEN)   # flags only
    assert r.returncode == 0


@pytest.mark.ray
def test_rfm_and_goal_commands(server, env):
    from engine.client import Client

    with Client(server.target, TOKEN) as c:
        c.ingest([{"user_id": f"b{i}", "type": "buy", "timestamp_ms": T0 + 20 + i, "value": float(i)}
                  for i in range(10)])
    _json(rtseg("segment", "create", "big", "rfm_m(buy, 30d) == 5", env=env))
    out = _json(rtseg("rfm", env=env))
    [b] = out["boundaries"]
    assert (b["source"], b["population"], b["monetary"]) == ("buy", 10, [2.0, 4.0, 6.0, 8.0])
    assert _json(rtseg("segment", "get", "big", env=env))["size"] == 2
    assert _json(rtseg("goal", "list", env=env)) == []
    r = rtseg("goal", "get", "nope", env=env)
    assert r.returncode == 1 and "nope" in r.stderr and "does not exist" in r.stderr
    r = rtseg("goal", "create", "g", "--segment", "missing", "--event", "buy", "--within", "7d", env=env)
    assert r.returncode == 1 and "missing" in r.stderr, r.stderr
    r = rtseg("goal", "create", "g", "--segment", "big", "--event", "buy", "--within", "7d",
              "--control-fraction", "1.5", env=env)
    assert r.returncode == 1 and "control_fraction" in r.stderr, r.stderr


@pytest.mark.ray
def test_examples_producer_and_consumer(server, env):
    import queue
    import threading
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    full_env = {**{k: v for k, v in os.environ.items() if not k.startswith("RTSEG_")}, **env}
    consumer = subprocess.Popen([sys.executable, str(root / "examples" / "consumer.py"),
                                 "--count", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=full_env)
    lines_q: queue.Queue = queue.Queue()

    def pump():
        for line in consumer.stdout:
            lines_q.put(line)
        lines_q.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        # the consumer's cursor must be fixed before the producer sends (it resumes from the
        # delta log after it): wait for its "synced" line, never for a fixed time
        first = lines_q.get(timeout=120)
        assert first is not None and "synced" in json.loads(first), consumer.stderr.read()
        produced = subprocess.run(
            [sys.executable, str(root / "examples" / "producer.py"), "--create-segments",
             "--users", "300", "--events", "6000", "--batch", "1000", "--start-ms", str(T0)],
            capture_output=True, text=True, env=full_env, timeout=120)
        assert produced.returncode == 0, produced.stderr
        last = json.loads(produced.stdout.splitlines()[-1])
        assert last["sent"] == 6000
        consumer.wait(timeout=120)
        reader.join(30)
        err = consumer.stderr.read()
    finally:
        if consumer.poll() is None:
            consumer.kill()
    rest = []
    while not lines_q.empty():
        x = lines_q.get()
        if x is not None:
            rest.append(x)
    out = first + "".join(rest)
    assert consumer.returncode == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    deltas = [x for x in lines if "sequence" in x]
    assert "synced" in lines[0] and len(deltas) == 20
    seqs = [d["sequence"] for d in deltas]
    assert seqs == sorted(seqs) and len(set(seqs)) == 20
