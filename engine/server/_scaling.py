"""Live scaling: hash slots move (with their users' state) until the target number of shards
owns them all, a chunk of slots per barrier so that ingestion goes on in between. A snapshot
follows (with a data dir), so recovery always finds the slot map its shards' files were
written with."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from engine.server._routing import N_SLOTS, plan_moves

MOVE_CHUNK_SLOTS = 128       # slots moved per barrier while scaling


async def scale(gw, shards: int) -> dict:
    """Move hash slots (with their state) until ``shards`` actors own them all."""
    from engine.server import _recovery

    if shards < 1 or shards > N_SLOTS:
        raise ValueError(f"shards must be between 1 and {N_SLOTS}, not {shards}")
    async with gw._scale_lock:
        t0 = time.monotonic()
        old = len(gw.shards)
        moved = 0
        if shards > old:
            # start the actors while ingestion goes on; they join in a short barrier
            made = await asyncio.gather(*[gw.new_shard(old + i) for i in range(shards - old)])
            await gw.rounds.barrier(lambda: _add_shards(gw, made))
        for src, dst, slots in plan_moves(gw.router.slot_map, len(gw.shards), shards):
            for k in range(0, len(slots), MOVE_CHUNK_SLOTS):
                chunk = slots[k:k + MOVE_CHUNK_SLOTS]
                await gw.rounds.barrier(lambda s=src, d=dst, c=chunk: _move_slots(gw, s, d, c))
                moved += len(chunk)
        if shards < old:
            await gw.rounds.barrier(lambda: _remove_shards(gw, shards))
        if gw.store is not None and shards != old:
            await _recovery.snapshot(gw)
        return {"shards": len(gw.shards), "slots_moved": moved,
                "duration_ms": int((time.monotonic() - t0) * 1000)}


async def _add_shards(gw, made: list) -> None:
    """Inside a barrier: give new (empty) shards every model, every segment and the clock,
    then add them; they own no slot until moves give them some (scores travel with their
    users as hidden traits)."""
    from engine._segments import topological_order
    from engine._steps import Step

    clients = [c for c, _ in made]
    now = gw.applier.last_now
    await gw.models.deploy_to_new_shards(clients)
    steps = [(Step.CREATE_SEGMENT, d, now) for d in topological_order(gw.registry.all())]
    if gw.rfm.state.bounds:          # the boundaries every shard scores against, first
        steps.insert(0, (Step.SET_RFM, {"bounds": dict(gw.rfm.state.bounds)}, now))
    if now:
        steps.append((Step.ADVANCE, None, now))
    if steps:
        await asyncio.gather(*[c.run(steps) for c in clients])
    gw.shards.clients.extend(clients)
    gw.shard_info.extend(info for _, info in made)
    gw._next_due_ms.extend([-1] * len(clients))


async def _move_slots(gw, src: int, dst: int, slots: np.ndarray) -> None:
    slots = np.asarray(slots, dtype=np.int32)
    state = await gw.shards[src].export_slots(slots)
    await gw.shards[dst].import_state(state)
    await gw.shards[src].drop_slots(slots)
    gw.router.slot_map[slots] = dst
    gw._next_due_ms[dst] = -1


async def _remove_shards(gw, keep: int) -> None:
    if np.any(gw.router.slot_map >= keep):
        raise RuntimeError("internal: removing shards that still own slots")
    gone = gw.shards.clients[keep:]
    del gw.shards.clients[keep:]
    del gw.shard_info[keep:]
    del gw._next_due_ms[keep:]
    for c in gone:
        c.kill()
