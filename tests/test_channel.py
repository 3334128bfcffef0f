"""The direct channel for rounds (engine/server/_channel.py), both ends in this process: the
actor's end in its thread, the gateway's end on an event loop. Through Ray, every server test
sends its rounds over it; tests/test_fault.py kills a shard behind it."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from engine.server._channel import ChannelClient, ChannelServer, new_key
from engine.server._shards import ShardDown


def _serve(handler, key=None):
    key = key or new_key()
    return ChannelServer(handler, key, "127.0.0.1"), key


async def _client(server, key, index=3) -> ChannelClient:
    c = ChannelClient(index, ShardDown)
    await c.connect(server.address, key)
    return c


def test_calls_are_answered_in_order_while_pipelined():
    seen = []

    def handler(steps):
        seen.append(steps)
        return [s * 2 for s in steps]

    server, key = _serve(handler)

    async def main():
        c = await _client(server, key)
        futs = [c.call([k, k + 1]) for k in range(200)]    # all sent before any reply
        got = await asyncio.gather(*futs)
        c.close()
        return got
    try:
        got = asyncio.run(main())
    finally:
        server.close()
    assert got == [[2 * k, 2 * k + 2] for k in range(200)]
    assert seen == [[k, k + 1] for k in range(200)]


def test_large_payloads_both_ways():
    server, key = _serve(lambda arr: (arr[::-1].copy(), int(arr.sum())))
    arr = np.arange(3_000_000, dtype=np.int64)              # 24 MB each way

    async def main():
        c = await _client(server, key)
        out = await asyncio.gather(c.call(arr), c.call(arr[:10]))
        c.close()
        return out
    try:
        (rev, total), (small, small_total) = asyncio.run(main())
    finally:
        server.close()
    assert np.array_equal(rev, arr[::-1]) and total == int(arr.sum())
    assert small.tolist() == list(range(9, -1, -1)) and small_total == 45


def test_an_exception_in_the_handler_reaches_its_caller_and_the_channel_goes_on():
    def handler(x):
        if x == "bad":
            raise ValueError("no such step: bad")
        if x == "unpicklable":
            return threading.Lock()
        return x

    server, key = _serve(handler)

    async def main():
        c = await _client(server, key)
        a, b, d, e = await asyncio.gather(c.call("ok"), c.call("bad"), c.call("unpicklable"),
                                          c.call("after"), return_exceptions=True)
        c.close()
        return a, b, d, e
    try:
        a, b, d, e = asyncio.run(main())
    finally:
        server.close()
    assert a == "ok" and e == "after"
    assert isinstance(b, ValueError) and "no such step: bad" in str(b)
    assert isinstance(d, RuntimeError) and "could not be sent" in str(d)


def test_a_connection_without_the_key_is_refused_before_anything_is_unpickled():
    calls = []
    server, key = _serve(lambda x: calls.append(x) or x)

    async def main():
        wrong = ChannelClient(0, ShardDown)
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await wrong.connect(server.address, new_key())
        # a raw peer that sends a pickle instead of the proof gets nothing run
        with socket.create_connection(server.address) as s:
            s.recv(32)
            s.sendall(b"\x00" * 64 + b"junk")
            try:
                answer = s.recv(64)
            except ConnectionResetError:                   # closed with "junk" unread
                answer = b""
            assert answer == b""                           # closed without an answer
        right = await _client(server, key)                 # the shard still serves its gateway
        got = await right.call("hello")
        right.close()
        return got
    try:
        assert asyncio.run(main()) == "hello"
    finally:
        server.close()
    assert calls == ["hello"]


_SHARD_END = """
import sys, time
from engine.server._channel import ChannelServer
server = ChannelServer(lambda x: time.sleep(60), bytes.fromhex(sys.argv[1]), "127.0.0.1")
print(server.address[1], flush=True)
time.sleep(120)
"""


def test_calls_waiting_when_the_shard_process_dies_fail_with_shard_down():
    key = new_key()
    proc = subprocess.Popen([sys.executable, "-c", _SHARD_END, key.hex()], stdout=subprocess.PIPE,
                            text=True)
    try:
        port = int(proc.stdout.readline())

        async def main():
            c = ChannelClient(1, ShardDown)
            await c.connect(("127.0.0.1", port), key)
            futs = [c.call(k) for k in range(3)]            # the first one is running
            await asyncio.sleep(0)
            proc.kill()                                     # SIGKILL: no goodbye
            got = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 30)
            later = await asyncio.gather(c.call("later"), return_exceptions=True)
            return got + later
        got = asyncio.run(main())
    finally:
        proc.kill()
        proc.wait()
    for g in got:
        assert isinstance(g, ShardDown), g
        assert g.index == 1 and "channel closed" in str(g)


def test_a_silent_connection_does_not_hold_up_the_gateways(monkeypatch):
    """Peers that connect and never prove the key (up to ``MAX_HANDSHAKES`` of them at once)
    cannot keep the gateway's connection from its handshake: each handshake runs on its own."""
    import engine.server._channel as CH

    monkeypatch.setattr(CH, "HANDSHAKE_TIMEOUT_S", 120.0)   # a hold-up would last this long
    server, key = _serve(lambda x: x)
    silent = [socket.create_connection(server.address) for _ in range(CH.MAX_HANDSHAKES // 2)]

    async def main():
        c = ChannelClient(0, ShardDown)
        await asyncio.wait_for(c.connect(server.address, key), 60)
        got = await c.call("through")
        c.close()
        return got
    try:
        assert asyncio.run(main()) == "through"
    finally:
        for s in silent:
            s.close()
        server.close()


def test_rounds_and_reads_as_ray_calls_give_the_same_results(tmp_path):
    """``--rounds-over-ray`` (for networks that refuse direct connections): the same
    deltas, members and user views as the embedded engine, through two Ray shard actors."""
    import random

    from engine import Engine
    from engine.client import Client
    from tests.test_server_support import ServerProcess

    t0 = 1_700_000_000_000
    rng = random.Random(3)
    batches = [[{"user_id": f"u{rng.randrange(50)}", "type": rng.choice(["view", "buy"]),
                 "timestamp_ms": t0 + k * 600_000 + j} for j in range(40)] for k in range(6)]
    ref = Engine(clock="event")
    srv = ServerProcess(tmp_path, "--shards", "2", "--clock", "event", "--rounds-over-ray")
    try:
        with Client(srv.target, timeout_s=120) as c:
            for eng in (c, ref):
                eng.create_segment("viewers", "count(view, 30m) >= 2")
                eng.create_segment("quiet", "since(view) > 20m and count(buy, 1h) == 0")
                for b in batches:
                    eng.ingest(b)
            assert c.deltas() == ref.deltas()
            for name in ("viewers", "quiet"):
                assert c.members(name) == ref.members(name)
            assert c.get_user("u1")["segments"] == ref.get_user("u1")["segments"]
    finally:
        srv.stop()


_MIXED = r'''
import asyncio, os, sys
os.environ["RAY_enable_metrics_collection"] = "0"
import ray
ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
from engine._steps import Step
from engine.server import _channel
from engine.server._actor import shard_actor_class
from engine.server._shards import ChannelUnavailable, RayShard, ShardSet

async def main():
    kw = {"retention_ms": 86_400_000}
    ss = ShardSet()
    for i in range(2):
        c = RayShard(i, shard_actor_class().remote(i, kw))
        await c.ready(False)
        ss.clients.append(c)
    await ss.clients[0].open_channel()
    real = _channel.ChannelClient.connect

    async def refused(self, address, key):
        raise ConnectionRefusedError("no route to the node's port")
    _channel.ChannelClient.connect = refused
    try:
        await ss.clients[1].open_channel()
    except ChannelUnavailable as exc:
        print("fallback:", exc)
    _channel.ChannelClient.connect = real
    assert ss.clients[0].channel is not None and ss.clients[1].channel is None
    t = 1_700_000_000_000
    for k in range(3):
        got = await ss.collect_round(ss.submit_round([[(Step.ADVANCE, None, t + k)]] * 2))
        print("round", k, [len(g[0]) for g in got])
    print("read", sorted(await ss.clients[1].read("user_view", "nobody")))
    ss.close()

asyncio.run(main())
'''


def test_a_shard_without_a_channel_takes_its_rounds_as_ray_calls(tmp_path):
    """When a shard's channel cannot be opened (a network that refuses the port), that shard
    alone goes on with Ray calls, and one round mixes both kinds of shard."""
    out = subprocess.run([sys.executable, "-c", _MIXED], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert any(line.startswith("fallback: shard 1: its channel for rounds could not be opened")
               for line in lines), out.stdout
    assert [line for line in lines if line.startswith("round")] == [f"round {k} [1, 1]" for k in range(3)]
    assert any(line.startswith("read ") for line in lines)
