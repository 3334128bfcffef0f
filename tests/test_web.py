"""The web console's HTTP side (engine/web) against a real ``rtseg serve``: ``/metrics``
parsed with prometheus_client's own parser after ingesting, the JSON API, the token on every
endpoint, live sizes pushed over Server-Sent Events, a taken port, and ``rtseg console``
standalone against a remote server."""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from engine.config import ServerConfig, add_server_arguments
from tests.test_server_support import TOKEN, start_server, wait_until

T0 = 1_700_000_000_000
CONSOLE_LINE = "rtseg console on "


# ----------------------------------------------------------------------------- helpers


def read_console_url(proc: subprocess.Popen, timeout_s: float = 60.0) -> str:
    """The ``rtseg console on http://...`` line of a process's stdout."""
    def read():
        for line in proc.stdout:
            if line.startswith(CONSOLE_LINE):
                return line[len(CONSOLE_LINE):].strip()
        return ""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        url = pool.submit(read).result(timeout_s)
    assert url.startswith("http://"), "the console did not start"
    return url


def http(method: str, url: str, body=None, token: str | None = TOKEN, timeout_s: float = 60):
    """-> (status, content type, body bytes)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, r.headers.get("content-type", ""), r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("content-type", ""), err.read()


def get_json(url: str, token: str | None = TOKEN):
    status, _, body = http("GET", url, token=token)
    assert status == 200, (status, body)
    return json.loads(body)


def scrape(url: str) -> dict:
    """``/metrics`` -> {family name: family} (prometheus_client's parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    status, ctype, body = http("GET", url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def value(families: dict, name: str, sample: str | None = None, **labels) -> float:
    fam = families[name]
    sample = sample or name
    got = [s.value for s in fam.samples if s.name == sample
           and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(got) == 1, (sample, labels, fam.samples)
    return got[0]


def views(prefix: str, users: int, per_user: int = 1, t0: int = T0, type: str = "view") -> list[dict]:
    return [{"user_id": f"{prefix}{u}", "type": type, "timestamp_ms": t0 + u * 10 + k}
            for u in range(users) for k in range(per_user)]


# ----------------------------------------------------------------------------- no server


def test_console_flags_and_variables():
    import argparse

    p = argparse.ArgumentParser()
    add_server_arguments(p)
    cfg = ServerConfig.load(p.parse_args([]), env={})
    assert (cfg.console_host, cfg.console_port, cfg.no_console) == ("127.0.0.1", 8080, False)
    cfg = ServerConfig.load(p.parse_args([]), env={"RTSEG_CONSOLE_PORT": "9000",
                                                  "RTSEG_CONSOLE_HOST": "0.0.0.0",
                                                  "RTSEG_NO_CONSOLE": "1"})
    assert (cfg.console_host, cfg.console_port, cfg.no_console) == ("0.0.0.0", 9000, True)
    cfg = ServerConfig.load(p.parse_args(["--console-port", "0", "--no-console"]),
                            env={"RTSEG_CONSOLE_PORT": "9000"})
    assert (cfg.console_port, cfg.no_console) == (0, True)


def test_histogram_buckets_are_cumulative():
    from engine.server._metrics import LatencyWindow

    w = LatencyWindow(capacity=4)
    for ms in (0.05, 0.1, 0.3, 7.0, 20_000.0, 1.0):
        w.record_ms(ms)
    cum = dict(w.histogram.cumulative())
    assert cum[0.1] == 2 and cum[0.5] == 3 and cum[1.0] == 4 and cum[10.0] == 5
    assert cum[float("inf")] == w.histogram.count == 6      # the window forgets, this does not
    assert w.histogram.sum_ms == pytest.approx(20_008.45)


def test_latency_summary_is_reused_for_a_moment_and_its_count_is_current():
    """GetStats asks for percentiles over up to 65,536 samples (~1 ms each time): they are
    computed again only once new samples came and the last computation has aged."""
    from engine.server._metrics import LatencyWindow

    w = LatencyWindow(capacity=8)
    w.SUMMARY_MAX_AGE_S = 3600.0
    assert w.summary()["count"] == 0
    w.record_ms(2.0)
    first = w.summary()
    assert first["count"] == 1 and first["p50_ms"] == first["max_ms"] == 2.0
    w.record_ms(40.0)
    held = w.summary()
    assert held["count"] == 2 and held["max_ms"] == 2.0          # young: the same percentiles
    w.SUMMARY_MAX_AGE_S = 0.0
    fresh = w.summary()
    assert fresh["count"] == 2 and fresh["max_ms"] == 40.0 and fresh["p50_ms"] == 21.0


def test_page_assets_are_package_data():
    from importlib import resources

    from engine.web._app import page_html

    static = resources.files("engine.web").joinpath("static")
    for name in ("index.html", "console.js", "console.css"):
        assert static.joinpath(name).is_file()
    html = page_html()
    assert "<script src=" not in html and "drawChart" in html and "--mono" in html
    assert "http://" not in html and "https://" not in html      # nothing fetched from elsewhere


# ----------------------------------------------------------------------------- a live server


def console_server(tmp_path_factory):
    """A live ``rtseg serve`` (2 shards, event clock, token) with its console on a free port
    (``srv.console``): a module fixture's body."""
    srv = start_server(tmp_path_factory, "--shards", "2", "--clock", "event", "--token", TOKEN,
                       "--console-port", "0")
    srv.console = read_console_url(srv.proc)
    yield srv
    assert srv.stop() == 0, srv.stderr_tail()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from console_server(tmp_path_factory)


@pytest.fixture(scope="module")
def client(server):
    from engine.client import Client

    with Client(server.target, TOKEN, timeout_s=120) as c:
        yield c


@pytest.mark.ray
def test_metrics_after_ingesting(server, client):
    url = server.console
    client.create_segment("m_viewers", "count(view, 1d) >= 1")
    client.create_segment("m_repeat", "count(view, 1d) >= 3")
    before = scrape(url)
    events = views("m", 40, per_user=3)                         # 40 users, 3 views each
    bad = [{"user_id": "m_bad", "type": "view"}] * 5              # no timestamp: rejected
    r1 = client.ingest(events[:60])
    r2 = client.ingest(events[60:] + bad)
    assert (r1.accepted + r2.accepted, r1.rejected + r2.rejected) == (120, 5)
    after = scrape(url)

    def grew(name, sample=None):
        return value(after, name, sample) - value(before, name, sample)

    assert grew("rtseg_events_accepted", "rtseg_events_accepted_total") == 120
    assert grew("rtseg_events_rejected", "rtseg_events_rejected_total") == 5
    assert after["rtseg_events_accepted"].type == "counter"
    assert value(after, "rtseg_segment_size", segment="m_viewers") == 40
    assert value(after, "rtseg_segment_size", segment="m_repeat") == 40
    # every user entered both segments: 80 ENTER deltas
    assert grew("rtseg_deltas", "rtseg_deltas_total") == 80
    assert value(after, "rtseg_deltas", "rtseg_deltas_total") == client.last_sequence
    for name in ("rtseg_ingest_latency_seconds", "rtseg_ingest_to_delta_latency_seconds",
                 "rtseg_round_latency_seconds", "rtseg_event_loop_lag_seconds"):
        fam = after[name]
        assert fam.type == "histogram"
        buckets = [s for s in fam.samples if s.name == name + "_bucket"]
        counts = [s.value for s in buckets]
        assert counts == sorted(counts) and buckets[-1].labels["le"] == "+Inf"
        assert counts[-1] == value(after, name, name + "_count")
        assert value(after, name, name + "_sum") > 0
    assert grew("rtseg_ingest_latency_seconds", "rtseg_ingest_latency_seconds_count") == 2
    assert grew("rtseg_ingest_to_delta_latency_seconds",
                "rtseg_ingest_to_delta_latency_seconds_count") == 2
    # the lag probe has run since the server started (every 10 ms)
    assert value(after, "rtseg_event_loop_lag_seconds", "rtseg_event_loop_lag_seconds_count") > 0
    stats = client.stats()
    assert value(after, "rtseg_users") == stats["users"]
    assert value(after, "rtseg_shards") == 2
    assert value(after, "rtseg_queue_ops") == 0
    assert value(after, "rtseg_subscribers") >= 0
    lag_max = value(after, "rtseg_subscriber_lag_max_deltas")
    assert 0 <= lag_max <= value(after, "rtseg_subscriber_lag_deltas") + lag_max
    assert lag_max <= value(after, "rtseg_deltas", "rtseg_deltas_total")
    assert value(after, "rtseg_shard_users", shard="0") + value(after, "rtseg_shard_users", shard="1") \
        == stats["users"]
    assert value(after, "rtseg_log_fsyncs", "rtseg_log_fsyncs_total") > 0     # --data-dir: a log
    assert value(after, "rtseg_log_fsync_latency_seconds", quantile="0.99") > 0
    assert value(after, "rtseg_log_written_bytes", "rtseg_log_written_bytes_total") > 0


@pytest.mark.ray
def test_token_guards_every_endpoint(server):
    url = server.console
    for path in ("/", "/metrics", "/api/segments", "/api/live", "/api/info", "/api/models"):
        assert http("GET", url + path, token=None)[0] == 401, path
        assert http("GET", url + path, token="wrong")[0] == 401, path
    assert http("POST", url + "/api/segments", {"name": "x", "expression": "true"},
                token=None)[0] == 401
    assert http("DELETE", url + "/api/segments/x", token=None)[0] == 401
    status, ctype, body = http("GET", url + "/", token=None)
    assert "text/html" in ctype and b"token" in body                # the token form
    # the query token: on the page and the event stream only
    status, ctype, body = http("GET", f"{url}/?token={TOKEN}", token=None)
    assert status == 200 and b"rtseg console" in body and b"drawChart" in body
    assert http("GET", f"{url}/api/segments?token={TOKEN}", token=None)[0] == 401
    assert http("GET", f"{url}/metrics?token={TOKEN}", token=None)[0] == 401
    req = urllib.request.Request(f"{url}/api/live?token={TOKEN}")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")


@pytest.mark.ray
def test_json_endpoints(server, client):
    url = server.console
    status, _, body = http("POST", url + "/api/segments",
                           {"name": "j_seg", "expression": "count(view, 1d) >= 1",
                            "description": "viewed"})
    assert status == 201, body
    seg = json.loads(body)
    assert (seg["name"], seg["version"], seg["description"]) == ("j_seg", 1, "viewed")
    client.ingest(views("j", 6, t0=T0 + 1000))
    listed = {s["name"]: s for s in get_json(url + "/api/segments")}
    assert listed["j_seg"]["size"] == client.get_segment("j_seg").size >= 6
    assert get_json(url + "/api/segments/j_seg")["expression"] == "count(view, 1d) >= 1"
    status, _, body = http("POST", url + "/api/segments", {"name": "j_seg", "expression": "true"})
    assert status == 409 and json.loads(body)["error"]["type"] == "SegmentExists"
    # an expression error carries line and column
    status, _, body = http("POST", url + "/api/preview", {"expression": "count(view, 1d) >= 1 and\n  count(view, 48) >= 1"})
    err = json.loads(body)["error"]
    assert status == 400 and err["type"] == "ExpressionError"
    with pytest.raises(Exception) as truth:
        client.preview_segment("count(view, 1d) >= 1 and\n  count(view, 48) >= 1")
    assert (err["line"], err["col"]) == (truth.value.line, truth.value.col) and err["line"] == 2
    assert err["text"].startswith(f"{err['line']}:{err['col']}: ")
    status, _, body = http("POST", url + "/api/segments", {"name": "j_bad", "expression": "count(view"})
    assert status == 400 and "line" in json.loads(body)["error"]
    # preview: reach and sample members
    prev = json.loads(http("POST", url + "/api/preview",
                              {"expression": "count(view, 1d) >= 1", "sample": 3})[2])
    size, sample = client.preview_segment("count(view, 1d) >= 1", 3)
    assert prev["ok"] and (prev["size"], prev["sample"]) == (size, sample) and len(sample) == 3
    # replace, history, user, models, goals, delete
    status, _, body = http("PUT", url + "/api/segments/j_seg", {"expression": "count(view, 1d) >= 2"})
    assert status == 200 and json.loads(body)["version"] == 2
    assert json.loads(body)["description"] == "viewed"
    hist = get_json(url + "/api/segments/j_seg/history")
    assert hist["name"] == "j_seg" and isinstance(hist["samples"], list) and hist["interval_ms"] > 0
    user = get_json(url + "/api/user?id=j1")
    assert user["known"] and "j_seg" not in user["segments"] and user["traits"] == {}
    client.set_traits("j1", {"country": "TR"})
    assert get_json(url + "/api/user?id=j1")["traits"] == {"country": "TR"}
    assert get_json(url + "/api/user?id=nobody")["known"] is False
    assert http("GET", url + "/api/user")[0] == 400
    assert get_json(url + "/api/models") == []
    assert http("GET", url + "/api/models/nope")[0] == 404
    assert get_json(url + "/api/goals") == []
    assert http("GET", url + "/api/goals/nope")[0] == 404
    assert http("DELETE", url + "/api/segments/j_seg")[0] == 200
    assert http("GET", url + "/api/segments/j_seg")[0] == 404
    assert http("GET", url + "/api/segments/j_seg/history")[0] == 404
    info = get_json(url + "/api/info")
    assert info["clock"] == "event" and info["shards"] == 2 and info["target"] == server.target


class EventStream:
    """The console's Server-Sent Events, read in a thread: ``pushes`` fills as they come."""

    def __init__(self, url: str):
        self.pushes: list = []
        self._resp = urllib.request.urlopen(f"{url}/api/live?token={TOKEN}", timeout=60)
        self._pool = concurrent.futures.ThreadPoolExecutor(1)
        self._fut = self._pool.submit(self._read)

    def _read(self) -> None:
        event = None
        for raw in self._resp:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "sizes":
                self.pushes.append(json.loads(line[6:]))

    def close(self) -> None:
        try:
            self._resp.fp.raw._sock.shutdown(socket.SHUT_RDWR)   # unblocks the reader
        except (AttributeError, OSError):
            pass
        self._resp.close()
        self._pool.shutdown(wait=False)


@pytest.mark.ray
def test_live_sizes_are_pushed(server, client):
    client.create_segment("s_live", "count(ping, 1d) >= 1")
    stream = EventStream(server.console)
    try:
        wait_until(lambda: stream.pushes, timeout_s=30)            # the first push: now
        assert stream.pushes[0]["sizes"]["s_live"] == 0
        client.ingest(views("s", 9, t0=T0 + 5000, type="ping"))
        wait_until(lambda: stream.pushes[-1]["sizes"]["s_live"] == 9, timeout_s=30)
    finally:
        stream.close()
    first, last = stream.pushes[0], stream.pushes[-1]
    assert last["sequence"] >= first["sequence"] + 9 and last["now_ms"] >= T0 + 5000


# ----------------------------------------------------------------------------- side cases


@pytest.mark.ray
def test_taken_console_port_costs_a_warning_only(tmp_path_factory):
    from engine.client import Client

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        srv = start_server(tmp_path_factory, "--shards", "1", "--console-port", str(port))
        try:
            with Client(srv.target, timeout_s=60) as c:
                assert c.health() == "SERVING"
                assert c.create_segment("still", "true").name == "still"
            assert wait_until(lambda: "web console is not served" in srv.stderr_tail(200),
                              timeout_s=30)
        finally:
            assert srv.stop() == 0, srv.stderr_tail()
    finally:
        taken.close()


@pytest.mark.ray
def test_standalone_console_against_a_remote_server(server, client):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTSEG_")}
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "console", "--target",
                             server.target, "--token", TOKEN, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        url = read_console_url(proc)
        client.create_segment("r_seg", "count(remote_ping, 1d) >= 1")
        client.ingest(views("r", 4, t0=T0 + 9000, type="remote_ping"))
        fams = scrape(url)
        stats = client.stats()
        assert value(fams, "rtseg_events_accepted", "rtseg_events_accepted_total") \
            == stats["events_accepted"]
        assert value(fams, "rtseg_segment_size", segment="r_seg") == 4
        assert value(fams, "rtseg_ingest_latency_window_seconds", quantile="0.99") > 0
        # GetStats carries the loop's lag too: max >= p99 over the probes so far
        assert value(fams, "rtseg_event_loop_lag_window_seconds", quantile="1") \
            >= value(fams, "rtseg_event_loop_lag_window_seconds", quantile="0.99") >= 0
        assert value(fams, "rtseg_log_fsync_latency_seconds", quantile="0.99") >= 0
        assert {s["name"] for s in get_json(url + "/api/segments")} >= {"r_seg"}
        assert http("GET", url + "/api/segments", token=None)[0] == 401
    finally:
        proc.terminate()
        try:
            assert proc.wait(30) == 0, proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            proc.stderr.close()


@pytest.mark.ray
def test_model_scoring_time_is_counted_per_shard(server, client):
    from tests.test_models_engine import tanh_logistic_onnx

    def scored(fams):
        fam = fams["rtseg_model_scored_rows"]
        rows = sum(s.value for s in fam.samples if s.name == "rtseg_model_scored_rows_total")
        secs = sum(s.value for s in fams["rtseg_model_scoring_seconds"].samples
                   if s.name == "rtseg_model_scoring_seconds_total")
        return rows, secs

    onnx, _ = tanh_logistic_onnx(1, seed=2, scale=[0.01])
    client.deploy_model("web_m", onnx, ["count(view, 1d)"])
    rows0, secs0 = scored(scrape(server.console))
    client.ingest(views("sc", 25, per_user=2))                  # 25 users whose feature moved
    rows1, secs1 = scored(scrape(server.console))
    assert rows1 - rows0 >= 25 and secs1 > secs0
    client.delete_model("web_m")
