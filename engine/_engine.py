"""The embedded engine: one in-process shard, a clock and a delta log. No server, no Ray."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ._batch import Rejection, events_from_dicts, prepare_events, prepare_traits
from ._deltas import Delta, DeltaBatch, DeltaLog
from ._models import (ModelCatalog, check_training_rows, merge_training_data, plan_training,
                      validate_features)
from ._segments import SegmentRegistry
from ._shard import ShardCore
from ._units import parse_duration_ms
from .config import parse_interval_ms
from .errors import ClockError, ConfigError

CLOCKS = ("event", "wall")


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
    return time.time_ns() // 1_000_000


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
                 rescore_interval: "str | int" = "1h"):
        if clock not in CLOCKS:
            raise ConfigError(f"clock must be 'event' or 'wall', not {clock!r}")
        self.clock = clock
        self.retention_ms = parse_duration_ms(retention, "retention")
        # 0 turns the scheduled re-scoring off (scores still follow every event)
        self.rescore_interval_ms = parse_interval_ms(rescore_interval, "rescore_interval")
        self._core = ShardCore(self.retention_ms, max_events_per_type)
        self._models = ModelCatalog(data_dir)
        self._registry = SegmentRegistry(self.retention_ms, models=self._models)
        self._log = DeltaLog(delta_log_capacity)
        self._now = 0 if clock == "event" else wall_now_ms()
        self._last_rescore_ms = self._now
        for dep in self._models.deployments():     # versions kept in the data dir
            self._core.deploy_model(dep, self._now)
        self._lock = threading.RLock()
        self._ticker = None
        if tick_interval_ms is not None:
            if clock != "wall":
                raise ConfigError("tick_interval_ms needs the wall clock")
            self._start_ticker(tick_interval_ms)

    # ------------------------------------------------------------------ clock
    @property
    def now_ms(self) -> int:
        if self.clock == "wall":
            return max(self._now, wall_now_ms())
        return self._now

    def _clock_for_op(self) -> int:
        if self.clock == "wall":
            self._now = max(self._now, wall_now_ms())
        return self._now

    def advance_clock(self, now_ms: int) -> int:
        """Event clock only: move ``now`` forward (never back) and apply time-driven changes."""
        if self.clock != "event":
            raise ClockError("advance_clock needs the event clock; this engine runs on the wall clock")
        with self._lock:
            self._now = max(self._now, int(now_ms))
            self._emit(self._core.advance(self._now))
            return self._now

    def tick(self) -> int:
        """Apply the time-driven changes due now (wall clock); returns how many deltas."""
        with self._lock:
            now = self._clock_for_op()
            return self._emit(self._core.advance(now))

    def _start_ticker(self, interval_ms: int) -> None:
        stop = threading.Event()

        def run():
            while not stop.wait(interval_ms / 1000.0):
                self.tick()

        t = threading.Thread(target=run, name="rtseg-ticker", daemon=True)
        t.start()
        self._ticker = (t, stop)

    def close(self) -> None:
        if self._ticker:
            self._ticker[1].set()
            self._ticker[0].join()
            self._ticker = None

    def _emit(self, batch: DeltaBatch) -> int:
        self._log.append(batch)
        n = len(batch)
        if (self.rescore_interval_ms and self._core.models
                and self._now - self._last_rescore_ms >= self.rescore_interval_ms):
            self._last_rescore_ms = self._now
            n += self._emit(self._core.rescore(self._now))
        return n

    # ------------------------------------------------------------------ ingestion
    def ingest(self, events) -> IngestResult:
        """Apply a batch of event dicts; bad events are rejected one by one."""
        with self._lock:
            before = self._clock_for_op()
            cols, rejections = events_from_dicts(list(events), now_ms=before,
                                                 retention_ms=self.retention_ms, clock=self.clock)
            return self._apply(cols, rejections, before)

    def ingest_columns(self, user_id, type, timestamp_ms, value=None, properties=None) -> IngestResult:
        """The columnar fast path: equal-length arrays or sequences, no object per event."""
        with self._lock:
            before = self._clock_for_op()
            cols, rejections = prepare_events(user_id, type, timestamp_ms, value, properties,
                                              now_ms=before, retention_ms=self.retention_ms, clock=self.clock)
            return self._apply(cols, rejections, before)

    def _apply(self, cols, rejections, before) -> IngestResult:
        if self.clock == "event" and len(cols):
            self._now = max(before, cols.max_timestamp())
        self._emit(self._core.apply_events(cols, self._now))
        return IngestResult(len(cols), len(rejections), rejections, self._now)

    def set_traits(self, user_id: str, traits: dict, timestamp_ms: int | None = None) -> IngestResult:
        """Set (or, with None, unset) traits of one user."""
        return self.set_traits_many([(user_id, traits, timestamp_ms)])

    def set_traits_many(self, updates) -> IngestResult:
        """Several trait updates ``(user_id, traits, timestamp_ms)`` as one batch."""
        with self._lock:
            before = self._clock_for_op()
            cols, rejections = prepare_traits(list(updates), now_ms=before,
                                              retention_ms=self.retention_ms, clock=self.clock)
            if self.clock == "event" and len(cols):
                self._now = max(before, cols.max_timestamp())
            self._emit(self._core.apply_traits(cols, self._now))
            return IngestResult(len(cols), len(rejections), rejections, self._now)

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
            self._emit(self._core.create_segment(defn, now))
            self._registry.put(defn)
            return self._info(name)

    def replace_segment(self, name: str, expression: str, description: str | None = None) -> SegmentInfo:
        """New expression for an existing segment; deltas for the difference."""
        with self._lock:
            now = self._clock_for_op()
            old = self._registry.get(name)
            defn = self._registry.validate(name, expression,
                                           old.description if description is None else description,
                                           replacing=True, now_ms=now)
            self._emit(self._core.replace_segment(defn, now))
            self._registry.put(defn)
            return self._info(name)

    def delete_segment(self, name: str) -> SegmentInfo:
        """Stop maintaining a segment (EXIT deltas). Raises UnknownSegment."""
        with self._lock:
            now = self._clock_for_op()
            self._registry.check_delete(name)
            info = self._info(name)
            self._emit(self._core.delete_segment(name, now))
            self._registry.remove(name)
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
            return self._core.preview(defn, now, sample)

    def members(self, name: str) -> set[str]:
        with self._lock:
            self._registry.get(name)
            return set(self._core.members(name))

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
            self._emit(self._core.delete_user(user_id, self._clock_for_op()))
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
            self._emit(self._core.deploy_model(mv.deployment, self._clock_for_op()))
            return mv.report

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
            self._core.drop_model(name)
            return self._models.remove(name)

    def rescore(self) -> int:
        """Score every user again now (also done every ``rescore_interval``); returns deltas."""
        with self._lock:
            now = self._clock_for_op()
            self._last_rescore_ms = now
            return self._emit(self._core.rescore(now))

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

