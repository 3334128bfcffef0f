"""Goals: a forecast of how many members of a segment will do something by a date, the
members split into a test and a control group, score terciles as micro-segments, and the
conversions tracked against the forecast until the end date (docs/goals.md).

One goal is, once created, only ordinary engine state, so it is durable and sharded like
everything else:

* **traits** (one TRAITS frame): for every member of the segment at creation, ``goal:NAME`` =
  ``"most" | "moderately" | "least" | "control"`` and ``goal:NAME:at`` = the creation time;
* **segments** over those traits: ``goal:NAME:most``, ``:moderately``, ``:least``, ``:control``
  (usable in ``segment(...)``), and two that track conversions, ``goal:NAME:converted`` (test
  members with a target event after creation) and ``goal:NAME:control_converted``;
* **the definition** (a GOAL_CREATE frame): the snapshot's sizes and the forecast per day;
* **the tracker** (:class:`GoalBook`): the first ENTER into a tracking segment of each user
  (with the delta's time), fed by the delta batches as they are appended, live and in replay,
  and kept in snapshots.

The split is a stable 64-bit hash of (goal name, user id) (:func:`in_control`): the same for
any number of shards and after restarts. The model is a deployed model with the same target
and a horizon within :data:`HORIZON_MATCH` of the goal's, or one trained for the goal
(``goal-NAME``, horizon ``end_ms - now``). The forecast by ``end_ms`` is the sum of the
members' probabilities; by an earlier time ``t`` it assumes a constant hazard per user:
``1 - (1 - p) ** ((t - created) / horizon)``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from .errors import (
    GoalError,
    GoalExists,
    Overloaded,
    SegmentExists,
    SegmentInUse,
    UnknownGoal,
)
from .limits import RESERVED_TRAIT_PREFIX

DAY_MS = 86_400_000
DEFAULT_CONTROL_FRACTION = 0.1
HORIZON_MATCH = 0.10          # a deployed model is reused if its horizon is within 10 % of the goal's
                              # and it was trained no longer ago than 10 % of the goal's horizon
GROUPS = ("most", "moderately", "least")
CONTROL = "control"
KINDS = ("most", "moderately", "least", "control", "converted", "control_converted")
Z95 = 1.959963984540054
TRAIT_CHUNK = 100_000         # members per TRAITS frame


# ----------------------------------------------------------------------------- names, split

def segment_names(goal: str) -> dict[str, str]:
    """kind -> segment name: most, moderately, least, control, converted, control_converted."""
    return {k: f"{RESERVED_TRAIT_PREFIX}{goal}:{k}" for k in KINDS}


def trait_names(goal: str) -> tuple[str, str]:
    """(the group trait, the creation-time trait) of a goal."""
    return f"{RESERVED_TRAIT_PREFIX}{goal}", f"{RESERVED_TRAIT_PREFIX}{goal}:at"


def model_name(goal: str) -> str:
    return f"goal-{goal}"


def control_hash(goal: str, user_id: str) -> float:
    """A stable number in [0, 1) of (goal, user): the first 8 bytes of BLAKE2b, as a fraction."""
    h = hashlib.blake2b(f"{goal}\x00{user_id}".encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(h.digest(), "big") / 2.0 ** 64


def in_control(goal: str, user_id: str, fraction: float) -> bool:
    """True iff the user is in the goal's control group (``control_hash < fraction``)."""
    return control_hash(goal, user_id) < fraction


def check_user_traits(updates) -> None:
    """Refuse a user's trait update that writes a goal's reserved trait (GoalError)."""
    for upd in updates:
        try:
            traits = upd[1]
        except (TypeError, IndexError, KeyError):
            continue
        if not hasattr(traits, "keys"):
            continue
        for name in traits:
            if isinstance(name, str) and name.startswith(RESERVED_TRAIT_PREFIX):
                raise GoalError(f'trait "{name}" is reserved: traits starting with '
                                f'"{RESERVED_TRAIT_PREFIX}" are written by goals only')


# ----------------------------------------------------------------------------- the answer

@dataclass(frozen=True)
class GoalDay:
    """One day of a goal, cumulative from creation to the end of that day."""

    day_start_ms: int
    predicted: float
    actual: int
    predicted_control: float
    actual_control: int


@dataclass(frozen=True)
class GoalInfo:
    """The proto's Goal fields, in order."""

    name: str
    segment: str
    target: str
    created_ms: int
    end_ms: int
    control_fraction: float
    minimize: bool
    model: str
    snapshot_size: int
    test_size: int
    control_size: int
    predicted: float
    predicted_control: float
    actual: int
    actual_control: int
    test_conversion: float
    control_conversion: float
    uplift: float
    uplift_low: float
    uplift_high: float
    days: tuple[GoalDay, ...] = ()
    active: bool = False
    segments: tuple[str, ...] = ()
    now_ms: int = 0


def wilson(x: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion x / n ([0, 1] when n is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = x / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def newcombe(x1: int, n1: int, x2: int, n2: int, z: float = Z95) -> tuple[float, float, float]:
    """p1 - p2 with Newcombe's hybrid score interval (method 10, from two Wilson intervals)."""
    p1 = x1 / n1 if n1 else 0.0
    p2 = x2 / n2 if n2 else 0.0
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    d = p1 - p2
    return (d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


# ----------------------------------------------------------------------------- validation

@dataclass(frozen=True)
class GoalPlan:
    """A validated goal request."""

    name: str
    segment: str
    target: str              # canonical target text (scoring.spec.target_source_text)
    end_ms: int
    control_fraction: float
    minimize: bool
    horizon_ms: int


def validate(name, segment, target, end_ms, control_fraction, minimize, *, now_ms: int,
             retention_ms: int, registry, book: GoalBook, limits=None) -> GoalPlan:
    """Check a goal request against the engine's state. GoalError names the field;
    GoalExists, SegmentExists (a micro-segment name taken), UnknownSegment, Overloaded."""
    from scoring.spec import _check_name, target_source_text

    from ._segments import _check_name as check_segment_name
    from .errors import ExpressionError, ModelError

    if not isinstance(name, str) or not name.strip():
        raise GoalError("name is required: a goal name such as spring_sale")
    try:
        check_segment_name(name)
        _check_name(model_name(name))
    except (ExpressionError, ModelError) as err:
        raise GoalError(f"name: {getattr(err, 'message', err)}") from None
    for part in segment_names(name).values():
        try:
            check_segment_name(part, limits.max_name_bytes if limits else 10 ** 9)
        except ExpressionError as err:
            raise GoalError(f"name {name!r} is too long for its segment {part!r}: {err.message}") from None
    if name in book:
        raise GoalExists(f"goal {name!r} already exists")
    taken = [s for s in segment_names(name).values() if s in registry]
    if taken:
        raise SegmentExists(f"name: goal {name!r} needs the segment name(s) {', '.join(taken)}, "
                            "which exist already")
    if limits is not None and len(registry.names()) + len(KINDS) > limits.max_segments:
        raise Overloaded(f"a goal makes {len(KINDS)} segments and the engine has "
                         f"{len(registry.names())}; at most {limits.max_segments} (max_segments)")
    if not isinstance(segment, str) or not segment:
        raise GoalError("segment is required: the segment whose members the goal is about")
    registry.get(segment)       # UnknownSegment (NOT_FOUND)
    try:
        target = target_source_text(target)
    except ModelError as err:
        raise GoalError(f"target: {err}") from None
    if isinstance(end_ms, bool) or not isinstance(end_ms, (int, np.integer)):
        raise GoalError(f"end_ms must be an integer time in ms, not {end_ms!r}")
    end_ms = int(end_ms)
    horizon = end_ms - int(now_ms)
    if horizon <= 0:
        raise GoalError(f"end_ms {end_ms} is not after now ({now_ms})")
    if horizon >= retention_ms:
        raise GoalError(f"end_ms: the horizon end_ms - now ({_days(horizon)}) must be shorter than "
                        f"the retention ({_days(retention_ms)}): a model learns it from retained history")
    try:
        fraction = float(control_fraction or 0.0)
    except (TypeError, ValueError):
        raise GoalError(f"control_fraction must be a number, not {control_fraction!r}") from None
    if not math.isfinite(fraction) or not 0.0 <= fraction < 1.0:
        raise GoalError(f"control_fraction must be in [0, 1) (0 means {DEFAULT_CONTROL_FRACTION}), "
                        f"not {control_fraction!r}")
    if fraction == 0.0:
        fraction = DEFAULT_CONTROL_FRACTION
    if not isinstance(minimize, (bool, np.bool_)):
        raise GoalError(f"minimize must be true or false, not {minimize!r}")
    return GoalPlan(name, segment, target, end_ms, fraction, bool(minimize), horizon)


def _days(ms: int) -> str:
    from .expr._parser import duration_text

    return duration_text(int(ms))


def reusable_model(reports, deployed, target: str, horizon_ms: int,
                   now_ms: int) -> tuple[str, int] | None:
    """(name, horizon) of a deployed, engine-trained model predicting ``target`` (not churn)
    with a horizon within HORIZON_MATCH of ``horizon_ms``, trained at most HORIZON_MATCH x
    ``horizon_ms`` before ``now_ms``; the closest horizon, then by name."""
    best = None
    for r in reports:
        if r.name not in deployed or not r.target or r.target_segment or r.churn:
            continue
        if r.target != target or not r.horizon_ms:
            continue
        if now_ms - int(r.trained_ms) > HORIZON_MATCH * horizon_ms:
            continue
        off = abs(int(r.horizon_ms) - horizon_ms)
        if off <= HORIZON_MATCH * horizon_ms:
            key = (off, r.name)
            if best is None or key < best[0]:
                best = (key, (r.name, int(r.horizon_ms)))
    return best[1] if best else None


# ----------------------------------------------------------------------------- creation

def member_scores(data: dict, deployment, model_horizon_ms: int, horizon_ms: int):
    """(member ids, probabilities by the goal's end) from ``training_data`` rows whose label
    is segment membership: the model's probabilities, moved from the model's horizon to the
    goal's under the constant-hazard assumption."""
    from scoring.features import FeatureTransform
    from scoring.runtime import ModelRuntime

    y = np.asarray(data["y"], np.bool_)
    ids = [u for u, m in zip(data["user_ids"], y) if m]
    X = np.asarray(data["X"])[y]
    order = sorted(range(len(ids)), key=ids.__getitem__)   # by id: the same sums on any shards
    ids = [ids[i] for i in order]
    X = X[np.asarray(order, np.int64)] if ids else X
    if not ids:
        return [], np.zeros(0)
    runtime = ModelRuntime(deployment.onnx, len(deployment.features))
    p = np.asarray(runtime.predict(FeatureTransform.from_dict(deployment.transform).apply(X)), np.float64)
    p = np.clip(np.nan_to_num(p, nan=0.0), 0.0, 1.0)
    if model_horizon_ms and model_horizon_ms != horizon_ms:
        p = 1.0 - (1.0 - p) ** (horizon_ms / model_horizon_ms)
    return ids, p


def assign_groups(goal: str, ids, p: np.ndarray, fraction: float) -> list[str]:
    """Each member's group: control by hash; test members by tercile of the score, ranked by
    score (highest first), ties by user id: rank r of n is "most" if r < n/3, "moderately"
    if r < 2n/3, else "least"."""
    control = np.array([in_control(goal, u, fraction) for u in ids], np.bool_)
    groups = np.full(len(ids), CONTROL, dtype=object)
    test = np.flatnonzero(~control)
    order = sorted(test, key=lambda i: (-p[i], ids[i]))
    n = len(order)
    for r, i in enumerate(order):
        groups[i] = GROUPS[0] if 3 * r < n else GROUPS[1] if 3 * r < 2 * n else GROUPS[2]
    return list(groups)


def predicted_days(p: np.ndarray, horizon_ms: int) -> list[float]:
    """Expected conversions by the end of each day of the horizon (constant hazard)."""
    out = []
    q = 1.0 - np.clip(p, 0.0, 1.0)
    k = 1
    while True:
        t = min(k * DAY_MS, horizon_ms)
        out.append(float(np.sum(1.0 - q ** (t / horizon_ms))))
        if t >= horizon_ms:
            return out
        k += 1


def segment_texts(goal: str, target: str, created_ms: int) -> list[tuple[str, str, str]]:
    """(name, expression, description) of the goal's six segments. Each also checks the
    creation time, so that traits left by a creation that a crash cut short (see
    ``orphan_goals``) never count for a goal created again under the same name later."""
    from .expr._parser import quote

    gt, at = trait_names(goal)
    g, a = f"trait.{quote(gt)}", f"trait.{quote(at)}"
    names = segment_names(goal)
    mine = f"{a} == {int(created_ms)}"
    after = f"since({target}) < since({a})"
    tests = ", ".join(quote(x) for x in GROUPS)
    return [
        (names["most"], f'{g} == "most" and {mine}', f"goal {goal}: test members most likely to convert"),
        (names["moderately"], f'{g} == "moderately" and {mine}', f"goal {goal}: test members, middle tercile"),
        (names["least"], f'{g} == "least" and {mine}', f"goal {goal}: test members least likely to convert"),
        (names["control"], f'{g} == "control" and {mine}', f"goal {goal}: the control group"),
        (names["converted"], f"{g} in [{tests}] and {mine} and {after}",
         f"goal {goal}: test members with {target} after creation"),
        (names["control_converted"], f'{g} == "control" and {mine} and {after}',
         f"goal {goal}: control members with {target} after creation"),
    ]


def orphan_goals(registry, book) -> dict[str, list[str]]:
    """Goals whose segments exist without a definition -> those segments. A goal's frames
    are logged together, but a crash can still cut the log between them (the last frames
    are lost): a creation leaves its traits and segments without its GOAL_CREATE (the last
    frame), a deletion its segments after its GOAL_DELETE (the first). Recovery removes
    them (``repair_frames``), so the name can be used again."""
    out: dict[str, list[str]] = {}
    for seg in (d.name for d in registry.all()):
        if not seg.startswith(RESERVED_TRAIT_PREFIX):
            continue
        for kind in KINDS:
            suffix = ":" + kind
            if seg.endswith(suffix):
                goal = seg[len(RESERVED_TRAIT_PREFIX):-len(suffix)]
                if goal and goal not in book and segment_names(goal)[kind] == seg:
                    out.setdefault(goal, []).append(seg)
                break
    return out


def repair_frames(goal: str, segments: list[str], members, now_ms: int, **kw) -> list:
    """The frames that remove an orphan goal: its remaining segments and its members' traits
    (``deletion_frames`` without GOAL_DELETE, for the segments that exist)."""
    from .durability import frames as F

    frames = deletion_frames(goal, members, now_ms, **kw)
    return [f for f in frames if f.op == F.TRAITS or (f.op == F.SEGMENT_DELETE and f.payload in segments)]


def repair_goals(eng) -> list[str]:
    """``Engine`` after recovery: remove orphan goals (``orphan_goals``) -> their names."""
    with eng._lock:
        orphans = orphan_goals(eng._registry, eng._goals)
        now = eng._clock_for_op()
        for goal, segs in sorted(orphans.items()):
            members = set()
            for seg in segs:
                members.update(eng._core.members(seg))
            for frame in repair_frames(goal, segs, members, now, retention_ms=eng.retention_ms,
                                       clock=eng.clock, limits=eng.limits, names=eng._names):
                eng._run(frame)
        return sorted(orphans)


def creation_frames(plan: GoalPlan, model: str, ids, p: np.ndarray, now_ms: int, registry, *,
                    retention_ms: int, clock: str, limits, names) -> list:
    """The frames of a new goal: TRAITS (groups and creation time), the six segments, then
    GOAL_CREATE with the definition. Every check is done before any frame is made."""
    from ._batch import prepare_traits
    from .durability import frames as F

    groups = assign_groups(plan.name, ids, p, plan.control_fraction)
    gt, at = trait_names(plan.name)
    frames = []
    for lo in range(0, len(ids), TRAIT_CHUNK):
        updates = [(u, {gt: g, at: int(now_ms)}, None)
                   for u, g in zip(ids[lo:lo + TRAIT_CHUNK], groups[lo:lo + TRAIT_CHUNK])]
        cols, rejections = prepare_traits(updates, now_ms=now_ms, retention_ms=retention_ms,
                                          clock=clock, limits=limits, names=names)
        if rejections:
            raise GoalError(f"the goal's traits cannot be written: {rejections[0].reason}")
        frames.append(F.Frame(F.TRAITS, now_ms, cols))
    for seg, expr, desc in segment_texts(plan.name, plan.target, now_ms):
        frames.append(F.Frame(F.SEGMENT_CREATE, now_ms, registry.validate(seg, expr, desc, now_ms=now_ms)))
    ctrl = np.array([g == CONTROL for g in groups], np.bool_)
    record = {
        "name": plan.name, "segment": plan.segment, "target": plan.target,
        "created_ms": int(now_ms), "end_ms": plan.end_ms, "control_fraction": plan.control_fraction,
        "minimize": plan.minimize, "model": model, "snapshot_size": len(ids),
        "test_size": int((~ctrl).sum()), "control_size": int(ctrl.sum()),
        "predicted_days": predicted_days(p[~ctrl], plan.horizon_ms),
        "predicted_control_days": predicted_days(p[ctrl], plan.horizon_ms),
    }
    frames.append(F.Frame(F.GOAL_CREATE, now_ms, record))
    return frames


def deletion_frames(goal: str, members, now_ms: int, *, retention_ms: int, clock: str,
                    limits, names) -> list:
    """GOAL_DELETE, the six segments deleted, the goal's traits cleared for ``members``."""
    from ._batch import prepare_traits
    from .durability import frames as F

    frames = [F.Frame(F.GOAL_DELETE, now_ms, goal)]
    frames += [F.Frame(F.SEGMENT_DELETE, now_ms, s) for s in segment_names(goal).values()]
    gt, at = trait_names(goal)
    members = sorted(members)
    for lo in range(0, len(members), TRAIT_CHUNK):
        cols, _ = prepare_traits([(u, {gt: None, at: None}, None) for u in members[lo:lo + TRAIT_CHUNK]],
                                 now_ms=now_ms, retention_ms=retention_ms, clock=clock,
                                 limits=limits, names=names)
        frames.append(F.Frame(F.TRAITS, now_ms, cols))
    return frames


def check_goal_delete(goal: str, registry) -> None:
    """SegmentInUse when a segment outside the goal uses one of its segments."""
    own = set(segment_names(goal).values())
    users = sorted(d.name for d in registry.all() if d.name not in own and own & set(d.deps))
    if users:
        raise SegmentInUse(f"goal {goal!r}: its segments are used by {', '.join(users)}; "
                           "delete or replace those first")


# ----------------------------------------------------------------------------- the book

@dataclass
class GoalBook:
    """Every goal's definition and its tracker (first conversion time per user and group)."""

    defs: dict = field(default_factory=dict)          # name -> record (GOAL_CREATE payload)
    converted: dict = field(default_factory=dict)     # name -> {"test": {uid: ms}, "control": {...}}
    _watch: dict = field(default_factory=dict)        # tracking segment -> (goal, group)

    def __contains__(self, name: str) -> bool:
        return name in self.defs

    def __len__(self) -> int:
        return len(self.defs)

    def names(self) -> list[str]:
        return sorted(self.defs)

    def get(self, name: str) -> dict:
        try:
            return self.defs[name]
        except KeyError:
            raise UnknownGoal(f"goal {name!r} does not exist") from None

    # ------------------------------------------------------------------ frames and deltas
    def apply_frame(self, frame) -> None:
        from .durability import frames as F

        if frame.op == F.GOAL_CREATE:
            self._add(dict(frame.payload), {"test": {}, "control": {}})
        elif frame.op == F.GOAL_DELETE:
            self._remove(frame.payload)

    def _add(self, rec: dict, conv: dict) -> None:
        name = rec["name"]
        self.defs[name] = rec
        self.converted[name] = conv
        names = segment_names(name)
        self._watch[names["converted"]] = (name, "test")
        self._watch[names["control_converted"]] = (name, "control")

    def _remove(self, name: str) -> None:
        self.defs.pop(name, None)
        self.converted.pop(name, None)
        for k in ("converted", "control_converted"):
            self._watch.pop(segment_names(name)[k], None)

    def on_batch(self, batch) -> None:
        """A delta batch as it is appended: the first ENTER of a user into a tracking segment."""
        if not self._watch or batch is None or not len(batch):
            return
        from ._deltas import ENTER

        watch = self._watch
        if watch.keys().isdisjoint(batch.segments):     # C-speed: most batches touch no goal
            return
        kinds = batch.kind
        at = batch.at_ms
        for j, seg in enumerate(batch.segments):
            hit = watch.get(seg)
            if hit is None or kinds[j] != ENTER:
                continue
            seen = self.converted[hit[0]][hit[1]]
            uid = batch.user_ids[j]
            if uid not in seen:
                seen[uid] = int(at[j])

    def check_segment_change(self, segment: str, what: str = "delete") -> None:
        """SegmentInUse (FAILED_PRECONDITION) for a goal's own segment while the goal exists."""
        for name in self.defs:
            if segment in segment_names(name).values():
                raise SegmentInUse(f"segment {segment!r} belongs to goal {name!r}: delete the goal "
                                   f"(DeleteGoal) rather than {what} the segment")

    # ------------------------------------------------------------------ durable state
    def export_state(self) -> list:
        return [{"def": self.defs[n],
                 "test": sorted([u, int(t)] for u, t in self.converted[n]["test"].items()),
                 "control": sorted([u, int(t)] for u, t in self.converted[n]["control"].items())}
                for n in self.names()]

    def restore_state(self, state) -> None:
        self.reset()
        for g in state or ():
            self._add(dict(g["def"]), {"test": {u: int(t) for u, t in g["test"]},
                                       "control": {u: int(t) for u, t in g["control"]}})

    def reset(self) -> None:
        self.defs.clear()
        self.converted.clear()
        self._watch.clear()

    # ------------------------------------------------------------------ reports
    def info(self, name: str, now_ms: int) -> GoalInfo:
        rec = self.get(name)
        created, end = int(rec["created_ms"]), int(rec["end_ms"])
        conv = self.converted[name]
        t_times = np.sort(np.fromiter(conv["test"].values(), np.int64, len(conv["test"])))
        c_times = np.sort(np.fromiter(conv["control"].values(), np.int64, len(conv["control"])))
        t_times = t_times[t_times <= end]
        c_times = c_times[c_times <= end]
        n_t, n_c = int(rec["test_size"]), int(rec["control_size"])
        x_t, x_c = len(t_times), len(c_times)
        uplift, lo, hi = newcombe(x_t, n_t, x_c, n_c)
        days = []
        pred, pred_c = rec["predicted_days"], rec["predicted_control_days"]
        for k in range(len(pred)):
            start = created + k * DAY_MS
            if start > now_ms:
                break
            stop = min(start + DAY_MS, end)
            days.append(GoalDay(start, float(pred[k]), int(np.searchsorted(t_times, stop, "right")),
                                float(pred_c[k]), int(np.searchsorted(c_times, stop, "right"))))
        names = segment_names(name)
        return GoalInfo(
            name=name, segment=rec["segment"], target=rec["target"], created_ms=created, end_ms=end,
            control_fraction=float(rec["control_fraction"]), minimize=bool(rec["minimize"]),
            model=rec["model"], snapshot_size=int(rec["snapshot_size"]), test_size=n_t,
            control_size=n_c, predicted=float(pred[-1]) if pred else 0.0,
            predicted_control=float(pred_c[-1]) if pred_c else 0.0, actual=x_t, actual_control=x_c,
            test_conversion=x_t / n_t if n_t else 0.0, control_conversion=x_c / n_c if n_c else 0.0,
            uplift=uplift, uplift_low=lo, uplift_high=hi, days=tuple(days), active=now_ms < end,
            segments=tuple(names[k] for k in ("most", "moderately", "least", "control")),
            now_ms=int(now_ms))


# ----------------------------------------------------------------------------- the embedded engine

def _model_spec(goal: str, target: str, horizon_ms: int):
    from scoring.spec import ModelSpec

    return ModelSpec(name=model_name(goal), target=target, horizon_ms=int(horizon_ms))


def _membership_spec(model: str, segment: str):
    from scoring.spec import ModelSpec

    return ModelSpec(name=model, target_segment=segment)


def create_goal(eng, name, segment, target, end_ms, control_fraction=0.1, minimize=False) -> GoalInfo:
    """``Engine.create_goal``: validate, reuse or train the model, score the members, apply."""
    with eng._lock:
        now = eng._clock_for_op()
        plan = validate(name, segment, target, end_ms, control_fraction, minimize, now_ms=now,
                        retention_ms=eng.retention_ms, registry=eng._registry, book=eng._goals,
                        limits=eng.limits)
        found = reusable_model(eng._models.reports(), eng._deployed, plan.target, plan.horizon_ms, now)
    if found is None:      # trained outside the lock, as train_model does
        report = eng.train_model(_model_spec(plan.name, plan.target, plan.horizon_ms))
        found = (report.name, int(report.horizon_ms))
    with eng._lock:
        now = eng._clock_for_op()
        plan = validate(name, segment, target, end_ms, control_fraction, minimize, now_ms=now,
                        retention_ms=eng.retention_ms, registry=eng._registry, book=eng._goals,
                        limits=eng.limits)
        dep = eng._models.deployment(found[0])
        data = eng._core.training_data(list(dep.features), _membership_spec(found[0], plan.segment),
                                       now, now)
        ids, p = member_scores(data, dep, found[1], plan.horizon_ms)
        for frame in creation_frames(plan, found[0], ids, p, now, eng._registry,
                                     retention_ms=eng.retention_ms, clock=eng.clock,
                                     limits=eng.limits, names=eng._names):
            eng._run(frame)
        return eng._goals.info(plan.name, eng.now_ms)


def delete_goal(eng, name: str) -> GoalInfo:
    with eng._lock:
        eng._goals.get(name)
        check_goal_delete(name, eng._registry)
        now = eng._clock_for_op()
        info = eng._goals.info(name, now)
        names = segment_names(name)
        members = set()
        for k in ("most", "moderately", "least", "control"):
            members.update(eng._core.members(names[k]))
        for frame in deletion_frames(name, members, now, retention_ms=eng.retention_ms,
                                     clock=eng.clock, limits=eng.limits, names=eng._names):
            eng._run(frame)
        return info


def get_goal(eng, name: str) -> GoalInfo:
    with eng._lock:
        return eng._goals.info(name, eng.now_ms)


def list_goals(eng) -> list[GoalInfo]:
    with eng._lock:
        return [eng._goals.info(n, eng.now_ms) for n in eng._goals.names()]
