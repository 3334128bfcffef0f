"""RFM on a server: the quintile boundaries over every shard's population.

Each computation is one barrier: every shard reports the ``(count, since, sum)`` rows of its
users in each source's population (``ShardHost.rfm_values``, one call per shard), the gateway
computes the boundaries (engine/_rfm.py) and applies them as one logged RFM frame, so every
shard scores against the same boundaries and a replay after a restart applies exactly the
boundaries that were computed (it does not compute them again).

Computations run on demand (``RecomputeRfm``), before a segment or a preview reads a source for
the first time, and on the ``--rfm-interval`` schedule of the engine clock: a frame that moves
the clock past the interval starts one in the background (it queues behind the operations
already waiting, like any barrier).
"""

from __future__ import annotations

import asyncio
import logging
import time

from engine import _rfm as R
from engine.durability import frames as F

log = logging.getLogger("rtseg.rfm")


class RfmService:
    def __init__(self, gateway, interval_ms: int):
        self.gw = gateway
        self.interval_ms = int(interval_ms)
        self.state = R.RfmState()
        self._scheduled: asyncio.Task | None = None

    # ------------------------------------------------------------------ inside a barrier
    def nodes(self, extra=None) -> dict:
        if extra is None:                # asked by the schedule on every frame: kept
            return self.gw.registry.derived("rfm", lambda defs: R.nodes_by_key([d.ast for d in defs]))
        return R.nodes_by_key([d.ast for d in self.gw.registry.all()] + [extra])

    async def compute(self, now: int, nodes: dict, scheduled: bool) -> int:
        """Gather, compute and apply the boundaries of ``nodes`` at ``now`` -> deltas."""
        if not nodes:
            if scheduled:                # no source in use: the next interval starts all the same
                self.state.start_interval(now)
            return 0
        gw = self.gw
        parts = await gw.shards.each("rfm_values", nodes, now)
        payload = R.bounds_payload({k: [p.get(k) for p in parts if p.get(k) is not None] for k in nodes},
                                   scheduled)
        return await gw.apply(gw.frame(F.RFM, payload, now))

    async def ensure(self, tree, now: int) -> None:
        """Boundaries for the sources ``tree`` reads that have none yet."""
        missing = {k: n for k, n in R.nodes_by_key([tree]).items() if k not in self.state.bounds}
        if missing:
            await self.compute(now, missing, scheduled=False)

    # ------------------------------------------------------------------ public
    async def recompute(self) -> dict:
        """RecomputeRfm: every source in use, now."""
        async def run():
            t0 = time.perf_counter()
            now = self.gw.clock.for_op()
            nodes = self.nodes()
            n = await self.compute(now, nodes, scheduled=True)
            return {"boundaries": self.state.report(list(nodes)), "deltas": n, "now_ms": now,
                    "seconds": time.perf_counter() - t0}
        return await self.gw.rounds.barrier(run)

    def due_at(self, now: int) -> bool:
        """A computation is due at ``now`` (the wall-clock ticker asks, to move the clock)."""
        return self.state.due(now, self.interval_ms, self.nodes)

    def boundaries(self) -> list[dict]:
        return self.state.report(list(self.nodes()))

    # ------------------------------------------------------------------ frames applied
    def applied(self, frame: F.Frame) -> None:
        """Every published frame (live or replayed): an RFM frame's boundaries are kept; any
        other frame that leaves a computation due starts one (not while recovering)."""
        if frame.op == F.RFM:
            self.state.apply(frame.payload, frame.now_ms)
            return
        gw = self.gw
        if gw.recovering or gw._closed or not gw.ready:
            return
        if self._scheduled is not None and not self._scheduled.done():
            return
        if not self.state.due(frame.now_ms, self.interval_ms, self.nodes):
            return
        self._scheduled = asyncio.get_running_loop().create_task(self._run_scheduled())

    async def _run_scheduled(self) -> None:
        async def run():
            now = self.gw.clock.for_op()
            if self.state.due(now, self.interval_ms, self.nodes):
                await self.compute(now, self.nodes(), scheduled=True)
        try:
            await self.gw.rounds.barrier(run)
        except Exception:  # noqa: BLE001 - logged; the next frame tries again
            if not self.gw._closed:
                log.exception("scheduled RFM computation failed")
