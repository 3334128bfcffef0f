"""Event storage kernels.

Layout (per shard): one flat float64 **arena** holds every event of every type. An event of
type ``t`` is ``width[t]`` consecutive words: the timestamp (integer ms are exact in float64
up to 2**53), then the boxed property values of that type's columns (the event's ``value`` is
a column like any other, created the first time a non-zero value or a segment needs it).

Per (user row, type) a block of the arena, described by one packed int64 header ``h[r, t]``
(-1 = no block): ``off`` (first word, 31 bits: 16 GB of events per shard), ``cls`` (capacity
class: ``CAPS[cls]`` events, 6 bits), ``start`` (index of the oldest live event in the
block, 13 bits) and ``len`` (live events, 13 bits). One word per list keeps all of a user's headers in one cache line. Live
events ``start .. start+len-1`` are sorted by timestamp, equal timestamps in arrival order.
Event ``k`` of a block starts at word ``off + k * width``.

A block that outgrows its class moves to a larger one; the block it leaves goes on a free
list per (type, class) (the next pointer kept in its first word) and is the first one handed
out for that type and class; otherwise blocks come from the end of the arena. ``_compact``
rewrites the arena without free blocks and without expired events. A kernel that
needs more arena stops and says so; the Python owner grows the arena and calls again from
where it stopped, so kernels never reallocate shared state. (One flat array instead of one
array per type: Numba's typed-list item access costs ~150 ns, an array index ~5 ns.)
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._bits import f2i, i2f, null_value, prefetch

# Capacity classes grow by 1.5x (1.33x between 3 and 4), so each list moves ~2 times per
# element it holds. Classes growing by ~1.2x kept blocks ~90 % full but moved each element
# ~5 times: a 2M-event replay spent 14 % less in appends with 1.5x, for 3.5 % more arena per
# event; 2x saved no more and took 20 % more arena. The last class is 1.5x the per-type
# limit, so a list at the limit re-bases (moves its events to the block start) only once
# every 2048 appends.
CAPS = np.array([1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024,
                 1536, 2048, 3072, 4096, 6144], dtype=np.int64)
SRC_NULL = -1   # column absent from the batch: null
SRC_ZERO = -2   # the value column absent from the batch: 0.0


NO_BLOCK = -1


@njit(cache=True, inline="always")
def h_pack(off, start, ln, cls):
    return (off << 32) | (cls << 26) | (start << 13) | ln


@njit(cache=True, inline="always")
def h_off(h):
    return h >> 32


@njit(cache=True, inline="always")
def h_start(h):
    return (h >> 13) & 0x1FFF


@njit(cache=True, inline="always")
def h_len(h):
    return h & 0x1FFF


@njit(cache=True, inline="always")
def h_cls(h):
    return (h >> 26) & 0x3F


@njit(cache=True)
def _class_for(caps, n):
    c = 0
    while c < caps.shape[0] - 1 and caps[c] < n:
        c += 1
    return c


@njit(cache=True, _nrt=False)
def _upper_bound(ar, off, w, lo, hi, x):
    """First event index in [lo, hi) of the block at ``off`` whose timestamp is > x.

    Branch-free halving (the comparison picks the next range by a conditional move): the
    branches of a plain binary search over event lists go either way at random."""
    n = hi - lo
    while n > 0:
        half = n >> 1
        le = ar[off + (lo + half) * w] <= x
        lo = lo + half + 1 if le else lo
        n = n - half - 1 if le else half
    return lo


@njit(cache=True, _nrt=False)
def _upper_bound_last(ar, off, w, lo, hi, x):
    """``_upper_bound`` for an ``x`` usually at or past the newest event (``now``: events
    mostly arrive in time order): one comparison when no event is newer than ``x``."""
    if hi == lo or ar[off + (hi - 1) * w] <= x:
        return hi
    return _upper_bound(ar, off, w, lo, hi - 1, x)


@njit(cache=True, _nrt=False)
def _upper_bound_back(ar, off, w, lo, hi, x):
    """``_upper_bound`` for an ``x`` usually among the newest events (a window's start, the
    window short next to the list): gallops back from ``hi`` by 1, 2, 4, ... events, then
    searches the last step, so that it reads the list's newest cache lines first."""
    b = hi
    step = 1
    while True:
        a = b - step
        if a <= lo:
            return _upper_bound(ar, off, w, lo, b, x)
        if ar[off + a * w] <= x:
            return _upper_bound(ar, off, w, a + 1, b, x)
        b = a
        step *= 2


@njit(cache=True, _nrt=False)
def _alloc(t, cl, w, caps, state, free, arena):
    """A block of class ``cl`` for type ``t``: from its free list, else from the arena's end.
    Returns its first word, or -1 when the arena must grow first."""
    words = caps[cl] * w
    f = free[t, cl]
    if f >= 0:
        free[t, cl] = f2i(arena[f])
        state[1] += words
        return f
    if state[0] + words > arena.shape[0]:
        return -1
    off = state[0]
    state[0] += words
    state[1] += words
    return off


@njit(cache=True, _nrt=False)
def _release(t, cl, off, w, caps, state, free, arena):
    arena[off] = i2f(free[t, cl])
    free[t, cl] = off
    state[1] -= caps[cl] * w


@njit(cache=True)
def _append(start_i, rows, tids, ts, vals, src, width, arena, state, free, h, caps, cutoff, max_per, stats):
    """Insert events ``start_i..`` into their users' lists.

    ``vals`` is the batch's boxed column matrix ``[n, B]``; ``src[t, c]`` names the batch
    column feeding column ``c`` of type ``t`` (or SRC_NULL / SRC_ZERO). Events with
    ``ts <= cutoff`` are expired and removed from the front of a list before inserting.
    ``state`` = [bump, used] in words; ``free`` the free-list heads. Returns
    ``(i, words_needed)``: ``i == n`` when done,
    else the arena needs ``words_needed`` more free words before event ``i`` can go in.
    ``stats[0]`` counts events dropped at the per-type limit, ``stats[1]`` events stored.
    """
    n = rows.shape[0]
    last_cls = caps.shape[0] - 1
    size = arena.shape[0]
    ntypes = h.shape[1]
    for i in range(start_i, n):
        if i + 8 < n:  # users come in random order: start loading the next ones' lists early
            prefetch(h, rows[i + 8] * ntypes + tids[i + 8])
        if i + 4 < n:   # its oldest event (the expiry check reads it) and where it goes
            h4 = h[rows[i + 4], tids[i + 4]]
            if h4 != NO_BLOCK:
                w4 = width[tids[i + 4]]
                prefetch(arena, h_off(h4) + h_start(h4) * w4)
                prefetch(arena, min(h_off(h4) + (h_start(h4) + h_len(h4)) * w4, size - 1))
        r = rows[i]
        t = tids[i]
        w = width[t]
        hd = h[r, t]
        if hd == NO_BLOCK:
            off = _alloc(t, 0, w, caps, state, free, arena)
            if off < 0:
                return i, caps[0] * w
            st = np.int64(0)
            ln = np.int64(0)
            cl = np.int64(0)
            h[r, t] = h_pack(off, st, ln, cl)
        else:
            off = h_off(hd)
            st = h_start(hd)
            ln = h_len(hd)
            cl = h_cls(hd)
        cap = caps[cl]
        while ln > 0 and arena[off + st * w] <= cutoff:
            st += 1
            ln -= 1
        if ln == 0:
            st = 0
        x = float(ts[i])
        if ln >= max_per:
            stats[0] += 1
            if x < arena[off + st * w]:
                h[r, t] = h_pack(off, st, ln, cl)
                continue
            st += 1
            ln -= 1
        if st + ln == cap:
            if st > 0 and (st >= (cap >> 2) or cl == last_cls):
                for q in range(ln * w):
                    arena[off + q] = arena[off + st * w + q]
                st = 0
            else:
                ncl = cl + 1
                noff = _alloc(t, ncl, w, caps, state, free, arena)
                if noff < 0:
                    h[r, t] = h_pack(off, st, ln, cl)
                    return i, caps[ncl] * w
                for q in range(ln * w):
                    arena[noff + q] = arena[off + st * w + q]
                _release(t, cl, off, w, caps, state, free, arena)
                off = noff
                st = 0
                cl = ncl
        if ln == 0 or arena[off + (st + ln - 1) * w] <= x:
            p = st + ln
        else:
            p = _upper_bound(arena, off, w, st, st + ln, x)
            q = off + (st + ln + 1) * w - 1
            stop = off + (p + 1) * w - 1
            while q > stop:
                arena[q] = arena[q - w]
                q -= 1
        base = off + p * w
        arena[base] = x
        for c in range(1, w):
            s = src[t, c]
            if s >= 0:
                arena[base + c] = vals[i, s]
            elif s == SRC_ZERO:
                arena[base + c] = 0.0
            else:
                arena[base + c] = null_value()
        h[r, t] = h_pack(off, st, ln + 1, cl)
        stats[1] += 1
    return n, 0


@njit(cache=True, _nrt=False)
def _retained(arena, hd, w, cutoff):
    """(offset, start, length) of the events of list header ``hd`` still retained
    (timestamp > cutoff); expired events are at the front of a list."""
    off = h_off(hd)
    st = h_start(hd)
    ln = h_len(hd)
    while ln > 0 and arena[off + st * w] <= cutoff:
        st += 1
        ln -= 1
    return off, st, ln


AHEAD = 4   # rows whose lists ``_compact`` / ``_compact_size`` prefetch ahead of the one they copy


@njit(cache=True, _nrt=False)
def _prefetch_row(arena, h, width, r, nrows, ntypes):
    """Start loading the oldest live event of each of row ``r``'s lists (if ``r < nrows``):
    the lists lie anywhere in the arena, so without it each one waits for memory."""
    if r < nrows:
        for t in range(ntypes):
            hd = h[r, t]
            if hd != NO_BLOCK:
                prefetch(arena, h_off(hd) + h_start(hd) * width[t])


@njit(cache=True)
def _compact(old, new, nrows, ntypes, width, new_width, fill, h, caps, cutoff):
    """Copy every live, retained list from ``old`` into ``new`` (sized by ``_compact_size``),
    row by row with tight capacity classes. A type whose ``new_width`` is larger than its
    ``width`` gets its new columns filled with ``fill[t]``. Returns the words used."""
    b = 0
    for r in range(nrows):
        _prefetch_row(old, h, width, r + AHEAD, nrows, ntypes)
        for t in range(ntypes):
            hd = h[r, t]
            if hd == NO_BLOCK:
                continue
            w = width[t]
            nw = new_width[t]
            off, st, ln = _retained(old, hd, w, cutoff)
            if ln == 0:
                h[r, t] = NO_BLOCK
                continue
            cl = _class_for(caps, ln)
            for k in range(ln):
                src = off + (st + k) * w
                dst = b + k * nw
                for c in range(w):
                    new[dst + c] = old[src + c]
                for c in range(w, nw):
                    new[dst + c] = fill[t]
            h[r, t] = h_pack(b, np.int64(0), ln, cl)
            b += caps[cl] * nw
    return b


@njit(cache=True)
def _compact_size(old, nrows, ntypes, width, new_width, h, caps, cutoff):
    """Words ``_compact`` will need."""
    total = 0
    for r in range(nrows):
        _prefetch_row(old, h, width, r + AHEAD, nrows, ntypes)
        for t in range(ntypes):
            hd = h[r, t]
            if hd == NO_BLOCK:
                continue
            _, _, ln = _retained(old, hd, width[t], cutoff)
            if ln > 0:
                total += caps[_class_for(caps, ln)] * new_width[t]
    return total


@njit(cache=True)
def _live_events(nrows, ntypes, h):
    total = 0
    for r in range(nrows):
        for t in range(ntypes):
            if h[r, t] != NO_BLOCK:
                total += h_len(h[r, t])
    return total


@njit(cache=True)
def _clear_rows(rows, ntypes, width, h, state, free, arena, caps):
    """Forget every event of the given rows (their blocks go to the free lists)."""
    for i in range(rows.shape[0]):
        r = rows[i]
        for t in range(ntypes):
            hd = h[r, t]
            if hd != NO_BLOCK:
                _release(t, h_cls(hd), h_off(hd), width[t], caps, state, free, arena)
                h[r, t] = NO_BLOCK


@njit(cache=True)
def _remap_strings(vals, cols, mapping, str_tag, tag_mask, payload_mask):
    """Rewrite batch-local string codes in the given columns of ``vals`` (an int64 view)
    to shard codes: ``code -> mapping[code]``."""
    n = vals.shape[0]
    for j in range(cols.shape[0]):
        c = cols[j]
        for i in range(n):
            b = vals[i, c]
            if (b & tag_mask) == str_tag:
                vals[i, c] = str_tag | mapping[b & payload_mask]


@njit(cache=True)
def _export_count(rows, t, h):
    """Live events of type ``t`` of the given rows (the size ``_export_fill`` fills)."""
    n = 0
    for i in range(rows.shape[0]):
        hd = h[rows[i], t]
        if hd != NO_BLOCK:
            n += h_len(hd)
    return n


@njit(cache=True)
def _export_fill(rows, a, b, t, w, arena, h, owner, out, k):
    """The live events of type ``t`` of ``rows[a:b]``, in list order, from event ``k`` of
    ``owner`` (index into ``rows`` per event) and ``out`` (the events' words as a ``[w, n]``
    matrix: word ``c`` of every event in one contiguous row, as a snapshot stores them; a
    transpose after the gather cost half of a snapshot's copy) -> the next ``k``. Rows in
    ranges, so that a snapshot can let reads in between two (``ShardCore.export_steps``)."""
    for i in range(a, b):
        hd = h[rows[i], t]
        if hd == NO_BLOCK:
            continue
        off = h_off(hd)
        st = h_start(hd)
        for e in range(h_len(hd)):
            base = off + (st + e) * w
            owner[k] = i
            for c in range(w):
                out[c, k] = arena[base + c]
            k += 1
    return k
