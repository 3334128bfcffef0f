"""The embedded engine: one in-process shard, a clock and a delta log. No server, no Ray.

Every change is a frame (``engine.durability.frames``) applied as shard steps, exactly as the
gateway applies it to its shards; with a ``data_dir`` the frames are written ahead to a log
and snapshots let it be cut, so a new ``Engine`` on the same directory starts where the last
one stopped."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ._batch import Rejection, events_from_dicts, prepare_events, prepare_traits
from . import _rfm
from ._clock import CLOCKS, Clock, wall_ms
from ._deltas import Delta, DeltaLog
from ._history import after_frame as _history_after_frame
from ._steps import apply_step
from .durability import frames as F
from ._models import (ModelCatalog, check_training_rows, merge_training_data, plan_training,
                      validate_features)
from ._segments import SegmentRegistry
from ._shard import ShardCore
from ._units import parse_duration_ms
from .config import parse_interval_ms
from .errors import ConfigError


@dataclass(frozen=True)
class IngestResult:
    """What became of a batch: counts, one Rejection per bad event, the clock after it."""

    accepted: int
    rejected: int
    rejections: list[Rejection] = field(default_factory=list)
    now_ms: int = 0


@dataclass(frozen=True)
class SegmentInfo:
    name: str
    expression: str
    description: str
    size: int
    created_ms: int
    version: int


def wall_now_ms() -> int:
    return wall_ms()


class Engine:
    """An in-process rtseg engine (see the embedded API in the spec).

    >>> eng = Engine(clock="event")
    >>> eng.create_segment("browsers", "count(view_product, 48h) >= 2")
    SegmentInfo(name='browsers', expression='count(view_product, 48h) >= 2', description='', size=0, created_ms=0, version=1)
    >>> r = eng.ingest([{"user_id": "u1", "type": "view_product", "timestamp_ms": 1_000},
    ...                 {"user_id": "u1", "type": "view_product", "timestamp_ms": 2_000}])
    >>> (r.accepted, eng.members("browsers"), eng.deltas()[0].kind)
    (2, {'u1'}, 'ENTER')
    """

    def __init__(self, clock: str = "event", retention: "str | int" = "30d", *,
                 max_events_per_type: int = 4096, delta_log_capacity: int = 1_000_000,
                 tick_interval_ms: int | None = None, data_dir: str | None = None,
                 rescore_interval: "str | int" = "1h", fsync: str = "interval",
                 snapshot_interval: "str | int" = "5m", max_future: "str | int" = "1d",
                 rfm_interval: "str | int" = _rfm.DEFAULT_INTERVAL, limits=None,
                 history_interval: "str | int" = "60s", history_retention: "str | int" = "30d"):
        from . import _history
        from .limits import Limits

        if clock not in CLOCKS:
            raise ConfigError(f"clock must be 'event' or 'wall', not {clock!r}")
        self.clock = clock
        self.retention_ms = parse_duration_ms(retention, "retention")
        # 0 turns the scheduled re-scoring off (scores still follow every event)
        self.rescore_interval_ms = parse_interval_ms(rescore_interval, "rescore_interval")
        # rfm_* quintile boundaries are recomputed this often (engine clock); 0: on demand only
        self.rfm_interval_ms = parse_interval_ms(rfm_interval, "rfm_interval")
        self._rfm = _rfm.RfmState()
        self.limits = limits or Limits(max_future_ms=parse_duration_ms(max_future, "max_future"))
        self._clock = Clock(clock, self.limits)
        self._names = _name_budget(self.limits)
        self.max_events_per_type = max_events_per_type
        self._core = ShardCore(self.retention_ms, max_events_per_type)
        self._models = ModelCatalog(data_dir)
        self._registry = SegmentRegistry(self.retention_ms, models=self._models, limits=self.limits)
        self._log = DeltaLog(delta_log_capacity)
        self._history = _history.new_history(history_interval, history_retention)
        self._applied_now = self._clock.now_ms
        self._last_rescore_ms = self._clock.now_ms
        self._deployed: dict[str, int] = {}
        self._lock = threading.RLock()
        self._store = None
        from ._goals import GoalBook
        self._goals = GoalBook()              # goals and their conversion trackers
        self._snapshot_interval_ms = parse_interval_ms(snapshot_interval, "snapshot_interval")
        self._last_snapshot = time.monotonic()
        if data_dir:
            from .durability.store import DurableStore
            from .durability import embedded

            self._store = DurableStore(data_dir, fsync=fsync)
            self.recovery = embedded.recover(self)
            from ._goals import repair_goals

            self.recovery["orphan_goals_removed"] = repair_goals(self)
        for mv in self._models_to_deploy():     # versions in the data dir not deployed yet
            self._deploy_version(mv)
        self._ticker = None
        if tick_interval_ms is not None:
            if clock != "wall":
                raise ConfigError("tick_interval_ms needs the wall clock")
            self._start_ticker(tick_interval_ms)

    # ------------------------------------------------------------------ clock
    @property
    def now_ms(self) -> int:
        return self._clock.current()

    @property
    def _now(self) -> int:
        return self._clock.now_ms

    def _clock_for_op(self) -> int:
        now = self._clock.for_op()
        self._clock.move(now)
        return now

    def advance_clock(self, now_ms: int, allow_far_future: bool = False) -> int:
        """Event clock only: move ``now`` forward (never back) and apply time-driven changes.
        Beyond ``max_future`` ahead of max(now, the machine's clock) only with
        ``allow_far_future``."""
        with self._lock:
            target = self._clock.check_advance(now_ms, allow_far_future)
            self._run(F.Frame(F.CLOCK, target))
            return self._now

    def tick(self) -> int:
        """Apply the time-driven changes due now (wall clock); returns how many deltas."""
        with self._lock:
            return self._run(F.Frame(F.CLOCK, self._clock.for_op()))

    def _start_ticker(self, interval_ms: int) -> None:
        stop = threading.Event()

        def run():
            while not stop.wait(interval_ms / 1000.0):
                self.tick()

        t = threading.Thread(target=run, name="rtseg-ticker", daemon=True)
        t.start()
        self._ticker = (t, stop)

    def close(self) -> None:
        """Stop the ticker; with a data dir, write a snapshot and close the log."""
        if self._ticker:
            self._ticker[1].set()
            self._ticker[0].join()
            self._ticker = None
        if self._store is not None:
            with self._lock:
                self.snapshot()
                self._store.close()
                self._store = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ frames
    def _run(self, frame: F.Frame) -> int:
        """Log (with a data dir) and apply one frame -> deltas appended."""
        self._clock.move(frame.now_ms)
        if frame.rescore is None and frame.op != F.RESCORE:
            frame.rescore = self._rescore_due(frame)
        lsn = self._store.append([frame]) if self._store is not None else 0
        n = self._apply(frame)
        if lsn:
            self._store.wait(lsn)
            self._maybe_snapshot()
        if frame.op != F.RFM and self._rfm.due(frame.now_ms, self.rfm_interval_ms, self._rfm_nodes):
            n += self._recompute_rfm(frame.now_ms, scheduled=True)
        return n

    # ------------------------------------------------------------------ rfm
    def _rfm_nodes(self, extra=None) -> dict:
        if extra is None:                # asked by the schedule on every frame: kept
            return self._registry.derived("rfm", lambda defs: _rfm.nodes_by_key([d.ast for d in defs]))
        return _rfm.nodes_by_key([d.ast for d in self._registry.all()] + [extra])

    def _recompute_rfm(self, now: int, scheduled: bool, nodes: dict | None = None) -> int:
        """Boundaries of ``nodes`` (default: every rfm source in use) over the population, as
        one logged RFM frame -> deltas."""
        nodes = self._rfm_nodes() if nodes is None else nodes
        if not nodes:
            if scheduled:                # no source in use: the next interval starts all the same
                self._rfm.start_interval(now)
            return 0
        metrics = self._core.rfm_values(nodes, now)
        payload = _rfm.bounds_payload({k: [m] for k, m in metrics.items()}, scheduled)
        return self._run(F.Frame(F.RFM, now, payload))

    def _rfm_for(self, tree, now: int) -> None:
        """Before a segment or a preview reads an rfm source for the first time: its
        boundaries, so that it starts from the population (not from null scores)."""
        missing = {k: n for k, n in _rfm.nodes_by_key([tree]).items() if k not in self._rfm.bounds}
        if missing:
            self._recompute_rfm(now, scheduled=False, nodes=missing)

    def recompute_rfm(self) -> dict:
        """Recompute every rfm_* source's quintile boundaries now (also done every
        ``rfm_interval``) -> ``{"boundaries": [...], "deltas": n, "now_ms", "seconds"}``."""
        with self._lock:
            t0 = time.perf_counter()
            now = self._clock_for_op()
            n = self._recompute_rfm(now, scheduled=True)
            return {"boundaries": self._rfm.report(list(self._rfm_nodes())), "deltas": n, "now_ms": now,
                    "seconds": time.perf_counter() - t0}

    def rfm_boundaries(self) -> list[dict]:
        """The boundaries in use, one dict per rfm source (see ``engine._rfm``)."""
        with self._lock:
            return self._rfm.report(list(self._rfm_nodes()))

    def _apply(self, frame: F.Frame) -> int:
        """The frame's steps on the one core, phase by phase, and its effects here."""
        n = 0
        for phase in F.frame_phases(frame, self._applied_now, 1, lambda cols: {0: cols}, lambda u: 0):
            if phase[0] is not None:
                batch = apply_step(self._core, *phase[0])
                self._log.append(batch)
                self._goals.on_batch(batch)
                n += len(batch)
        self._applied_now = max(self._applied_now, frame.now_ms)
        if frame.op in (F.SEGMENT_CREATE, F.SEGMENT_REPLACE):
            self._registry.put(frame.payload)
        elif frame.op == F.SEGMENT_DELETE and frame.payload in self._registry:
            self._registry.remove(frame.payload)
        elif frame.op == F.MODEL_DEPLOY:
            self._deployed[frame.payload[0]] = int(frame.payload[1])
        elif frame.op == F.MODEL_DROP:
            self._deployed.pop(frame.payload, None)
        elif frame.op in (F.GOAL_CREATE, F.GOAL_DELETE):
            self._goals.apply_frame(frame)
        elif frame.op == F.RFM:
            self._rfm.apply(frame.payload, frame.now_ms)
        if frame.op == F.RESCORE or frame.rescore is not None:
            self._last_rescore_ms = frame.now_ms
        _history_after_frame(self._history, frame, self._core, self._registry)
        return n

    def _rescore_due(self, frame: F.Frame):
        """Everyone is re-scored right after an operation that leaves models deployed and the
        clock an interval past the last re-scoring (the gateway's rule too)."""
        models = set(self._deployed)
        if frame.op == F.MODEL_DEPLOY:
            models.add(frame.payload[0])
        elif frame.op == F.MODEL_DROP:
            models.discard(frame.payload)
        if (self.rescore_interval_ms and models
                and frame.now_ms - self._last_rescore_ms >= self.rescore_interval_ms):
            return (0, 1)
        return None

    def _maybe_snapshot(self) -> None:
        if (self._snapshot_interval_ms
                and (time.monotonic() - self._last_snapshot) * 1000 >= self._snapshot_interval_ms):
            self.snapshot()

    def snapshot(self) -> dict:
        """With a data dir: write a snapshot now and cut the log -> what was written."""
        from .durability import embedded

        with self._lock:
            if self._store is None:
                raise ConfigError("snapshot needs an engine with a data_dir")
            self._last_snapshot = time.monotonic()
            return embedded.snapshot(self)

    # ------------------------------------------------------------------ ingestion
    def ingest(self, events) -> IngestResult:
        """Apply a batch of event dicts; bad events are rejected one by one."""
        with self._lock:
            before = self._clock_for_op()
            cols, rejections = events_from_dicts(list(events), now_ms=before,
                                                 retention_ms=self.retention_ms, clock=self.clock,
                                                 limits=self.limits, names=self._names)
            return self._ingested(F.EVENTS, cols, rejections, before)

    def ingest_columns(self, user_id, type, timestamp_ms, value=None, properties=None) -> IngestResult:
        """The columnar fast path: equal-length arrays or sequences, no object per event."""
        with self._lock:
            before = self._clock_for_op()
            cols, rejections = prepare_events(user_id, type, timestamp_ms, value, properties,
                                              now_ms=before, retention_ms=self.retention_ms, clock=self.clock,
                                              limits=self.limits, names=self._names)
            return self._ingested(F.EVENTS, cols, rejections, before)

    def _ingested(self, op: str, cols, rejections, before: int) -> IngestResult:
        now = self._clock.after(cols.max_timestamp(None), before)
        reply = F.Reply(len(cols), len(rejections), [(r.index, r.reason) for r in rejections], now)
        self._run(F.Frame(op, now, cols, reply=reply))
        return IngestResult(len(cols), len(rejections), rejections, now)

    def set_traits(self, user_id: str, traits: dict, timestamp_ms: int | None = None) -> IngestResult:
        """Set (or, with None, unset) traits of one user."""
        return self.set_traits_many([(user_id, traits, timestamp_ms)])

    def set_traits_many(self, updates) -> IngestResult:
        """Several trait updates ``(user_id, traits, timestamp_ms)`` as one batch."""
        from ._goals import check_user_traits

        updates = list(updates)
        check_user_traits(updates)
        with self._lock:
            before = self._clock_for_op()
            cols, rejections = prepare_traits(updates, now_ms=before,
                                              retention_ms=self.retention_ms, clock=self.clock,
                                              limits=self.limits, names=self._names)
            return self._ingested(F.TRAITS, cols, rejections, before)

    # ------------------------------------------------------------------ segments
    def _info(self, name: str) -> SegmentInfo:
        d = self._registry.get(name)
        return SegmentInfo(d.name, d.expression, d.description, self._core.segment_size(name),
                           d.created_ms, d.version)

    def create_segment(self, name: str, expression: str, description: str = "") -> SegmentInfo:
        """Compile, backfill over every known user (ENTER deltas) and start maintaining.

        Raises ExpressionError (``line:col: message``) or SegmentExists.
        """
        with self._lock:
            now = self._clock_for_op()
            defn = self._registry.validate(name, expression, description, now_ms=now)
            self._rfm_for(defn.ast, now)
            self._run(F.Frame(F.SEGMENT_CREATE, now, defn))
            return self._info(name)

    def replace_segment(self, name: str, expression: str, description: str | None = None) -> SegmentInfo:
        """New expression for an existing segment; deltas for the difference."""
        with self._lock:
            now = self._clock_for_op()
            old = self._registry.get(name)
            self._goals.check_segment_change(name, "replace")
            defn = self._registry.validate(name, expression,
                                           old.description if description is None else description,
                                           replacing=True, now_ms=now)
            self._rfm_for(defn.ast, now)
            self._run(F.Frame(F.SEGMENT_REPLACE, now, defn))
            return self._info(name)

    def delete_segment(self, name: str) -> SegmentInfo:
        """Stop maintaining a segment (EXIT deltas). Raises UnknownSegment."""
        with self._lock:
            now = self._clock_for_op()
            self._goals.check_segment_change(name, "delete")
            self._registry.check_delete(name)
            info = self._info(name)
            self._run(F.Frame(F.SEGMENT_DELETE, now, name))
            return info

    def get_segment(self, name: str) -> SegmentInfo:
        with self._lock:
            return self._info(name)

    def list_segments(self) -> list[SegmentInfo]:
        with self._lock:
            return [self._info(n) for n in self._registry.names()]

    def preview_segment(self, expression: str, sample: int = 10) -> tuple[int, list[str]]:
        """(size, sample of members) of an expression, nothing saved."""
        with self._lock:
            now = self._clock_for_op()
            defn = self._registry.validate_expression(expression, now_ms=now)
            self._rfm_for(defn.ast, now)
            return self._core.preview(defn, now, sample)

    def members(self, name: str) -> set[str]:
        with self._lock:
            self._registry.get(name)
            return set(self._core.members(name))

    def segment_history(self, name: str):
        """The segment's size sampled every ``history_interval`` of the engine clock
        (``SegmentHistory``: ``samples`` of ``(time_ms, size)``). Raises UnknownSegment."""
        with self._lock:
            self._registry.get(name)
            return self._history.view(name)

    # ------------------------------------------------------------------ users
    def user_segments(self, user_id: str) -> list[str]:
        with self._lock:
            return self._core.user_segments(user_id)

    def get_user(self, user_id: str) -> dict:
        with self._lock:
            return self._core.user_view(user_id)

    def delete_user(self, user_id: str) -> dict:
        """Forget the user's events and traits everywhere (EXIT deltas)."""
        with self._lock:
            view = self._core.user_view(user_id)
            self._run(F.Frame(F.USER_DELETE, self._clock_for_op(), user_id))
            return view

    # ------------------------------------------------------------------ models
    def train_model(self, spec=None, *, progress=None, **fields):
        """Train a model on the engine's own history (point in time: features as of
        ``now - horizon``, label from the horizon), deploy it and return its ModelReport.
        Training a name again makes a new version; segments using it move (MODEL_UPDATED).

        ``spec`` is a ``scoring.ModelSpec``, or give its fields as keywords (``horizon`` and
        ``lookback`` also take durations such as ``"7d"``)."""
        from scoring.registry import ModelVersion
        from scoring.training import train

        spec = model_spec(spec, fields)
        with self._lock:
            now = self._clock_for_op()
            plan = plan_training(spec, self.retention_ms, now, self._core.schema_summary(), self._registry)
            if progress:
                progress("features")
            data = merge_training_data([self._core.training_data(plan.features, plan.spec, plan.cutoff_ms, now)])
            version = self._models.next_version(plan.spec.name)
        check_training_rows(data, plan)
        # outside the lock: other threads go on ingesting and reading while the model fits
        dep, report = train(data["X"], data["y"], data["hashes"], plan.spec, version=version,
                            features=plan.features, now_ms=now, cutoff_ms=plan.cutoff_ms, progress=progress)
        if progress:
            progress("deploy")
        return self._deploy(ModelVersion(plan.spec.name, version, plan.spec, dep, report))

    def deploy_model(self, name: str, onnx: bytes, features) -> object:
        """Deploy a user's own ONNX model with its feature expressions (checked against the
        model's input); ``score`` and ``bucket`` work with it, ``likely`` needs a validation
        curve, which only trained models have."""
        from scoring.registry import ModelVersion
        from scoring.training import user_model

        with self._lock:
            features = validate_features(features, self.retention_ms)
            version = self._models.next_version(name)
            dep, report = user_model(name, version, onnx, features, self._clock_for_op())
            return self._deploy(ModelVersion(name, version, None, dep, report))

    def _deploy(self, mv):
        with self._lock:
            self._models.add(mv)
            self._deploy_version(mv)
            return mv.report

    def _deploy_version(self, mv) -> None:
        frame = F.Frame(F.MODEL_DEPLOY, self._clock_for_op(), (mv.name, int(mv.version), True))
        frame.deployment = mv.deployment
        self._run(frame)

    def _models_to_deploy(self) -> list:
        reg = self._models._registry       # None: no model was ever made (scoring not imported)
        if reg is None:
            return []
        return [mv for mv in (reg.latest(n) for n in reg.names())
                if self._deployed.get(mv.name) != mv.version]

    def get_model(self, name: str):
        with self._lock:
            return self._models.report(name)

    def list_models(self) -> list:
        with self._lock:
            return self._models.reports()

    def delete_model(self, name: str):
        """Forget a model and its versions. Raises ModelInUse while a segment uses it."""
        with self._lock:
            self._models.check_delete(name, self._registry)
            self._run(F.Frame(F.MODEL_DROP, self._clock_for_op(), name))
            return self._models.remove(name)

    def rescore(self) -> int:
        """Score every user again now (also done every ``rescore_interval``); returns deltas."""
        with self._lock:
            return self._run(F.Frame(F.RESCORE, self._clock_for_op(), (0, 1)))

    # ------------------------------------------------------------------ goals
    def create_goal(self, name: str, segment: str, target: str, end_ms: int,
                    control_fraction: float = 0.1, minimize: bool = False):
        """A goal over the members of ``segment`` now: forecast of ``target`` by ``end_ms``,
        control split, micro-segments ``goal:NAME:most|moderately|least|control``
        (engine._goals, docs/goals.md) -> GoalInfo."""
        from . import _goals

        return _goals.create_goal(self, name, segment, target, end_ms, control_fraction, minimize)

    def get_goal(self, name: str):
        from . import _goals

        return _goals.get_goal(self, name)

    def list_goals(self) -> list:
        from . import _goals

        return _goals.list_goals(self)

    def delete_goal(self, name: str):
        """Forget a goal: its segments and traits go (its model stays) -> its last GoalInfo."""
        from . import _goals

        return _goals.delete_goal(self, name)

    # ------------------------------------------------------------------ output
    def deltas(self, after_sequence: int = 0, segments=None) -> list[Delta]:
        """Retained deltas with ``sequence > after_sequence``. Raises SequenceTooOld."""
        return self._log.read(after_sequence, set(segments) if segments else None)

    @property
    def last_sequence(self) -> int:
        return self._log.last_sequence

    def stats(self) -> dict:
        with self._lock:
            s = self._core.stats()
            s.update(now_ms=self.now_ms, clock=self.clock, last_sequence=self._log.last_sequence)
            return s

    def memory(self) -> dict:
        """Bytes by part plus per-user and per-event figures."""
        with self._lock:
            m = self._core.memory()
            users = max(self._core.stats()["users"], 1)
            events = self._core.retained_events()
            m.update(users=users, retained_events=events)
            return m


def model_spec(spec, fields: dict):
    """A ModelSpec from a spec and/or keyword fields (``horizon``/``lookback`` as durations)."""
    from dataclasses import replace

    from scoring.spec import ModelSpec

    fields = dict(fields)
    for short in ("horizon", "lookback"):
        if short in fields:
            fields[short + "_ms"] = parse_duration_ms(fields.pop(short), short)
    if "features" in fields:
        fields["features"] = tuple(fields["features"] or ())
    if spec is None:
        return ModelSpec(**fields)
    return replace(spec, **fields) if fields else spec



def _name_budget(limits):
    from .limits import NameBudget

    return NameBudget(limits)
