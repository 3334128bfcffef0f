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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.kernels._strings import StringColumn, split_strings_report, string_problem

ABSENT, NUMBER, STRING, BOOL = 0, 1, 2, 3      # the proto's ValueKind numbers


@dataclass(frozen=True)
class CodedStrings:
    """n strings as ``codes`` (int32[n]) into ``uniques`` (list of str); code -1 is absent
    (None). The caller has checked that every code is -1 or indexes ``uniques``."""

    uniques: list
    codes: np.ndarray

    def __len__(self) -> int:
        return len(self.codes)

    def objects(self) -> np.ndarray:
        """The rows as an object array (None where absent)."""
        table = np.empty(len(self.uniques) + 1, dtype=object)
        table[: len(self.uniques)] = self.uniques
        return table[np.where(self.codes < 0, len(self.uniques), self.codes)]

    def tolist(self) -> list:
        return self.objects().tolist()

    def __iter__(self):
        return iter(self.tolist())

    def compact(self) -> "CodedStrings":
        """Only the uniques some row uses (a dictionary may list strings no row names: they
        must not reach a shard's tables), codes renumbered."""
        k = len(self.uniques)
        if k == 0:
            return self
        used = np.bincount(self.codes[self.codes >= 0], minlength=k) > 0
        if used.all():
            return self
        keep = np.flatnonzero(used)
        remap = np.full(k, -1, np.int32)
        remap[keep] = np.arange(len(keep), dtype=np.int32)
        codes = np.where(self.codes >= 0, remap[np.maximum(self.codes, 0)], -1).astype(np.int32)
        return CodedStrings([self.uniques[j] for j in keep.tolist()], codes)


def split_coded(col: CodedStrings) -> tuple[StringColumn, list[tuple[int, str]]]:
    """:func:`engine.kernels._strings.split_strings_report` of the rows of ``col``, splitting
    only its distinct strings: -> (column, problems by row). An absent row is a problem
    (``string_problem(None)``) and, like every bad row, reads as ``""``."""
    col = col.compact()
    k = len(col.uniques)
    absent = col.codes < 0
    any_absent = bool(absent.any())
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
