"""Counting membership bits per segment slot (segment sizes for the size history)."""

from __future__ import annotations

import numpy as np
from numba import njit

# de Bruijn sequence for the index of the lowest set bit of a 64-bit word
_DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)
_DEBRUIJN_INDEX = np.array([
    0, 1, 48, 2, 57, 49, 28, 3, 61, 58, 50, 42, 38, 29, 17, 4,
    62, 55, 59, 36, 53, 51, 43, 22, 45, 39, 33, 30, 24, 18, 12, 5,
    63, 47, 56, 27, 60, 41, 37, 16, 54, 35, 52, 21, 44, 32, 23, 11,
    46, 26, 40, 15, 34, 20, 31, 10, 25, 14, 19, 9, 13, 8, 7, 6], dtype=np.int64)


@njit(cache=True)
def slot_counts(member, nrows, out):
    """``out[s]`` += the number of rows (of the first ``nrows``) whose bit ``s`` is set in
    ``member`` (uint64[rows, words]; bit ``s`` is word ``s >> 6``, bit ``s & 63``). One pass,
    work proportional to rows x words + set bits."""
    words = member.shape[1]
    one = np.uint64(1)
    for r in range(nrows):
        for w in range(words):
            x = member[r, w]
            while x != 0:
                low = x & (~x + one)
                out[(w << 6) + _DEBRUIJN_INDEX[np.int64((low * _DEBRUIJN) >> np.uint64(58))]] += 1
                x ^= low
