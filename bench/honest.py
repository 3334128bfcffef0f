"""Honest in-process figures (issue 11): rtseg against the strongest code a user would write.

    python -m bench.honest [--users 100000] [--events 2000000] [--batch 20000] [--days 7]
                           [--days20 60] [--seed 1] [--repeats 3] [--repeats20 2] [--quick]
                           [--out FILE]
    python -m bench.honest --table FILE     # the markdown table of an earlier result

prints one JSON object on stdout (and writes it to ``--out``); progress goes to stderr; exits
with status 1 when a baseline's membership or delta count differs from rtseg's.

Two runs, one core (``NUMBA_NUM_THREADS=1``), event clock, every system fed the same columns
in the same batches (the batches are built before any clock starts; only the systems'
``ingest_columns`` calls are timed):

1. **one segment** ``ONE_SEGMENT`` on a stream of three event types (``view_product``,
   ``add_to_cart``, ``purchase``; every other type of the seeded workload is renamed
   ``add_to_cart``) with one string property (``product_id``), ``--days`` (7) days:
   rtseg (``Engine.ingest_columns``, retention 30d as configured by default in the suite, and
   again with the smallest retention the segment allows, 2d), ``StraightPython`` and the
   hand-written ``NumbaKernel`` of bench/baselines/straight.py. Membership is compared at
   every batch end, and the delta counts at the end. Each system runs ``--repeats`` (3)
   times on fresh state and each figure is the best of the runs (the machine is shared).
2. **twenty segments** ``SEGMENTS`` on the full six-type workload over ``--days20`` (60)
   days, so that the second half of the stream lies past the longest window (30d): rtseg
   against ``Straight20`` (bench/baselines/straight20.py); final membership of every segment,
   segment sizes at every batch end and the delta counts are compared. The two run
   ``--repeats20`` (2) times each, alternating, and each figure is the best of the runs.

Each system's events/s is reported for the whole stream and split into **burst** (batches
whose timestamps all lie within the longest window of the start: the windows are filling)
and **steady state** (batches in the second half of the stream whose timestamps all lie past
the longest window). Ratios: ``rtseg / straightforward`` (how many times faster rtseg is) and
``rtseg / kernel`` as a percentage of the practical limit.
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from bench.workload import (
    DAY_MS,
    HOUR_MS,
    ONE_SEGMENT,
    ONE_SEGMENT_NAME,
    SEGMENTS,
    Batch,
    Workload,
    WorkloadConfig,
)

ONE_WINDOW_MS = 48 * HOUR_MS
TWENTY_WINDOW_MS = 30 * DAY_MS
THREE_TYPES = ("view_product", "add_to_cart", "purchase")


def _log(msg: str) -> None:
    print(f"[honest {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- streams


def three_type_batch(b: Batch) -> Batch:
    """The batch with three event types and one string property (``product_id``)."""
    t = b.type.copy()
    t[(t != "view_product") & (t != "purchase")] = "add_to_cart"
    return Batch(b.user_index, b.user_id, t, b.timestamp_ms, b.value, {"product_id": b.properties["product_id"]})


def build_batches(workload: Workload, batch: int, three_types: bool = False) -> list[Batch]:
    out = []
    for b in workload.batches(batch):
        out.append(three_type_batch(b) if three_types else b)
    return out


@dataclass
class Phases:
    """Which batches are burst and which are steady state."""

    burst: list[bool]
    steady: list[bool]
    definition: dict = field(default_factory=dict)


def phases(batches: list[Batch], start_ms: int, window_ms: int) -> Phases:
    total = sum(len(b) for b in batches)
    burst, steady = [], []
    pos = 0
    for b in batches:
        lo, hi = int(b.timestamp_ms.min()), int(b.timestamp_ms.max())
        burst.append(hi < start_ms + window_ms)
        steady.append(pos >= total // 2 and lo >= start_ms + window_ms)
        pos += len(b)
    nb = sum(len(b) for b, f in zip(batches, burst) if f)
    ns = sum(len(b) for b, f in zip(batches, steady) if f)
    return Phases(burst, steady, {
        "longest_window_ms": window_ms,
        "burst": f"batches whose timestamps all lie before start + {window_ms // HOUR_MS}h "
                 f"(windows filling): {nb:,} events",
        "steady": f"batches in the second half of the stream whose timestamps all lie past start + "
                  f"{window_ms // HOUR_MS}h (windows full): {ns:,} events",
    })


# --------------------------------------------------------------------------- timing


@dataclass
class Timed:
    name: str
    seconds: list[float] = field(default_factory=list)
    events: list[int] = field(default_factory=list)
    extra_seconds: list[float] = field(default_factory=list)  # e.g. the kernel calls alone

    def figures(self, ph: Phases, extra_name: str | None = None) -> dict:
        def part(sel, secs):
            n = sum(e for e, f in zip(self.events, sel) if f)
            s = sum(x for x, f in zip(secs, sel) if f)
            return {"events": n, "seconds": round(s, 4), "events_per_s": _r(n / s) if s > 0 and n else None}

        every = [True] * len(self.events)
        out = {"all": part(every, self.seconds), "burst": part(ph.burst, self.seconds),
               "steady": part(ph.steady, self.seconds)}
        if extra_name and self.extra_seconds:
            out[extra_name] = {"all": part(every, self.extra_seconds), "burst": part(ph.burst, self.extra_seconds),
                               "steady": part(ph.steady, self.extra_seconds)}
        return out


def _f(x) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _r(x, d: int = 1):
    return None if x is None else round(float(x), d)


def _ratio(a, b, d: int = 2):
    return round(a / b, d) if a and b else None


def feed(target, batches: list[Batch], name: str, on_batch=None, progress=True, extra=None) -> Timed:
    """Every batch through ``target.ingest_columns``, timing each call."""
    tm = Timed(name)
    last = time.perf_counter()
    for k, b in enumerate(batches):
        cols = b.columns()
        x0 = extra() if extra else 0.0
        t0 = time.perf_counter()
        target.ingest_columns(**cols)
        tm.seconds.append(time.perf_counter() - t0)
        if extra:
            tm.extra_seconds.append(extra() - x0)
        tm.events.append(len(b))
        if on_batch is not None:
            on_batch(k)
        if progress and time.perf_counter() - last > 10:
            last = time.perf_counter()
            n = sum(tm.events)
            _log(f"  {name}: {n:,} events, {n / sum(tm.seconds):,.0f}/s")
    return tm


# --------------------------------------------------------------------------- the one segment


def _rtseg_one(start_ms: int, retention: str = "30d"):
    from engine import Engine

    eng = Engine(clock="event", retention=retention)
    eng.advance_clock(start_ms)
    eng.create_segment(ONE_SEGMENT_NAME, ONE_SEGMENT)
    return eng


def warm_up(start_ms: int, seed: int) -> float:
    """Compile every kernel of the runs on a tiny stream (not timed)."""
    from bench.baselines.straight import NumbaKernel, StraightPython
    from bench.baselines.straight20 import Straight20
    from bench.core_bench import _trait_updates, prepare
    from engine import Engine

    t0 = time.perf_counter()
    w = Workload(WorkloadConfig(users=300, events=6_000, days=4.0, seed=seed + 1000, start_ms=start_ms))
    one = build_batches(w, 1_000, three_types=True)
    for t in (_rtseg_one(start_ms), _rtseg_one(start_ms, "2d"), StraightPython(start_ms=start_ms),
              NumbaKernel(start_ms=start_ms)):
        for b in one:
            t.ingest_columns(**b.columns())
    eng = Engine(clock="event", retention="30d")
    prepare(eng, w, np.arange(300), SEGMENTS)
    st = Straight20(start_ms)
    st.set_traits_many(_trait_updates(w, np.arange(300)))
    for b in w.batches(1_000):
        eng.ingest_columns(**b.columns())
        st.ingest_columns(**b.columns())
    return time.perf_counter() - t0


def _best(figs: list[dict]) -> dict:
    """Per part, the run with the highest events/s."""
    out: dict = {}
    for key, val in figs[0].items():
        if isinstance(val, dict) and "events_per_s" not in val:
            out[key] = _best([f[key] for f in figs])
        else:
            out[key] = max((f[key] for f in figs), key=lambda p: p["events_per_s"] or 0.0)
    return out


def run_one(users: int, events: int, batch: int, days: float, seed: int, progress: bool = True,
            repeats: int = 3) -> dict:
    from bench.baselines.straight import NumbaKernel, StraightPython

    say = _log if progress else (lambda m: None)
    cfg = WorkloadConfig(users=users, events=events, days=days, seed=seed)
    w = Workload(cfg)
    start = cfg.start_ms
    say(f"one segment: building {events:,} events ({users:,} users, {days} days, 3 types), batches of {batch:,}")
    batches = build_batches(w, batch, three_types=True)
    ph = phases(batches, start, ONE_WINDOW_MS)
    ref_sets: list[frozenset] = []
    checks: dict = {}
    out: dict = {}

    def run_system(label, make, extra_name=None):
        """``repeats`` runs on fresh state; the first is checked batch by batch, and each
        figure (whole stream, burst, steady, for each timing) is the best of the runs."""
        bad = []
        figs = []
        for r in range(repeats):
            target, members, deltas, extra = make()

            def on_batch(k, members=members):
                m = frozenset(members())
                if label == "rtseg":
                    ref_sets.append(m)
                elif m != ref_sets[k] and len(bad) < 3:
                    bad.append({"batch": k, "rtseg": len(ref_sets[k]), label: len(m)})

            say(f"one segment: {label} (run {r + 1} of {repeats})")
            tm = feed(target, batches, label, on_batch if r == 0 else None, progress, extra)
            figs.append(tm.figures(ph, extra_name))
            if r == 0:
                final = (frozenset(members()), int(deltas()))
            elif (frozenset(members()), int(deltas())) != final:
                bad.append({"run": r + 1, "differs_from_run": 1})
        fig = _best(figs)
        fig.update(members=len(final[0]), deltas=final[1], repeats=repeats,
                   runs_events_per_s=[f["all"]["events_per_s"] for f in figs])
        out[label] = fig
        if label != "rtseg":
            checks[label] = {"batch_end_membership_equal": not bad, "first_differences": bad,
                             "final_membership_equal": final[0] == ref_sets[-1],
                             "deltas_equal": final[1] == out["rtseg"]["deltas"]}
        say(f"  {label}: {_f(fig['all']['events_per_s'])} events/s (burst {_f(fig['burst']['events_per_s'])}, "
            f"steady {_f(fig['steady']['events_per_s'])}); {fig['members']:,} members, {fig['deltas']:,} deltas")

    def rtseg(retention):
        def make():
            eng = _rtseg_one(start, retention)
            return eng, (lambda: eng.members(ONE_SEGMENT_NAME)), (lambda: eng.last_sequence), None
        return make

    def straight():
        sp = StraightPython(start_ms=start)
        return sp, sp.members, (lambda: sp.deltas), None

    def kernel():
        nk = NumbaKernel(start_ms=start, capacity=max(1024, users))
        return nk, nk.members, (lambda: nk.deltas), (lambda: nk.kernel_seconds)

    run_system("rtseg", rtseg("30d"))
    run_system("rtseg_retention_2d", rtseg("2d"))
    run_system("straight_python", straight)
    run_system("numba_kernel", kernel, extra_name="kernel_only")

    def eps(label, part, sub=None):
        f = out[label] if sub is None else out[label][sub]
        return f[part]["events_per_s"]

    ratios = {}
    for part in ("all", "burst", "steady"):
        ratios[part] = {
            "rtseg_over_straight_python": _ratio(eps("rtseg", part), eps("straight_python", part)),
            "rtseg_retention_2d_over_straight_python": _ratio(eps("rtseg_retention_2d", part),
                                                              eps("straight_python", part)),
            "rtseg_pct_of_numba_kernel": _pct(eps("rtseg", part), eps("numba_kernel", part)),
            "rtseg_pct_of_numba_kernel_only": _pct(eps("rtseg", part), eps("numba_kernel", part, "kernel_only")),
            "rtseg_retention_2d_pct_of_numba_kernel": _pct(eps("rtseg_retention_2d", part), eps("numba_kernel", part)),
        }
    ok = all(c["batch_end_membership_equal"] and c["final_membership_equal"] and c["deltas_equal"]
             for c in checks.values())
    return {
        "segment": ONE_SEGMENT,
        "workload": {"users": users, "events": events, "days": days, "seed": seed, "batch": batch,
                     "event_types": list(THREE_TYPES), "properties": ["product_id"],
                     "note": "the seeded workload with every type other than view_product and purchase "
                             "renamed add_to_cart, and only the product_id property"},
        "phases": ph.definition,
        "timing": f"best of {repeats} runs per figure, each on fresh state; the first run is the checked one",
        "systems": out,
        "ratios": ratios,
        "checks": checks,
        "equal": ok,
    }


def _pct(a, b):
    return round(100.0 * a / b, 1) if a and b else None


# --------------------------------------------------------------------------- twenty segments


def run_twenty(users: int, events: int, batch: int, days: float, seed: int, progress: bool = True,
               repeats: int = 2) -> dict:
    """rtseg and Straight20 over the same batches, ``repeats`` runs each on fresh state, the
    two systems alternating (so that a slow spell of the shared machine falls on both); the
    first run of each is checked, and each figure is the best of the runs."""
    from bench.baselines.straight20 import NAMES, Straight20
    from bench.core_bench import _trait_updates, prepare
    from engine import Engine

    say = _log if progress else (lambda m: None)
    cfg = WorkloadConfig(users=users, events=events, days=days, seed=seed)
    w = Workload(cfg)
    start = cfg.start_ms
    say(f"twenty segments: building {events:,} events ({users:,} users, {days} days), batches of {batch:,}")
    batches = build_batches(w, batch)
    ph = phases(batches, start, TWENTY_WINDOW_MS)
    rows = np.arange(users)
    figs: dict[str, list[dict]] = {"rtseg": [], "straight20_python": []}
    extra: dict[str, dict] = {}
    ref_sizes: list[list[int]] = []
    bad_sizes: list[dict] = []
    ref: dict = {}
    differ: list[str] = []

    for r in range(repeats):
        first = r == 0
        say(f"twenty segments: rtseg (run {r + 1} of {repeats})")
        eng = Engine(clock="event", retention="30d")
        t0 = time.perf_counter()
        prepare(eng, w, rows, SEGMENTS)
        setup_eng = time.perf_counter() - t0
        on_batch = (lambda k, e=eng: ref_sizes.append([len(e.members(n)) for n in NAMES])) if first else None
        tm = feed(eng, batches, "rtseg", on_batch, progress)
        fig = tm.figures(ph)
        figs["rtseg"].append(fig)
        if first:
            ref = {n: eng.members(n) for n in NAMES}
            extra["rtseg"] = {"setup_s": round(setup_eng, 3), "deltas": int(eng.last_sequence),
                              "segment_sizes": {n: len(ref[n]) for n in NAMES}}
        del eng
        say(f"  rtseg: {_f(fig['all']['events_per_s'])} events/s (burst {_f(fig['burst']['events_per_s'])}, "
            f"steady {_f(fig['steady']['events_per_s'])})")

        say(f"twenty segments: straight20 (pure Python, run {r + 1} of {repeats})")
        st = Straight20(start)
        t0 = time.perf_counter()
        st.set_traits_many(_trait_updates(w, rows))
        setup_st = time.perf_counter() - t0

        def check_sizes(k, st=st):
            got = [len(st.sets[i]) for i in range(len(NAMES))]
            if got != ref_sizes[k] and len(bad_sizes) < 3:
                bad_sizes.append({"batch": k, "differs": [n for n, a, b in zip(NAMES, ref_sizes[k], got) if a != b]})

        tm = feed(st, batches, "straight20_python", check_sizes if first else None, progress)
        fig = tm.figures(ph)
        figs["straight20_python"].append(fig)
        if first:
            differ = [n for n in NAMES if st.members(n) != ref[n]]
            extra["straight20_python"] = {"setup_s": round(setup_st, 3), "deltas": int(st.deltas)}
        del st
        say(f"  straight20: {_f(fig['all']['events_per_s'])} events/s (burst {_f(fig['burst']['events_per_s'])}, "
            f"steady {_f(fig['steady']['events_per_s'])})")

    out = {name: {**_best(runs), **extra[name], "repeats": repeats} for name, runs in figs.items()}
    checks = {"final_membership_equal": not differ, "segments_differing": differ,
              "batch_end_sizes_equal": not bad_sizes, "first_differences": bad_sizes,
              "deltas_equal": out["rtseg"]["deltas"] == out["straight20_python"]["deltas"]}
    ratios = {part: {"rtseg_over_straight20_python": _ratio(out["rtseg"][part]["events_per_s"],
                                                            out["straight20_python"][part]["events_per_s"])}
              for part in ("all", "burst", "steady")}
    return {
        "segments": len(NAMES),
        "workload": {"users": users, "events": events, "days": days, "seed": seed, "batch": batch,
                     "note": "the seeded six-type workload of bench/workload.py; traits of every user set "
                             "before the segments are created (not timed)"},
        "phases": ph.definition,
        "timing": f"best of {repeats} runs per figure, rtseg and straight20 alternating, each on fresh state; "
                  "the first run of each is the checked one",
        "systems": out,
        "ratios": ratios,
        "checks": checks,
        "equal": checks["final_membership_equal"] and checks["batch_end_sizes_equal"] and checks["deltas_equal"],
    }


# --------------------------------------------------------------------------- entry point


def run(users: int = 100_000, events: int = 2_000_000, batch: int = 20_000, days: float = 7.0,
        days20: float = 60.0, seed: int = 1, progress: bool = True, users20: int | None = None,
        events20: int | None = None, repeats: int = 3, repeats20: int = 2) -> dict:
    from bench.core_bench import machine_info

    say = _log if progress else (lambda m: None)
    say("warm-up (JIT, not timed)")
    warm_s = warm_up(WorkloadConfig().start_ms, seed)
    load_before = _loadavg()
    one = run_one(users, events, batch, days, seed, progress, repeats)
    twenty = run_twenty(users20 or users, events20 or events, batch, days20, seed, progress, repeats20)
    return {
        "benchmark": "honest",
        "machine": machine_info(),
        "warmup_s": round(warm_s, 2),
        "load_average": {"before": load_before, "after": _loadavg(),
                         "note": "1-minute load of the (shared) machine: above 1 per core, other work "
                                 "competed for the CPU"},
        "one_segment": one,
        "twenty_segments": twenty,
        "equal": one["equal"] and twenty["equal"],
        "summary": summary(one, twenty),
    }


def _loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def summary(one: dict, twenty: dict) -> dict:
    """The headline figures, flat."""
    s1, s20 = one["systems"], twenty["systems"]
    out = {}
    for part in ("all", "burst", "steady"):
        out[part] = {
            "one_rtseg_events_per_s": s1["rtseg"][part]["events_per_s"],
            "one_straight_python_events_per_s": s1["straight_python"][part]["events_per_s"],
            "one_numba_kernel_events_per_s": s1["numba_kernel"][part]["events_per_s"],
            "one_rtseg_over_straight_python": one["ratios"][part]["rtseg_over_straight_python"],
            "one_rtseg_pct_of_numba_kernel": one["ratios"][part]["rtseg_pct_of_numba_kernel"],
            "twenty_rtseg_events_per_s": s20["rtseg"][part]["events_per_s"],
            "twenty_straight20_python_events_per_s": s20["straight20_python"][part]["events_per_s"],
            "twenty_rtseg_over_straight20_python": twenty["ratios"][part]["rtseg_over_straight20_python"],
        }
    return out


def table(res: dict) -> str:
    """The figures of a result as a markdown table."""
    one, twenty = res["one_segment"], res["twenty_segments"]
    s1, s20, r1, r20 = one["systems"], twenty["systems"], one["ratios"], twenty["ratios"]
    parts = ("all", "burst", "steady")

    def row(label, fig, sub=None):
        cells = [_f((fig[sub] if sub else fig)[p]["events_per_s"]) for p in parts]
        return f"| {label} | " + " | ".join(cells) + " |"

    lines = ["| events/s | whole stream | burst | steady state |", "| --- | ---: | ---: | ---: |",
             row("1 segment: rtseg (retention 30d)", s1["rtseg"]),
             row("1 segment: rtseg (retention 2d)", s1["rtseg_retention_2d"]),
             row("1 segment: straightforward Python", s1["straight_python"]),
             row("1 segment: Numba kernel (with id/type coding)", s1["numba_kernel"]),
             row("1 segment: Numba kernel alone", s1["numba_kernel"], "kernel_only"),
             "| 1 segment: rtseg / straightforward Python | "
             + " | ".join(f"{r1[p]['rtseg_over_straight_python']}x" for p in parts) + " |",
             "| 1 segment: rtseg as % of the kernel (with coding / alone) | "
             + " | ".join(f"{r1[p]['rtseg_pct_of_numba_kernel']} % / {r1[p]['rtseg_pct_of_numba_kernel_only']} %"
                          for p in parts) + " |",
             row("20 segments: rtseg", s20["rtseg"]),
             row("20 segments: straightforward Python", s20["straight20_python"]),
             "| 20 segments: rtseg / straightforward Python | "
             + " | ".join(f"{r20[p]['rtseg_over_straight20_python']}x" for p in parts) + " |"]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.honest", description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=None, help="users (default 100,000)")
    p.add_argument("--events", type=int, default=None, help="events (default 2,000,000)")
    p.add_argument("--batch", type=int, default=None, help="events per batch (default 20,000)")
    p.add_argument("--days", type=float, default=7.0, help="days of the one-segment stream (default 7)")
    p.add_argument("--days20", type=float, default=60.0, help="days of the 20-segment stream (default 60)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of each one-segment system; each figure is the best (default 3)")
    p.add_argument("--repeats20", type=int, default=2,
                   help="runs of each twenty-segment system, alternating; each figure is the best (default 2)")
    p.add_argument("--quick", action="store_true", help="a tiny run (2,000 users, 40,000 events, batches of 2,000)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--table", default=None, metavar="JSON",
                   help="print the markdown table of an earlier result and exit")
    a = p.parse_args(argv)
    if a.table:
        with open(a.table) as f:
            print(table(json.load(f)))
        return 0
    if a.quick:
        users, events, batch = a.users or 2_000, a.events or 40_000, a.batch or 2_000
    else:
        users, events, batch = a.users or 100_000, a.events or 2_000_000, a.batch or 20_000
    if users < 1 or events < 1 or batch < 1:
        p.error("--users, --events and --batch must be positive")
    if a.repeats < 1 or a.repeats20 < 1:
        p.error("--repeats and --repeats20 must be at least 1")
    res = run(users, events, batch, a.days, a.days20, a.seed, repeats=a.repeats, repeats20=a.repeats20)
    text = json.dumps(res, indent=2)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(text + "\n")
        _log(f"wrote {a.out}")
    print(text)
    print(table(res), file=sys.stderr)
    if not res["equal"]:
        _log("MISMATCH: a baseline differs from rtseg (see 'checks')")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
