"""ENTER/EXIT deltas: the columnar output of a shard and the sequenced, bounded delta log."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .errors import SequenceTooOld

ENTER, EXIT = 1, 2
KIND_NAMES = {ENTER: "ENTER", EXIT: "EXIT"}

# Cause numbers are the proto enum's numbers.
CAUSE_EVENT, CAUSE_TIME, CAUSE_TRAIT = 1, 2, 3
CAUSE_SEGMENT_CREATED, CAUSE_SEGMENT_DELETED, CAUSE_MODEL_UPDATED, CAUSE_USER_DELETED = 4, 5, 6, 7
CAUSE_NAMES = {
    CAUSE_EVENT: "EVENT", CAUSE_TIME: "TIME", CAUSE_TRAIT: "TRAIT",
    CAUSE_SEGMENT_CREATED: "SEGMENT_CREATED", CAUSE_SEGMENT_DELETED: "SEGMENT_DELETED",
    CAUSE_MODEL_UPDATED: "MODEL_UPDATED", CAUSE_USER_DELETED: "USER_DELETED",
}
# names -> numbers (the proto's Kind and Cause enums have these numbers)
KIND_NUMBERS = {name: number for number, name in KIND_NAMES.items()}
CAUSE_NUMBERS = {name: number for number, name in CAUSE_NAMES.items()}


@dataclass(frozen=True, slots=True)
class Delta:
    """One membership change. ``kind`` is "ENTER" or "EXIT"; ``cause`` the cause's name."""

    sequence: int
    segment: str
    user_id: str
    kind: str
    at_ms: int
    cause: str


@dataclass
class DeltaBatch:
    """The membership flips of one operation on one shard, in order, without sequence numbers."""

    segments: list[str] = field(default_factory=list)
    user_ids: list[str] = field(default_factory=list)
    kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    cause: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    at_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.user_ids)

    @staticmethod
    def concat(batches: list["DeltaBatch"]) -> "DeltaBatch":
        batches = [b for b in batches if len(b)]
        if not batches:
            return DeltaBatch()
        if len(batches) == 1:
            return batches[0]
        return DeltaBatch(
            segments=[s for b in batches for s in b.segments],
            user_ids=[u for b in batches for u in b.user_ids],
            kind=np.concatenate([b.kind for b in batches]),
            cause=np.concatenate([b.cause for b in batches]),
            at_ms=np.concatenate([b.at_ms for b in batches]),
        )

    def tail(self, start: int) -> "DeltaBatch":
        """The deltas from index ``start`` on."""
        return DeltaBatch(self.segments[start:], self.user_ids[start:], self.kind[start:],
                          self.cause[start:], self.at_ms[start:])


class DeltaLog:
    """Assigns global sequence numbers (1, 2, 3, ...) and keeps the newest ``capacity``
    deltas for readers that resume with ``after_sequence``.

    Thread-safe; readers never block writers for longer than a list copy.
    """

    def __init__(self, capacity: int = 1_000_000):
        if capacity < 1:
            raise ValueError("delta log capacity must be at least 1")
        self.capacity = capacity
        self._chunks: deque[tuple[int, DeltaBatch]] = deque()  # (first sequence, batch)
        self._retained = 0
        self._next = 1
        self._lock = threading.Lock()

    @property
    def last_sequence(self) -> int:
        """Sequence of the newest delta (0 when none yet)."""
        return self._next - 1

    @property
    def first_retained(self) -> int:
        """Sequence of the oldest retained delta (``last_sequence + 1`` when none)."""
        with self._lock:
            return self._chunks[0][0] if self._chunks else self._next

    def append(self, batch: DeltaBatch) -> tuple[int, int]:
        """Sequence the batch; returns (first, last) sequence numbers (last < first if empty)."""
        n = len(batch)
        with self._lock:
            first = self._next
            if n:
                self._chunks.append((first, batch))
                self._next += n
                self._retained += n
                while self._retained > self.capacity:
                    seq0, old = self._chunks[0]
                    excess = self._retained - self.capacity
                    if len(old) <= excess:
                        self._chunks.popleft()
                        self._retained -= len(old)
                    else:
                        self._chunks[0] = (seq0 + excess, old.tail(excess))
                        self._retained -= excess
            return first, first + n - 1

    def read(self, after_sequence: int = 0, segments: set[str] | None = None,
             limit: int | None = None) -> list[Delta]:
        """Deltas with ``sequence > after_sequence`` (filtered by segment names when given).

        Raises SequenceTooOld when deltas right after ``after_sequence`` are no longer kept.
        """
        with self._lock:
            chunks = list(self._chunks)
            first_kept = chunks[0][0] if chunks else self._next
        if after_sequence + 1 < first_kept and after_sequence < self._next - 1:
            raise SequenceTooOld(
                f"deltas after sequence {after_sequence} are no longer retained (the oldest kept is "
                f"{first_kept}); re-read the segment's members and resume from sequence {first_kept - 1}")
        out: list[Delta] = []
        for first, batch in chunks:
            if first + len(batch) - 1 <= after_sequence:
                continue
            start = max(0, after_sequence + 1 - first)
            for i in range(start, len(batch)):
                seg = batch.segments[i]
                if segments and seg not in segments:
                    continue
                out.append(Delta(first + i, seg, batch.user_ids[i], KIND_NAMES[int(batch.kind[i])],
                                 int(batch.at_ms[i]), CAUSE_NAMES.get(int(batch.cause[i]), "CAUSE_UNSPECIFIED")))
                if limit is not None and len(out) >= limit:
                    return out
        return out

    # ------------------------------------------------------------------ snapshots

    def export(self) -> tuple[int, int, DeltaBatch]:
        """(first retained sequence, next sequence, every retained delta as one batch)."""
        with self._lock:
            chunks = list(self._chunks)
            nxt = self._next
        first = chunks[0][0] if chunks else nxt
        return first, nxt, DeltaBatch.concat([b for _, b in chunks])

    def restore(self, first: int, nxt: int, batch: DeltaBatch) -> None:
        """Start again from an :meth:`export` (recovery): sequences continue at ``nxt``."""
        if nxt - first != len(batch):
            raise ValueError(f"delta log snapshot: {len(batch)} deltas for sequences {first}..{nxt - 1}")
        with self._lock:
            self._chunks.clear()
            self._retained = 0
            self._next = first
        self.append(batch)
        with self._lock:
            self._next = nxt
