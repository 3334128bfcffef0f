"""Snapshots and restart of a served engine (``DurableStore`` holds the files).

* **Snapshot** (a barrier: no round in flight): the log goes on in a new file; every shard
  writes its whole state as numpy arrays (``ShardHost.snapshot_part``), the gateway writes its
  own (delta log, slot map) plus a manifest (clock, segments, models, batch ids, names); the
  directory is renamed complete, and log files older than the oldest kept snapshot are deleted.
* **Recovery** at start: the newest complete snapshot that checks out (else the one before,
  else nothing), then every frame logged after its position, replayed through the same
  ``FrameApplier`` as live operations, so the delta log continues with the same sequence
  numbers: a subscriber resuming with ``after_sequence`` gets exactly what it missed.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from engine.durability import frames as F
from engine.durability.embedded import DeltaArrays

log = logging.getLogger("rtseg.recovery")

REPLAY_GROUP_EVENTS = 200_000       # events per replayed round
REPLAY_GROUP_FRAMES = 256
SNAPSHOT_CHECK_S = 1.0
META_FORMAT = 1


# ----------------------------------------------------------------------------- snapshots

async def snapshot(gw) -> dict:
    """Take a snapshot now -> what was written. Ingestion pauses only while each shard forks
    a copy of itself that writes its part (a barrier; ``ShardHost.snapshot_part``); the files
    are written while it goes on."""
    async with gw._snapshot_lock:
        started = await gw.rounds.barrier(lambda: _snapshot_start(gw, background=True))
        return await _snapshot_finish(gw, *started)


async def snapshot_now(gw) -> dict:
    """Inside a barrier: write a complete snapshot at the log's current position."""
    return await _snapshot_finish(gw, *(await _snapshot_start(gw, background=False)))


async def _snapshot_start(gw, background: bool):
    """Inside a barrier: the log goes on in a new file; every shard copies its state out
    (and writes it, or starts writing it in the background); the gateway's own state."""
    store = gw.store
    t0 = time.monotonic()
    lsn = store.last_lsn
    tmp = store.begin_snapshot(lsn)
    try:
        infos = await asyncio.gather(*[c.snapshot_part(str(tmp), f"shard-{i}", background)
                                       for i, c in enumerate(gw.shards)])
        deltas = DeltaArrays(gw.log.capture())     # converted after the pause, in steps
        arrays, meta = {"slot_map": gw.router.slot_map.astype(np.int32)}, _gateway_meta(gw)
        meta["deltas"] = deltas.meta()             # the range of the captured chunks
        meta["history"], harrays = gw.history.export()
        arrays.update(harrays)
    except BaseException:
        store.abandon_snapshot(tmp)
        raise
    gw.recovery["snapshot_pause_s"] = round(time.monotonic() - t0, 3)
    return t0, lsn, tmp, list(gw.shards), infos, (arrays, deltas), meta


async def _snapshot_finish(gw, t0, lsn, tmp, clients, infos, gateway_state, meta) -> dict:
    from engine.durability import snapshot as S

    store = gw.store
    arrays, deltas = gateway_state
    try:
        for _ in deltas.steps():                 # the loop serves reads and rounds meanwhile
            await asyncio.sleep(0)
        arrays.update(deltas.arrays())
        for i, info in enumerate(infos):
            while info.get("pending"):
                done = await clients[i].snapshot_written()
                if done is None:
                    await asyncio.sleep(0.05)    # the shard goes on serving meanwhile
                else:
                    info = done
            infos[i] = info
        parts = {f"shard-{i}": dict(info) for i, info in enumerate(infos)}
        part_meta = {name: info.pop("meta", {}) for name, info in parts.items()}
        parts["gateway"] = await asyncio.to_thread(S.write_part, tmp, "gateway", arrays)
        meta = dict(meta, part_meta=part_meta)
        path = await asyncio.to_thread(store.finish_snapshot, tmp, lsn, meta, parts)
    except BaseException:
        store.abandon_snapshot(tmp)
        raise
    if gw.models.catalog._registry is not None:   # deleted models no frame to replay needs
        gw.models.catalog._registry.purge_trash(store.oldest_snapshot_time())
    took = time.monotonic() - t0
    gw.recovery["last_snapshot"] = {"lsn": int(lsn), "seconds": round(took, 3), "path": str(path)}
    log.info("snapshot at log position %d in %.2f s: %s", lsn, took, path)
    return gw.recovery["last_snapshot"]


async def snapshot_loop(gw) -> None:
    """Every ``snapshot_interval`` or every ``snapshot_log_mb`` of log, whichever first."""
    cfg = gw.config
    last = time.monotonic()
    while not gw._closed:
        await asyncio.sleep(SNAPSHOT_CHECK_S)
        due_time = cfg.snapshot_interval_s and time.monotonic() - last >= cfg.snapshot_interval_s
        due_size = (cfg.snapshot_log_mb and
                    gw.store.log_bytes_since_snapshot() >= cfg.snapshot_log_mb * 1024 * 1024)
        if not (due_time or due_size) or gw.recovering:
            continue
        if gw.store.last_lsn == _snapshot_lsn(gw):
            last = time.monotonic()
            continue
        try:
            await snapshot(gw)
        except Exception as exc:  # noqa: BLE001 - the log still has everything; try later
            if not gw._closed:
                log.warning("scheduled snapshot failed: %s", exc)
        last = time.monotonic()


def _snapshot_lsn(gw) -> int:
    return int(gw.recovery.get("last_snapshot", {}).get("lsn", -1))


def _gateway_meta(gw) -> dict:
    from engine._segments import topological_order

    deployed = [[name, int(v)] for name, v in gw.models.deployed_versions().items()]
    return {
        "format": META_FORMAT,
        "clock": gw.clock.kind,
        "now_ms": int(gw.clock.now_ms),
        "applied_now_ms": int(gw.applier.last_now),
        "retention_ms": int(gw.retention_ms),
        "max_events_per_type": int(gw.max_events_per_type),
        "shards": len(gw.shards),
        "segments": [F._segment_record(d) for d in topological_order(gw.registry.all())],
        "models": deployed,
        "models_state": gw.models.export_state(),
        "goals": gw.goals.export_state(),
        "rfm": gw.rfm.state.to_dict(),
        "batch_ids": gw.batches.export(),
        "names": gw.names.to_dict() if gw.names is not None else None,
        "events_accepted": int(gw.events_accepted),
        "events_rejected": int(gw.events_rejected),
    }


# ----------------------------------------------------------------------------- recovery

async def recover(gw, shards: int) -> bool:
    """Start the gateway's shards from its data dir (or empty) -> True when state was
    restored from a snapshot or a log."""
    t0 = time.monotonic()
    store = gw.store
    gw.recovering = True
    gw.sequencer.sizes.forget()          # the snapshot's state comes without deltas
    try:
        restored_from = None
        if store is not None:
            for ref in store.snapshots():
                try:
                    await _restore_snapshot(gw, ref)
                    restored_from = ref
                    break
                except Exception as exc:  # noqa: BLE001 - corrupt: fall back to the one before
                    log.warning("snapshot %s could not be restored (%s); trying the one before",
                                ref.path, exc)
                    await _drop_shards(gw)
        if restored_from is None:
            await _fresh(gw, shards)
        after = restored_from.lsn if restored_from is not None else 0
        restored_s = time.monotonic() - t0
        replayed, events = (await _replay(gw, after)) if store is not None else (0, 0)
        took = time.monotonic() - t0
        gw.recovery.update(snapshot_lsn=after, frames_replayed=replayed, events_replayed=events,
                           seconds=round(took, 3), restore_s=round(restored_s, 3),
                           replay_s=round(took - restored_s, 3),
                           snapshot=str(restored_from.path) if restored_from else "")
        if restored_from is not None or replayed:
            log.info("recovered in %.2f s: snapshot at %d, %d frames (%d events) replayed, "
                     "delta log at sequence %d", took, after, replayed, events, gw.log.last_sequence)
            if restored_from is not None:
                gw.recovery["last_snapshot"] = {"lsn": after}
        return restored_from is not None or replayed > 0
    finally:
        gw.recovering = False


async def _fresh(gw, shards: int) -> None:
    clients = await asyncio.gather(*[gw.new_shard(i) for i in range(shards)])
    gw.shards.clients = [c for c, _ in clients]
    gw.shard_info = [info for _, info in clients]
    gw._next_due_ms = [-1] * shards
    gw.router.reset(shards)


async def _drop_shards(gw) -> None:
    gw.shards.close()
    gw.shard_info = []


async def _restore_snapshot(gw, ref) -> None:
    from engine._clock import Clock
    from engine._segments import SegmentRegistry
    from engine.durability import snapshot as S
    from engine.durability.embedded import deltas_from_arrays

    meta = ref.meta
    if meta.get("format") != META_FORMAT:
        raise ValueError(f"snapshot format {meta.get('format')!r} is not {META_FORMAT}")
    if meta["clock"] != gw.config.clock:
        log.warning("the data dir was written with the %s clock; serving with --clock %s",
                    meta["clock"], gw.config.clock)
    gw.retention_ms = int(meta["retention_ms"])
    gw.max_events_per_type = int(meta["max_events_per_type"])
    defs, deps = gw.store.snapshot_contents(meta, gw.retention_ms, gw.models.catalog.registry)
    n = int(meta["shards"])
    parts = meta.get("part_meta") or {}
    clients = await asyncio.gather(*[gw.new_shard(i) for i in range(n)])
    gw.shards.clients = [c for c, _ in clients]
    gw.shard_info = [info for _, info in clients]
    gw._next_due_ms = [-1] * n
    await asyncio.gather(*[c.restore_part(gw.core_kwargs(), str(ref.path), f"shard-{i}",
                                          parts.get(f"shard-{i}", {}), defs, deps)
                           for i, c in enumerate(gw.shards)])
    arrays = await asyncio.to_thread(S.read_part, ref.path, "gateway")
    gw.router.slot_map = np.asarray(arrays["slot_map"], np.int32).copy()
    deltas_from_arrays(gw.sequencer.log, meta["deltas"], arrays)
    gw.clock = Clock(gw.config.clock, gw.limits)
    gw.clock.move(int(meta["now_ms"]))
    gw.applier.last_now = int(meta["applied_now_ms"])
    gw.registry = SegmentRegistry(retention_ms=gw.retention_ms, models=gw.models.catalog,
                                  limits=gw.limits)
    for d in defs:
        gw.registry.put(d)
    gw.models.restore_state(meta.get("models_state") or {}, {name: int(v) for name, v in meta["models"]})
    gw.rfm.state = type(gw.rfm.state).from_dict(meta.get("rfm"))
    gw.history.__init__(gw.config.history_interval_ms, gw.config.history_retention_ms)
    if meta.get("history"):
        gw.history.restore(meta["history"], arrays)
    gw.batches.restore(meta.get("batch_ids") or [])
    gw.goals.restore_state(meta.get("goals"))
    if gw.names is not None and meta.get("names") is not None:
        gw.names = type(gw.names).from_dict(meta["names"], gw.limits)
    gw.events_accepted = int(meta.get("events_accepted", 0))
    gw.events_rejected = int(meta.get("events_rejected", 0))


async def _replay(gw, after: int) -> tuple[int, int]:
    """Apply every frame logged after position ``after`` -> (frames, events)."""
    frames_n = events_n = 0
    group: list[F.Frame] = []
    size = 0
    for _, frame in gw.store.frames_after(after, gw.retention_ms):
        _prepare_replayed(gw, frame)
        group.append(frame)
        n = len(frame.payload) if frame.op in (F.EVENTS, F.TRAITS) else 1
        size += n
        frames_n += 1
        events_n += n if frame.op == F.EVENTS else 0
        if frame.op not in (F.EVENTS, F.TRAITS, F.CLOCK) or size >= REPLAY_GROUP_EVENTS \
                or len(group) >= REPLAY_GROUP_FRAMES or gw.history.note(frame.now_ms) is not None:
            await gw.applier.apply(group, log=False)
            group, size = [], 0
    if group:
        await gw.applier.apply(group, log=False)
    return frames_n, events_n


def _prepare_replayed(gw, frame: F.Frame) -> None:
    """A logged frame's effects outside the shards, as when it was first applied."""
    from engine.server._apply import frame_deployment

    gw.clock.move(frame.now_ms)
    if frame.op == F.MODEL_DEPLOY:
        frame.deployment = frame_deployment(gw, frame)
        gw.models.replayed_deploy(frame)
    elif frame.op == F.MODEL_DROP:
        gw.models.replayed_drop(frame)
    gw.models.replayed_rescore(frame)
    if frame.op in (F.EVENTS, F.TRAITS):
        if gw.names is not None:
            gw.names.note_columns(frame.payload, events=frame.op == F.EVENTS)
        if frame.op == F.EVENTS and frame.reply is not None:
            gw.events_accepted += frame.reply.accepted
            gw.events_rejected += frame.reply.rejected


# ----------------------------------------------------------------------------- a lost shard

async def recover_shard(gw, i: int, pending) -> tuple:
    """Shard ``i`` died under ``pending`` (a round): -> that round's result for shard ``i``
    from a rebuilt shard (``revive``)."""
    await revive(gw, i, pending.clients[i])
    async with gw._recover_lock:
        _rerun_in_flight(gw, i)
        return await gw._recovered.pop(id(pending))


async def revive(gw, i: int, dead) -> None:
    """Shard ``i``'s actor ``dead`` is lost: start a new actor, restore its part of the newest
    snapshot and replay its share of every frame logged after it, up to the rounds still in
    flight; those rounds' steps then run on it, in log order, each once. Other shards keep
    their state; calls that need shard ``i`` wait meanwhile (a bounded time: restore and
    replay). Without a data dir the shard cannot be rebuilt: ShardDown (UNAVAILABLE)."""
    from engine.server._shards import ShardDown

    async with gw._recover_lock:
        if gw.shards[i] is not dead:
            return                                   # rebuilt already
        if gw.store is None:
            raise ShardDown(i, "it cannot be rebuilt: serve with --data-dir to have lost "
                               "shards rebuilt from the log")
        t0 = time.monotonic()
        gw.set_health(False)
        try:
            client, info, replayed = await _rebuild_shard(gw, i)
            gw.shards.clients[i] = client
            gw.shard_info[i] = info
            _rerun_in_flight(gw, i)
            took = time.monotonic() - t0
            gw.recovery["shard_restarts"] = gw.recovery.get("shard_restarts", 0) + 1
            gw.recovery["last_shard_restart"] = {"shard": i, "frames_replayed": replayed,
                                                 "seconds": round(took, 3)}
            log.warning("shard %d was lost and is rebuilt from snapshot + log in %.2f s "
                        "(%d frames replayed)", i, took, replayed)
        finally:
            gw.set_health(True)


def _rerun_in_flight(gw, i: int) -> None:
    """Rounds in flight that went to a lost actor of shard ``i``: their steps again, on the
    current one, in log order, each once (results kept for the rounds' own completion)."""
    client = gw.shards[i]
    for p in list(gw.applier.in_flight):
        if p.clients[i] is client or id(p) in gw._recovered:
            continue
        if p.steps[i]:
            gw._recovered[id(p)] = asyncio.ensure_future(client.run(p.steps[i]))
        else:
            gw._recovered[id(p)] = _done_future(None)


def _done_future(value):
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut


async def _rebuild_shard(gw, i: int):
    from engine.durability import snapshot as S
    from engine.server._apply import frame_deployment

    store = gw.store
    await asyncio.to_thread(store.wal.flush)        # every logged frame readable
    ref = next(iter(store.snapshots()), None)
    n = len(gw.shards)
    if ref is not None:
        meta = ref.meta
        arrays = await asyncio.to_thread(S.read_part, ref.path, "gateway")
        if int(meta["shards"]) != n or not np.array_equal(arrays["slot_map"], gw.router.slot_map):
            raise RuntimeError("the newest snapshot was taken with another slot map")
        after, before = ref.lsn, int(meta["applied_now_ms"])
    else:
        after, before = 0, 0
    client, info = await gw.new_shard(i)
    if ref is not None:
        defs, deps = store.snapshot_contents(meta, gw.retention_ms, gw.models.catalog.registry)
        await client.restore_part(gw.core_kwargs(), str(ref.path), f"shard-{i}",
                                  (meta.get("part_meta") or {}).get(f"shard-{i}", {}), defs, deps)
    stop = gw.applier.in_flight[0].first_lsn if gw.applier.in_flight else store.last_lsn + 1
    steps: list = []
    replayed = 0
    for lsn, frame in store.frames_after(after, gw.retention_ms):
        if lsn >= stop:
            break
        if frame.op == F.MODEL_DEPLOY:
            frame.deployment = frame_deployment(gw, frame)
        phases = F.frame_phases(frame, before, n, lambda cols: gw.router.route(cols, n),
                                gw.router.shard_of_user)
        before = max(before, frame.now_ms)
        steps.extend(p[i] for p in phases if p[i] is not None)
        replayed += 1
        if len(steps) >= REPLAY_GROUP_FRAMES:
            await client.run(steps)
            steps = []
    if steps:
        await client.run(steps)
    return client, info, replayed
