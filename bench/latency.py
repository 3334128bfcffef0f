"""Through gRPC, what a user of the service sees: the latency curve on the wall clock and on
the event clock, reads under saturating ingest, and the cost of many subscribers.

    python -m bench.latency [--users 100000] [--shards 2] [--clock wall event]
                            [--loads 2000 5000 20000 50000 100000 200000 300000]
                            [--seconds 3] [--subscribers 200] [--quick] [--out FILE]

prints one JSON object (progress on stderr). Every figure comes from one server per clock,
``rtseg serve`` in its own process (bench/e2e.py ``ServeProcess``), with the producer in
another process (bench/e2e.py ``produce``) and the 20-segment workload of bench/workload.py.

* **Curve** (paced, open loop: a batch leaves at its due time whatever the replies). Each batch
  carries probe users whose ENTER is caused by exactly that batch; ingest-to-delta latency =
  the ENTER's arrival at a subscriber - the moment the producer handed the batch to gRPC.
  With ``--clock wall`` every event is stamped by the server on arrival (timestamp 0), as a
  live service is used; with ``--clock event`` the events carry the workload's own times, so
  the clock runs far faster than real time (each wall second brings hours of time-driven
  changes): it measures a replay, not live use. The **knee** is the highest offered load that
  was achieved (>= 95 %) with p99 under ``KNEE_P99_MS``.
* **Reads under saturating ingest**: while a producer sends as fast as it can (batches of
  10,000, 4 in flight), three threads of this process call GetSegment, GetUser and GetStats
  (one kind each, back to back) and time each; only reads between the producer's first send
  and its last reply count. Steady state (windows full is not the point here: ingestion is).
* **Fan-out**: saturating throughput with no subscriber, then with ``--subscribers`` streams
  (``SubscribePages``, each on one segment, round robin over the 21) held by a separate
  process, then with none again; the cost is 1 - the throughput with them / the mean of the
  two without (throughput falls as the windows fill, so one run before is not enough).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from bench.e2e import (ServeProcess, Subscriber, _batch_for, _log, _workload_spec, load_traits,  # noqa: E402
                       measure, percentiles_ms, run_producer)
from bench.workload import ONE_SEGMENT, ONE_SEGMENT_NAME, SEGMENTS, Workload, WorkloadConfig  # noqa: E402

KNEE_P99_MS = 50.0
SATURATION_BATCH = 10_000
READ_KINDS = ("GetSegment", "GetUser", "GetStats")


def _setup(c, w: Workload, clock: str) -> dict:
    """Reset to ``clock``, every user's traits, the 21 segments."""
    t0 = time.perf_counter()
    c.reset(clock=clock, retention="30d")
    if clock == "event":
        c.advance_clock(w.config.start_ms)
    load_traits(c, w)
    for name, text in SEGMENTS.items():
        c.create_segment(name, text)
    c.create_segment(ONE_SEGMENT_NAME, ONE_SEGMENT)
    return {"setup_s": round(time.perf_counter() - t0, 2)}


class Cursor:
    """Positions in the workload, so that no two runs send the same events."""

    def __init__(self, w: Workload, clock: str):
        self.w, self.clock, self.pos = w, clock, 0

    def spec(self, n: int, batch: int, rate: float, tag: str) -> dict:
        if self.pos + n > self.w.config.events:
            self.pos = 0               # wall clock: any events will do again; event: see --events
        spec = {"kind": "synthetic", "workload": _workload_spec(self.w.config), "start": self.pos,
                "stop": self.pos + n, "batch": batch, "rate": rate, "tag": tag,
                "wall": self.clock == "wall"}
        self.pos += n
        return spec


def knee(curve: list[dict]) -> float | None:
    ok = [m["offered_events_per_s"] for m in curve
          if m.get("events_per_s", 0) >= 0.95 * m["offered_events_per_s"]
          and m.get("latency", {}).get("p99_ms", 1e9) <= KNEE_P99_MS and not m.get("probes_lost")]
    return max(ok) if ok else None


def reads_under_load(srv: ServeProcess, c, cur: Cursor, n_events: int, user_ids: list[str]) -> dict:
    """Reads timed while a saturating producer runs (in its own process): one thread per kind
    of read, each calling again as soon as it has its answer. Only reads that start after the
    producer's first send and end before its last reply count (it prepares its batches first,
    and reads of an idle server, ~0.3 ms, would dilute the figures)."""
    box: dict = {}
    spec = cur.spec(n_events, SATURATION_BATCH, 0, "rd")
    prod = threading.Thread(target=lambda: box.update(log=run_producer(dict(spec, target=srv.target))),
                            daemon=True)
    timed = {k: [] for k in READ_KINDS}  # (start, end: monotonic ns like the producer's, CPU s)
    names = list(SEGMENTS) + [ONE_SEGMENT_NAME]

    def reader(kind: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while prod.is_alive():
            t, cpu = time.monotonic_ns(), time.thread_time()
            if kind == "GetSegment":
                c.get_segment(names[int(rng.integers(len(names)))])
            elif kind == "GetUser":
                c.get_user(user_ids[int(rng.integers(len(user_ids)))])
            else:
                c.stats()
            timed[kind].append((t, time.monotonic_ns(), time.thread_time() - cpu))

    prod.start()
    readers = [threading.Thread(target=reader, args=(k, i), daemon=True) for i, k in enumerate(READ_KINDS)]
    for r in readers:
        r.start()
    for r in readers:
        r.join()
    prod.join()
    log = box.get("log", {})
    lo, hi = log.get("t_start_ns", 0), log.get("t_end_ns", 0)
    inside = {k: [(b - a, cpu) for a, b, cpu in v if a >= lo and b <= hi] for k, v in timed.items()}
    out = {k: percentiles_ms([ns for ns, _ in v]) for k, v in inside.items()}
    out["reads_outside_ingestion"] = sum(len(timed[k]) - len(inside[k]) for k in READ_KINDS)
    out["ingest_events_per_s"] = (round(log["accepted"] / max(hi - lo, 1) * 1e9, 1)
                                  if log else None)
    # the readers share the machine's cores with the server: the CPU their threads used
    # meanwhile (gRPC's own threads not counted)
    out["reader_threads_cpu_s"] = round(sum(cpu for v in inside.values() for _, cpu in v), 3)
    out["seconds"] = round((hi - lo) / 1e9, 3) if log else None
    return out


def measure_quiet(target: str, spec: dict) -> dict:
    log = run_producer(dict(spec, target=target))
    log.pop("probes", None)
    elapsed = max(log["t_end_ns"] - log["t_start_ns"], 1) / 1e9
    return {"events_per_s": round(log["accepted"] / elapsed, 1), "accepted": log["accepted"],
            "seconds": round(elapsed, 3), "errors": log["errors"]}


def fan_out(srv: ServeProcess, c, cur: Cursor, n_events: int, subscribers: int) -> dict:
    """Saturating throughput with no subscriber, then with ``subscribers`` of them."""
    base = measure_quiet(srv.target, cur.spec(n_events, SATURATION_BATCH, 0, "f0"))
    before = int(c.stats()["subscribers"])
    names = list(SEGMENTS) + [ONE_SEGMENT_NAME]
    proc = subprocess.Popen([sys.executable, "-m", "bench.latency", "--hold-subscribers", srv.target,
                             str(subscribers), ",".join(names)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        from bench.baselines import wait_until

        if not wait_until(lambda: int(c.stats()["subscribers"]) >= before + subscribers, 120, 0.1):
            raise RuntimeError(f"only {int(c.stats()['subscribers']) - before} of {subscribers} subscribed")
        loaded = measure_quiet(srv.target, cur.spec(n_events, SATURATION_BATCH, 0, "f1"))
    finally:
        out, err = proc.communicate("stop\n", timeout=120)
    held = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err[-500:]}
    # alone again: throughput falls as the windows fill, so the run with subscribers is
    # compared with the mean of one run before it and one after
    after = measure_quiet(srv.target, cur.spec(n_events, SATURATION_BATCH, 0, "f2"))
    alone = (base["events_per_s"] + after["events_per_s"]) / 2
    return {"subscribers": subscribers, "events_per_s_alone": round(alone, 1),
            "events_per_s_alone_before_after": [base["events_per_s"], after["events_per_s"]],
            "events_per_s_with_subscribers": loaded["events_per_s"],
            "cost": round(1 - loaded["events_per_s"] / max(alone, 1), 3),
            "deltas_received": held.get("deltas"), "subscriber_errors": held.get("errors"),
            # the subscribers' own process shares this machine's 2 cores with the server
            "subscriber_process_cpu_s": held.get("cpu_s"),
            "seconds_with_subscribers": loaded.get("seconds")}


def hold_subscribers(target: str, n: int, names: list[str]) -> int:
    """In its own process: ``n`` SubscribePages streams, one segment each, counting deltas
    until a line arrives on stdin; prints {"deltas", "errors"}."""
    import asyncio

    import grpc

    from engine._pb import pb

    async def main():
        counts = [0] * n
        errors: list[str] = []
        async with grpc.aio.insecure_channel(target) as ch:
            call = ch.unary_stream("/rtseg.v1.SegmentEngine/SubscribePages",
                                   request_serializer=pb.SubscribeRequest.SerializeToString,
                                   response_deserializer=pb.DeltaPage.FromString)

            async def one(i: int):
                try:
                    async for page in call(pb.SubscribeRequest(segments=[names[i % len(names)]])):
                        counts[i] += len(page.deltas)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - reported
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
            tasks = [asyncio.create_task(one(i)) for i in range(n)]
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        cpu = time.process_time()
        print(json.dumps({"deltas": sum(counts), "errors": errors[:5], "cpu_s": round(cpu, 2)}), flush=True)
    asyncio.run(main())
    return 0


def run_clock(clock: str, a, say=_log) -> dict:
    w = Workload(WorkloadConfig(users=a.users, events=a.events, seed=a.seed))
    out: dict = {"clock": clock, "users": a.users, "shards": a.shards, "segments": len(SEGMENTS) + 1}
    from engine.client import Client

    with ServeProcess(a.shards, clock=clock) as srv, Client(srv.target, wait_ready_s=60, timeout_s=600) as c:
        out.update(_setup(c, w, clock))
        cur = Cursor(w, clock)
        say(f"{clock}: warm-up, {a.warm_events:,} events")
        out["warm_up"] = measure_quiet(srv.target, cur.spec(a.warm_events, SATURATION_BATCH, 0, "w"))
        sub = Subscriber(srv.target).start(c)
        try:
            out["curve"] = []
            for step, rate in enumerate(a.loads):
                # the tag names the step, not only the load: probe users of a repeated load
                # must be new users, or their ENTERs were seen in the earlier step
                tag = f"{clock[0]}{step}.{rate}"
                m = measure(srv.target, sub, cur.spec(int(rate * a.seconds), _batch_for(rate), rate, tag))
                m["offered_events_per_s"] = rate
                out["curve"].append(m)
                lat = m["latency"]
                say(f"{clock}: offered {rate:,}/s -> {m['events_per_s']:,.0f}/s, p50 {lat.get('p50_ms')} ms, "
                    f"p99 {lat.get('p99_ms')} ms")
                if m["events_per_s"] < 0.5 * rate:
                    break                  # far past the knee: higher loads only queue
        finally:
            sub.stop()
        out["knee_events_per_s"] = knee(out["curve"])
        if a.reads:
            out["reads_under_saturation"] = reads_under_load(srv, c, cur, a.saturation_events,
                                                             w.user_ids[:10_000].tolist())
            say(f"{clock}: reads under saturation: " + ", ".join(
                f"{k} p99 {out['reads_under_saturation'][k].get('p99_ms')} ms" for k in READ_KINDS))
        if a.subscribers:
            out["fan_out"] = fan_out(srv, c, cur, a.saturation_events, a.subscribers)
            say(f"{clock}: {a.subscribers} subscribers cost {out['fan_out']['cost']:.1%} of throughput")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--hold-subscribers", nargs=3, metavar=("TARGET", "N", "SEGMENTS"), help=argparse.SUPPRESS)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--events", type=int, default=4_000_000, help="workload size (positions available)")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--clock", nargs="+", default=["wall", "event"], choices=["wall", "event"])
    p.add_argument("--loads", type=int, nargs="+",
                   default=[2_000, 5_000, 20_000, 50_000, 100_000, 200_000, 300_000])
    p.add_argument("--seconds", type=float, default=3.0, help="per offered load")
    p.add_argument("--warm-events", type=int, default=200_000)
    p.add_argument("--saturation-events", type=int, default=400_000)
    p.add_argument("--subscribers", type=int, default=200)
    p.add_argument("--no-reads", dest="reads", action="store_false")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="20k users, 3 loads, 20 subscribers, wall clock")
    p.add_argument("--out", help="also write the JSON here")
    a = p.parse_args(argv)
    if a.hold_subscribers:
        target, n, names = a.hold_subscribers
        return hold_subscribers(target, int(n), names.split(","))
    if a.quick:
        a.users, a.events, a.clock, a.loads = 20_000, 1_000_000, ["wall"], [2_000, 20_000, 100_000]
        a.warm_events, a.saturation_events, a.subscribers, a.seconds = 50_000, 100_000, 20, 2.0
    res = {"benchmark": "latency", "machine_cpus": os.cpu_count(),
           "runs": [run_clock(clock, a) for clock in a.clock]}
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(text + "\n")
        plot(res, os.path.splitext(a.out)[0] + ".png")
    return 0


def plot(res: dict, path: str) -> None:
    """Ingest-to-delta p50 and p99 against the achieved load, one line pair per clock."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for run, color in zip(res["runs"], ("tab:blue", "tab:orange")):
        pts = [m for m in run.get("curve", []) if m.get("latency", {}).get("p50_ms") is not None]
        if not pts:
            continue
        x = [m["events_per_s"] for m in pts]
        label = f"{run['clock']} clock"
        ax.plot(x, [m["latency"]["p50_ms"] for m in pts], "o-", color=color, label=f"{label}, p50")
        ax.plot(x, [m["latency"]["p99_ms"] for m in pts], "s--", color=color, label=f"{label}, p99")
    ax.axhline(2, color="grey", lw=0.8, ls=":")
    ax.axhline(10, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("achieved events/s (paced producer, open loop)")
    ax.set_ylabel("ingest-to-delta latency (ms)")
    r0 = res["runs"][0]
    ax.set_title(f"gRPC, {r0['shards']} shards, {r0['segments']} segments, {r0['users']:,} users "
                 f"(targets: p50 2 ms, p99 10 ms)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
