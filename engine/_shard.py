"""ShardCore: all state and all work of one shard's users, in numpy arrays and Numba kernels.

It has no clock of its own: every call is given ``now_ms`` by its owner (the embedded
``Engine`` or the gateway), so several shards can be kept at one global ``now``. It runs
without Ray; the Ray ``ShardActor`` is a thin shell around it.

Per user row: ``known`` flag, event-list headers per type, trait values, membership bits, a
timer in levels (``timer``/``tnext``/``tmask``: the next possible time-driven changes, and
which segments each may change; see ``kernels._eval._run``) and, per block of 1024 rows, the
timers' minimum.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from . import _arena
from . import _values as V
from ._batch import EventColumns, TraitColumns
from ._deltas import (CAUSE_EVENT, CAUSE_SEGMENT_CREATED, CAUSE_SEGMENT_DELETED, CAUSE_TIME,
                      CAUSE_TRAIT, CAUSE_USER_DELETED, DeltaBatch)
from ._plan import Plan, build_plan
from ._segments import SegmentDef, topological_order
from ._shard_models import ShardModels
from ._shard_rfm import ShardRfm
from .errors import UnknownSegment
from .kernels import _eval as KE
from .kernels import _store as KS
from .kernels._strings import NUM_SLOTS, StringColumn, StringTable, split_strings

INF_MS = KE.INF_MS
ALL_SEGMENTS = np.uint64(0xFFFF_FFFF_FFFF_FFFF)   # a ``tmask`` naming every segment
TBLOCK_SHIFT = 10
VALUE_COLUMN = "value"
_NULL_BITS = int(V.NULL_BITS)
EXPORT_PIECE_ROWS = 16_384   # users' events of one type per piece of ``export_steps`` (~2-4 ms)
_EMPTY_I64 = np.zeros(0, np.int64)
_EMPTY_U64 = np.zeros(0, np.uint64)


def canonical_order(seg_rank: np.ndarray, rows: np.ndarray, users: StringTable) -> np.ndarray:
    """The order of one step's deltas: by segment (dependencies first), then by the FNV-1a
    64 hash of the user id, then by the id. It depends on nothing but the deltas themselves
    (not on rows, shards or history), so a replay after a restore from a snapshot, or the
    same step on any number of shards merged, gives the same sequence numbers."""
    if len(rows) <= 1:
        return np.arange(len(rows))
    h = users.hashes()[rows]
    order = np.lexsort((h, seg_rank))
    hs, ss = h[order], seg_rank[order]
    ties = (hs[1:] == hs[:-1]) & (ss[1:] == ss[:-1])
    if ties.any() and np.any(rows[order][1:][ties] != rows[order][:-1][ties]):
        ids = np.asarray(users.gather(rows), dtype=object)   # a 64-bit collision: by id
        order = np.lexsort((ids, h, seg_rank))
    return order


_NO_FLIPS = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, np.int8))


@dataclass
class _Staged:
    """A batch ready for ``ShardCore._append_events`` (per event: row, type id, time, cells)."""
    rows: np.ndarray
    tids: np.ndarray
    ts: np.ndarray
    vals: np.ndarray
    src: np.ndarray          # (type, arena column) -> column of ``vals`` (SRC_NULL: none)
    cutoff: float


def run_steps(steps, each=None):
    """Drive a generator of steps (``export_steps``) to its end -> what it returns; with
    ``each``, every step runs inside the context manager ``each()`` makes (a lock's)."""
    while True:
        with each() if each is not None else contextlib.nullcontext():
            try:
                next(steps)
            except StopIteration as done:
                return done.value


def _parts_of_due(due: np.ndarray, rows: np.ndarray, parts: list) -> np.ndarray:
    """Per due row: the part that holds its user's events, or the last part (no events)."""
    last = len(parts) - 1
    part_of_event = np.empty(len(rows), np.int64)
    for k, sel in enumerate(parts):
        part_of_event[sel] = k
    order = np.argsort(rows, kind="stable")
    srows = rows[order]
    at = np.minimum(np.searchsorted(srows, due), max(len(srows) - 1, 0))
    hit = srows[at] == due if len(srows) else np.zeros(len(due), np.bool_)
    return np.where(hit, part_of_event[order][at], last)


def _user_parts(codes: np.ndarray, part_events: int) -> list[np.ndarray]:
    """A batch's events (``codes``: each event's user, as codes of its user column) -> index
    arrays of parts of about ``part_events`` events, each user's events all in one part (in
    their order)."""
    counts = np.bincount(codes)
    part_of_user = (np.cumsum(counts) - counts) // max(part_events, 1)
    part = part_of_user[codes]
    order = np.argsort(part, kind="stable")
    bounds = np.flatnonzero(np.diff(part[order])) + 1
    return np.split(order, bounds)


class ShardCore(ShardModels, ShardRfm):
    """One shard's users: events, traits, segment membership and timers."""

    def __init__(self, retention_ms: int, max_events_per_type: int = 4096, *, initial_rows: int = 1024):
        if not 1 <= max_events_per_type <= 4096:
            raise ValueError("max_events_per_type must be between 1 and 4096")
        self.retention_ms = int(retention_ms)
        self.max_per = int(max_events_per_type)
        self.users = StringTable(capacity=initial_rows)
        self.strings = StringTable(capacity=1024)
        # event types
        self.type_ids: dict[str, int] = {}
        self.type_names: list[str] = []
        self.type_cols: list[dict[str, int]] = []      # per type: property -> arena column
        self._tcap = 2
        self.width = np.ones(self._tcap, np.int64)      # words per event of each type
        self.arena = np.empty(1 << 16, np.float64)      # every event of every type
        self.astate = np.zeros(2, np.int64)             # [bump, used] in words
        self.free = np.full((self._tcap, len(KS.CAPS)), -1, np.int64)  # free-list heads
        # traits
        self.trait_ids: dict[str, int] = {}
        self.trait_names: list[str] = []
        self._ccap = 4
        # segments
        self.defs: dict[str, SegmentDef] = {}
        self.slots: dict[str, int] = {}
        self._wcap = 1
        self.plan: Plan = Plan.empty()
        self._init_models()
        self._init_rfm()
        # per-row state
        self._rcap = 0
        self._alloc_rows(max(initial_rows, 1024))
        self.counters = np.zeros(2, np.int64)  # dropped at the per-type limit, events stored
        self.events_accepted = 0
        self._last_compact_ms = None

    # ------------------------------------------------------------------ per-row arrays
    def _alloc_rows(self, cap: int) -> None:
        old = self._rcap
        n = min(old, cap)

        def grow(a, shape, fill, dtype):
            b = np.full(shape, fill, dtype=dtype)
            if a is not None and n:
                b[:n, ...] = a[:n, ...] if a.ndim == 1 else a[:n, : a.shape[1]]
            return b

        g = lambda name: getattr(self, name, None)
        self.known = grow(g("known"), cap, False, np.bool_)
        self.h = grow(g("h"), (cap, self._tcap), KS.NO_BLOCK, np.int64)
        self.traits = grow(g("traits"), (cap, self._ccap), V.NULL, np.float64)
        self.member = grow(g("member"), (cap, self._wcap), 0, np.uint64)
        self.timer = grow(g("timer"), cap, INF_MS, np.int64)
        levels = KE.TIMER_LEVELS - 1
        self.tnext = grow(g("tnext"), (cap, levels), INF_MS, np.int64)
        self.tmask = grow(g("tmask"), (cap, levels), 0, np.uint64)
        self.tmask[n:, 0] = ALL_SEGMENTS
        nb = (cap >> TBLOCK_SHIFT) + 1
        tb = np.full(nb, INF_MS, np.int64)
        if g("tblock") is not None:
            tb[: len(self.tblock)] = self.tblock[:nb]
        self.tblock = tb
        self._pos = np.full(cap, -1, np.int32)   # scratch of _touched
        self._rcap = cap

    def _ensure_rows(self, n: int) -> None:
        if n > self._rcap:
            cap = self._rcap
            while cap < n:
                cap += cap // 2
            self._alloc_rows(cap)

    def _widen(self, name: str, new_cols: int, fill, dtype) -> None:
        a = getattr(self, name)
        b = np.full((a.shape[0], new_cols), fill, dtype=dtype)
        b[:, : a.shape[1]] = a
        setattr(self, name, b)

    @property
    def nrows(self) -> int:
        return len(self.users)

    # ------------------------------------------------------------------ schema (ShardSchema)
    def type_id(self, name: str) -> int:
        t = self.type_ids.get(name)
        if t is not None:
            return t
        t = len(self.type_names)
        if t >= self._tcap:
            cap = self._tcap + 2  # types are few: grow headers (8 bytes per user each) slowly
            self._widen("h", cap, KS.NO_BLOCK, np.int64)
            self.free = np.concatenate([self.free, np.full((cap - self._tcap, len(KS.CAPS)), -1, np.int64)])
            self.width = np.concatenate([self.width, np.ones(cap - self._tcap, np.int64)])
            self._tcap = cap
        self.type_ids[name] = t
        self.type_names.append(name)
        self.type_cols.append({})
        return t

    def column(self, t: int, prop: str) -> int:
        cols = self.type_cols[t]
        c = cols.get(prop)
        if c is not None:
            return c
        c = int(self.width[t])
        new_width = self.width.copy()
        new_width[t] += 1
        if np.any(self.h[: self.nrows, t] != KS.NO_BLOCK):
            fill = np.full(self._tcap, V.NULL, np.float64)
            fill[t] = 0.0 if prop == VALUE_COLUMN else V.NULL
            self._compact(new_width, fill)
        else:
            # free blocks of this type were sized for the old width: abandon them (the next
            # compaction reclaims the space)
            self.free[t, :] = -1
        self.width = new_width
        cols[prop] = c
        return c

    def trait_col(self, name: str) -> int:
        c = self.trait_ids.get(name)
        if c is not None:
            return c
        c = len(self.trait_names)
        if c >= self._ccap:
            self._ccap += 2  # trait columns cost 8 bytes per user each: grow them slowly
            self._widen("traits", self._ccap, V.NULL, np.float64)
        self.trait_ids[name] = c
        self.trait_names.append(name)
        return c

    def string_code(self, s: str) -> int:
        return self.strings.intern_one(s)

    # ------------------------------------------------------------------ ingestion
    def _rows_for(self, users: StringColumn) -> np.ndarray:
        codes = self.users.intern(users)
        self._ensure_rows(len(self.users))
        return codes[users.codes]

    def apply_events(self, cols: EventColumns, now_ms: int) -> DeltaBatch:
        """Store a validated batch and re-evaluate what it touched, at ``now_ms``."""
        return self._apply_whole(cols, now_ms)

    def _apply_whole(self, cols: EventColumns, now_ms: int) -> DeltaBatch:
        if len(cols) == 0:
            return self.advance(now_ms)
        staged = self._stage_events(cols, now_ms)
        rows, tids = self._append_events(staged)
        # scores first, so that score() segments move in the same evaluation as the event
        srows, smask = self._score_after_events(rows, tids, now_ms)
        delta = self._evaluate(rows, tids, srows, smask, now_ms, CAUSE_EVENT)
        self._maybe_compact(now_ms)
        return delta

    def apply_events_in_parts(self, cols: EventColumns, now_ms: int, part_events: int):
        """``apply_events(cols, now_ms)`` in parts of about ``part_events`` events whose users
        are disjoint: a generator that applies one part per ``next()`` and returns the step's
        DeltaBatch (``StopIteration.value``), so that the caller can let reads in between two
        parts (``server/_actor.py``).

        The result and the state are exactly ``apply_events``': the batch's users get their
        rows and its types and properties their arena columns before the first part, as in
        one step; every user is evaluated once, in the part that holds all of its events,
        with its timer if that is due (the due timers are taken once, before the first part;
        those of users without events go with the last part); the retention sweep runs after
        the last part. A read between two parts sees each user either as before the step or
        as after it."""
        n = len(cols)
        if n <= part_events or not len(self.plan.names):
            return self._apply_whole(cols, now_ms)
        parts = _user_parts(cols.user.codes, part_events)
        if len(parts) == 1:
            return self._apply_whole(cols, now_ms)
        staged = self._stage_events(cols, now_ms)
        due = KE.collect_due(self, TBLOCK_SHIFT, now_ms)
        due_part = _parts_of_due(due, staged.rows, parts)
        yield                     # staging alone: a read waits for it or for one part
        flips = []
        for k, sel in enumerate(parts):
            rows, tids = self._append_events(staged, sel)
            srows, smask = self._score_after_events(rows, tids, now_ms)
            flips.append(self._evaluate(rows, tids, srows, smask, now_ms, CAUSE_EVENT,
                                        due=due[due_part == k], flips_only=True))
            if k < len(parts) - 1:
                yield
        self._maybe_compact(now_ms)
        rows, plan_idx, kinds, causes = (np.concatenate([f[j] for f in flips]) for j in range(4))
        if not len(rows):
            return DeltaBatch()
        return self._deltas(rows, plan_idx, kinds, causes, now_ms)

    def _stage_events(self, cols: EventColumns, now_ms: int) -> "_Staged":
        """A validated batch made ready to append: its users' rows (new users get theirs),
        its types' ids, its values and properties as arena cells (new arena columns made)."""
        n = len(cols)
        rows = self._rows_for(cols.user)
        tmap = np.array([self.type_id(u) for u in cols.type.uniques()], dtype=np.int64)
        tids = tmap[cols.type.codes]
        names = list(cols.props)
        vals = np.empty((n, 1 + len(names)), np.float64)
        vals[:, 0] = cols.value
        for j, name in enumerate(names):
            vals[:, 1 + j] = cols.props[name]
        if len(cols.prop_strings) or cols.prop_strings.n_unique:
            mapping = self.strings.intern(cols.prop_strings)
            KS._remap_strings(vals.view(np.int64), np.arange(1, 1 + len(names), dtype=np.int64),
                              mapping, int(V.STR_TAG), int(V.TAG_MASK), int(V.PAYLOAD_MASK))
        # the distinct types of a batch by counting (a handful of types: much cheaper than a
        # hash or a sort over every event)
        ntypes = len(self.type_names)
        present_types = np.flatnonzero(np.bincount(tids, minlength=ntypes))
        # arena columns: the value column when a type gets a non-zero value, a property column
        # the first time a type carries that property
        nz = np.flatnonzero(np.bincount(tids, weights=(cols.value != 0.0), minlength=ntypes))
        for t in nz.tolist():
            self.column(t, VALUE_COLUMN)
        for j, name in enumerate(names):
            col = cols.props[name]
            bits = col.view(np.int64)
            present = ~(np.isnan(col) & ((bits & V.TAG_MASK) != V.STR_TAG) & ((bits & V.TAG_MASK) != V.BOOL_TAG))
            for t in np.flatnonzero(np.bincount(tids, weights=present, minlength=ntypes)).tolist():
                self.column(t, name)
        width = max((len(c) + 1 for c in self.type_cols), default=1)
        src = np.full((self._tcap, width), KS.SRC_NULL, np.int64)
        batch_col = {name: 1 + j for j, name in enumerate(names)}
        for t in present_types.tolist():
            for prop, c in self.type_cols[t].items():
                if prop == VALUE_COLUMN:
                    src[t, c] = 0
                else:
                    src[t, c] = batch_col.get(prop, KS.SRC_NULL)
        ts = np.ascontiguousarray(cols.timestamp_ms, dtype=np.int64)
        return _Staged(rows, tids, ts, vals, src, float(now_ms - self.retention_ms))

    def _append_events(self, st: "_Staged", sel: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Append the staged events (those at ``sel``, in order: all by default) -> (each
        event's row, each event's type id)."""
        if sel is None:
            rows, tids, ts, vals = st.rows, st.tids, st.ts, st.vals
        else:
            rows, tids, ts, vals = st.rows[sel], st.tids[sel], st.ts[sel], st.vals[sel]
        n = len(rows)
        i = 0
        while True:
            i, need = KS._append(i, rows, tids, ts, vals, st.src, self.width, self.arena, self.astate,
                                 self.free, self.h, KS.CAPS, st.cutoff, self.max_per, self.counters)
            if i >= n:
                break
            self._grow_arena(int(need))
        self.events_accepted += n
        return rows, tids

    def apply_traits(self, cols: TraitColumns, now_ms: int) -> DeltaBatch:
        """Set/unset traits (last update in the batch wins) and re-evaluate."""
        n = len(cols)
        if n == 0:
            return self.advance(now_ms)
        rows = self._rows_for(cols.user)
        mapping = self.strings.intern(cols.strings) if cols.strings.n_unique else _EMPTY_I64
        tmask = np.zeros(n, np.uint64)
        for name, (boxed, given) in cols.traits.items():
            c = self.trait_col(name)
            vals = boxed.copy()
            if len(mapping):
                bits = vals.view(np.int64)
                is_str = (bits & V.TAG_MASK) == V.STR_TAG
                bits[is_str] = V.STR_TAG | mapping[bits[is_str] & V.PAYLOAD_MASK]
            idx = np.flatnonzero(given)
            if len(idx) == 0:
                continue
            # the last update of a user in this batch wins
            r = rows[idx]
            _, last = np.unique(r[::-1], return_index=True)
            keep = idx[len(idx) - 1 - last]
            self.traits[rows[keep], c] = vals[keep]
            tmask[idx] |= np.uint64(1 << (c & 63))
        srows, smask = self._score_after_traits(rows, tmask, now_ms)
        if len(srows):
            rows, tmask = np.concatenate([rows, srows]), np.concatenate([tmask, smask])
        return self._evaluate(_EMPTY_I64, _EMPTY_I64, rows, tmask, now_ms, CAUSE_TRAIT)

    def advance(self, now_ms: int) -> DeltaBatch:
        """Fire the timers due at ``now_ms``."""
        return self._evaluate(_EMPTY_I64, _EMPTY_I64, _EMPTY_I64, _EMPTY_U64, now_ms, CAUSE_TIME)

    def _grow_arena(self, need: int) -> None:
        """Room for ``need`` more words past the bump pointer (1.5x at least): a large arena
        is remapped in place with its new pages untouched (engine/_arena.py)."""
        bump = int(self.astate[0])
        size = max(self.arena.shape[0] * 3 // 2, bump + need)
        held = [self.arena]
        self.arena = None
        try:
            self.arena = _arena.grown(held, bump, size)
        finally:
            if self.arena is None:          # it failed: the old arena, as it was
                self.arena = held[0]

    def _compact(self, new_width=None, fill=None, cutoff: float = -np.inf) -> None:
        """Rewrite the arena without holes and expired events (and with wider rows for the
        types whose ``new_width`` grew, their new column set to ``fill``)."""
        nt = len(self.type_names)
        if new_width is None:
            new_width = self.width
            fill = np.zeros(self._tcap, np.float64)
            # Rows as wide as before: every list goes to a class no larger than its block's,
            # and every block lies below the bump pointer, so that bounds the rewrite without
            # a pass to size it (a sweep's sizing pass was a quarter of its time). The rest of
            # the reservation is address space that is never touched (engine/_arena.py).
            size = int(self.astate[0])
        else:
            size = KS._compact_size(self.arena, self.nrows, nt, self.width, new_width, self.h, KS.CAPS, cutoff)
        new = _arena.allocate(max(size + size // 4, 1 << 16))
        used = KS._compact(self.arena, new, self.nrows, nt, self.width, new_width, fill, self.h, KS.CAPS, cutoff)
        self.arena = new
        self.astate[0] = used
        self.astate[1] = used
        self.free[:] = -1

    def _maybe_compact(self, now_ms: int) -> None:
        """Rewrite the arena when half of it is holes, and drop expired events once per
        eighth of the retention (so idle users' old events are freed)."""
        if self._last_compact_ms is None:
            self._last_compact_ms = now_ms
        bump, used = int(self.astate[0]), int(self.astate[1])
        sweep = now_ms - self._last_compact_ms >= self.retention_ms // 8
        if sweep or (bump > (1 << 20) and (bump - used) * 2 > bump):
            self._last_compact_ms = now_ms
            self._compact(cutoff=float(now_ms - self.retention_ms))

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, ev_rows, tids, tr_rows, tmask, now_ms, cause, order=None, force=None,
                  rows=None, dry=False, due=None, flips_only=False):
        """One kernel call: merge touched and due rows (``due``: the rows whose timer fired,
        collected here when None), evaluate, turn flips into deltas (``flips_only``: into
        the arrays (rows, plan indices, kinds, causes) that ``_deltas`` takes)."""
        if rows is None:
            if due is None:
                due = KE.collect_due(self, TBLOCK_SHIFT, now_ms) if len(self.plan.names) else _EMPTY_I64
            rows, evm, trm, isdue, isnew = KE.touched_rows(ev_rows, tids, tr_rows, tmask, due, self.known,
                                                           self._pos)
            self.known[rows] = True
        else:
            m = len(rows)
            evm = np.zeros(m, np.uint64)
            trm = np.zeros(m, np.uint64)
            isdue = np.zeros(m, np.bool_)
            isnew = np.zeros(m, np.bool_)
        if not len(self.plan.names) or not len(rows):
            return _EMPTY_I64 if dry else (_NO_FLIPS if flips_only else DeltaBatch())
        if order is None:
            order = np.arange(len(self.plan.names), dtype=np.int64)
            force = np.zeros(len(order), np.bool_)
        fi, fs, fk = KE.run_segments(self.plan, self, rows, evm, trm, isnew, isdue, order, force, now_ms,
                                     TBLOCK_SHIFT, dry)
        if dry:
            return rows[fi]
        if not len(fi):
            return _NO_FLIPS if flips_only else DeltaBatch()
        if cause == CAUSE_EVENT:
            causes = np.where(evm[fi] != 0, CAUSE_EVENT, CAUSE_TIME).astype(np.int8)
        elif cause == CAUSE_TRAIT:
            # every user of the trait batch counts, even one whose update set nothing
            causes = np.where(np.isin(rows[fi], tr_rows), CAUSE_TRAIT, CAUSE_TIME).astype(np.int8)
        else:
            causes = np.full(len(fi), cause, np.int8)
        if flips_only:
            return rows[fi], np.asarray(fs, np.int64), np.asarray(fk, np.int8), causes
        return self._deltas(rows[fi], fs, fk, causes, now_ms)

    def _deltas(self, rows, plan_idx, kinds, causes, now_ms) -> DeltaBatch:
        """Flips -> deltas in the canonical order (``canonical_order``)."""
        names = self.plan.names
        order = canonical_order(plan_idx, rows, self.users)
        rows, plan_idx, kinds, causes = rows[order], plan_idx[order], kinds[order], causes[order]
        return DeltaBatch(
            segments=[names[s] for s in plan_idx.tolist()],
            user_ids=self.users.gather(rows),
            kind=np.asarray(kinds, np.int8),
            cause=np.asarray(causes, np.int8),
            at_ms=np.full(len(rows), now_ms, np.int64),
        )

    def _known_rows(self) -> np.ndarray:
        return np.flatnonzero(self.known[: self.nrows]).astype(np.int64)

    # ------------------------------------------------------------------ segments
    def _rebuild(self, extra: SegmentDef | None = None, extra_slot: int = -1) -> Plan:
        defs = list(self.defs.values()) + ([extra] if extra is not None else [])
        ordered = topological_order(defs)

        def slot_of(name):
            if extra is not None and name == extra.name:
                return extra_slot
            return self.slots[name]

        return build_plan(ordered, self, slot_of)

    def _free_slot(self) -> int:
        used = set(self.slots.values())
        s = 0
        while s in used:
            s += 1
        if (s >> 6) >= self._wcap:
            self._wcap *= 2
            self._widen("member", self._wcap, 0, np.uint64)
        return s

    def create_segment(self, defn: SegmentDef, now_ms: int) -> DeltaBatch:
        """Start maintaining a segment: backfill over every known user (ENTER deltas)."""
        slot = self._free_slot()
        self.member[:, slot >> 6] &= ~np.uint64(1 << (slot & 63))
        self.defs[defn.name] = defn
        self.slots[defn.name] = slot
        try:
            self.plan = self._rebuild()
        except Exception:
            del self.defs[defn.name]
            del self.slots[defn.name]
            self.plan = self._rebuild()
            raise
        self._timers_name_all()
        idx = self.plan.index(defn.name)
        return self._evaluate(None, None, None, None, now_ms, CAUSE_SEGMENT_CREATED,
                              order=np.array([idx], np.int64), force=np.ones(1, np.bool_),
                              rows=self._known_rows())

    def replace_segment(self, defn: SegmentDef, now_ms: int) -> DeltaBatch:
        """New expression for an existing segment: deltas for the difference (and for the
        segments that reference it)."""
        if defn.name not in self.defs:
            raise UnknownSegment(f"segment {defn.name!r} does not exist")
        old = self.defs[defn.name]
        self.defs[defn.name] = defn
        try:
            self.plan = self._rebuild()
        except Exception:
            self.defs[defn.name] = old
            self.plan = self._rebuild()
            raise
        self._timers_name_all()
        idx = self.plan.index(defn.name)
        dependents = self._dependents(defn.name)
        order = [idx] + [self.plan.index(d) for d in self.plan.names if d in dependents]
        force = np.zeros(len(order), np.bool_)
        force[0] = True
        return self._evaluate(None, None, None, None, now_ms, CAUSE_SEGMENT_CREATED,
                              order=np.array(order, np.int64), force=force, rows=self._known_rows())

    def _timers_name_all(self, rows=None) -> None:
        """Let the next firing of these rows' timers (all rows by default) evaluate every
        time-dependent segment: always a valid two-level timer, used where the segments or
        the rows' owners change."""
        sel = slice(None) if rows is None else rows
        self.tmask[sel, 0] = ALL_SEGMENTS
        self.tmask[sel, 1:] = 0
        self.tnext[sel] = INF_MS

    def _dependents(self, name: str) -> set[str]:
        out: set[str] = set()
        frontier = {name}
        while frontier:
            nxt = {d.name for d in self.defs.values() if frontier & set(d.deps)} - out
            out |= nxt
            frontier = nxt
        return out

    def delete_segment(self, name: str, now_ms: int) -> DeltaBatch:
        """Stop maintaining a segment: EXIT for each member."""
        if name not in self.defs:
            raise UnknownSegment(f"segment {name!r} does not exist")
        rows = self._member_rows(name)
        rows = rows[canonical_order(np.zeros(len(rows), np.int64), rows, self.users)]
        slot = self.slots[name]
        delta = DeltaBatch(
            segments=[name] * len(rows), user_ids=self.users.gather(rows),
            kind=np.full(len(rows), 2, np.int8), cause=np.full(len(rows), CAUSE_SEGMENT_DELETED, np.int8),
            at_ms=np.full(len(rows), now_ms, np.int64))
        self.member[:, slot >> 6] &= ~np.uint64(1 << (slot & 63))
        del self.defs[name]
        del self.slots[name]
        self.plan = self._rebuild()
        self._timers_name_all()
        return delta

    def preview(self, defn: SegmentDef, now_ms: int, sample: int = 10) -> tuple[int, list[str]]:
        """Size and a sample of members of an expression, nothing saved."""
        scratch = SegmentDef("\x00preview", defn.expression, defn.ast, defn.deps)
        plan = self._rebuild(scratch, extra_slot=0)
        saved, self.plan = self.plan, plan
        try:
            rows = self._evaluate(None, None, None, None, now_ms, CAUSE_TIME,
                                  order=np.array([plan.index(scratch.name)], np.int64),
                                  force=np.ones(1, np.bool_), rows=self._known_rows(), dry=True)
        finally:
            self.plan = saved
        return len(rows), self.users.gather(rows[:sample])

    def _member_rows(self, name: str) -> np.ndarray:
        slot = self.slots.get(name)
        if slot is None:
            raise UnknownSegment(f"segment {name!r} does not exist")
        col = self.member[: self.nrows, slot >> 6]
        return np.flatnonzero((col >> np.uint64(slot & 63)) & np.uint64(1)).astype(np.int64)

    def members(self, name: str) -> list[str]:
        return self.users.gather(self._member_rows(name))

    def segment_size(self, name: str) -> int:
        return int(len(self._member_rows(name)))

    # ------------------------------------------------------------------ users
    def _row_of(self, user_id: str) -> int:
        r = self.users.lookup_one(user_id) if isinstance(user_id, str) else -1
        return r if r >= 0 and self.known[r] else -1

    def user_segments(self, user_id: str) -> list[str]:
        r = self._row_of(user_id)
        if r < 0:
            return []
        return sorted(n for n, s in self.slots.items()
                      if (int(self.member[r, s >> 6]) >> (s & 63)) & 1)

    def user_view(self, user_id: str) -> dict:
        r = self._row_of(user_id)
        if r < 0:
            return {"user_id": user_id, "known": False, "segments": [], "traits": {}, "scores": {}}
        traits = {}
        for name, c in self.trait_ids.items():
            if name.startswith("\x00"):   # model scores: reported under "scores"
                continue
            v = V.unbox(float(self.traits[r, c]), self.strings.get)
            if v is not None:
                traits[name] = v
        return {"user_id": user_id, "known": True, "segments": self.user_segments(user_id), "traits": traits,
                "scores": self.scores_of(r)}

    def delete_user(self, user_id: str, now_ms: int) -> DeltaBatch:
        """Forget a user's events and traits; EXIT from every segment it was in."""
        r = self._row_of(user_id)
        if r < 0:
            return DeltaBatch()
        names = [n for n in self.plan.names if (int(self.member[r, self.slots[n] >> 6]) >> (self.slots[n] & 63)) & 1]
        rows = np.full(len(names), r, np.int64)
        KS._clear_rows(np.array([r], np.int64), len(self.type_names), self.width, self.h, self.astate,
                       self.free, self.arena, KS.CAPS)
        self.traits[r, :] = V.NULL
        self.member[r, :] = 0
        self.timer[r] = INF_MS
        self._timers_name_all(r)
        self.known[r] = False
        return DeltaBatch(segments=names, user_ids=[user_id] * len(names),
                          kind=np.full(len(names), 2, np.int8),
                          cause=np.full(len(names), CAUSE_USER_DELETED, np.int8),
                          at_ms=np.full(len(rows), now_ms, np.int64))

    # ------------------------------------------------------------------ moving users
    def row_slots(self, rows: np.ndarray) -> np.ndarray:
        """Hash slot (FNV-1a 64 of the id mod 4096) of each user row."""
        return (self.users.hashes()[rows] % np.uint64(NUM_SLOTS)).astype(np.int64)

    def _rows_in_slots(self, slots) -> np.ndarray:
        rows = self._known_rows()
        if not len(rows):
            return rows
        return rows[np.isin(self.row_slots(rows), np.asarray(list(slots), np.int64))]

    def export_slots(self, slots) -> dict:
        """Everything about the users of the given hash slots, as plain arrays keyed by
        names (event types, properties, traits, segments), for ``import_state`` on another
        shard. String values travel as strings, not as this shard's codes."""
        return run_steps(self.export_steps(slots))

    def export_steps(self, slots):
        """``export_slots`` as a generator that returns its result (``StopIteration.value``)
        and yields between pieces of about ``EXPORT_PIECE_ROWS`` users' events of one type,
        so that a snapshot can let reads in between two (``ShardHost.snapshot_part``). The
        state must not change until it returns."""
        wanted = np.unique(np.asarray(list(slots), np.int64))
        if np.isin(np.arange(NUM_SLOTS), wanted).all():
            rows = self._known_rows()        # a snapshot: every user, no hashing
        else:
            rows = self._rows_in_slots(wanted)
        # when every row is known, row i is user i: slices instead of gathers
        sel = slice(0, len(rows)) if len(rows) == self.nrows else rows
        used = np.zeros(len(self.strings), np.bool_)

        def strings_of(boxed: np.ndarray) -> np.ndarray:
            bits = boxed.view(np.int64)
            used[bits[(bits & V.TAG_MASK) == V.STR_TAG] & V.PAYLOAD_MASK] = True
            return boxed

        events = {}
        for t, name in enumerate(self.type_names):
            n = KS._export_count(rows, t, self.h)
            if not n:
                continue
            w = int(self.width[t])
            owner = np.empty(n, np.int64)
            by_col = np.empty((w, n), np.float64)
            k = 0
            for a in range(0, len(rows), EXPORT_PIECE_ROWS):
                k = KS._export_fill(rows, a, min(a + EXPORT_PIECE_ROWS, len(rows)), t, w, self.arena, self.h,
                                    owner, by_col, k)
                yield
            cols = sorted(self.type_cols[t].items(), key=lambda kv: kv[1])
            events[name] = {"owner": owner, "timestamp_ms": by_col[0].astype(np.int64),
                            "columns": {p: strings_of(by_col[c]) for p, c in cols}}
            yield
        traits = {name: strings_of(self.traits[sel, c].copy()) for name, c in self.trait_ids.items()}
        member_words: dict[int, np.ndarray] = {}
        members = {}
        for name, s in self.slots.items():
            if s >> 6 not in member_words:
                member_words[s >> 6] = self.member[sel, s >> 6]
            members[name] = np.flatnonzero((member_words[s >> 6] >> np.uint64(s & 63)) & np.uint64(1))
        yield
        all_codes = np.flatnonzero(used).astype(np.int64)
        return {
            "user_ids": self.users.gather(rows),
            "events": events,
            "traits": traits,
            "members": members,
            "timers": self.timer[sel].copy(),
            "string_codes": all_codes,
            "strings": self.strings.gather(all_codes),
        }

    def drop_slots(self, slots) -> int:
        """Forget the users of the given hash slots (after they moved away); no deltas."""
        rows = self._rows_in_slots(slots)
        KS._clear_rows(rows, len(self.type_names), self.width, self.h, self.astate, self.free, self.arena, KS.CAPS)
        self.traits[rows, :] = V.NULL
        self.member[rows, :] = 0
        self.timer[rows] = INF_MS
        self._timers_name_all(rows)
        self.known[rows] = False
        return len(rows)

    def import_state(self, state: dict) -> int:
        """Take in users exported by ``export_slots`` of another shard (same segments)."""
        ids = state["user_ids"]
        if not ids:
            return 0
        for name in state["members"]:
            if name not in self.slots:
                raise UnknownSegment(f"import_state: segment {name!r} is not defined on this shard")
        rows = self._rows_for(split_strings(ids))
        if np.any(self.known[rows]):
            raise ValueError("import_state: some users already live on this shard")
        mapping = np.zeros(int(state["string_codes"].max()) + 1 if len(state["string_codes"]) else 0, np.int64)
        if len(state["strings"]):
            mapping[state["string_codes"]] = self.strings.intern(split_strings(state["strings"]))

        def local(boxed: np.ndarray) -> np.ndarray:
            boxed = np.asarray(boxed, np.float64)
            bits = boxed.view(np.int64)
            is_str = (bits & V.TAG_MASK) == V.STR_TAG
            if not is_str.any():
                return boxed
            out = bits.copy()
            out[is_str] = V.STR_TAG | mapping[bits[is_str] & V.PAYLOAD_MASK]
            return out.view(np.float64)

        lists = []
        for name, ev in state["events"].items():
            t = self.type_id(name)
            for p in ev["columns"]:
                self.column(t, p)       # may rewrite the arena: every column first, then the events
            lists.append((t, np.asarray(ev["owner"], np.int64), np.ascontiguousarray(ev["timestamp_ms"], np.int64),
                          ev["columns"]))
        layouts = [self._list_layout(t, rows, owner, ts) for t, owner, ts, _ in lists]
        need = sum(int(lay[3].sum()) for lay in layouts if lay is not None)
        if int(self.astate[0]) + need > self.arena.shape[0]:
            self._grow_arena(need)      # once, not once per type
        for (t, owner, ts, columns), lay in zip(lists, layouts):
            cols = {p: local(v) for p, v in columns.items()}
            if lay is not None:
                self._place_lists(t, lay, ts, cols)
            else:
                self._append_lists(t, rows, owner, ts, cols)
        for name, boxed in state["traits"].items():
            c = self.trait_col(name)    # first: a new column may replace self.traits
            self.traits[rows, c] = local(boxed)
        for name, idx in state["members"].items():
            s = self.slots[name]
            self.member[rows[idx], s >> 6] |= np.uint64(1 << (s & 63))
        self.timer[rows] = np.minimum(self.timer[rows], state["timers"])
        self._timers_name_all(rows)     # the exported timer bounds every segment
        blocks = rows >> TBLOCK_SHIFT
        np.minimum.at(self.tblock, blocks, state["timers"])
        self.known[rows] = True
        return len(rows)

    def _list_layout(self, t: int, rows, owner, ts):
        """Where imported events of type ``t`` go when they can be laid out in the arena
        directly, one tight block per user (what ``_append`` ends with, without moving each
        list up the size classes): only when every list is new, in list order and within
        the per-type limit. ``(rows, lengths, classes, words)`` per list, or None."""
        n = len(owner)
        if n == 0:
            return _EMPTY_I64, _EMPTY_I64, _EMPTY_I64, _EMPTY_I64
        if owner[0] < 0 or owner[-1] >= len(rows) or np.any(owner[1:] < owner[:-1]):
            return None
        if np.any((owner[1:] == owner[:-1]) & (ts[1:] < ts[:-1])):
            return None
        counts = np.bincount(owner, minlength=len(rows))
        has = np.flatnonzero(counts)
        cnt = counts[has]
        target = rows[has]
        if int(cnt.max()) > self.max_per or np.any(self.h[target, t] != KS.NO_BLOCK):
            return None
        cls = np.minimum(np.searchsorted(KS.CAPS, cnt), len(KS.CAPS) - 1)
        return target, cnt, cls, KS.CAPS[cls] * int(self.width[t])

    def _place_lists(self, t: int, layout, ts, cols) -> None:
        """Write the events of a ``_list_layout`` at the end of the arena."""
        target, cnt, cls, words = layout
        n = len(ts)
        if n == 0:
            return
        w = int(self.width[t])
        offs = np.cumsum(words)
        total = int(offs[-1])
        if int(self.astate[0]) + total > self.arena.shape[0]:
            self._grow_arena(total)
        offs -= words
        offs += int(self.astate[0])
        # destination of each event: +w within a list, a jump to the next block between lists
        dest = np.full(n, w, np.int64)
        first = np.cumsum(cnt) - cnt
        dest[first[1:]] = offs[1:] - (offs[:-1] + (cnt[:-1] - 1) * w)
        dest[0] = offs[0]
        np.cumsum(dest, out=dest)
        arena = self.arena
        arena[dest] = ts
        at = 0
        for prop, c in sorted(self.type_cols[t].items(), key=lambda kv: kv[1]):
            dest += c - at          # in place: no index array per column
            at = c
            if prop in cols:
                arena[dest] = cols[prop]
            else:
                arena[dest] = 0.0 if prop == VALUE_COLUMN else V.NULL
        self.h[target, t] = (offs << 32) | (cls << 26) | cnt
        self.astate[0] += total
        self.astate[1] += total
        self.counters[1] += n

    def _append_lists(self, t: int, rows, owner, ts, cols) -> None:
        """Insert imported events of type ``t`` one by one (``_append``: sorted into lists
        that may already hold events, the per-type limit applied)."""
        props = list(cols)
        n = len(owner)
        vals = np.empty((n, max(len(props), 1)), np.float64)
        src = np.full((self._tcap, int(self.width[t])), KS.SRC_NULL, np.int64)
        if VALUE_COLUMN in self.type_cols[t]:
            src[t, self.type_cols[t][VALUE_COLUMN]] = KS.SRC_ZERO
        for j, p in enumerate(props):
            vals[:, j] = cols[p]
            src[t, self.type_cols[t][p]] = j
        ev_rows = rows[owner]
        tids = np.full(n, t, np.int64)
        i = 0
        while True:
            i, need = KS._append(i, ev_rows, tids, ts, vals, src, self.width, self.arena, self.astate,
                                 self.free, self.h, KS.CAPS, -np.inf, self.max_per, self.counters)
            if i >= n:
                break
            self._grow_arena(int(need))

    # ------------------------------------------------------------------ introspection
    def next_due_ms(self) -> int:
        """Earliest time-driven change any user of this shard may have (INF_MS if none)."""
        nb = (self.nrows >> TBLOCK_SHIFT) + 1
        return int(self.tblock[:nb].min()) if self.nrows else INF_MS

    def retained_events(self) -> int:
        return int(KS._live_events(self.nrows, len(self.type_names), self.h))

    def stats(self) -> dict:
        return {
            "users": int(self.known[: self.nrows].sum()),
            "events_accepted": int(self.events_accepted),
            "events_retained": self.retained_events(),
            "events_dropped": int(self.counters[0]),
            "event_types": len(self.type_names),
            "segments": len(self.defs),
        }

    def memory(self) -> dict:
        """Bytes held, by part: ``user_arrays`` and ``user_ids`` scale with users, ``events``
        (every block handed out, free ones included) with events. ``events_reserved_untouched``
        is arena address space reserved for growth and never written (not resident)."""
        rows = self._rcap
        per_user_arrays = (self.known.nbytes + self.h.nbytes + self.traits.nbytes + self.member.nbytes + self.timer.nbytes
                           + self.tnext.nbytes + self.tmask.nbytes + self.tblock.nbytes + self._pos.nbytes)
        # The arena is reserved ahead of need (engine/_arena.py: a map grown by mremap, or
        # np.empty): its tail beyond the last block handed out has never been written, so
        # the OS has not backed it with memory.
        events = int(self.astate[0]) * 8
        return {
            "row_capacity": rows,
            "user_arrays": per_user_arrays,
            "user_ids": self.users.nbytes,
            "events": events,
            "events_in_blocks": int(self.astate[1]) * 8,
            "events_reserved_untouched": self.arena.nbytes - events,
            "strings": self.strings.nbytes,
            "bytes_total": per_user_arrays + self.users.nbytes + events + self.strings.nbytes,
        }
