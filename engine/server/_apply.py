"""Applying frames: the one path by which an accepted operation changes a served engine.

``start(frames)`` logs the frames (write-ahead), turns each into its phases of shard steps
(``engine.durability.frames.frame_phases``) and sends every shard one ``run`` with its steps of
all the frames, in order. ``finish`` waits for the shards and for the log to be durable under
the fsync policy, then applies the frames' effects on the gateway's own state (the segment
registry, the batch-id table), merges each phase's deltas over the shards and appends them to
the delta log. Rounds of ingestion, barriers (segment changes, deletions, models) and the
replay of the log at recovery all go through here, so a replayed frame does exactly what it
did the first time and its deltas get the same sequence numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine._steps import Step
from engine.durability import frames as F

SAMPLE = -1       # the "phase" of a size-history sample in Pending.owners


@dataclass(eq=False)
class Pending:
    frames: list[F.Frame]
    handles: list                        # per shard, from ShardSet.submit_round
    owners: list[list[tuple[int, int]]]  # per shard, per step: (frame index, phase index)
    phases: list[int]                    # per frame: number of phases
    lsn: int = 0                         # last log position of the frames (0: not logged)
    steps: list[list] = field(default_factory=list)      # per shard: the steps sent
    clients: list = field(default_factory=list)          # per shard: the client they went to
    published: list[int] = field(default_factory=list)   # per frame: deltas appended
    samples: dict[int, tuple[int, list[str]]] = field(default_factory=dict)  # frame -> sample

    @property
    def first_lsn(self) -> int:
        return self.lsn - len(self.frames) + 1 if self.lsn else 0


@dataclass(eq=False)
class Routed:
    """A round's frames turned into shard steps (:meth:`FrameApplier.route`), not yet sent."""
    frames: list[F.Frame]
    steps: list[list]                    # per shard: its steps, in order
    owners: list[list[tuple[int, int]]]  # as Pending.owners
    phases: list[int]
    samples: dict[int, tuple[int, list[str]]]
    last_now: int                        # the applier's clock once these are sent
    from_now: int                        # the applier's clock they were routed from


class FrameApplier:
    def __init__(self, gateway):
        self.gw = gateway
        self.last_now = gateway.clock.now_ms    # the clock after the last frame started
        self.in_flight: list[Pending] = []      # started, not yet published, in log order

    def start(self, frames: list[F.Frame], log: bool = True) -> Pending:
        """Route the frames and send them: :meth:`route` then :meth:`send`."""
        return self.send(self.route(frames), log)

    def route(self, frames: list[F.Frame]) -> Routed:
        """Each frame -> its phases of shard steps, per shard, in order. Nothing is logged or
        sent and the applier's clock does not move, so the gateway may serve others between
        this and :meth:`send` (no barrier can run there: the rounds' loop is the only caller
        of both outside barriers)."""
        gw = self.gw
        n = len(gw.shards)
        steps: list[list] = [[] for _ in range(n)]
        owners: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        phases = []
        samples: dict[int, tuple[int, list[str]]] = {}
        last_now = self.last_now
        for k, frame in enumerate(frames):
            ph = F.frame_phases(frame, last_now, n, lambda cols: gw.router.route(cols, n),
                                gw.router.shard_of_user)
            last_now = max(last_now, frame.now_ms)
            phases.append(len(ph))
            for p, row in enumerate(ph):
                for i, step in enumerate(row):
                    if step is not None:
                        steps[i].append(step)
                        owners[i].append((k, p))
            sample = gw.history_sampler.due(frames, k) if gw.history.enabled else None
            if sample is not None:               # the sizes right after this frame
                samples[k] = sample
                for i in range(n):
                    steps[i].append((Step.SIZES, sample[1], frame.now_ms))
                    owners[i].append((k, SAMPLE))
        return Routed(frames, steps, owners, phases, samples, last_now, self.last_now)

    def send(self, routed: Routed, log: bool = True) -> Pending:
        """Log the routed frames (write-ahead) and send every shard its steps: the round is
        in flight from here."""
        gw = self.gw
        if routed.from_now != self.last_now or len(routed.steps) != len(gw.shards):
            raise RuntimeError("a routed round was overtaken before it was sent")   # a bug
        lsn = gw.store.append(routed.frames) if (log and gw.store is not None) else 0
        handles = gw.shards.submit_round(routed.steps)
        self.last_now = routed.last_now
        pending = Pending(routed.frames, handles, routed.owners, routed.phases, lsn, routed.steps,
                          list(gw.shards.clients), samples=routed.samples)
        self.in_flight.append(pending)
        return pending

    async def collect(self, pending: Pending) -> list:
        """The shards' results of ``pending`` once its frames are durable too. Raises the
        first shard's error."""
        try:
            outs = await self._collect(pending)
        except BaseException:
            self._done(pending)
            raise
        return outs

    def _done(self, pending: Pending) -> None:
        self.in_flight = [p for p in self.in_flight if p is not pending]
        self.gw._recovered.pop(id(pending), None)

    async def _collect(self, pending: Pending) -> list:
        from engine.server._shards import ShardDown

        gw = self.gw
        outs = await gw.shards.collect_round(pending.handles)
        if pending.lsn:
            await gw.store.durable(pending.lsn)
        for i, out in enumerate(outs):
            if isinstance(out, ShardDown):
                # a lost shard actor: a new one is rebuilt from snapshot + log, then runs
                # this round's steps (the frames are logged, so they will be applied)
                outs[i] = await gw.shard_lost(i, pending)
        failed = next((o for o in outs if isinstance(o, BaseException)), None)
        if failed is not None:
            raise failed
        return outs

    async def publish(self, pending: Pending, outs: list) -> list[int]:
        """Apply the frames' effects on the gateway and append their deltas -> per frame."""
        self._done(pending)
        gw = self.gw
        per: list[list[list]] = [[[] for _ in range(np_)] for np_ in pending.phases]
        sizes: dict[int, list] = {k: [] for k in pending.samples}
        for i, out in enumerate(outs):
            if out is None:
                continue
            batches, next_due, users = out
            gw.note_shard(i, next_due, users)
            for (k, p), batch in zip(pending.owners[i], batches):
                if p == SAMPLE:
                    sizes[k].append(batch)
                else:
                    per[k][p].append(batch)
        counts = []
        rank = gw.segment_rank()
        for k, frame in enumerate(pending.frames):
            self.before_publish(frame)
            if frame.op in (F.SEGMENT_CREATE, F.SEGMENT_REPLACE):
                rank = gw.segment_rank()        # a new definition orders its own deltas
            counts.append(sum(gw.sequencer.publish(b, rank) for b in per[k]))
            for phase in per[k]:
                for b in phase:
                    gw.goals.book.on_batch(b)     # goal conversions (engine._goals)
            self.after_publish(frame)
            if k in pending.samples:
                boundary, names = pending.samples[k]
                gw.history_sampler.record(boundary, names, sizes[k])
            if frame.op == F.SEGMENT_DELETE:
                rank = gw.segment_rank()
        await gw.sequencer.wake()
        pending.published = counts
        return counts

    async def finish(self, pending: Pending) -> list[int]:
        return await self.publish(pending, await self.collect(pending))

    async def apply(self, frames: list[F.Frame], log: bool = True) -> list[int]:
        return await self.finish(self.start(frames, log))

    # ------------------------------------------------------------------ gateway state

    def before_publish(self, frame: F.Frame) -> None:
        """Effects that the frame's own deltas are ordered by: a new definition takes part
        in the order of its own deltas."""
        if frame.op in (F.SEGMENT_CREATE, F.SEGMENT_REPLACE):
            self.gw.registry.put(frame.payload)

    def after_publish(self, frame: F.Frame) -> None:
        gw = self.gw
        if frame.op in (F.GOAL_CREATE, F.GOAL_DELETE):
            gw.goals.book.apply_frame(frame)
        if frame.op == F.SEGMENT_DELETE:
            if frame.payload in gw.registry:
                gw.registry.remove(frame.payload)
            gw.history_sampler.published(frame)
            gw.sequencer.sizes.dropped(frame.payload)
        if frame.batch_id and frame.reply is not None:
            gw.batches.done(frame.batch_id, frame.reply)
        gw.rfm.applied(frame)


def frame_deployment(gateway, frame: F.Frame) -> Any:
    """A replayed MODEL_DEPLOY frame's Deployment, from the model registry on disk."""
    name, version, _ = frame.payload
    return gateway.models.catalog.registry.version_for_replay(name, version).deployment
