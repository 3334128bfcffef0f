"""Model features: expressions of the segment language (so the shards' kernels compute them)
and the per-column transform that turns their raw values into model inputs.

The default set
===============

``default_features(target, schema, lookback_ms, horizon_ms)`` builds, in this order, with
``T`` the target's event source exactly as the target reads (filter included: for
``"purchase where value > 50"`` every target feature counts only such purchases), ``L`` the
lookback and the *windows* ``1d, 7d, 30d, 90d, 365d`` that are shorter than ``L``, then ``L``
itself, plus the horizon when it is shorter than ``L`` (when fewer than three remain, ``L/2``
and ``L/4``, rounded down to a whole unit, are added):

===================================================  ==========================================
``since(T)``                                         recency
``count(T, W)`` for every window ``W``               frequency
``sum(T.value, 30d)``, ``sum(T.value, L)``           monetary (when ``T``'s type has values or
                                                     is not in the schema yet; the 30d one
                                                     only when ``30d < L``)
``avg(T.value, L)``                                  average order value (same condition)
``(since_first(T) - since(T)) / (count(T, L) - 1)``  mean gap between events (null below 2)
``count(T, H) - (count(T, 2H) - count(T, H))``       trend: the last ``H`` against the ``H``
                                                     before, ``H = 7d`` (``L/2`` rounded down
                                                     when ``L < 14d``)
``active_days(T, L)``, ``active_days(T, 30d)``       active days (the second when ``30d < L``)
``distinct(T.ITEM, L)``                              distinct items, for the first item-like
                                                     property of the target's type (``item``,
                                                     ``product``, ``sku``, ``stock``,
                                                     ``article``, ``category``, ``content`` in
                                                     its name, in that order of preference)
``since_first(T)``                                   time since first seen (within retention)
===================================================  ==========================================

then, for each of the (up to) three most frequent other event types ``O`` in the schema:
``since(O)``, ``count(O, 7d)`` (``L/4`` when ``L <= 7d``) and ``count(O, L)``; then up to
five numeric traits in name order: ``trait.NAME``, or ``since(trait.NAME)`` for a name that
reads as a timestamp (``..._at``, ``..._ts``, ``...time``, ``...date``, ``...timestamp``).
Should that give fewer than 15, ``count(T, ·)`` and ``active_days(T, ·)`` over further
fractions of ``L`` fill up to 15. Every window is at most ``L``; every expression is checked to
parse and to be numeric. With no target (a lookalike), the most frequent event type plays
``T``. ``since_first`` reaches back over the whole retention, which can exceed ``L`` when
serving; the transform clips it to the range seen in training.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from engine.errors import ModelError
from engine.expr import ast as A
from engine.expr import check, parse, unparse
from engine.expr._parser import DURATION_UNITS_MS

from scoring.spec import DAY_MS, check_features, parse_target

__all__ = ["FeatureTransform", "check_features", "default_features"]

MIN_DEFAULT_FEATURES = 15
OTHER_TYPES = 3
MAX_TRAITS = 5
_LADDER_MS = (DAY_MS, 7 * DAY_MS, 30 * DAY_MS, 90 * DAY_MS, 365 * DAY_MS)
_ITEM_WORDS = ("item", "product", "sku", "stock", "article", "category", "content")
_TIME_SUFFIXES = ("_at", "_ts", "time", "date", "timestamp")


# ----------------------------------------------------------------------------- defaults


def default_features(target: str, schema: dict, lookback_ms: int, horizon_ms: int) -> list[str]:
    """The default feature expressions for a model of ``target`` (see the module docstring).

    ``schema`` is the shards' merged ``schema_summary()``: ``{"types": {name: {"events": n,
    "props": [...], "has_value": bool}}, "traits": [numeric trait names]}``.
    """
    lookback = int(lookback_ms)
    if lookback <= 0:
        raise ModelError(f"lookback_ms must be positive, found {lookback_ms}")
    types = dict((schema or {}).get("types") or {})
    by_frequency = sorted(types, key=lambda t: (-int(types[t].get("events", 0) or 0), t))
    if target:
        src = parse_target(target)
    else:
        seen = [t for t in by_frequency if int(types[t].get("events", 0) or 0) > 0]
        if not seen:
            raise ModelError("no events yet: the default features need at least one event type; "
                             "list the features explicitly")
        src = A.EventSource(seen[0])
    info = types.get(src.event)
    # A type not seen yet may still carry values: keep the monetary features then.
    has_value = True if info is None else bool(info.get("has_value", False))
    props = list(info.get("props", ())) if info else []

    windows = _windows(lookback, int(horizon_ms))
    out: list[A.Expr] = [A.Since(src)]
    out += [_agg("count", src, w) for w in windows]
    if has_value:
        value = _with_prop(src, "value")
        out += [_agg("sum", value, w) for w in (30 * DAY_MS, lookback) if w <= lookback]
        out.append(_agg("avg", value, lookback))
    count_l = _agg("count", src, lookback)
    out.append(A.Arith("/", A.Arith("-", A.SinceFirst(src), A.Since(src)), A.Arith("-", count_l, A.Literal(1))))
    half = 7 * DAY_MS if lookback >= 14 * DAY_MS else _round_down(lookback // 2)
    recent = _agg("count", src, half)
    out.append(A.Arith("-", recent, A.Arith("-", _agg("count", src, 2 * half), recent)))
    out += [_agg("active_days", src, w) for w in (lookback, 30 * DAY_MS) if w <= lookback]
    item = _item_prop(props)
    if item is not None:
        out.append(_agg("distinct", _with_prop(src, item), lookback))
    out.append(A.SinceFirst(src))

    short = 7 * DAY_MS if lookback > 7 * DAY_MS else _round_down(lookback // 4)
    others = [t for t in by_frequency if t != src.event and int(types[t].get("events", 0) or 0) > 0]
    for name in others[:OTHER_TYPES]:
        o = A.EventSource(name)
        out += [A.Since(o), _agg("count", o, short), _agg("count", o, lookback)]

    traits = sorted({str(t) for t in ((schema or {}).get("traits") or ())})
    for name in traits[:MAX_TRAITS]:
        is_time = name.lower().endswith(_TIME_SUFFIXES)
        out.append(A.TraitTime("since", name) if is_time else A.TraitRef(name))

    texts = _unique(unparse(e) for e in out)
    k = 2
    while len(texts) < MIN_DEFAULT_FEATURES and lookback // k >= 1:
        w = _round_down(lookback // k)
        texts = _unique(texts + [unparse(_agg("count", src, w)), unparse(_agg("active_days", src, w))])
        k *= 2
    for i, text in enumerate(texts):
        kind = check(parse(text), retention_ms=lookback, condition=False)
        if kind not in ("number", "any"):  # a bug here, not the user's doing
            raise AssertionError(f"default feature {i} {text!r} is {kind}")
    return texts


def _windows(lookback: int, horizon: int) -> list[int]:
    ws = {w for w in _LADDER_MS if w < lookback}
    ws.add(lookback)
    if 0 < horizon < lookback:
        ws.add(horizon)
    k = 2
    while len(ws) < 3 and lookback // k >= 1:
        ws.add(_round_down(lookback // k))
        k *= 2
    return sorted(ws)


def _round_down(ms: int) -> int:
    """``ms`` rounded down to whole days, else hours, minutes or seconds (a readable window)."""
    ms = max(int(ms), 1)
    for unit in ("d", "h", "m", "s"):
        size = DURATION_UNITS_MS[unit]
        if ms >= size:
            return ms // size * size
    return ms


def _agg(func: str, src: A.EventSource, window_ms: int) -> A.Aggregate:
    return A.Aggregate(func, src, int(window_ms))


def _with_prop(src: A.EventSource, prop: str) -> A.EventSource:
    return A.EventSource(src.event, prop, src.filter)


def _item_prop(props) -> str | None:
    for word in _ITEM_WORDS:
        for p in props:
            if word in str(p).lower():
                return str(p)
    return None


def _unique(texts) -> list[str]:
    return list(dict.fromkeys(texts))


# ----------------------------------------------------------------------------- transform

# Bounds stay well inside float32 so that the cast never produces an infinity.
_F32_SAFE = float(np.finfo(np.float32).max) / 4
_MEDIAN_SAMPLE = 200_000


class FeatureTransform:
    """Raw feature values (float64, null as NaN, +-inf possible) -> finite float32 model inputs.

    Per column: NaN becomes ``fill``; everything is then clipped to ``[floor, cap]``, the range
    the training values took after filling, with +inf taking a value just above the largest
    finite one and -inf one just below the smallest (so that trees can tell them apart). At
    serving time this keeps values outside the training range at its edge, where the model
    has evidence. ``identity()`` (for user-supplied models) only casts to float32.
    """

    __slots__ = ("fill", "floor", "cap", "_f32")

    def __init__(self, fill, floor, cap):
        self.fill = None if fill is None else np.asarray(fill, np.float64)
        self.floor = None if floor is None else np.asarray(floor, np.float64)
        self.cap = None if cap is None else np.asarray(cap, np.float64)
        self._f32 = None if fill is None else tuple(a.astype(np.float32) for a in (self.fill, self.floor, self.cap))

    @property
    def is_identity(self) -> bool:
        return self.fill is None

    @property
    def n_features(self) -> int | None:
        return None if self.fill is None else len(self.fill)

    @staticmethod
    def identity() -> "FeatureTransform":
        return FeatureTransform(None, None, None)

    @staticmethod
    def fit(X: np.ndarray, missing: str = "below") -> "FeatureTransform":
        """Learn the per-column constants from training rows ``X`` [n, F].

        ``missing="below"`` fills NaN with a value just below the column's finite range (a
        tree then isolates it in one split); ``"median"`` fills with the median, neutral for a
        linear model.
        """
        if missing not in ("below", "median"):
            raise ValueError(f"missing must be 'below' or 'median', not {missing!r}")
        X = np.asarray(X, np.float64)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D [rows, features], found shape {X.shape}")
        finite = np.isfinite(X)
        any_finite = finite.any(axis=0)
        lo = np.where(any_finite, np.min(np.where(finite, X, np.inf), axis=0, initial=np.inf), 0.0)
        hi = np.where(any_finite, np.max(np.where(finite, X, -np.inf), axis=0, initial=-np.inf), 0.0)
        lo, hi = np.clip(lo, -_F32_SAFE, _F32_SAFE), np.clip(hi, -_F32_SAFE, _F32_SAFE)
        # A margin relative to both the range and the magnitude keeps the edge values distinct
        # from lo/hi after the float32 cast (1 ms next to 8e9 ms would vanish).
        spread = np.maximum.reduce([hi - lo, np.abs(lo), np.abs(hi), np.ones_like(lo)])
        margin = 0.05 * spread
        below, above = lo - margin, hi + margin
        isnan = np.isnan(X)
        if missing == "median":
            fill = _column_medians(X, finite, any_finite)
        else:
            fill = lo - 0.5 * margin
        has_pos = (X == np.inf).any(axis=0)
        has_neg = (X == -np.inf).any(axis=0)
        has_nan = isnan.any(axis=0)
        floor = np.where(has_neg, below, np.where(has_nan, np.minimum(fill, lo), lo))
        cap = np.where(has_pos, above, np.where(has_nan, np.maximum(fill, hi), hi))
        floor = np.clip(floor, -_F32_SAFE, _F32_SAFE)
        cap = np.clip(cap, -_F32_SAFE, _F32_SAFE)
        fill = np.clip(fill, floor, cap)
        return FeatureTransform(fill, floor, cap)

    def apply(self, X: np.ndarray) -> np.ndarray:
        """Model inputs for raw rows ``X`` [n, F]: float32, C-contiguous."""
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D [rows, features], found shape {X.shape}")
        if self.fill is None:
            with np.errstate(over="ignore"):
                return np.ascontiguousarray(X, dtype=np.float32)
        if X.shape[1] != len(self.fill):
            raise ValueError(f"X has {X.shape[1]} features, the transform was fitted on {len(self.fill)}")
        # Rounding to float32 is monotone, so clipping after the cast gives what clipping
        # before it would, at half the memory traffic.
        with np.errstate(over="ignore"):  # beyond float32 is inf, then clipped like inf
            out = np.array(X, dtype=np.float32, order="C")
        np.copyto(out, self._f32[0], where=np.isnan(out))
        np.clip(out, self._f32[1], self._f32[2], out=out)
        return out

    def to_dict(self) -> dict:
        if self.fill is None:
            return {"kind": "identity"}
        return {"kind": "clip", "fill": self.fill.tolist(), "floor": self.floor.tolist(), "cap": self.cap.tolist()}

    @staticmethod
    def from_dict(d: dict) -> "FeatureTransform":
        kind = (d or {}).get("kind", "identity")
        if kind == "identity":
            return FeatureTransform.identity()
        if kind != "clip":
            raise ModelError(f"unknown feature transform {kind!r}")
        fill, floor, cap = (np.asarray(d[k], np.float64) for k in ("fill", "floor", "cap"))
        if not (fill.shape == floor.shape == cap.shape) or fill.ndim != 1:
            raise ModelError("feature transform: fill, floor and cap must be lists of one length")
        if not (np.isfinite(fill).all() and np.isfinite(floor).all() and np.isfinite(cap).all()):
            raise ModelError("feature transform: fill, floor and cap must be finite")
        return FeatureTransform(fill, floor, cap)

    def __eq__(self, other) -> bool:
        if not isinstance(other, FeatureTransform):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return "FeatureTransform.identity()" if self.fill is None else f"FeatureTransform({len(self.fill)} columns)"

    def __getstate__(self):
        return self.to_dict()

    def __setstate__(self, state):
        t = FeatureTransform.from_dict(state)
        self.fill, self.floor, self.cap, self._f32 = t.fill, t.floor, t.cap, t._f32


def _column_medians(X: np.ndarray, finite: np.ndarray, any_finite: np.ndarray) -> np.ndarray:
    # A fixed stride sample: the median of 200k rows is as good as of all, at a fraction of
    # the sort, and deterministic.
    step = max(1, math.ceil(len(X) / _MEDIAN_SAMPLE))
    S = np.where(finite[::step], X[::step], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        med = np.nanmedian(S, axis=0) if len(S) else np.zeros(X.shape[1])
    med = np.where(np.isfinite(med), med, 0.0)
    return np.where(any_finite, med, 0.0)
