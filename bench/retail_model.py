"""Online Retail replayed as events, and a "buys again within 30 days" model trained on it.

    python -m bench.retail_model [--now 2011-05-01 2011-06-01 ...] [--algorithm auto]
                                 [--retention 150d] [--out FILE]

prints one JSON object on stdout (progress goes to stderr); about 15 s.

The data (``../shared/data/online-retail.csv.gz`` next to the project, never copied into it;
``RTSEG_RETAIL_CSV`` overrides the path) becomes events of three types. Rows without a
customer are left out; ``InvoiceDate`` is taken as UTC.

* ``purchase``: one per invoice (``InvoiceNo`` not starting with ``C``) at its date, ``value``
  = the invoice total (sum of quantity x unit price), properties ``country`` (str),
  ``stock_code`` (the invoice's largest line by value), ``lines`` (number of line items);
* ``item``: one per line item of those invoices, ``value`` = quantity x unit price, properties
  ``stock_code`` and ``quantity``;
* ``return``: one per cancelled invoice (``C...``), ``value`` = the amount refunded (positive),
  property ``country``.

So ``count(purchase, 30d)`` counts orders (the honest frequency baseline), ``sum(purchase.value,
90d)`` is spend and ``count(item, 90d)`` the lines bought.

For each training date ``T`` (``--now``; default the first of each month from May to October
2011, a rolling origin: one model per month), in one run:

1. the embedded ``Engine`` (event clock, retention 150d >= lookback 90d + horizon 30d) gets every
   event with ``t <= T`` in time order, in batches of one day, then ``advance_clock(T)``;
2. ``train_model(name="buy_again_30d", target="purchase", horizon_ms=30d, lookback_ms=90d)``
   with the default features: point-in-time training at ``cutoff = T - 30d``, label = the
   customer places an order in ``(cutoff, T]``, population = customers with a retained event at
   or before the cutoff; the report's AUC is recomputed here from the deployed ONNX model;
3. **baselines on the same validation users** (the model's own split by user hash): the AUC
   of recency alone (``-since(purchase)``), of frequency alone (``count(purchase, 90d)``) and
   of monetary alone (``sum(purchase.value, 90d)``), from the engine's training data as of the
   same cutoff; ``lift`` = model AUC - the better of recency and frequency;
4. the **validation forecast**: the sum of calibrated probabilities over the validation users
   against how many of them bought (the report's ``predicted_positives`` and
   ``validation_positives``), with ``forecast_sd``, the relative standard deviation of that
   count by chance alone;
5. **forward**: the scores every customer has at ``T`` (after the deploy, read with
   ``get_user``); the next 30 days are replayed; the forecast (sum of the scores) is compared
   with how many of them did order in ``(T, T + 30d]``, counted from the CSV, not from the
   engine, with the out-of-time AUC of the model and of the baselines. The customers are those
   the training rule would take with ``T`` as the cutoff (an event within retention - horizon
   = 120 days before ``T``); ``all_retained`` repeats it for every customer with a retained
   event (150 days), some of whom are older than any the model was trained on.

``summary`` gathers the dates: the lifts, the validation forecasts pooled over the dates, the
forward errors beside the naive forecast (last month's repeat rate x customers) and the
repeat rate trained on against the next month's.

Goal (issue 8): model AUC >= best single-feature baseline + 0.03; forecast within 5 %.
"""

from __future__ import annotations

import argparse
import csv
import functools
import gzip
import sys
import time

import numpy as np

from bench import emit_json

from bench.replay import data_path
from bench.workload import Batch

DAY_MS = 86_400_000
HORIZON_MS = 30 * DAY_MS
LOOKBACK_MS = 90 * DAY_MS
RETENTION = "150d"
DEFAULT_NOW = ("2011-05-01", "2011-06-01", "2011-07-01", "2011-08-01", "2011-09-01", "2011-10-01")
MODEL = "buy_again_30d"
TARGET_LIFT = 0.03
TARGET_FORECAST_ERROR = 0.05
BASELINES = {"recency": ("since(purchase)", -1.0), "frequency": ("count(purchase, 90d)", 1.0),
             "monetary": ("sum(purchase.value, 90d)", 1.0)}


def _log(msg: str) -> None:
    print(f"[retail_model {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _obj(values) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


@functools.lru_cache(maxsize=2)
def load_events(path: str | None = None) -> Batch:
    """The CSV as ``purchase``/``item``/``return`` events (see the module doc), sorted by time
    (stable: an invoice's ``purchase`` comes before its ``item`` events)."""
    path = path or data_path()
    inv_order: list[str] = []
    invoices: dict[str, dict] = {}
    with gzip.open(path, "rt", newline="", encoding="utf-8", errors="replace") as f:
        rows = csv.reader(f)
        col = {name: i for i, name in enumerate(next(rows))}
        ino, code, qty, date, price, cust, country = (col[k] for k in (
            "InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"))
        for r in rows:
            c = r[cust].strip()
            if not c:
                continue
            key = r[ino]
            rec = invoices.get(key)
            if rec is None:
                rec = invoices[key] = {"user": c[:-2] if c.endswith(".0") else c, "date": r[date],
                                       "country": r[country], "lines": []}
                inv_order.append(key)
            rec["lines"].append((r[code], float(r[qty]), float(r[qty]) * float(r[price])))
    users, types, stamps, values = [], [], [], []
    p_country, p_code, p_lines, p_qty = [], [], [], []
    for key in inv_order:
        rec = invoices[key]
        lines = rec["lines"]
        total = round(sum(v for _, _, v in lines), 2)
        if key.startswith("C"):
            users.append(rec["user"]), types.append("return"), stamps.append(rec["date"])
            values.append(round(-total, 2))
            p_country.append(rec["country"]), p_code.append(None), p_lines.append(None), p_qty.append(None)
            continue
        top = max(lines, key=lambda x: x[2])[0]
        users.append(rec["user"]), types.append("purchase"), stamps.append(rec["date"]), values.append(total)
        p_country.append(rec["country"]), p_code.append(top), p_lines.append(float(len(lines)))
        p_qty.append(None)
        for sc, q, v in lines:
            users.append(rec["user"]), types.append("item"), stamps.append(rec["date"]), values.append(round(v, 2))
            p_country.append(None), p_code.append(sc), p_lines.append(None), p_qty.append(q)
    ts = np.array(stamps, dtype="datetime64[ms]").astype(np.int64)
    order = np.argsort(ts, kind="stable")
    uid = _obj(users)
    _, user_index = np.unique(uid.astype(str), return_inverse=True)
    b = Batch(user_index.astype(np.int64), uid, _obj(types), ts, np.array(values, dtype=np.float64),
              {"country": _obj(p_country), "stock_code": _obj(p_code), "lines": _obj(p_lines),
               "quantity": _obj(p_qty)})
    return b.take(order)


def day_ms(date: str) -> int:
    return int(np.datetime64(date, "ms").astype(np.int64))


def replay(eng, data: Batch, from_ms: int, to_ms: int) -> int:
    """Events with ``from_ms < t <= to_ms`` into ``eng`` in time order, one day per batch."""
    ts = data.timestamp_ms
    a, b = np.searchsorted(ts, [from_ms, to_ms], side="right")
    if b <= a:
        return 0
    day = ts[a:b] // DAY_MS
    cuts = np.flatnonzero(np.diff(day)) + 1
    starts = np.concatenate([[0], cuts]) + a
    ends = np.concatenate([cuts, [b - a]]) + a
    rejected = 0
    for s, e in zip(starts.tolist(), ends.tolist()):
        r = eng.ingest_columns(**data.take(slice(s, e)).columns())
        rejected += r.rejected
    if rejected:
        raise RuntimeError(f"{rejected} events rejected during the replay")
    return int(b - a)


def _auc(score: np.ndarray, y: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, dtype=bool)
    if y.all() or not y.any():
        return None
    s = np.asarray(score, dtype=np.float64)
    finite = np.isfinite(s)
    if not finite.all():  # +-inf (since() of a user without the event) ranks beyond every number
        big = np.abs(s[finite]).max(initial=0.0) + 1.0
        s = np.where(np.isnan(s), 0.0, np.clip(s, -big, big))
    return round(float(roc_auc_score(y, s)), 4)


def validation_mask(hashes: np.ndarray) -> np.ndarray:
    """The users the model was validated on: scoring's own split by user hash."""
    from scoring.training import split_by_user

    return split_by_user(np.asarray(hashes, dtype=np.uint64))[0] == 2


def _err(forecast: float, actual: int) -> float | None:
    return None if actual == 0 else round((forecast - actual) / actual, 4)


def run_one(now_date: str, algorithm: str = "auto", retention: str = RETENTION, data: Batch | None = None,
            say=_log) -> dict:
    from engine import Engine
    from scoring.spec import ModelSpec

    data = data if data is not None else load_events()
    t_now = day_ms(now_date)
    t_first = int(data.timestamp_ms[0])
    eng = Engine(clock="event", retention=retention)
    eng.advance_clock(t_first)
    t0 = time.perf_counter()
    n = replay(eng, data, t_first - 1, t_now)
    eng.advance_clock(t_now)
    replay_s = time.perf_counter() - t0
    say(f"{now_date}: {n:,} events replayed in {replay_s:.1f} s")

    t0 = time.perf_counter()
    report = eng.train_model(name=MODEL, target="purchase", horizon_ms=HORIZON_MS, lookback_ms=LOOKBACK_MS,
                             algorithm=algorithm)
    train_s = time.perf_counter() - t0
    say(f"{now_date}: trained {report.algorithm} in {train_s:.1f} s, AUC {report.auc:.4f}")

    # the baselines on the same rows, split and cutoff as the model
    spec = ModelSpec(name=MODEL, target="purchase", horizon_ms=HORIZON_MS,
                     lookback_ms=LOOKBACK_MS).resolved(eng.retention_ms)
    feats = [f for f, _ in BASELINES.values()]
    td = eng._core.training_data(feats, spec, report.cutoff_ms, t_now)
    val = validation_mask(td["hashes"])
    yv = td["y"][val]
    base_auc = {k: _auc(sign * td["X"][val, i], yv) for i, (k, (_, sign)) in enumerate(BASELINES.items())}
    best_name = max((k for k in ("recency", "frequency")), key=lambda k: base_auc[k] or 0.0)
    model_on_val = _model_auc_on(eng)

    # forward: the scores at T, then what the next 30 days bring (counted from the CSV)
    ts, uidx = data.timestamp_ms, data.user_index
    retained = (ts > t_now - eng.retention_ms) & (ts <= t_now)
    pop_idx = np.unique(uidx[retained])
    # the training population's rule with T as the cutoff: an event within retention - horizon
    recent = np.unique(uidx[(ts > t_now + HORIZON_MS - eng.retention_ms) & (ts <= t_now)])
    like_training = np.isin(pop_idx, recent)
    names = _user_names(data)
    pop = [names[i] for i in pop_idx.tolist()]
    t0 = time.perf_counter()
    score = np.array([eng.get_user(u)["scores"].get(MODEL, np.nan) for u in pop], dtype=np.float64)
    get_user_s = time.perf_counter() - t0
    fwd_feats = eng._core.feature_values(feats, t_now, pop)[1]
    fut = (data.type == "purchase") & (ts > t_now) & (ts <= t_now + HORIZON_MS)
    bought = np.isin(pop_idx, np.unique(uidx[fut]))
    n_fwd = replay(eng, data, t_now, t_now + HORIZON_MS)
    forward = {"from_ms": t_now, "to_ms": t_now + HORIZON_MS, "events_replayed": n_fwd,
               "unscored": int(np.isnan(score).sum()), "get_user_s": round(get_user_s, 2)}
    forward.update(_forward(score[like_training], fwd_feats[like_training], bought[like_training]))
    forward["all_retained"] = _forward(score, fwd_feats, bought)

    val_forecast = float(report.predicted_positives)
    val_actual = int(report.validation_positives)
    out = {
        "now": now_date, "now_ms": t_now, "cutoff_ms": int(report.cutoff_ms),
        "events_replayed": n, "replay_s": round(replay_s, 2), "train_s": round(train_s, 2),
        "model": {"version": int(report.version), "algorithm": report.algorithm, "auc": round(report.auc, 4),
                  "auc_recomputed_on_validation": model_on_val, "candidates": dict(report.candidates),
                  "base_rate": round(report.base_rate, 4), "rows": int(report.rows),
                  "positives": int(report.positives), "validation_rows": int(report.validation_rows),
                  "calibration_error": round(report.calibration_error, 4), "features": list(report.features),
                  "curve": [{"threshold": round(p.threshold, 4), "precision": round(p.precision, 4),
                             "recall": round(p.recall, 4), "size": int(p.size)} for p in report.curve]},
        "validation": {
            "users": int(val.sum()), "buyers": int(yv.sum()),
            "baseline_auc": base_auc, "best_baseline": best_name,
            "lift": None if base_auc[best_name] is None else round(report.auc - base_auc[best_name], 4),
            "forecast": round(val_forecast, 1), "actual": val_actual,
            "forecast_error": _err(val_forecast, val_actual),
            "forecast_sd": _sd_rel(td["y"][val].mean(), int(val.sum())),
        },
        "forward": forward,
    }
    v, f = out["validation"], out["forward"]
    out["goals"] = {
        "lift_validation": v["lift"] is not None and v["lift"] >= TARGET_LIFT,
        "forecast_validation": v["forecast_error"] is not None and abs(v["forecast_error"]) <= TARGET_FORECAST_ERROR,
        "lift_forward": f["lift"] is not None and f["lift"] >= TARGET_LIFT,
        "forecast_forward": f["forecast_error"] is not None and abs(f["forecast_error"]) <= TARGET_FORECAST_ERROR,
    }
    say(f"{now_date}: lift {v['lift']} (validation), {f['lift']} (forward); forecast error "
        f"{v['forecast_error']} (validation), {f['forecast_error']} (forward)")
    eng.close()
    return out


def _user_names(data: Batch) -> list[str]:
    names = [""] * (int(data.user_index.max()) + 1)
    for i, u in zip(data.user_index.tolist(), data.user_id.tolist()):
        names[i] = u
    return names


def _model_auc_on(eng) -> float | None:
    """The deployed model's AUC recomputed here, from its ONNX, on the validation rows."""
    from scoring.features import FeatureTransform
    from scoring.runtime import ModelRuntime

    dep = eng._models.deployment(MODEL)
    feats = list(dep.features)
    spec = eng._models.spec(MODEL)
    Xd = eng._core.training_data(feats, spec, eng.now_ms - spec.horizon_ms, eng.now_ms)
    m = validation_mask(Xd["hashes"])
    X32 = FeatureTransform.from_dict(dep.transform).apply(Xd["X"][m])
    p = ModelRuntime(dep.onnx, len(feats)).predict(X32)
    return _auc(p, Xd["y"][m])


def _forward(score, feats, bought) -> dict:
    base = {k: _auc(sign * feats[:, i], bought) for i, (k, (_, sign)) in enumerate(BASELINES.items())}
    best = max(("recency", "frequency"), key=lambda k: base[k] or 0.0)
    model = _auc(np.nan_to_num(score), bought)
    forecast = float(np.nansum(score))
    return {"customers": int(len(score)), "buyers": int(bought.sum()), "forecast": round(forecast, 1),
            "forecast_error": _err(forecast, int(bought.sum())),
            "forecast_sd": _sd_rel(float(bought.mean()) if len(bought) else 0.0, len(bought)),
            "auc": model, "baseline_auc": base, "best_baseline": best,
            "lift": None if model is None or base[best] is None else round(model - base[best], 4)}


def _sd_rel(rate: float, n: int) -> float | None:
    """The relative standard deviation of a count of buyers among ``n`` users at ``rate``:
    how far a perfect forecast still lands from the count, by chance alone."""
    if n == 0 or rate <= 0:
        return None
    return round(float(np.sqrt(n * rate * (1 - rate)) / (n * rate)), 4)


def summarise(runs: list[dict]) -> dict:
    """The figures over every training date (a rolling origin: one model per month)."""
    def mean(xs):
        xs = [x for x in xs if x is not None]
        return round(float(np.mean(xs)), 4) if xs else None

    val_f = sum(r["validation"]["forecast"] for r in runs)
    val_a = sum(r["validation"]["actual"] for r in runs)
    val_n = sum(r["validation"]["users"] for r in runs)
    fwd = [r["forward"] for r in runs]
    lifts = [r["validation"]["lift"] for r in runs]
    return {
        "dates": [r["now"] for r in runs],
        "algorithms": [r["model"]["algorithm"] for r in runs],
        "validation_auc": [r["model"]["auc"] for r in runs],
        "validation_best_baseline_auc": [r["validation"]["baseline_auc"][r["validation"]["best_baseline"]]
                                         for r in runs],
        "validation_lift": lifts, "validation_lift_mean": mean(lifts),
        "validation_forecast_errors": [r["validation"]["forecast_error"] for r in runs],
        "validation_forecast_pooled": {"forecast": round(val_f, 1), "actual": val_a, "error": _err(val_f, val_a),
                                       "sd": _sd_rel(val_a / max(val_n, 1), val_n)},
        "forward_auc": [f["auc"] for f in fwd],
        "forward_lift": [f["lift"] for f in fwd], "forward_lift_mean": mean([f["lift"] for f in fwd]),
        "forward_forecast_errors": [f["forecast_error"] for f in fwd],
        "forward_forecast_abs_error_mean": mean([abs(f["forecast_error"]) for f in fwd]),
        # the naive forecast: last month's repeat rate (the training base rate) x customers
        "forward_naive_forecast_errors": [_err(r["model"]["base_rate"] * f["customers"], f["buyers"])
                                          for r, f in zip(runs, fwd)],
        "forward_within_5_percent": sum(abs(f["forecast_error"]) <= TARGET_FORECAST_ERROR for f in fwd),
        "base_rate_trained_vs_next_month": [(r["model"]["base_rate"], round(f["buyers"] / max(f["customers"], 1), 4))
                                            for r, f in zip(runs, fwd)],
        "goals": {"validation_lift_mean": (mean(lifts) or 0) >= TARGET_LIFT,
                  "validation_forecast_pooled": abs(_err(val_f, val_a) or 1) <= TARGET_FORECAST_ERROR,
                  "forward_forecast_every_month": all(abs(f["forecast_error"]) <= TARGET_FORECAST_ERROR
                                                      for f in fwd)},
    }


def run(now_dates=DEFAULT_NOW, algorithm: str = "auto", retention: str = RETENTION, say=_log) -> dict:
    t0 = time.perf_counter()
    data = load_events()
    say(f"data: {len(data):,} events, {len(np.unique(data.user_index)):,} customers "
        f"({time.perf_counter() - t0:.1f} s to read)")
    kinds, counts = np.unique(data.type.astype(str), return_counts=True)
    runs = [run_one(d, algorithm, retention, data, say) for d in now_dates]
    return {
        "benchmark": "buys again within 30 days, Online Retail (issue 8)",
        "data": {"path": "../shared/data/online-retail.csv.gz", "events": len(data),
                 "by_type": dict(zip(kinds.tolist(), counts.tolist())),
                 "customers": int(len(np.unique(data.user_index)))},
        "config": {"target": "purchase", "horizon": "30d", "lookback": "90d", "retention": retention,
                   "algorithm": algorithm, "clock": "event", "model": MODEL},
        "targets": {"lift": TARGET_LIFT, "forecast_error": TARGET_FORECAST_ERROR},
        "summary": summarise(runs),
        "runs": runs,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.retail_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--now", nargs="+", default=list(DEFAULT_NOW), help="training dates (the engine's now)")
    p.add_argument("--algorithm", default="auto", choices=("auto", "logistic", "gbt"))
    p.add_argument("--retention", default=RETENTION)
    p.add_argument("--out", help="also write the JSON here")
    a = p.parse_args(argv)
    res = run(a.now, a.algorithm, a.retention)
    emit_json(res, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
