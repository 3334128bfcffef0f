"""Bit-level helpers on boxed float64 values (see engine/_values.py), usable inside kernels."""

from __future__ import annotations

import math

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .._values import BOOL_TAG, NULL_BITS, STR_TAG, TAG_MASK

_NULL_BITS = int(NULL_BITS)
_STR_TAG = int(STR_TAG)
_BOOL_TAG = int(BOOL_TAG)
_TAG_MASK = int(TAG_MASK)

K_NULL, K_NUMBER, K_STRING, K_BOOL = 0, 1, 2, 3


@intrinsic
def f2i(typingctx, x):
    """The int64 bits of a float64 (a register move, no memory)."""
    sig = types.int64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return sig, codegen


@intrinsic
def i2f(typingctx, x):
    """The float64 whose bits are the given int64."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


@njit(inline="always")
def null_value():
    return i2f(_NULL_BITS)


@njit(inline="always")
def bool_value(b):
    return i2f(_BOOL_TAG | (1 if b else 0))


@njit(inline="always")
def kind_of(x):
    if x == x:
        return K_NUMBER
    tag = f2i(x) & _TAG_MASK
    if tag == _STR_TAG:
        return K_STRING
    if tag == _BOOL_TAG:
        return K_BOOL
    return K_NULL


@njit(inline="always")
def is_true(x):
    return f2i(x) == (_BOOL_TAG | 1)


@njit(inline="always")
def number_or_null(x):
    """Arithmetic results: NaN (undefined) becomes the canonical null."""
    if x != x:
        return i2f(_NULL_BITS)
    return x


EARTH_RADIUS_M = 6371008.8


@njit(inline="always")
def haversine_m(lat1, lon1, lat2, lon2):
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    h = math.sin(dp / 2.0) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2.0) ** 2
    if h > 1.0:
        h = 1.0
    return 2.0 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


@intrinsic
def prefetch(typingctx, arr, idx):
    """Hint the CPU to start loading element ``idx`` (flat, C order) of the C-contiguous
    array ``arr`` into cache. It never faults and changes nothing.

    Evaluation visits users in random order; prefetching the next users' headers and event
    blocks overlaps their memory latency with the current user's work."""
    if not isinstance(arr, types.Array) or arr.layout != "C":
        return None
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        i8p = ir.IntType(8).as_pointer()
        fn = builder.module.declare_intrinsic("llvm.prefetch", fnty=ir.FunctionType(
            ir.VoidType(), [i8p, ir.IntType(32), ir.IntType(32), ir.IntType(32)]))
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(ir.IntType(32), 0),
                          ir.Constant(ir.IntType(32), 3), ir.Constant(ir.IntType(32), 1)])
        return context.get_dummy_value()

    return sig, codegen
