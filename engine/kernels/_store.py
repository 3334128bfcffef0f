"""Event storage kernels.

Layout (per shard):
- one arena per event type ``t``: a float64 matrix ``[capacity, 1 + ncols_t]``. Column 0 is
  the timestamp (integer ms are exact in float64 up to 2**53), the others are boxed property
  values (the event's ``value`` is a column like any other, created the first time a non-zero
  value or a segment needs it). One event is one contiguous arena row.
- per (user row, type) a block of the arena: ``h_off`` (first arena row, -1 = none),
  ``h_start`` (offset of the oldest live event inside the block), ``h_len`` (live events) and
  ``h_cls`` (capacity class, capacity ``CAPS[cls]``). Live events ``[off+start, off+start+len)``
  are sorted by timestamp, equal timestamps in arrival order.
- Blocks are bump-allocated; a block that outgrows its class moves to a new, larger block and
  leaves a hole. ``compact`` rewrites an arena without holes and without expired events.

Every kernel that may need more arena rows stops and reports it; the Python owner grows the
arena and calls again from where it stopped, so kernels never allocate shared state.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._bits import null_value

# Capacity classes grow by ~1.4x, so blocks are ~80 % full on average. The last class is 1.5x
# the per-type limit, so a list at the limit re-bases (moves its live events to the block
# start) only once every 2048 appends.
CAPS = np.array([1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768,
                 1024, 1536, 2048, 3072, 4096, 6144], dtype=np.int64)
SRC_NULL = -1   # column absent from the batch: null
SRC_ZERO = -2   # the value column absent from the batch: 0.0


@njit(cache=True)
def _class_for(caps, n):
    c = 0
    while c < caps.shape[0] - 1 and caps[c] < n:
        c += 1
    return c


@njit(cache=True)
def _upper_bound(a, lo, hi, x):
    """First index in [lo, hi) of arena ``a`` whose timestamp is > x."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid, 0] <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True)
def _append(start_i, rows, tids, ts, vals, src, arenas, bump, used, h_off, h_start, h_len, h_cls,
            caps, cutoff, max_per, stats):
    """Insert events ``start_i..`` (sorted by time within each user list).

    ``vals`` is the batch's boxed column matrix ``[n, B]``; ``src[t, k]`` names the batch
    column feeding arena column ``k`` of type ``t`` (or SRC_NULL / SRC_ZERO).
    Events with ``ts <= cutoff`` are expired: they are removed from the front of a list
    before inserting. Returns ``(i, t, rows_needed)``: ``i == n`` when done, else the
    arena of type ``t`` needs ``rows_needed`` more free rows before event ``i`` can go in.
    ``stats[0]`` counts events dropped at the per-type limit.
    """
    n = rows.shape[0]
    last_cls = caps.shape[0] - 1
    for i in range(start_i, n):
        r = rows[i]
        t = tids[i]
        a = arenas[t]
        width = a.shape[1]
        off = h_off[r, t]
        if off < 0:
            if bump[t] + caps[0] > a.shape[0]:
                return i, t, caps[0]
            off = bump[t]
            bump[t] += caps[0]
            used[t] += caps[0]
            h_off[r, t] = off
            h_start[r, t] = 0
            h_len[r, t] = 0
            h_cls[r, t] = 0
        st = np.int64(h_start[r, t])
        ln = np.int64(h_len[r, t])
        cl = np.int64(h_cls[r, t])
        cap = caps[cl]
        while ln > 0 and a[off + st, 0] <= cutoff:
            st += 1
            ln -= 1
        if ln == 0:
            st = 0
        x = float(ts[i])
        if ln >= max_per:
            stats[0] += 1
            if x < a[off + st, 0]:
                h_start[r, t] = st
                h_len[r, t] = ln
                continue
            st += 1
            ln -= 1
        if st + ln == cap:
            if st >= cap // 4 or cl == last_cls:
                for k in range(ln):
                    for c in range(width):
                        a[off + k, c] = a[off + st + k, c]
                st = 0
            else:
                ncl = cl + 1
                ncap = caps[ncl]
                if bump[t] + ncap > a.shape[0]:
                    h_start[r, t] = st
                    h_len[r, t] = ln
                    return i, t, ncap
                noff = bump[t]
                bump[t] += ncap
                used[t] += ncap - cap
                for k in range(ln):
                    for c in range(width):
                        a[noff + k, c] = a[off + st + k, c]
                off = noff
                st = 0
                cl = ncl
                h_off[r, t] = off
                h_cls[r, t] = cl
        base = off + st
        if ln == 0 or a[base + ln - 1, 0] <= x:
            p = base + ln
        else:
            p = _upper_bound(a, base, base + ln, x)
            k = base + ln
            while k > p:
                for c in range(width):
                    a[k, c] = a[k - 1, c]
                k -= 1
        a[p, 0] = x
        for c in range(1, width):
            s = src[t, c]
            if s >= 0:
                a[p, c] = vals[i, s]
            elif s == SRC_ZERO:
                a[p, c] = 0.0
            else:
                a[p, c] = null_value()
        h_start[r, t] = st
        h_len[r, t] = ln + 1
        stats[1] += 1
    return n, -1, 0


@njit(cache=True)
def _compact(t, old, new, nrows, h_off, h_start, h_len, h_cls, caps, cutoff):
    """Copy every live, retained list of type ``t`` from ``old`` into ``new`` (sized by the
    caller to hold them), in row order with tight capacity classes. Returns (bump, used)."""
    width = old.shape[1]
    b = 0
    for r in range(nrows):
        off = h_off[r, t]
        if off < 0:
            continue
        st = np.int64(h_start[r, t])
        ln = np.int64(h_len[r, t])
        while ln > 0 and old[off + st, 0] <= cutoff:
            st += 1
            ln -= 1
        if ln == 0:
            h_off[r, t] = -1
            h_start[r, t] = 0
            h_len[r, t] = 0
            h_cls[r, t] = 0
            continue
        cl = _class_for(caps, ln)
        for k in range(ln):
            for c in range(width):
                new[b + k, c] = old[off + st + k, c]
        h_off[r, t] = b
        h_start[r, t] = 0
        h_len[r, t] = ln
        h_cls[r, t] = cl
        b += caps[cl]
    return b, b


@njit(cache=True)
def _compact_size(t, old, nrows, h_off, h_start, h_len, caps, cutoff):
    """Arena rows ``_compact`` will need for type ``t``."""
    total = 0
    for r in range(nrows):
        off = h_off[r, t]
        if off < 0:
            continue
        st = np.int64(h_start[r, t])
        ln = np.int64(h_len[r, t])
        while ln > 0 and old[off + st, 0] <= cutoff:
            st += 1
            ln -= 1
        if ln > 0:
            total += caps[_class_for(caps, ln)]
    return total


@njit(cache=True)
def _live_events(t, nrows, h_off, h_len):
    total = 0
    for r in range(nrows):
        if h_off[r, t] >= 0:
            total += h_len[r, t]
    return total


@njit(cache=True)
def _clear_rows(rows, ntypes, h_off, h_start, h_len, h_cls, used, caps):
    """Forget every event of the given rows (their blocks become holes)."""
    for i in range(rows.shape[0]):
        r = rows[i]
        for t in range(ntypes):
            if h_off[r, t] >= 0:
                used[t] -= caps[h_cls[r, t]]
                h_off[r, t] = -1
                h_start[r, t] = 0
                h_len[r, t] = 0
                h_cls[r, t] = 0


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
