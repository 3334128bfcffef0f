"""Snapshots and recovery of the embedded ``Engine`` (one core), and the pieces of state that
the gateway's snapshots share with it: a core restored from a snapshot part, the delta log as
arrays."""

from __future__ import annotations

import logging
import time

import numpy as np

from engine._history import HISTORY_PART, read_part as read_history, write_part as write_history
from engine.durability import frames as F

log = logging.getLogger("rtseg.durability")

META_FORMAT = 1
CORE_PART = "shard-0"


# ----------------------------------------------------------------------------- shared pieces

def load_core(core_kwargs: dict, snapshot_dir: str, part: str, meta: dict, defs: list,
              deployments: list):
    """A new ShardCore from part ``part`` of a complete snapshot: the models and segments
    (dependencies first) first, then the users."""
    from engine._shard import ShardCore
    from engine.durability import snapshot as S

    core = ShardCore(**core_kwargs)
    for dep in deployments:
        core.deploy_model(dep, 0, False)
    for defn in defs:
        core.create_segment(defn, 0)
    arrays = S.read_part(snapshot_dir, part)
    S.restore_core(core, arrays, meta)
    return core


DELTA_PIECE = 16_384     # deltas per step of DeltaArrays: ~2-3 ms, so a gateway's loop can
                         # serve reads between steps while a snapshot converts its delta log


class DeltaArrays:
    """The deltas of a :meth:`DeltaLog.capture` as snapshot arrays, built in steps.

    :meth:`steps` converts ``DELTA_PIECE`` deltas per step: segment names and user ids are
    interned piece by piece into one table each, so the arrays are those of one
    ``split_strings`` over all of them (uniques in order of first use, int32 codes).
    The gateway awaits between steps, so a snapshot of a million retained deltas (~200 ms)
    does not hold its event loop; :func:`deltas_to_arrays` runs them all at once.
    """

    def __init__(self, captured: tuple[int, int, list]):
        from engine.kernels._strings import StringTable

        self.first, self.next, self._chunks = captured
        self._segs, self._users = StringTable(), StringTable()
        self._parts: dict[str, list[np.ndarray]] = {k: [] for k in
                                                    ("seg", "user", "kind", "cause", "at")}

    def meta(self) -> dict:
        return {"first": int(self.first), "next": int(self.next)}

    def steps(self):
        """A generator: one conversion step per ``next()``."""
        for chunk in self._chunks:
            for a in range(0, len(chunk), DELTA_PIECE):
                self._add(chunk, a, min(a + DELTA_PIECE, len(chunk)))
                yield

    def _add(self, chunk, a: int, b: int) -> None:
        from engine.kernels._strings import split_strings

        for table, key, values in ((self._segs, "seg", chunk.segments),
                                   (self._users, "user", chunk.user_ids)):
            col = split_strings(values[a:b])
            self._parts[key].append(table.intern(col).astype(np.int32)[col.codes])
        self._parts["kind"].append(np.asarray(chunk.kind[a:b], np.int8))
        self._parts["cause"].append(np.asarray(chunk.cause[a:b], np.int8))
        self._parts["at"].append(np.asarray(chunk.at_ms[a:b], np.int64))

    def arrays(self) -> dict[str, np.ndarray]:
        """After every step: the arrays :func:`deltas_from_arrays` reads."""
        def cat(key, dtype):
            parts = self._parts[key]
            return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)

        segs, users = self._segs.snapshot(), self._users.snapshot()
        return {"d_seg_blob": segs["arena"], "d_seg_offsets": segs["offsets"],
                "d_seg_codes": cat("seg", np.int32),
                "d_user_blob": users["arena"], "d_user_offsets": users["offsets"],
                "d_user_codes": cat("user", np.int32),
                "d_kind": cat("kind", np.int8), "d_cause": cat("cause", np.int8),
                "d_at_ms": cat("at", np.int64)}


def deltas_to_arrays(delta_log) -> tuple[dict, dict[str, np.ndarray]]:
    """The retained deltas -> (meta, arrays), in one go (see :class:`DeltaArrays`)."""
    conv = DeltaArrays(delta_log.capture())
    for _ in conv.steps():
        pass
    return conv.meta(), conv.arrays()


def deltas_from_arrays(delta_log, meta: dict, arrays) -> None:
    from engine._deltas import DeltaBatch

    batch = DeltaBatch(_strings(arrays, "d_seg"), _strings(arrays, "d_user"),
                       np.asarray(arrays["d_kind"], np.int8), np.asarray(arrays["d_cause"], np.int8),
                       np.asarray(arrays["d_at_ms"], np.int64))
    delta_log.restore(int(meta["first"]), int(meta["next"]), batch)


def _strings(arrays, prefix: str) -> list[str]:
    from engine.kernels._strings import StringColumn

    offsets = np.asarray(arrays[f"{prefix}_offsets"], np.int64)
    col = StringColumn(np.asarray(arrays[f"{prefix}_blob"], np.uint8), offsets,
                       np.zeros(len(offsets) - 1, np.uint64),
                       np.asarray(arrays[f"{prefix}_codes"], np.int32))
    return col.values()


# ----------------------------------------------------------------------------- the engine

def snapshot(eng) -> dict:
    """Write a snapshot of an embedded engine at its log's current position."""
    from engine._segments import topological_order
    from engine.durability import snapshot as S

    store = eng._store
    t0 = time.monotonic()
    lsn = store.last_lsn
    store.wait(lsn)
    tmp = store.begin_snapshot(lsn)
    try:
        arrays, core_meta = S.core_snapshot(eng._core)
        parts = {CORE_PART: S.write_part(tmp, CORE_PART, arrays)}
        dmeta, darrays = deltas_to_arrays(eng._log)
        parts["engine"] = S.write_part(tmp, "engine", darrays)
        hmeta, parts[HISTORY_PART] = write_history(eng._history, tmp)
        meta = {
            "format": META_FORMAT, "kind": "engine", "clock": eng.clock,
            "now_ms": int(eng._clock.now_ms), "applied_now_ms": int(eng._applied_now),
            "retention_ms": int(eng.retention_ms), "max_events_per_type": int(eng.max_events_per_type),
            "segments": [F._segment_record(d) for d in topological_order(eng._registry.all())],
            "models": [[n, int(v)] for n, v in sorted(eng._deployed.items())],
            "last_rescore_ms": int(eng._last_rescore_ms),
            "goals": eng._goals.export_state(),
            "rfm": eng._rfm.to_dict(),
            "names": eng._names.to_dict() if eng._names is not None else None,
            "deltas": dmeta,
            "part_meta": {CORE_PART: core_meta},
            "history": hmeta,
        }
        path = store.finish_snapshot(tmp, lsn, meta, parts)
    except BaseException:
        store.abandon_snapshot(tmp)
        raise
    if eng._models._registry is not None:      # deleted models no frame to replay needs
        eng._models._registry.purge_trash(store.oldest_snapshot_time())
    return {"lsn": int(lsn), "seconds": round(time.monotonic() - t0, 3), "path": str(path)}


def recover(eng) -> dict:
    """Newest usable snapshot + the frames logged after it -> a report."""
    t0 = time.monotonic()
    store = eng._store
    used = None
    for ref in store.snapshots():
        if ref.meta.get("kind") != "engine":
            log.warning("%s is a server's snapshot, not an embedded engine's; skipped", ref.path)
            continue
        try:
            _restore(eng, ref, ref.meta.get("part_meta") or {})
            used = ref
            break
        except Exception as exc:  # noqa: BLE001 - corrupt: the one before
            log.warning("snapshot %s could not be restored (%s); trying the one before", ref.path, exc)
    after = used.lsn if used is not None else 0
    restored_s = time.monotonic() - t0
    frames = events = 0
    for _, frame in store.frames_after(after, eng.retention_ms):
        if frame.op == F.MODEL_DEPLOY:
            name, version, _ = frame.payload
            frame.deployment = eng._models.registry.version_for_replay(name, version).deployment
        eng._clock.move(frame.now_ms)
        if frame.op in (F.EVENTS, F.TRAITS) and eng._names is not None:
            eng._names.note_columns(frame.payload, events=frame.op == F.EVENTS)
        eng._apply(frame)
        frames += 1
        events += len(frame.payload) if frame.op == F.EVENTS else 0
    report = {"snapshot_lsn": after, "frames_replayed": frames, "events_replayed": events,
              "restore_s": round(restored_s, 3), "replay_s": round(time.monotonic() - t0 - restored_s, 3),
              "seconds": round(time.monotonic() - t0, 3)}
    if used is not None or frames:
        log.info("engine recovered from %s: %s", store.root, report)
    return report


def _restore(eng, ref, parts: dict) -> None:
    from engine._clock import Clock

    meta = ref.meta
    if meta.get("format") != META_FORMAT:
        raise ValueError(f"snapshot format {meta.get('format')!r} is not {META_FORMAT}")
    retention = int(meta["retention_ms"])
    defs, deps = eng._store.snapshot_contents(meta, retention, eng._models.registry)
    core = load_core({"retention_ms": retention, "max_events_per_type": int(meta["max_events_per_type"])},
                     str(ref.path), CORE_PART, parts.get(CORE_PART, {}), defs, deps)
    from engine.durability import snapshot as S

    arrays = S.read_part(ref.path, "engine")
    deltas_from_arrays(eng._log, meta["deltas"], arrays)
    eng._core = core
    eng.retention_ms = retention
    eng._clock = Clock(eng.clock, eng.limits)
    eng._clock.move(int(meta["now_ms"]))
    eng._applied_now = int(meta["applied_now_ms"])
    for d in defs:
        eng._registry.put(d)
    eng._deployed = {n: int(v) for n, v in meta["models"]}
    eng._last_rescore_ms = int(meta["last_rescore_ms"])
    eng._goals.restore_state(meta.get("goals"))
    read_history(eng._history, ref.path, meta.get("history"))
    eng._rfm = type(eng._rfm).from_dict(meta.get("rfm"))
    if eng._names is not None and meta.get("names") is not None:
        eng._names = type(eng._names).from_dict(meta["names"], eng.limits)
