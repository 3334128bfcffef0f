"""End to end through gRPC: ``rtseg serve`` in its own process, a producer in another, a
subscriber attached.

    python -m bench.e2e [--users 20000] [--events 1000000] [--shards 1 2 4] [--quick]

prints one JSON object (progress on stderr). The suite (bench/suite.py) calls ``run_server``.

How it measures:

* ``ServeProcess`` starts ``rtseg serve --port 0 --clock event --allow-reset`` on 127.0.0.1
  in a new session and reads the port from its ready line; it is always stopped (SIGTERM,
  then SIGKILL of its process group) on exit, also on error.
* A **producer process** (``python -m bench.e2e --produce SPEC``) builds its batches from the
  seeded workload, serialises them *before* the clock starts, then sends them with
  ``Ingest`` (columnar ``EventBatch``) as fast as it can (saturation, a few requests in
  flight) or paced to an offered load (open loop: a batch is sent at its due time whatever
  the replies; at most ``MAX_IN_FLIGHT`` outstanding). It writes what it sent and when.
* **Latency probes**: every batch carries ``PROBES_PER_BATCH`` fresh users with three
  ``view_product`` events at the batch's largest timestamp (so the clock does not move), so
  that each enters ``window_shoppers`` because of exactly that batch. The subscriber (a
  thread here, ``Client.subscribe`` to every segment) notes when each probe's ENTER
  arrives; ingest-to-delta latency = arrival - the moment the producer handed the batch to
  gRPC (both ``CLOCK_MONOTONIC``, one machine). Probe users are left out of every membership
  comparison; they only ever view.
* Throughput = events accepted / (last reply - first send), as the producer saw it.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import numpy as np  # noqa: E402

from bench.workload import ONE_SEGMENT, ONE_SEGMENT_NAME, SEGMENTS, Batch, Workload, WorkloadConfig  # noqa: E402

READY_LINE = "rtseg serving on"
PROBE_PREFIX = "~p"
PROBES_PER_BATCH = 2
MAX_IN_FLIGHT = 64
SATURATION_IN_FLIGHT = 4
INGEST_METHOD = "/rtseg.v1.SegmentEngine/Ingest"
DELTA_GRACE_S = 5.0
TRAIT_CHUNK = 20_000


def _log(msg: str) -> None:
    print(f"[bench e2e {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def percentiles_ms(lat_ns) -> dict:
    a = np.asarray(lat_ns, dtype=np.float64) / 1e6
    if not len(a):
        return {"samples": 0, "p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None}
    p50, p99, p999 = np.percentile(a, [50, 99, 99.9])
    return {"samples": int(len(a)), "p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3),
            "p999_ms": round(float(p999), 3), "max_ms": round(float(a.max()), 3)}


# --------------------------------------------------------------------------- the server


class ServeProcess:
    """``rtseg serve`` on 127.0.0.1 and a free port, in its own process group."""

    def __init__(self, shards: int, clock: str = "event", env: dict | None = None,
                 start_timeout_s: float = 180.0, extra_args: tuple = ()):
        self.shards = shards
        self.clock = clock
        self.env = env
        self.start_timeout_s = start_timeout_s
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen | None = None
        self.target = ""
        self.started_ns = 0
        self.ready_ns = 0
        self._dir: tempfile.TemporaryDirectory | None = None
        self._lines: list[str] = []

    def __enter__(self) -> "ServeProcess":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="rtseg-bench-serve-")
        log = open(os.path.join(self._dir.name, "serve.log"), "w")
        cmd = [sys.executable, "-c", "import sys; from engine.cli import main; sys.exit(main(sys.argv[1:]))",
               "serve", "--host", "127.0.0.1", "--port", "0", "--shards", str(self.shards),
               "--clock", self.clock, "--data-dir", os.path.join(self._dir.name, "data"),
               "--allow-reset", *self.extra_args]
        if "--console-port" not in self.extra_args:   # side by side: none takes 8080
            cmd.append("--no-console")
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        self.started_ns = time.monotonic_ns()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env, text=True,
                                     start_new_session=True)
        log.close()
        found = threading.Event()

        def read():
            for line in self.proc.stdout:
                self._lines.append(line.rstrip())
                if line.startswith(READY_LINE) and not found.is_set():
                    self.target = line[len(READY_LINE):].split()[0]
                    self.ready_ns = time.monotonic_ns()
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + self.start_timeout_s
        while not found.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rtseg serve did not become ready (exit code {self.proc.poll()}):\n"
                                   + self.log_tail())
        from engine.client import Client

        with Client(self.target, wait_ready_s=60):
            pass

    def log_tail(self, chars: int = 3000) -> str:
        text = "\n".join(self._lines)
        if self._dir is not None:
            try:
                with open(os.path.join(self._dir.name, "serve.log")) as f:
                    text += "\n" + f.read()
            except OSError:
                pass
        return text[-chars:]

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
            try:  # whatever it started in its group (Ray's processes) goes too
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            if proc.stdout is not None:
                proc.stdout.close()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


# --------------------------------------------------------------------------- the subscriber


class Subscriber:
    """A thread iterating ``Client.subscribe`` (every segment); notes probe ENTER arrivals."""

    def __init__(self, target: str, segments=()):
        from engine.client import Client

        self.client = Client(target)
        self.sub = self.client.subscribe(list(segments))
        self.arrivals: dict[str, int] = {}
        self.deltas = 0
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            for d in self.sub:
                self.deltas += 1
                if d.kind == "ENTER" and d.user_id.startswith(PROBE_PREFIX):
                    # the first ENTER is the latency (a probe may enter several segments)
                    self.arrivals.setdefault(d.user_id, time.monotonic_ns())
        except Exception as err:  # noqa: BLE001 - reported in the JSON
            self.error = f"{type(err).__name__}: {err}"

    def start(self, stats_client) -> "Subscriber":
        before = int(stats_client.stats().get("subscribers", 0))
        self._thread.start()
        from bench.baselines import wait_until

        wait_until(lambda: int(stats_client.stats().get("subscribers", 0)) > before, 10.0, 0.02)
        return self

    def wait_for(self, probes, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        missing = [p for p in probes if p not in self.arrivals]
        while missing and time.monotonic() < deadline:
            time.sleep(0.02)
            missing = [p for p in missing if p not in self.arrivals]

    def stop(self) -> None:
        self.sub.close()
        self._thread.join(timeout=10)
        self.client.close()


# --------------------------------------------------------------------------- the producer


def add_probes(b: Batch, tag: str, index: int, k: int = PROBES_PER_BATCH) -> tuple[dict, list[str]]:
    """The batch's columns plus ``k`` probe users (3 views each at the batch's largest time)."""
    cols = b.columns()
    if k <= 0 or not len(b):
        return cols, []
    ts = int(b.timestamp_ms.max())
    probes = [f"{PROBE_PREFIX}{tag}.{index}.{j}" for j in range(k)]
    n = 3 * k
    extra_users = np.array([p for p in probes for _ in range(3)], dtype=object)
    cols["user_id"] = np.concatenate([cols["user_id"], extra_users])
    cols["type"] = np.concatenate([cols["type"], np.full(n, "view_product", dtype=object)])
    cols["timestamp_ms"] = np.concatenate([cols["timestamp_ms"], np.full(n, ts, dtype=np.int64)])
    cols["value"] = np.concatenate([cols["value"], np.zeros(n)])
    cols["properties"] = {name: np.concatenate([col, np.full(n, None, dtype=object)])
                          for name, col in cols["properties"].items()}
    return cols, probes


def _synthetic_batches(spec: dict):
    cfg = WorkloadConfig(**spec["workload"])
    w = Workload(cfg)
    rate = float(spec.get("rate", 0))
    offset = 0.0
    for b in w.batches(int(spec["batch"]), start=int(spec["start"]), stop=int(spec["stop"])):
        yield (offset if rate > 0 else None), b
        offset += len(b) / rate if rate > 0 else 0.0


def _batches_for(spec: dict):
    if spec["kind"] == "synthetic":
        return _synthetic_batches(spec)
    if spec["kind"] == "retail":
        from bench.replay import paced_batches

        return paced_batches(spec)
    raise ValueError(f"unknown producer source {spec['kind']!r}")


def produce(spec: dict) -> dict:
    """Run in the producer process: build, serialise, send; returns the send log."""
    import grpc

    from engine._pb import pb
    from engine.server import _codec as codec

    tag = spec.get("tag", "x")
    probes_per_batch = int(spec.get("probes", PROBES_PER_BATCH))
    prepared = []  # (due offset s or None, events, serialised request, probes)
    for i, (offset, b) in enumerate(_batches_for(spec)):
        if not len(b):
            continue
        cols, probes = add_probes(b, tag, i, probes_per_batch)
        if spec.get("wall"):              # a wall-clock server stamps them on arrival
            cols["timestamp_ms"] = np.zeros(len(cols["timestamp_ms"]), np.int64)
        msg = codec.encode_columns(cols["user_id"], cols["type"], cols["timestamp_ms"], cols["value"],
                                   cols["properties"])
        prepared.append((offset, len(cols["user_id"]), pb.EventBatch(columns=msg).SerializeToString(), probes))
    channel = grpc.insecure_channel(spec["target"], [("grpc.max_send_message_length", 256 << 20),
                                                     ("grpc.max_receive_message_length", 256 << 20)])
    ingest = channel.unary_unary(INGEST_METHOD, request_serializer=None,
                                 response_deserializer=pb.IngestReply.FromString)
    grpc.channel_ready_future(channel).result(timeout=30)
    paced = any(p[0] is not None for p in prepared)
    max_in_flight = MAX_IN_FLIGHT if paced else int(spec.get("in_flight", SATURATION_IN_FLIGHT))
    lock = threading.Lock()
    done = {"accepted": 0, "rejected": 0, "errors": [], "last_reply_ns": 0, "replies": 0}
    slots = threading.Semaphore(max_in_flight)

    def on_reply(fut):
        now = time.monotonic_ns()
        try:
            r = fut.result()
            with lock:
                done["accepted"] += r.accepted
                done["rejected"] += len(r.rejections)
        except Exception as err:  # noqa: BLE001 - reported
            with lock:
                if len(done["errors"]) < 5:
                    done["errors"].append(f"{type(err).__name__}: {err}"[:500])
        with lock:
            done["replies"] += 1
            done["last_reply_ns"] = max(done["last_reply_ns"], now)
        slots.release()

    probe_sent: dict[str, int] = {}
    late_sends = 0
    timeout_s = float(spec.get("timeout_s", 300))
    t_start = time.monotonic_ns()
    for offset, n, req, probes in prepared:
        if offset is not None:
            due = t_start + int(offset * 1e9)
            wait = (due - time.monotonic_ns()) / 1e9
            if wait > 0:
                time.sleep(wait)
            elif wait < -0.001:
                late_sends += 1
        if not slots.acquire(timeout=timeout_s):
            done["errors"].append("no reply within the time-out: gave up")
            break
        sent_ns = time.monotonic_ns()
        fut = ingest.future(req, timeout=timeout_s)
        for p in probes:
            probe_sent[p] = sent_ns
        fut.add_done_callback(on_reply)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # bounded wait for the outstanding replies
        with lock:
            if done["replies"] >= len(prepared) or done["errors"]:
                break
        time.sleep(0.002)
    channel.close()
    return {"batches": len(prepared), "events": int(sum(p[1] for p in prepared)),
            "accepted": done["accepted"], "rejected": done["rejected"], "errors": done["errors"],
            "t_start_ns": t_start, "t_end_ns": done["last_reply_ns"], "late_sends": late_sends,
            "in_flight": max_in_flight, "probes": probe_sent,
            "offered_events_per_s": spec.get("rate") or None}


def run_producer(spec: dict, timeout_s: float = 600.0) -> dict:
    """Start the producer process on ``spec``, wait for it (bounded), return its log."""
    with tempfile.TemporaryDirectory(prefix="rtseg-bench-prod-") as d:
        spec = dict(spec, out=os.path.join(d, "out.json"))
        spec_path = os.path.join(d, "spec.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        proc = subprocess.Popen([sys.executable, "-m", "bench.e2e", "--produce", spec_path],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError("the producer did not finish in time") from None
        if proc.returncode != 0:
            raise RuntimeError(f"the producer failed ({proc.returncode}):\n{err[-2000:]}")
        with open(spec["out"]) as f:
            return json.load(f)


def measure(target: str, sub: Subscriber, spec: dict) -> dict:
    """One producer run with the subscriber attached: throughput and probe latencies."""
    log = run_producer(dict(spec, target=target))
    probes = log.pop("probes")
    sub.wait_for(list(probes), DELTA_GRACE_S)
    lat = [sub.arrivals[p] - t for p, t in probes.items() if p in sub.arrivals]
    elapsed = max(log["t_end_ns"] - log["t_start_ns"], 1) / 1e9
    out = {k: log[k] for k in ("batches", "events", "accepted", "rejected", "late_sends", "in_flight",
                               "offered_events_per_s")}
    out.update(seconds=round(elapsed, 3), events_per_s=round(log["accepted"] / elapsed, 1),
               probes_sent=len(probes), probes_lost=len(probes) - len(lat), latency=percentiles_ms(lat))
    if log["errors"]:
        out["errors"] = log["errors"]
    return out


# --------------------------------------------------------------------------- one server


@dataclass
class E2EPlan:
    workload: WorkloadConfig
    sustained_events: int = 200_000
    sustained_batch: int = 10_000
    loads: tuple = (5_000, 20_000, 50_000, 100_000)
    load_seconds: float = 2.0
    curve: bool = True
    one_segment: bool = True
    check_membership: bool = True
    backfill: bool = True
    first_delta: bool = False
    scenarios: tuple = ("segments20", "one_segment")
    extra: dict = field(default_factory=dict)


def _workload_spec(cfg: WorkloadConfig) -> dict:
    return {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}


def _batch_for(rate: float) -> int:
    """About 200 batches a second, at least 20 events each."""
    return int(min(20_000, max(20, rate / 200)))


def first_delta_s(srv: ServeProcess) -> float:
    """Seconds from the server process's start to the first delta a subscriber receives."""
    from engine.client import Client

    with Client(srv.target, wait_ready_s=60) as c:
        t0 = 1_700_006_400_000
        c.advance_clock(t0)
        c.create_segment("startup_probe", "count(view_product, 1h) >= 1")
        got = threading.Event()
        sub = c.subscribe(["startup_probe"])

        def read():
            for _ in sub:
                got.set()
                return

        th = threading.Thread(target=read, daemon=True)
        th.start()
        c.ingest_columns(["s1"], ["view_product"], [t0 + 1])
        got.wait(120)
        end = time.monotonic_ns()
        sub.close()
        th.join(5)
        c.reset()
        if not got.is_set():
            raise RuntimeError("no delta within 120 s of the first ingest")
        return (end - srv.started_ns) / 1e9


def load_traits(c, w: Workload) -> None:
    """Every user's traits of the workload, in chunks of ``TRAIT_CHUNK``."""
    cols = w.trait_columns()
    names = list(cols)
    ids = w.user_ids
    for a in range(0, len(ids), TRAIT_CHUNK):
        sl = slice(a, a + TRAIT_CHUNK)
        lists = [cols[k][sl].tolist() for k in names]
        c.set_traits_many([(uid, {k: col[i] for k, col in zip(names, lists) if col[i] is not None}, None)
                           for i, uid in enumerate(ids[sl].tolist())])


def _prepare(c, w: Workload, scenario: str) -> dict:
    """Reset the server, set the clock, traits (20 segments only) and segments."""
    c.reset(clock="event", retention="30d")
    c.advance_clock(w.config.start_ms)
    t0 = time.perf_counter()
    if scenario == "segments20":
        load_traits(c, w)
        for name, text in SEGMENTS.items():
            c.create_segment(name, text)
    c.create_segment(ONE_SEGMENT_NAME, ONE_SEGMENT)
    return {"setup_s": round(time.perf_counter() - t0, 3)}


def _check_membership(c, w: Workload, stop: int) -> dict:
    """The served ``window_shoppers`` (minus probes) against the in-process engine on the same
    events."""
    from bench.baselines import mismatch, run_rtseg

    served = {u for u in c.members(ONE_SEGMENT_NAME) if not u.startswith(PROBE_PREFIX)}
    eng, _, _ = run_rtseg(w.batches(50_000, stop=stop), {ONE_SEGMENT_NAME: ONE_SEGMENT}, w.config.start_ms)
    local = eng.members(ONE_SEGMENT_NAME)
    bad = mismatch(local, served)
    return {"membership_equal": bad is None, "members": len(local), **({"mismatch": bad} if bad else {})}


def run_scenario(srv: ServeProcess, w: Workload, plan: E2EPlan, scenario: str, curve: bool,
                 say=_log) -> dict:
    """One scenario on a running server; on error, what was measured so far plus the error."""
    out: dict = {"scenario": scenario, "segments": (len(SEGMENTS) + 1) if scenario == "segments20" else 1}
    try:
        _scenario(srv, w, plan, scenario, curve, say, out)
    except Exception as err:  # noqa: BLE001 - reported in the JSON, the suite goes on
        out["error"] = f"{type(err).__name__}: {err}"
        out["traceback"] = traceback.format_exc()[-3000:]
        out["server_log"] = srv.log_tail(1500)
        say(f"  {scenario} failed: {str(err)[:300]}")
    return out


def _failed(m: dict) -> str | None:
    """The first error of a measurement, when nothing got through."""
    return (m.get("errors") or [None])[0] if not m.get("accepted") else None


def _scenario(srv: ServeProcess, w: Workload, plan: E2EPlan, scenario: str, curve: bool, say, out: dict) -> None:
    from engine.client import Client

    with Client(srv.target, wait_ready_s=60, timeout_s=600) as c:
        out.update(_prepare(c, w, scenario))
        sub = Subscriber(srv.target).start(c)
        try:
            wspec = _workload_spec(w.config)
            pos = 0
            stop = min(plan.sustained_events, w.config.events)
            say(f"  {scenario}: sustained, {stop:,} events, batches of {plan.sustained_batch:,}")
            out["sustained"] = measure(srv.target, sub, {
                "kind": "synthetic", "workload": wspec, "start": pos, "stop": stop,
                "batch": plan.sustained_batch, "rate": 0, "tag": f"{scenario[0]}s"})
            if _failed(out["sustained"]):
                raise RuntimeError(f"sustained run failed: {_failed(out['sustained'])}")
            say(f"  {scenario}: {out['sustained']['events_per_s']:,.0f} events/s"
                + (f" ({len(out['sustained']['errors'])}+ failed requests)" if out["sustained"].get("errors") else ""))
            pos = stop
            if curve:
                out["curve"] = []
                for rate in plan.loads:
                    n = int(rate * plan.load_seconds)
                    if pos + n > w.config.events:
                        out["curve"].append({"offered_events_per_s": rate, "skipped": "workload exhausted"})
                        continue
                    say(f"  {scenario}: offered {rate:,} events/s for {plan.load_seconds} s")
                    m = measure(srv.target, sub, {
                        "kind": "synthetic", "workload": wspec, "start": pos, "stop": pos + n,
                        "batch": _batch_for(rate), "rate": rate, "tag": f"{scenario[0]}{rate}"})
                    m["batch"] = _batch_for(rate)
                    out["curve"].append(m)
                    pos += n
                    if _failed(m):
                        raise RuntimeError(f"offered {rate:,}/s: every request failed: {_failed(m)}")
                    lat = m["latency"]
                    say(f"    achieved {m['events_per_s']:,.0f}/s, p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms")
            out["events_streamed"] = pos
            if plan.backfill:
                t0 = time.perf_counter()
                c.create_segment("backfill_probe", "count(add_to_cart, 24h) >= 2 and count(view_product, 24h) >= 1")
                out["backfill_ms"] = round((time.perf_counter() - t0) * 1000, 2)
                out["backfill_users"] = int(c.stats().get("users", 0))
                c.delete_segment("backfill_probe")
            out["deltas_received"] = sub.deltas
            if sub.error:
                out["subscriber_error"] = sub.error
            try:
                st = c.stats()
                out["server_stats"] = {k: st.get(k) for k in ("users", "events", "ingest_latency", "round_latency")}
                out["server_memory_bytes"] = int(sum(s.get("memory_bytes", 0) for s in st.get("shard_stats", [])))
            except Exception as err:  # noqa: BLE001 - informative only
                out["server_stats_error"] = str(err)
        finally:
            sub.stop()
        if plan.check_membership:
            out.update(_check_membership(c, w, pos))


def timer_accuracy(srv: ServeProcess, users: int = 300, window_s: int = 2, spread_s: float = 2.0) -> dict:
    """Wall clock: EXIT deltas of a window running out, against their due time."""
    from engine.client import Client

    with Client(srv.target, wait_ready_s=60) as c:
        c.reset(clock="wall", retention="30d")
        c.create_segment("timer_probe", f"count(view_product, {window_s}s) >= 1")
        exits: dict[str, int] = {}
        sub = c.subscribe(["timer_probe"])

        def read():
            for d in sub:
                if d.kind == "EXIT":
                    exits[d.user_id] = time.time_ns()

        th = threading.Thread(target=read, daemon=True)
        th.start()
        now_ms = time.time_ns() // 1_000_000
        offsets = np.linspace(0, spread_s * 1000, users).astype(np.int64)
        ids = [f"t{i}" for i in range(users)]
        ts = now_ms - window_s * 1000 + 500 + offsets  # due = ts + window: 0.5 s .. 0.5 + spread s away
        # sent one by one, ordered by due time, so each due time is in the future when it lands
        for a in range(0, users, 50):
            c.ingest_columns(ids[a:a + 50], ["view_product"] * len(ids[a:a + 50]), ts[a:a + 50])
        due = {u: int(t) + window_s * 1000 for u, t in zip(ids, ts.tolist())}
        deadline = time.monotonic() + spread_s + 10
        while len(exits) < users and time.monotonic() < deadline:
            time.sleep(0.05)
        sub.close()
        th.join(5)
        delays = [(exits[u] / 1e6 - due[u]) for u in ids if u in exits]
        c.reset(clock="event")
    a = np.asarray(delays)
    res = {"users": users, "exits_received": len(delays), "window_s": window_s}
    if len(a):
        res.update(p50_ms=round(float(np.percentile(a, 50)), 2), p99_ms=round(float(np.percentile(a, 99)), 2),
                   max_ms=round(float(a.max()), 2), min_ms=round(float(a.min()), 2))
    return res


def run_server(shards: int, w: Workload, plan: E2EPlan, curve: bool, extras=(), say=_log) -> dict:
    """Start a server with ``shards`` shards, run the scenarios (and ``extras``: callables
    taking the ServeProcess, by name), stop it. Errors are reported, never raised."""
    out: dict = {"shards": shards}
    try:
        with ServeProcess(shards) as srv:
            out["start_to_ready_s"] = round((srv.ready_ns - srv.started_ns) / 1e9, 2)
            say(f"server with {shards} shard(s) ready at {srv.target} in {out['start_to_ready_s']} s")
            if plan.first_delta:
                try:
                    out["start_to_first_delta_s"] = round(first_delta_s(srv), 2)
                except Exception as err:  # noqa: BLE001
                    out["start_to_first_delta_error"] = f"{type(err).__name__}: {err}"
            for scenario in plan.scenarios:
                out[scenario] = run_scenario(srv, w, plan, scenario, curve and scenario == "segments20", say)
            for name, fn in extras:
                try:
                    out[name] = fn(srv)
                except Exception as err:  # noqa: BLE001
                    out[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:]}
                    say(f"  {name} failed: {err}")
    except Exception as err:  # noqa: BLE001 - the service may not be functional
        out["error"] = f"{type(err).__name__}: {err}"
        out["traceback"] = traceback.format_exc()[-3000:]
        say(f"server with {shards} shard(s) failed: {err}")
    return out


def cold_start(env_overrides: dict | None = None) -> dict:
    """Process start to first delta with an empty NUMBA_CACHE_DIR (JIT included)."""
    with tempfile.TemporaryDirectory(prefix="rtseg-numba-cold-") as d:
        env = dict(os.environ, NUMBA_CACHE_DIR=d, **(env_overrides or {}))
        try:
            with ServeProcess(1, env=env, start_timeout_s=900) as srv:
                ready = (srv.ready_ns - srv.started_ns) / 1e9
                return {"start_to_ready_s": round(ready, 2), "start_to_first_delta_s": round(first_delta_s(srv), 2),
                        "numba_cache": "empty (fresh NUMBA_CACHE_DIR)"}
        except Exception as err:  # noqa: BLE001
            return {"error": f"{type(err).__name__}: {err}"}


# --------------------------------------------------------------------------- command line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n\n")[0])
    p.add_argument("--produce", metavar="SPEC", help=argparse.SUPPRESS)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--events", type=int, default=1_000_000, help="workload size (positions available)")
    p.add_argument("--sustained-events", type=int, default=200_000)
    p.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--loads", type=int, nargs="+", default=[5_000, 20_000, 50_000, 100_000])
    p.add_argument("--load-seconds", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    if a.produce:
        with open(a.produce) as f:
            spec = json.load(f)
        log = produce(spec)
        with open(spec["out"], "w") as f:
            json.dump(log, f)
        return 0
    w = Workload(WorkloadConfig(users=a.users, events=a.events, seed=a.seed))
    plan = E2EPlan(w.config, sustained_events=a.sustained_events, loads=tuple(a.loads), load_seconds=a.load_seconds)
    res = [run_server(n, w, plan, curve=True) for n in a.shards]
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
