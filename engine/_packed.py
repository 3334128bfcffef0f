"""Numpy arrays pickled as raw buffers (a round's steps to a shard, Ray calls).

numpy pickles each array through its generic reduce (the dtype, the shape, a reconstruct
call): a few microseconds of fixed work each way, whatever the array's size, and a validated
events step holds ~18 small arrays (the string columns' blobs, offsets, hashes and codes, the
stamps, the values, each property). ``reduce_arrays`` hands pickle each array's bytes as a
``PickleBuffer`` (protocol 5: written as they are, loaded as a bytearray) and keeps the
dtypes and shapes in one small tuple; ``restore_arrays`` puts writable arrays over them.
Only plain numeric arrays are handled: a caller with an object array pickles as before.
"""

from __future__ import annotations

import pickle

import numpy as np

Layout = tuple[tuple[str, "tuple[int, ...] | None"], ...]   # (dtype, shape when not 1-D) per array


def packable(arrays) -> bool:
    return all(isinstance(a, np.ndarray) and not a.dtype.hasobject for a in arrays)


def reduce_arrays(arrays, protocol: int) -> tuple[tuple, Layout]:
    """The arrays' bytes as pickle should take them, and their dtypes and shapes."""
    layout = tuple((a.dtype.str, a.shape if a.ndim != 1 else None) for a in arrays)
    if protocol >= 5:
        bufs = tuple(pickle.PickleBuffer(np.ascontiguousarray(a)) for a in arrays)
    else:
        bufs = tuple(a.tobytes() for a in arrays)
    return bufs, layout


def restore_arrays(bufs, layout: Layout) -> list[np.ndarray]:
    """Writable arrays over what ``reduce_arrays`` gave pickle (a loaded bytearray is used as
    it is; read-only bytes are copied first)."""
    out = []
    for buf, (dtype, shape) in zip(bufs, layout):
        if not isinstance(buf, bytearray):
            buf = bytearray(buf)
        x = np.frombuffer(buf, dtype=dtype)
        out.append(x if shape is None else x.reshape(shape))
    return out
