"""RFM recomputation over a large population (issue 10).

    python -m bench.rfm [--users 1000000] [--events-per-user 3] [--served] [--quick] [--out FILE]

prints one JSON object on stdout (progress on stderr). Not part of the default test run.

A seeded population: every user has 1 + Poisson(events-per-user - 1) purchases over a year,
whole-unit spends (many ties). 14 segments read one rfm source (``rfm_tier`` for each of
the 11 tiers, ``rfm_r/f/m(...) >= 4``). Measured, each from a warm engine (a first
computation compiles and is not counted), median of ``--repeat`` runs:

- **in process** (one core): ``Engine.recompute_rfm()`` end to end: the shard's
  ``(count, since, sum)`` of every user (the value kernel), the boundaries (``np.partition``),
  the RFM frame (plan rebuilt, the 14 segments evaluated again for everyone, deltas). Each
  part is also timed alone. Each run comes a day of engine clock after the previous one, so
  its boundaries differ and users move (the deltas are reported): the scheduled work, at
  steady state (the population's events stay the same).
- **baseline**: the same scores as a nightly job would compute them, DuckDB over the event
  table (``GROUP BY`` user, then ``quantile_disc`` boundaries and the scores in SQL), from
  events already in DuckDB (loading is not counted).
- **served** (``--served``): ``rtseg serve --shards 2``, the same population ingested over
  gRPC, ``RecomputeRfm`` timed from the client (gathering from both shard actors included).
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

DAY = 86_400_000
YEAR = 365 * DAY
SOURCE = "purchase, 365d"


def _log(msg: str) -> None:
    print(f"[rfm] {msg}", file=sys.stderr, flush=True)


def population(users: int, per_user: float, seed: int = 10):
    rng = np.random.default_rng(seed)
    n = 1 + rng.poisson(max(per_user - 1.0, 0.0), users)
    owner = np.repeat(np.arange(users), n)
    ts = np.sort(rng.integers(0, YEAR, len(owner)))
    rng.shuffle(owner)
    value = rng.choice([5.0, 10.0, 20.0, 35.0, 50.0, 80.0, 120.0], len(owner))
    return owner, ts, value


def segments() -> dict[str, str]:
    from engine._rfm import TIER_NAMES

    out = {f"tier_{t}": f'rfm_tier({SOURCE}) == "{t}"' for t in TIER_NAMES}
    out.update({f"{f}_top": f"{f}({SOURCE}) >= 4" for f in ("rfm_r", "rfm_f", "rfm_m")})
    return out


def _ingest(target, owner, ts, value, batch: int = 200_000) -> None:
    ids = np.array([f"user-{i}" for i in range(int(owner.max()) + 1)], dtype=object)
    for a in range(0, len(ts), batch):
        b = min(a + batch, len(ts))
        target.ingest_columns(ids[owner[a:b]], np.full(b - a, "purchase", dtype=object), ts[a:b], value[a:b])


def run_in_process(owner, ts, value, repeat: int) -> dict:
    from engine import Engine
    from engine import _rfm as R

    eng = Engine(retention="400d", rfm_interval=0)
    t0 = time.perf_counter()
    _ingest(eng, owner, ts, value)
    _log(f"ingested {len(ts):,} events in {time.perf_counter() - t0:.1f} s")
    for name, text in segments().items():
        eng.create_segment(name, text)
    eng.recompute_rfm()                               # warm (compiles the value plan)
    eng.advance_clock(eng.now_ms + 7 * DAY)
    first = eng.recompute_rfm()                       # a week later: users move
    runs, deltas = [], []
    for _ in range(repeat):
        eng.advance_clock(eng.now_ms + DAY)           # a day later: boundaries and users move
        res = eng.recompute_rfm()
        runs.append(res["seconds"])
        deltas.append(res["deltas"])
    nodes = eng._rfm_nodes()
    core = eng._core
    gather, bounds = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        metrics = core.rfm_values(nodes, eng.now_ms)
        gather.append(time.perf_counter() - t)
        t = time.perf_counter()
        R.bounds_payload({k: [m] for k, m in metrics.items()}, True)
        bounds.append(time.perf_counter() - t)
    [b] = eng.rfm_boundaries()
    users = int(owner.max()) + 1
    return {
        "users": users, "events": int(len(ts)), "segments": len(segments()), "population": b["population"],
        "first_after_a_week": {"seconds": round(first["seconds"], 4), "deltas": first["deltas"]},
        "recompute_seconds_median": round(statistics.median(runs), 4),
        "recompute_seconds_runs": [round(x, 4) for x in runs],
        "recompute_deltas_runs": deltas,
        "gather_seconds_median": round(statistics.median(gather), 4),
        "boundaries_seconds_median": round(statistics.median(bounds), 4),
        "apply_seconds_median": round(statistics.median(runs) - statistics.median(gather)
                                      - statistics.median(bounds), 4),
        "users_per_second": round(users / statistics.median(runs)),
        "boundaries": b,
    }


def run_duckdb(owner, ts, value, now_ms: int, repeat: int) -> dict:
    import duckdb

    con = duckdb.connect()
    con.register("ev_df", {"u": owner, "t": ts, "v": value})
    con.execute("CREATE TABLE ev AS SELECT * FROM ev_df")
    sql = f"""
    WITH m AS (
      SELECT u, count(*) AS f, {now_ms} - max(t) AS r, sum(v) AS mon FROM ev
      WHERE t > {now_ms - YEAR} AND t <= {now_ms} GROUP BY u),
    b AS (
      SELECT quantile_disc(-r, [0.2, 0.4, 0.6, 0.8]) AS br, quantile_disc(f, [0.2, 0.4, 0.6, 0.8]) AS bf,
             quantile_disc(mon, [0.2, 0.4, 0.6, 0.8]) AS bm FROM m)
    SELECT count(*), sum(rs), sum(fs), sum(ms) FROM (
      SELECT 1 + (-r >= br[1])::INT + (-r >= br[2])::INT + (-r >= br[3])::INT + (-r >= br[4])::INT AS rs,
             1 + (f >= bf[1])::INT + (f >= bf[2])::INT + (f >= bf[3])::INT + (f >= bf[4])::INT AS fs,
             1 + (mon >= bm[1])::INT + (mon >= bm[2])::INT + (mon >= bm[3])::INT + (mon >= bm[4])::INT AS ms
      FROM m, b)
    """
    con.execute(sql).fetchall()                      # warm
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        con.execute(sql).fetchall()
        runs.append(time.perf_counter() - t)
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    return {"seconds_median": round(statistics.median(runs), 4), "runs": [round(x, 4) for x in runs],
            "threads": int(threads),
            "what": "scores for every user from the event table (GROUP BY + quantile_disc), no segments, "
                    "no deltas: the nightly job a real-time engine replaces"}


def run_served(owner, ts, value, repeat: int) -> dict:
    import tempfile
    from pathlib import Path

    from engine.client import Client
    from tests.test_server_support import ServerProcess

    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="rtseg-rfm-")), "--shards", "2", "--clock", "event",
                        "--retention", "400d", "--rfm-interval", "0")
    try:
        with Client(srv.target, timeout_s=600) as client:
            t0 = time.perf_counter()
            _ingest(client, owner, ts, value, batch=100_000)
            _log(f"served: ingested in {time.perf_counter() - t0:.1f} s")
            for name, text in segments().items():
                client.create_segment(name, text)
            client.recompute_rfm()
            client.advance_clock(client.now_ms + 7 * DAY)
            first = client.recompute_rfm()
            runs, server_side = [], []
            for _ in range(repeat):
                client.advance_clock(client.now_ms + DAY)
                t = time.perf_counter()
                res = client.recompute_rfm()
                runs.append(time.perf_counter() - t)
                server_side.append(res["seconds"])
        return {"shards": 2, "first_after_a_week": {"seconds": round(first["seconds"], 4),
                                                    "deltas": first["deltas"]},
                "recompute_seconds_median": round(statistics.median(runs), 4),
                "server_seconds_median": round(statistics.median(server_side), 4),
                "runs": [round(x, 4) for x in runs]}
    finally:
        srv.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--events-per-user", type=float, default=3.0)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--served", action="store_true")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out")
    a = p.parse_args(argv)
    if a.quick:
        a.users, a.repeat = 20_000, 3
    owner, ts, value = population(a.users, a.events_per_user)
    result: dict = {"machine": f"{os.cpu_count()} cores", "note": "shared, noisy machine; steady state "
                    "(the same population each run), medians"}
    _log("in process")
    result["in_process"] = run_in_process(owner, ts, value, a.repeat)
    _log("duckdb")
    now = int(result["in_process"]["boundaries"]["computed_ms"])
    result["duckdb_baseline"] = run_duckdb(owner, ts, value, now, a.repeat)
    result["ratio_duckdb_over_rtseg"] = round(result["duckdb_baseline"]["seconds_median"]
                                              / result["in_process"]["recompute_seconds_median"], 2)
    if a.served:
        _log("served")
        result["served"] = run_served(owner, ts, value, a.repeat)
    emit_json(result, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
