"""The cost of segment size sampling with 1,000 segments (issue 10).

    python -m bench.history [--segments 1000] [--users 100000] [--events 1000000]
                            [--served-users 20000] [--rounds 30] [--skip-served] [--quick]
                            [--out FILE]
    python -m bench.history --chart docs/img      # the docs' charts, from the retail data

writes bench/results/history/history.json (and prints it; progress on stderr). Not part of
the default test run. Seeded workload: ``--users`` users, ``--events`` events of 20 types over
two days; ``--segments`` segments ``count(eK, Nh) >= M`` over those types.

- **in process, steady** (one core, a warm engine, nothing else running): one sampling round
  (``engine._history.after_frame`` on a frame that passes a boundary: every segment's size in
  one pass over the membership bits, then the record), median of ``--rounds``; beside it the
  per-segment way (``ShardCore.segment_size`` for each segment) for comparison.
- **in process, burst** (ingestion at saturation): the same batches into two engines, history
  on (every batch moves the event clock a minute on: one sample per batch) and off, the calls
  interleaved so the machine's load falls on both alike; the overhead per batch.
- **memory**: bytes per kept sample once ``--rounds`` x 40 rounds are recorded (the history's
  own buffers), against the 4 bytes a sample needs (+ 8 per round for its time).
- **served, steady** (``rtseg serve --shards 2``, Ray): AdvanceClock by 30 s at a time from
  45 s into a minute, so every other move passes a boundary, each followed by
  GetSegmentHistory (which waits for the sample); the difference of the medians of the two
  kinds is what one sampling round costs as a client waiting for it sees it (one
  ``segment_sizes`` call per shard for all segments, the sum and the record); the round
  itself does not wait for it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from bench import emit_json  # noqa: E402

MIN = 60_000
HOUR = 60 * MIN
T0 = 1_700_000_000_000
TYPES = 20
OUT = os.path.join(os.path.dirname(__file__), "results", "history", "history.json")


def _log(msg: str) -> None:
    print(f"[history] {msg}", file=sys.stderr, flush=True)


def segments(n: int) -> dict[str, str]:
    return {f"s{i:04d}": f"count(e{i % TYPES}, {1 + (i // TYPES) % 48}h) >= {1 + i % 3}"
            for i in range(n)}


def events(users: int, n: int, seed: int = 11) -> dict:
    rng = np.random.default_rng(seed)
    return {"user_id": np.char.add("u", rng.integers(0, users, n).astype(str)).astype(object),
            "type": np.char.add("e", rng.integers(0, TYPES, n).astype(str)).astype(object),
            "timestamp_ms": np.sort(T0 + rng.integers(0, 48 * HOUR, n)).astype(np.int64)}


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def _engine(history_interval, segs):
    from engine import Engine

    eng = Engine(clock="event", history_interval=history_interval)
    for name, expr in segs.items():
        eng.create_segment(name, expr)
    return eng


def in_process(n_segments: int, users: int, n_events: int, rounds: int) -> dict:
    from engine import _history
    from engine.durability import frames as F

    segs = segments(n_segments)
    cols = events(users, n_events)
    _log(f"in process: {n_segments} segments, {users} users, {n_events} events")
    eng = _engine("60s", segs)
    t0 = time.perf_counter()
    step = 100_000
    for a in range(0, n_events, step):
        eng.ingest_columns(cols["user_id"][a:a + step], cols["type"][a:a + step],
                           cols["timestamp_ms"][a:a + step])
    load_s = time.perf_counter() - t0
    core, reg, h = eng._core, eng._registry, eng._history
    names = reg.names()
    sizes_ms, record_ms, round_ms, naive_ms = [], [], [], []
    now = eng.now_ms
    for k in range(rounds):
        now += MIN
        t = time.perf_counter()
        sizes = _history.core_sizes(core, names)
        sizes_ms.append(_ms(t))
        t = time.perf_counter()
        h.record(now // MIN * MIN, sizes)
        record_ms.append(_ms(t))
        t = time.perf_counter()
        _history.after_frame(h, F.Frame(F.CLOCK, now + MIN // 2), core, reg)   # no boundary
        _history.after_frame(h, F.Frame(F.CLOCK, now + MIN), core, reg)        # a boundary
        round_ms.append(_ms(t))
        now += MIN
        t = time.perf_counter()
        naive = {n: core.segment_size(n) for n in names}
        naive_ms.append(_ms(t))
        assert naive == sizes
    members = sum(_history.core_sizes(core, names).values())
    steady = {"segments": len(names), "users": int(eng.stats()["users"]),
              "members_total": int(members), "load_s": round(load_s, 2),
              "round_ms_p50": round(statistics.median(round_ms), 3),
              "sizes_ms_p50": round(statistics.median(sizes_ms), 3),
              "record_ms_p50": round(statistics.median(record_ms), 3),
              "per_segment_sizes_ms_p50": round(statistics.median(naive_ms), 3),
              "rounds": rounds}
    _log(f"steady: {steady}")

    # burst: batches of 10k events, each a minute of event time on, history on and off
    batch = 10_000
    n_batches = 30
    # one engine, its sampling switched on and off batch by batch: the same state for both
    interval = {"on": h.interval_ms, "off": 0}
    times = {"on": [], "off": []}
    rng = np.random.default_rng(5)
    start = max(eng.now_ms, h.last_ms) // MIN * MIN     # past the steady rounds
    rounds_before = h.memory()["rounds"]
    for b in range(n_batches):
        u = np.char.add("u", rng.integers(0, users, batch).astype(str)).astype(object)
        ty = np.char.add("e", rng.integers(0, TYPES, batch).astype(str)).astype(object)
        ts = np.full(batch, start + 2 * b * MIN, np.int64)
        order = ("on", "off") if b % 2 == 0 else ("off", "on")
        for key in order:
            h.interval_ms = interval[key]
            ts = ts + MIN                   # every batch a minute on: a boundary each
            t = time.perf_counter()
            eng.ingest_columns(u, ty, ts)
            times[key].append(_ms(t))
    h.interval_ms = interval["on"]
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    taken = h.memory()["rounds"] - rounds_before
    assert taken == n_batches, taken
    burst = {"batch_events": batch, "batches": n_batches, "samples_taken": taken,
             "batch_ms_p50_history_on": round(on, 3), "batch_ms_p50_history_off": round(off, 3),
             "overhead_ms_per_batch": round(on - off, 3),
             "overhead_pct": round(100.0 * (on - off) / off, 2)}
    _log(f"burst: {burst}")
    return {"steady": steady, "burst": burst}


def memory(n_segments: int, rounds: int) -> dict:
    from engine._history import SizeHistory

    h = SizeHistory(MIN, 30 * 24 * HOUR)
    names = list(segments(n_segments))
    rng = np.random.default_rng(3)
    base = rng.integers(0, 100_000, n_segments)
    for r in range(rounds):
        h.record(T0 + r * MIN, dict(zip(names, (base + r).tolist())))
    m = h.memory()
    worst = n_segments * 30 * 24 * 60
    return {"segments": n_segments, "rounds": m["rounds"], "samples": m["samples"],
            "bytes": m["bytes"], "bytes_per_sample": round(m["bytes"] / m["samples"], 2),
            "bytes_per_sample_needed": round(4 + 8 / n_segments, 3),
            "worst_case_30d_1m_bytes_needed": int(worst * 4 + 30 * 24 * 60 * 8)}


def served(n_segments: int, users: int, rounds: int) -> dict:
    """One server; AdvanceClock by 30 s each time, starting 45 s into a minute, so that every
    other move passes a boundary (a sample) and the others do not, with the same clock work
    (timers of 30 s of event time) in both; each followed by GetSegmentHistory (a barrier that
    waits for the sample). The difference of the two medians is the sampling round."""
    from bench.e2e import ServeProcess
    from engine.client import Client

    segs = segments(n_segments)
    cols = events(users, 20 * users, seed=12)
    _log(f"served: rtseg serve --shards 2, {n_segments} segments, {users} users")
    with ServeProcess(2, "event") as srv, Client(srv.target, timeout_s=600) as c:
        t = time.perf_counter()
        for name, expr in segs.items():
            c.create_segment(name, expr)
        create_s = time.perf_counter() - t
        step = 100_000
        for a in range(0, len(cols["timestamp_ms"]), step):
            c.ingest_columns(cols["user_id"][a:a + step], cols["type"][a:a + step],
                             cols["timestamp_ms"][a:a + step])
        first = next(iter(segs))
        now = c.advance_clock(c.now_ms // MIN * MIN + MIN + 45_000)
        before = len(c.segment_history(first).samples)
        crossing, within = [], []
        for _ in range(2 * rounds):
            passes = (now + 30_000) // MIN > now // MIN
            t = time.perf_counter()
            now = c.advance_clock(now + 30_000)
            c.segment_history(first)
            (crossing if passes else within).append(_ms(t))
        samples = len(c.segment_history(first).samples)
        users_n = int(c.stats().get("users", users))
    assert samples - before == len(crossing) == rounds, (samples, before, len(crossing))
    a, b = statistics.median(crossing), statistics.median(within)
    return {"shards": 2, "segments": n_segments, "users": users_n,
            "create_segments_s": round(create_s, 2), "rounds": rounds,
            "advance_and_read_ms_p50_with_sample": round(a, 3),
            "advance_and_read_ms_p50_without": round(b, 3),
            "round_ms_p50": round(a - b, 3)}


CHART_SEGMENTS = {"active_buyers": "count(purchase, 30d) >= 1",
                  "regulars": "count(purchase, 90d) >= 3"}


def chart(out_dir: str) -> dict:
    """The docs' chart (docs/img/segment_*.png) from a real run: the UCI Online Retail
    invoices (``purchase`` events, bench/retail_model.py) into ``rtseg serve --shards 2 --clock
    event --history-interval 1d``, one day per batch, then ``rtseg report segment``."""
    from bench.e2e import ServeProcess
    from bench.retail_model import load_events
    from engine.cli import main as rtseg
    from engine.client import Client

    data = load_events()
    sel = np.flatnonzero(data.type == "purchase")
    day = data.timestamp_ms[sel] // (24 * HOUR)
    bounds = np.flatnonzero(np.diff(day)) + 1
    args = ("--history-interval", "1d", "--history-retention", "400d", "--retention", "120d")
    out = {}
    with ServeProcess(2, "event", extra_args=args) as srv, Client(srv.target, timeout_s=600) as c:
        for name, expr in CHART_SEGMENTS.items():
            c.create_segment(name, expr)
        for part in np.split(sel, bounds):
            c.ingest_columns(data.user_id[part], data.type[part], data.timestamp_ms[part],
                             data.value[part])
        c.advance_clock(int(data.timestamp_ms[sel[-1]]) + 24 * HOUR)
        for name in CHART_SEGMENTS:
            path = os.path.join(out_dir, f"segment_{name}.png")
            assert rtseg(["report", "segment", name, "--target", srv.target, "--out", path]) == 0
            out[name] = {"out": path, "samples": len(c.segment_history(name).samples)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__.split("\n")[0])
    p.add_argument("--segments", type=int, default=1000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--served-users", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--skip-served", action="store_true")
    p.add_argument("--quick", action="store_true", help="a small run (a smoke test)")
    p.add_argument("--out", default=OUT)
    p.add_argument("--chart", metavar="DIR", default=None,
                   help="only draw the docs' charts from the retail data into DIR (docs/img)")
    args = p.parse_args(argv)
    if args.chart:
        emit_json(chart(args.chart))
        return 0
    if args.quick:
        args.segments, args.users, args.events, args.served_users, args.rounds = 40, 2_000, 20_000, 1_000, 5
    result = {"benchmark": "history", "interval": "60s",
              "machine": {"cpus": os.cpu_count(), "numba_threads": os.environ.get("NUMBA_NUM_THREADS")},
              "in_process": in_process(args.segments, args.users, args.events, args.rounds),
              "memory": memory(args.segments, args.rounds * 40)}
    if not args.skip_served:
        result["served"] = served(args.segments, args.served_users, args.rounds)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
