"""Numba kernels: pure functions over arrays (no Ray, gRPC or dicts).

Compiled kernels are cached on disk. Numba checks a cached function only against its own
source file, so a change in a helper it calls from another module (``_store`` helpers used by
``_eval``) would leave stale machine code in the cache. The cache therefore lives in a
directory named by a hash of every kernel source (and of the versions of Numba and of the
constants in ``engine/_values.py``): any change gets a fresh cache. ``NUMBA_CACHE_DIR``, when
set, is used as it is; ``RTSEG_CACHE_DIR`` moves the default (``~/.cache/rtseg``).

**Helpers that take arrays.** Numba inlines an ``inline="always"`` function in its own IR,
and in a kernel that uses reference counting (one that allocates arrays) each inlined call
then increments and decrements the count of every array it is given: two atomic operations
per array per call. In loops over events that was 8 % of a replay (found with a debugger's
breakpoint on ``NRT_incref``: ``_touched``'s per-event helper and ``_append``'s block
allocation). So a helper that takes arrays is a plain ``@njit(_nrt=False)`` function, which
LLVM inlines without counting; ``inline="always"`` is kept for helpers of scalars and for
helpers called only from ``_nrt=False`` kernels (``_leaf``'s kinds).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def _configure_cache() -> None:
    import numba

    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256(numba.__version__.encode())
    for path in sorted(here.glob("*.py")) + [here.parent / "_values.py"]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    base = Path(os.environ.get("RTSEG_CACHE_DIR") or Path.home() / ".cache" / "rtseg")
    numba.config.CACHE_DIR = str(base / f"numba-{digest.hexdigest()[:16]}")


_configure_cache()
