"""Routing: which shard owns a user. A user's *slot* is the FNV-1a 64 hash of its id mod
``N_SLOTS`` (``engine.kernels._strings``, the one definition); the slot map says which shard
owns each slot, and moves when the gateway scales."""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.kernels._strings import NUM_SLOTS as N_SLOTS
from engine.kernels._strings import slot_of

__all__ = ["N_SLOTS", "Router", "plan_moves", "slot_of"]


class Router:
    def __init__(self, shards: int = 1):
        self.slot_map = balanced_map(shards)

    def reset(self, shards: int) -> None:
        self.slot_map = balanced_map(shards)

    def shard_of_user(self, user_id: str) -> int:
        return int(self.slot_map[slot_of(user_id)])

    def route(self, cols, n_shards: int) -> dict[int, Any]:
        """Columns (events or traits) -> {shard: its rows}, input order kept per shard."""
        if n_shards == 1:
            return {0: cols}
        owner = self.slot_map[cols.slots()]
        out = {}
        order = np.argsort(owner, kind="stable")
        bounds = np.searchsorted(owner[order], np.arange(n_shards + 1))
        for i in range(n_shards):
            lo, hi = bounds[i], bounds[i + 1]
            if hi > lo:
                out[i] = cols.take(order[lo:hi])
        return out


def balanced_map(shards: int) -> np.ndarray:
    return (np.arange(N_SLOTS, dtype=np.int64) * max(shards, 1) // N_SLOTS).astype(np.int32)


def plan_moves(slot_map: np.ndarray, current: int, target: int) -> list[tuple[int, int, np.ndarray]]:
    """Which slots go where so that ``target`` shards own balanced shares, moving as few
    slots as possible: -> [(source shard, destination shard, slots)]."""
    n = max(current, target)
    quota = [N_SLOTS // target + (1 if i < N_SLOTS % target else 0) if i < target else 0
             for i in range(n)]
    owned = [list(np.flatnonzero(slot_map == i)) for i in range(n)]
    spare: list[tuple[int, int]] = []           # (slot, source)
    for i in range(n):
        if len(owned[i]) > quota[i]:
            for s in owned[i][quota[i]:]:
                spare.append((int(s), i))
            owned[i] = owned[i][:quota[i]]
    moves: dict[tuple[int, int], list[int]] = {}
    it = iter(spare)
    for i in range(target):
        while len(owned[i]) < quota[i]:
            s, src = next(it)
            owned[i].append(s)
            moves.setdefault((src, i), []).append(s)
    return [(src, dst, np.asarray(sl, dtype=np.int32)) for (src, dst), sl in moves.items()]
