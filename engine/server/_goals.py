"""The gateway's goal operations (engine._goals has the rules and the state): CreateGoal as
two barriers around the model's training (a deployed model with the same target and a close
horizon is reused), then one barrier that reads every shard's members with the model's
features, scores them here and applies the goal's frames; DeleteGoal in one barrier; reads of
the book without one (it changes only when frames are published, on the event loop).

Also the Goal messages both ways (``goal_to_pb`` for the servicer, ``goal_from_pb`` for the
client)."""

from __future__ import annotations

import asyncio

from engine import _goals as G


class GoalService:
    def __init__(self, gateway):
        self.gw = gateway
        self.book = G.GoalBook()
        self._lock = asyncio.Lock()         # one goal change at a time

    def reset(self) -> None:
        self.book.reset()

    # ------------------------------------------------------------------ durable state
    def export_state(self) -> list:
        return self.book.export_state()

    def restore_state(self, state) -> None:
        self.book.restore_state(state)

    # ------------------------------------------------------------------ operations
    def _validate(self, name, segment, target, end_ms, control_fraction, minimize, now):
        gw = self.gw
        return G.validate(name, segment, target, end_ms, control_fraction, minimize, now_ms=now,
                          retention_ms=gw.retention_ms, registry=gw.registry, book=self.book,
                          limits=gw.limits)

    async def create(self, name, segment, target, end_ms, control_fraction=0.1,
                     minimize=False) -> G.GoalInfo:
        gw = self.gw
        args = (name, segment, target, end_ms, control_fraction, minimize)

        async def plan():
            now = gw.clock.for_op()
            p = self._validate(*args, now)
            return p, G.reusable_model(gw.models.catalog.reports(), gw.models.deployed_versions(),
                                       p.target, p.horizon_ms, now)

        async with self._lock:
            p, found = await gw.rounds.barrier(plan)
            if found is None:
                report = await gw.models.train(G._model_spec(p.name, p.target, p.horizon_ms))
                found = (report.name, int(report.horizon_ms))

            async def run():
                now = gw.clock.for_op()
                p = self._validate(*args, now)
                await gw._move_clock(now)
                dep = gw.models.catalog.deployment(found[0])
                data = await self._members(list(dep.features), G._membership_spec(found[0], p.segment), now)
                ids, probs = G.member_scores(data, dep, found[1], p.horizon_ms)
                frames = G.creation_frames(p, found[0], ids, probs, now, gw.registry,
                                           retention_ms=gw.retention_ms, clock=gw.clock.kind,
                                           limits=gw.limits, names=gw.names)
                gw.clock.move(now)
                frames[0].rescore = gw.models.next_rescore_part(now)
                await gw.apply(*frames)
                return self.book.info(p.name, gw.clock.current())
            return await gw.rounds.barrier(run)

    async def _members(self, features, spec, now: int) -> dict:
        """Every shard's rows (features now, label = membership of the goal's segment)."""
        from engine._models import merge_training_data

        gw = self.gw
        refs = [s.training_data(features, spec, now, now, True, (0, 1)) for s in gw.shards]
        if gw.is_ray:
            import ray

            parts = await asyncio.to_thread(ray.get, refs)
        else:
            parts = list(await asyncio.gather(*refs))
        return merge_training_data(parts)

    async def delete(self, name: str) -> G.GoalInfo:
        gw = self.gw

        async def run():
            self.book.get(name)
            G.check_goal_delete(name, gw.registry)
            now = gw.clock.for_op()
            info = self.book.info(name, now)
            names = G.segment_names(name)
            members: set = set()
            for k in ("most", "moderately", "least", "control"):
                for part in await gw.shards.each("members", names[k]):
                    members.update(part)
            frames = G.deletion_frames(name, members, now, retention_ms=gw.retention_ms,
                                       clock=gw.clock.kind, limits=gw.limits, names=gw.names)
            gw.clock.move(now)
            frames[0].rescore = gw.models.next_rescore_part(now)
            await gw.apply(*frames)
            return info

        async with self._lock:
            return await gw.rounds.barrier(run)

    async def repair(self) -> list[str]:
        """After recovery: remove orphan goals (``engine._goals.orphan_goals``) -> their names."""
        gw = self.gw

        async def run():
            orphans = G.orphan_goals(gw.registry, self.book)
            now = gw.clock.for_op()
            for goal, segs in sorted(orphans.items()):
                members: set = set()
                for seg in segs:
                    for part in await gw.shards.each("members", seg):
                        members.update(part)
                frames = G.repair_frames(goal, segs, members, now, retention_ms=gw.retention_ms,
                                         clock=gw.clock.kind, limits=gw.limits, names=gw.names)
                gw.clock.move(now)
                await gw.apply(*frames)
            return sorted(orphans)

        async with self._lock:
            return await gw.rounds.barrier(run)

    def get(self, name: str) -> G.GoalInfo:
        return self.book.info(name, self.gw.clock.current())

    def list(self) -> list[G.GoalInfo]:
        now = self.gw.clock.current()
        return [self.book.info(n, now) for n in self.book.names()]


# ----------------------------------------------------------------------------- messages

_SCALARS = ("name", "segment", "target", "created_ms", "end_ms", "control_fraction", "minimize",
            "model", "snapshot_size", "test_size", "control_size", "predicted",
            "predicted_control", "actual", "actual_control", "test_conversion",
            "control_conversion", "uplift", "uplift_low", "uplift_high", "active", "now_ms")
_DAY = ("day_start_ms", "predicted", "actual", "predicted_control", "actual_control")


def goal_to_pb(info: G.GoalInfo, out=None):
    from engine._pb import pb

    out = pb.Goal() if out is None else out
    for f in _SCALARS:
        setattr(out, f, getattr(info, f))
    for d in info.days:
        out.days.add(**{f: getattr(d, f) for f in _DAY})
    out.segments.extend(info.segments)
    return out


def goal_from_pb(msg) -> G.GoalInfo:
    kw = {f: getattr(msg, f) for f in _SCALARS}
    for f in ("created_ms", "end_ms", "snapshot_size", "test_size", "control_size", "actual",
              "actual_control", "now_ms"):
        kw[f] = int(kw[f])
    return G.GoalInfo(days=tuple(G.GoalDay(int(d.day_start_ms), float(d.predicted), int(d.actual),
                                           float(d.predicted_control), int(d.actual_control))
                                 for d in msg.days),
                      segments=tuple(msg.segments), **kw)
