"""Boxed values: every property value, trait value and program operand is one float64.

Numbers are stored as themselves (``-0.0`` is folded to ``0.0``; a NaN given as input means
"absent"). Every other kind lives in the NaN space, so one float64 array holds a column of
mixed kinds and Numba kernels read its raw bits through an int64 view:

============  ===========================================  ===========================
kind          bits (int64 view)                            notes
============  ===========================================  ===========================
null/absent   0x7FF8_0000_0000_0000 (``np.nan``)           any other NaN also reads as null
string        STR_TAG  | code   (code < 2**32)             code from the shard's string table
bool          BOOL_TAG | 0/1
============  ===========================================  ===========================

Equal strings have equal bits within one shard, so ``==``, ``in``, ``distinct`` and
``top_count`` compare bits. Kernels never do arithmetic on non-numbers.
"""

from __future__ import annotations

import numpy as np

NULL_BITS = np.int64(0x7FF8_0000_0000_0000)
# Negative quiet NaNs with distinct high words: never produced by arithmetic on x86-64/ARM,
# which yields the positive default NaN.
STR_TAG = np.int64(np.uint64(0xFFF9_0000_0000_0000).astype(np.int64))
BOOL_TAG = np.int64(np.uint64(0xFFFA_0000_0000_0000).astype(np.int64))
TAG_MASK = np.int64(np.uint64(0xFFFF_0000_0000_0000).astype(np.int64))
PAYLOAD_MASK = np.int64(0x0000_FFFF_FFFF_FFFF)

NULL = float(np.array([NULL_BITS], dtype=np.int64).view(np.float64)[0])

# kinds returned by ``kind_of_bits``
K_NULL, K_NUMBER, K_STRING, K_BOOL = 0, 1, 2, 3


def box_string_code(code: int) -> float:
    return float(np.array([STR_TAG | np.int64(code)], dtype=np.int64).view(np.float64)[0])


def box_bool(b: bool) -> float:
    return float(np.array([BOOL_TAG | np.int64(1 if b else 0)], dtype=np.int64).view(np.float64)[0])


def box_strings(codes: np.ndarray) -> np.ndarray:
    """Vectorised: int array of string codes -> boxed float64 array."""
    return (STR_TAG | codes.astype(np.int64)).view(np.float64)


def box_bools(values: np.ndarray) -> np.ndarray:
    return (BOOL_TAG | values.astype(np.int64)).view(np.float64)


def kind_of_bits(bits: int) -> int:
    """Kind of one boxed value given its int64 bits (Python-side helper; kernels inline it)."""
    tag = bits & int(TAG_MASK)
    if tag == int(STR_TAG):
        return K_STRING
    if tag == int(BOOL_TAG):
        return K_BOOL
    if (bits & 0x7FF0_0000_0000_0000) == 0x7FF0_0000_0000_0000 and (bits & 0x000F_FFFF_FFFF_FFFF):
        return K_NULL
    return K_NUMBER


def unbox(x: float, strings) -> object:
    """One boxed value -> Python value; ``strings(code)`` returns the string of a code."""
    bits = int(np.array([x], dtype=np.float64).view(np.int64)[0])
    k = kind_of_bits(bits)
    if k == K_NULL:
        return None
    if k == K_STRING:
        return strings(bits & 0xFFFF_FFFF)
    if k == K_BOOL:
        return bool(bits & 1)
    return x
