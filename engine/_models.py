"""Model orchestration shared by the embedded ``Engine`` and the gateway: what to train on
(the spec resolved against the retention, the feature set), how the shards' parts are put
together, and the catalog of versions and deployments. Training itself is in ``scoring``;
feature values and scores are computed inside the shards (``engine._shard_models``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ._shard_models import compile_numeric
from .errors import ModelError, ModelInUse, UnknownModel

MIN_TRAINING_ROWS = 50


def merge_schemas(parts: list[dict]) -> dict:
    """Every shard's ``schema_summary()`` -> one: event counts add up, properties unite."""
    types: dict[str, dict] = {}
    traits: set[str] = set()
    users = 0
    for part in parts:
        users += int(part.get("users", 0))
        for name, info in part.get("types", {}).items():
            t = types.setdefault(name, {"events": 0, "props": set(), "has_value": False})
            t["events"] += int(info["events"])
            t["props"].update(info["props"])
            t["has_value"] = t["has_value"] or bool(info["has_value"])
        traits.update(part.get("traits", ()))
    return {"types": {n: dict(t, props=sorted(t["props"])) for n, t in types.items()},
            "traits": sorted(traits), "users": users}


@dataclass(frozen=True)
class TrainingPlan:
    spec: object                 # scoring.spec.ModelSpec, resolved
    features: tuple[str, ...]
    cutoff_ms: int
    now_ms: int


def plan_training(spec, retention_ms: int, now_ms: int, schema: dict, segments=None) -> TrainingPlan:
    """Resolve the spec (ModelError naming the field: target, windows, retention), choose the
    features (the spec's own, or the defaults for its target), and check every expression."""
    from scoring.features import default_features

    spec = spec.resolved(retention_ms)
    if spec.target_segment:
        if segments is not None and spec.target_segment not in segments:
            raise ModelError(f"target_segment {spec.target_segment!r} is not a segment")
        cutoff = int(now_ms)
        target_for_features = _segment_target(schema)
    else:
        cutoff = int(now_ms) - int(spec.horizon_ms)
        target_for_features = spec.target
    features = tuple(spec.features) or tuple(
        default_features(target_for_features, schema, spec.lookback_ms, spec.horizon_ms))
    if not features:
        raise ModelError("no features: give features, or ingest events first so that defaults can be chosen")
    return TrainingPlan(spec, validate_features(features, retention_ms), cutoff, int(now_ms))


def validate_features(features, retention_ms: int) -> tuple[str, ...]:
    """Feature expressions a shard can compute: numbers (``features[i]`` named in errors),
    windows within the retention, no segment() or model functions."""
    from scoring.spec import check_features

    features = check_features(features, retention_ms=retention_ms)
    if not features:
        raise ModelError("a model needs its feature expressions, one per model input column")
    for i, f in enumerate(features):
        try:
            compile_numeric(f, retention_ms)
        except ModelError as err:
            raise ModelError(f"features[{i}]: {err}") from None
    return features


def _segment_target(schema: dict) -> str:
    """Lookalikes have no target event: the default features come from the most frequent
    event type."""
    types = schema.get("types", {})
    if not types:
        raise ModelError("no events yet: a lookalike model needs history to learn from")
    from .expr._parser import name_text

    return name_text(max(types, key=lambda n: (types[n]["events"], n)))


def merge_training_data(parts: list[dict]) -> dict:
    """The shards' ``training_data`` (any number of shards and slices) -> one set of rows,
    in the order of the users' id hashes: the same population gives the learners the same
    rows in the same order, so the same model, however it is sharded."""
    parts = [p for p in parts if p is not None]
    if not parts:
        raise ModelError("no shard returned training data")
    nf = parts[0]["X"].shape[1]
    hashes = np.concatenate([p["hashes"] for p in parts]).astype(np.uint64)
    ids = [u for p in parts for u in p["user_ids"]]
    order = np.lexsort((np.asarray(ids, dtype=object), hashes)) if len(ids) == len(hashes) \
        else np.argsort(hashes, kind="stable")
    return {"X": np.concatenate([p["X"] for p in parts]).reshape(-1, nf)[order],
            "y": np.concatenate([p["y"] for p in parts]).astype(np.bool_)[order],
            "hashes": hashes[order],
            "user_ids": [ids[i] for i in order] if len(ids) == len(hashes) else []}


def check_training_rows(data: dict, plan: TrainingPlan) -> None:
    n = len(data["y"])
    pos = int(np.count_nonzero(data["y"]))
    what = (f"members of {plan.spec.target_segment!r}" if plan.spec.target_segment
            else f"users with {plan.spec.target!r} in the horizon")
    if n < MIN_TRAINING_ROWS:
        raise ModelError(f"only {n} users are known at the cutoff; training needs at least "
                         f"{MIN_TRAINING_ROWS}")
    if pos == 0 or pos == n:
        raise ModelError(f"{pos} of {n} training users are {what}: a model needs both outcomes")


class ModelCatalog:
    """Every model's versions (on disk under the data dir, or in memory) and the version
    deployed for each: the one thing both the embedded engine and the gateway consult."""

    def __init__(self, root: str | None = None):
        self.root = root
        self._registry = None
        if root and os.path.isdir(os.path.join(root, "models")):
            self.registry    # versions kept on disk: load them now

    @property
    def registry(self):
        """The registry, made on first use (an engine without models never imports scoring)."""
        if self._registry is None:
            from scoring.registry import ModelRegistry

            self._registry = ModelRegistry.load(self.root) if self.root else ModelRegistry(None)
        return self._registry

    def deployment(self, name: str):
        if self._registry is None or name not in self._registry:
            return None
        return self._registry.latest(name).deployment

    def deployments(self) -> list:
        if self._registry is None:
            return []
        return [self._registry.latest(n).deployment for n in self._registry.names()]

    def next_version(self, name: str) -> int:
        return self.registry.next_version(name)

    def add(self, mv) -> None:
        self.registry.save(mv)

    def spec(self, name: str):
        return self.registry.latest(name).spec

    def report(self, name: str):
        if name not in self.registry:
            raise UnknownModel(f"model {name!r} does not exist")
        return self.registry.latest(name).report

    def reports(self) -> list:
        if self._registry is None:
            return []
        return [self._registry.latest(n).report for n in self._registry.names()]

    def check_delete(self, name: str, segments) -> None:
        if name not in self.registry:
            raise UnknownModel(f"model {name!r} does not exist")
        users = segments.model_users(name)
        if users:
            raise ModelInUse(f"model {name!r} is used by segment(s) {', '.join(users)}; "
                             "delete or replace them first")

    def remove(self, name: str):
        return self.registry.delete(name).report

    def __contains__(self, name: str) -> bool:
        return self._registry is not None and name in self._registry
