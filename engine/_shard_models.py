"""Models inside a shard: feature values from the shard's own kernels, one onnxruntime
session per deployed model, and scores kept where segments read them.

A model's score lives in a hidden trait column (``\\x00score:NAME``), so ``score()``,
``bucket()`` and ``likely()`` compile to trait reads, a re-scored user is re-evaluated
exactly like a user whose trait changed, and scores move with their users when slots move
between shards. Feature expressions are compiled into one value plan shared by every model
(equal texts are computed once), evaluated by ``kernels._eval.feature_values``.
"""

from __future__ import annotations

import time

from dataclasses import dataclass

import numpy as np

from . import _values as V
from ._deltas import CAUSE_MODEL_UPDATED, CAUSE_TIME, DeltaBatch
from ._plan import Plan, build_value_plan
from .errors import ExpressionError, ModelError, UnknownModel
from .kernels import _eval as KE
from .kernels._layout import SEG_EVMASK, SEG_TRMASK

SCORE_PREFIX = "\x00score:"
PARALLEL_ROWS = 1 << 17
_EMPTY_I64 = np.zeros(0, np.int64)
_EMPTY_U64 = np.zeros(0, np.uint64)


def compile_numeric(text: str, retention_ms: int, what: str = "feature"):
    """Parse and type-check a model feature (or label) expression (a number; a condition
    counts as 1/0), refusing what a shard cannot compute for a model: segment() and model
    functions. Raises ModelError naming the expression."""
    from .expr import check, parse, walk
    from .expr import ast as A

    if not isinstance(text, str) or not text.strip():
        raise ModelError(f"{what} must be a non-empty expression")
    try:
        tree = parse(text)
        kind = check(tree, retention_ms=retention_ms, condition=False)
    except ExpressionError as err:
        raise ModelError(f"{what} {text!r}: {err}") from None
    if kind == "string":
        raise ModelError(f"{what} {text!r} is a string: a feature must be a number or a condition")
    for node in walk(tree):
        if isinstance(node, (A.SegmentRef, A.ModelCall, A.Rfm)):
            raise ModelError(f"{what} {text!r}: {node.func if hasattr(node, 'func') else 'segment'}() "
                             "cannot be used in a model feature")
    return tree


@dataclass
class _Model:
    """A deployed model on one shard (the compiler's ``ModelColumns``)."""

    deployment: object            # scoring.spec.Deployment
    runtime: object               # scoring.runtime.ModelRuntime
    transform: object             # scoring.features.FeatureTransform
    columns: np.ndarray           # index of each of its features in the shared value plan
    plan: Plan | None = None      # its features alone (scoring everyone with this model only)

    @property
    def score_trait(self) -> str:
        return SCORE_PREFIX + self.deployment.name

    @property
    def bucket_high(self) -> float:
        return float(self.deployment.bucket_high)

    @property
    def bucket_medium(self) -> float:
        return float(self.deployment.bucket_medium)

    def threshold(self, precision: float) -> float:
        return float(self.deployment.threshold(precision))


class ShardModels:
    """The models part of ``ShardCore`` (mixed in): deploy, score, rescore, training data."""

    # set by ShardCore.__init__
    models: dict
    _fplan: Plan
    _fmask: int

    def _init_models(self) -> None:
        self.models = {}
        self._fplan = Plan.empty()
        self._ftexts: list[str] = []
        self._fmask = 0
        self.scoring_s = 0.0           # time spent scoring (features + models), since start
        self.scored_rows = 0

    # ------------------------------------------------------------------ schema (ShardSchema)
    def model(self, name: str):
        return self.models.get(name)

    # ------------------------------------------------------------------ values
    def _value_plan(self, texts) -> Plan:
        return build_value_plan([compile_numeric(t, self.retention_ms) for t in texts], self)

    def _values_of(self, plan: Plan, rows: np.ndarray, now_ms: int) -> np.ndarray:
        out = np.empty((len(rows), len(plan.names)), np.float64)
        if len(rows) and len(plan.names):
            rows = np.ascontiguousarray(rows, np.int64)
            # a re-score of everyone: every core; a batch's users: no thread hand-off
            KE.feature_values(plan, self, rows, int(now_ms), out, parallel=len(rows) >= PARALLEL_ROWS)
        return out

    def feature_values(self, features, now_ms: int, user_ids=None):
        """(user ids, float64[n, F]) of feature expressions at ``now_ms`` (null as NaN), for
        the given users (known ones only) or every known user."""
        plan = self._value_plan(list(features))
        if user_ids is None:
            rows = self._known_rows()
        else:
            rows = np.array([r for r in (self._row_of(u) for u in user_ids) if r >= 0], np.int64)
        return self.users.gather(rows), self._values_of(plan, rows, now_ms)

    def schema_summary(self) -> dict:
        """Event types (stored events, properties, whether they carry a value) and numeric
        traits: what default features are chosen from."""
        n = self.nrows
        h = self.h[:n, : len(self.type_names)]
        counts = np.where(h != -1, h & 0x1FFF, 0).sum(axis=0) if n else np.zeros(len(self.type_names))
        types = {}
        for t, name in enumerate(self.type_names):
            cols = self.type_cols[t]
            types[name] = {"events": int(counts[t]), "props": sorted(p for p in cols if p != "value"),
                           "has_value": "value" in cols}
        traits = []
        for name, c in self.trait_ids.items():
            if name.startswith("\x00"):
                continue
            col = self.traits[:n, c]
            if n and np.any(~np.isnan(col)):
                traits.append(name)
        return {"types": types, "traits": sorted(traits), "users": int(self.known[:n].sum())}

    def training_data(self, features, spec, cutoff_ms: int, now_ms: int, with_ids: bool = True,
                      part: tuple[int, int] = (0, 1)) -> dict:
        """Point-in-time training rows of this shard: features as of ``cutoff_ms`` (only
        events with ``t <= cutoff`` are seen), label from ``(cutoff, now]``, population = users
        with a retained event at or before the cutoff. With ``spec.target_segment``: features
        and membership now (``cutoff_ms == now_ms``), population = every known user.
        ``part = (k, n)`` keeps the users whose id hash is ``k`` mod ``n``, so that a server
        can gather a large population in slices with ingestion going on in between."""
        plan = self._value_plan(list(features))
        if spec.target_segment:
            rows = self._known_rows()
        else:
            seen = np.zeros(self.nrows, np.bool_)
            KE.seen_by(self, len(self.type_names), int(now_ms - self.retention_ms), int(cutoff_ms), seen)
            rows = np.flatnonzero(seen).astype(np.int64)
        rows = self._in_slice(rows, part)
        hashes = self.users.hashes()[rows].astype(np.uint64)
        if spec.target_segment:
            y = np.zeros(len(rows), np.bool_)
            if spec.target_segment in self.slots:
                s = self.slots[spec.target_segment]
                y = ((self.member[rows, s >> 6] >> np.uint64(s & 63)) & np.uint64(1)).astype(np.bool_)
        else:
            label = self._value_plan([label_expression(spec.target, now_ms - cutoff_ms)])
            y = self._values_of(label, rows, now_ms)[:, 0] > 0
            if spec.churn:
                y = ~y
        return {"X": self._values_of(plan, rows, cutoff_ms), "y": y, "hashes": hashes,
                "user_ids": self.users.gather(rows) if with_ids else []}

    # ------------------------------------------------------------------ deployment
    def deploy_model(self, dep, now_ms: int, score: bool = True) -> DeltaBatch:
        """Deploy (or replace) a model version: score every known user, then re-evaluate the
        segments that use the model for everyone (deltas with cause MODEL_UPDATED). With
        ``score=False`` only the session and the plan change; ``model_update`` then scores
        the users slice by slice (a server does so between rounds of ingestion)."""
        from scoring.features import FeatureTransform
        from scoring.runtime import ModelRuntime

        runtime = ModelRuntime(dep.onnx, len(dep.features))
        transform = FeatureTransform.from_dict(dep.transform)
        old = self.models.get(dep.name)
        self.trait_col(SCORE_PREFIX + dep.name)
        self.models[dep.name] = _Model(dep, runtime, transform, _EMPTY_I64)
        try:
            self._rebuild_features()
            self.plan = self._rebuild()
        except Exception:
            if old is None:
                del self.models[dep.name]
            else:
                self.models[dep.name] = old
            self._rebuild_features()
            self.plan = self._rebuild()
            raise
        return self.model_update(dep.name, now_ms) if score else DeltaBatch()

    def model_update(self, name: str, now_ms: int, part: tuple[int, int] = (0, 1)) -> DeltaBatch:
        """Score the known users of slice ``part = (k, n)`` (id hash ``k`` mod ``n``) with the
        deployed version of ``name`` and re-evaluate the segments using it for them
        (MODEL_UPDATED)."""
        rows = self._in_slice(self._known_rows(), part)
        self._score(rows, now_ms, only=name)
        users = {d.name for d in self.defs.values() if name in d.models}
        if not users or not len(rows):
            return DeltaBatch()
        deps = set().union(*(self._dependents(u) for u in users)) - users
        order = [self.plan.index(n) for n in self.plan.names if n in users or n in deps]
        force = np.array([self.plan.names[i] in users for i in order], np.bool_)
        return self._evaluate(None, None, None, None, now_ms, CAUSE_MODEL_UPDATED,
                              order=np.array(order, np.int64), force=force, rows=rows)

    def drop_model(self, name: str) -> None:
        """Forget a model (no segment may use it any more) and its scores."""
        if name not in self.models:
            raise UnknownModel(f"model {name!r} is not deployed")
        users = sorted(d.name for d in self.defs.values() if name in d.models)
        if users:
            from .errors import ModelInUse
            raise ModelInUse(f"model {name!r} is used by {', '.join(users)}")
        del self.models[name]
        self.traits[:, self.trait_ids[SCORE_PREFIX + name]] = V.NULL
        self._rebuild_features()

    def rescore(self, now_ms: int, part: tuple[int, int] = (0, 1)) -> DeltaBatch:
        """Score every known user again (recency features move with time), or the users of
        slice ``part = (k, n)`` (id hash ``k`` mod ``n``); cause TIME."""
        if not self.models:
            return self.advance(now_ms)
        rows, tmask = self._score(self._in_slice(self._known_rows(), part), now_ms)
        return self._evaluate(_EMPTY_I64, _EMPTY_I64, rows, tmask, now_ms, CAUSE_TIME)

    def _in_slice(self, rows: np.ndarray, part: tuple[int, int]) -> np.ndarray:
        """The rows of slice ``part = (k, n)``: users whose id hash is ``k`` mod ``n``."""
        k, n = part
        if n <= 1:
            return rows
        return rows[self.users.hashes()[rows] % np.uint64(n) == np.uint64(k)]

    def _rebuild_features(self) -> None:
        texts: list[str] = []
        pos: dict[str, int] = {}
        for m in self.models.values():
            cols = []
            for f in m.deployment.features:
                if f not in pos:
                    pos[f] = len(texts)
                    texts.append(f)
                cols.append(pos[f])
            m.columns = np.array(cols, np.int64)
            m.plan = self._value_plan(m.deployment.features)
        self._ftexts = texts
        self._fplan = self._value_plan(texts) if texts else Plan.empty()
        ev = 0
        tr = 0
        for row in self._fplan.seg_tab:
            ev |= int(row[SEG_EVMASK]) & ((1 << 64) - 1)
            tr |= int(row[SEG_TRMASK]) & ((1 << 64) - 1)
        self._fmask = ev
        self._ftrmask = tr

    # ------------------------------------------------------------------ scoring
    def _score(self, rows: np.ndarray, now_ms: int, only: str | None = None):
        """Score ``rows`` with every model (or one): one feature pass, one batched run per
        model. Returns (rows whose score changed, their trait bits) for re-evaluation."""
        if not self.models or not len(rows):
            return _EMPTY_I64, _EMPTY_U64
        t0 = time.perf_counter()
        try:
            return self._score_rows(rows, now_ms, only)
        finally:
            self.scoring_s += time.perf_counter() - t0
            self.scored_rows += len(rows)

    def _score_rows(self, rows: np.ndarray, now_ms: int, only: str | None):
        if only is None:       # every model: one pass over the features they share
            vals = self._values_of(self._fplan, rows, now_ms)
            inputs = [(m, vals[:, m.columns]) for m in self.models.values()]
        else:
            m = self.models[only]
            inputs = [(m, self._values_of(m.plan, rows, now_ms))]
        tmask = np.zeros(len(rows), np.uint64)
        for m, x in inputs:
            p = np.asarray(m.runtime.predict(m.transform.apply(x)), np.float64)
            p = np.where(np.isfinite(p), p, V.NULL)    # a model that gives no number: unscored
            c = self.trait_ids[m.score_trait]
            changed = self.traits[rows, c].view(np.int64) != p.view(np.int64)
            self.traits[rows, c] = p
            tmask[changed] |= np.uint64(1 << (c & 63))
        keep = tmask != 0
        return rows[keep], tmask[keep]

    def _score_after_events(self, rows: np.ndarray, tids: np.ndarray, now_ms: int):
        """The users of an event batch whose features read a type the batch touched."""
        if not self.models or not self._fmask:
            return _EMPTY_I64, _EMPTY_U64
        bits = np.left_shift(np.uint64(1), (tids & 63).astype(np.uint64))
        hit = (bits & np.uint64(self._fmask)) != 0
        if not hit.any():
            return _EMPTY_I64, _EMPTY_U64
        return self._score(np.unique(rows[hit]), now_ms)

    def _score_after_traits(self, rows: np.ndarray, tmask: np.ndarray, now_ms: int):
        if not self.models or not self._ftrmask:
            return _EMPTY_I64, _EMPTY_U64
        hit = (tmask & np.uint64(self._ftrmask)) != 0
        if not hit.any():
            return _EMPTY_I64, _EMPTY_U64
        return self._score(np.unique(rows[hit]), now_ms)

    def scores_of(self, row: int) -> dict:
        out = {}
        for name, m in self.models.items():
            v = float(self.traits[row, self.trait_ids[m.score_trait]])
            if not np.isnan(v):
                out[name] = v
        return out


def label_expression(target: str, horizon_ms: int) -> str:
    """``count(TARGET, H)``: how often the target happened in the horizon."""
    from .expr._parser import duration_text

    return f"count({target}, {duration_text(int(horizon_ms))})"
