"""User input -> validated columns: the ingestion front door.

``prepare_events`` (columns), ``events_from_dicts`` (a list of event dicts) and
``prepare_traits`` (trait updates) turn what a user hands in into :class:`EventColumns` /
:class:`TraitColumns` plus one :class:`Rejection` per bad row. Bad rows never raise; only a
malformed call does (columns of different lengths, an unknown clock) and a batch beyond the
whole-batch limits (``engine.limits.LimitExceeded``).

Every row is held to ``engine.limits.Limits`` (sizes, the future bound, property counts) and
to a :class:`~engine.limits.NameBudget` (how many distinct event types, properties per type
and traits the engine accepts). The name checks run once per distinct name, not per row.

The columnar path runs no Python loop per event on clean input: typed numpy arrays, lists of
str, lists of ints and lists of floats are checked with vectorised numpy and the string
kernels. Columns that mix kinds (an object column holding str and numbers, None among
numbers given as a list of bools, ...) take a per-element path. Every class here holds only
numpy arrays, lists of str and plain scalars, so it pickles cheaply (it crosses Ray).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from engine._values import (
    NULL,
    NULL_BITS,
    STR_TAG,
    TAG_MASK,
    box_bools,
    box_strings,
)
from engine.kernels._strings import (
    NUM_SLOTS,
    StringColumn,
    joined_ranges,
    split_ranges,
    split_strings,
    split_strings_report,
    string_problem,
)
from engine._packed import packable, reduce_arrays, restore_arrays
from engine._coded import BOOL, NUMBER, STRING, CodedStrings, CodedValues, Utf8Strings, split_coded
from engine.limits import DEFAULT_LIMITS, LimitExceeded, Limits, NameBudget, format_bytes

__all__ = [
    "CLOCK_EVENT",
    "CLOCK_WALL",
    "EventColumns",
    "Rejection",
    "StringColumn",
    "TraitColumns",
    "events_from_dicts",
    "prepare_events",
    "prepare_traits",
]

CLOCK_WALL = "wall"
CLOCK_EVENT = "event"

EVENT_FIELDS = ("user_id", "type", "timestamp_ms", "value", "properties")
RESERVED_PROPERTY = "value"

_INT64_MAX = 2**63 - 1
_LOW32 = np.int64(0xFFFF_FFFF)
_BOOL_BOXES = (float(box_bools(np.array([0]))[0]), float(box_bools(np.array([1]))[0]))
_builtin_type = type  # ``prepare_events`` has a parameter named ``type`` (the API's name)


@dataclass(frozen=True)
class Rejection:
    """One rejected event or trait update: its index in the input and why."""

    index: int
    reason: str


# --------------------------------------------------------------------------------- columns


def _compact_boxed_strings(columns: list[np.ndarray], strings: StringColumn):
    """Drop the uniques of ``strings`` no boxed STR value in ``columns`` uses; recode them.

    ``strings`` is a table (codes ``0..n_unique-1``); returns ``(new columns, new table)``.
    """
    nu = strings.n_unique
    if nu == 0:
        return columns, strings
    used = np.zeros(nu, dtype=bool)
    masks = []
    for col in columns:
        bits = col.view(np.int64)
        m = (bits & TAG_MASK) == STR_TAG
        masks.append(m)
        used[bits[m] & _LOW32] = True
    if used.all():
        return columns, strings
    keep = np.flatnonzero(used)
    remap = np.zeros(nu, dtype=np.int64)
    remap[keep] = np.arange(len(keep), dtype=np.int64)
    out = []
    for col, m in zip(columns, masks):
        if m.any():
            bits = col.view(np.int64).copy()
            bits[m] = STR_TAG | remap[bits[m] & _LOW32]
            col = bits.view(np.float64)
        out.append(col)
    return out, strings.select_uniques(keep)


def _as_selection(sel) -> np.ndarray:
    sel = np.asarray(sel)
    if sel.dtype == bool:
        return np.flatnonzero(sel)
    return sel.astype(np.int64, copy=False)


@dataclass
class EventColumns:
    """Validated events, all arrays of length n, in input order.

    ``props`` maps a property name to boxed float64 values (``engine._values``; NULL where
    the event lacks the property); their STR codes index ``prop_strings``, a batch-local table
    shared by all property columns (its own ``codes`` are ``0..n_unique-1`` and unused).
    """

    user: StringColumn
    type: StringColumn
    timestamp_ms: np.ndarray  # int64
    value: np.ndarray  # float64, finite, -0.0 folded to 0.0
    props: dict[str, np.ndarray]
    prop_strings: StringColumn

    def __len__(self) -> int:
        return len(self.timestamp_ms)

    @classmethod
    def empty(cls) -> EventColumns:
        return cls(
            StringColumn.empty(),
            StringColumn.empty(),
            np.empty(0, np.int64),
            np.empty(0, np.float64),
            {},
            StringColumn.empty(),
        )

    def take(self, sel) -> EventColumns:
        """The events at ``sel`` (index array or boolean mask); string tables re-compacted."""
        sel = _as_selection(sel)
        names = list(self.props)
        cols, strings = _compact_boxed_strings([self.props[k][sel] for k in names], self.prop_strings)
        return EventColumns(
            self.user.take(sel),
            self.type.take(sel),
            self.timestamp_ms[sel],
            self.value[sel],
            dict(zip(names, cols)),
            strings,
        )

    def slots(self) -> np.ndarray:
        """int32[n]: the hash slot of each event's user (FNV-1a 64 of the id mod 4096)."""
        per_unique = (self.user.hashes % np.uint64(NUM_SLOTS)).astype(np.int32)
        return per_unique[self.user.codes]

    def max_timestamp(self, default: int | None = None) -> int | None:
        """Largest timestamp in the batch, or ``default`` when it is empty."""
        if len(self.timestamp_ms) == 0:
            return default
        return int(self.timestamp_ms.max())

    def __reduce_ex__(self, protocol):
        """Pickled with its arrays as raw buffers (``engine._packed``): a round's steps go to
        every shard pickled, and numpy's own pickling costs a few microseconds an array."""
        names = list(self.props)
        arrays = (_string_arrays(self.user) + _string_arrays(self.type) + [self.timestamp_ms, self.value]
                  + _string_arrays(self.prop_strings) + [self.props[k] for k in names])
        if not packable(arrays):
            return object.__reduce_ex__(self, protocol)
        return _unpack_events, (*reduce_arrays(arrays, protocol), tuple(names))


def _string_arrays(col: StringColumn) -> list[np.ndarray]:
    return [col.blob, col.offsets, col.hashes, col.codes]


def _unpack_events(bufs, layout, names: tuple) -> EventColumns:
    a = restore_arrays(bufs, layout)
    return EventColumns(StringColumn(*a[0:4]), StringColumn(*a[4:8]), a[8], a[9],
                        dict(zip(names, a[14:])), StringColumn(*a[10:14]))


@dataclass
class TraitColumns:
    """Validated trait updates, one row per update, in input order.

    ``traits`` maps a trait name to ``(boxed float64[n], given bool[n])``: given and NULL
    unsets the trait, not given leaves it as it is. STR codes index ``strings`` (a batch-local
    table, codes ``0..n_unique-1``).
    """

    user: StringColumn
    timestamp_ms: np.ndarray  # int64
    traits: dict[str, tuple[np.ndarray, np.ndarray]]
    strings: StringColumn

    def __len__(self) -> int:
        return len(self.timestamp_ms)

    @classmethod
    def empty(cls) -> TraitColumns:
        return cls(StringColumn.empty(), np.empty(0, np.int64), {}, StringColumn.empty())

    def take(self, sel) -> TraitColumns:
        sel = _as_selection(sel)
        names = list(self.traits)
        boxed, strings = _compact_boxed_strings([self.traits[k][0][sel] for k in names], self.strings)
        traits = {k: (b, self.traits[k][1][sel]) for k, b in zip(names, boxed)}
        return TraitColumns(self.user.take(sel), self.timestamp_ms[sel], traits, strings)

    def slots(self) -> np.ndarray:
        """int32[n]: the hash slot of each update's user."""
        per_unique = (self.user.hashes % np.uint64(NUM_SLOTS)).astype(np.int32)
        return per_unique[self.user.codes]

    def max_timestamp(self, default: int | None = None) -> int | None:
        if len(self.timestamp_ms) == 0:
            return default
        return int(self.timestamp_ms.max())


# ------------------------------------------------------------------------------- helpers


class _Reasons:
    """The first reason found for each bad row (checks run in field order)."""

    def __init__(self, n: int):
        self.n = n
        self.by_index: dict[int, str] = {}

    def add(self, i: int, reason: str) -> None:
        self.by_index.setdefault(int(i), reason)

    def add_many(self, idx, reason_of) -> None:
        for i in np.asarray(idx).tolist():
            if i not in self.by_index:
                self.by_index[i] = reason_of(i)

    def bad_mask(self) -> np.ndarray:
        m = np.zeros(self.n, dtype=bool)
        if self.by_index:
            m[np.fromiter(self.by_index, dtype=np.int64, count=len(self.by_index))] = True
        return m

    def rejections(self) -> list[Rejection]:
        return [Rejection(i, r) for i, r in sorted(self.by_index.items())]


def _check_clock(clock: str) -> str:
    if clock not in (CLOCK_WALL, CLOCK_EVENT):
        raise ValueError(f'clock must be "{CLOCK_WALL}" or "{CLOCK_EVENT}", got {clock!r}')
    return clock


def format_duration_ms(ms: int) -> str:
    """``2592000000`` -> ``"30d"``; the largest unit that divides evenly."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _length(name: str, col) -> int:
    if isinstance(col, (str, bytes, Mapping)):
        raise TypeError(f"column {name} must be an array or a sequence, got {type(col).__name__}")
    try:
        return len(col)
    except TypeError:
        raise TypeError(f"column {name} must be an array or a sequence, got {type(col).__name__}") from None


def _kind_of_type(t: type) -> str:
    """'str' | 'bool' | 'int' | 'float' | 'none' | 'other' for an element type."""
    if issubclass(t, str):
        return "str"
    if t is bool or issubclass(t, np.bool_):
        return "bool"
    if issubclass(t, (int, np.integer)):
        return "int"
    if issubclass(t, (float, np.floating)):
        return "float"
    if t is type(None):
        return "none"
    return "other"


def _kinds(seq) -> set[str]:
    return {_kind_of_type(t) for t in set(map(type, seq))}


def _to_sequence(col):
    if isinstance(col, (list, tuple)):
        return col
    if isinstance(col, np.ndarray):
        return col.tolist()
    return list(col)


def _string_column(name: str, col, reasons: _Reasons, max_bytes: int, limit: str) -> StringColumn:
    """A required, non-empty string column (user_id, type) of at most ``max_bytes`` each."""
    sc, problems = split_coded(col) if isinstance(col, CodedStrings) else split_strings_report(col)
    for i, p in problems:
        reasons.add(i, f"{name} {p}")
    lengths = sc.unique_lengths()
    empty = np.flatnonzero(lengths == 0)
    if len(empty):  # at most one: uniques are distinct
        reasons.add_many(np.flatnonzero(sc.codes == empty[0]), lambda i: f"{name} must not be empty")
    long = lengths > max_bytes
    if long.any():
        codes = sc.codes
        reasons.add_many(
            np.flatnonzero(long[codes]),
            lambda i: f"{name} is {int(lengths[codes[i]])} bytes long (UTF-8); at most {max_bytes} ({limit})",
        )
    return sc


def _int_text(v) -> str:
    """An int as a reason shows it: huge ones by size (``str`` of one is slow, or refused)."""
    v = int(v)
    return str(v) if abs(v) < 10**30 else f"of {v.bit_length()} bits"


def _short(name: str, n: int = 40) -> str:
    """A name as quoted in a reason, cut short: reasons must stay small."""
    return name if len(name) <= n else name[:n] + "..."


# --------------------------------------------------------------------------- timestamps


def _int_timestamps(col, n: int, reasons: _Reasons):
    """-> (int64[n] timestamps, bool[n] missing). Bad elements are recorded, set to 0."""
    missing = np.zeros(n, dtype=bool)
    arr = None
    if isinstance(col, np.ndarray):
        arr = col
    else:
        seq = _to_sequence(col)
        kinds = _kinds(seq)
        if kinds <= {"int"}:
            try:
                arr = np.asarray(seq, dtype=np.int64)
            except OverflowError:
                arr = None
        elif kinds <= {"int", "float"}:
            try:
                arr = np.asarray(seq, dtype=np.float64)
            except OverflowError:
                arr = None
        if arr is None:
            return _int_timestamps_slow(seq, n, reasons)
    if arr.ndim != 1:
        raise ValueError(f"column timestamp_ms must be 1-D, got shape {arr.shape}")
    kind = arr.dtype.kind
    if kind == "i":
        return arr.astype(np.int64, copy=False), missing
    if kind == "u":
        big = arr > _INT64_MAX
        out = np.where(big, 0, arr).astype(np.int64)
        reasons.add_many(np.flatnonzero(big), lambda i: f"timestamp_ms {int(arr[i])} is out of range")
        return out, missing
    if kind == "f":
        a = arr.astype(np.float64, copy=False)
        missing = np.isnan(a)
        ok = np.isfinite(a) & (np.floor(a) == a) & (np.abs(a) < 2.0**63)
        bad = ~ok & ~missing
        reasons.add_many(
            np.flatnonzero(bad),
            lambda i: f"timestamp_ms must be an integer number of ms, got {float(a[i])!r}",
        )
        return np.where(ok, a, 0.0).astype(np.int64), missing
    return _int_timestamps_slow(arr.tolist(), n, reasons)


def _int_timestamps_slow(seq, n: int, reasons: _Reasons):
    out = np.zeros(n, dtype=np.int64)
    missing = np.zeros(n, dtype=bool)
    for i, v in enumerate(seq):
        k = _kind_of_type(type(v))
        if k == "none":
            missing[i] = True
        elif k == "int":
            v = int(v)
            if -_INT64_MAX <= v <= _INT64_MAX:
                out[i] = v
            else:
                reasons.add(i, f"timestamp_ms {_int_text(v)} is out of range")
        elif k == "float":
            v = float(v)
            if math.isnan(v):
                missing[i] = True
            elif math.isfinite(v) and v == math.floor(v) and abs(v) < 2.0**63:
                out[i] = int(v)
            else:
                reasons.add(i, f"timestamp_ms must be an integer number of ms, got {v!r}")
        else:
            reasons.add(i, f"timestamp_ms must be an integer number of ms, got {type(v).__name__}")
    return out, missing


def _event_timestamps(col, n, reasons: _Reasons, now_ms: int, retention_ms: int, clock: str,
                      limits: Limits):
    ts, missing = _int_timestamps(col, n, reasons)
    if clock == CLOCK_EVENT:
        absent = missing | (ts <= 0)
        reasons.add_many(
            np.flatnonzero(absent),
            lambda i: "timestamp_ms is required (the event clock orders events by it)",
        )
    else:
        absent = missing | (ts == 0)
        ts = np.where(absent, np.int64(now_ms), ts)
        reasons.add_many(
            np.flatnonzero(ts < 0),
            lambda i: f"timestamp_ms must be ms since the Unix epoch, got {int(ts[i])}",
        )
    cutoff = int(now_ms) - int(retention_ms)
    too_old = ~absent & (ts <= cutoff)
    if too_old.any():
        keep = format_duration_ms(int(retention_ms))
        reasons.add_many(
            np.flatnonzero(too_old),
            lambda i: (
                f"timestamp_ms {int(ts[i])} is too old: with retention {keep} "
                f"({int(retention_ms)} ms) and now_ms {int(now_ms)} it must be later than {cutoff}"
            ),
        )
    bound = limits.future_bound_ms(now_ms)
    too_new = ~absent & (ts > bound)
    if too_new.any():
        reasons.add_many(np.flatnonzero(too_new), lambda i: limits.future_reason(int(ts[i]), bound))
    return ts


# ------------------------------------------------------------------------------- values


def _event_values(col, n: int, reasons: _Reasons) -> np.ndarray:
    if col is None:
        return np.zeros(n, dtype=np.float64)
    arr = None
    if isinstance(col, np.ndarray):
        arr = col
        if arr.ndim != 1:
            raise ValueError(f"column value must be 1-D, got shape {arr.shape}")
        if arr.dtype.kind not in "fiu":
            return _event_values_slow(arr.tolist(), n, reasons)
    else:
        seq = _to_sequence(col)
        if _kinds(seq) <= {"int", "float"}:
            try:
                arr = np.asarray(seq, dtype=np.float64)
            except OverflowError:
                arr = None
        if arr is None:
            return _event_values_slow(seq, n, reasons)
    out = np.asarray(arr, dtype=np.float64)
    bad = ~np.isfinite(out)
    if bad.any():
        reasons.add_many(
            np.flatnonzero(bad), lambda i: f"value must be a finite number, got {float(out[i])!r}"
        )
        out = np.where(bad, 0.0, out)
    return out + 0.0  # folds -0.0 into 0.0 (and copies)


def _event_values_slow(seq, n: int, reasons: _Reasons) -> np.ndarray:
    out = np.zeros(n, dtype=np.float64)
    for i, v in enumerate(seq):
        k = _kind_of_type(type(v))
        if k == "none":
            continue
        if k in ("int", "float"):
            try:
                x = float(v)
            except OverflowError:
                reasons.add(i, f"value {_int_text(v)} is too large for a float64")
                continue
            if math.isfinite(x):
                out[i] = x + 0.0
            else:
                reasons.add(i, f"value must be a finite number, got {x!r}")
        else:
            reasons.add(i, f"value must be a number, got {type(v).__name__}")
    return out


# ------------------------------------------------------------------------------ properties


def _unsupported(what: str, v) -> str:
    return f"{what} has a value of unsupported type {type(v).__name__} (use a string, number or bool)"


def _boxed_numbers(a: np.ndarray) -> np.ndarray:
    """float64 -> boxed: NaN (any payload) becomes NULL, -0.0 becomes 0.0, inf stays."""
    out = np.asarray(a, dtype=np.float64) + 0.0
    nan = np.isnan(out)
    if nan.any():
        # A NaN's payload could read as a STR/BOOL tag: canonicalise every NaN to NULL.
        out[nan] = NULL
    return out


class _StringSlots:
    """Property/trait string values waiting for one shared split: (column, positions, values,
    and for dictionary-coded values the row codes into ``values``)."""

    def __init__(self):
        self.parts: list[tuple[object, str, np.ndarray, list, np.ndarray | None]] = []
        self.texts: dict[int, str] = {}     # part -> its values already joined by NUL

    def add(self, key, label: str, positions: np.ndarray, values: list, text: str | None = None) -> None:
        """Values for column ``boxed[key]`` at ``positions``; ``label`` names it in reasons.
        ``text``, when given, is ``"\0".join(values)`` (not joined again)."""
        if len(values):
            if text is not None:
                self.texts[len(self.parts)] = text
            self.parts.append((key, label, positions, values, None))

    def add_coded(self, key, label: str, positions: np.ndarray, values: CodedStrings) -> None:
        """Like ``add``, with the values as distinct strings and a code per position (all
        codes >= 0): only the distinct strings are split, from their UTF-8 bytes when they
        came as bytes."""
        if len(values):
            values = values.compact()
            self.parts.append((key, label, positions, values, values.codes))

    @staticmethod
    def _size(part) -> int:
        vals = part[3]
        return vals.n_unique if isinstance(vals, CodedStrings) else len(vals)

    def _utf8(self):
        """Every part's values in one UTF-8 blob -> ``(blob, starts, ends)`` (value ``j`` is
        ``blob[starts[j]:ends[j]]``), or None when one is not a str, cannot be encoded or
        holds a NUL. Values that came as bytes stay bytes."""
        blobs, starts, ends = [], [], []
        at = 0
        for k, part in enumerate(self.parts):
            vals = part[3]
            raw = vals.raw if isinstance(vals, CodedStrings) else None
            if raw is None:
                text = self.texts.get(k)
                try:
                    if text is None:
                        text = "\0".join(vals.uniques if isinstance(vals, CodedStrings) else vals)
                    data = np.frombuffer(text.encode("utf-8"), np.uint8)
                except (TypeError, UnicodeEncodeError):
                    return None
                ranges = joined_ranges(data, self._size(part))
                if ranges is None:
                    return None
                raw = Utf8Strings(data, *ranges)
            blobs.append(raw.blob)
            starts.append(raw.starts + at if at else raw.starts)
            ends.append(raw.ends + at if at else raw.ends)
            at += len(raw.blob)
        if len(blobs) == 1:
            return blobs[0], starts[0], ends[0]
        return np.concatenate(blobs), np.concatenate(starts), np.concatenate(ends)

    def resolve(self, boxed: dict[str, np.ndarray], reasons: _Reasons | None, what: str,
                max_bytes: int | None = None):
        """Split all values once; write STR boxes into ``boxed``; return the table column.

        With ``reasons``, values that are not valid strings or longer than ``max_bytes``
        reject their rows."""
        if not self.parts:
            return StringColumn.empty()
        sizes = [self._size(part) for part in self.parts]
        utf8 = self._utf8()
        col = split_ranges(*utf8) if utf8 is not None else None
        problems: list = []
        if col is None:     # a value that is not a valid string: reported value by value
            values = []
            for part in self.parts:
                vals = part[3]
                values.extend(vals.uniques if isinstance(vals, CodedStrings) else vals)
            col, problems = split_strings_report(values)
        if reasons is not None and max_bytes is not None:
            lengths = col.unique_lengths()
            long = lengths > max_bytes
            if long.any():
                limit = f"at most {max_bytes} = {format_bytes(max_bytes)} (max_string_bytes)"
                problems = list(problems) + [
                    (j, f"value is {int(lengths[col.codes[j]])} bytes long (UTF-8); {limit}")
                    for j in np.flatnonzero(long[col.codes]).tolist()
                ]
        if problems and reasons is not None:
            starts = np.cumsum([0] + sizes)
            for j, p in problems:
                k = int(np.searchsorted(starts, j, side="right")) - 1
                _, label, pos, _, rcodes = self.parts[k]
                at = [pos[j - starts[k]]] if rcodes is None else pos[rcodes == j - starts[k]]
                for i in at:
                    reasons.add(int(i), f'{what} "{_short(label)}" {p}')
        start = 0
        for (key, _, pos, _, rcodes), size in zip(self.parts, sizes):
            codes = col.codes[start : start + size]
            boxed[key][pos] = box_strings(codes if rcodes is None else codes[rcodes])
            start += size
        col.codes = np.arange(col.n_unique, dtype=np.int32)
        return col


def _property_column(key, name: str, col, n: int, reasons: _Reasons, strings: _StringSlots):
    """One property column -> boxed float64[n] (STR slots filled later by ``strings``)."""
    if isinstance(col, CodedValues):
        return _coded_property_column(key, name, col, n, strings)
    if isinstance(col, np.ndarray):
        if col.ndim != 1:
            raise ValueError(f'column properties["{name}"] must be 1-D, got shape {col.shape}')
        kind = col.dtype.kind
        if kind in "fiu":
            return _boxed_numbers(col)
        if kind == "b":
            return box_bools(col)
        if kind == "U":
            strings.add(key, name, np.arange(n, dtype=np.int64), col.tolist())
            return np.full(n, NULL)
        if kind == "O":
            fast = _strings_and_nones(col)
            if fast is not None:
                strings.add(key, name, *fast)
                return np.full(n, NULL)
        seq = col if kind == "O" else col.tolist()
    else:
        seq = _to_sequence(col)
    kinds = _kinds(seq)
    if kinds == {"str"}:
        strings.add(key, name, np.arange(n, dtype=np.int64), list(seq))
        return np.full(n, NULL)
    if kinds == {"str", "none"}:  # the usual form of an optional string property
        objs = seq if isinstance(seq, np.ndarray) else np.fromiter(seq, dtype=object, count=n)
        pos = np.flatnonzero(np.not_equal(objs, None))
        strings.add(key, name, pos, objs[pos].tolist())
        return np.full(n, NULL)
    if kinds <= {"int", "float", "none"}:
        try:
            return _boxed_numbers(np.asarray(seq, dtype=np.float64))  # None -> NaN -> NULL
        except OverflowError:
            pass
    elif kinds == {"bool"}:
        return box_bools(np.asarray(seq, dtype=bool))
    return _mixed_property_column(key, name, seq, n, reasons, strings)


def _strings_and_nones(objs: np.ndarray):
    """``(positions, values, joined)`` of an object array of strings and Nones (the usual
    optional string property), else None. One comparison with None and one join, which
    fails at the first value that is not a str, instead of a pass over every value's type
    first (0.34 ms of 20,000 values)."""
    head = next((x for x in objs[:8].tolist() if x is not None), "")
    if not isinstance(head, str):
        return None                    # numbers or bools: the general path
    try:
        pos = np.flatnonzero(np.not_equal(objs, None))
        values = objs[pos].tolist()
        return pos, values, "\0".join(values)
    except (TypeError, ValueError):    # a value that is not a str, or cannot be compared
        return None


def _coded_property_column(key, name: str, col: CodedValues, n: int, strings: _StringSlots):
    """A property column by kind, as ColumnarEvents carries it: numbers and bools boxed in one
    numpy pass each, the strings' distinct values split once."""
    boxed = np.full(n, NULL)
    m = col.kinds == NUMBER
    if m.any():
        boxed[m] = _boxed_numbers(col.numbers[m])
    m = col.kinds == BOOL
    if m.any():
        boxed[m] = box_bools(col.numbers[m] != 0)
    m = col.kinds == STRING
    if m.any():
        strings.add_coded(key, name, np.flatnonzero(m), col.strings)
    return boxed


def _mixed_property_column(key, name: str, seq, n: int, reasons: _Reasons, strings: _StringSlots):
    """A column mixing kinds (say str and None): one numpy pass per element type."""
    objs = seq if isinstance(seq, np.ndarray) else np.fromiter(seq, dtype=object, count=n)
    types = list(map(_builtin_type, objs))
    type_ids = {t: j for j, t in enumerate(set(types))}
    # compare small ints, not type objects (numpy treats numpy scalar types specially)
    ids = np.fromiter(map(type_ids.__getitem__, types), dtype=np.int64, count=n)
    boxed = np.full(n, NULL)
    spos = []
    for t, j in type_ids.items():
        idx = np.flatnonzero(ids == j)
        k = _kind_of_type(t)
        if k == "none":
            continue
        if k == "str":
            spos.append(idx)
        elif k == "bool":
            boxed[idx] = box_bools(objs[idx].astype(bool))
        elif k in ("int", "float"):
            try:
                boxed[idx] = _boxed_numbers(objs[idx].astype(np.float64))
            except OverflowError:
                for i in idx.tolist():
                    try:
                        boxed[i] = _boxed_numbers(np.array([float(objs[i])]))[0]
                    except OverflowError:
                        reasons.add(i, f'property "{_short(name)}" value {_int_text(objs[i])} is too large '
                                       "for a float64")
        else:
            reasons.add_many(idx, lambda i, t=t: _unsupported(f'property "{_short(name)}"', objs[i]))
    if spos:
        pos = np.sort(np.concatenate(spos))
        strings.add(key, name, pos, objs[pos].tolist())
    return boxed


def _property_name_problem(name, max_bytes: int) -> str | None:
    if not isinstance(name, str):
        return f"property names must be strings, got {type(name).__name__} {_short(repr(name))}"
    if name == "":
        return "property names must not be empty"
    if name == RESERVED_PROPERTY:
        return 'property "value" is reserved: put the number in the event\'s value field'
    if "\0" in name:
        return "property names must not contain a NUL character (\\0)"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return f"property name {_short(repr(name))} is not valid Unicode text"
    if size > max_bytes:
        return (f'property name "{_short(name)}" is {size} bytes long (UTF-8); at most {max_bytes} '
                "(max_name_bytes)")
    return None


def _present(boxed: np.ndarray) -> np.ndarray:
    return boxed.view(np.int64) != NULL_BITS


def _event_properties(properties, n: int, reasons: _Reasons, limits: Limits):
    if properties is None:
        return {}, StringColumn.empty()
    if not isinstance(properties, Mapping):
        raise TypeError(f"properties must be a dict of name -> column, got {type(properties).__name__}")
    boxed: dict[str, np.ndarray] = {}
    bad_names: list[tuple[object, str]] = []
    strings = _StringSlots()
    for name, col in properties.items():
        problem = _property_name_problem(name, limits.max_name_bytes)
        key = name if problem is None else f"\0bad{len(bad_names)}"
        boxed[key] = _property_column(key, str(name), col, n, reasons, strings)
        if problem is not None:
            bad_names.append((key, problem))
    prop_strings = strings.resolve(boxed, reasons, "property", limits.max_string_bytes)
    most = limits.max_properties_per_event
    if len(boxed) > most:
        counts = np.zeros(n, dtype=np.int64)
        for col in boxed.values():
            counts += _present(col)
        reasons.add_many(
            np.flatnonzero(counts > most),
            lambda i: f"the event has more than {most} properties (max_properties_per_event)",
        )
    for key, problem in bad_names:
        reasons.add_many(np.flatnonzero(_present(boxed.pop(key))), lambda i, p=problem: p)
    return boxed, prop_strings


# --------------------------------------------------------------------------------- limits


def _limits_of(limits: Limits | None, names: NameBudget | None) -> Limits:
    if limits is not None:
        if not isinstance(limits, Limits):
            raise TypeError(f"limits must be an engine.limits.Limits, not {_builtin_type(limits).__name__}")
        return limits
    return names.limits if names is not None else DEFAULT_LIMITS


def _check_batch_size(n: int, limits: Limits, what: str = "events") -> None:
    if n > limits.max_batch_events:
        raise LimitExceeded(
            f"the batch has {n} {what}; at most {limits.max_batch_events} (max_batch_events): "
            "send it in smaller batches")


def _first_rows(codes: np.ndarray, rows: np.ndarray, n_codes: int) -> np.ndarray:
    """int64[n_codes]: the first of ``rows`` with each code (len(codes) where none)."""
    first = np.full(n_codes, len(codes), dtype=np.int64)
    uniq, at = np.unique(codes[rows], return_index=True)
    first[uniq] = rows[at]
    return first


def _check_names(types: StringColumn, props: dict[str, np.ndarray], reasons: _Reasons,
                 limits: Limits, names: NameBudget | None) -> None:
    """Reject the rows that bring event types, or properties of a type, beyond the limits;
    record the names of the rows accepted in ``names``.

    One ``bincount`` per property column and one lookup per distinct (type, property): the
    cost does not grow with the number of events of a name. Where names compete for the last
    places, those seen first in the batch win.
    """
    ok = ~reasons.bad_mask()
    if not ok.any():
        return
    budget = names if names is not None else NameBudget(limits)
    codes = types.codes
    nu = types.n_unique
    uniq = types.uniques()
    used = np.bincount(codes[ok], minlength=nu) > 0
    new_types = [c for c in np.flatnonzero(used).tolist() if not budget.has_type(uniq[c])]
    room = max(limits.max_event_types - budget.n_types, 0)
    if len(new_types) > room:
        first = _first_rows(codes, np.flatnonzero(ok), nu)
        new_types.sort(key=first.__getitem__)
        refused = np.zeros(nu, dtype=bool)
        refused[new_types[room:]] = True
        rows = np.flatnonzero(ok & refused[codes])
        most = limits.max_event_types
        reasons.add_many(rows, lambda i: (
            f'event type "{_short(uniq[codes[i]])}" would be one more than max_event_types '
            f"({most} distinct event types)"))
        ok[rows] = False
        new_types = new_types[:room]
    # (type code, property) pairs not yet known, in column order
    present: dict[str, np.ndarray] = {}
    new_pairs: dict[int, list[str]] = {}
    for p, col in props.items():
        m = _present(col) & ok
        if not m.any():
            continue
        present[p] = m
        for c in np.flatnonzero(np.bincount(codes[m], minlength=nu)).tolist():
            if not budget.has_property(uniq[c], p):
                new_pairs.setdefault(c, []).append(p)
    most = limits.max_properties_per_type
    for c, new in new_pairs.items():
        room = max(most - budget.n_properties(uniq[c]), 0)
        if len(new) <= room:
            continue
        of_type = codes == c
        first = {p: int(np.argmax(present[p] & of_type)) for p in new}
        new.sort(key=first.__getitem__)
        for p in new[room:]:
            rows = np.flatnonzero(present[p] & of_type & ok)
            reasons.add_many(rows, lambda i, p=p, t=uniq[c]: (
                f'property "{_short(p)}" of event type "{_short(t)}" would be one more than '
                f"max_properties_per_type ({most} distinct properties of one event type)"))
            ok[rows] = False
        del new[room:]
    if names is None or not (new_types or new_pairs):
        return
    # record only what the rows finally accepted use
    used = np.bincount(codes[ok], minlength=nu) > 0
    names.add(types=[uniq[c] for c in new_types if used[c]])
    by_prop: dict[str, list[int]] = {}
    for c, new in new_pairs.items():
        for p in new:
            by_prop.setdefault(p, []).append(c)
    for p, cs in by_prop.items():
        has = np.bincount(codes[present[p] & ok], minlength=nu) > 0
        names.add(properties={uniq[c]: [p] for c in cs if has[c]})


# ---------------------------------------------------------------------------------- events


def prepare_events(
    user_id,
    type,
    timestamp_ms,
    value=None,
    properties=None,
    *,
    now_ms: int,
    retention_ms: int,
    clock: str,
    limits: Limits | None = None,
    names: NameBudget | None = None,
) -> tuple[EventColumns, list[Rejection]]:
    """Validate columns of events (``Engine.ingest_columns``): -> (accepted, rejections).

    Columns are equal-length arrays or sequences: ``user_id`` and ``type`` str,
    ``timestamp_ms`` int ms, ``value`` float (None or omitted: 0.0), ``properties`` a dict
    name -> column of str / number / bool (None, or NaN in a float array, = absent). A length
    mismatch raises ``ValueError``; every other problem rejects just its event, with
    ``Rejection.index`` its position in the input. Accepted events keep their order.

    Clean typed numpy columns and lists of str / int / float are checked without a Python loop
    per event; object columns that mix kinds are checked element by element.

    ``now_ms`` is the engine clock before this batch: an event with
    ``timestamp_ms <= now_ms - retention_ms`` is too old, one after
    ``limits.future_bound_ms(now_ms)`` too far ahead. With the wall clock a timestamp of 0
    or None means "now"; with the event clock it is required.

    ``limits`` (default: ``names.limits``, else the defaults) bounds sizes and counts; an
    event beyond one is rejected with a reason naming the limit. ``names`` is the engine's
    record of accepted names: events that would bring a new event type, or a new property of
    a type, beyond ``max_event_types`` / ``max_properties_per_type`` are rejected, and the
    names of the accepted events are added to it. Without ``names`` those two limits hold
    within this batch only. More than ``max_batch_events`` events, or more than
    ``max_batch_cells`` events x property columns, raise ``LimitExceeded``.
    """
    clock = _check_clock(clock)
    limits = _limits_of(limits, names)
    n = _length("user_id", user_id)
    _check_batch_size(n, limits)
    for name, col in (("type", type), ("timestamp_ms", timestamp_ms), ("value", value)):
        if col is not None and _length(name, col) != n:
            raise ValueError(f"column {name} has {_length(name, col)} values but user_id has {n}")
    if timestamp_ms is None:
        timestamp_ms = [None] * n
    if type is None:
        raise ValueError("column type is required")
    if properties is not None and isinstance(properties, Mapping):
        if n * len(properties) > limits.max_batch_cells:
            raise LimitExceeded(
                f"the batch has {n} events and {len(properties)} property columns: more than "
                f"{limits.max_batch_cells} cells (max_batch_cells); send it in smaller batches")
        for name, col in properties.items():
            shown = _short(str(name))
            m = _length(f'properties["{shown}"]', col)
            if m != n:
                raise ValueError(f'column properties["{shown}"] has {m} values but user_id has {n}')
    reasons = _Reasons(n)
    users = _string_column("user_id", user_id, reasons, limits.max_id_bytes, "max_id_bytes")
    types = _string_column("type", type, reasons, limits.max_name_bytes, "max_name_bytes")
    ts = _event_timestamps(timestamp_ms, n, reasons, now_ms, retention_ms, clock, limits)
    values = _event_values(value, n, reasons)
    props, prop_strings = _event_properties(properties, n, reasons, limits)
    _check_names(types, props, reasons, limits, names)
    cols = EventColumns(users, types, ts, values, props, prop_strings)
    if reasons.by_index:
        # Also drops the uniques (ids, types, property strings) only rejected rows used.
        cols = cols.take(~reasons.bad_mask())
    return cols, reasons.rejections()


def events_from_dicts(
    events, *, now_ms: int, retention_ms: int, clock: str,
    limits: Limits | None = None, names: NameBudget | None = None,
) -> tuple[EventColumns, list[Rejection]]:
    """Validate a list of event dicts (``Engine.ingest``): -> (accepted, rejections).

    Keys: ``user_id, type, timestamp_ms, value, properties`` (a dict name -> value); any
    other key rejects the event. Then the rules (``limits``, ``names``) of
    :func:`prepare_events`; rejection indices refer to ``events``. Reading the dicts is one
    Python step per event. An event with more than ``max_properties_per_event`` properties,
    or one whose new property names would take the batch past ``max_batch_cells``, is
    rejected before its properties are read.
    """
    _check_clock(clock)
    limits = _limits_of(limits, names)
    if not isinstance(events, (list, tuple)):
        events = list(events)
    _check_batch_size(len(events), limits)
    most = limits.max_properties_per_event
    max_columns = limits.max_batch_cells // max(len(events), 1)
    early: dict[int, str] = {}
    kept: list[int] = []
    uids: list = []
    types: list = []
    ts: list = []
    vals: list = []
    prop_pos: dict[object, tuple[list[int], list]] = {}
    fields = frozenset(EVENT_FIELDS)
    for i, e in enumerate(events):
        if not isinstance(e, Mapping):
            early[i] = f"an event must be a dict, got {_builtin_type(e).__name__}"
            continue
        extra = [k for k in e if k not in fields]
        if extra:
            shown = ", ".join(f'"{_short(str(k))}"' for k in extra[:5]) + (", ..." if len(extra) > 5 else "")
            early[i] = (
                f"unknown field {shown}" if len(extra) == 1 else f"unknown fields {shown}"
            ) + f" (an event has {', '.join(EVENT_FIELDS)})"
            continue
        props = e.get("properties")
        if props is not None and not isinstance(props, Mapping):
            early[i] = f"properties must be a dict of name -> value, got {_builtin_type(props).__name__}"
            continue
        if props and len(props) > most and sum(map(_is_given, props.values())) > most:
            early[i] = f"the event has more than {most} properties (max_properties_per_event)"
            continue
        if props and len(prop_pos) + len(props) > max_columns:
            new = sum(1 for k, v in props.items() if k not in prop_pos and _is_given(v))
            if len(prop_pos) + new > max_columns:
                early[i] = (
                    f"the batch's property columns would hold more than {limits.max_batch_cells} "
                    f"cells ({len(events)} events x {len(prop_pos) + new} distinct property names; "
                    "max_batch_cells): send this event in a smaller batch")
                continue
        j = len(kept)
        kept.append(i)
        uids.append(e.get("user_id"))
        types.append(e.get("type"))
        ts.append(e.get("timestamp_ms"))
        vals.append(e.get("value"))
        if props:
            for k, v in props.items():
                if v is None:  # absent: the column holds None there anyway
                    continue
                entry = prop_pos.get(k)
                if entry is None:
                    entry = prop_pos[k] = ([], [])
                entry[0].append(j)
                entry[1].append(v)
    m = len(kept)
    properties = {}
    for k, (pos, pv) in prop_pos.items():
        col = [None] * m
        for j, v in zip(pos, pv):
            col[j] = v
        properties[k] = col
    cols, rej = prepare_events(
        uids, types, ts, vals, properties,
        now_ms=now_ms, retention_ms=retention_ms, clock=clock, limits=limits, names=names,
    )
    out = [Rejection(kept[r.index], r.reason) for r in rej]
    out.extend(Rejection(i, r) for i, r in early.items())
    out.sort(key=lambda r: r.index)
    return cols, out


def _is_given(v) -> bool:
    """A property value that is not absent (None or NaN)."""
    return v is not None and not (isinstance(v, float) and math.isnan(v))


# ---------------------------------------------------------------------------------- traits


def _trait_timestamp(ts) -> tuple[int | None, str | None]:
    """-> (timestamp or None for "now", problem)."""
    k = _kind_of_type(_builtin_type(ts))
    if k == "none":
        return None, None
    if k == "int":
        ts = int(ts)
    elif k == "float" and math.isfinite(ts) and ts == math.floor(ts):
        ts = int(ts)
    elif k == "float" and math.isnan(ts):
        return None, None
    else:
        got = repr(ts) if k == "float" else _builtin_type(ts).__name__
        return None, f"timestamp_ms must be an integer number of ms, got {got}"
    if ts == 0:
        return None, None
    if not 0 < ts <= _INT64_MAX:
        return None, f"timestamp_ms must be ms since the Unix epoch, got {_int_text(ts)}"
    return ts, None


def _utf8_size(s: str, at_most: int) -> int:
    """UTF-8 length of ``s`` (exact only when above ``at_most // 4``: no encode for short ones)."""
    return len(s) if len(s) * 4 <= at_most else len(s.encode("utf-8", "surrogatepass"))


def prepare_traits(
    updates, *, now_ms: int, retention_ms: int, clock: str,
    limits: Limits | None = None, names: NameBudget | None = None,
) -> tuple[TraitColumns, list[Rejection]]:
    """Validate trait updates ``[(user_id, {name: value}, timestamp_ms | None), ...]``.

    One row per accepted update, in input order. Values are str, numbers or bools; None (or a
    float NaN) unsets the trait. A timestamp of None or 0 means ``now_ms``; trait timestamps
    are never too old (the last value written wins; the timestamp only moves the event
    clock), so ``retention_ms`` is not used; they may not be beyond the future bound. One
    Python step per update.

    ``limits`` and ``names`` as for :func:`prepare_events`: an update that would bring a
    trait beyond ``max_traits`` is rejected (whole: an update is all or nothing), and the
    trait names of accepted updates are added to ``names``.
    """
    _check_clock(clock)
    limits = _limits_of(limits, names)
    if not isinstance(updates, (list, tuple)):
        updates = list(updates)
    _check_batch_size(len(updates), limits, "trait updates")
    budget = names if names is not None else NameBudget(limits)
    new_traits: set[str] = set()        # accepted in this batch, not yet in the budget
    max_traits, max_name = limits.max_traits, limits.max_name_bytes
    max_id, max_str = limits.max_id_bytes, limits.max_string_bytes
    max_columns = limits.max_batch_cells // max(len(updates), 1)   # trait columns are dense
    bound = limits.future_bound_ms(now_ms)
    reasons = _Reasons(len(updates))
    rows_user: list[str] = []
    rows_ts: list[int] = []
    per_trait: dict[str, tuple[list[int], list[float], list[int], list[str]]] = {}
    for i, upd in enumerate(updates):
        try:
            uid, traits, ts = upd
        except (TypeError, ValueError):
            reasons.add(i, "a trait update must be a tuple (user_id, traits, timestamp_ms)")
            continue
        p = string_problem(uid)
        if p is not None:
            reasons.add(i, f"user_id {p}")
            continue
        if uid == "":
            reasons.add(i, "user_id must not be empty")
            continue
        size = _utf8_size(uid, max_id)
        if size > max_id:
            reasons.add(i, f"user_id is {size} bytes long (UTF-8); at most {max_id} (max_id_bytes)")
            continue
        if not isinstance(traits, Mapping):
            reasons.add(i, f"traits must be a dict of name -> value, got {_builtin_type(traits).__name__}")
            continue
        t, p = _trait_timestamp(ts)
        if p is not None:
            reasons.add(i, p)
            continue
        if t is not None and t > bound:
            reasons.add(i, limits.future_reason(t, bound))
            continue
        if len(traits) > max_traits:
            reasons.add(i, f"the update sets {len(traits)} traits; at most {max_traits} distinct "
                           "traits exist (max_traits)")
            continue
        row = len(rows_user)
        staged = []
        problem = None
        fresh = []
        for name, v in traits.items():
            if not isinstance(name, str) or name == "" or string_problem(name) is not None:
                problem = f"trait names must be non-empty strings without NUL, got {_short(repr(name))}"
                break
            size = _utf8_size(name, max_name)
            if size > max_name:
                problem = (f'trait name "{_short(name)}" is {size} bytes long (UTF-8); at most '
                           f"{max_name} (max_name_bytes)")
                break
            if not budget.has_trait(name) and name not in new_traits:
                fresh.append(name)
            k = _kind_of_type(_builtin_type(v))
            if k == "none":
                staged.append((name, NULL, None))
            elif k == "str":
                sp = string_problem(v)
                if sp is not None:
                    problem = f'trait "{_short(name)}" {sp}'
                    break
                size = _utf8_size(v, max_str)
                if size > max_str:
                    problem = (f'trait "{_short(name)}" value is {size} bytes long (UTF-8); at most '
                               f"{max_str} = {format_bytes(max_str)} (max_string_bytes)")
                    break
                staged.append((name, 0.0, v))
            elif k == "bool":
                staged.append((name, _BOOL_BOXES[bool(v)], None))
            elif k in ("int", "float"):
                try:
                    x = float(v)
                except OverflowError:
                    problem = f'trait "{_short(name)}" value {_int_text(v)} is too large for a float64'
                    break
                staged.append((name, NULL if math.isnan(x) else x + 0.0, None))
            else:
                problem = _unsupported(f'trait "{_short(name)}"', v)
                break
        if problem is None and fresh:
            room = max(max_traits - budget.n_traits - len(new_traits), 0)
            if len(fresh) > room:
                problem = (f'trait "{_short(fresh[room])}" would be one more than max_traits '
                           f"({max_traits} distinct traits)")
        if problem is None and len(per_trait) + len(staged) > max_columns:
            wide = len(per_trait) + sum(1 for name, *_ in staged if name not in per_trait)
            if wide > max_columns:
                problem = (f"the batch's trait columns would hold more than {limits.max_batch_cells} "
                           f"cells ({len(updates)} updates x {wide} distinct trait names; "
                           "max_batch_cells): send this update in a smaller batch")
        if problem is None:
            new_traits.update(fresh)
        if problem is not None:
            reasons.add(i, problem)
            continue
        rows_user.append(uid)
        rows_ts.append(now_ms if t is None else t)
        for name, x, s in staged:
            entry = per_trait.get(name)
            if entry is None:
                entry = per_trait[name] = ([], [], [], [])
            entry[0].append(row)
            entry[1].append(x)
            if s is not None:
                entry[2].append(row)
                entry[3].append(s)
    n = len(rows_user)
    traits_out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    boxed: dict[str, np.ndarray] = {}
    strings = _StringSlots()
    for name, (rows, xs, srows, svals) in per_trait.items():
        b = np.full(n, NULL)
        given = np.zeros(n, dtype=bool)
        r = np.asarray(rows, dtype=np.int64)
        b[r] = np.asarray(xs, dtype=np.float64)
        given[r] = True
        boxed[name] = b
        traits_out[name] = (b, given)
        strings.add(name, name, np.asarray(srows, dtype=np.int64), svals)
    if names is not None and new_traits:
        names.add(traits=new_traits)
    table = strings.resolve(boxed, None, "trait")
    cols = TraitColumns(
        split_strings(rows_user),
        np.asarray(rows_ts, dtype=np.int64).reshape(n),
        traits_out,
        table,
    )
    return cols, reasons.rejections()
