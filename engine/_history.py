"""Segment size history: every segment's size sampled on the engine clock and kept a while.

Sampling follows the engine's clock (the event clock in replays, the wall clock in wall mode),
never the machine's timer: when an operation moves ``now`` past the next multiple of
``interval_ms``, one sample of every segment is taken right after that operation and stamped
with the latest boundary passed, ``now // interval_ms * interval_ms``. A clock that jumps over
many intervals gives one sample (at the last boundary), not one per interval. The first
operation ever only sets the starting boundary. Because the decision depends on the frames'
clocks alone, replaying the log after a restart takes the same samples again.

Layout: one shared time axis (int64 per sampling round) and, per segment, its sizes as uint32
(uint64 once a size needs it) from the round it first existed in; so a sample costs 4 bytes
per segment, and 1,000 segments x 30 days x one a minute fit in ~170 MB at worst. Samples older
than ``retention_ms`` (relative to the newest) are dropped at each round; buffers grow by
doubling and shift their live part to the front instead of growing while half is dead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np


DEFAULT_INTERVAL = "60s"
DEFAULT_RETENTION = "30d"
HISTORY_PART = "history"
FORMAT = 1
_MIN_CAPACITY = 16
_U32_MAX = np.iinfo(np.uint32).max


@dataclass(frozen=True)
class SegmentHistory:
    """A segment's sampled sizes: ``samples`` are ``(time_ms, size)``, oldest first."""

    name: str
    samples: list[tuple[int, int]]
    interval_ms: int
    retention_ms: int


class _Buffer:
    """A growable 1-d array whose element ``i`` is round ``first + i``."""

    __slots__ = ("buf", "first", "n")

    def __init__(self, first: int, dtype, values: np.ndarray | None = None):
        self.first = first
        if values is None:
            self.buf = np.empty(_MIN_CAPACITY, dtype)
            self.n = 0
        else:
            self.buf = np.array(values, dtype)
            self.n = len(values)
            if len(self.buf) < _MIN_CAPACITY:
                self.buf = np.concatenate([self.buf, np.empty(_MIN_CAPACITY - len(self.buf), dtype)])

    def append(self, value, lo: int) -> None:
        """Add the next round's value; rounds before ``lo`` are no longer kept."""
        if self.n == len(self.buf):
            dead = min(max(0, lo - self.first), self.n)
            if dead * 2 >= self.n:             # half of it is dead: shift instead of growing
                self.buf[: self.n - dead] = self.buf[dead: self.n]
            else:
                grown = np.empty(2 * len(self.buf), self.buf.dtype)
                grown[: self.n - dead] = self.buf[dead: self.n]
                self.buf = grown
            self.first += dead
            self.n -= dead
        if self.buf.dtype == np.uint32 and value > _U32_MAX:
            self.buf = self.buf.astype(np.uint64)
        self.buf[self.n] = value
        self.n += 1

    def view(self, lo: int) -> np.ndarray:
        start = min(max(0, lo - self.first), self.n)
        return self.buf[start: self.n]

    @property
    def nbytes(self) -> int:
        return int(self.buf.nbytes)


class SizeHistory:
    """The sampled sizes of every segment of one engine (plain state, no clock of its own).

    ``note(now_ms)`` is called with each operation's clock and says whether a sample is due
    after it; ``record(boundary_ms, sizes)`` stores one; ``remove(name)`` forgets a deleted
    segment. ``interval_ms == 0`` turns sampling off."""

    def __init__(self, interval_ms: int, retention_ms: int):
        self.interval_ms = int(interval_ms)
        self.retention_ms = int(retention_ms)
        self.last_ms: int | None = None          # the boundary of the last sample (or the start)
        self._times = _Buffer(0, np.int64)
        self._hi = 0                             # next round
        self._lo = 0                             # oldest round kept
        self._series: dict[str, _Buffer] = {}

    @property
    def enabled(self) -> bool:
        return self.interval_ms > 0

    def _boundary(self, now_ms: int) -> int:
        return int(now_ms) // self.interval_ms * self.interval_ms

    def note(self, now_ms: int) -> int | None:
        """An operation ran at ``now_ms``: -> the boundary to sample at after it, or None.
        The first operation ever only fixes the starting boundary."""
        if not self.enabled:
            return None
        b = self._boundary(now_ms)
        if self.last_ms is None:
            self.last_ms = b
            return None
        return b if b > self.last_ms else None

    def is_due(self, now_ms: int) -> bool:
        """Without side effects: would an operation at ``now_ms`` take a sample?"""
        return (self.enabled and self.last_ms is not None
                and self._boundary(now_ms) > self.last_ms)

    def begin(self, boundary_ms: int) -> None:
        """A sample at ``boundary_ms`` is on its way (later operations compare with it)."""
        self.last_ms = max(self.last_ms or boundary_ms, int(boundary_ms))

    def record(self, boundary_ms: int, sizes: Mapping[str, int]) -> None:
        """One sampling round: ``sizes`` of every segment there is, at ``boundary_ms``."""
        boundary_ms = int(boundary_ms)
        self.begin(boundary_ms)
        r = self._hi
        self._hi += 1
        cutoff = boundary_ms - self.retention_ms
        times = self._times
        lo = self._lo
        live = times.view(lo)
        if len(live) and live[0] <= cutoff:
            lo += int(np.searchsorted(live, cutoff, side="right"))
        self._lo = lo
        times.append(boundary_ms, lo)
        for name, size in sizes.items():
            s = self._series.get(name)
            if s is None or s.first + s.n != r:      # new, or missed rounds: start again
                s = self._series[name] = _Buffer(r, np.uint32)
            s.append(int(size), lo)
        for name in [n for n, s in self._series.items() if s.first + s.n != r + 1]:
            del self._series[name]                   # not sampled: no longer a segment

    def remove(self, name: str) -> None:
        self._series.pop(name, None)

    def samples(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(times_ms int64, sizes) of a segment, oldest first; empty when never sampled."""
        s = self._series.get(name)
        if s is None:
            return np.empty(0, np.int64), np.empty(0, np.uint64)
        start = max(self._lo, s.first)
        sizes = s.view(start)
        times = self._times.view(start)[: len(sizes)]
        return times.copy(), sizes.astype(np.uint64)

    def view(self, name: str) -> SegmentHistory:
        times, sizes = self.samples(name)
        return SegmentHistory(name, list(zip(times.tolist(), sizes.tolist())),
                              self.interval_ms, self.retention_ms)

    def names(self) -> list[str]:
        return sorted(self._series)

    def memory(self) -> dict:
        series = sum(s.nbytes for s in self._series.values())
        kept = sum(len(s.view(self._lo)) for s in self._series.values())
        return {"bytes": series + self._times.nbytes, "samples": kept,
                "rounds": len(self._times.view(self._lo)), "segments": len(self._series)}

    # ------------------------------------------------------------------ snapshots

    def export(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(meta, arrays): copies, safe to write while sampling goes on."""
        from engine.kernels._strings import split_strings

        names = sorted(self._series)
        times = self._times.view(self._lo).copy()
        firsts, parts = [], []
        for n in names:
            s = self._series[n]
            start = max(self._lo, s.first)
            firsts.append(start - self._lo)
            parts.append(s.view(start).astype(np.uint64))
        col = split_strings(names)
        arrays = {"h_times": times,
                  "h_first": np.asarray(firsts, np.int64),
                  "h_sizes": np.concatenate(parts) if parts else np.empty(0, np.uint64),
                  "h_name_blob": col.blob, "h_name_offsets": col.offsets}
        meta = {"format": FORMAT, "last_ms": self.last_ms}
        return meta, arrays

    def restore(self, meta: dict, arrays: Mapping[str, np.ndarray]) -> None:
        if int(meta.get("format", 0)) != FORMAT:
            raise ValueError(f"history format {meta.get('format')!r} is not {FORMAT}")
        blob = np.asarray(arrays["h_name_blob"], np.uint8).tobytes()
        offsets = np.asarray(arrays["h_name_offsets"], np.int64)
        names = [blob[offsets[i]: offsets[i + 1]].decode() for i in range(len(offsets) - 1)]
        times = np.asarray(arrays["h_times"], np.int64)
        firsts = np.asarray(arrays["h_first"], np.int64)
        sizes = np.asarray(arrays["h_sizes"], np.uint64)
        self.last_ms = None if meta.get("last_ms") is None else int(meta["last_ms"])
        self._lo, self._hi = 0, len(times)
        self._times = _Buffer(0, np.int64, times)
        self._series = {}
        pos = 0
        for name, first in zip(names, firsts.tolist()):
            k = len(times) - first
            vals = sizes[pos: pos + k]
            pos += k
            dtype = np.uint64 if len(vals) and vals.max() > _U32_MAX else np.uint32
            self._series[name] = _Buffer(first, dtype, vals)


def new_history(interval: str | int, retention: str | int) -> SizeHistory:
    """From the user's settings (``0``/``off`` interval: no sampling)."""
    from engine._units import parse_duration_ms
    from engine.config import parse_interval_ms

    return SizeHistory(parse_interval_ms(interval, "history_interval"),
                       parse_duration_ms(retention, "history_retention"))


def write_part(history: SizeHistory, snapshot_tmp) -> tuple[dict, dict]:
    """Write the history as its own part of a snapshot -> (meta, part info)."""
    from engine.durability import snapshot as S

    meta, arrays = history.export()
    return meta, S.write_part(snapshot_tmp, HISTORY_PART, arrays)


def read_part(history: SizeHistory, snapshot_path, meta: dict | None) -> None:
    """Restore the history of a snapshot (none in it: an empty one, sampling from now)."""
    from engine.durability import snapshot as S

    if not meta:
        history.__init__(history.interval_ms, history.retention_ms)
        return
    history.restore(meta, S.read_part(snapshot_path, HISTORY_PART))


# ----------------------------------------------------------------------------- sizes

def core_sizes(core, names: Iterable[str]) -> dict[str, int]:
    """Every segment's size in one pass over the core's membership bits."""
    names = list(names)
    if not names:
        return {}
    from engine.kernels._counts import slot_counts

    member = core.member
    counts = np.zeros(member.shape[1] * 64, np.int64)
    slot_counts(member, int(core.nrows), counts)
    return {n: int(counts[core.slots[n]]) for n in names}


def segment_sizes(core, names: list[str]) -> list[int]:
    """The sizes of ``names`` on one core, in order (many at once: one pass over the bits)."""
    if len(names) > 8 and all(n in core.slots for n in names):
        sizes = core_sizes(core, names)
        return [sizes[n] for n in names]
    return [core.segment_size(n) for n in names]


# ----------------------------------------------------------------------------- the gateway

class GatewaySampler:
    """Size samples of a served engine, taken inside the rounds: when a frame's clock passes a
    boundary, every shard gets a ``Step.SIZES`` right after that frame's steps (in the same
    call as the rest of the round, so a round is never cut short for a sample), and the sizes
    are summed and recorded when the round is published, in log order."""

    def __init__(self, gateway):
        self.gw = gateway

    @property
    def history(self) -> SizeHistory:
        return self.gw.history

    def due(self, frames, k: int) -> tuple[int, list[str]] | None:
        """Frame ``k`` of ``frames`` (being started, in log order) -> (boundary, the segment
        names to count) when a sample is due right after it."""
        from engine.durability import frames as F

        h = self.history
        b = h.note(frames[k].now_ms)
        if b is None:
            return None
        h.begin(b)
        live = set(self.gw.registry.names())
        for f in frames[:k + 1]:              # definitions not published yet
            if f.op in (F.SEGMENT_CREATE, F.SEGMENT_REPLACE):
                live.add(f.payload.name)
            elif f.op == F.SEGMENT_DELETE:
                live.discard(f.payload)
        return b, sorted(live)

    def record(self, boundary: int, names: list[str], parts: list) -> None:
        """Published: the shards' sizes of one sample."""
        self.history.record(boundary, {n: int(sum(int(p[j]) for p in parts))
                                       for j, n in enumerate(names)})

    def published(self, frame) -> None:
        from engine.durability import frames as F

        if frame.op == F.SEGMENT_DELETE:
            self.history.remove(frame.payload)


def after_frame(history: SizeHistory, frame, core, registry) -> None:
    """The embedded engine, after applying ``frame`` to its one core (live and in replay)."""
    from engine.durability import frames as F

    if frame.op == F.SEGMENT_DELETE:
        history.remove(frame.payload)
    b = history.note(frame.now_ms)
    if b is not None:
        history.record(b, core_sizes(core, registry.names()))
