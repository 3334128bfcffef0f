"""The benchmark suite of issue 5: rtseg against what users would pick instead, in one run.

    rtseg bench --suite quick|full --out DIR        (or: python -m bench.cli ...)

Writes ``DIR/results.json``, ``DIR/table.txt`` and PNG plots, prints the table; progress goes
to stderr. Exit status 1 when any baseline's (or the served engine's) final membership differs
from rtseg's in-process engine: the figures of a wrong implementation mean nothing.

Every part is seeded (bench/workload.py), runs on the event clock, talks only to loopback,
and stops every process it starts. The parts:

* ``scale``: per user count, the in-process engine on the whole stream with the 20 segments
  (events/s, backfill of the one segment, bytes per user and per retained event) and DuckDB
  on the same retained events (one full refresh);
* ``compare``: on a prefix of the same stream, rtseg in-process and every baseline, each
  checked against rtseg: pure Python (20 segments and the one segment), Redis (pipelined and
  Lua), bytewax and DuckDB (the one segment);
* ``e2e``: ``rtseg serve`` with 1, 2 and 4 shards, a producer process and a subscriber:
  sustained events/s on the same prefix, the latency/throughput curve, backfill through
  gRPC, timer accuracy (wall clock), the Online Retail replay, start-up to first delta
  (warm, and cold with an empty Numba cache in the full suite).
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402

import numpy as np  # noqa: E402

from bench.baselines import BaselineRun, mismatch, run_rtseg  # noqa: E402
from bench.workload import ONE_SEGMENT, ONE_SEGMENT_NAME, SEGMENTS, Workload, WorkloadConfig  # noqa: E402

RETENTION = "30d"
TARGETS = {
    "in_process_vs_python_20": 10.0,  # engine / pure Python, 20 segments
    "e2e_vs_redis_lua": 10.0,  # gRPC end to end / Redis with Lua, one segment
    "e2e_vs_bytewax": 3.0,  # gRPC end to end / bytewax, one segment
    "duckdb_refresh_over_p99": 10.0,  # one DuckDB full refresh / rtseg p99 (1M users)
}
LATENCY_LOAD = 20_000  # events/s offered where p99 is compared with a DuckDB refresh
TRAIT_CHUNK = 200_000
PARTS = ("scale", "baselines", "e2e", "cold", "10m")


@dataclass(frozen=True)
class Scale:
    users: int
    events: int
    compare_events: int  # prefix on which the baselines run (0: no comparison at this scale)
    batch: int = 20_000
    scale_batch: int = 100_000
    days: float = 35.0
    duckdb: bool = True


@dataclass(frozen=True)
class SuiteConfig:
    name: str
    scales: tuple
    e2e_users: int  # the scale whose workload the end-to-end runs use
    shards: tuple = (1, 2, 4)
    curve_shards: tuple = (2,)
    loads: tuple = (5_000, 20_000, 50_000, 100_000)
    load_seconds: float = 1.5
    replay_speedups: tuple = (1e5, 1e6, 1e7, 1e8)
    replay_seconds: float = 1.0
    timer_users: int = 200
    cold_start: bool = False
    try_10m: bool = False
    seed: int = 1
    notes: tuple = field(default_factory=tuple)


SUITES = {
    "quick": SuiteConfig(
        name="quick",
        scales=(Scale(users=20_000, events=1_000_000, compare_events=300_000, scale_batch=20_000),),
        e2e_users=20_000,
        notes=("quick: one scale (20k users), the stream's first 300k events for the scale and "
               "comparison parts; the curve on 2 shards only; no cold start (about a minute of JIT)",)),
    "full": SuiteConfig(
        name="full",
        scales=(Scale(users=10_000, events=1_000_000, compare_events=1_000_000),
                Scale(users=100_000, events=2_000_000, compare_events=1_000_000),
                Scale(users=1_000_000, events=20_000_000, compare_events=1_000_000)),
        e2e_users=1_000_000,
        curve_shards=(1, 2, 4),
        loads=(5_000, 20_000, 50_000, 100_000, 200_000, 400_000),
        load_seconds=4.0,
        replay_speedups=(3e4, 3e5, 3e6, 3e7, 3e8),
        replay_seconds=4.0,
        timer_users=500,
        cold_start=True,
        try_10m=True),
}


def _r(x, d: int = 1):
    return None if x is None else round(float(x), d)


def _ratio(a, b, d: int = 2):
    return None if not a or not b else round(float(a) / float(b), d)


class Suite:
    def __init__(self, config: SuiteConfig, out_dir: str, progress: bool = True, parts=PARTS,
                 previous: dict | None = None):
        self.cfg = config
        self.out_dir = out_dir
        self.progress = progress
        self.parts = set(parts)
        command = f"rtseg bench --suite {config.name} --out {out_dir}"
        if self.parts != set(PARTS):
            command += f" --parts {' '.join(p for p in PARTS if p in self.parts)}"
        self.results: dict = {"suite": config.name, "command": command,
                              "notes": list(config.notes), "errors": [], "mismatches": {}}
        if previous:  # --merge: keep the figures of the parts not run now
            keep = {"scale": ("scales",), "baselines": ("compare",), "e2e": ("e2e",), "cold": ("cold_start",)}
            for part, keys in keep.items():
                if part not in self.parts:
                    for k in keys:
                        if k in previous:
                            self.results[k] = previous[k]
            if "10m" not in self.parts and "10000000" in previous.get("scales", {}):
                self.results.setdefault("scales", {})["10000000"] = previous["scales"]["10000000"]
            self.results["merged_from"] = {"command": previous.get("command"),
                                           "parts_kept": sorted(set(PARTS) - self.parts)}
            self.results["notes"].append(f"figures of {sorted(set(PARTS) - self.parts)} are from an "
                                         f"earlier run ({previous.get('command')}), merged")
        self._bar = None

    # ------------------------------------------------------------------ plumbing

    def say(self, msg: str) -> None:
        line = f"[bench {time.strftime('%H:%M:%S')}] {msg}"
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        elif self.progress:
            print(line, file=sys.stderr, flush=True)

    def _step(self, name: str, fn, *args):
        if self._bar is not None:
            self._bar.set_description(name)
        t0 = time.perf_counter()
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 - reported in the JSON, the suite goes on
            self.results["errors"].append({"step": name, "error": f"{type(err).__name__}: {err}",
                                           "traceback": traceback.format_exc()[-3000:]})
            self.say(f"{name} FAILED: {err}")
            return None
        finally:
            self.results.setdefault("step_seconds", {})[name] = round(time.perf_counter() - t0, 1)
            if self._bar is not None:
                self._bar.update(1)

    def _check(self, where: str, expected: set, got: set) -> bool:
        bad = mismatch(expected, got)
        if bad:
            self.results["mismatches"][where] = bad
            self.say(f"MEMBERSHIP MISMATCH: {where}: {bad}")
        return bad is None

    # ------------------------------------------------------------------ the run

    def run(self) -> dict:
        from bench.core_bench import machine_info

        cfg = self.cfg
        t_all = time.perf_counter()
        self.results["machine"] = machine_info()
        self.results["machine"]["cores_used"] = "in-process parts: 1; service: all"
        self.results["config"] = asdict(cfg)
        parts = self.parts
        steps = [("warm-up (JIT)", self.warm_up)]
        for sc in cfg.scales:
            if "scale" in parts:
                steps.append((f"scale {sc.users:,} users", self.scale, sc))
            if sc.compare_events and "baselines" in parts:
                steps.append((f"baselines {sc.users:,} users", self.compare, sc))
        if "e2e" in parts:
            for n in cfg.shards:
                steps.append((f"e2e {n} shard(s)", self.e2e, n))
        if cfg.cold_start and "cold" in parts:
            steps.append(("cold start", self.cold_start))
        if cfg.try_10m and "10m" in parts:  # last: the largest allocation of the run
            steps.append(("scale 10,000,000 users", self.scale_10m))
        self.results["parts_run"] = sorted(parts)
        try:
            from tqdm import tqdm

            self._bar = tqdm(total=len(steps), file=sys.stderr, unit="step", disable=not self.progress,
                             bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")
        except ImportError:
            self._bar = None
        try:
            for name, fn, *args in steps:
                self._step(name, fn, *args)
                self.checkpoint()
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
        self.results["ratios"] = self.ratios()
        self.results["seconds"] = round(time.perf_counter() - t_all, 1)
        self.results["membership_equal"] = not self.results["mismatches"]
        self.results["parts_failed"] = _failed_parts(self.results)
        return self.results

    def checkpoint(self) -> None:
        """Results so far to DIR/results.partial.json (kept if a later step kills the run)."""
        try:
            with open(os.path.join(self.out_dir, "results.partial.json"), "w") as f:
                json.dump(_jsonable(self.results), f, indent=2)
        except (OSError, TypeError, ValueError) as err:
            self.say(f"checkpoint not written: {err}")

    def warm_up(self) -> None:
        """Compile (or load from the on-disk cache) every kernel before anything is timed."""
        w = Workload(WorkloadConfig(users=500, events=5_000, days=35, seed=self.cfg.seed + 1000))
        eng, _, _ = run_rtseg(w.batches(1_000), {**SEGMENTS, ONE_SEGMENT_NAME: ONE_SEGMENT}, w.config.start_ms,
                              traits=_traits(w, np.arange(500)))
        eng.memory()

    def workload(self, users: int) -> Workload:
        sc = next(s for s in self.cfg.scales if s.users == users)
        return Workload(WorkloadConfig(users=sc.users, events=sc.events, days=sc.days, seed=self.cfg.seed))

    # ------------------------------------------------------------------ in-process, per scale

    def scale(self, sc: Scale) -> None:
        w = self.workload(sc.users)
        n = sc.compare_events if self.cfg.name == "quick" else sc.events
        self.say(f"scale {sc.users:,} users: in-process engine, 20 segments, {n:,} events")
        res = self._engine20(w, n, sc.scale_batch)
        res.pop("engine")
        members = res.pop("members")
        entry = self.results.setdefault("scales", {}).setdefault(str(sc.users), {})
        entry["engine_20_segments"] = res
        self.say(f"  {res['events_per_s']:,.0f} events/s, backfill {res['backfill_ms']} ms, "
                 f"{res['bytes_per_user']} B/user, {res['bytes_per_retained_event']} B/event")
        if sc.duckdb:
            from bench.baselines import duckdb_poll

            self.say(f"  DuckDB: load {n:,} events, full refresh")
            run, dmembers = duckdb_poll.run(w.batches(sc.batch, stop=n), w.config.start_ms)
            if run.status == "ok":
                for seg, got in dmembers.items():
                    self._check(f"duckdb/{seg} ({sc.users} users)", members[seg], got)
            entry["duckdb"] = run.to_json()
            entry["duckdb"]["rtseg_backfill_ms_one_segment"] = res["backfill_ms"]
            self.say(f"  DuckDB refresh: {run.extra.get('refresh_ms_all')} ms for "
                     f"{len(run.extra.get('segments', []))} segments")

    def _engine20(self, w: Workload, n: int, batch: int) -> dict:
        from engine import Engine

        eng = Engine(clock="event", retention=RETENTION)
        eng.advance_clock(w.config.start_ms)
        for a in range(0, w.config.users, TRAIT_CHUNK):  # chunks: bounded memory at 10M users
            eng.set_traits_many(_traits(w, np.arange(a, min(a + TRAIT_CHUNK, w.config.users))))
        for name, text in SEGMENTS.items():
            eng.create_segment(name, text)
        events, seconds = _feed(eng, w.batches(batch, stop=n))
        t0 = time.perf_counter()
        eng.create_segment(ONE_SEGMENT_NAME, ONE_SEGMENT)
        backfill_ms = (time.perf_counter() - t0) * 1000
        mem = eng.memory()
        from bench.core_bench import _memory_figures

        per_user, per_event = _memory_figures(mem)
        members = {s: eng.members(s) for s in [*SEGMENTS, ONE_SEGMENT_NAME]}
        return {"events": events, "seconds": round(seconds, 3), "events_per_s": _r(events / seconds),
                "batch": batch, "backfill_ms": _r(backfill_ms, 2), "backfill_users": int(eng.stats()["users"]),
                "bytes_per_user": _r(per_user), "bytes_per_retained_event": _r(per_event),
                "retained_events": int(mem.get("retained_events", 0)), "users": int(mem.get("users", 0)),
                "memory_bytes_total": int(mem.get("bytes_total", 0)) or None,
                "segment_sizes": {k: len(v) for k, v in members.items()}, "members": members, "engine": eng}

    def scale_10m(self) -> None:
        """10M users, if the machine's memory allows (else say so)."""
        one_m = self.results.get("scales", {}).get("1000000", {}).get("engine_20_segments")
        avail = _available_memory_bytes()
        users, events = 10_000_000, 40_000_000
        per_user = (one_m or {}).get("bytes_per_user") or 200
        per_event = (one_m or {}).get("bytes_per_retained_event") or 32
        # engine state + the workload's Python objects (ids, traits, trait dicts in chunks)
        need = users * (per_user + 700) + events * per_event * 0.9
        entry = {"users": users, "events": events, "memory_needed_estimate_gb": _r(need / 2**30, 1),
                 "memory_available_gb": _r(avail / 2**30, 1) if avail else None}
        self.results.setdefault("scales", {})["10000000"] = entry
        if not avail or need > 0.8 * avail:
            entry["skipped"] = (f"not enough memory: about {need / 2**30:.1f} GiB needed, "
                                f"{(avail or 0) / 2**30:.1f} GiB available")
            self.say(f"10M users skipped: {entry['skipped']}")
            return
        self.say(f"scale 10M users: {events:,} events (about {need / 2**30:.0f} GiB)")
        w = Workload(WorkloadConfig(users=users, events=events, days=35.0, seed=self.cfg.seed))
        res = self._engine20(w, events, 100_000)
        res.pop("engine")
        res.pop("members")
        entry["engine_20_segments"] = res

    # ------------------------------------------------------------------ baselines on a prefix

    def compare(self, sc: Scale) -> None:
        from bench.baseline_python import BaselineEngine
        from bench.baselines import bytewax_flow, redis_zset

        w = self.workload(sc.users)
        n = sc.compare_events
        start = w.config.start_ms
        out = self.results.setdefault("compare", {}).setdefault(str(sc.users), {
            "events": n, "batch": sc.batch, "users": sc.users,
            "workload": f"the first {n:,} events of the seeded stream ({sc.users:,} users, "
                        f"{sc.events:,} events over {sc.days} days), batches of {sc.batch:,}"})

        def batches():
            return w.batches(sc.batch, stop=n)

        self.say(f"compare {sc.users:,} users on {n:,} events: rtseg in-process")
        eng1, ev1, s1 = run_rtseg(batches(), {ONE_SEGMENT_NAME: ONE_SEGMENT}, start)
        ref_one = eng1.members(ONE_SEGMENT_NAME)
        out["rtseg_one_segment"] = {"events": ev1, "seconds": round(s1, 3), "events_per_s": _r(ev1 / s1),
                                    "members": len(ref_one), "now_ms": eng1.now_ms}
        del eng1
        r20 = self._engine20(w, n, sc.batch)
        eng20 = r20.pop("engine")
        ref20 = r20.pop("members")
        del eng20
        out["rtseg_20_segments"] = {k: r20[k] for k in ("events", "seconds", "events_per_s", "segment_sizes")}
        runs: list[BaselineRun] = []

        self.say("  pure Python, 20 segments")
        base = BaselineEngine(retention_ms=30 * 86_400_000)
        base.advance_clock(start)
        for a in range(0, w.config.users, TRAIT_CHUNK):
            for uid, traits, ts in _traits(w, np.arange(a, min(a + TRAIT_CHUNK, w.config.users))):
                base.set_traits(uid, traits, ts)
        for name, text in {**SEGMENTS, ONE_SEGMENT_NAME: ONE_SEGMENT}.items():
            base.create_segment(name, text)
        ev, secs = _feed(base, batches())
        py20 = BaselineRun("python_20_segments", ev, secs, base.members(ONE_SEGMENT_NAME), base.now_ms,
                           extra={"variant": "bench/baseline_python.py: dicts of deques, heap of next-check times"})
        for seg in [*SEGMENTS, ONE_SEGMENT_NAME]:
            self._check(f"python_20_segments/{seg}", ref20[seg], base.members(seg))
        del base
        runs.append(py20)

        self.say("  pure Python, one segment")
        base = BaselineEngine(retention_ms=30 * 86_400_000)
        base.advance_clock(start)
        base.create_segment(ONE_SEGMENT_NAME, ONE_SEGMENT)
        ev, secs = _feed(base, batches())
        runs.append(BaselineRun("python_one_segment", ev, secs, base.members(ONE_SEGMENT_NAME), base.now_ms,
                                extra={"variant": "bench/baseline_python.py with the one segment"}))
        del base

        self.say("  Redis (pipelined, then Lua)")
        runs.extend(redis_zset.run_both(batches, start_ms=start))
        self.say("  bytewax")
        runs.append(bytewax_flow.run(batches(), start_ms=start))

        for run in runs:
            if run.status == "ok":
                self._check(f"{run.name} ({sc.users} users)", ref_one, run.members)
            if run.status == "skipped":
                self.say(f"  {run.name} SKIPPED: {run.reason}")
            ref_eps = out["rtseg_20_segments"]["events_per_s"] if run.name == "python_20_segments" \
                else out["rtseg_one_segment"]["events_per_s"]
            j = run.to_json()
            j["rtseg_in_process_speedup"] = _ratio(ref_eps, run.events_per_s)
            j["ratio_to_rtseg_in_process"] = _ratio(run.events_per_s, ref_eps, 4)
            out[run.name] = j
            if run.status == "ok":
                self.say(f"  {run.name}: {run.events_per_s:,.0f} events/s (rtseg in-process "
                         f"{j['rtseg_in_process_speedup']}x)")

    # ------------------------------------------------------------------ through gRPC

    def e2e(self, shards: int) -> None:
        from bench import e2e

        cfg = self.cfg
        sc = next(s for s in cfg.scales if s.users == cfg.e2e_users)
        w = self.workload(sc.users)
        plan = e2e.E2EPlan(w.config, sustained_events=sc.compare_events, sustained_batch=sc.batch,
                           loads=cfg.loads, load_seconds=cfg.load_seconds,
                           first_delta=(shards == cfg.shards[0]))
        extras = []
        if shards == 2 or (2 not in cfg.shards and shards == cfg.shards[0]):
            extras.append(("timer_accuracy", lambda srv: e2e.timer_accuracy(srv, users=cfg.timer_users)))
            extras.append(("replay", self._replay))
        res = e2e.run_server(shards, w, plan, curve=shards in cfg.curve_shards, extras=extras, say=self.say)
        for scen in ("segments20", "one_segment"):
            r = res.get(scen) or {}
            if r.get("membership_equal") is False:
                self.results["mismatches"][f"e2e {shards} shards/{scen}"] = r.get("mismatch")
        rep = res.get("replay") or {}
        for seg, bad in (rep.get("mismatches") or {}).items():
            self.results["mismatches"][f"replay/{seg}"] = bad
        self.results.setdefault("e2e", {})[str(shards)] = res

    def _replay(self, srv) -> dict:
        from bench.replay import run_replay

        return run_replay(srv, self.cfg.replay_speedups, self.cfg.replay_seconds, say=self.say)

    def cold_start(self) -> None:
        from bench.e2e import cold_start

        self.say("cold start: rtseg serve with an empty NUMBA_CACHE_DIR (compiles every kernel)")
        self.results["cold_start"] = cold_start()

    # ------------------------------------------------------------------ ratios

    def ratios(self) -> dict:
        """The headline figures as ratios to rtseg, with the targets of issue 5."""
        R = self.results
        out: dict = {}
        cmp_ = R.get("compare", {})
        e2e_ = R.get("e2e", {})
        for users, c in cmp_.items():
            row: dict = {}
            py20 = c.get("python_20_segments", {})
            row["in_process_vs_python_20"] = _ratio(c.get("rtseg_20_segments", {}).get("events_per_s"),
                                                    py20.get("events_per_s"))
            one = c.get("rtseg_one_segment", {}).get("events_per_s")
            for b in ("python_one_segment", "redis_pipelined", "redis_lua", "bytewax"):
                row[f"in_process_vs_{b}"] = _ratio(one, c.get(b, {}).get("events_per_s"))
            if int(users) == self.cfg.e2e_users:
                for shards, e in e2e_.items():
                    eps = ((e.get("one_segment") or {}).get("sustained") or {}).get("events_per_s")
                    for b in ("python_one_segment", "redis_pipelined", "redis_lua", "bytewax"):
                        row[f"e2e_{shards}sh_vs_{b}"] = _ratio(eps, c.get(b, {}).get("events_per_s"))
            out[users] = row
        # DuckDB refresh vs the p99 at LATENCY_LOAD (2 shards, else the first curve)
        p99 = None
        for shards in ("2", *e2e_.keys()):
            curve = ((e2e_.get(shards) or {}).get("segments20") or {}).get("curve") or []
            pt = next((p for p in curve if p.get("offered_events_per_s") == LATENCY_LOAD), None)
            if pt and pt.get("latency", {}).get("p99_ms"):
                p99 = (shards, pt["latency"]["p99_ms"])
                break
        scale_e2e = (R.get("scales", {}).get(str(self.cfg.e2e_users)) or {}).get("duckdb") or {}
        if p99 and scale_e2e.get("refresh_ms_all") is not None:
            out["duckdb_refresh_over_p99"] = {
                "shards": int(p99[0]), "rtseg_p99_ms": p99[1], "offered_events_per_s": LATENCY_LOAD,
                "duckdb_refresh_ms_all": scale_e2e["refresh_ms_all"],
                "duckdb_refresh_ms_one_segment": scale_e2e.get("refresh_ms_one_segment"),
                "users": self.cfg.e2e_users,
                "ratio_all": _ratio(scale_e2e["refresh_ms_all"], p99[1]),
                "ratio_one_segment": _ratio(scale_e2e.get("refresh_ms_one_segment"), p99[1])}
        out["targets"] = TARGETS
        return out


# --------------------------------------------------------------------------- helpers


def _traits(w: Workload, rows: np.ndarray) -> list:
    cols = w.trait_columns(rows)
    names = list(cols)
    lists = [cols[k].tolist() for k in names]
    return [(uid, {k: col[i] for k, col in zip(names, lists) if col[i] is not None}, None)
            for i, uid in enumerate(w.user_ids[rows].tolist())]


def _feed(target, batches) -> tuple[int, float]:
    events, seconds = 0, 0.0
    for b in batches:
        cols = b.columns()
        t0 = time.perf_counter()
        target.ingest_columns(**cols)
        seconds += time.perf_counter() - t0
        events += len(b)
    return events, seconds


def _flat(text: str, limit: int) -> str:
    """One line of at most ``limit`` characters."""
    return " ".join(str(text).split())[:limit]


def _failed_parts(R: dict) -> list[str]:
    """Every part that reported an error instead of (all of) its figures."""
    out = [e["step"] for e in R.get("errors", [])]
    for shards, e in R.get("e2e", {}).items():
        if e.get("error"):
            out.append(f"e2e {shards} shard(s)")
        for k, v in e.items():
            if isinstance(v, dict) and v.get("error"):
                out.append(f"e2e {shards} shard(s)/{k}")
    if (R.get("cold_start") or {}).get("error"):
        out.append("cold start")
    return out


def _available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------- output


def table(R: dict) -> str:
    """The human-readable summary: figure, rtseg, baseline, ratio, target."""
    rows: list[tuple] = []
    ratios = R.get("ratios", {})

    def fmt(x, unit=""):
        if x is None:
            return "-"
        if isinstance(x, str):
            return x
        return (f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.3g}") + unit

    for users, c in R.get("compare", {}).items():
        rows.append((f"== baselines, {int(users):,} users, {c['events']:,} events (same events) ==",))
        r20 = c.get("rtseg_20_segments", {})
        one = c.get("rtseg_one_segment", {})
        for b, ref, label in (("python_20_segments", r20, "20 segments"),
                              ("python_one_segment", one, "1 segment"),
                              ("redis_pipelined", one, "1 segment"), ("redis_lua", one, "1 segment"),
                              ("bytewax", one, "1 segment")):
            j = c.get(b, {})
            if j.get("status") == "skipped":
                rows.append((f"{b} ({label}) events/s", fmt(ref.get("events_per_s")), "SKIPPED", j.get("reason", ""), ""))
                continue
            tgt = ">=10x" if b == "python_20_segments" else ""
            rows.append((f"{b} ({label}) events/s, in-process", fmt(ref.get("events_per_s")),
                         fmt(j.get("events_per_s")), fmt(j.get("rtseg_in_process_speedup"), "x"), tgt))
        if int(users) == R.get("config", {}).get("e2e_users"):
            for shards, e in R.get("e2e", {}).items():
                eps = ((e.get("one_segment") or {}).get("sustained") or {}).get("events_per_s")
                if not eps:
                    continue
                for b in ("python_one_segment", "redis_pipelined", "redis_lua", "bytewax"):
                    j = c.get(b, {})
                    if j.get("status") != "ok":
                        continue
                    tgt = ">=10x" if b == "redis_lua" else (">=3x" if b == "bytewax" else "")
                    rows.append((f"{b} (1 segment) events/s, gRPC e2e {shards} shard(s)", fmt(eps),
                                 fmt(j.get("events_per_s")), fmt(_ratio(eps, j.get("events_per_s")), "x"), tgt))
    for users, s in R.get("scales", {}).items():
        e = s.get("engine_20_segments")
        if s.get("skipped"):
            rows.append((f"== {int(users):,} users: SKIPPED: {s['skipped']} ==",))
            continue
        if not e:
            continue
        rows.append((f"== in-process engine, {int(users):,} users, 20 segments, {e['events']:,} events ==",))
        rows.append(("events/s (1 core, ingest_columns)", fmt(e["events_per_s"]), "", "", ""))
        rows.append(("backfill of a new segment", fmt(e["backfill_ms"], " ms"), "", "", ""))
        rows.append(("bytes per user / per retained event",
                     f"{fmt(e['bytes_per_user'])} / {fmt(e['bytes_per_retained_event'])}", "", "", ""))
        d = s.get("duckdb")
        if d and d.get("status") == "ok":
            rows.append((f"DuckDB full refresh ({len(d.get('segments', []))} segments) vs rtseg backfill",
                         fmt(e["backfill_ms"], " ms"), fmt(d.get("refresh_ms_all"), " ms"),
                         fmt(_ratio(d.get("refresh_ms_all"), e["backfill_ms"]), "x"), ""))
    dd = ratios.get("duckdb_refresh_over_p99")
    if dd:
        rows.append((f"== DuckDB refresh vs rtseg p99 ({dd['users']:,} users) ==",))
        rows.append((f"p99 ingest-to-delta at {dd['offered_events_per_s']:,}/s ({dd['shards']} shards) vs refresh (all)",
                     fmt(dd["rtseg_p99_ms"], " ms"), fmt(dd["duckdb_refresh_ms_all"], " ms"),
                     fmt(dd["ratio_all"], "x"), ">=10x"))
    for shards, e in R.get("e2e", {}).items():
        rows.append((f"== gRPC end to end, {shards} shard(s) ==",))
        if e.get("error"):
            rows.append((f"ERROR: {_flat(e['error'], 150)}",))
            continue
        if e.get("start_to_first_delta_s") is not None:
            rows.append(("process start to first delta (warm Numba cache)", fmt(e["start_to_first_delta_s"], " s"), "", "", ""))
        for scen in ("segments20", "one_segment"):
            r = e.get(scen) or {}
            if r.get("error"):
                rows.append((f"{scen}: ERROR {_flat(r['error'], 150)}",))
            s = r.get("sustained") or {}
            if s:
                rows.append((f"{scen}: sustained events/s ({s.get('events', 0):,} events)", fmt(s.get("events_per_s")),
                             "FAILED REQUESTS" if s.get("errors") else "", "", ""))
            for p in r.get("curve") or []:
                if p.get("skipped") or not p.get("accepted"):
                    continue
                lat = p["latency"]
                rows.append((f"{scen}: offered {p['offered_events_per_s']:,}/s -> p50/p99/p99.9",
                             f"{fmt(lat['p50_ms'])}/{fmt(lat['p99_ms'])}/{fmt(lat['p999_ms'])} ms",
                             f"got {fmt(p['events_per_s'])}/s", "", ""))
            if r.get("backfill_ms") is not None:
                rows.append((f"{scen}: backfill through gRPC ({r.get('backfill_users', 0):,} users)",
                             fmt(r["backfill_ms"], " ms"), "", "", ""))
        t = e.get("timer_accuracy")
        if t and t.get("p50_ms") is not None:
            rows.append(("timer accuracy (wall clock): due -> delta p50/p99/max",
                         f"{fmt(t['p50_ms'])}/{fmt(t['p99_ms'])}/{fmt(t['max_ms'])} ms", "", "", ""))
        rp = e.get("replay")
        if rp and rp.get("steps"):
            for st in rp["steps"]:
                if st.get("skipped") or not st.get("latency"):
                    continue
                rows.append((f"online-retail replay {st['speedup']:,.0f}x: offered -> got, p99",
                             f"{fmt(st['offered_events_per_s'])} -> {fmt(st['events_per_s'])}/s",
                             f"p99 {fmt(st['latency']['p99_ms'])} ms", "", ""))
    cs = R.get("cold_start")
    if cs:
        rows.append(("cold start: process start to first delta (empty Numba cache)",
                     fmt(cs.get("start_to_first_delta_s"), " s") if not cs.get("error") else cs["error"][:80], "", "", ""))
    widths = [62, 22, 18, 12, 8]
    lines = [f"{'figure':<{widths[0]}} {'rtseg':>{widths[1]}} {'baseline':>{widths[2]}} {'rtseg adv.':>{widths[3]}} "
             f"{'target':>{widths[4]}}"]
    for r in rows:
        if len(r) == 1:
            lines.append(r[0])
        else:
            lines.append(f"{r[0]:<{widths[0]}} {str(r[1]):>{widths[1]}} {str(r[2]):>{widths[2]}} "
                         f"{str(r[3]):>{widths[3]}} {str(r[4]):>{widths[4]}}")
    lines.append("rtseg adv. = rtseg's figure over the baseline's (events/s), or the baseline's time over rtseg's.")
    if R.get("mismatches"):
        lines.append(f"MEMBERSHIP MISMATCHES (run FAILED): {sorted(R['mismatches'])}")
    else:
        lines.append("membership: every baseline (and the served engine) equals rtseg's in-process engine")
    for e in R.get("errors", []):
        lines.append(f"ERROR in {e['step']}: {_flat(e['error'], 160)}")
    if R.get("parts_failed"):
        lines.append(f"PARTS WITH ERRORS (see results.json): {', '.join(R['parts_failed'])}")
    lines.append(f"suite {R.get('suite')} took {R.get('seconds')} s")
    return "\n".join(lines)


def plots(R: dict, out_dir: str) -> list[str]:
    """PNG plots of the curves; returns the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []

    def save(fig, name):
        path = os.path.join(out_dir, name)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    e2e_ = R.get("e2e", {})
    curves = {s: (e.get("segments20") or {}).get("curve") for s, e in e2e_.items()}
    curves = {s: [p for p in c if not p.get("skipped")] for s, c in curves.items() if c}
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for s, pts in curves.items():
            x = [p["events_per_s"] for p in pts]
            for key, style in (("p50_ms", "-o"), ("p99_ms", "--s"), ("p999_ms", ":^")):
                ax.plot(x, [p["latency"][key] for p in pts], style, label=f"{s} shard(s) {key[:-3]}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("achieved events/s (offered load steps)")
        ax.set_ylabel("ingest-to-delta latency (ms)")
        ax.set_title("rtseg through gRPC: latency vs throughput (20+1 segments)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, "latency_throughput.png")
    sh = sorted(int(s) for s, e in e2e_.items() if not e.get("error"))
    if sh:
        fig, ax = plt.subplots(figsize=(6, 4))
        for scen in ("segments20", "one_segment"):
            y = [((e2e_[str(s)].get(scen) or {}).get("sustained") or {}).get("events_per_s") for s in sh]
            ax.plot(sh, [v or np.nan for v in y], "-o", label=scen)
        ax.set_xticks(sh)
        ax.set_xlabel("shards")
        ax.set_ylabel("sustained events/s through gRPC")
        ax.set_title("Scaling with shards (2-core machine)")
        ax.grid(True, alpha=0.3)
        ax.legend()
        save(fig, "scaling_shards.png")
    for users, c in R.get("compare", {}).items():
        names, vals = [], []
        one = c.get("rtseg_one_segment", {}).get("events_per_s")
        names.append("rtseg in-process")
        vals.append(one)
        for s, e in e2e_.items():
            v = ((e.get("one_segment") or {}).get("sustained") or {}).get("events_per_s")
            if v:
                names.append(f"rtseg gRPC {s}sh")
                vals.append(v)
        for b in ("python_one_segment", "redis_pipelined", "redis_lua", "bytewax"):
            v = c.get(b, {}).get("events_per_s")
            if v:
                names.append(b)
                vals.append(v)
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.bar(names, vals, color=["tab:blue" if n.startswith("rtseg") else "tab:gray" for n in names])
        ax.set_yscale("log")
        ax.set_ylabel("events/s")
        ax.set_title(f"One-segment workload, {int(users):,} users, {c['events']:,} events")
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        save(fig, f"baselines_{users}.png")
    rp = next(((e.get("replay") or {}) for e in e2e_.values() if e.get("replay")), {})
    steps = [s for s in rp.get("steps", []) if s.get("latency") and s["latency"].get("p50_ms") is not None]
    if steps:
        fig, ax = plt.subplots(figsize=(6, 4))
        x = [s["speedup"] for s in steps]
        ax.plot(x, [s["latency"]["p50_ms"] for s in steps], "-o", label="p50")
        ax.plot(x, [s["latency"]["p99_ms"] for s in steps], "--s", label="p99")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("replay speed-up (data time / wall time)")
        ax.set_ylabel("ingest-to-delta latency (ms)")
        ax.set_title("Online Retail replay through gRPC")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        save(fig, "replay.png")
    sc = {int(u): s["engine_20_segments"] for u, s in R.get("scales", {}).items() if s.get("engine_20_segments")}
    if len(sc) > 1:
        users = sorted(sc)
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.8))
        ax[0].plot(users, [sc[u]["events_per_s"] for u in users], "-o")
        ax[0].set_xscale("log")
        ax[0].set_xlabel("users")
        ax[0].set_ylabel("events/s (in-process, 1 core)")
        ax[1].plot(users, [sc[u]["bytes_per_user"] for u in users], "-o", label="bytes/user")
        ax[1].plot(users, [sc[u]["bytes_per_retained_event"] for u in users], "-s", label="bytes/event")
        ax[1].set_xscale("log")
        ax[1].set_xlabel("users")
        ax[1].legend()
        for a in ax:
            a.grid(True, alpha=0.3)
        save(fig, "scales.png")
    return written


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (set, frozenset)):
        return sorted(_jsonable(v) for v in o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    return o


def run_suite(name: str, out_dir: str, progress: bool = True, parts=PARTS,
              merge: bool = False) -> tuple[dict, str]:
    """Run the suite (or only ``parts``), write results.json, table.txt and the plots;
    (results, table). With ``merge``, the figures of the other parts are kept from the
    ``results.json`` already in ``out_dir``."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}: choose from {sorted(SUITES)}")
    os.makedirs(out_dir, exist_ok=True)
    previous = None
    if merge:
        with open(os.path.join(out_dir, "results.json")) as f:
            previous = json.load(f)
        if previous.get("suite") != name:
            raise ValueError(f"{out_dir}/results.json holds the {previous.get('suite')!r} suite, not {name!r}")
    suite = Suite(SUITES[name], out_dir, progress=progress, parts=parts, previous=previous)
    results = suite.run()
    results["plots"] = [os.path.basename(p) for p in plots(results, out_dir)]
    text = table(results)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(_jsonable(results), f, indent=2)
    with open(os.path.join(out_dir, "table.txt"), "w") as f:
        f.write(text + "\n")
    partial = os.path.join(out_dir, "results.partial.json")
    if os.path.exists(partial):
        os.remove(partial)
    return results, text
