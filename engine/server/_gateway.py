"""The gateway: one served engine in front of its shard actors.

It composes parts that each have a module of their own:

* ``engine._clock.Clock``: ``now`` and the future bound;
* ``_rounds.Rounds``: the one ordered queue, its micro-batch rounds and barriers;
* ``_apply.FrameApplier``: frames (``engine.durability.frames``) logged, turned into shard steps
  and applied; the only path by which state changes, live or in recovery;
* ``_routing.Router``: hash slots and which shard owns them;
* ``_shards.ShardSet``: the typed shard clients (Ray actors or in-process hosts);
* ``_sequencer.Sequencer`` and ``_subscriptions.Subscriptions``: the delta log and its readers;
* ``_scaling``: slot moves; ``_recovery``: snapshots and restart; ``_models.ModelService``.

This module holds the public operations (validation of each into a frame) and the gateway's
own state (segment registry, batch ids, metrics).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import numpy as np

from engine._clock import Clock
from engine._engine import IngestResult
from engine.config import ServerConfig
from engine._history import GatewaySampler, SizeHistory
from engine.durability import frames as F
from engine.errors import ClockError
from engine.server._apply import FrameApplier
from engine.server._batch_ids import BatchIds
from engine.server._metrics import LatencyWindow, RateMeter
from engine.server._routing import N_SLOTS, Router, plan_moves, slot_of  # noqa: F401 - re-exported
from engine.server._rounds import CLOCK, EVENTS, TRAITS, Rounds
from engine.server._sequencer import Sequencer
from engine.server._shards import ShardSet
from engine.server._subscriptions import Subscriptions

log = logging.getLogger("rtseg.gateway")

PREVIEW_SAMPLE = 10
LAG_PROBE_S = 0.01           # the event-loop lag probe's period (Gateway.loop_lag)


class Gateway:
    """Clock, routing, micro-batching, delta sequencing, durability and scaling over shards."""

    def __init__(self, config: ServerConfig, actor_factory: Callable[[int, dict], Any] | None = None):
        from engine._segments import SegmentRegistry
        from engine.server._models import ModelService
        from engine.server._rfm import RfmService

        self.config = config
        self.limits = config.limits()
        self.clock = Clock(config.clock, self.limits)
        self.retention_ms = config.retention_ms
        self.max_events_per_type = config.max_events_per_type
        self._actor_factory = actor_factory
        self.shards = ShardSet()
        self.shards.revive = self._revive
        self.shard_info: list[dict] = []
        self.router = Router(1)
        self.sequencer = Sequencer(config.delta_log_size)
        self.subscriptions = Subscriptions(self.sequencer, self.limits.max_subscribers)
        self.rounds = Rounds(self, self.limits.max_queue_ops)
        self.batches = BatchIds(config.batch_id_window)
        self.store = None                        # DurableStore when serving with a data dir
        self.models = ModelService(self)         # the catalog: versions in DATA_DIR/models
        from engine.server._goals import GoalService
        self.goals = GoalService(self)           # goals (engine._goals): definitions, trackers
        self.rfm = RfmService(self, config.rfm_interval_ms)
        from engine.server._destinations import DestinationService
        self.destinations = DestinationService(self)   # webhooks; DATA_DIR/destinations.json
        self.history = SizeHistory(config.history_interval_ms, config.history_retention_ms)
        self.history_sampler = GatewaySampler(self)
        self.registry = SegmentRegistry(retention_ms=self.retention_ms,
                                        models=self.models.catalog, limits=self.limits)
        self.names = _name_budget(self.limits)
        self.applier = FrameApplier(self)
        self._next_due_ms: list[int] = []        # per shard, from its last round
        self._tasks: list[asyncio.Task] = []
        self._closed = False
        self._scale_lock = asyncio.Lock()
        self.recovering = False
        self.ready = False                       # start() done: calls are served
        self._recover_lock = asyncio.Lock()
        self._snapshot_lock = asyncio.Lock()
        self._recovered: dict[int, Any] = {}      # id(round) -> a rebuilt shard's result
        self.health_hook: Callable[[bool], Any] | None = None
        self.started_ns = time.monotonic_ns()
        self.recovery: dict = {}
        # metrics
        self.events_accepted = 0
        self.events_rejected = 0
        self.rate = RateMeter()
        from engine.server._stats_cache import ShardStatsCache

        self.shard_stats = ShardStatsCache(lambda: self.shards.each("read", "host_stats"),
                                           lambda: bool(self.rounds.pending_ops() or self.applier.in_flight))
        self.ingest_latency = LatencyWindow()
        self.round_latency = LatencyWindow()     # a round: sent to the shards -> published
        self.delta_latency = LatencyWindow()     # an ingest op received -> its deltas published
        self.loop_lag = LatencyWindow()          # the event loop's lateness (_lag_loop)

    # ------------------------------------------------------------------ properties

    @property
    def now_ms(self) -> int:
        return self.clock.now_ms

    @property
    def log(self):
        return self.sequencer.log

    @property
    def is_ray(self) -> bool:
        return self._actor_factory is None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, shards: int) -> None:
        # Compile the kernels here first: the JIT writes its cache once, and the shard actors
        # (other processes) then load it instead of each compiling everything again.
        from engine.server import _recovery
        from engine.server._actor import ShardHost

        await asyncio.to_thread(ShardHost(-1, self.core_kwargs()).warm_up)
        if self.config.data_dir:
            from engine.durability.store import DurableStore

            self.store = DurableStore(self.config.data_dir, fsync=self.config.fsync,
                                      fsync_interval_ms=self.config.fsync_interval_ms)
        self._tasks.append(asyncio.ensure_future(self.rounds.loop()))
        restored = await _recovery.recover(self, shards)
        if restored:
            self.recovery["orphan_goals_removed"] = await self.goals.repair()
        self._tasks.append(asyncio.ensure_future(self._tick_loop()))
        self._tasks.append(asyncio.ensure_future(self._lag_loop()))
        await self.models.start()
        self._tasks.append(asyncio.ensure_future(self.models.schedule_loop()))
        if self.store is not None:
            self._tasks.append(asyncio.ensure_future(_recovery.snapshot_loop(self)))
        if restored and len(self.shards) != shards:
            await self.scale(shards)
        await self.destinations.start()      # after recovery: the delta log is back
        self.ready = True

    def check_ready(self) -> None:
        from engine.errors import Unavailable

        if not self.ready:
            raise Unavailable("the server is starting (recovering its data dir); retry shortly")

    async def stop(self) -> None:
        from engine.server import _recovery

        if self._closed:
            return
        self.models.stop()
        await self.destinations.stop()       # saves the cursors
        for t in self._tasks[1:]:
            t.cancel()
        for t in self._tasks[1:]:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        if (self.store is not None and self.shards.clients and not self.recovering
                and self.config.shutdown_snapshot_s > 0):
            try:   # a graceful shutdown leaves a snapshot: the next start replays nothing
                await asyncio.wait_for(_recovery.snapshot(self), self.config.shutdown_snapshot_s)
            except Exception as exc:  # noqa: BLE001 - the log still has everything
                log.warning("snapshot at shutdown failed (%s); the log still holds every change", exc)
        self._closed = True
        await self.rounds.close()
        if self._tasks:     # none when start() failed before the rounds loop began
            self._tasks[0].cancel()
            try:
                await self._tasks[0]
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        await self.sequencer.close()
        self.shards.close()
        if self.store is not None:
            self.store.close()

    def core_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``ShardCore(...)`` for every shard of this gateway."""
        return {"retention_ms": self.retention_ms, "max_events_per_type": self.max_events_per_type}

    async def new_shard(self, index: int):
        """A new shard client (Ray actor or in-process host), started and warmed up."""
        from engine.server._shards import ChannelUnavailable, RayShard

        if self._actor_factory is not None:
            client = self._actor_factory(index, self.core_kwargs())
        else:
            import ray

            from engine.server._actor import shard_actor_class

            opts: dict[str, Any] = {}
            if sum(1 for n in ray.nodes() if n.get("Alive")) > 1:
                opts["scheduling_strategy"] = "SPREAD"   # shards on every node of a cluster
            client = RayShard(index, shard_actor_class().options(**opts).remote(index, self.core_kwargs()))
        info = await client.ready()
        if getattr(client, "is_ray", False) and not self.config.rounds_over_ray:
            try:
                await client.open_channel()
            except ChannelUnavailable as exc:
                log.warning("%s: rounds and reads of this shard go as Ray calls (slower); "
                            "allow TCP from the gateway to the nodes' ephemeral ports, or serve "
                            "with --rounds-over-ray to say so", exc)
        return client, info

    def set_health(self, serving: bool) -> None:
        """NOT_SERVING while a shard is rebuilt (the app's health service listens)."""
        if self.health_hook is not None:
            self.health_hook(serving)

    async def _revive(self, i: int, dead) -> None:
        from engine.server import _recovery

        await _recovery.revive(self, i, dead)

    async def shard_lost(self, i: int, pending):
        from engine.server import _recovery

        return await _recovery.recover_shard(self, i, pending)

    def note_shard(self, i: int, next_due: int, users: int) -> None:
        self.shard_stats.changed()
        self.models.note_users(users)
        if i < len(self._next_due_ms):
            self._next_due_ms[i] = next_due

    def timers_unknown(self) -> None:
        self.shard_stats.forget()       # after a barrier: shards may be new or changed
        self._next_due_ms = [-1] * len(self.shards)

    def segment_rank(self) -> dict[str, int]:
        from engine._segments import topological_order

        return self.registry.derived("rank", lambda defs: {
            d.name: i for i, d in enumerate(topological_order(defs))})

    # ------------------------------------------------------------------ operations -> frames

    def prepare(self, op) -> F.Frame | None:
        """Inside a round: one queued operation -> its frame, the clock moved past it. None
        when a batch id was seen before (the operation is answered with the first reply)."""
        from engine._batch import Rejection

        if op.batch_id:
            known = self.batches.lookup(op.batch_id)
            if known is not None:
                _answer_with(op, known, Rejection)
                return None
            self.batches.begin(op.batch_id, op.future)
        before = self.clock.for_op()
        if op.kind == CLOCK:
            now = before if op.payload is None else max(before, int(op.payload))
            frame = F.Frame(F.CLOCK, now)
        else:
            from engine.server import _core_api as core_api

            validate = core_api.validate_events if op.kind == EVENTS else core_api.validate_traits
            cols, rejections, max_ts = validate(op.payload, before, self.retention_ms,
                                                self.clock.kind, self.limits, self.names)
            now = self.clock.after(max_ts, before)
            reply = F.Reply(len(cols), len(rejections),
                            [(r.index, r.reason) for r in rejections], now)
            frame = F.Frame(F.EVENTS if op.kind == EVENTS else F.TRAITS, now, cols,
                            batch_id=op.batch_id, reply=reply)
        self.clock.move(now)
        frame.rescore = self.models.next_rescore_part(now)
        return frame

    def result(self, op, frame: F.Frame) -> IngestResult:
        from engine._batch import Rejection

        if frame.op == F.CLOCK:
            return IngestResult(0, 0, [], frame.now_ms)
        r = frame.reply
        res = IngestResult(r.accepted, r.rejected, [Rejection(i, s) for i, s in r.rejections], r.now_ms)
        if op.kind == EVENTS:
            self.events_accepted += res.accepted
            self.events_rejected += res.rejected
            self.rate.add(res.accepted)
            self.ingest_latency.record_since(op.t0_ns)
        return res

    def frame(self, op: str, payload: Any = None, now: int | None = None) -> F.Frame:
        """Inside a barrier: a frame at the clock as it is now (moving a wall clock)."""
        now = self.clock.for_op() if now is None else now
        self.clock.move(now)
        return F.Frame(op, now, payload)

    async def apply(self, *frames: F.Frame) -> int:
        """Inside a barrier: log and apply frames -> deltas appended."""
        return sum(await self.applier.apply(list(frames)))

    # ------------------------------------------------------------------ public operations

    async def ingest(self, columns: dict, batch_id: str = "") -> IngestResult:
        """Apply one batch of events (plain columns, as ``Engine.ingest_columns`` takes)."""
        return await self.rounds.submit(EVENTS, columns, n=len(columns["timestamp_ms"]),
                                        batch_id=batch_id)

    async def set_traits(self, updates: list[tuple[str, dict, int | None]],
                         batch_id: str = "") -> IngestResult:
        from engine._goals import check_user_traits

        check_user_traits(updates)               # goal:* traits are the goals' own
        return await self.rounds.submit(TRAITS, updates, n=len(updates), batch_id=batch_id)

    async def advance_clock(self, now_ms: int, allow_far_future: bool = False) -> int:
        target = self.clock.check_advance(now_ms, allow_far_future)
        res = await self.rounds.submit(CLOCK, target)
        return res.now_ms

    async def create_segment(self, name: str, expression: str, description: str = "") -> dict:
        return await self._segment_change(F.SEGMENT_CREATE, name, expression, description)

    async def replace_segment(self, name: str, expression: str, description: str = "") -> dict:
        return await self._segment_change(F.SEGMENT_REPLACE, name, expression, description)

    async def delete_segment(self, name: str) -> dict:
        return await self._segment_change(F.SEGMENT_DELETE, name)

    async def _segment_change(self, op: str, name: str, expression: str = "",
                              description: str = "") -> dict:
        """Create, replace or delete: validated by the registry, applied as one frame."""
        async def run():
            now = self.clock.for_op()
            if op != F.SEGMENT_CREATE:
                self.goals.book.check_segment_change(name, "delete" if op == F.SEGMENT_DELETE else "replace")
            if op == F.SEGMENT_DELETE:
                defn = self.registry.check_delete(name)
                view = await self._segment_view(defn)
                payload: Any = name
            else:
                defn = self.registry.validate(name, expression, description,
                                              replacing=op == F.SEGMENT_REPLACE, now_ms=now)
                await self.rfm.ensure(defn.ast, now)
                payload = defn
            frame = self.frame(op, payload, now)
            frame.rescore = self.models.next_rescore_part(now)
            await self.apply(frame)
            return view if op == F.SEGMENT_DELETE else await self._segment_view(defn)
        return await self.rounds.barrier(run)

    async def get_segment(self, name: str) -> dict:
        defn = self.registry.get(name)
        size = self.sequencer.sizes.get(name)
        if size is not None:                 # as of the last published round: no waiting
            return self._def_dict(defn, size)

        async def run():
            return self._def_dict(self.registry.get(name), (await self._count_sizes())[name])
        return await self.rounds.barrier(run)

    async def list_segments(self) -> list[dict]:
        if self.sequencer.sizes.known:
            return [self._def_dict(d, self.sequencer.sizes.get(d.name)) for d in self.registry.all()]

        async def run():
            sizes = await self._count_sizes()
            return [self._def_dict(d, sizes[d.name]) for d in self.registry.all()]
        return await self.rounds.barrier(run)

    async def _count_sizes(self) -> dict[str, int]:
        """Inside a barrier: every segment's size from the shards, which the published
        deltas then keep up to date (``_sizes.LiveSizes``)."""
        sizes = await self._segment_sizes(self.registry.names())
        self.sequencer.sizes.counted(sizes)
        return sizes

    async def preview_segment(self, name: str, expression: str,
                              sample: int = PREVIEW_SAMPLE) -> tuple[int, list[str]]:
        async def run():
            pname = name or "__preview__"
            now = self.clock.for_op()
            defn = self.registry.validate(pname, expression, replacing=pname in self.registry,
                                          now_ms=now)
            await self.rfm.ensure(defn.ast, now)
            await self._move_clock(now)
            parts = await self.shards.each("preview", defn, now, sample)
            size = sum(int(p[0]) for p in parts)
            ids = sorted(u for p in parts for u in p[1])[:sample]
            return size, ids
        return await self.rounds.barrier(run)

    async def segment_history(self, name: str):
        """The segment's sampled sizes (``engine._history.SegmentHistory``)."""
        async def run():
            self.registry.get(name)
            return self.history.view(name)
        return await self.rounds.barrier(run)

    async def members(self, name: str) -> list[list[str]]:
        """Members of a segment, one (sorted) list per shard."""
        async def run():
            self.registry.get(name)
            return [sorted(p) for p in await self.shards.each("members", name)]
        return await self.rounds.barrier(run)

    async def user_view(self, user_id: str) -> dict:
        """The user's shard answers between two steps of its round (``_gate.ReadGate``), not
        behind the queue: after an ingest's reply, the view holds that ingest. While slots
        move or the engine recovers, the user's rows may be in transit: then it waits its
        turn like any barrier."""
        if self.ready and not self.recovering and not self._scale_lock.locked():
            return _normalise_view(await self.shards.call(self.router.shard_of_user(user_id),
                                                          "read", "user_view", user_id))

        async def run():
            return _normalise_view(await self.shards.call(self.router.shard_of_user(user_id),
                                                          "user_view", user_id))
        return await self.rounds.barrier(run)

    async def delete_user(self, user_id: str) -> dict:
        """Forget a user everywhere: its state now, and (by the logged tombstone) in every
        replay; the next snapshot no longer holds it."""
        async def run():
            view = _normalise_view(await self.shards.call(self.router.shard_of_user(user_id),
                                                          "user_view", user_id))
            frame = self.frame(F.USER_DELETE, user_id)
            frame.rescore = self.models.next_rescore_part(frame.now_ms)
            await self.apply(frame)
            return view
        return await self.rounds.barrier(run)

    async def _move_clock(self, now: int) -> None:
        """Inside a barrier: bring every shard to ``now`` (wall clock) before a read."""
        if now > self.applier.last_now:
            await self.apply(self.frame(F.CLOCK, None, now))

    async def stats(self, gateway_only: bool = False) -> dict:
        shards = list(self.shards)
        per = [] if gateway_only else (await self.shard_stats.get())[0]
        slots = np.bincount(self.router.slot_map, minlength=len(shards))
        shard_stats = []
        for i, st in enumerate(per):
            st = dict(st)
            st["shard"] = i
            st["slots"] = int(slots[i]) if i < len(slots) else 0
            st["node"] = self.shard_info[i].get("node", "") if i < len(self.shard_info) else ""
            shard_stats.append(st)
        out = {
            "events": sum(int(s.get("events", 0)) for s in shard_stats),
            "users": sum(int(s.get("users", 0)) for s in shard_stats),
            "segments": len(self.registry.names()),
            "shards": len(shards),
            "shard_stats": shard_stats,
            "now_ms": self.clock.current(),
            "clock": self.clock.kind,
            "events_accepted": self.events_accepted,
            "events_rejected": self.events_rejected,
            "ingest_events_per_s": self.rate.per_second(),
            "ingest_latency": self.ingest_latency.summary(),
            "round_latency": self.round_latency.summary(),
            "loop_lag": self.loop_lag.summary(),
            "first_sequence": self.log.first_retained if self.log.last_sequence else 0,
            "last_sequence": self.log.last_sequence,
            "subscribers": self.subscriptions.count,
            "uptime_ms": (time.monotonic_ns() - self.started_ns) // 1_000_000,
            "retention_ms": self.retention_ms,
            "queue_ops": self.rounds.pending_ops(),
            "recovery": dict(self.recovery),
        }
        if self.store is not None:
            out["log"] = dict(self.store.wal.stats(), last_lsn=self.store.last_lsn,
                              fsync=self.store.fsync)
        return out

    # ------------------------------------------------------------------ subscribe

    def open_subscription(self, segments: list[str], after_sequence: int,
                          from_oldest: bool = False, retained_only: bool = False):
        return self.subscriptions.open(segments, after_sequence, from_oldest, retained_only)

    # ------------------------------------------------------------------ reset (tests)

    async def reset(self, clock: str | None = None, retention_ms: int | None = None,
                    max_events_per_type: int | None = None) -> int:
        """Forget every user, segment, model and delta; keep the shard actors. -> the new
        now_ms. With a data dir, a snapshot of the empty engine replaces the old state."""
        from engine._segments import SegmentRegistry
        from engine.errors import EngineError
        from engine.server import _recovery

        if not self.config.allow_reset:
            raise EngineError("Reset is disabled: serve with --allow-reset (tests only)")
        if clock not in (None, "", "event", "wall"):
            raise ValueError(f"clock must be 'event' or 'wall', not {clock!r}")
        if max_events_per_type and not 1 <= max_events_per_type <= 4096:
            raise ValueError("max_events_per_type must be between 1 and 4096")

        async def run():
            self.clock = Clock(clock or self.clock.kind, self.limits)
            self.retention_ms = int(retention_ms or self.retention_ms)
            self.max_events_per_type = int(max_events_per_type or self.max_events_per_type)
            await self.shards.each("reset", self.core_kwargs())
            self.registry = SegmentRegistry(retention_ms=self.retention_ms,
                                            models=self.models.catalog, limits=self.limits)
            self.batches = BatchIds(self.config.batch_id_window)
            self.names = _name_budget(self.limits)
            self.models.reset()
            self.goals.reset()
            self.rfm = type(self.rfm)(self, self.config.rfm_interval_ms)
            self.history = SizeHistory(self.config.history_interval_ms,
                                       self.config.history_retention_ms)
            self.router.reset(len(self.shards))
            self.applier.last_now = self.clock.now_ms
            await self.sequencer.reset()
            if self.store is not None:
                async with self._snapshot_lock:
                    await _recovery.snapshot_now(self)
            return self.clock.now_ms
        return await self.rounds.barrier(run)

    # ------------------------------------------------------------------ scaling

    async def scale(self, shards: int) -> dict:
        from engine.server._scaling import scale

        return await scale(self, shards)

    # ------------------------------------------------------------------ internals

    async def _lag_loop(self) -> None:
        """Every ``LAG_PROBE_S``, how much later than asked the event loop woke this probe:
        how long anything the loop runs (a read, a round's piece) waited for it then."""
        while not self._closed:
            t0 = time.perf_counter_ns()
            await asyncio.sleep(LAG_PROBE_S)
            self.loop_lag.record_ms(max(0.0, (time.perf_counter_ns() - t0) / 1e6 - LAG_PROBE_S * 1e3))

    async def _tick_loop(self) -> None:
        """Wall clock: fire due timers (all shards advance to the wall clock)."""
        from engine._clock import wall_ms

        interval = self.config.tick_interval_ms / 1000.0
        while not self._closed:
            await asyncio.sleep(interval)
            if self.clock.kind != "wall" or self.rounds.pending_ops() or self.recovering:
                continue            # the queued operations move the clock anyway
            now = wall_ms()
            dues = self._next_due_ms
            if (dues and all(0 <= d and d > now for d in dues)
                    and not self.models.rescore_pending(now) and not self.history.is_due(now)
                    and not self.rfm.due_at(now)):
                continue            # nothing due anywhere (-1: unknown, so tick)
            try:
                await self.rounds.submit(CLOCK, None)
            except Exception:  # noqa: BLE001 - logged; the ticker keeps going
                if not self._closed:
                    log.exception("clock tick failed")

    async def _segment_sizes(self, names: list[str]) -> dict[str, int]:
        if not names:
            return {}
        parts = await self.shards.each("segment_sizes", names)
        return {n: int(sum(p[j] for p in parts)) for j, n in enumerate(names)}

    async def _segment_view(self, defn) -> dict:
        sizes = await self._segment_sizes([defn.name])
        return self._def_dict(defn, sizes[defn.name])

    @staticmethod
    def _def_dict(defn, size: int) -> dict:
        return {"name": defn.name, "expression": defn.expression, "description": defn.description,
                "size": int(size), "created_ms": int(defn.created_ms), "version": int(defn.version)}


def _normalise_view(view: dict) -> dict:
    """A shard's ``user_view`` -> {known, segments (sorted), scores, traits}."""
    view = dict(view or {})
    return {"known": bool(view.get("known", False)),
            "segments": sorted(view.get("segments") or ()),
            "scores": dict(view.get("scores") or {}),
            "traits": dict(view.get("traits") or {})}


def _answer_with(op, known, rejection_cls) -> None:
    """A retried batch id: the first reply, now or when the first attempt completes."""
    if isinstance(known, F.Reply):
        if not op.future.done():
            op.future.set_result(IngestResult(known.accepted, known.rejected,
                                              [rejection_cls(i, s) for i, s in known.rejections],
                                              known.now_ms))
        return

    def copy(first: asyncio.Future) -> None:
        if op.future.done():
            return
        if first.cancelled():
            op.future.cancel()
        elif first.exception() is not None:
            op.future.set_exception(first.exception())
        else:
            op.future.set_result(first.result())
    known.add_done_callback(copy)


def _name_budget(limits):
    try:
        from engine.limits import NameBudget
    except ImportError:   # pragma: no cover - limits not there yet
        return None
    return NameBudget(limits)


__all__ = ["Gateway", "N_SLOTS", "plan_moves", "slot_of", "ClockError"]
