"""String columns and the interning string table.

Strings cross the hot path as a :class:`StringColumn`: the unique strings of a batch, their
UTF-8 bytes concatenated in one ``uint8`` array, and one small integer code per value. A
:class:`StringTable` interns such columns into stable codes ``0, 1, 2, ...`` (insertion
order) with an open-addressing hash table over a byte arena, so neither building a column nor
interning it runs a Python loop per string.

No string handled here contains a NUL character: ``"\\0"`` is the separator that lets a whole
batch be joined, encoded and split in one go (``"\\0".join(values).encode()`` is C speed), and
that lets :meth:`StringTable.gather` decode many strings with one ``decode`` + ``split``.
Validation rejects such strings before they get here.

Hashes are FNV-1a 64 of the UTF-8 bytes. A user's shard slot is that hash mod ``NUM_SLOTS``.
"""

from __future__ import annotations

import codecs
import sys
from dataclasses import dataclass

import numpy as np
from numba import njit

from ._bits import prefetch

NUM_SLOTS = 4096

_FNV_OFFSET = np.uint64(0xCBF2_9CE4_8422_2325)
_FNV_PRIME = np.uint64(0x0000_0100_0000_01B3)
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF

# A hash-table slot is one uint64: the high 32 bits of the string's hash (a tag that rules out
# almost every wrong candidate without touching the arena) | the string's code in the low 32
# bits. Codes stay below 2**31, so a used slot is never all ones.
_EMPTY = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
_HI_MASK = np.uint64(0xFFFF_FFFF_0000_0000)
_LO_MASK = np.uint64(0x0000_0000_FFFF_FFFF)

MAX_CODES = 2**31 - 1

# Problems reported by ``split_strings_report`` (phrased to follow the column's name).
PROBLEM_MISSING = "is required"
PROBLEM_NUL = "must not contain a NUL character (\\0)"
PROBLEM_SURROGATE = "is not valid Unicode text (it holds a lone surrogate)"


def fnv1a64(data: bytes) -> int:
    """FNV-1a 64 of ``data`` (the reference the kernels are checked against)."""
    h = 0xCBF2_9CE4_8422_2325
    for b in data:
        h = ((h ^ b) * 0x0000_0100_0000_01B3) & _MASK64
    return h


def slot_of(user_id: str) -> int:
    """Shard slot of a user id: FNV-1a 64 of its UTF-8 bytes mod ``NUM_SLOTS``."""
    return int(_hash_bytes(_bytes_array(user_id.encode("utf-8"))) % np.uint64(NUM_SLOTS))


# ----------------------------------------------------------------------------------- kernels


@njit(cache=True)
def _hash_range(buf, start, end):
    h = _FNV_OFFSET
    for i in range(start, end):
        h = (h ^ np.uint64(buf[i])) * _FNV_PRIME
    return h


@njit(cache=True)
def _hash_bytes(buf):
    return _hash_range(buf, 0, buf.size)


@njit(cache=True)
def _bytes_equal(a, a0, b, b0, length):
    for t in range(length):
        if a[a0 + t] != b[b0 + t]:
            return False
    return True


@njit(cache=True)
def _rebuild_slots(hashes, n, slots):
    """Fill an empty slot array with codes ``0..n-1`` (all distinct strings)."""
    mask = slots.size - 1
    for c in range(n):
        h = hashes[c]
        j = np.int64(h & np.uint64(mask))
        while slots[j] != _EMPTY:
            j = (j + 1) & mask
        slots[j] = (h & _HI_MASK) | np.uint64(c)


@njit(cache=True, _nrt=False)
def _probe(slots, mask, h, offsets, arena, key, start, length):
    """Find the string ``key[start:start+length]`` (hash ``h``) in an open-addressing table
    whose slots hold ``hash high bits | code`` and whose strings are ``arena[offsets[c]:
    offsets[c+1]]``. Returns ``(slot, code)``: the code and its slot when found, else
    ``(the empty slot where it would go, -1)``."""
    hi = h & _HI_MASK
    j = np.int64(h & np.uint64(mask))
    while True:
        e = slots[j]
        if e == _EMPTY:
            return j, np.int64(-1)
        if (e & _HI_MASK) == hi:
            c = np.int64(e & _LO_MASK)
            a0 = offsets[c]
            if offsets[c + 1] - a0 == length and _bytes_equal(arena, a0, key, start, length):
                return j, c
        j = (j + 1) & mask


# Splitting a batch's strings compares and hashes them by 8-byte words: a string of up to 16
# bytes (ids, event type names) is two masked words, read without a per-byte loop, so its
# hash, probe and comparison take no branch that depends on its length (the per-byte loop
# and its mispredicted exits were most of a split: 0.58 -> 0.26 ms for 20,000 type names).
# That hash only finds duplicates within one batch; the FNV-1a of each unique is computed
# once, afterwards. Its seed is drawn per process, so that no fixed set of strings collides.
_TAIL = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [_MASK64], dtype=np.uint64)
_K1 = np.uint64(0x9E37_79B9_7F4A_7C15)
_K2 = np.uint64(0xC2B2_AE3D_27D4_EB4F)
_K3 = np.uint64(0xFF51_AFD7_ED55_8CCD)
_SPLIT_SEED = np.uint64(np.random.SeedSequence().generate_state(1, np.uint64)[0])
_PAD = 24   # zero bytes past a buffer's end: the word reads of its last string stay inside


@njit(cache=True, _nrt=False)
def _word_at(words, p):
    """The 8 bytes at byte offset ``p`` of ``words`` (a little-endian uint64 view of a
    buffer), byte ``p`` lowest. ``(x << 1) << (63 - o)`` is ``x << (64 - o)``, and 0 when
    ``o`` is 0 (a shift by 64 would be undefined)."""
    q = p >> 3
    o = np.uint64((p & 7) * 8)
    return (words[q] >> o) | ((words[q + 1] << np.uint64(1)) << (np.uint64(63) - o))


@njit(cache=True)
def _split_dedupe(buf, words, starts, ends, seed):
    """Dedupe the strings ``buf[starts[i]:ends[i]]`` (``buf`` padded with ``_PAD`` zero
    bytes; ``words`` is ``buf`` read as words).

    Returns ``(blob, offsets, hashes, codes)`` of a :class:`StringColumn`: uniques in order
    of first appearance, their FNV-1a 64 hashes.
    """
    n = ends.shape[0]
    # The table starts small and grows at load 0.5: batches usually hold far fewer uniques
    # than values, and a table sized for the uniques stays in cache.
    size = 4096
    mask = size - 1
    table = np.full(size, _EMPTY, np.uint64)
    codes = np.empty(n, np.int32)
    ustart = np.empty(n, np.int64)
    ulen = np.empty(n, np.int64)
    uw0 = np.empty(n, np.uint64)           # a unique's first two words (masked to its length)
    uw1 = np.empty(n, np.uint64)
    uhash = np.empty(n, np.uint64)
    nu = 0
    for i in range(n):
        s = starts[i]
        e = ends[i]
        length = e - s
        k0 = length if length < 8 else 8
        k1 = length - k0 if length < 16 else 8
        w0 = _word_at(words, s) & _TAIL[k0]
        w1 = _word_at(words, s + 8) & _TAIL[k1]
        h = (seed ^ np.uint64(length)) + w0 * _K1
        h = (h ^ (h >> np.uint64(29))) + w1 * _K2
        p = s + 16
        while p < e:                        # strings over 16 bytes: the rest, word by word
            k = e - p if e - p < 8 else 8
            h = (h ^ (h >> np.uint64(29))) * _K1 + (_word_at(words, p) & _TAIL[k])
            p += 8
        h ^= h >> np.uint64(33)
        h *= _K3
        h ^= h >> np.uint64(33)
        hi = h & _HI_MASK
        j = np.int64(h & np.uint64(mask))
        u = np.int64(-1)
        while True:
            x = table[j]
            if x == _EMPTY:
                break
            if (x & _HI_MASK) == hi:
                c = np.int64(x & _LO_MASK)
                if ulen[c] == length and uw0[c] == w0 and uw1[c] == w1 and (
                        length <= 16 or _bytes_equal(buf, ustart[c] + 16, buf, s + 16, length - 16)):
                    u = c
                    break
            j = (j + 1) & mask
        if u >= 0:
            codes[i] = u
            continue
        table[j] = hi | np.uint64(nu)
        ustart[nu] = e - length
        ulen[nu] = length
        uw0[nu] = w0
        uw1[nu] = w1
        uhash[nu] = h
        codes[i] = nu
        nu += 1
        if 2 * nu > size:
            # grow to fit the uniques this column's rate so far predicts (each doubling
            # re-inserts every unique so far)
            want = 2 * ((nu * n) // (i + 1) + 1)
            while size < want:
                size *= 2
            mask = size - 1
            table = np.full(size, _EMPTY, np.uint64)
            _rebuild_slots(uhash, nu, table)
    total = 0
    for c in range(nu):
        total += ulen[c]
    blob = np.empty(total, np.uint8)
    offsets = np.empty(nu + 1, np.int64)
    hashes = np.empty(nu, np.uint64)
    offsets[0] = 0
    p = 0
    for c in range(nu):             # copy and ``_hash_range`` in one pass (as two: +8 %)
        a = ustart[c]
        h = _FNV_OFFSET
        for t in range(ulen[c]):
            v = buf[a + t]
            blob[p + t] = v
            h = (h ^ np.uint64(v)) * _FNV_PRIME
        p += ulen[c]
        offsets[c + 1] = p
        hashes[c] = h
    return blob, offsets, hashes, codes


@njit(cache=True)
def _concat(blob, offsets, idx, sep):
    """Bytes of strings ``idx`` back to back; with ``sep >= 0`` that byte between them.

    Returns ``(out, out_offsets)``; ``out_offsets`` is only meaningful without a separator.
    """
    m = idx.size
    total = 0
    for i in range(m):
        total += offsets[idx[i] + 1] - offsets[idx[i]]
    if sep >= 0 and m > 0:
        total += m - 1
    out = np.empty(total, np.uint8)
    out_offsets = np.empty(m + 1, np.int64)
    pos = 0
    for i in range(m):
        if sep >= 0 and i > 0:
            out[pos] = sep
            pos += 1
        out_offsets[i] = pos
        a = offsets[idx[i]]
        b = offsets[idx[i] + 1]
        for t in range(a, b):
            out[pos] = blob[t]
            pos += 1
    out_offsets[m] = pos
    return out, out_offsets


@njit(cache=True)
def _intern(arena, offsets, hashes, slots, n, used, cblob, coffsets, chashes, start_k, out):
    """Intern column uniques ``start_k...`` into the table; codes into ``out``.

    Stops before an insertion that would push the table past half its slots or past the
    arena's end, so the caller grows the arrays and calls again from the returned ``k``.
    Returns ``(k, n, used)``.

    The table is large (a shard's users) and the uniques arrive in random order, so each
    probe would wait on memory: the slot of unique ``k + 8``, the offset of the code found in
    the slot of ``k + 4`` and the bytes of the one of ``k + 2`` are prefetched (interning a
    batch's user ids, measured: ~30 % less time at 100k users, ~2.6x less at 1M).
    """
    mask = slots.size - 1
    max_n = slots.size // 2
    if max_n > hashes.size:
        max_n = hashes.size
    k = start_k
    nk = chashes.size
    while k < nk:
        if k + 8 < nk:
            prefetch(slots, np.int64(chashes[k + 8] & np.uint64(mask)))
        if k + 4 < nk:
            e = slots[np.int64(chashes[k + 4] & np.uint64(mask))]
            if e != _EMPTY:
                prefetch(offsets, np.int64(e & _LO_MASK))
        if k + 2 < nk:
            e = slots[np.int64(chashes[k + 2] & np.uint64(mask))]
            if e != _EMPTY:
                prefetch(arena, offsets[np.int64(e & _LO_MASK)])
        h = chashes[k]
        s0 = coffsets[k]
        length = coffsets[k + 1] - s0
        j, c = _probe(slots, mask, h, offsets, arena, cblob, s0, length)
        if c >= 0:
            out[k] = c
        else:
            if n >= max_n or used + length > arena.size:
                return k, n, used
            for t in range(length):
                arena[used + t] = cblob[s0 + t]
            used += length
            offsets[n + 1] = used
            hashes[n] = h
            slots[j] = (h & _HI_MASK) | np.uint64(n)
            out[k] = n
            n += 1
        k += 1
    return k, n, used


@njit(cache=True)
def _lookup(arena, offsets, slots, cblob, coffsets, chashes, out):
    mask = slots.size - 1
    for k in range(chashes.size):
        h = chashes[k]
        s0 = coffsets[k]
        length = coffsets[k + 1] - s0
        out[k] = _probe(slots, mask, h, offsets, arena, cblob, s0, length)[1]


# ---------------------------------------------------------------------------- string columns


def _bytes_array(data: bytes) -> np.ndarray:
    """A writable uint8 array over a copy of ``data`` (one kernel signature for all blobs)."""
    return np.frombuffer(bytearray(data), dtype=np.uint8)


def _decode_joined(buf: np.ndarray) -> list[str]:
    return codecs.utf_8_decode(buf, "strict", True)[0].split("\0")


@dataclass
class StringColumn:
    """n strings as codes into a batch-local table of unique strings.

    ``blob`` holds the uniques' UTF-8 bytes back to back; unique ``k`` is
    ``blob[offsets[k]:offsets[k+1]]`` with FNV-1a 64 hash ``hashes[k]``; ``codes[i]`` is the
    unique of value ``i``. Plain numpy arrays, so it pickles cheaply.
    """

    blob: np.ndarray  # uint8
    offsets: np.ndarray  # int64[n_unique + 1]
    hashes: np.ndarray  # uint64[n_unique]
    codes: np.ndarray  # int32[n]

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def n_unique(self) -> int:
        return len(self.hashes)

    @classmethod
    def empty(cls) -> StringColumn:
        return cls(
            np.empty(0, np.uint8),
            np.zeros(1, np.int64),
            np.empty(0, np.uint64),
            np.empty(0, np.int32),
        )

    @classmethod
    def from_strings(cls, values) -> StringColumn:
        """Same as :func:`split_strings`."""
        return split_strings(values)

    def uniques(self) -> list[str]:
        """The unique strings, in code order."""
        if self.n_unique == 0:
            return []
        idx = np.arange(self.n_unique, dtype=np.int64)
        out, _ = _concat(self.blob, self.offsets, idx, 0)
        return _decode_joined(out)

    def values(self) -> list[str]:
        """All n strings (decoded once per unique)."""
        if len(self.codes) == 0:
            return []
        return np.array(self.uniques(), dtype=object)[self.codes].tolist()

    def unique_lengths(self) -> np.ndarray:
        """int64[n_unique]: UTF-8 length of each unique."""
        return np.diff(self.offsets)

    def take(self, sel) -> StringColumn:
        """The values at ``sel`` (index array or boolean mask), uniques re-compacted."""
        codes = self.codes[np.asarray(sel)]
        used = np.zeros(self.n_unique, dtype=bool)
        used[codes] = True
        if used.all():
            return StringColumn(self.blob, self.offsets, self.hashes, codes)
        keep = np.flatnonzero(used)
        remap = np.full(self.n_unique, -1, dtype=np.int32)
        remap[keep] = np.arange(len(keep), dtype=np.int32)
        blob, offsets = _concat(self.blob, self.offsets, keep.astype(np.int64), -1)
        return StringColumn(blob, offsets, self.hashes[keep], remap[codes])

    def select_uniques(self, keep: np.ndarray) -> StringColumn:
        """A column holding just uniques ``keep`` (in that order), codes ``0..len(keep)-1``."""
        keep = np.asarray(keep, dtype=np.int64)
        blob, offsets = _concat(self.blob, self.offsets, keep, -1)
        return StringColumn(blob, offsets, self.hashes[keep], np.arange(len(keep), dtype=np.int32))


def _as_sequence(values) -> list | tuple:
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise ValueError(f"expected a 1-D array of strings, got shape {values.shape}")
        return values.tolist()
    if isinstance(values, (list, tuple)):
        return values
    return list(values)


def _split_buffer(data, n: int):
    """``(ok, column)`` of the ``n`` strings joined by NUL in ``data`` (bytes); ``ok`` is
    False when ``data`` holds more than ``n - 1`` NULs (a string contained one)."""
    src = np.frombuffer(data, dtype=np.uint8)
    ranges = joined_ranges(src, n)
    if ranges is None:
        return False, None
    return True, split_ranges(src, *ranges)


def joined_ranges(src: np.ndarray, n: int):
    """``(starts, ends)`` of the ``n`` strings joined by NUL in ``src`` (uint8), or None when
    it holds more than ``n - 1`` NULs (a string contained one)."""
    seps = np.flatnonzero(src == 0)
    if seps.size != n - 1:
        return None
    starts = np.empty(n, np.int64)
    starts[0] = 0
    starts[1:] = seps + 1
    ends = np.empty(n, np.int64)
    ends[: n - 1] = seps
    ends[n - 1] = len(src)
    return starts, ends


def split_ranges(blob: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> StringColumn:
    """A :class:`StringColumn` of the strings ``blob[starts[i]:ends[i]]`` (uint8, int64,
    int64; UTF-8 without NUL, which the caller has checked): split, hashed and deduplicated
    in one kernel pass, no Python string made."""
    m = len(blob)
    buf = np.zeros(((m + _PAD) >> 3) << 3, np.uint8)    # numpy aligns it: a word view
    buf[:m] = blob
    words = buf.view(np.uint64)
    if sys.byteorder == "big":
        words = words.byteswap()
    return StringColumn(*_split_dedupe(buf, words, starts, ends, _SPLIT_SEED))


def string_problem(v) -> str | None:
    """Why ``v`` cannot be a string value here, or None if it can."""
    if v is None:
        return PROBLEM_MISSING
    if not isinstance(v, str):
        return f"must be a string, got {type(v).__name__}"
    if "\0" in v:
        return PROBLEM_NUL
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return PROBLEM_SURROGATE
    return None


def split_strings_report(values, joined: str | None = None) -> tuple[StringColumn, list[tuple[int, str]]]:
    """Like :func:`split_strings`, but bad elements are reported, not raised. ``joined``, when
    given, is ``"\0".join(values)`` already made.

    Returns ``(column, problems)``: ``problems`` lists ``(index, problem)`` for elements that
    are not strings, contain NUL or cannot be encoded (``problem`` reads after the column's
    name: ``"must be a string, got int"``); those elements become ``""`` in the column. The
    per-element scan runs only when the one-shot join/encode/split finds a problem.
    """
    seq = _as_sequence(values)
    n = len(seq)
    if n == 0:
        return StringColumn.empty(), []
    try:
        data = ("\0".join(seq) if joined is None else joined).encode("utf-8")
    except (TypeError, UnicodeEncodeError):
        data = None
    if data is not None:
        ok, col = _split_buffer(data, n)
        if ok:
            return col, []
    problems = []
    clean = list(seq)
    for i, v in enumerate(seq):
        p = string_problem(v)
        if p is not None:
            problems.append((i, p))
            clean[i] = ""
    ok, col = _split_buffer("\0".join(clean).encode("utf-8"), n)
    assert ok
    return col, problems


def split_strings(values) -> StringColumn:
    """Build a :class:`StringColumn` from a list / tuple / 1-D numpy array of str.

    One ``"\\0".join`` + ``encode`` and one kernel pass (split, hash, dedupe): no Python loop
    per element. Raises ``ValueError`` naming the first bad element (not a str, contains NUL,
    lone surrogate); use :func:`split_strings_report` to collect them instead.

    >>> col = split_strings(["a", "b", "a"])
    >>> col.uniques(), col.codes.tolist()
    (['a', 'b'], [0, 1, 0])
    """
    col, problems = split_strings_report(values)
    if problems:
        i, p = problems[0]
        raise ValueError(f"string {i} {p} ({len(problems)} bad value(s) in all)")
    return col


# ------------------------------------------------------------------------------ string table


def _check_no_nul(s: str) -> bytes:
    if not isinstance(s, str):
        raise TypeError(f"expected a str, got {type(s).__name__}")
    if "\0" in s:
        raise ValueError("strings in a StringTable must not contain NUL characters")
    return s.encode("utf-8")


class StringTable:
    """Append-only interning table: strings get codes ``0, 1, 2, ...`` in insertion order.

    Storage is four numpy arrays: a byte arena, ``offsets`` (string ``c`` is
    ``arena[offsets[c]:offsets[c+1]]``), FNV-1a 64 ``hashes`` and an open-addressing slot array
    (linear probing, load at most 0.5, power-of-two size). Python grows them; kernels fill
    them.

    >>> t = StringTable()
    >>> t.intern(split_strings(["x", "y", "x"])).tolist()
    [0, 1]
    >>> t.gather(np.array([1, 0, 1]))
    ['y', 'x', 'y']
    """

    def __init__(self, capacity: int = 1024, byte_capacity: int | None = None):
        cap = 1
        while cap < max(int(capacity), 1):
            cap <<= 1
        if byte_capacity is None:
            byte_capacity = 16 * cap
        self._arena = np.empty(max(int(byte_capacity), 16), dtype=np.uint8)
        self._offsets = np.zeros(cap + 1, dtype=np.int64)
        self._hashes = np.empty(cap, dtype=np.uint64)
        self._slots = np.full(2 * cap, _EMPTY, dtype=np.uint64)
        self._n = 0
        self._used = 0

    # -- sizes
    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        """Bytes held by the table's arrays (capacity, not just what is used)."""
        return self._arena.nbytes + self._offsets.nbytes + self._hashes.nbytes + self._slots.nbytes

    def _grow_entries(self, need: int) -> None:
        cap = len(self._hashes)
        while cap < need:
            cap *= 2
        if cap == len(self._hashes):
            return
        offsets = np.zeros(cap + 1, dtype=np.int64)
        offsets[: self._n + 1] = self._offsets[: self._n + 1]
        hashes = np.empty(cap, dtype=np.uint64)
        hashes[: self._n] = self._hashes[: self._n]
        slots = np.full(2 * cap, _EMPTY, dtype=np.uint64)
        _rebuild_slots(hashes, self._n, slots)
        self._offsets, self._hashes, self._slots = offsets, hashes, slots

    def _grow_arena(self, need: int) -> None:
        size = len(self._arena)
        while size < need:
            size *= 2
        if size != len(self._arena):
            arena = np.empty(size, dtype=np.uint8)
            arena[: self._used] = self._arena[: self._used]
            self._arena = arena

    # -- bulk
    def intern(self, col: StringColumn) -> np.ndarray:
        """int64[col.n_unique]: the code of each of ``col``'s uniques, inserting new ones."""
        blob, offsets, hashes = _column_arrays(col)
        nu = len(hashes)
        out = np.empty(nu, dtype=np.int64)
        k = 0
        while True:
            k, n, used = _intern(
                self._arena, self._offsets, self._hashes, self._slots,
                self._n, self._used, blob, offsets, hashes, k, out,
            )
            self._n, self._used = int(n), int(used)
            k = int(k)
            if k >= nu:
                return out
            # Ran out of room: grow for everything that is left (an upper bound) and go on.
            if self._n + (nu - k) > MAX_CODES:
                raise OverflowError("string table is full (2**31 - 1 strings)")
            self._grow_entries(self._n + (nu - k))
            self._grow_arena(self._used + int(offsets[nu] - offsets[k]))

    def lookup(self, col: StringColumn) -> np.ndarray:
        """int64[col.n_unique]: the code of each of ``col``'s uniques, or -1 if absent."""
        blob, offsets, hashes = _column_arrays(col)
        out = np.empty(len(hashes), dtype=np.int64)
        _lookup(self._arena, self._offsets, self._slots, blob, offsets, hashes, out)
        return out

    def intern_values(self, values) -> np.ndarray:
        """int64[n]: the code of each string in ``values`` (a list or array of str)."""
        col = split_strings(values)
        return self.intern(col)[col.codes]

    def lookup_values(self, values) -> np.ndarray:
        """int64[n]: the code of each string in ``values``, -1 where absent."""
        col = split_strings(values)
        return self.lookup(col)[col.codes]

    def gather(self, codes) -> list[str]:
        """The strings of ``codes`` (any int array), in bulk: one kernel, one decode."""
        codes = np.ascontiguousarray(codes, dtype=np.int64).ravel()
        if codes.size == 0:
            return []
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= self._n:
            bad = lo if lo < 0 else hi
            raise IndexError(f"string code {bad} out of range (table holds {self._n})")
        out, _ = _concat(self._arena, self._offsets, codes, 0)
        return _decode_joined(out)

    # -- one at a time
    def _one(self, s: str) -> StringColumn:
        data = _bytes_array(_check_no_nul(s))
        return StringColumn(
            data,
            np.array([0, len(data)], dtype=np.int64),
            np.array([_hash_bytes(data)], dtype=np.uint64),
            np.zeros(1, dtype=np.int32),
        )

    def lookup_one(self, s: str) -> int:
        """Code of ``s`` or -1."""
        if not isinstance(s, str) or "\0" in s:
            return -1
        try:
            return int(self.lookup(self._one(s))[0])
        except UnicodeEncodeError:
            return -1

    def intern_one(self, s: str) -> int:
        """Code of ``s``, inserting it if new."""
        return int(self.intern(self._one(s))[0])

    def get(self, code: int) -> str:
        code = int(code)
        if not 0 <= code < self._n:
            raise IndexError(f"string code {code} out of range (table holds {self._n})")
        a, b = self._offsets[code], self._offsets[code + 1]
        return codecs.utf_8_decode(self._arena[a:b], "strict", True)[0]

    def hashes(self) -> np.ndarray:
        """uint64[len]: FNV-1a 64 of every string, by code (a view; do not modify)."""
        return self._hashes[: self._n]

    def to_list(self) -> list[str]:
        return self.gather(np.arange(self._n, dtype=np.int64))

    # -- state
    def snapshot(self) -> dict[str, np.ndarray]:
        """Plain arrays (copies) that :meth:`from_snapshot` turns back into an equal table."""
        return {
            "arena": self._arena[: self._used].copy(),
            "offsets": self._offsets[: self._n + 1].copy(),
            "hashes": self._hashes[: self._n].copy(),
        }

    @classmethod
    def from_snapshot(cls, d: dict[str, np.ndarray]) -> StringTable:
        arena = np.ascontiguousarray(d["arena"], dtype=np.uint8)
        offsets = np.ascontiguousarray(d["offsets"], dtype=np.int64)
        hashes = np.ascontiguousarray(d["hashes"], dtype=np.uint64)
        n = len(hashes)
        if len(offsets) != n + 1 or offsets[0] != 0 or offsets[-1] != len(arena):
            raise ValueError("inconsistent string table snapshot")
        t = cls(capacity=max(n, 1), byte_capacity=max(len(arena), 16))
        t._arena[: len(arena)] = arena
        t._offsets[: n + 1] = offsets
        t._hashes[:n] = hashes
        t._n, t._used = n, len(arena)
        _rebuild_slots(t._hashes, n, t._slots)
        return t


def _column_arrays(col: StringColumn):
    return (
        np.ascontiguousarray(col.blob, dtype=np.uint8),
        np.ascontiguousarray(col.offsets, dtype=np.int64),
        np.ascontiguousarray(col.hashes, dtype=np.uint64),
    )
