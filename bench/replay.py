"""A replay of the UCI Online Retail data set through ``rtseg serve`` at increasing speed-ups.

    python -m bench.replay [--speedups 1e5 1e6 1e7 1e8] [--seconds 1.5] [--shards 2]

The CSV is read from ``../shared/data/online-retail.csv.gz`` next to the project (never
copied into it). One event per line item with a customer: ``purchase`` (or ``return`` for
cancelled invoices, ``C...``), ``value`` = quantity x unit price, properties ``stock_code`` and
``country``; ``InvoiceDate`` is taken as UTC. Rows without a customer are left out.

Each speed-up replays the next stretch of the data (``seconds x speed-up`` of data time) in
batches of ``TICK_MS`` of wall time, paced so that data time runs ``speed-up`` times faster
than the wall clock: the offered load follows the shop's own rhythm (days, hours, bursts).
The event clock follows the data. Latency comes from the probes of bench/e2e.py; at the end
the served membership of every segment is compared with the in-process engine's on the
same events.
"""

from __future__ import annotations

import argparse
import csv
import functools
import gzip
import json
import os
import sys
import time

import numpy as np

from bench.workload import ONE_SEGMENT, ONE_SEGMENT_NAME, Batch

DATA_PATH = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                          "online-retail.csv.gz"))
TICK_MS = 5  # wall time per batch
RETAIL_SEGMENTS = {
    "repeat_buyers": "count(purchase, 30d) >= 10",
    "big_basket_week": "sum(purchase.value, 7d) >= 1000",
    "returners": "count(return, 30d) >= 2",
    "lapsing": "since(purchase) > 14d and count(purchase, 30d) >= 5",
    "uk_regulars": 'count(purchase where country == "United Kingdom", 30d) >= 20',
    ONE_SEGMENT_NAME: ONE_SEGMENT,  # the latency probes' segment
}


def data_path() -> str:
    return os.environ.get("RTSEG_RETAIL_CSV", DATA_PATH)


@functools.lru_cache(maxsize=2)
def load_retail(path: str | None = None) -> Batch:
    """Every line item with a customer, in file order (sorted by time), as one Batch."""
    path = path or data_path()
    users, types, stamps, values, codes, countries = [], [], [], [], [], []
    with gzip.open(path, "rt", newline="", encoding="utf-8", errors="replace") as f:
        rows = csv.reader(f)
        header = next(rows)
        col = {name: i for i, name in enumerate(header)}
        inv, code, qty, date, price, cust, country = (col[k] for k in (
            "InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"))
        for r in rows:
            c = r[cust].strip()
            if not c:
                continue
            users.append(c[:-2] if c.endswith(".0") else c)
            types.append("return" if r[inv].startswith("C") else "purchase")
            stamps.append(r[date])
            values.append(round(float(r[qty]) * float(r[price]), 2))
            codes.append(r[code])
            countries.append(r[country])
    ts = (np.array(stamps, dtype="datetime64[ms]").astype(np.int64))
    n = len(users)

    def obj(x):
        a = np.empty(n, dtype=object)
        a[:] = x
        return a

    uid = obj(users)
    _, user_index = np.unique(uid.astype(str), return_inverse=True)
    return Batch(user_index.astype(np.int64), uid, obj(types), ts, np.array(values, dtype=np.float64),
                 {"stock_code": obj(codes), "country": obj(countries)})


def paced_batches(spec: dict):
    """(due offset in seconds, Batch) for the events with ``data_from_ms <= t < data_to_ms``,
    cut every ``TICK_MS x speedup`` of data time; empty stretches send nothing."""
    data = load_retail(spec.get("path"))
    speedup = float(spec["speedup"])
    lo, hi = int(spec["data_from_ms"]), int(spec["data_to_ms"])
    a, b = np.searchsorted(data.timestamp_ms, [lo, hi], side="left")
    span = max(1, int(spec.get("tick_ms", TICK_MS) * speedup))
    ts = data.timestamp_ms[a:b]
    slot = (ts - lo) // span
    cuts = np.flatnonzero(np.diff(slot)) + 1
    starts = np.concatenate([[0], cuts]) if len(ts) else np.array([], dtype=np.int64)
    ends = np.concatenate([cuts, [len(ts)]]) if len(ts) else np.array([], dtype=np.int64)
    for s, e in zip(starts.tolist(), ends.tolist()):
        yield float(slot[s] * span) / speedup / 1000.0, data.take(slice(a + s, a + e))


def run_replay(srv, speedups, seconds: float, say=print) -> dict:
    """On a running ``ServeProcess``: reset, segments, then each speed-up in turn."""
    from bench.baselines import mismatch, run_rtseg
    from bench.e2e import PROBE_PREFIX, Subscriber, measure
    from engine.client import Client

    data = load_retail()
    t_first, t_last = int(data.timestamp_ms[0]), int(data.timestamp_ms[-1]) + 1
    out = {"data": {"events": len(data), "users": int(len(np.unique(data.user_index))),
                    "from_ms": t_first, "to_ms": t_last, "path": "../shared/data/online-retail.csv.gz"},
           "segments": list(RETAIL_SEGMENTS), "tick_ms": TICK_MS, "steps": []}
    with Client(srv.target, wait_ready_s=60, timeout_s=600) as c:
        c.reset(clock="event", retention="30d")
        c.advance_clock(t_first)
        for name, text in RETAIL_SEGMENTS.items():
            c.create_segment(name, text)
        sub = Subscriber(srv.target).start(c)
        cur = t_first
        try:
            for s in speedups:
                if cur >= t_last:
                    out["steps"].append({"speedup": s, "skipped": "data exhausted"})
                    continue
                stop = min(t_last, cur + int(seconds * 1000 * s))
                say(f"  replay at {s:,.0f}x: {(stop - cur) / 86_400_000:.1f} days of data")
                m = measure(srv.target, sub, {"kind": "retail", "speedup": s, "data_from_ms": cur,
                                              "data_to_ms": stop, "tag": f"r{int(s)}", "rate": 1})
                n_data = int(np.searchsorted(data.timestamp_ms, stop) - np.searchsorted(data.timestamp_ms, cur))
                wall = (stop - cur) / s / 1000.0
                m.update(speedup=s, data_days=round((stop - cur) / 86_400_000, 2), data_events=n_data,
                         offered_events_per_s=round(n_data / wall, 1) if wall > 0 else None)
                out["steps"].append(m)
                say(f"    offered {m['offered_events_per_s']:,}/s, achieved {m['events_per_s']:,}/s, "
                    f"p99 {m['latency']['p99_ms']} ms")
                cur = stop
        finally:
            sub.stop()
        served = {n: {u for u in c.members(n) if not u.startswith(PROBE_PREFIX)} for n in RETAIL_SEGMENTS}
    upto = int(np.searchsorted(data.timestamp_ms, cur))
    parts = (data.take(slice(a, min(a + 50_000, upto))) for a in range(0, upto, 50_000))
    eng, _, _ = run_rtseg(parts, RETAIL_SEGMENTS, t_first)
    bad = {n: m for n in RETAIL_SEGMENTS if (m := mismatch(eng.members(n), served[n]))}
    out.update(events_replayed=upto, membership_equal=not bad, mismatches=bad,
               segment_sizes={n: len(served[n]) for n in RETAIL_SEGMENTS})
    return out


def main(argv=None) -> int:
    from bench.e2e import ServeProcess

    p = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__.split("\n\n")[0])
    p.add_argument("--speedups", type=float, nargs="+", default=[1e5, 1e6, 1e7, 1e8])
    p.add_argument("--seconds", type=float, default=1.5, help="wall seconds per speed-up (at most)")
    p.add_argument("--shards", type=int, default=2)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    with ServeProcess(a.shards) as srv:
        res = run_replay(srv, a.speedups, a.seconds, say=lambda m: print(m, file=sys.stderr, flush=True))
    res["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(res, indent=2))
    return 0 if res["membership_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
