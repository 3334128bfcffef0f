"""Sequencing: the deltas of every operation, merged over the shards in the embedded
engine's order and appended to the delta log, which numbers them; readers are woken here."""

from __future__ import annotations

import asyncio

import numpy as np

from engine._deltas import DeltaBatch, DeltaLog
from engine.server._sizes import LiveSizes


def merge_delta_batches(batches: list, segment_rank: dict[str, int]) -> DeltaBatch:
    """The DeltaBatches of one phase of an operation on several shards -> one batch in the
    order of one shard (``engine._shard.canonical_order``): by segment (dependencies first),
    then by the user id's hash, then by the id."""
    batches = [b for b in batches if b is not None and len(b)]
    if not batches:
        return DeltaBatch()
    if len(batches) == 1:
        return batches[0]
    from engine.kernels._strings import split_strings

    merged = DeltaBatch.concat(batches)
    unknown = len(segment_rank)
    rank = np.fromiter((segment_rank.get(s, unknown) for s in merged.segments), np.int64,
                       len(merged.segments))
    col = split_strings(merged.user_ids)
    hashes = col.hashes[col.codes]
    users = np.asarray(merged.user_ids, dtype=object)
    order = np.lexsort((users, hashes, rank))   # last key is primary (ShardCore's order)
    if np.all(order[1:] > order[:-1]):
        return merged
    idx = order.tolist()
    return DeltaBatch(segments=[merged.segments[i] for i in idx],
                      user_ids=[merged.user_ids[i] for i in idx],
                      kind=merged.kind[order], cause=merged.cause[order], at_ms=merged.at_ms[order])


class Sequencer:
    """Owns the delta log of a served engine and wakes its subscribers."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.log = DeltaLog(capacity=capacity)
        self.epoch = 0                   # bumped by reset(): old subscriptions end
        self.closed = False
        self._cond = asyncio.Condition()
        self.sizes = LiveSizes()         # every segment's size, from the deltas published

    def publish(self, batches: list, segment_rank: dict[str, int]) -> int:
        """Append one phase's batches (one per shard) as one merged batch -> its size."""
        merged = merge_delta_batches(batches, segment_rank)
        if len(merged):
            self.log.append(merged)
            self.sizes.published(merged)
        return len(merged)

    async def wake(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    async def wait_beyond(self, cursor: int, epoch: int) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.log.last_sequence > cursor or self.closed
                                      or epoch != self.epoch)

    async def reset(self) -> None:
        self.log = DeltaLog(capacity=self.capacity)
        self.sizes.counted({})           # nothing anywhere
        self.epoch += 1
        await self.wake()

    async def close(self) -> None:
        self.closed = True
        await self.wake()
