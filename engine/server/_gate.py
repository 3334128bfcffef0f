"""ReadGate: reads of a shard that do not wait for a whole round.

A shard actor runs the gateway's rounds in its default thread; a round holds many steps (one
per frame) and can take a while under saturating ingest. Reads (``GetUser``, ``GetStats``)
run in a second thread of the actor (the Ray concurrency group ``reads``) and go in *between
two steps*: the round takes the gate's lock for each step and, before the next one, hands the
lock to any reader waiting. So a read waits for at most one step, and never sees a step half
applied. While reads come, a large events step goes in parts of users (``ShardCore.
apply_events_in_parts``), and a read waits for at most one part: it sees each user either
before or after the step. Every other method that changes the shard's state holds the lock
for its whole run.

A long operation that only reads the state but must see it unchanged from start to end (a
snapshot's copy, ``ShardHost.snapshot_part``) holds ``writers_paused`` for its whole run and
the lock for each of its pieces (``piece``): no step runs until it ends, reads go in between
two pieces.

Handing over is explicit because ``threading.Lock`` is not fair: a writer that releases it and
takes it again at once would starve a reader that is woken in between.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

HANDOVER_TIMEOUT_S = 0.5      # a writer never waits longer than this for readers to take over


class ReadGate:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._writers = threading.Lock()   # held by every writer, or by ``writers_paused``
        self._cv = threading.Condition(threading.Lock())
        self._waiting = 0
        self.last_read_s = -1e9          # time.monotonic() of the last read's arrival

    def reads_lately(self, within_s: float) -> bool:
        """Whether a read came in the last ``within_s`` seconds (or is waiting now)."""
        return self._waiting > 0 or time.monotonic() - self.last_read_s < within_s

    @contextmanager
    def writing(self):
        """One step (or a whole method) that changes the state."""
        with self._writers, self._lock:
            yield

    @contextmanager
    def writers_paused(self):
        """No writer runs until this ends; reads may go in between two of its pieces
        (``piece``)."""
        with self._writers:
            yield

    @contextmanager
    def piece(self):
        """One piece of a ``writers_paused`` operation (readers waiting go first)."""
        self.let_readers_in()
        with self._lock:
            yield

    def let_readers_in(self) -> None:
        """A writer between two steps, not holding the lock: readers waiting go first."""
        if self._waiting:
            with self._cv:
                self._cv.wait_for(lambda: self._waiting == 0, HANDOVER_TIMEOUT_S)

    @contextmanager
    def reading(self):
        """A read: the state as it is between two steps."""
        with self._cv:
            self._waiting += 1
            self.last_read_s = time.monotonic()
        try:
            self._lock.acquire()
        finally:
            with self._cv:
                self._waiting -= 1
                self._cv.notify_all()
        try:
            yield
        finally:
            self._lock.release()
