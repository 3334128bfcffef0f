"""ENTER/EXIT deltas: the columnar output of a shard and the sequenced, bounded delta log."""

from __future__ import annotations

import bisect
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ._packed import reduce_arrays, restore_arrays

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
CACHED_CHUNKS = 64          # newest chunks whose reader caches are kept (DeltaLog)
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


def _restore_deltas(segments, user_ids, bufs, layout) -> "DeltaBatch":
    kind, cause, at_ms = restore_arrays(bufs, layout)
    return DeltaBatch(segments, user_ids, kind, cause, at_ms)


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

    def __reduce_ex__(self, protocol):
        """Pickled (a shard's results to the gateway) with its arrays as raw buffers
        (``engine._packed``)."""
        arrays = [np.asarray(self.kind), np.asarray(self.cause), np.asarray(self.at_ms)]
        return _restore_deltas, (list(self.segments), list(self.user_ids), *reduce_arrays(arrays, protocol))

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

    Retained deltas are chunks (one per appended batch) with their first sequence numbers in
    a sorted list, so a reader finds its cursor by bisection: a subscriber that keeps up reads
    only the newest chunk or two, however many are retained. Each chunk also keeps, once
    asked, the positions of each segment's deltas, shared by every reader that filters by
    segment. Thread-safe; readers never block writers for longer than a slice copy.
    """

    def __init__(self, capacity: int = 1_000_000):
        if capacity < 1:
            raise ValueError("delta log capacity must be at least 1")
        self.capacity = capacity
        self._firsts: list[int] = []          # first sequence of each chunk, ascending
        self._batches: list[DeltaBatch] = []
        self._head = 0                        # chunks before it are dropped
        self._retained = 0
        self._next = 1
        self._lock = threading.Lock()
        self._cached: deque[DeltaBatch] = deque()   # chunks holding reader caches, oldest first

    @property
    def last_sequence(self) -> int:
        """Sequence of the newest delta (0 when none yet)."""
        return self._next - 1

    @property
    def first_retained(self) -> int:
        """Sequence of the oldest retained delta (``last_sequence + 1`` when none)."""
        with self._lock:
            return self._firsts[self._head] if self._head < len(self._firsts) else self._next

    def append(self, batch: DeltaBatch) -> tuple[int, int]:
        """Sequence the batch; returns (first, last) sequence numbers (last < first if empty)."""
        n = len(batch)
        with self._lock:
            first = self._next
            if n:
                self._firsts.append(first)
                self._batches.append(batch)
                self._next += n
                self._retained += n
                self._trim()
            return first, first + n - 1

    def _trim(self) -> None:
        while self._retained > self.capacity:
            h = self._head
            old = self._batches[h]
            excess = self._retained - self.capacity
            if len(old) <= excess:
                self._batches[h] = None       # type: ignore[call-overload]
                self._head += 1
                self._retained -= len(old)
            else:
                self._firsts[h] += excess
                self._batches[h] = old.tail(excess)
                self._retained -= excess
        if self._head > 1024 and self._head * 2 > len(self._firsts):
            del self._firsts[:self._head]
            del self._batches[:self._head]
            self._head = 0

    def read(self, after_sequence: int = 0, segments: set[str] | None = None,
             limit: int | None = None) -> list[Delta]:
        """Deltas with ``sequence > after_sequence`` (filtered by segment names when given).

        Raises SequenceTooOld when deltas right after ``after_sequence`` are no longer kept.
        """
        out: list[Delta] = []
        for first, batch, rows in self.read_parts(after_sequence, segments, limit):
            objs = self._objects_of(batch, first)
            if isinstance(rows, range):
                out.extend(objs[rows.start:rows.stop])
            else:
                out.extend([objs[j] for j in rows])
        return out

    def read_parts(self, after_sequence: int = 0, segments: set[str] | None = None,
                   limit: int | None = None, upto: int | None = None) -> list[tuple]:
        """What :meth:`read` returns, without making objects: ``(first sequence, chunk,
        positions)`` per chunk, positions ascending (a ``range`` or a list); at most ``limit``
        deltas, none with a sequence above ``upto``."""
        with self._lock:
            head, nxt = self._head, self._next
            first_kept = self._firsts[head] if head < len(self._firsts) else nxt
            if after_sequence + 1 < first_kept and after_sequence < nxt - 1:
                raise SequenceTooOld(
                    f"deltas after sequence {after_sequence} are no longer retained (the oldest kept is "
                    f"{first_kept}); re-read the segment's members and resume from sequence {first_kept - 1}")
            i = max(head, bisect.bisect_right(self._firsts, after_sequence, head) - 1)
            firsts = self._firsts[i:]
            batches = self._batches[i:]
        out: list[tuple] = []
        n = 0
        for first, batch in zip(firsts, batches):
            if first + len(batch) - 1 <= after_sequence:
                continue
            if upto is not None and first > upto:
                break
            start = max(0, after_sequence + 1 - first)
            stop = len(batch) if upto is None else min(len(batch), upto - first + 1)
            if segments:
                rows = _rows_of(batch, segments, start)
                self._note_cached(batch)
                if stop < len(batch):
                    rows = rows[:bisect.bisect_left(rows, stop)]
            else:
                rows = range(start, stop)
            if limit is not None:
                rows = rows[:limit - n]
            if len(rows):
                out.append((first, batch, rows))
                n += len(rows)
            if limit is not None and n >= limit:
                break
        return out

    def columns_of(self, batch: DeltaBatch) -> tuple[list, list, list]:
        """The chunk's kind, at_ms and cause as Python lists (made once, like its objects)."""
        cols = batch.__dict__.get("_lists")
        if cols is None:
            cols = batch.__dict__["_lists"] = (batch.kind.tolist(), batch.at_ms.tolist(),
                                               batch.cause.tolist())
            self._note_cached(batch)
        return cols

    def _objects_of(self, batch: DeltaBatch, first: int) -> list[Delta]:
        """The chunk's deltas as objects, made once and shared by every reader while the
        chunk is among the newest ``CACHED_CHUNKS`` read (readers that keep up read those)."""
        cached = batch.__dict__.get("_objects")
        if cached is not None and cached[0] == first:
            return cached[1]
        segs, users = batch.segments, batch.user_ids
        kind, at, cause = self.columns_of(batch)
        objs = [Delta(first + j, segs[j], users[j], KIND_NAMES[kind[j]], at[j],
                      CAUSE_NAMES.get(cause[j], "CAUSE_UNSPECIFIED")) for j in range(len(segs))]
        batch.__dict__["_objects"] = (first, objs)
        self._note_cached(batch)
        return objs

    def _note_cached(self, batch: DeltaBatch) -> None:
        with self._lock:
            if batch.__dict__.get("_cached_in") is self:
                return
            batch.__dict__["_cached_in"] = self
            self._cached.append(batch)
            while len(self._cached) > CACHED_CHUNKS:
                old = self._cached.popleft()
                for key in ("_objects", "_by_segment", "_lists", "_cached_in"):
                    old.__dict__.pop(key, None)

    # ------------------------------------------------------------------ snapshots

    def capture(self) -> tuple[int, int, list[DeltaBatch]]:
        """(first retained sequence, next sequence, the retained chunks): what an
        :meth:`export` would hold, without copying a delta. Chunks are never changed once
        appended (trimming replaces a chunk with its tail), so the caller may read them later,
        while the log goes on."""
        with self._lock:
            head, nxt = self._head, self._next
            first = self._firsts[head] if head < len(self._firsts) else nxt
            return first, nxt, self._batches[head:]

    def export(self) -> tuple[int, int, DeltaBatch]:
        """(first retained sequence, next sequence, every retained delta as one batch)."""
        first, nxt, batches = self.capture()
        return first, nxt, DeltaBatch.concat(batches)

    def restore(self, first: int, nxt: int, batch: DeltaBatch) -> None:
        """Start again from an :meth:`export` (recovery): sequences continue at ``nxt``."""
        if nxt - first != len(batch):
            raise ValueError(f"delta log snapshot: {len(batch)} deltas for sequences {first}..{nxt - 1}")
        with self._lock:
            self._firsts, self._batches, self._head = [], [], 0
            self._retained = 0
            self._next = first
        self.append(batch)
        with self._lock:
            self._next = nxt


def _rows_of(batch: DeltaBatch, segments: set[str], start: int) -> list[int]:
    """Positions (>= ``start``) of the deltas of ``segments`` in ``batch``, in order, from the
    batch's segment index (built once, on the first filtered read)."""
    index = batch.__dict__.get("_by_segment")
    if index is None:
        index = {}
        for j, seg in enumerate(batch.segments):
            index.setdefault(seg, []).append(j)
        batch.__dict__["_by_segment"] = index
    lists = [index[s] for s in segments if s in index]
    if not lists:
        return []
    rows = lists[0] if len(lists) == 1 else sorted(j for lst in lists for j in lst)
    if start:
        rows = rows[bisect.bisect_left(rows, start):]
    return rows
