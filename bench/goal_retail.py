"""Goals on Online Retail: "purchases within 30 days" by the active customers, forecast at a
cutoff and replayed to the end.

    python -m bench.goal_retail [--cutoffs 2011-06-01 ...] [--out FILE] [--img-dir docs/img]

prints one JSON object (progress on stderr) and writes it to
``bench/results/goals/retail.json``; the charts go to ``docs/img/goal_retail.png`` (the report
of the headline goal, ``engine._goal_report``) and ``docs/img/goal_retail_months.png``.

The data are the events of ``bench.retail_model`` (one ``purchase`` per invoice, one ``item``
per line, one ``return`` per cancelled invoice), replayed into one embedded ``Engine`` (event
clock, retention 150d) in time order, one day per batch. The segment ``active`` is
``count(purchase, 90d) >= 1``. At each cutoff ``T`` (the first of each month, June to
November 2011) a goal ``m_YYYY_MM`` is created on ``active`` for ``purchase`` by ``T + 30d``
(default control fraction 0.1): the goal trains its model (``goal-m_YYYY_MM``: horizon 30d,
default features and lookback, point in time at ``T - 30d``), scores the members and
forecasts the sum of their probabilities. The replay then goes on; once the clock is past
``T + 30d`` the goal's actual conversions (tracked from its segments' deltas) are compared with
the forecast, and with a count made from the CSV (members with a purchase in ``(T, T + 30d]``).

The naive forecast beside it: the share of the members at ``T - 30d`` who bought in
``(T - 30d, T]`` (last month's repeat rate) times the test group's size.

Target (issue 10): the headline goal's forecast within 10 % of what happened.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from bench import emit_json
from bench.retail_model import DAY_MS, day_ms, load_events, replay

CUTOFFS = ("2011-06-01", "2011-07-01", "2011-08-01", "2011-09-01", "2011-10-01", "2011-11-01")
HEADLINE = "2011-09-01"
HORIZON_MS = 30 * DAY_MS
RETENTION = "150d"
ACTIVE = "count(purchase, 90d) >= 1"
TARGET_ERROR = 0.10
OUT = os.path.join("bench", "results", "goals", "retail.json")
IMG_DIR = os.path.join("docs", "img")


def _log(msg: str) -> None:
    print(f"[goal_retail {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def goal_name(cutoff: str) -> str:
    return "m_" + cutoff[:7].replace("-", "_")


def _buyers(data, names, from_ms: int, to_ms: int) -> set:
    ts = data.timestamp_ms
    keep = (data.type == "purchase") & (ts > from_ms) & (ts <= to_ms)
    return {names[i] for i in np.unique(data.user_index[keep]).tolist()}


def _active_at(data, names, t_ms: int) -> set:
    return _buyers(data, names, t_ms - 90 * DAY_MS, t_ms)


def run(cutoffs=CUTOFFS, headline: str = HEADLINE, img_dir: str | None = IMG_DIR, say=_log) -> dict:
    from engine import Engine

    data = load_events()
    names = {int(i): str(u) for i, u in zip(data.user_index.tolist(), data.user_id.tolist())}
    eng = Engine(clock="event", retention=RETENTION)
    t_first = int(data.timestamp_ms[0])
    eng.advance_clock(t_first)
    eng.create_segment("active", ACTIVE, "customers with an order in the last 90 days")
    t_done = t_first - 1
    goals: dict[str, dict] = {}
    t_start = time.perf_counter()
    times = sorted({day_ms(c) for c in cutoffs} | {day_ms(c) + HORIZON_MS for c in cutoffs})
    for t in times:
        replay(eng, data, t_done, t)
        eng.advance_clock(t)
        t_done = t
        for c in cutoffs:
            name = goal_name(c)
            if day_ms(c) == t:
                t0 = time.perf_counter()
                g = eng.create_goal(name, "active", "purchase", t + HORIZON_MS)
                model = eng.get_model(g.model)
                goals[c] = {"created": g, "create_s": round(time.perf_counter() - t0, 2),
                            "model_auc": round(model.auc, 4), "model_rows": int(model.rows),
                            "test_members": sorted(set().union(*(eng.members(s) for s in g.segments[:3])))}
                say(f"{c}: goal {name} on {g.snapshot_size} customers, forecast {g.predicted:.1f} "
                    f"(test) in {goals[c]['create_s']} s")
            if day_ms(c) + HORIZON_MS == t:
                goals[c]["final"] = eng.get_goal(name)
    total_s = time.perf_counter() - t_start
    rows = []
    for c in cutoffs:
        t = day_ms(c)
        g, f = goals[c]["created"], goals[c]["final"]
        test = set(goals[c]["test_members"])
        csv_actual = len(test & _buyers(data, names, t, t + HORIZON_MS))
        before = _active_at(data, names, t - HORIZON_MS)
        repeat = len(before & _buyers(data, names, t - HORIZON_MS, t)) / max(len(before), 1)
        naive = repeat * g.test_size
        err = (f.predicted - f.actual) / f.actual if f.actual else None
        rows.append({
            "cutoff": c, "goal": goal_name(c), "snapshot_size": g.snapshot_size,
            "test_size": g.test_size, "control_size": g.control_size,
            "model": g.model, "model_auc": goals[c]["model_auc"], "model_rows": goals[c]["model_rows"],
            "create_s": goals[c]["create_s"],
            "forecast": round(f.predicted, 1), "actual": f.actual, "actual_from_csv": csv_actual,
            "error": None if err is None else round(err, 4),
            "within_target": err is not None and abs(err) <= TARGET_ERROR,
            "forecast_control": round(f.predicted_control, 1), "actual_control": f.actual_control,
            "test_conversion": round(f.test_conversion, 4),
            "control_conversion": round(f.control_conversion, 4),
            "uplift": round(f.uplift, 4), "uplift_95": [round(f.uplift_low, 4), round(f.uplift_high, 4)],
            "sd_by_chance": round(float(np.sqrt(f.predicted * (1 - f.predicted / max(g.test_size, 1))))
                                  / max(f.actual, 1), 4),
            "naive_forecast": round(naive, 1),
            "naive_error": None if not f.actual else round((naive - f.actual) / f.actual, 4),
            "days": [{"day": k + 1, "predicted": round(d.predicted, 1), "actual": d.actual}
                     for k, d in enumerate(f.days)],
        })
        say(f"{c}: forecast {f.predicted:.1f}, actual {f.actual} (csv {csv_actual}), error {err}")
    head = next(r for r in rows if r["cutoff"] == headline)
    errors = [abs(r["error"]) for r in rows if r["error"] is not None]
    out = {
        "data": "UCI Online Retail (../shared/data/online-retail.csv.gz)",
        "segment": {"name": "active", "expression": ACTIVE},
        "target": "purchase", "horizon_days": 30, "retention": RETENTION,
        "control_fraction": 0.1, "replay_s": round(total_s, 1),
        "headline": head["cutoff"], "headline_error": head["error"],
        "headline_within_target": head["within_target"],
        "mean_abs_error": round(float(np.mean(errors)), 4) if errors else None,
        "within_target": sum(r["within_target"] for r in rows), "goals": len(rows),
        "mean_abs_naive_error": round(float(np.mean([abs(r["naive_error"]) for r in rows
                                                      if r["naive_error"] is not None])), 4),
        "runs": rows,
    }
    if img_dir:
        from engine._goal_report import plot_goal

        out["charts"] = [plot_goal(goals[headline]["final"], os.path.join(img_dir, "goal_retail.png")),
                         _months_chart(rows, os.path.join(img_dir, "goal_retail_months.png"))]
    eng.close()
    return out


def _months_chart(rows, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.bar(x - 0.27, [r["forecast"] for r in rows], 0.27, label="goal forecast")
    ax.bar(x, [r["actual"] for r in rows], 0.27, label="actual")
    ax.bar(x + 0.27, [r["naive_forecast"] for r in rows], 0.27, label="naive (last month's rate)")
    for i, r in enumerate(rows):
        ax.annotate(f"{r['error']:+.0%}", (i - 0.27, r["forecast"]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [r["cutoff"][:7] for r in rows])
    ax.set_ylabel("test members buying within 30 days")
    ax.set_title("Online Retail: goal forecast at the cutoff against what happened")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.goal_retail", description=__doc__.split("\n\n")[0])
    p.add_argument("--cutoffs", nargs="+", default=list(CUTOFFS))
    p.add_argument("--headline", default=HEADLINE)
    p.add_argument("--out", default=OUT)
    p.add_argument("--img-dir", default=IMG_DIR)
    a = p.parse_args(argv)
    res = run(a.cutoffs, a.headline, a.img_dir)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    emit_json(res, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
