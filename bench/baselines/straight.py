"""Honest baselines for the one segment: the strongest straightforward Python, and the limit.

Both keep exactly ``ONE_SEGMENT`` (``count(view_product, 48h) >= 3 and count(purchase, 48h)
== 0``, pinned in ``bench.baselines.ONE``) on an event clock, and are fed the columns rtseg's
``Engine.ingest_columns`` gets, in the same batches. Like rtseg they evaluate at the end of
each batch, at ``now`` = the largest timestamp seen so far (spec/EXPRESSIONS.md, "Membership
and deltas"), so their ENTER/EXIT deltas are rtseg's, one for one.

* ``StraightPython``: what a careful Python programmer writes for this one segment. Per user
  two ``collections.deque`` of timestamps (only ``view_product`` and ``purchase`` are kept:
  numpy picks their rows out of each batch, leaving out late events already outside the
  window), kept in time order (a late event is inserted in place),
  ``popleft`` expiry on each event, membership in a ``set``, and a heap of per-user
  next-check times for the exits (and entries) that happen by time alone: a member leaves
  when its third newest view leaves the window; a user with three views and a purchase may
  enter when the purchase leaves. Stale heap entries are skipped (the user's current check
  time is kept in a dict). Each call leaves its ENTER/EXIT deltas in ``out``.
* ``NumbaKernel``: the practical limit, a hand-written Numba kernel for the same segment.
  Per user (dense integer ids) it keeps only what the segment needs: the three newest view
  timestamps (``count(view, W) >= 3`` iff the third newest is inside the window, since every
  event has ``t <= now``) and the newest purchase timestamp (``count(purchase, W) == 0`` iff
  it is outside). Time-driven checks go through a binary heap in arrays with lazy deletion;
  deltas are written into preallocated arrays (``last_deltas()`` reads them). The string columns are turned into integer
  codes in Python first (a dict for user ids, numpy comparisons for the types): that
  conversion is timed with the kernel (``events_per_s``) and also reported apart
  (``kernel_only_events_per_s``).

Neither keeps a retention, traits, properties, other segments or a delta log: they do less
than rtseg does, which is the point of an honest baseline.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections import deque
from heapq import heappop, heappush

import numpy as np

from bench.baselines import ONE, OneSegment

NO_TIME = np.iinfo(np.int64).min // 4  # "no event" / "no check scheduled"


class StraightPython:
    """The one segment in plain Python: dicts of deques, a set, a heap of check times."""

    name = "straight_python"

    def __init__(self, spec: OneSegment = ONE, start_ms: int = 0):
        self.spec = spec
        self.now_ms = int(start_ms)
        self.views: dict[str, deque] = {}
        self.buys: dict[str, deque] = {}
        self.member: set[str] = set()
        self.due: dict[str, int] = {}
        self.heap: list[tuple[int, str]] = []
        self.enters = 0
        self.exits = 0
        self.out: list[tuple[str, bool, int]] = []  # the last call's deltas: (user, enter?, at_ms)

    def members(self) -> set[str]:
        return set(self.member)

    @property
    def deltas(self) -> int:
        return self.enters + self.exits

    def ingest_columns(self, user_id, type, timestamp_ms, value=None, properties=None) -> int:
        """One batch (the columns ``Engine.ingest_columns`` takes); returns the deltas emitted."""
        w = self.spec.window_ms
        ts_all = np.asarray(timestamp_ms, np.int64)
        now = self.now_ms
        if len(ts_all):
            now = max(now, int(ts_all.max()))
        cut = now - w
        t = np.asarray(type, dtype=object)
        uid = np.asarray(user_id, dtype=object)
        fresh = ts_all > cut  # a late event already outside the window can never count
        touched = set()
        add = touched.add
        for kind, store in ((self.spec.view_type, self.views), (self.spec.purchase_type, self.buys)):
            sel = np.flatnonzero((t == kind) & fresh)  # only the two types the segment reads
            get = store.get
            for u, ts in zip(uid[sel].tolist(), ts_all[sel].tolist()):
                d = get(u)
                if d is None:
                    store[u] = deque((ts,))
                else:
                    if ts >= d[-1]:
                        d.append(ts)
                    else:
                        d.insert(bisect_right(d, ts), ts)
                    while d[0] <= cut:
                        d.popleft()
                add(u)
        self.now_ms = now
        heap, due = self.heap, self.due
        while heap and heap[0][0] <= now:
            at, u = heappop(heap)
            if due.get(u) == at:
                del due[u]
                add(u)
        self.out = []
        before = self.enters + self.exits
        for u in touched:
            self._evaluate(u, now)
        return self.enters + self.exits - before

    def advance_clock(self, now_ms: int) -> int:
        """Move the clock (never back) and apply the time-driven changes up to it."""
        now_ms = max(int(now_ms), self.now_ms)
        self.now_ms = now_ms
        self.out = []
        before = self.enters + self.exits
        heap, due = self.heap, self.due
        touched = set()
        while heap and heap[0][0] <= now_ms:
            at, u = heappop(heap)
            if due.get(u) == at:
                del due[u]
                touched.add(u)
        for u in touched:
            self._evaluate(u, now_ms)
        return self.enters + self.exits - before

    def _evaluate(self, u: str, now: int) -> None:
        w, k = self.spec.window_ms, self.spec.min_views
        cut = now - w
        v = self.views.get(u)
        b = self.buys.get(u)
        if v is not None:
            while v and v[0] <= cut:
                v.popleft()
            if not v:
                del self.views[u]
                v = None
        if b is not None:
            while b and b[0] <= cut:
                b.popleft()
            if not b:
                del self.buys[u]
                b = None
        enough = v is not None and len(v) >= k
        inside = enough and b is None
        was = u in self.member
        if inside != was:
            if inside:
                self.member.add(u)
                self.enters += 1
            else:
                self.member.discard(u)
                self.exits += 1
            self.out.append((u, inside, now))
        # The next moment this user's value may change with no new event.
        if inside:
            nxt = v[-k] + w  # the k-th newest view leaves
        elif enough and v[-k] > b[-1]:
            nxt = b[-1] + w  # the last purchase leaves while k views are still inside
        else:
            nxt = None
        if nxt is None:
            self.due.pop(u, None)
        elif self.due.get(u) != nxt:
            self.due[u] = nxt
            heappush(self.heap, (nxt, u))


# --------------------------------------------------------------------------- the Numba kernel

_KERNEL = None


def _kernel():
    """Compile (once) and return the batch kernel."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    from numba import njit

    @njit(cache=True, nogil=True)
    def heap_push(ht, hu, size, t, u):
        i = size
        ht[i] = t
        hu[i] = u
        while i > 0:
            p = (i - 1) >> 1
            if ht[p] <= ht[i]:
                break
            ht[p], ht[i] = ht[i], ht[p]
            hu[p], hu[i] = hu[i], hu[p]
            i = p
        return size + 1

    @njit(cache=True, nogil=True)
    def heap_pop(ht, hu, size):
        size -= 1
        ht[0] = ht[size]
        hu[0] = hu[size]
        i = 0
        while True:
            l = 2 * i + 1
            if l >= size:
                break
            c = l
            if l + 1 < size and ht[l + 1] < ht[l]:
                c = l + 1
            if ht[i] <= ht[c]:
                break
            ht[c], ht[i] = ht[i], ht[c]
            hu[c], hu[i] = hu[i], hu[c]
            i = c
        return size

    @njit(cache=True, nogil=True)
    def step(uidx, code, ts, now, w, v1, v2, v3, lastbuy, member, due, mark, stamp,
             ht, hu, hsize, touched, out_user, out_enter):
        """One batch. v1 >= v2 >= v3: the three newest view times; returns
        (now, deltas written, heap size)."""
        n = uidx.shape[0]
        for i in range(n):
            now = max(now, ts[i])
        nt = 0
        for i in range(n):
            c = code[i]
            if c == 0:
                continue
            u = uidx[i]
            t = ts[i]
            if c == 1:
                if t > v3[u]:
                    if t >= v1[u]:
                        v3[u] = v2[u]
                        v2[u] = v1[u]
                        v1[u] = t
                    elif t >= v2[u]:
                        v3[u] = v2[u]
                        v2[u] = t
                    else:
                        v3[u] = t
            else:
                lastbuy[u] = max(lastbuy[u], t)
            if mark[u] != stamp:
                mark[u] = stamp
                touched[nt] = u
                nt += 1
        while hsize > 0 and ht[0] <= now:
            t = ht[0]
            u = hu[0]
            hsize = heap_pop(ht, hu, hsize)
            if due[u] == t:
                due[u] = NO_TIME
                if mark[u] != stamp:
                    mark[u] = stamp
                    touched[nt] = u
                    nt += 1
        cut = now - w
        nd = 0
        for j in range(nt):
            u = touched[j]
            enough = v3[u] > cut
            inside = enough and lastbuy[u] <= cut
            if inside != member[u]:
                member[u] = inside
                out_user[nd] = u
                out_enter[nd] = inside
                nd += 1
            if inside:
                nxt = v3[u] + w
            elif enough and v3[u] > lastbuy[u]:
                nxt = lastbuy[u] + w
            else:
                nxt = NO_TIME
            if nxt != due[u]:
                due[u] = nxt
                if nxt != NO_TIME:
                    hsize = heap_push(ht, hu, hsize, nxt, u)
        return now, nd, hsize

    _KERNEL = step
    return step


class NumbaKernel:
    """The one segment as a hand-written Numba kernel over per-user arrays."""

    name = "numba_kernel"

    def __init__(self, spec: OneSegment = ONE, start_ms: int = 0, capacity: int = 1024):
        self.spec = spec
        self.now_ms = int(start_ms)
        self.ids: dict[str, int] = {}
        self.names: list[str] = []
        self._step = _kernel()
        self._alloc(capacity)
        self.ht = np.zeros(capacity, np.int64)
        self.hu = np.zeros(capacity, np.int64)
        self.hsize = 0
        self.stamp = 0
        self.enters = 0
        self.exits = 0
        self.kernel_seconds = 0.0  # the kernel calls alone (no string conversion)
        self.last_nd = 0

    def _alloc(self, cap: int) -> None:
        old = getattr(self, "v1", None)
        n_old = 0 if old is None else len(old)

        def grow(a, fill, dtype):
            out = np.full(cap, fill, dtype)
            if a is not None:
                out[:n_old] = a
            return out

        g = lambda name, fill, dt: grow(getattr(self, name, None), fill, dt)
        self.v1, self.v2, self.v3 = (g(k, NO_TIME, np.int64) for k in ("v1", "v2", "v3"))
        self.lastbuy = g("lastbuy", NO_TIME, np.int64)
        self.due = g("due", NO_TIME, np.int64)
        self.mark = g("mark", -1, np.int64)
        self.member = g("member", False, np.bool_)
        self.touched = np.zeros(cap, np.int64)
        self.out_user = np.zeros(cap, np.int64)
        self.out_enter = np.zeros(cap, np.bool_)

    @property
    def deltas(self) -> int:
        return self.enters + self.exits

    def members(self) -> set[str]:
        names = self.names
        return {names[i] for i in np.flatnonzero(self.member[:len(names)])}

    def codes(self, user_id, type) -> tuple[np.ndarray, np.ndarray]:
        """Dense user ids (new users get the next id) and type codes (1 view, 2 purchase)."""
        ids = self.ids
        lst = user_id.tolist() if hasattr(user_id, "tolist") else list(user_id)
        got = list(map(ids.get, lst))
        if None in got:  # users seen for the first time (a user may repeat within the batch)
            names = self.names
            for i, k in enumerate(got):
                if k is None:
                    u = lst[i]
                    k = ids.get(u)
                    if k is None:
                        k = ids[u] = len(names)
                        names.append(u)
                    got[i] = k
            if len(ids) > len(self.v1):
                self._alloc(max(2 * len(self.v1), len(ids)))
        uidx = np.array(got, np.int64)
        t = np.asarray(type, dtype=object)
        code = np.zeros(len(t), np.int8)
        code[t == self.spec.view_type] = 1
        code[t == self.spec.purchase_type] = 2
        return uidx, code

    def ingest_columns(self, user_id, type, timestamp_ms, value=None, properties=None) -> int:
        uidx, code = self.codes(user_id, type)
        return self.ingest_codes(uidx, code, np.asarray(timestamp_ms, np.int64))

    def advance_clock(self, now_ms: int) -> int:
        """Move the clock (never back) and apply the time-driven changes up to it."""
        return self.ingest_codes(np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, np.int64),
                                 now_ms=max(int(now_ms), self.now_ms))

    def ingest_codes(self, uidx: np.ndarray, code: np.ndarray, ts: np.ndarray, now_ms: int | None = None) -> int:
        """The kernel on already-coded columns; returns the deltas emitted."""
        self.stamp += 1
        now = self.now_ms if now_ms is None else now_ms
        t0 = time.perf_counter()
        # Each user the batch touches pushes at most one check: hsize + len(batch) bounds the heap.
        if self.hsize + len(uidx) > len(self.ht):
            cap = max(2 * len(self.ht), self.hsize + len(uidx))
            self.ht = np.resize(self.ht, cap)
            self.hu = np.resize(self.hu, cap)
        now2, nd, hsize = self._step(uidx, code, ts, now, self.spec.window_ms, self.v1, self.v2, self.v3,
                                     self.lastbuy, self.member, self.due, self.mark, self.stamp,
                                     self.ht, self.hu, self.hsize, self.touched, self.out_user,
                                     self.out_enter)
        self.kernel_seconds += time.perf_counter() - t0
        self.now_ms = int(now2)
        self.hsize = hsize
        return self._count(nd)

    def last_deltas(self) -> list[tuple[str, bool]]:
        """The last call's deltas as (user, enter?), from the kernel's output arrays."""
        names = self.names
        return [(names[u], bool(e)) for u, e in zip(self.out_user[:self.last_nd].tolist(),
                                                     self.out_enter[:self.last_nd].tolist())]

    def _count(self, nd: int) -> int:
        self.last_nd = nd
        if nd:
            e = int(self.out_enter[:nd].sum())
            self.enters += e
            self.exits += nd - e
        return nd
