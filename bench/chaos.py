"""Durability under faults (issue 9): what the write-ahead log costs, how long recovery takes,
and whether anything acknowledged is lost when processes are killed.

    python -m bench.chaos [--users 1000000] [--events 20000000] [--cost-users 200000]
                          [--cost-events 4000000] [--batch 100000] [--kills 3]
                          [--shard-kills 2] [--quick] [--skip-faults] [--out FILE]

prints one JSON object on stdout (progress on stderr). Not part of the default test run.

1. **cost** (in process, one core, steady burst at saturation): the bench workload
   (bench/workload.py, the 20 ``SEGMENTS``) through ``Engine.ingest_columns`` in batches of
   ``--batch``, into four engines **in lockstep**: each batch goes to an engine without a
   data dir, then to ones with ``fsync="never"``, ``"interval"`` (the default, 10 ms) and
   ``"always"``, in an order that rotates every batch, each call timed; so the machine's other
   load falls on all four alike. events/s = events / the engine's summed call time; the cost
   of durability is 1 - (events/s with the policy) / (events/s of ``never``), and against no
   log at all. Log bytes per event from the log's own counter.
2. **recovery** (in process): an engine with a data dir gets ``--users`` / ``--events`` (the
   stream's first 95 %), writes a snapshot (timed), gets the last 5 % (the log after the
   snapshot) and is abandoned without closing, as a crash would leave it. A new ``Engine`` on
   the same dir is timed: restore the snapshot + replay the log tail. Its membership of every
   segment is compared with the abandoned engine's.
3. **faults** (real processes): ``rtseg serve --shards 2 --clock event`` with a data dir; a
   producer sends the workload in batches with batch ids and waits for each reply; the server
   is killed with SIGKILL ``--kills`` times at random moments (a batch in flight each time,
   retried after the restart with its id), and a shard actor ``--shard-kills`` times. At the
   end, the server's retained events and segment sizes are compared with an embedded engine
   fed every acknowledged batch once: ``events_lost`` must be 0 (a negative number would be
   duplicates). Restart time is from the kill to the new server's ready line (Ray included).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from bench import emit_json  # noqa: E402
from bench.core_bench import _trait_updates  # noqa: E402
from bench.workload import SEGMENTS, Workload, WorkloadConfig  # noqa: E402

POLICIES = ("none", "never", "interval", "always")
TRAIT_CHUNK = 50_000          # trait updates per SetTraits (a message stays far below 64 MB)


def prepare(target, w: Workload, rows: np.ndarray, segments: dict[str, str]) -> None:
    """Clock to the stream start, every user's traits (in chunks), the segments."""
    target.advance_clock(w.config.start_ms)
    updates = _trait_updates(w, rows)
    for k in range(0, len(updates), TRAIT_CHUNK):
        target.set_traits_many(updates[k:k + TRAIT_CHUNK])
    for name, text in segments.items():
        target.create_segment(name, text)


def _log(msg: str) -> None:
    print(f"[chaos] {msg}", file=sys.stderr, flush=True)


def _engine(data_dir, fsync="interval"):
    from engine import Engine

    return Engine(clock="event", retention="30d", data_dir=data_dir, fsync=fsync,
                  snapshot_interval=0, rescore_interval=0)


# ----------------------------------------------------------------------------- 1. cost

def run_cost(users: int, events: int, batch: int) -> dict:
    w = Workload(WorkloadConfig(users=users, events=events))
    rows = np.arange(users)
    tmp = tempfile.mkdtemp(prefix="rtseg-chaos-cost-")
    engines = {}
    for p in POLICIES:
        engines[p] = _engine(None if p == "none" else os.path.join(tmp, p), "interval" if p == "none" else p)
        prepare(engines[p], w, rows, SEGMENTS)
    spent = dict.fromkeys(POLICIES, 0.0)
    n = 0
    for k, b in enumerate(w.batches(batch)):
        cols = b.columns()
        order = POLICIES[k % 4:] + POLICIES[:k % 4]
        for p in order:
            t0 = time.perf_counter()
            engines[p].ingest_columns(**cols)
            spent[p] += time.perf_counter() - t0
        n += len(b)
        if k % 10 == 0:
            _log(f"cost: {n:,} events; " + ", ".join(f"{p} {n / spent[p]:,.0f}/s" for p in POLICIES))
    out: dict = {"users": users, "events": n, "batch": batch, "kind": "burst at saturation, lockstep"}
    rates = {p: n / spent[p] for p in POLICIES}
    out["events_per_s"] = {p: round(r) for p, r in rates.items()}
    out["cost_vs_never"] = {p: round(1 - rates[p] / rates["never"], 4) for p in ("interval", "always")}
    out["cost_vs_no_log"] = {p: round(1 - rates[p] / rates["none"], 4) for p in ("never", "interval", "always")}
    st = engines["interval"]._store.wal.stats()
    out["log_bytes_per_event"] = round(st["bytes_written"] / n, 1)
    out["fsyncs_interval"] = st["fsyncs"]
    out["fsync_p99_ms"] = st.get("fsync_p99_ms")
    members = {p: {s: len(engines[p].members(s)) for s in SEGMENTS} for p in POLICIES}
    out["same_membership"] = all(members[p] == members["none"] for p in POLICIES)
    for e in engines.values():
        e.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------- 2. recovery

def run_recovery(users: int, events: int, batch: int) -> dict:
    w = Workload(WorkloadConfig(users=users, events=events))
    tmp = tempfile.mkdtemp(prefix="rtseg-chaos-recovery-")
    data = os.path.join(tmp, "data")
    eng = _engine(data, "never")
    prepare(eng, w, np.arange(users), SEGMENTS)
    cut = int(events * 0.95)
    t0 = time.perf_counter()
    for k, b in enumerate(w.batches(batch, stop=cut)):
        eng.ingest_columns(**b.columns())
        if k % 20 == 0:
            _log(f"recovery: {k * batch:,} events in {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    snap = eng.snapshot()
    snapshot_s = time.perf_counter() - t0
    for b in w.batches(batch, start=cut):
        eng.ingest_columns(**b.columns())
    want = {s: eng.members(s) for s in SEGMENTS}
    retained = eng.stats()["events_retained"]
    users_known = eng.stats()["users"]
    snap_bytes = sum(f.stat().st_size for f in os.scandir(snap["path"]))
    log_bytes = sum(f.stat().st_size for f in os.scandir(os.path.join(data, "wal")) if f.name.endswith(".log"))
    eng._store.close()                     # abandoned: no snapshot, no goodbye
    eng._store = None
    del eng
    t0 = time.perf_counter()
    eng2 = _engine(data, "never")
    recovery_s = time.perf_counter() - t0
    same = all(eng2.members(s) == want[s] for s in SEGMENTS)
    out = {"users": users_known, "events_retained": retained, "snapshot_s": round(snapshot_s, 2),
           "snapshot_bytes": snap_bytes, "log_tail_events": events - cut, "log_bytes": log_bytes,
           "recovery_s": round(recovery_s, 2), "recovery_report": eng2.recovery,
           "same_membership": same, "goal_s": 10.0}
    eng2._store.close()
    eng2._store = None
    shutil.rmtree(tmp, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------- 2b. served

def run_server_recovery(users: int, events: int, batch: int) -> dict:
    """``rtseg serve --shards 2``: the stream's first 95 %, a graceful stop (a snapshot), a
    start (restore only), the last 5 %, SIGKILL, a start (restore + log tail)."""
    from engine.client import Client
    from tests.test_server_support import ServerProcess

    w = Workload(WorkloadConfig(users=users, events=events))
    tmp = tempfile.mkdtemp(prefix="rtseg-chaos-served-")
    args = ("--shards", "2", "--clock", "event", "--snapshot-interval", "0", "--snapshot-log-mb", "0",
            "--rescore-interval", "0")
    cut = int(events * 0.95)
    out: dict = {"users": users, "shards": 2}

    def start(label):
        t0 = time.monotonic()
        srv = ServerProcess(tmp, *args)
        ready = time.monotonic() - t0
        with Client(srv.target, timeout_s=600) as c:
            d = c.stats().get("durability", {})
        out[label] = {"ready_s": round(ready, 2), "recovery_s": d.get("recovery_seconds"),
                      "restore_s": d.get("restore_seconds"), "replay_s": d.get("replay_seconds"),
                      "frames_replayed": d.get("frames_replayed")}
        _log(f"served {label}: {out[label]}")
        return srv

    srv = ServerProcess(tmp, *args)
    try:
        with Client(srv.target, timeout_s=600) as c:
            prepare(c, w, np.arange(users), SEGMENTS)
            t0 = time.perf_counter()
            for k, b in enumerate(w.batches(batch, stop=cut)):
                c.ingest_columns(**b.columns())
                if k % 20 == 0:
                    _log(f"served: {k * batch:,} events in {time.perf_counter() - t0:.0f} s")
            out["ingest_events_per_s"] = round(cut / (time.perf_counter() - t0))
        t0 = time.monotonic()
        srv.stop(600)                                  # graceful: writes a snapshot
        out["graceful_stop_s"] = round(time.monotonic() - t0, 2)
        srv = start("restart_from_snapshot")
        with Client(srv.target, timeout_s=600) as c:
            for b in w.batches(batch, start=cut):
                c.ingest_columns(**b.columns())
            want = {s.name: s.size for s in c.list_segments()}
            out["events_retained"] = c.stats()["events"]
        os.killpg(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait(30)
        srv.stop()
        srv = start("restart_after_sigkill")
        with Client(srv.target, timeout_s=600) as c:
            out["same_segment_sizes"] = {s.name: s.size for s in c.list_segments()} == want
    finally:
        srv.stop(600)
        shutil.rmtree(tmp, ignore_errors=True)
    out["log_tail_events"] = events - cut
    out["goal_s"] = 10.0
    return out


# ----------------------------------------------------------------------------- 3. faults

def run_faults(users: int, events: int, batch: int, kills: int, shard_kills: int, seed: int = 9) -> dict:
    from engine import Engine
    from engine.client import Client
    from tests.test_server_support import ServerProcess

    rng = random.Random(seed)
    w = Workload(WorkloadConfig(users=users, events=events))
    work = [b.columns() for b in w.batches(batch)]
    tmp = tempfile.mkdtemp(prefix="rtseg-chaos-faults-")
    args = ("--shards", "2", "--clock", "event", "--snapshot-interval", "5s")
    faults = ["server"] * kills + ["shard"] * shard_kills
    rng.shuffle(faults)
    points = sorted(rng.sample(range(2, len(work) - 1), len(faults)))
    acked: list[int] = []
    restarts: list[float] = []
    recoveries: list[dict] = []
    pos = 0
    created = False
    shard_restarts = 0
    srv = ServerProcess(tmp, *args)
    try:
        while True:
            with Client(srv.target, timeout_s=300) as c:
                if not created:
                    prepare(c, w, np.arange(users), SEGMENTS)
                    created = True
                st = c.stats().get("durability", {})
                recoveries.append({k: st.get(k) for k in ("recovery_seconds", "frames_replayed")})
                while pos < len(work):
                    if points and pos == points[0]:
                        break
                    c.ingest_columns(**work[pos], batch_id=f"b{pos}")
                    acked.append(pos)
                    pos += 1
                if pos >= len(work):
                    stats = c.stats()
                    sizes = {s.name: s.size for s in c.list_segments()}
                    shard_restarts += stats.get("durability", {}).get("shard_restarts", 0)
                    break
                points.pop(0)
                kind = faults.pop(0)
                if kind == "shard":
                    _kill_a_shard(srv)
                    continue                        # the next batch finds it dead
                import threading

                shard_restarts += c.stats().get("durability", {}).get("shard_restarts", 0)
                t = threading.Thread(target=_quietly, args=(c.ingest_columns,), kwargs=dict(
                    work[pos], batch_id=f"b{pos}"), daemon=True)
                t.start()
                time.sleep(rng.uniform(0.0, 0.05))
                t_kill = time.monotonic()
                os.killpg(srv.proc.pid, signal.SIGKILL)
                srv.proc.wait(30)
                srv.stop()
            srv = ServerProcess(tmp, *args)
            restarts.append(round(time.monotonic() - t_kill, 2))
    finally:
        srv.stop()
    ref = Engine(clock="event", retention="30d", rescore_interval=0)
    prepare(ref, w, np.arange(users), SEGMENTS)
    for k in acked:
        ref.ingest_columns(**work[k])
    want = ref.stats()["events_retained"]
    ref_sizes = {s.name: s.size for s in ref.list_segments()}
    shutil.rmtree(tmp, ignore_errors=True)
    return {"server_kills": kills, "shard_kills": shard_kills, "shard_restarts": shard_restarts,
            "batches_acknowledged": len(acked), "events_acknowledged": int(sum(len(work[k]["timestamp_ms"]) for k in acked)),
            "events_lost": int(want - stats["events"]), "same_segment_sizes": sizes == ref_sizes,
            "restart_s": restarts, "server_recovery": recoveries}


def _quietly(fn, **kw):
    try:
        fn(**kw)
    except Exception:  # noqa: BLE001 - the server is killed under the call
        pass


def _kill_a_shard(srv) -> None:
    out = subprocess.run(["pgrep", "-s", str(os.getsid(srv.proc.pid)), "-f", "ray::ShardHost"],
                         capture_output=True, text=True).stdout.split()
    if out:
        os.kill(int(out[0]), signal.SIGKILL)
        _log(f"killed shard actor pid {out[0]}")


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--events", type=int, default=20_000_000)
    p.add_argument("--cost-users", type=int, default=200_000)
    p.add_argument("--cost-events", type=int, default=4_000_000)
    p.add_argument("--fault-users", type=int, default=20_000)
    p.add_argument("--fault-events", type=int, default=400_000)
    p.add_argument("--batch", type=int, default=100_000)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--shard-kills", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--skip-faults", action="store_true")
    p.add_argument("--skip-recovery", action="store_true")
    p.add_argument("--skip-served", action="store_true")
    p.add_argument("--skip-cost", action="store_true")
    p.add_argument("--out")
    a = p.parse_args(argv)
    if a.quick:
        a.users, a.events, a.cost_users, a.cost_events = 20_000, 200_000, 10_000, 100_000
        a.fault_users, a.fault_events, a.batch = 2_000, 40_000, 5_000
    result: dict = {"machine": f"{os.cpu_count()} cores", "note": "shared, noisy machine"}
    if not a.skip_cost:
        _log("cost of the log")
        result["cost"] = run_cost(a.cost_users, a.cost_events, a.batch)
    if not a.skip_served:
        _log("served recovery")
        result["served_recovery"] = run_server_recovery(a.users, a.events, a.batch)
    if not a.skip_recovery:
        _log("recovery time")
        result["recovery"] = run_recovery(a.users, a.events, a.batch)
    if not a.skip_faults:
        _log("faults")
        result["faults"] = run_faults(a.fault_users, a.fault_events, max(a.batch // 20, 1000),
                                      a.kills, a.shard_kills)
    emit_json(result, a.out)
    bad = ((not a.skip_cost and not result["cost"]["same_membership"])
           or (not a.skip_served and not result["served_recovery"]["same_segment_sizes"])
           or (not a.skip_recovery and not result["recovery"]["same_membership"])
           or (not a.skip_faults and (result["faults"]["events_lost"] != 0
                                      or not result["faults"]["same_segment_sizes"])))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
