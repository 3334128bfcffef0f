"""Dictionary-coded columns: the form ``ColumnarEvents`` carries over gRPC, kept as it is.

A string column there is its distinct strings once and one int32 code per row. Expanding it
into one Python object per row, only for ``engine._batch`` to join, split and deduplicate
those rows again, cost the gateway most of its decoding time. ``prepare_events`` takes these
two types wherever it takes a column and splits only the distinct strings:

* :class:`CodedStrings`: ``user_id``, ``type``, or the string part of a property;
* :class:`CodedValues`: a property column of mixed kinds (absent, number, string, bool).

Both behave as read-only sequences (``len``, iteration, ``tolist``), so code that wants
plain values still gets them, and validate exactly as their plain values would: the same
rejections with the same reasons.

A dictionary decoded from the wire keeps its UTF-8 bytes (:class:`Utf8Strings`) and makes no
Python string at all on the way to a :class:`StringColumn`: one kernel pass hashes and
deduplicates the used strings where they lie in the request's blob, which gives the column
that splitting the same strings as text gives. They are decoded only when something asks
for them (a rejection's reason, ``tolist``).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

import numpy as np

from engine.kernels._strings import StringColumn, split_ranges, split_strings_report, string_problem

ABSENT, NUMBER, STRING, BOOL = 0, 1, 2, 3      # the proto's ValueKind numbers


SMALL_DECODE = 128   # up to this many strings a blob is decoded by slicing (measured crossover ~250)


def split_blob(blob: bytes, offsets: np.ndarray, k: int) -> list[str]:
    """The ``k`` strings of ``blob`` at byte ``offsets`` (UnicodeDecodeError if one is not
    UTF-8)."""
    if k <= SMALL_DECODE:
        # few strings (a small request): one decode, then slices; byte offsets are character
        # offsets when the text is ASCII
        text = blob.decode("utf-8")
        if len(text) == len(blob):
            bounds = offsets.tolist()
            return [text[bounds[j]:bounds[j + 1]] for j in range(k)]
    raw = np.frombuffer(blob, dtype=np.uint8)
    if k > 1 and not np.any(raw == 0):
        # one C-speed decode: put NUL separators at the boundaries, then split on them
        return np.insert(raw, offsets[1:-1], 0).tobytes().decode("utf-8").split("\0")
    bounds = offsets.tolist()
    return [blob[bounds[j]:bounds[j + 1]].decode("utf-8") for j in range(k)]


class Utf8Strings:
    """k strings as UTF-8 bytes: string ``j`` is ``blob[starts[j]:ends[j]]`` (uint8, int64,
    int64). Built by :meth:`checked`, so every string is valid UTF-8 (no lone surrogate) and
    holds no NUL; :meth:`select` picks some of them without copying bytes."""

    __slots__ = ("blob", "starts", "ends")

    def __init__(self, blob: np.ndarray, starts: np.ndarray, ends: np.ndarray):
        self.blob, self.starts, self.ends = blob, starts, ends

    def __len__(self) -> int:
        return len(self.starts)

    @classmethod
    def checked(cls, blob: bytes, offsets: np.ndarray) -> "Utf8Strings | None":
        """-> the strings of ``blob`` at ``offsets`` (rising from 0 to ``len(blob)``), or None
        when a string holds a NUL (such a string is rejected row by row, from its decoded
        text). UnicodeDecodeError when they are not all valid UTF-8."""
        raw = np.frombuffer(blob, dtype=np.uint8)
        if len(raw):
            if raw.min() == 0:
                return None
            if raw.max() >= 0x80:
                # valid as a whole, and no string starts inside a character: then each string
                # is valid on its own (a cut inside a character starts the next non-empty
                # string with a continuation byte)
                codecs.utf_8_decode(blob, "strict", True)
                starts = offsets[:-1][offsets[1:] > offsets[:-1]]
                if np.any((raw[starts] & 0xC0) == 0x80):
                    raise UnicodeDecodeError("utf-8", blob, 0, len(blob), "a string starts inside a character")
        return cls(raw, offsets[:-1], offsets[1:])

    def strings(self) -> list[str]:
        data = self.blob.tobytes()
        return [data[a:b].decode("utf-8") for a, b in zip(self.starts.tolist(), self.ends.tolist())]

    def select(self, keep: np.ndarray) -> "Utf8Strings":
        return Utf8Strings(self.blob, self.starts[keep], self.ends[keep])

    def column(self) -> StringColumn:
        """The strings as a :class:`StringColumn` (``codes[j]``: string ``j``'s unique)."""
        return split_ranges(self.blob, self.starts, self.ends)


class CodedStrings:
    """n strings as ``codes`` (int32[n]) into ``uniques`` (list of str); code -1 is absent
    (None). The caller has checked that every code is -1 or indexes ``uniques``.

    ``raw``, when given, holds the same strings as UTF-8 (:class:`Utf8Strings`), and
    ``uniques`` (None then) is decoded from it only when read."""

    __slots__ = ("codes", "raw", "_uniques")

    def __init__(self, uniques: list | None, codes: np.ndarray, raw: Utf8Strings | None = None):
        if uniques is None and raw is None:
            raise ValueError("CodedStrings needs its uniques or their UTF-8 bytes")
        self._uniques, self.codes, self.raw = uniques, codes, raw

    @property
    def uniques(self) -> list:
        if self._uniques is None:
            self._uniques = self.raw.strings()
        return self._uniques

    @property
    def n_unique(self) -> int:
        return len(self._uniques) if self._uniques is not None else len(self.raw)

    def __len__(self) -> int:
        return len(self.codes)

    def objects(self) -> np.ndarray:
        """The rows as an object array (None where absent)."""
        table = np.empty(self.n_unique + 1, dtype=object)
        table[: self.n_unique] = self.uniques
        return table[np.where(self.codes < 0, self.n_unique, self.codes)]

    def tolist(self) -> list:
        return self.objects().tolist()

    def __iter__(self):
        return iter(self.tolist())

    def with_codes(self, codes: np.ndarray) -> "CodedStrings":
        """The same dictionary, other rows."""
        return CodedStrings(self._uniques, codes, self.raw)

    def compact(self) -> "CodedStrings":
        """Only the uniques some row uses (a dictionary may list strings no row names: they
        must not reach a shard's tables), codes renumbered."""
        k = self.n_unique
        if k == 0:
            return self
        used = np.bincount(self.codes[self.codes >= 0], minlength=k) > 0
        if used.all():
            return self
        keep = np.flatnonzero(used)
        remap = np.full(k, -1, np.int32)
        remap[keep] = np.arange(len(keep), dtype=np.int32)
        codes = np.where(self.codes >= 0, remap[np.maximum(self.codes, 0)], -1).astype(np.int32)
        uniques = None if self._uniques is None else [self._uniques[j] for j in keep.tolist()]
        return CodedStrings(uniques, codes, None if self.raw is None else self.raw.select(keep))



def split_coded(col: CodedStrings) -> tuple[StringColumn, list[tuple[int, str]]]:
    """:func:`engine.kernels._strings.split_strings_report` of the rows of ``col``, splitting
    only its distinct strings: -> (column, problems by row). An absent row is a problem
    (``string_problem(None)``) and, like every bad row, reads as ``""``."""
    col = col.compact()
    absent = col.codes < 0
    any_absent = bool(absent.any())
    if col.raw is not None and not any_absent and len(col.raw):
        # split from the bytes as they came: no Python string made (see the module's doc)
        u = col.raw.column()
        return StringColumn(u.blob, u.offsets, u.hashes, u.codes[col.codes].astype(np.int32)), []
    k = col.n_unique
    values = col.uniques + [""] if any_absent else col.uniques
    u, unique_problems = split_strings_report(values)
    idx = np.where(absent, k, col.codes) if any_absent else col.codes
    out = StringColumn(u.blob, u.offsets, u.hashes, u.codes[idx].astype(np.int32))
    problems = []
    for j, p in unique_problems:
        problems.extend((i, p) for i in np.flatnonzero(idx == j).tolist())
    if any_absent:
        p = string_problem(None)
        problems.extend((i, p) for i in np.flatnonzero(absent).tolist())
    problems.sort()
    return out, problems


@dataclass(frozen=True)
class CodedValues:
    """A property column of n values by kind: ``kinds`` uint8[n] (ABSENT, NUMBER, STRING,
    BOOL), ``numbers`` float64[n] for NUMBER and BOOL rows (BOOL: nonzero is true; None when
    no row is either), ``strings`` the STRING rows' values in row order (None when none)."""

    kinds: np.ndarray
    numbers: np.ndarray | None
    strings: CodedStrings | None

    def __len__(self) -> int:
        return len(self.kinds)

    def objects(self) -> np.ndarray:
        """The values as an object array of str/float/bool/None."""
        out = np.full(len(self.kinds), None, dtype=object)
        m = self.kinds == NUMBER
        if m.any():
            out[m] = self.numbers[m].tolist()
        m = self.kinds == BOOL
        if m.any():
            out[m] = (self.numbers[m] != 0).tolist()
        m = self.kinds == STRING
        if m.any():
            out[m] = self.strings.objects()
        return out

    def tolist(self) -> list:
        return self.objects().tolist()

    def __iter__(self):
        return iter(self.tolist())


def plain(col):
    """``col`` as an object array when it is coded, else unchanged."""
    if isinstance(col, (CodedStrings, CodedValues)):
        return col.objects()
    return col
