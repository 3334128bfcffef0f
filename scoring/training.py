"""Training: fit -> calibrate -> export, each stage picklable in and out (the server runs
them as Ray tasks, off the gateway's event loop).

The rows are users; ``X`` holds their raw feature values at the cutoff (float64, NaN for
null), ``y`` whether they converted in (cutoff, now], ``hashes`` a stable uint64 per user.
Users are split by hash, 60 % train / 20 % calibration / 20 % validation, so a user lands in
the same split on every retrain with the same seed, and no user's row informs both the model
and its evaluation.

- **fit**: ``algorithm="auto"`` fits a logistic regression and gradient-boosted trees on the
  train split (the trees on at most ``GBT_MAX_ROWS`` of its users, the logistic model on at
  most ``LOGISTIC_MAX_ROWS``, drawn at random by seed: training on 1M users stays well under
  a minute on two cores) and keeps the one with the better validation AUC (ties go to the
  logistic model: smaller and faster to score).
- **calibrate**: beta calibration of the model's margin on the calibration split (see
  ``_calibration``); AUC, expected calibration error, forecast and the precision/recall
  curve on the validation split.
- **small populations** (up to ``CROSS_FIT_MAX_USERS`` train + calibration users): a 20 %
  split of a few thousand users is too noisy to choose a model or to set the level of its
  probabilities (the forecast). Then each candidate is also fitted in 5 folds over the train
  and calibration users; their out-of-fold margins choose the candidate (``candidates`` holds
  these cross-validated AUCs) and fit the calibration, and the final model is fitted on all
  of them. The validation split stays untouched for the report.
- **export**: the ONNX graph (see ``_onnx``), checked against the fitted model on the
  calibration and validation users to 1e-5; the curve is measured on the ONNX scores, i.e.
  on exactly what the shards will compute.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from engine.errors import ModelError
from scoring import _onnx
from scoring._calibration import BetaCalibration
from scoring._estimators import GBT_MAX_ROWS, LOGISTIC_MAX_ROWS, LinearMargin, TreeMargin
from scoring._metrics import auc, calibration_error, pr_curve
from scoring.features import FeatureTransform
from scoring.runtime import ModelRuntime, check_onnx
from scoring.spec import (ALGORITHMS, DEFAULT_BUCKET_HIGH, DEFAULT_BUCKET_MEDIUM, Deployment, ModelReport,
                          ModelSpec, _check_name, check_features)

Progress = Callable[[str], None] | None

MIN_ROWS = 50
MIN_PER_CLASS = 5
SPLIT_PERCENT = (60, 20, 20)  # train, calibration, validation
# Up to this many train + calibration users, models are chosen and calibrated by cross-fitting.
CROSS_FIT_MAX_USERS = 100_000
CROSS_FOLDS = 5
ONNX_TOLERANCE = 1e-5
# Training shares the machine with the shards. OpenBLAS and OpenMP spin while waiting for
# their threads, so on busy cores two threads ran the fits 3-20x slower than one (measured
# on the 2-core box with the engine's own load); one thread is also the predictable choice.
TRAIN_THREADS = 1
_ESTIMATORS = {"logistic": LinearMargin, "gbt": TreeMargin}
_MAX_ROWS = {"logistic": LOGISTIC_MAX_ROWS, "gbt": GBT_MAX_ROWS}
# The linear model wants neutral fills; trees want missing values apart from the rest.
_MISSING = {"logistic": "median", "gbt": "below"}


@dataclass
class Fitted:
    spec: ModelSpec
    algorithm: str
    candidates: dict            # algorithm -> AUC on users it did not see (see ``selection``)
    model: LinearMargin | TreeMargin
    transform: FeatureTransform
    X_cal: np.ndarray           # model inputs (float32) of the users calibration is fitted on
    y_cal: np.ndarray
    z_cal: np.ndarray | None    # their out-of-fold margins (cross-fitting), None: the model's own
    X_val: np.ndarray           # model inputs (float32) of the validation users
    y_val: np.ndarray
    rows: int
    positives: int
    train_rows: int             # users the model was fitted on (after any subsampling)
    selection: str              # what the candidates' AUCs were measured on

    @property
    def n_features(self) -> int:
        return self.X_val.shape[1]


@dataclass
class Calibrated:
    fitted: Fitted
    calibration: BetaCalibration
    p_val: np.ndarray           # calibrated validation probabilities (the fitted model's)
    auc: float
    calibration_error: float
    predicted_positives: float
    curve: tuple


# ----------------------------------------------------------------------------- stages


def fit(X, y, hashes, spec: ModelSpec, progress: Progress = None, *, threads: int | None = TRAIN_THREADS) -> Fitted:
    """Split by user hash, fit the candidate model(s), keep the one with the better AUC on
    users it was not fitted on.

    ``threads`` caps the BLAS and OpenMP threads of the fit (None: the libraries' default).
    """
    _report(progress, "fit")
    X, y, hashes = _check_arrays(X, y, hashes)
    algorithm = (spec.algorithm or "auto").strip().lower()
    if algorithm not in ALGORITHMS:
        raise ModelError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {spec.algorithm!r}")
    _check_counts(y, "training data", "users")
    part, fold = split_by_user(hashes, spec.seed)
    split = _Split(*(np.flatnonzero(part == k) for k in range(3)), dev=np.flatnonzero(part != 2), fold=fold)
    for idx, what in ((split.train, "train"), (split.cal, "calibration"), (split.val, "validation")):
        _check_split(y[idx], what)

    names = ("logistic", "gbt") if algorithm == "auto" else (algorithm,)
    rng = np.random.default_rng(spec.seed)
    transforms: dict[str, FeatureTransform] = {}
    with _thread_limit(threads):
        tried = [_fit_candidate(name, X, y, split, spec.seed, rng, transforms) for name in names]
    best = max(tried, key=lambda c: c.score)  # the first of equals: logistic
    X_cal = best.X_cal if best.X_cal is not None else best.transform.apply(X[split.cal])
    y_cal = y[split.dev] if split.cross else y[split.cal]
    return Fitted(spec=spec, algorithm=best.name, candidates={c.name: c.score for c in tried}, model=best.model,
                  transform=best.transform, X_cal=X_cal, y_cal=y_cal, z_cal=best.z_cal,
                  X_val=best.transform.apply(X[split.val]), y_val=y[split.val], rows=len(y),
                  positives=int(y.sum()), train_rows=best.train_rows,
                  selection=f"{CROSS_FOLDS}-fold cross-validation" if split.cross else "validation")


@dataclass
class _Split:
    train: np.ndarray
    cal: np.ndarray
    val: np.ndarray
    dev: np.ndarray      # train + calibration
    fold: np.ndarray     # per user (all users), for cross-fitting

    @property
    def cross(self) -> bool:
        return len(self.dev) <= CROSS_FIT_MAX_USERS


@dataclass
class _Candidate:
    name: str
    score: float                 # AUC on users the model did not see
    model: LinearMargin | TreeMargin
    transform: FeatureTransform
    X_cal: np.ndarray | None     # set when cross-fitting (the development users' inputs)
    z_cal: np.ndarray | None     # their out-of-fold margins
    train_rows: int


def _fit_candidate(name: str, X, y, split: _Split, seed: int, rng, transforms: dict) -> _Candidate:
    missing = _MISSING[name]
    fit_idx = split.dev if split.cross else split.train
    if missing not in transforms:
        transforms[missing] = FeatureTransform.fit(X[fit_idx], missing=missing)
    transform = transforms[missing]
    estimator = _ESTIMATORS[name]
    rows = _subsample(fit_idx, _MAX_ROWS[name], rng)
    model = estimator.fit(transform.apply(X[rows]), y[rows], seed)
    if not split.cross:
        score = auc(y[split.val], model.margin(transform.apply(X[split.val])))
        return _Candidate(name, score, model, transform, None, None, len(rows))
    # Out-of-fold margins of every development user: four times the ground of a 20 % split
    # to choose and calibrate on (a small population's split is noisy), while the final
    # model is fitted on all of them.
    X_dev, y_dev = transform.apply(X[split.dev]), y[split.dev]
    held_fold = split.fold[split.dev]
    z_dev = np.empty(len(split.dev))
    for k in range(CROSS_FOLDS):
        held = held_fold == k
        z_dev[held] = estimator.fit(X_dev[~held], y_dev[~held], seed).margin(X_dev[held])
    return _Candidate(name, auc(y_dev, z_dev), model, transform, X_dev, z_dev, len(rows))


def calibrate(fitted: Fitted, progress: Progress = None) -> Calibrated:
    """Calibrate on the calibration split; measure on the validation split."""
    _report(progress, "calibration")
    z_cal = fitted.z_cal if fitted.z_cal is not None else fitted.model.margin(fitted.X_cal)
    calibration = BetaCalibration.fit(z_cal, fitted.y_cal)
    p_val = calibration.predict(fitted.model.margin(fitted.X_val))
    return Calibrated(fitted=fitted, calibration=calibration, p_val=p_val, auc=auc(fitted.y_val, p_val),
                      calibration_error=calibration_error(fitted.y_val, p_val),
                      predicted_positives=float(p_val.sum()), curve=pr_curve(fitted.y_val, p_val))


def export(cal: Calibrated, *, name: str, version: int, features, now_ms: int, cutoff_ms: int,
           progress: Progress = None) -> tuple[Deployment, ModelReport]:
    """The ONNX model, checked against the fitted one, with its deployment and report."""
    _report(progress, "export")
    f = cal.fitted
    features = tuple(features)
    if len(features) != f.n_features:
        raise ModelError(f"features: {len(features)} listed for a model of {f.n_features} columns")
    metadata = {"rtseg.name": name, "rtseg.version": str(int(version)), "rtseg.algorithm": f.algorithm,
                "rtseg.features": list(features), "rtseg.calibration": cal.calibration.to_dict()}
    onnx_bytes = _onnx.build(f.model, cal.calibration, f.n_features, metadata)
    runtime = ModelRuntime(onnx_bytes, f.n_features)
    p_onnx = runtime.predict(f.X_val)
    p_cal_ref = cal.calibration.predict(f.model.margin(f.X_cal))
    diff = max(float(np.max(np.abs(p_onnx - cal.p_val), initial=0.0)),
               float(np.max(np.abs(runtime.predict(f.X_cal) - p_cal_ref), initial=0.0)))
    if not diff <= ONNX_TOLERANCE:
        raise ModelError(f"the exported ONNX model disagrees with the fitted {f.algorithm} model by {diff:.2e} "
                         f"(limit {ONNX_TOLERANCE:g}); this is a bug in rtseg's exporter, please report it")
    spec = f.spec
    curve = pr_curve(f.y_val, p_onnx)
    report = ModelReport(
        name=name, version=int(version), auc=cal.auc, base_rate=f.positives / f.rows, rows=f.rows,
        positives=f.positives, curve=curve, features=features, trained_ms=int(now_ms), cutoff_ms=int(cutoff_ms),
        algorithm=f.algorithm, calibration_error=cal.calibration_error, validation_rows=len(f.y_val),
        validation_positives=int(f.y_val.sum()), predicted_positives=cal.predicted_positives,
        target=spec.target, target_segment=spec.target_segment, horizon_ms=int(spec.horizon_ms),
        lookback_ms=int(spec.lookback_ms), churn=bool(spec.churn), bucket_high=float(spec.bucket_high),
        bucket_medium=float(spec.bucket_medium), candidates=dict(f.candidates))
    deployment = Deployment(name=name, version=int(version), onnx=onnx_bytes, features=features,
                            transform=f.transform.to_dict(), curve=curve, bucket_high=float(spec.bucket_high),
                            bucket_medium=float(spec.bucket_medium))
    return deployment, report


def train(X, y, hashes, spec: ModelSpec, *, version: int, features, now_ms: int, cutoff_ms: int,
          progress: Progress = None, threads: int | None = TRAIN_THREADS) -> tuple[Deployment, ModelReport]:
    """fit, calibrate and export in a row; ``progress(phase)`` is called as each starts."""
    features = tuple(features)
    if np.ndim(X) != 2 or np.shape(X)[1] != len(features):
        raise ModelError(f"features: {len(features)} listed, the data has shape {np.shape(X)}")
    fitted = fit(X, y, hashes, spec, progress, threads=threads)
    return export(calibrate(fitted, progress), name=spec.name, version=version, features=features,
                  now_ms=now_ms, cutoff_ms=cutoff_ms, progress=progress)


def user_model(name: str, version: int, onnx: bytes, features, now_ms: int) -> tuple[Deployment, ModelReport]:
    """A user's own ONNX model: checked, scored on raw feature values (NaN for null, inf kept),
    without a validation curve (so no likely(); score() and bucket() work)."""
    name = _check_name(name)
    features = check_features(features)
    if not features:
        raise ModelError("features: a deployed model needs its feature expressions, one per input column")
    check_onnx(onnx, len(features))
    deployment = Deployment(name=name, version=int(version), onnx=bytes(onnx), features=features,
                            transform=FeatureTransform.identity().to_dict(), curve=(),
                            bucket_high=DEFAULT_BUCKET_HIGH, bucket_medium=DEFAULT_BUCKET_MEDIUM)
    report = ModelReport(name=name, version=int(version), auc=0.0, base_rate=0.0, rows=0, positives=0, curve=(),
                         features=features, trained_ms=int(now_ms), cutoff_ms=0, algorithm="onnx")
    return deployment, report


# ----------------------------------------------------------------------------- helpers


def split_by_user(hashes: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per user: 0 (train), 1 (calibration) or 2 (validation), and a fold 0..CROSS_FOLDS-1,
    from a mix of its hash and the seed (splitmix64's finaliser: user hashes need not be
    uniform in their low bits)."""
    with np.errstate(over="ignore"):
        z = hashes.astype(np.uint64) + np.uint64((int(seed) * 0x9E3779B97F4A7C15) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    bucket = (z % np.uint64(100)).astype(np.int64)
    fold = ((z // np.uint64(100)) % np.uint64(CROSS_FOLDS)).astype(np.int8)
    train, cal, _ = SPLIT_PERCENT
    return np.where(bucket < train, 0, np.where(bucket < train + cal, 1, 2)).astype(np.int8), fold


def _check_arrays(X, y, hashes):
    X = np.asarray(X, np.float64)
    if X.ndim != 2 or X.shape[1] == 0:
        raise ModelError(f"training data must be [users, features] with at least one feature, found {X.shape}")
    y = np.asarray(y)
    if y.shape != (len(X),):
        raise ModelError(f"labels: {y.shape} for {len(X)} users")
    y = y.astype(bool)
    hashes = np.asarray(hashes)
    if hashes.shape != (len(X),):
        raise ModelError(f"user hashes: {hashes.shape} for {len(X)} users")
    if hashes.dtype != np.uint64:
        hashes = hashes.astype(np.int64).view(np.uint64) if hashes.dtype.kind == "i" else hashes.astype(np.uint64)
    return X, y, hashes


def _check_counts(y: np.ndarray, what: str, unit: str) -> None:
    n, pos = len(y), int(y.sum())
    if n < MIN_ROWS:
        raise ModelError(f"too few {unit} to train: {n} in the {what}, need at least {MIN_ROWS}")
    if pos < MIN_PER_CLASS:
        raise ModelError(f"too few positives to train: {pos} of {n} {unit} converted, need at least {MIN_PER_CLASS}: "
                         "lengthen the horizon or choose a more frequent target")
    if n - pos < MIN_PER_CLASS:
        raise ModelError(f"too few negatives to train: {n - pos} of {n} {unit} did not convert, need at least "
                         f"{MIN_PER_CLASS}: shorten the horizon or choose a rarer target")


def _check_split(y: np.ndarray, what: str) -> None:
    n, pos = len(y), int(y.sum())
    if pos == 0 or pos == n:
        kind = "positives" if pos == 0 else "negatives"
        raise ModelError(f"the {what} split ({n} users, by user hash) has no {kind} "
                         f"({pos} positives of {n}): more users or a more balanced target are needed")


def _subsample(idx: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    if len(idx) <= cap:
        return idx
    return np.sort(rng.choice(idx, size=cap, replace=False))


@contextlib.contextmanager
def _thread_limit(threads: int | None):
    if not threads:
        yield
        return
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=int(threads)):
        yield


def _report(progress: Progress, phase: str) -> None:
    if progress is not None:
        progress(phase)
