"""ShardHost: one shard's ``ShardCore`` behind typed methods; ``ShardActor`` is its Ray actor.

The host holds no logic of its own: the gateway decides the clock, the routing and the order
of operations, and sends each shard one ``run`` per micro-batch round holding every step of
that round in order (steps: ``engine._steps``). Reads, slot moves and snapshots are methods of
their own. ``engine.server._shards`` gives the gateway one typed client over either a Ray
actor or a host in this process.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any

NO_TIMER_MS = 2**63 - 1
# a batch of more events is applied in parts with reads let in between (ShardCore.
# apply_events_in_parts), each part about PART_TARGET_MS of CPU: the part size follows what
# the last parts cost (next_part_events), from PART_EVENTS, within PART_EVENTS_BOUNDS
PART_EVENTS = 300
PART_TARGET_MS = 1.0
PART_EVENTS_BOUNDS = (64, 8192)
READS_LATELY_S = 2.0        # ... while a read came in the last 2 s


def next_part_events(current: int, part_cpu_ms: list[float], target_ms: float = PART_TARGET_MS,
                     bounds: tuple[int, int] = PART_EVENTS_BOUNDS) -> int:
    """The part size for the next batch, from the CPU time of this batch's parts of
    ``current`` events: the median part scaled to ``target_ms`` (half way there at a time,
    so one slow part does not swing it), within ``bounds``. Unchanged without measures."""
    if not part_cpu_ms:
        return current
    med = sorted(part_cpu_ms)[len(part_cpu_ms) // 2]
    aim = current * target_ms / max(med, 1e-3)
    lo, hi = bounds
    return int(min(max((current + aim) / 2, lo), hi))


class ShardHost:
    """Owns one ShardCore and executes the gateway's steps on it."""

    def __init__(self, shard_id: int, core_kwargs: dict[str, Any]):
        from engine._shard import ShardCore

        from engine.server._gate import ReadGate

        self.shard_id = shard_id
        self.core = ShardCore(**core_kwargs)
        self.events_applied = 0
        self._apply_ms: list[float] = []
        self.gate = ReadGate()
        self._channels: dict = {}
        self.part_events = PART_EVENTS
        self.part_target_ms: float | None = PART_TARGET_MS   # None: parts of part_events

    def open_channel(self, key: bytes, gateway_ip: str, purpose: str = "rounds") -> tuple[str, int]:
        """Listen for one of the gateway's channels (``engine/server/_channel.py``): ``rounds``
        (``run``) or ``reads`` (``read``: a request is ``(method, args)``) -> the address to
        connect to, loopback when the gateway is on this node."""
        from engine.server._channel import ChannelServer

        handler = {"rounds": self.run, "reads": lambda req: self.read(req[0], *req[1])}[purpose]
        old = self._channels.pop(purpose, None)
        if old is not None:
            old.close()
        here = node_ip()
        host = "127.0.0.1" if here in ("", gateway_ip) else here
        self._channels[purpose] = ChannelServer(handler, key, host)
        return self._channels[purpose].address

    def reset(self, core_kwargs: dict[str, Any]) -> None:
        """Start again with an empty core (the gateway's Reset, for tests)."""
        from engine._shard import ShardCore

        self.core = ShardCore(**core_kwargs)
        self.events_applied = 0
        self._apply_ms.clear()

    def ready(self, warm_up: bool = True) -> dict:
        """Where the shard runs (also proves the actor started and imported the engine)."""
        if warm_up:
            self.warm_up()
            freeze_startup_objects()     # a shard's full collections stall its rounds alike
        node = ""
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()
        return {"shard": self.shard_id, "pid": os.getpid(), "host": socket.gethostname(),
                "node": node}

    def run(self, steps: list[tuple[int, Any, int]]) -> tuple[list, int, int]:
        """Apply the steps in order; -> (one DeltaBatch per step, next timer due in ms, user
        rows: an upper bound on this shard's users, for slicing work over them)."""
        from engine._steps import Step, apply_step

        core = self.core
        gate = self.gate
        out = []
        t0 = time.perf_counter()
        for kind, payload, now_ms in steps:
            if (kind == Step.EVENTS and len(payload) > self.part_events
                    and gate.reads_lately(READS_LATELY_S)):
                # a large batch in parts, reads let in between two (the same result; ~7-12 %
                # more work, so only while reads come)
                parts = core.apply_events_in_parts(payload, now_ms, self.part_events)
                cpu_ms = []
                while True:
                    gate.let_readers_in()
                    with gate.writing():
                        c0 = time.thread_time()
                        try:
                            next(parts)
                        except StopIteration as done:
                            out.append(done.value)
                            break
                        cpu_ms.append((time.thread_time() - c0) * 1000.0)
                if self.part_target_ms is not None:
                    # the first part stages the whole batch: not a part's cost
                    self.part_events = next_part_events(self.part_events, cpu_ms[1:],
                                                        self.part_target_ms)
            else:
                gate.let_readers_in()
                with gate.writing():
                    out.append(apply_step(core, kind, payload, now_ms))
            if kind == Step.EVENTS:
                self.events_applied += len(payload.timestamp_ms)
        self._apply_ms.append((time.perf_counter() - t0) * 1000.0)
        if len(self._apply_ms) > 4096:
            del self._apply_ms[:2048]
        return out, self.next_due_ms(), len(core.users)

    def next_due_ms(self) -> int:
        """Earliest time-driven change of any user of this shard (NO_TIMER_MS when none)."""
        due = self.core.next_due_ms()
        return NO_TIMER_MS if due >= NO_TIMER_MS else int(due)

    def warm_up(self) -> None:
        """Run every kernel once on a scratch core, so that JIT compilation (or loading the
        compiled cache) happens at start-up rather than on the first request."""
        from engine._batch import prepare_events, prepare_traits
        from engine._segments import SegmentRegistry
        from engine._shard import ShardCore

        day = 86_400_000
        core = ShardCore(retention_ms=30 * day)
        reg = SegmentRegistry(retention_ms=30 * day)
        t0 = 1_700_000_000_000
        defn = reg.validate("warm", 'count(a, 1d) >= 1 and trait.k == "x"', now_ms=t0)
        core.create_segment(defn, t0)
        cols, _ = prepare_events(["u", "v"], ["a", "a"], [t0, t0 + 1], [1.0, 2.0],
                                 {"p": ["s", 1.0]}, now_ms=t0, retention_ms=30 * day,
                                 clock="event")
        core.apply_events(cols, t0 + 1)
        tcols, _ = prepare_traits([("u", {"k": "x"}, None)], now_ms=t0 + 1,
                                  retention_ms=30 * day, clock="event")
        core.apply_traits(tcols, t0 + 1)
        core.advance(t0 + 2 * day)
        # the model kernels: feature values one row at a time and on every core, and the
        # training population (loaded here, not in the middle of a TrainModel)
        import numpy as np

        from engine.kernels import _eval as KE

        plan = core._value_plan(["count(a, 1d)", "since(a)"])
        rows = core._known_rows()
        core._values_of(plan, rows, t0 + 1)
        KE.feature_values(plan, core, rows, t0 + 1, np.empty((len(rows), 2)), parallel=True)
        KE.seen_by(core, len(core.type_names), t0 - day, t0, np.zeros(core.nrows, np.bool_))

    # ------------------------------------------------------------------ reads
    def read(self, method: str, *args):
        """A read from the ``reads`` thread (``READS``): between two steps of a round."""
        if method not in READS:
            raise ValueError(f"{method!r} is not a read")
        with self.gate.reading():
            return getattr(ShardHost, method)(self, *args)    # not the locked override


    def segment_sizes(self, names: list[str]) -> list[int]:
        from engine._history import segment_sizes

        return segment_sizes(self.core, names)

    def rfm_values(self, nodes: dict, now_ms: int) -> dict:
        """Per rfm source, this shard's population rows (engine/_shard_rfm.py)."""
        return self.core.rfm_values(nodes, now_ms)

    def members(self, name: str) -> list[str]:
        return self.core.members(name)

    def user_view(self, user_id: str) -> dict:
        return self.core.user_view(user_id)

    def preview(self, defn, now_ms: int, sample: int) -> tuple[int, list[str]]:
        return self.core.preview(defn, now_ms, sample)

    def schema_summary(self) -> dict:
        return self.core.schema_summary()

    def training_data(self, features, spec, cutoff_ms: int, now_ms: int, with_ids: bool,
                      part: tuple[int, int]) -> dict:
        return self.core.training_data(features, spec, cutoff_ms, now_ms, with_ids, part)

    # ------------------------------------------------------------------ slot moves

    def export_slots(self, slots) -> dict:
        return self.core.export_slots(slots)

    def import_state(self, state: dict) -> int:
        return self.core.import_state(state)

    def drop_slots(self, slots) -> int:
        return self.core.drop_slots(slots)

    # ------------------------------------------------------------------ snapshots

    def snapshot_part(self, tmp_dir: str, part: str, background: bool = False) -> dict:
        """This shard's whole state as part ``part`` of a snapshot being made in ``tmp_dir``
        -> the part's file info (size, checksum) and meta for the manifest. With
        ``background`` it returns ``{"pending": True}`` at once and the part is written while
        the shard goes on (``snapshot_written`` then gives the info): by a forked copy of this
        process, which sees the state as it was at the fork (``engine.durability.background``),
        so the shard pauses only for the fork; where there is no fork, the state is copied
        now and written by a thread."""
        from engine._shard import run_steps
        from engine.durability import background as B
        from engine.durability import snapshot as S

        if background and B.fork_available():
            core = self.core

            def write():
                arrays, meta = S.core_snapshot(core)
                return dict(S.write_part(tmp_dir, part, arrays), meta=meta)
            with self.gate.writing():     # no step and no read runs in this process meanwhile
                self._writing = B.start(write)
            return {"pending": True}
        # the state copied in pieces with reads let in between (no step runs meanwhile): a
        # read waits for one piece (~2-4 ms), not for the whole copy (~40 ms per 50k users)
        with self.gate.writers_paused():
            arrays, meta = run_steps(S.core_snapshot_steps(self.core), self.gate.piece)
        if not background:
            return dict(S.write_part(tmp_dir, part, arrays), meta=meta)
        self._writing = B.start(lambda: dict(S.write_part(tmp_dir, part, arrays), meta=meta), fork=False)
        return {"pending": True}

    def snapshot_written(self) -> dict | None:
        """The info of the part being written in the background, or None while it is."""
        if not self._writing.done():
            return None
        return self._writing.result()

    def restore_part(self, core_kwargs: dict, snapshot_dir: str, part: str, meta: dict,
                     defs: list, deployments: list) -> int:
        """Start again from part ``part`` of a complete snapshot: a new core with the models
        and segments (dependencies first) of the snapshot, then its users. -> users."""
        from engine.durability.embedded import load_core

        self.core = load_core(core_kwargs, snapshot_dir, part, meta, defs, deployments)
        self.events_applied = 0
        return len(self.core.users)

    def host_stats(self) -> dict:
        import numpy as np

        stats = dict(self.core.stats())
        try:
            mem = self.core.memory()
            stats["memory_bytes"] = int(mem.get("bytes_total", 0)) if isinstance(mem, dict) else int(mem)
        except Exception:  # noqa: BLE001 - memory accounting is optional
            stats.setdefault("memory_bytes", 0)
        stats.setdefault("events", int(stats.get("events_retained", 0)))
        stats["events_applied"] = self.events_applied
        # measured, not state: kept out of ShardCore.stats (which a restored core reproduces)
        stats["model_scoring_s"] = float(self.core.scoring_s)
        stats["model_scored_rows"] = int(self.core.scored_rows)
        lat = np.asarray(self._apply_ms or [0.0])
        stats["apply_latency"] = {
            "count": len(self._apply_ms),
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "p999_ms": float(np.percentile(lat, 99.9)), "max_ms": float(lat.max())}
        return stats


# Methods that only read, callable through ``ShardHost.read`` in the actor's ``reads`` thread.
READS = frozenset({"user_view", "host_stats", "segment_sizes"})
READS_GROUP = "reads"
# Methods that take the gate for their own steps (``run``, ``snapshot_part``) or touch no
# shard state.
_UNLOCKED = frozenset({"run", "read", "ready", "snapshot_part", "snapshot_written", "open_channel"})


def freeze_startup_objects() -> None:
    """Leave what start-up made (modules, the libraries' functions and types: ~150k objects
    in the gateway) out of every later garbage collection. A full collection walked them all,
    100-150 ms with ingestion stopped, a few times a minute under load (the gateway's and a
    shard's alike)."""
    import gc

    gc.collect()
    gc.freeze()


def node_ip() -> str:
    """This process's node address in its Ray cluster ("" without Ray)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    import ray.util

    return ray.util.get_node_ip_address()


def _locked(cls):
    """A subclass whose state-changing methods each hold the gate for their whole run, so
    that a read in the other thread never sees them half done."""
    import functools

    def wrap(fn):
        @functools.wraps(fn)
        def method(self, *args, **kwargs):
            with self.gate.writing():
                return fn(self, *args, **kwargs)
        return method

    body = {name: wrap(fn) for name, fn in vars(cls).items()
            if callable(fn) and not name.startswith("_") and name not in _UNLOCKED}
    return type(cls.__name__, (cls,), body)    # Ray names the process ray::ShardHost


_actor_class = None


def shard_actor_class():
    """``ShardActor``: the Ray actor class around :class:`ShardHost` (made once, lazily, so
    that importing this module does not import Ray). ``num_cpus=0``: shards are mostly idle
    between rounds and several of them share the machine's cores. One thread runs the rounds
    and every other call in order; a second one (``reads``) answers reads between steps."""
    global _actor_class
    if _actor_class is None:
        import ray

        _actor_class = ray.remote(num_cpus=0, max_restarts=0, max_concurrency=1,
                                  concurrency_groups={READS_GROUP: 1})(_locked(ShardHost))
    return _actor_class


def __getattr__(name: str):
    if name == "ShardActor":
        return shard_actor_class()
    raise AttributeError(name)
