"""The gateway's model operations (issue 8): training, deployment, deletion and the two
schedules (re-scoring as time moves recency features, retraining).

Training a model takes three steps, so that ingestion and queries go on while it learns:

1. **Features**, in a barrier: every shard's ``schema_summary`` (to choose default features),
   ``plan_training``, then every shard's ``training_data`` at the cut-off, all shards at once.
   With Ray shards the barrier only *submits* the ``training_data`` calls: Ray runs one
   caller's calls to an actor in submission order, so they see exactly the state of the
   barrier, and the arrays go from the shards straight to the training task, never through
   the gateway.
2. **Learning**, outside any barrier: ``scoring.training`` fit -> calibrate -> export, each a
   Ray task (one CPU: it runs in another process, beside the shards) chained by object refs;
   with in-process shards (tests) the same stages run in a thread.
3. **Deployment**, in a barrier: the version is saved in the catalog (disk), deployed to every
   shard (each re-scores its users; MODEL_UPDATED deltas), deltas appended in order.

Re-scoring follows the embedded ``Engine``'s rule exactly: after any operation that leaves
the clock at least ``--rescore-interval`` past the last re-scoring, every shard re-scores
every user at that ``now`` (cause TIME), as a step right after that operation. So a served
engine and an embedded one fed the same operations re-score at the same points.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Callable

log = logging.getLogger("rtseg.models")

PHASES = ("features", "fit", "calibration", "export", "deploy")
SCHEDULE_CHECK_S = 1.0        # how often the retraining schedule is looked at
TRAINING_CONCURRENCY = 1      # training runs at a time (each holds its rows in memory)

Progress = Callable[[str], None] | None


# ----------------------------------------------------------------------------- stages


def _fit_stage(plan, *parts):
    """Merge the shards' rows, check there is something to learn (ModelError with the
    counts) and fit. Also the Ray task's body: the parts arrive resolved."""
    from engine._models import check_training_rows, merge_training_data
    from scoring.training import fit

    data = merge_training_data(list(parts))
    check_training_rows(data, plan)
    return fit(data["X"], data["y"], data["hashes"], plan.spec)


def _calibrate_stage(fitted):
    from scoring.training import calibrate

    return calibrate(fitted)


def _export_stage(calibrated, name, version, features, now_ms, cutoff_ms):
    from scoring.training import export

    return export(calibrated, name=name, version=version, features=features, now_ms=now_ms,
                  cutoff_ms=cutoff_ms)


_remote_stages = None


def _ray_stages():
    """The stages as Ray remote functions (made once, lazily: importing this module does
    not import Ray). One CPU each, so that Ray gives the learner one core's threads."""
    global _remote_stages
    if _remote_stages is None:
        import ray

        opts = dict(num_cpus=1, max_retries=0)
        _remote_stages = {
            "fit": ray.remote(**opts)(_fit_stage),
            "calibrate": ray.remote(**opts)(_calibrate_stage),
            "export": ray.remote(**opts)(_export_stage),
        }
    return _remote_stages


def _unwrap(exc: BaseException) -> BaseException:
    """The engine error a Ray task raised, without Ray's wrapper and traceback text."""
    try:
        from ray.exceptions import RayTaskError
    except ImportError:  # pragma: no cover
        return exc
    while isinstance(exc, RayTaskError) and isinstance(getattr(exc, "cause", None), BaseException):
        exc = exc.cause
    return exc


# ----------------------------------------------------------------------------- the service


class ModelService:
    """The catalog of a gateway's models and every operation on them."""

    def __init__(self, gateway):
        from engine._models import ModelCatalog

        self.gw = gateway
        self.catalog = ModelCatalog(gateway.config.data_dir or None)
        self.rescore_interval_ms = gateway.config.rescore_interval_ms
        self.retrain_interval_ms = gateway.config.retrain_interval_ms
        self.last_rescore_ms = gateway.now_ms
        self.users_hint = 0                             # most user rows any shard reported
        self._rescore_parts: collections.deque = collections.deque()   # slices still to do
        self._name_locks: dict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self._training = asyncio.Semaphore(TRAINING_CONCURRENCY)
        self._retraining: set[str] = set()
        self._retrain_not_before: dict[str, int] = {}   # after a failed scheduled run
        self._tasks: set[asyncio.Task] = set()          # scheduled retraining runs
        self._deployed: dict[str, int] = {}             # model -> version on the shards

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Deploy every model's latest version kept in the data dir that the shards do not
        have yet (recovery restores the others)."""
        todo = [mv for mv in self._latest_versions() if self._deployed.get(mv.name) != mv.version]
        for mv in todo:
            async def run(mv=mv):
                return await self._add_and_deploy(mv, save=False)
            await self._finish_slices(mv.name, await self.gw.rounds.barrier(run))
        if todo:
            log.info("deployed %d model(s) from %s", len(todo), self.gw.config.data_dir)

    def _latest_versions(self) -> list:
        reg = self.catalog._registry       # None: no model was ever made (scoring not imported)
        return [reg.latest(name) for name in reg.names()] if reg is not None else []

    # ------------------------------------------------------------------ durable state

    def deployed_versions(self) -> dict[str, int]:
        return dict(self._deployed)

    def export_state(self) -> dict:
        return {"last_rescore_ms": int(self.last_rescore_ms),
                "rescore_parts": [list(p) for p in self._rescore_parts]}

    def restore_state(self, state: dict, deployed: dict[str, int]) -> None:
        self.last_rescore_ms = int(state.get("last_rescore_ms", self.gw.clock.now_ms))
        self._rescore_parts = collections.deque(tuple(p) for p in state.get("rescore_parts", ()))
        self._deployed = dict(deployed)

    def replayed_deploy(self, frame) -> None:
        self._deployed[frame.payload[0]] = int(frame.payload[1])

    def replayed_drop(self, frame) -> None:
        self._deployed.pop(frame.payload, None)

    def replayed_rescore(self, frame) -> None:
        """The re-scoring schedule as the logged frame left it."""
        from engine.durability import frames as F

        if frame.op == F.RESCORE:
            self.last_rescore_ms = frame.now_ms
            self._rescore_parts.clear()
        if frame.rescore is not None:
            k, n = frame.rescore
            if k == 0:
                self.last_rescore_ms = frame.now_ms
                self._rescore_parts = collections.deque((j, n) for j in range(1, n))
            elif self._rescore_parts and self._rescore_parts[0] == (k, n):
                self._rescore_parts.popleft()

    async def schedule_loop(self) -> None:
        """Retrain models made by TrainModel once their last training is older than
        ``--retrain-interval`` on the engine's clock (a new version each time)."""
        while not self.gw._closed:
            await asyncio.sleep(SCHEDULE_CHECK_S)
            if not self.retrain_interval_ms:
                continue
            now = self.gw.clock.for_op()
            for report in self.catalog.reports():
                name = report.name
                if (name in self._retraining or now - report.trained_ms < self.retrain_interval_ms
                        or now < self._retrain_not_before.get(name, 0)):
                    continue
                spec = self.catalog.spec(name)
                if spec is None:
                    continue             # a user's own ONNX model: nothing to learn from
                self._retraining.add(name)
                task = asyncio.ensure_future(self._retrain(spec, now))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _retrain(self, spec, now: int) -> None:
        try:
            report = await self.train(spec, scheduled=True)
            if report is not None:
                log.info("retrained model %r: version %d, auc %.4f", spec.name, report.version,
                         report.auc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - logged; tried again one interval later
            self._retrain_not_before[spec.name] = now + self.retrain_interval_ms
            log.warning("scheduled retraining of model %r failed: %s", spec.name, exc)
        finally:
            self._retraining.discard(spec.name)

    def reset(self) -> None:
        """The gateway's Reset: forget every model (the shards start empty anyway)."""
        for report in self.catalog.reports():
            self.catalog.remove(report.name)
        self._retrain_not_before.clear()
        self._rescore_parts.clear()
        self._deployed.clear()
        self.last_rescore_ms = self.gw.now_ms

    # ------------------------------------------------------------------ re-scoring rule

    def rescore_pending(self, now_ms: int) -> bool:
        """The embedded engine's rule (models deployed and the clock an interval past the
        last re-scoring), or slices of the last re-scoring still to do."""
        return bool(self._rescore_parts) or bool(
            self.rescore_interval_ms and now_ms - self.last_rescore_ms >= self.rescore_interval_ms
            and self.catalog.deployments())

    def note_users(self, users: int) -> None:
        self.users_hint = max(self.users_hint, int(users))

    def next_rescore_part(self, now_ms: int):
        """The slice ``(k, n)`` of users to re-score after an operation that leaves the clock
        at ``now_ms``, or None. With the wall clock (a live server), a due re-scoring of a
        large population is cut into slices of ``--model-slice-users`` per shard, one per
        round, so that it never holds ingestion up for long. With the event clock (replays)
        it is one step, the embedded engine's rule exactly."""
        if not self._rescore_parts:
            if not self.rescore_pending(now_ms):
                return None
            self.last_rescore_ms = now_ms
            n = 1 if self.gw.clock.is_event else \
                max(1, -(-self.users_hint // self.gw.config.model_slice_users))
            self._rescore_parts.extend((k, n) for k in range(n))
        return self._rescore_parts.popleft()

    async def rescore(self) -> tuple[int, int]:
        """Re-score every user now (the Rescore RPC): -> (deltas, now_ms)."""
        from engine.durability import frames as F

        async def run():
            frame = self.gw.frame(F.RESCORE, (0, 1))
            self.last_rescore_ms = frame.now_ms
            self._rescore_parts.clear()          # everyone, now: nothing left of an earlier one
            return await self.gw.apply(frame), frame.now_ms
        return await self.gw.rounds.barrier(run)

    # ------------------------------------------------------------------ reads

    def get(self, name: str):
        return self.catalog.report(name)

    def list(self) -> list:
        return self.catalog.reports()

    # ------------------------------------------------------------------ training

    async def train(self, spec, progress: Progress = None, *, scheduled: bool = False):
        """Train ``spec`` on every shard's history and deploy the new version -> ModelReport.

        Once started, a run completes even if the caller goes away (the RPC is cancelled):
        the learning is already paid for and its result is a consistent new version."""
        task = asyncio.ensure_future(self._train(spec, progress, scheduled))
        task.add_done_callback(_note_outcome)
        return await asyncio.shield(task)

    async def _train(self, spec, progress: Progress, scheduled: bool):
        from scoring.registry import ModelVersion

        emit = progress or (lambda phase: None)
        name = spec.name
        async with self._name_locks[name], self._training:
            epoch = self.gw.sequencer.epoch
            emit("features")
            plan, version, parts, slices = await self.gw.rounds.barrier(lambda: self._gather(spec))
            for k in range(1, slices):      # rounds of ingestion run between the slices
                parts += await self.gw.rounds.barrier(lambda k=k: self._submit_slice(plan, k, slices))
            if not self.gw.is_ray:
                dep, report = await self._learn_here(plan, version, parts, emit)
            else:
                dep, report = await self._learn_in_ray(plan, version, parts, emit)
            emit("deploy")
            mv = ModelVersion(name, version, plan.spec, dep, report)

            async def run():
                if epoch != self.gw.sequencer.epoch:
                    raise _engine_error("the server was reset while the model trained")
                if scheduled and name not in self.catalog:
                    return None, 1       # deleted while it retrained: stay deleted
                return report, await self._add_and_deploy(mv)
            out, slices = await self.gw.rounds.barrier(run)
            await self._finish_slices(name, slices)
            self._retrain_not_before.pop(name, None)
            return out

    async def _gather(self, spec):
        """Inside a barrier: plan the run and ask every shard for the first slice of its rows
        at the cut-off. -> (plan, version, parts, slices): parts are Ray refs (not fetched)
        or plain results; a large population comes in ``slices`` slices of users (by id
        hash), one barrier each, so that a shard never holds ingestion up for long."""
        from engine._models import merge_schemas, plan_training

        gw = self.gw
        now = gw.clock.for_op()
        schemas = await gw.shards.each("schema_summary")
        plan = plan_training(spec, gw.retention_ms, now, merge_schemas(list(schemas)),
                             gw.registry)
        version = self.catalog.next_version(plan.spec.name)
        most = max((int(s.get("users", 0)) for s in schemas), default=0)
        slices = max(1, -(-most // self.gw.config.model_slice_users))
        return plan, version, await self._submit_slice(plan, 0, slices), slices

    async def _submit_slice(self, plan, k: int, slices: int) -> list:
        gw = self.gw
        refs = [s.training_data(list(plan.features), plan.spec, plan.cutoff_ms, plan.now_ms,
                                False, (k, slices)) for s in gw.shards]
        if not gw.is_ray:
            refs = list(await asyncio.gather(*refs))
        return refs

    async def _learn_here(self, plan, version, parts, emit):
        """In-process shards: the same stages in a worker thread."""
        def learn():
            fitted = _fit_stage(plan, *parts)
            loop.call_soon_threadsafe(emit, "calibration")
            cal = _calibrate_stage(fitted)
            loop.call_soon_threadsafe(emit, "export")
            return _export_stage(cal, plan.spec.name, version, plan.features, plan.now_ms,
                                 plan.cutoff_ms)

        loop = asyncio.get_running_loop()
        emit("fit")
        return await asyncio.to_thread(learn)

    async def _learn_in_ray(self, plan, version, parts, emit):
        """Ray shards: the stages as Ray tasks chained by refs; each phase is announced when
        the previous stage has finished (waited for without fetching its result)."""
        stages = _ray_stages()
        emit("fit")
        fitted = stages["fit"].remote(plan, *parts)
        cal = stages["calibrate"].remote(fitted)
        out = stages["export"].remote(cal, plan.spec.name, version, plan.features,
                                      plan.now_ms, plan.cutoff_ms)
        try:
            await _wait_done(fitted)
            emit("calibration")
            await _wait_done(cal)
            emit("export")
            return await _wait_done(out, fetch=True)
        except Exception as exc:  # noqa: BLE001 - the stage's own error, unwrapped
            raise _unwrap(exc) from None

    # ------------------------------------------------------------------ deployment

    async def deploy(self, name: str, onnx: bytes, features) -> Any:
        """A user's own ONNX model with its feature expressions -> ModelReport."""
        from engine._models import validate_features
        from scoring.registry import ModelVersion
        from scoring.training import user_model

        async with self._name_locks[name]:
            features = validate_features(features, self.gw.retention_ms)
            version = self.catalog.next_version(name)
            now = self.gw.clock.for_op()
            dep, report = await asyncio.to_thread(user_model, name, version, bytes(onnx),
                                                  features, now)
            mv = ModelVersion(name, version, None, dep, report)

            async def run():
                return await self._add_and_deploy(mv)
            await self._finish_slices(name, await self.gw.rounds.barrier(run))
            return report

    async def _add_and_deploy(self, mv, save: bool = True) -> int:
        """Inside a barrier: save the version, deploy it on every shard, append its deltas.
        A large population is scored in slices: here only the first; -> the number of
        slices (``_update_slice`` does the others, one barrier each)."""
        from engine.durability import frames as F

        gw = self.gw
        if save:
            self.catalog.add(mv)   # on the loop: readers of the catalog never see it half-made
        most = max((int(st.get("users", 0)) for st in await gw.shards.each("schema_summary")),
                   default=0)
        slices = max(1, -(-most // self.gw.config.model_slice_users))
        deploy = gw.frame(F.MODEL_DEPLOY, (mv.name, int(mv.version), slices == 1))
        deploy.deployment = mv.deployment
        frames = [deploy]
        if slices > 1:
            frames.append(gw.frame(F.MODEL_UPDATE, (mv.name, (0, slices)), deploy.now_ms))
        frames[-1].rescore = self.next_rescore_part(deploy.now_ms)
        await gw.apply(*frames)
        self._deployed[mv.name] = int(mv.version)
        return slices

    async def _update_slice(self, name: str, k: int, slices: int) -> None:
        """Inside a barrier: slice ``k`` of every shard's users scored by the new version."""
        from engine.durability import frames as F

        await self.gw.apply(self.gw.frame(F.MODEL_UPDATE, (name, (k, slices))))

    async def _finish_slices(self, name: str, slices: int) -> None:
        """The other slices of a new version, one barrier each: rounds of ingestion run in
        between, so a million users are never scored in one pause."""
        for k in range(1, slices):
            await self.gw.rounds.barrier(lambda k=k: self._update_slice(name, k, slices))

    async def deploy_to_new_shards(self, clients: list) -> None:
        """Scaling, inside its barrier: new (empty) shards get every model before any
        segment (not logged: a snapshot follows every scaling)."""
        from engine._steps import Step

        now = self.gw.applier.last_now
        steps = [(Step.DEPLOY_MODEL, (dep, False), now) for dep in self._deployments()]
        if steps:
            await asyncio.gather(*[c.run(steps) for c in clients])

    def _deployments(self) -> list:
        reg = self.catalog.registry
        return [reg.get(name, v).deployment for name, v in sorted(self._deployed.items())]

    async def delete(self, name: str):
        """Forget a model and its versions -> its latest ModelReport. ModelInUse while a
        segment uses it."""
        from engine.durability import frames as F

        async def run():
            self.catalog.check_delete(name, self.gw.registry)
            await self.gw.apply(self.gw.frame(F.MODEL_DROP, name))
            self._deployed.pop(name, None)
            return self.catalog.remove(name)
        async with self._name_locks[name]:
            return await self.gw.rounds.barrier(run)


async def _wait_done(ref, fetch: bool = False):
    """Wait for a Ray ref in a helper thread (the event loop goes on); fetch its value only
    when asked, so large intermediate results stay in the object store."""
    import ray

    if fetch:
        return await asyncio.to_thread(ray.get, ref)
    await asyncio.to_thread(ray.wait, [ref], num_returns=1, timeout=None, fetch_local=False)
    return None


def _note_outcome(task: asyncio.Task) -> None:
    """A run whose caller went away: its error is logged rather than lost."""
    if not task.cancelled() and task.exception() is not None:
        log.info("model training ended with %s: %s", type(task.exception()).__name__,
                 task.exception())


def _engine_error(message: str):
    from engine.errors import EngineError

    return EngineError(message)
