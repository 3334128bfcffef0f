"""Webhook destinations: batching and backoff on their own, then delivery from a real server
(real Ray, real gRPC, a data dir) to HTTP receivers in this process that fail, hang, go away
and come back, and a restart of the server itself: every delta delivered, none lost, order
kept per segment, every body signed, and a receiver that is down delays only its own
destination. Conditions are waited for with a deadline, never with fixed sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import numpy as np
import pytest

from engine import errors as E
from engine._deltas import Delta, DeltaBatch
from engine.server import _destinations as D
from tests.test_server_support import ServerProcess, wait_until

T0 = 1_700_000_000_000
SECRET = "a-test-secret-of-some-length"


# ----------------------------------------------------------------------------- a receiver

class Receiver:
    """An HTTP receiver on 127.0.0.1 in a thread. ``plan`` is what the next requests get, in
    order ("500", "hang": no reply for ``hang_s``), then 200 for every one after. Records every
    acknowledged body; the signature of each request is checked against ``secret``."""

    def __init__(self, secret: str, port: int = 0, plan=(), hang_s: float = 3.0):
        self.secret = secret
        self.plan = list(plan)
        self.hang_s = hang_s
        self.acked: list[dict] = []          # bodies answered 200, in arrival order
        self.attempts = 0
        self.bad_signatures = 0
        self.deliveries: list[str] = []      # X-Rtseg-Delivery of each acknowledged body
        self._lock = threading.Lock()
        self._start(port)

    def _start(self, port: int) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                ok_sig = D.verify(receiver.secret, body, self.headers.get(D.SIGNATURE_HEADER))
                with receiver._lock:
                    receiver.attempts += 1
                    receiver.bad_signatures += not ok_sig
                    step = receiver.plan.pop(0) if receiver.plan else "200"
                if step == "hang":
                    time.sleep(receiver.hang_s)
                    return
                if step != "200" or not ok_sig:
                    self.send_response(500 if step == "200" else int(step))
                    self.end_headers()
                    self.wfile.write(b"not now")
                    return
                assert self.headers["Content-Type"] == "application/json"
                doc = json.loads(body)
                with receiver._lock:
                    receiver.acked.append(doc)
                    receiver.deliveries.append(self.headers[D.DELIVERY_HEADER])
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True
            block_on_close = False

        self._httpd = Server(("127.0.0.1", port), Handler)
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def restart(self) -> None:
        """Up again on the same port."""
        self._start(self.port)

    def deltas(self) -> list[dict]:
        with self._lock:
            return [d for doc in self.acked for d in doc["deltas"]]

    def sequences(self) -> set[int]:
        return {d["sequence"] for d in self.deltas()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_delivered(receiver: Receiver, expected: list, name: str) -> None:
    """Every expected delta acknowledged (repeats allowed: at least once), nothing else, each
    body in sequence order and each segment's deltas first seen in sequence order."""
    got = receiver.deltas()
    by_seq = {d["sequence"]: d for d in got}
    assert sorted(by_seq) == [d.sequence for d in expected]
    for d in expected:
        x = by_seq[d.sequence]
        assert (x["segment"], x["user_id"], x["kind"], x["cause"], x["at_ms"]) == \
            (d.segment, d.user_id, d.kind, d.cause, d.at_ms)
    for doc in receiver.acked:
        assert doc["destination"] == name
        seqs = [d["sequence"] for d in doc["deltas"]]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    first_seen: dict[str, list[int]] = {}
    seen: set[int] = set()
    for d in got:
        if d["sequence"] not in seen:
            seen.add(d["sequence"])
            first_seen.setdefault(d["segment"], []).append(d["sequence"])
    for seqs in first_seen.values():
        assert seqs == sorted(seqs)
    for header, doc in zip(receiver.deliveries, receiver.acked):
        assert header == f'{doc["deltas"][0]["sequence"]}..{doc["deltas"][-1]["sequence"]}'
    assert receiver.bad_signatures == 0


# ----------------------------------------------------------------------------- no server


def test_backoff_doubles_to_a_cap_with_jitter():
    rng = random.Random(7)
    assert D.backoff_ms(0, rng) == 0
    for attempt in range(1, 20):
        ceiling = min(D.BACKOFF_MAX_MS, D.BACKOFF_INITIAL_MS * 2 ** (attempt - 1))
        delays = [D.backoff_ms(attempt, rng) for _ in range(50)]
        assert all(ceiling // 2 <= x <= ceiling for x in delays), (attempt, delays)
        assert len(set(delays)) > 1                      # jittered
    assert [D.backoff_ms(a, random.Random(1)) for a in (1, 2, 3)] == \
        [D.backoff_ms(a, random.Random(1)) for a in (1, 2, 3)]
    assert max(D.backoff_ms(1000, rng) for _ in range(100)) <= 30_000


def _delta(seq, segment="s", user="u"):
    return Delta(seq, segment, user, "ENTER", T0 + seq, "EVENT")


def test_batcher_sends_full_batches_at_once_and_partial_ones_after_max_wait():
    b = D.Batcher(batch_size=3, max_wait_ms=200)
    assert not b.ready(0) and b.wait_ms(0) is None and b.room == 3
    b.add([_delta(1), _delta(2)], end=5, now_ms=1000)
    assert not b.ready(1100) and b.wait_ms(1100) == 100 and b.room == 1
    b.add([], end=7, now_ms=1150)                     # other segments' deltas passed over
    assert b.wait_ms(1150) == 50                      # the first pending one's wait counts
    assert b.ready(1200)
    batch, end = b.take()
    assert [d.sequence for d in batch] == [1, 2] and end == 7
    b.add([_delta(8), _delta(9), _delta(10)], end=10, now_ms=2000)
    assert b.ready(2000)                              # full: no waiting
    assert b.take()[1] == 10 and not b.pending and b.end == 10


def test_validation_names_the_field():
    ok = D.validate_spec("hook-1", "https://example.test/x", ["b", "a", "a"],
                         known_segments={"a", "b"})
    assert ok.segments == ("a", "b") and len(ok.secret) == 64
    assert (ok.batch_size, ok.max_wait_ms, ok.timeout_ms) == (500, 200, 10_000)
    assert D.validate_spec("h", "http://127.0.0.1:9/").secret != ok.secret
    for url in ("ftp://x/y", "example.test/x", "http://", "http://a b/", "http://h:port/", "", None):
        with pytest.raises(E.DestinationError, match="url"):
            D.validate_spec("h", url)
    with pytest.raises(E.DestinationError, match="'nope' does not exist"):
        D.validate_spec("h", "http://x/", ["a", "nope"], known_segments={"a"})
    with pytest.raises(E.DestinationError, match="batch_size"):
        D.validate_spec("h", "http://x/", batch_size=D.MAX_BATCH_SIZE + 1)
    with pytest.raises(E.DestinationError, match="secret"):
        D.validate_spec("h", "http://x/", secret="short")
    with pytest.raises(E.DestinationError, match="name"):
        D.validate_spec("bad name", "http://x/")
    assert isinstance(E.DestinationError("x"), ValueError)


def test_body_signature_and_delivery_header():
    deltas = [_delta(4, "vip", "ü1"), _delta(5, "vip", "u2")]
    body = D.encode_batch("hook", deltas)
    doc = json.loads(body)
    assert doc == {"destination": "hook", "deltas": [
        {"sequence": 4, "segment": "vip", "user_id": "ü1", "kind": "ENTER", "cause": "EVENT",
         "at_ms": T0 + 4},
        {"sequence": 5, "segment": "vip", "user_id": "u2", "kind": "ENTER", "cause": "EVENT",
         "at_ms": T0 + 5}]}
    h = D.headers_for(SECRET, body, deltas)
    assert h["Content-Type"] == "application/json" and h[D.DELIVERY_HEADER] == "4..5"
    import hashlib
    import hmac

    assert h[D.SIGNATURE_HEADER] == "sha256=" + hmac.new(SECRET.encode(), body,
                                                         hashlib.sha256).hexdigest()
    assert D.verify(SECRET, body, h[D.SIGNATURE_HEADER])
    assert not D.verify(SECRET, body + b" ", h[D.SIGNATURE_HEADER])
    assert not D.verify("another-secret-entirely", body, h[D.SIGNATURE_HEADER])


def test_state_file_is_written_whole_and_private(tmp_path):
    path = tmp_path / D.STATE_FILE
    D.write_atomic(path, b'{"a": 1}')
    D.write_atomic(path, b'{"a": 2}')
    assert json.loads(path.read_bytes()) == {"a": 2}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [D.STATE_FILE]


def _fake_gateway(data_dir, capacity=1000):
    from engine.server._sequencer import Sequencer

    seq = Sequencer(capacity)
    return SimpleNamespace(config=SimpleNamespace(data_dir=str(data_dir)), store=object(),
                           sequencer=seq, log=seq.log, registry={"s", "t"})


def _publish(gw, n, segment="s", start_user=0):
    gw.sequencer.log.append(DeltaBatch(
        segments=[segment] * n, user_ids=[f"u{start_user + i}" for i in range(n)],
        kind=np.ones(n, np.int8), cause=np.ones(n, np.int8), at_ms=np.full(n, T0, np.int64)))


def test_service_skips_what_the_log_no_longer_holds_and_resumes_from_its_file(tmp_path):
    """The delivery loop on a bare delta log (no gRPC server): a cursor older than the
    retained log is reported (skipped, last_error) and delivery goes on from the oldest
    retained delta; the cursor saved in the data dir is where a new service resumes."""
    receiver = Receiver(SECRET)

    async def scenario():
        gw = _fake_gateway(tmp_path, capacity=10)
        svc = D.DestinationService(gw, rng=random.Random(0))
        await svc.start()
        info = await svc.create("h", receiver.url, ["s"], SECRET, batch_size=4, max_wait_ms=20)
        assert info.secret == SECRET and info.cursor == 0
        svc._dests["h"].task.cancel()                # hold delivery back...
        _publish(gw, 25)                             # ...while the log keeps only 16..25
        svc._launch(svc._dests["h"])
        await gw.sequencer.wake()
        await _until(lambda: svc.get("h").cursor == 25)
        st = svc.get("h")
        assert st.skipped == 15 and "1..15" in st.last_error and "no longer retained" in st.last_error
        assert receiver.sequences() == set(range(16, 26))
        _publish(gw, 3, segment="t")                 # not its segment: passed over
        _publish(gw, 2, start_user=100)
        await gw.sequencer.wake()
        await _until(lambda: svc.get("h").cursor == 30)
        await svc.stop()
        saved = json.loads((tmp_path / D.STATE_FILE).read_text())["destinations"]
        assert [(r["name"], r["cursor"], r["secret"]) for r in saved] == [("h", 30, SECRET)]
        svc2 = D.DestinationService(gw)
        _publish(gw, 1, start_user=200)
        await svc2.start()
        await gw.sequencer.wake()
        await _until(lambda: svc2.get("h").cursor == 31)
        await svc2.stop()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        receiver.stop()
    assert receiver.sequences() == set(range(16, 26)) | {29, 30, 31}
    assert all(d["segment"] == "s" for d in receiver.deltas())


async def _until(predicate, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


# ----------------------------------------------------------------------------- a real server


def _client(target):
    from engine.client import Client

    return Client(target, timeout_s=60)


def _ingest(c, users, t, kind="view"):
    return c.ingest([{"user_id": u, "type": kind, "timestamp_ms": t} for u in users])


@pytest.mark.ray
def test_webhooks_at_least_once_through_failures_and_restarts(tmp_path):
    workdir = tmp_path / "srv"
    workdir.mkdir()
    args = ("--shards", "2", "--clock", "event")
    a = Receiver(SECRET, plan=["500", "500", "hang"], hang_s=3.0)
    down_port = free_port()                          # nothing listens there
    srv = ServerProcess(workdir, *args)
    try:
        with _client(srv.target) as c:
            c.create_segment("viewers", "count(view, 1d) >= 1")
            c.create_segment("buyers", "count(buy, 1d) >= 1")
            c.create_segment("other", "count(other, 1d) >= 1")
            made = c.create_destination("a", a.url, ["viewers", "buyers"], SECRET,
                                        batch_size=25, max_wait_ms=50, timeout_ms=1000)
            assert made.secret == SECRET and made.segments == ("buyers", "viewers")
            b = c.create_destination("b", f"http://127.0.0.1:{down_port}/hook")
            assert len(b.secret) == 64 and b.segments == ()
            assert [d.secret for d in c.list_destinations()] == ["", ""]   # shown once only
            with pytest.raises(E.DestinationExists):
                c.create_destination("a", a.url)
            with pytest.raises(E.DestinationError, match="url"):
                c.create_destination("c", "ftp://127.0.0.1/")
            with pytest.raises(E.DestinationError, match="nope"):
                c.create_destination("c", a.url, ["nope"])
            with pytest.raises(E.UnknownDestination):
                c.delete_destination("c")

            _ingest(c, [f"v{i}" for i in range(60)], T0)
            _ingest(c, [f"b{i}" for i in range(30)], T0 + 1, "buy")
            _ingest(c, [f"o{i}" for i in range(10)], T0 + 2, "other")
            last = c.last_sequence
            # the first destination gets everything (after two 500s and a timeout) while the
            # second, whose receiver is down, backs off
            wait_until(lambda: _dest(c, "a").cursor == last, 60, 0.05)
            st_b = _dest(c, "b")
            assert st_b.state == "BACKING_OFF" and st_b.failures >= 1 and st_b.cursor == 0
            assert st_b.next_retry_ms > 0 and "ConnectError" in st_b.last_error
            st_a = _dest(c, "a")
            assert st_a.failures == 3 and st_a.state == "DELIVERING"
            assert st_a.delivered >= 90 and "within 1000 ms" in st_a.last_error
            check_delivered(a, c.deltas(segments=["viewers", "buyers"]), "a")

            # the receiver goes away and comes back on the same port
            a.stop()
            _ingest(c, [f"v{i}" for i in range(60, 80)], T0 + 3)
            wait_until(lambda: _dest(c, "a").state == "BACKING_OFF", 30, 0.05)
            a.restart()
            wait_until(lambda: _dest(c, "a").cursor == c.last_sequence, 60, 0.05)
            check_delivered(a, c.deltas(segments=["viewers", "buyers"]), "a")

            # down again while more deltas come; then the server itself restarts
            a.stop()
            _ingest(c, [f"b{i}" for i in range(30, 45)], T0 + 4, "buy")
            failures = _dest(c, "a").failures
            wait_until(lambda: _dest(c, "a").failures > failures, 30, 0.05)
            cursor_before = _dest(c, "a").cursor
            pending_last = c.last_sequence
            assert cursor_before < pending_last
        assert srv.stop() == 0, srv.stderr_tail()
        docs_before = len(a.acked)
        srv = ServerProcess(workdir, *args)
        env = {"RTSEG_TARGET": srv.target}
        with _client(srv.target) as c:
            assert c.last_sequence == pending_last          # the same numbers after a restart
            got = {d.name: d for d in c.list_destinations()}
            assert set(got) == {"a", "b"} and got["a"].url == a.url
            assert got["a"].cursor == cursor_before         # saved at the graceful stop
            a.restart()                                     # (only now: it must not move first)
            wait_until(lambda: _dest(c, "a").cursor == pending_last, 60, 0.05)
            check_delivered(a, c.deltas(segments=["viewers", "buyers"]), "a")
            resumed = [d["sequence"] for doc in a.acked[docs_before:] for d in doc["deltas"]]
            assert resumed and min(resumed) > cursor_before  # after the last acknowledged one
            wait_until(lambda: _dest(c, "b").state == "BACKING_OFF", 30, 0.05)
            assert _dest(c, "b").cursor == 0

            # the command line
            made = _json(rtseg("destination", "create", "c", a.url, "--segments", "viewers,buyers",
                               "--secret", SECRET, env=env))
            assert made["secret"] == SECRET and made["segments"] == ["buyers", "viewers"]
            listed = _json(rtseg("destination", "list", env=env))
            assert [d["name"] for d in listed] == ["a", "b", "c"] and listed[2]["secret"] == ""
            r = rtseg("destination", "create", "c", a.url, env=env)
            assert r.returncode == 1 and "already exists" in r.stderr
            r = rtseg("destination", "create", "d", "not-a-url", env=env)
            assert r.returncode == 1 and "url" in r.stderr
            r = rtseg("destination", "create", "d", a.url, "--segments", "nope", env=env)
            assert r.returncode == 1 and "nope" in r.stderr
            r = rtseg("destination", "delete", "zz", env=env)
            assert r.returncode == 1 and "does not exist" in r.stderr
            assert _json(rtseg("destination", "delete", "c", env=env))["name"] == "c"
            gone = c.delete_destination("b")
            assert gone.name == "b" and [d.name for d in c.list_destinations()] == ["a"]

            # a crash right after deliveries: the cursor saved last may be behind what was
            # acknowledged, so some deltas may come again, but none is lost
            _ingest(c, [f"v{i}" for i in range(80, 120)], T0 + 5)
            wait_until(lambda: _dest(c, "a").cursor == c.last_sequence, 60, 0.05)
            crash_last = c.last_sequence
        os.killpg(srv.proc.pid, signal.SIGKILL)
        srv.stop()
        srv = ServerProcess(workdir, *args)
        with _client(srv.target) as c:
            assert [d.name for d in c.list_destinations()] == ["a"]
            assert c.last_sequence == crash_last
            _ingest(c, [f"b{i}" for i in range(45, 50)], T0 + 6, "buy")
            wait_until(lambda: _dest(c, "a").cursor == c.last_sequence, 60, 0.05)
            check_delivered(a, c.deltas(segments=["viewers", "buyers"]), "a")
        assert srv.stop() == 0, srv.stderr_tail()
    finally:
        srv.stop()
        with contextlib.suppress(Exception):     # stopped already
            a.stop()


def _json(r):
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _dest(c, name):
    return next(d for d in c.list_destinations() if d.name == name)


def rtseg(*args: str, env: dict, timeout: float = 120):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RTSEG_")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout, check=False)
