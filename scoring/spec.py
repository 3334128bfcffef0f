"""What a model is asked to be (``ModelSpec``), what training found (``ModelReport``,
``CurvePoint``) and what every shard needs to score it (``Deployment``).

All of them are frozen, picklable and round-trip through plain dicts (``to_dict`` /
``from_dict``) for the registry's JSON files and the gRPC layer.
"""

from __future__ import annotations

import dataclasses
import math
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from engine._units import parse_duration_ms
from engine.errors import ConfigError, ExpressionError, ModelError
from engine.expr import ast as A
from engine.expr import check, parse, unparse, walk
from engine.expr._parser import duration_text, quote

DAY_MS = 86_400_000
ALGORITHMS = ("auto", "logistic", "gbt")
DEFAULT_LOOKBACK_MS = 90 * DAY_MS
DEFAULT_BUCKET_HIGH = 0.75
DEFAULT_BUCKET_MEDIUM = 0.5
MAX_NAME_CHARS = 200
MAX_FEATURES = 200


# ----------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class ModelSpec:
    """A propensity model to train: predict ``target`` within ``horizon_ms`` from features
    seen over ``lookback_ms`` (or membership of ``target_segment``, for a lookalike)."""

    name: str
    target: str = ""
    horizon_ms: int = 0
    lookback_ms: int = 0
    churn: bool = False
    features: tuple[str, ...] = ()
    algorithm: str = "auto"
    target_segment: str = ""
    bucket_high: float = DEFAULT_BUCKET_HIGH
    bucket_medium: float = DEFAULT_BUCKET_MEDIUM
    seed: int = 0

    def resolved(self, retention_ms: int) -> "ModelSpec":
        """A validated copy with the default lookback filled in; ModelError names the field."""
        retention_ms = _int_field(retention_ms, "retention_ms")
        name = _check_name(self.name)
        target = _text_field(self.target, "target").strip()
        segment = _text_field(self.target_segment, "target_segment").strip()
        if bool(target) == bool(segment):
            raise ModelError("target / target_segment: give exactly one: a target event (\"purchase\", "
                             "\"purchase where value > 50\") or a target_segment for a lookalike model")
        horizon = _duration_field(self.horizon_ms, "horizon_ms")
        lookback = _duration_field(self.lookback_ms, "lookback_ms")
        if not isinstance(self.churn, bool):
            raise ModelError(f"churn must be true or false, not {self.churn!r}")
        if target:
            target = target_source_text(target)
            if horizon <= 0:
                raise ModelError("horizon_ms must be positive with a target: how far ahead to predict, e.g. 7d")
        else:
            if horizon != 0:
                raise ModelError("horizon_ms: a lookalike model (target_segment) learns membership now "
                                 "and takes no horizon; leave it 0")
            if self.churn:
                raise ModelError("churn applies to a target event, not to a target_segment")
        if retention_ms <= horizon:
            raise ModelError(f"horizon_ms: the retention {duration_text(retention_ms)} is not longer than the "
                             f"horizon {duration_text(horizon)}: serve with a longer --retention or "
                             "shorten the horizon")
        if lookback == 0:
            lookback = min(retention_ms - horizon, DEFAULT_LOOKBACK_MS)
        if retention_ms < lookback + horizon:
            raise ModelError(f"lookback_ms: retention {duration_text(retention_ms)} is shorter than lookback "
                             f"{duration_text(lookback)} + horizon {duration_text(horizon)}: serve with "
                             f"--retention {duration_text(lookback + horizon)} or more, or shorten the lookback")
        algorithm = _text_field(self.algorithm, "algorithm").strip().lower() or "auto"
        if algorithm not in ALGORITHMS:
            raise ModelError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {self.algorithm!r}")
        high = _float_field(self.bucket_high, "bucket_high")
        medium = _float_field(self.bucket_medium, "bucket_medium")
        if not 0.0 <= medium <= high <= 1.0:
            raise ModelError(f"bucket_medium / bucket_high: need 0 <= medium <= high <= 1, "
                             f"found medium {medium:g}, high {high:g}")
        seed = _int_field(self.seed, "seed")
        if seed < 0:
            raise ModelError(f"seed must be 0 or more, not {seed}")
        # In training, features are evaluated at the cutoff (now - horizon) over what is still
        # retained then, so their windows must fit in retention - horizon; lookalikes use now.
        features = check_features(self.features, retention_ms=retention_ms - horizon)
        return dataclasses.replace(self, name=name, target=target, horizon_ms=horizon, lookback_ms=lookback,
                                   features=features, algorithm=algorithm, target_segment=segment,
                                   bucket_high=high, bucket_medium=medium, seed=seed)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["features"] = list(self.features)
        return d

    @staticmethod
    def from_dict(d: dict) -> "ModelSpec":
        known = {f.name for f in dataclasses.fields(ModelSpec)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelError(f"unknown model field(s): {', '.join(unknown)}")
        if "name" not in d:
            raise ModelError("name is required")
        kw = dict(d)
        if "features" in kw:
            if isinstance(kw["features"], str):
                raise ModelError("features must be a list of expressions, not one string")
            kw["features"] = tuple(kw["features"] or ())
        return ModelSpec(**kw)


def target_source_text(target: str) -> str:
    """The canonical text of an event source as in count(): ``"purchase where value>50"`` ->
    ``"purchase where value > 50"``; ModelError (field ``target``) if it is not one."""
    src = parse_target(target)
    return _source_text(src)


def parse_target(target: str) -> A.EventSource:
    """The EventSource of ``target`` (``E [where F]``), validated as count() would."""
    if not isinstance(target, str) or not target.strip():
        raise ModelError("target must be an event type, optionally with a filter: \"purchase where value > 50\"")
    try:
        node = parse(f"count({target}, 1d)")
    except ExpressionError as e:
        bare = target.strip()
        # "Add to Cart" given without the language's quotes: an event type, when nothing in it
        # could be a filter or a quoted name.
        if not any(c in bare for c in '".(),\n') and "where" not in bare.split():
            return parse_target(quote(bare))
        raise ModelError(f"target {target!r} is not an event source as in count(): {e.message} "
                         '(an event type that is not an identifier goes in double quotes: "Add to Cart")') from None
    # Anything that closes the call early ("a, 1d) + count(b") parses as a larger expression.
    if not (isinstance(node, A.Aggregate) and node.func == "count" and node.window_ms == DAY_MS):
        raise ModelError(f"target {target!r} is not an event source as in count(): write an event type, "
                         "optionally with where and a filter")
    try:
        check(node, condition=False)
    except ExpressionError as e:
        raise ModelError(f"target {target!r}: {e.message}") from None
    return node.source


def _source_text(src: A.EventSource) -> str:
    text = unparse(A.Since(src))
    return text[len("since("):-1]


def check_features(features: Iterable[str], *, retention_ms: int | None = None) -> tuple[str, ...]:
    """Validate feature expressions: each must parse, type-check as a number (or a value
    known only at run time, such as a trait) and keep its windows within ``retention_ms``.
    Returns them as a tuple; ModelError names ``features[i]``."""
    if isinstance(features, str):
        raise ModelError("features must be a list of expressions, not one string")
    out = tuple(features)
    if len(out) > MAX_FEATURES:
        raise ModelError(f"features: at most {MAX_FEATURES} features, found {len(out)}")
    seen: dict[str, int] = {}
    for i, text in enumerate(out):
        if not isinstance(text, str) or not text.strip():
            raise ModelError(f"features[{i}] is empty: give a numeric expression such as count(purchase, 7d)")
        try:
            tree = parse(text)
            kind = check(tree, retention_ms=retention_ms, condition=False)
        except ExpressionError as e:
            hint = ""
            if retention_ms is not None and "longer than the retention" in e.message:
                hint = (" (features are evaluated at now - horizon during training, so their windows must "
                        f"fit in {duration_text(retention_ms)})")
            raise ModelError(f"features[{i}] {text!r}: {e}{hint}") from None
        calls = [n for n in walk(tree) if isinstance(n, A.ModelCall)]
        if calls:
            raise ModelError(f"features[{i}] {text!r} uses {calls[0].func}(): a model's score cannot be a "
                             "feature of a model")
        if kind not in ("number", "any"):
            what = "a condition (true/false)" if kind == "bool" else f"a {kind}"
            raise ModelError(f"features[{i}] {text!r} is {what}: a feature must be a number, "
                             "such as count(purchase, 7d) or since(purchase)")
        key = text.strip()
        if key in seen:
            raise ModelError(f"features[{i}] repeats features[{seen[key]}]: {text!r}")
        seen[key] = i
    return out


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CurvePoint:
    """One point of the validation precision/recall curve: scoring ``>= threshold`` selects
    ``size`` validation users, of whom a fraction ``precision`` converted."""

    threshold: float
    precision: float
    recall: float
    size: int

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "precision": self.precision, "recall": self.recall, "size": self.size}

    @staticmethod
    def from_dict(d: dict) -> "CurvePoint":
        return CurvePoint(float(d["threshold"]), float(d["precision"]), float(d["recall"]), int(d["size"]))


def threshold_for(curve: Iterable[CurvePoint], precision: float) -> float | None:
    """The lowest threshold whose validation precision is at least ``precision``; None if none."""
    best = None
    for p in curve:
        if p.precision >= precision and (best is None or p.threshold < best):
            best = p.threshold
    return best


def best_precision(curve: Iterable[CurvePoint]) -> float:
    """The highest precision any threshold of ``curve`` reaches (0.0 for an empty curve)."""
    return max((p.precision for p in curve), default=0.0)


@dataclass(frozen=True)
class ModelReport:
    """The proto's ModelReport fields, in order, then what the engine and the CLI show besides."""

    name: str
    version: int
    auc: float
    base_rate: float
    rows: int
    positives: int
    curve: tuple[CurvePoint, ...]
    features: tuple[str, ...]
    trained_ms: int
    cutoff_ms: int
    algorithm: str
    calibration_error: float = 0.0
    validation_rows: int = 0
    validation_positives: int = 0
    predicted_positives: float = 0.0
    target: str = ""
    target_segment: str = ""
    horizon_ms: int = 0
    lookback_ms: int = 0
    churn: bool = False
    bucket_high: float = DEFAULT_BUCKET_HIGH
    bucket_medium: float = DEFAULT_BUCKET_MEDIUM
    candidates: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["curve"] = [p.to_dict() for p in self.curve]
        d["features"] = list(self.features)
        d["candidates"] = {str(k): float(v) for k, v in self.candidates.items()}
        return d

    @staticmethod
    def from_dict(d: dict) -> "ModelReport":
        names = {f.name for f in dataclasses.fields(ModelReport)}
        kw = {k: v for k, v in d.items() if k in names}  # tolerate fields of later versions
        kw["curve"] = tuple(CurvePoint.from_dict(p) for p in d.get("curve", ()))
        kw["features"] = tuple(d.get("features", ()))
        kw["candidates"] = dict(d.get("candidates", {}))
        return ModelReport(**kw)


@dataclass(frozen=True)
class Deployment:
    """Everything a shard needs to score one model version (picklable, no live objects)."""

    name: str
    version: int
    onnx: bytes
    features: tuple[str, ...]
    transform: dict
    curve: tuple[CurvePoint, ...]
    bucket_high: float = DEFAULT_BUCKET_HIGH
    bucket_medium: float = DEFAULT_BUCKET_MEDIUM

    def threshold(self, precision: float) -> float:
        """The score threshold of precision level ``precision`` (see ``threshold_for``)."""
        if not self.curve:
            raise ModelError(f"model {self.name} has no validation curve (user-supplied); "
                             "use score() or bucket()")
        t = threshold_for(self.curve, precision)
        if t is None:
            raise ModelError(f"model {self.name} reaches no precision of {precision:g} on its validation users; "
                             f"the best precision available is {best_precision(self.curve):.2f}")
        return t

    def bucket(self, score: float) -> str:
        """``"high"``, ``"medium"`` or ``"low"`` by this model's cut-offs."""
        if score >= self.bucket_high:
            return "high"
        return "medium" if score >= self.bucket_medium else "low"


# ----------------------------------------------------------------------------- field checks


def _check_name(name) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ModelError("name is required: a model name such as purchase_7d")
    if len(name) > MAX_NAME_CHARS:
        raise ModelError(f"name is {len(name)} characters long; at most {MAX_NAME_CHARS}")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise ModelError(f"name {name!r} contains control characters")
    if name != name.strip():
        raise ModelError(f"name {name!r} starts or ends with white space")
    return name


def _text_field(value, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ModelError(f"{what} must be a string, not {value!r}")
    return value


def _int_field(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ModelError(f"{what} must be an integer, not {value!r}")
    return int(value)


def _duration_field(value, what: str) -> int:
    """An int of ms, or a duration text like "7d" (what a CLI or a JSON file may carry)."""
    if isinstance(value, str):
        try:
            return parse_duration_ms(value, what)
        except ConfigError as e:
            raise ModelError(str(e)) from None
    ms = _int_field(value, what)
    if ms < 0:
        raise ModelError(f"{what} cannot be negative, found {ms}")
    return ms


def _float_field(value, what: str) -> float:
    if isinstance(value, bool):
        raise ModelError(f"{what} must be a number, not {value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ModelError(f"{what} must be a number, not {value!r}") from None
    if not math.isfinite(f):
        raise ModelError(f"{what} must be a finite number, not {value!r}")
    return f
