"""The gateway's one ordered queue of operations, its rounds and its barriers.

* **Rounds.** Ingest, trait and clock operations waiting in the queue are taken together
  (up to ``flush_events`` events) into one *round*. Each operation, in order, is validated
  against the clock as it is before it (the same validation code as the embedded engine),
  becomes a frame (``engine.durability.frames``) and moves the clock; the round's frames are
  logged and sent to the shards, one call per shard (``_apply.FrameApplier``). Up to
  ``MAX_ROUNDS_IN_FLIGHT`` rounds are pipelined (Ray runs one caller's calls to an actor in
  submission order); deltas are sequenced strictly in operation order, and an operation is
  answered once its round is applied and its frames are durable.
* **Pieces.** A round is prepared in pieces with the event loop free between them (every
  ``YIELD_AFTER_NS`` of validation, then routing, then logging and sending), so a read waits
  for one piece, not for a whole round of 20,000 events (~4 ms of validation and ~5 ms of
  routing, logging and pickling). Nothing that a round reads or moves can change between its
  pieces: barriers, and the next round, run only from this loop, and the previous round's
  completion only publishes, records batch replies and answers.
* **Barriers.** Segment changes, reads, user deletion, models, snapshots and slot moves wait
  for the rounds in flight, then run alone.
* **Flushing.** A round leaves as soon as the shards can take it; while a previous round is
  still in flight it waits at most ``flush_interval_us`` for more operations, or until
  ``flush_events`` events are waiting, or until that round completes.
* **Bounds.** The queue holds at most ``max_queue_ops`` operations: one more is refused with
  RESOURCE_EXHAUSTED (:class:`Overloaded`) rather than growing without bound.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from engine.durability import frames as F
from engine.errors import EngineError, Overloaded, Unavailable

log = logging.getLogger("rtseg.gateway")

MAX_ROUNDS_IN_FLIGHT = 2
YIELD_AFTER_NS = 1_000_000      # preparing a round: the loop serves others after each ms of it
EVENTS, TRAITS, CLOCK, BARRIER = "events", "traits", "clock", "barrier"


@dataclass
class Op:
    kind: str                       # EVENTS | TRAITS | CLOCK | BARRIER
    payload: Any
    future: asyncio.Future
    n: int = 0                      # events, for the flush size
    batch_id: str = ""
    t0_ns: int = field(default_factory=time.perf_counter_ns)


class Rounds:
    """The queue and its dispatcher. ``prepare(op) -> Frame`` (from the gateway) validates one
    operation and moves the clock; ``result(op, frame)`` makes its reply."""

    def __init__(self, gateway, max_queue_ops: int):
        self.gw = gateway
        self.max_queue_ops = max_queue_ops
        self.queue: collections.deque[Op] = collections.deque()
        self._event = asyncio.Event()
        self._last: asyncio.Task | None = None
        self._in_flight = asyncio.Semaphore(MAX_ROUNDS_IN_FLIGHT)
        self.closed = False

    # ------------------------------------------------------------------ submitting

    async def submit(self, kind: str, payload: Any, n: int = 0, batch_id: str = ""):
        if self.closed:
            raise Unavailable("the server is shutting down")
        if len(self.queue) >= self.max_queue_ops:
            raise Overloaded(f"the gateway queue is full ({self.max_queue_ops} operations waiting); "
                             "retry with backoff (with a batch_id, a retry is never applied twice)")
        fut = asyncio.get_running_loop().create_future()
        self.queue.append(Op(kind, payload, fut, n, batch_id))
        self._event.set()
        return await fut

    async def barrier(self, fn: Callable[[], Awaitable[Any]]):
        return await self.submit(BARRIER, fn)

    def pending_ops(self) -> int:
        return len(self.queue)

    # ------------------------------------------------------------------ dispatching

    async def loop(self) -> None:
        flush_s = self.gw.config.flush_interval_us / 1e6
        flush_events = self.gw.config.flush_events
        while True:
            if not self.queue:
                self._event.clear()
                await self._event.wait()
                continue
            op = self.queue[0]
            if op.kind == BARRIER:
                self.queue.popleft()
                await self.drain()
                try:
                    result = await op.payload()
                    self.gw.timers_unknown()   # barriers may set timers (backfill, moves)
                except BaseException as exc:  # noqa: BLE001 - goes back to the caller
                    _settle(op, exc=exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                else:
                    _settle(op, result)
                continue
            # a round: wait for more work while the shards are busy anyway
            if (self._last is not None and not self._last.done()
                    and self._pending_events() < flush_events):
                deadline = time.monotonic() + flush_s
                while self._pending_events() < flush_events and not self._last.done():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._event.clear()
                    try:
                        await asyncio.wait_for(self._event.wait(), remaining)
                    except asyncio.TimeoutError:
                        break
            # a slot first, then the operations: whatever arrives while the rounds in flight
            # finish joins this round, so rounds grow with the load instead of queueing
            await self._in_flight.acquire()
            ops = self._take_round(flush_events)
            if not ops:                  # a barrier came first meanwhile
                self._in_flight.release()
                continue
            try:
                frames, owners = await self._frames(ops)
                pending = None
                if frames:                # in pieces, the loop serving reads between them
                    await asyncio.sleep(0)
                    routed = self.gw.applier.route(frames)
                    await asyncio.sleep(0)
                    pending = self.gw.applier.send(routed)
            except BaseException as exc:  # noqa: BLE001
                self._in_flight.release()
                for o in ops:
                    _settle(o, exc=exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            prev = self._last
            self._last = asyncio.ensure_future(self._complete(ops, frames, owners, pending, prev))
            self._last.add_done_callback(self._wake)   # a round waiting for it goes at once

    def _wake(self, _task: asyncio.Future) -> None:
        self._event.set()

    def _pending_events(self) -> int:
        total = 0
        for op in self.queue:
            if op.kind == BARRIER:
                break
            total += max(op.n, 1)
        return total

    def _take_round(self, flush_events: int) -> list[Op]:
        ops: list[Op] = []
        size = 0
        while self.queue and self.queue[0].kind != BARRIER:
            if ops and size + self.queue[0].n > flush_events:
                break
            op = self.queue.popleft()
            ops.append(op)
            size += op.n
        return ops

    async def _frames(self, ops: list[Op]) -> tuple[list[F.Frame], list[int]]:
        """Each operation -> its frame (or its error / a known batch's first reply)."""
        frames: list[F.Frame] = []
        owners: list[int] = []           # per op: frame index, or -1
        turn = time.perf_counter_ns()
        for op in ops:
            if time.perf_counter_ns() - turn > YIELD_AFTER_NS:
                await asyncio.sleep(0)
                turn = time.perf_counter_ns()
            try:
                frame = self.gw.prepare(op)
            except Exception as exc:  # noqa: BLE001 - fails this operation only
                self.gw.batches.abandon(op.batch_id)
                _settle(op, exc=exc)
                owners.append(-1)
                continue
            if frame is None:            # answered already (a retried batch id)
                owners.append(-1)
                continue
            owners.append(len(frames))
            frames.append(frame)
        return frames, owners

    async def _complete(self, ops, frames, owners, pending, prev) -> None:
        t0 = time.perf_counter_ns()
        try:
            if pending is not None:
                outcome = await _outcome(self.gw.applier, pending, prev)
            else:
                outcome = None
                if prev is not None:
                    await asyncio.wait([prev])
        finally:
            self._in_flight.release()
        if pending is not None:
            self.gw.round_latency.record_since(t0)
            if not isinstance(outcome, BaseException):   # ingest -> its deltas published
                for op, k in zip(ops, owners):
                    if k >= 0 and op.kind != CLOCK and k < len(pending.published) and pending.published[k]:
                        self.gw.delta_latency.record_since(op.t0_ns)
        for op, k in zip(ops, owners):
            if k < 0:
                continue
            if isinstance(outcome, BaseException):
                _settle(op, exc=_unavailable(outcome))
                continue
            _settle(op, self.gw.result(op, frames[k]))

    async def drain(self) -> None:
        if self._last is not None:
            try:
                await self._last
            except Exception:  # noqa: BLE001 - reported to the round's callers
                pass

    async def close(self, timeout_s: float = 5.0) -> None:
        self.closed = True
        if self._last is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._last), timeout_s)
            except Exception:  # noqa: BLE001
                pass
        while self.queue:
            _settle(self.queue.popleft(), exc=Unavailable("the server is shutting down"))


async def _outcome(applier, pending, prev):
    """Collect a round's results while the previous round completes, then publish its deltas
    (strictly in round order) -> None or the exception."""
    task = asyncio.ensure_future(applier.collect(pending))
    if prev is not None:
        await asyncio.wait([prev])
    try:
        await applier.publish(pending, await task)
        return None
    except BaseException as exc:  # noqa: BLE001
        return exc


def _unavailable(exc: BaseException) -> BaseException:
    """A round that failed after its frames were logged will be applied at recovery: say so."""
    if isinstance(exc, EngineError):
        return exc
    return Unavailable(f"the operation is logged and will be applied when the engine recovers "
                       f"({type(exc).__name__}: {exc}); retry with the same batch_id to learn its reply")


def _settle(op: Op, result: Any = None, exc: BaseException | None = None) -> None:
    if op.future.done():
        return
    if exc is not None:
        op.future.set_exception(exc)
    else:
        op.future.set_result(result)
