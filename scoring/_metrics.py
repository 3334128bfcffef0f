"""Validation metrics: AUC, expected calibration error and the precision/recall curve."""

from __future__ import annotations

import numpy as np

from scoring.spec import CurvePoint

ECE_BINS = 10
CURVE_QUANTILES = 150   # evenly spaced selection sizes: the curve's body
CURVE_HEAD = 50         # geometrically spaced small sizes: the high-precision end
CURVE_MIN_SIZE = 10     # a threshold chosen by fewer users than this is noise, not a precision


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half), via the rank-sum statistic."""
    y = np.asarray(y, bool)
    score = np.asarray(score, np.float64)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    # Average ranks over runs of equal scores.
    starts = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
    ends = np.r_[starts[1:], len(s)]
    avg_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(avg_rank, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def calibration_error(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: over ``bins`` equal-width probability bins, the mean of
    |mean predicted - observed rate| weighted by the bin's share of rows."""
    y = np.asarray(y, np.float64)
    p = np.clip(np.asarray(p, np.float64), 0.0, 1.0)
    if len(p) == 0:
        return 0.0
    b = np.minimum((p * bins).astype(np.int64), bins - 1)
    sum_p = np.bincount(b, weights=p, minlength=bins)
    sum_y = np.bincount(b, weights=y, minlength=bins)
    return float(np.abs(sum_p - sum_y).sum() / len(p))


def pr_curve(y: np.ndarray, score: np.ndarray) -> tuple[CurvePoint, ...]:
    """Precision and recall at ~200 thresholds, ascending.

    Thresholds are actual scores, so "score >= threshold" selects exactly ``size`` users,
    ties included. They are picked so that the selection sizes run evenly over the
    population (the body) and geometrically from ``CURVE_MIN_SIZE`` up (the head, where
    high precision levels live); the top and bottom scores are always included.
    """
    y = np.asarray(y, bool)
    score = np.asarray(score, np.float64)
    n = len(score)
    n_pos = int(y.sum())
    if n == 0 or n_pos == 0:
        return ()
    order = np.argsort(-score, kind="mergesort")
    s = score[order]
    tp = np.cumsum(y[order])
    group_end = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last index of each run of ties
    sizes = group_end + 1
    min_size = min(CURVE_MIN_SIZE, n)
    targets = np.unique(np.r_[np.linspace(n / CURVE_QUANTILES, n, CURVE_QUANTILES),
                              np.geomspace(min_size, n, CURVE_HEAD)])
    picks = np.searchsorted(sizes, np.ceil(targets - 1e-9), side="left")
    picks = np.unique(np.clip(np.r_[picks, 0, len(sizes) - 1], 0, len(sizes) - 1))
    picks = picks[sizes[picks] >= min_size]
    points = []
    for k in picks[::-1]:
        i = group_end[k]
        size = int(sizes[k])
        hits = int(tp[i])
        points.append(CurvePoint(threshold=float(s[i]), precision=hits / size, recall=hits / n_pos, size=size))
    return tuple(points)
