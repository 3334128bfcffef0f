"""Conversions between protobuf messages and the plain columns the engine takes.

Shared by the gateway (decode) and ``engine.client`` (encode). Columns are the arguments of
``Engine.ingest_columns``: ``user_id``/``type`` sequences of str, ``timestamp_ms`` int64,
``value`` float64, ``properties`` name -> object array of str/float/bool/None.

Numeric arrays of ``ColumnarEvents`` travel as raw little-endian bytes, so neither side loops
over rows for them; string columns are dictionary-encoded (distinct strings once, int32 codes)
and stay so once decoded (``engine._coded``: ``prepare_events`` splits only the distinct
strings, and no Python object is made per row).

Decoding trusts nothing: arrays that do not fit together (a count that disagrees with a
column, codes out of range, byte lengths that are not whole values) raise
:class:`ColumnsError`, and a batch beyond the whole-batch limits raises
``engine.limits.LimitExceeded``; both are ValueErrors, which the server answers with
INVALID_ARGUMENT, before any row is applied. Bad values inside well-formed arrays (NaN
values, far-future timestamps, huge strings) are left to ``engine._batch``, which rejects
just their events.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from engine._coded import CodedStrings, CodedValues, Utf8Strings, plain, split_blob
from engine._pb import pb
from engine.limits import DEFAULT_LIMITS, LimitExceeded, Limits

_I64 = np.dtype("<i8")
_I32 = np.dtype("<i4")
_F64 = np.dtype("<f8")

ABSENT, NUMBER, STRING, BOOL = (pb.VALUE_KIND_ABSENT, pb.VALUE_KIND_NUMBER,
                                pb.VALUE_KIND_STRING, pb.VALUE_KIND_BOOL)
_KINDS = np.array([ABSENT, NUMBER, STRING, BOOL], dtype=np.uint8)


class ColumnsError(ValueError):
    """A ColumnarEvents message whose arrays do not fit together (INVALID_ARGUMENT)."""


def _array(data: bytes, dtype: np.dtype, what: str) -> np.ndarray:
    """Raw little-endian bytes -> array; ColumnsError unless they are whole values."""
    if len(data) % dtype.itemsize:
        raise ColumnsError(f"columns: {what} has {len(data)} bytes, not a whole number of "
                           f"{dtype.itemsize}-byte values")
    return np.frombuffer(data, dtype=dtype)


def _short(name: str, n: int = 40) -> str:
    return name if len(name) <= n else name[:n] + "..."


# ----------------------------------------------------------------------------- single values


def value_to_pb(v: Any, out: "pb.Value | None" = None) -> "pb.Value":
    """str/number/bool -> Value; None -> a Value with no kind (absent / unset)."""
    out = pb.Value() if out is None else out
    if v is None:
        return out
    if isinstance(v, (bool, np.bool_)):
        out.bool_value = bool(v)
    elif isinstance(v, str):
        out.string_value = v
    elif isinstance(v, (int, float, np.integer, np.floating)):
        out.number_value = float(v)
    else:
        raise TypeError(f"a value must be a string, number, bool or None, not {type(v).__name__}")
    return out


def value_from_pb(v: "pb.Value") -> Any:
    kind = v.WhichOneof("kind")
    if kind is None:
        return None
    return getattr(v, kind)


def is_representable(v: Any) -> bool:
    return v is None or isinstance(v, (str, bool, int, float, np.bool_, np.integer, np.floating))


# ----------------------------------------------------------------------------- string columns


def _encode_plain(seq: list, out: "pb.StringColumn") -> bool:
    """Fast path for n strings without None: C-speed joins and a numpy scan, no Python loop
    per row. Low-cardinality columns are dictionary-encoded, others sent row by row.
    False when the fast path does not apply (None, non-str, NUL or non-UTF-8 values)."""
    n = len(seq)
    try:
        distinct = set(seq)
    except TypeError:
        return False
    if len(distinct) * 2 <= n:
        uniq = list(distinct)
        try:
            table = {u: i for i, u in enumerate(uniq)}
            codes = np.fromiter(map(table.__getitem__, seq), dtype=_I32, count=n)
        except TypeError:
            return False
    else:
        uniq = seq
        codes = np.arange(n, dtype=_I32)
    try:
        data = "\0".join(uniq).encode("utf-8")
    except (TypeError, UnicodeEncodeError):
        return False
    raw = np.frombuffer(data, dtype=np.uint8)
    seps = np.flatnonzero(raw == 0)
    if len(seps) != len(uniq) - 1:
        return False                       # a value holds NUL: let the careful path see it
    offsets = np.empty(len(uniq) + 1, _I64)
    offsets[0] = 0
    # distinct j occupies data[start_j : seps[j]]; without separators the ends move left by j
    offsets[1:-1] = seps - np.arange(len(seps))
    offsets[-1] = len(data) - len(seps)
    out.blob = data.replace(b"\0", b"") if len(seps) else data
    out.offsets = offsets.tobytes()
    out.codes = codes.tobytes()
    return True


def encode_strings(values: Sequence[Any] | np.ndarray, out: "pb.StringColumn") -> None:
    """Dictionary-encode n strings (None -> code -1) into ``out``."""
    arr = values if isinstance(values, np.ndarray) else None
    if arr is None or arr.dtype == object:
        seq = arr.tolist() if arr is not None else values
        if not isinstance(seq, list):
            seq = list(seq)
        if seq and _encode_plain(seq, out):
            return
        values = seq
        arr = None
    if arr is not None and arr.dtype.kind in "US":
        uniques, codes = np.unique(arr, return_inverse=True)
        uniq_list = [str(u) for u in uniques.tolist()]
        codes = codes.astype(_I32)
    else:
        table: dict[str, int] = {}
        code_list = []
        for s in (values.tolist() if arr is not None else values):
            if s is None:
                code_list.append(-1)
            else:
                code = table.get(s)
                if code is None:
                    if not isinstance(s, str):
                        raise TypeError(f"expected a string, got {type(s).__name__}: {s!r}")
                    code = table[s] = len(table)
                code_list.append(code)
        uniq_list = list(table)
        codes = np.asarray(code_list, dtype=_I32)
    encoded = [u.encode("utf-8") for u in uniq_list]
    offsets = np.zeros(len(encoded) + 1, _I64)
    if encoded:
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
    out.blob = b"".join(encoded)
    out.offsets = offsets.tobytes()
    out.codes = codes.tobytes()


def decode_strings(col: "pb.StringColumn", n: int, what: str) -> CodedStrings:
    """-> n strings, dictionary-coded as they came (code -1: None). ColumnsError when the
    codes, offsets and blob do not fit together or the blob is not UTF-8."""
    codes = _array(col.codes, _I32, f"{what} codes")
    if len(codes) != n:
        raise ColumnsError(f"columns: {what} has {len(codes)} codes for {n} rows")
    offsets = _array(col.offsets, _I64, f"{what} offsets") if col.offsets else np.zeros(1, _I64)
    k = len(offsets) - 1
    blob = bytes(col.blob)
    if k < 0 or offsets[0] != 0 or offsets[-1] != len(blob) or np.any(np.diff(offsets) < 0):
        raise ColumnsError(f"columns: {what} has inconsistent offsets (they must rise from 0 to "
                           f"the blob's {len(blob)} bytes)")
    if n and (codes.min(initial=0) < -1 or codes.max(initial=-1) >= k):
        raise ColumnsError(f"columns: {what} has a code outside its {k} strings")
    try:
        raw = Utf8Strings.checked(blob, offsets)
        uniques = split_blob(blob, offsets, k) if raw is None else None
    except UnicodeDecodeError:
        raise ColumnsError(f"columns: {what} is not valid UTF-8") from None
    return CodedStrings(uniques, codes.astype(np.int32), raw)


# ----------------------------------------------------------------------------- event columns


def encode_columns(user_id, type, timestamp_ms, value=None, properties=None) -> "pb.ColumnarEvents":
    """Plain columns (as ``Engine.ingest_columns`` takes them) -> ColumnarEvents."""
    n = len(user_id)
    msg = pb.ColumnarEvents(count=n)
    if len(type) != n or len(timestamp_ms) != n:
        raise ValueError("user_id, type and timestamp_ms must have the same length")
    encode_strings(user_id, msg.user_ids)
    encode_strings(type, msg.types)
    ts = np.asarray(timestamp_ms)
    if ts.dtype.kind == "f":
        if not np.all(np.isfinite(ts)) or np.any(ts != np.floor(ts)):
            raise ValueError("timestamp_ms must hold integer milliseconds")
    msg.timestamp_ms = ts.astype(_I64).tobytes()
    if value is not None:
        vals = np.asarray(value, dtype=_F64)
        if len(vals) != n:
            raise ValueError("value must have the same length as user_id")
        msg.values = vals.tobytes()
    for name, column in (properties or {}).items():
        encode_property(name, column, n, msg.properties.add())
    return msg


def encode_property(name: str, column, n: int, out: "pb.PropertyColumn") -> None:
    out.name = name
    arr = column if isinstance(column, np.ndarray) else None
    if arr is not None and arr.dtype.kind in "fiu":
        numbers = arr.astype(_F64)
        kinds = np.where(np.isnan(numbers), ABSENT, NUMBER).astype(np.uint8)
        out.kinds = kinds.tobytes()
        out.numbers = numbers.tobytes()
        out.strings.codes = np.full(n, -1, _I32).tobytes()
        out.strings.offsets = np.zeros(1, _I64).tobytes()
        return
    if arr is not None and arr.dtype.kind in "US":
        out.kinds = np.full(n, STRING, np.uint8).tobytes()
        encode_strings(arr, out.strings)
        return
    items = column.tolist() if arr is not None else list(column)
    if len(items) != n:
        raise ValueError(f"property {name!r} must have one value per event")
    kinds_seen = set(map(type, items))
    if kinds_seen == {str}:                 # the common case: no Python loop per row
        out.kinds = np.full(n, STRING, np.uint8).tobytes()
        encode_strings(items, out.strings)
        return
    if kinds_seen and kinds_seen <= {float, int} and n:
        numbers = np.asarray(items, dtype=_F64)
        out.kinds = np.where(np.isnan(numbers), ABSENT, NUMBER).astype(np.uint8).tobytes()
        out.numbers = numbers.tobytes()
        out.strings.codes = np.full(n, -1, _I32).tobytes()
        out.strings.offsets = np.zeros(1, _I64).tobytes()
        return
    kinds = np.zeros(n, np.uint8)
    numbers = np.zeros(n, _F64)
    strings: list[str | None] = [None] * n
    for i, v in enumerate(items):
        if v is None:
            continue
        if isinstance(v, (bool, np.bool_)):
            kinds[i] = BOOL
            numbers[i] = 1.0 if v else 0.0
        elif isinstance(v, str):
            kinds[i] = STRING
            strings[i] = v
        elif isinstance(v, (int, float, np.integer, np.floating)):
            if isinstance(v, float) and math.isnan(v):
                continue
            kinds[i] = NUMBER
            numbers[i] = float(v)
        else:
            raise TypeError(f"property {name!r}: a value must be str, number, bool or None, "
                            f"not {type(v).__name__}")
    out.kinds = kinds.tobytes()
    out.numbers = numbers.tobytes()
    encode_strings(strings, out.strings)


def _check_batch(n: int, n_props: int, limits: Limits) -> None:
    if n > limits.max_batch_events:
        raise LimitExceeded(f"the batch has {n} events; at most {limits.max_batch_events} "
                            "(max_batch_events): send it in smaller batches")
    if n * n_props > limits.max_batch_cells:
        raise LimitExceeded(f"the batch has {n} events and {n_props} property columns: more than "
                            f"{limits.max_batch_cells} cells (max_batch_cells); send it in smaller batches")


def decode_columns(msg: "pb.ColumnarEvents", limits: Limits | None = None) -> dict:
    """ColumnarEvents -> plain columns. ColumnsError when the arrays do not fit together,
    LimitExceeded beyond ``limits.max_batch_events`` or ``max_batch_cells``."""
    limits = limits or DEFAULT_LIMITS
    n = int(msg.count)
    _check_batch(n, len(msg.properties), limits)
    if len(msg.timestamp_ms) != 8 * n:
        raise ColumnsError(f"columns: timestamp_ms has {len(msg.timestamp_ms)} bytes for {n} rows "
                           f"(8 bytes a row)")
    ts = np.frombuffer(msg.timestamp_ms, dtype=_I64).astype(np.int64)
    if msg.values:
        if len(msg.values) != 8 * n:
            raise ColumnsError(f"columns: values has {len(msg.values)} bytes for {n} rows (8 bytes a "
                               "row, or none for all 0.0)")
        vals = np.frombuffer(msg.values, dtype=_F64).astype(np.float64)
    else:
        vals = np.zeros(n, np.float64)
    props = {}
    for pc in msg.properties:
        if pc.name in props:
            raise ColumnsError(f"columns: property {_short(pc.name)!r} given twice")
        props[pc.name] = decode_property(pc, n)
    return {"user_id": decode_strings(msg.user_ids, n, "user_ids"),
            "type": decode_strings(msg.types, n, "types"),
            "timestamp_ms": ts, "value": vals, "properties": props}


def decode_property(pc: "pb.PropertyColumn", n: int) -> CodedValues:
    """One PropertyColumn -> n values by kind (``CodedValues``: no object per row);
    ColumnsError when its arrays do not fit together."""
    name = _short(pc.name)
    kinds = np.frombuffer(pc.kinds, dtype=np.uint8)
    if len(kinds) != n:
        raise ColumnsError(f"columns: property {name!r} has {len(kinds)} kinds for {n} rows")
    if n and kinds.max() > _KINDS[-1]:
        raise ColumnsError(f"columns: property {name!r} has an unknown value kind "
                           f"{int(kinds.max())} (0 absent, 1 number, 2 string, 3 bool)")
    numbers = None
    if np.any((kinds == NUMBER) | (kinds == BOOL)):
        if len(pc.numbers) != 8 * n:
            raise ColumnsError(f"columns: property {name!r} has {len(pc.numbers)} bytes of numbers "
                               f"for {n} rows (8 bytes a row)")
        numbers = np.frombuffer(pc.numbers, dtype=_F64)
    strings = None
    m = kinds == STRING
    if m.any():
        coded = decode_strings(pc.strings, n, f"property {name!r}")
        given = coded.codes[m]
        if np.any(given < 0):
            raise ColumnsError(f"columns: property {name!r} has a string row whose code is -1")
        strings = coded.with_codes(given)
    return CodedValues(kinds, numbers, strings)


def events_to_columns(events: Iterable["pb.Event"], limits: Limits | None = None) -> dict:
    """Event messages -> plain columns (properties absent where an event lacks them).

    Of an event with more than ``limits.max_properties_per_event`` properties only one more
    than that are read: enough for ``engine._batch`` to reject it, without reading them all.
    More than ``max_batch_events`` events, or more than ``max_batch_cells`` events x distinct
    property names, raise LimitExceeded.
    """
    limits = limits or DEFAULT_LIMITS
    events = list(events)
    n = len(events)
    _check_batch(n, 0, limits)
    max_columns = limits.max_batch_cells // max(n, 1)
    keep = limits.max_properties_per_event + 1
    # per property: the rows that set it and their values, put in columns at the end (a
    # map's keys and item lookups are ~2x faster than its items() with upb, and one object
    # array per property is filled with one assignment)
    found: dict[str, tuple[list[int], list]] = {}
    for i, ev in enumerate(events):
        p = ev.properties
        if not p:
            continue
        for name in (p if len(p) <= keep else itertools.islice(p, keep)):
            v = p[name]
            got = found.get(name)
            if got is None:
                if len(found) >= max_columns:
                    _check_batch(n, len(found) + 1, limits)
                got = found[name] = ([], [])
            kind = v.WhichOneof("kind")
            if kind is not None:
                got[0].append(i)
                got[1].append(getattr(v, kind))
    props: dict[str, np.ndarray] = {}
    for name, (rows, values) in found.items():
        col = props[name] = np.full(n, None, dtype=object)
        if rows:
            boxed = np.empty(len(values), dtype=object)
            boxed[:] = values
            col[rows] = boxed
    return {"user_id": [ev.user_id for ev in events],
            "type": [ev.type for ev in events],
            "timestamp_ms": np.fromiter((ev.timestamp_ms for ev in events), np.int64, n),
            "value": np.fromiter((ev.value for ev in events), np.float64, n),
            "properties": props}


def concat_columns(a: dict, b: dict) -> dict:
    """Rows of ``a`` then rows of ``b``."""
    na, nb = len(a["user_id"]), len(b["user_id"])
    if nb == 0:
        return a
    if na == 0:
        return b
    props = {}
    for name in set(a["properties"]) | set(b["properties"]):
        pa = a["properties"].get(name)
        pb_ = b["properties"].get(name)
        props[name] = np.concatenate([plain(pa) if pa is not None else np.full(na, None, dtype=object),
                                      plain(pb_) if pb_ is not None else np.full(nb, None, dtype=object)])
    return {"user_id": np.concatenate([np.asarray(plain(a["user_id"]), dtype=object),
                                       np.asarray(plain(b["user_id"]), dtype=object)]),
            "type": np.concatenate([np.asarray(plain(a["type"]), dtype=object),
                                    np.asarray(plain(b["type"]), dtype=object)]),
            "timestamp_ms": np.concatenate([a["timestamp_ms"], b["timestamp_ms"]]),
            "value": np.concatenate([a["value"], b["value"]]),
            "properties": props}


def batch_to_columns(batch: "pb.EventBatch", limits: Limits | None = None) -> dict:
    """An EventBatch (events, columns or both) -> one set of plain columns.

    ColumnsError (malformed columns) and LimitExceeded (beyond the whole-batch limits of
    ``limits``, default the defaults) are ValueErrors: INVALID_ARGUMENT, nothing applied."""
    limits = limits or DEFAULT_LIMITS
    n_columns = int(batch.columns.count) if batch.HasField("columns") else 0
    _check_batch(len(batch.events) + n_columns, 0, limits)
    cols = events_to_columns(batch.events, limits)
    if batch.HasField("columns"):
        cols = concat_columns(cols, decode_columns(batch.columns, limits))
        _check_batch(len(cols["timestamp_ms"]), len(cols["properties"]), limits)
    return cols


def event_dict_to_pb(ev: Mapping[str, Any], out: "pb.Event") -> None:
    """A dict as ``Engine.ingest`` takes it -> Event (TypeError/ValueError if it cannot be)."""
    uid, typ = ev.get("user_id"), ev.get("type")
    if not isinstance(uid, str) or not isinstance(typ, str):
        raise TypeError("user_id and type must be strings")
    ts = ev.get("timestamp_ms")
    if isinstance(ts, bool) or not isinstance(ts, (int, np.integer)):
        raise TypeError("timestamp_ms must be an integer")
    out.user_id = uid
    out.type = typ
    out.timestamp_ms = int(ts)
    val = ev.get("value", 0.0)
    if val is not None:
        if isinstance(val, bool) or not isinstance(val, (int, float, np.integer, np.floating)):
            raise TypeError("value must be a number")
        out.value = float(val)
    props = ev.get("properties") or {}
    if not isinstance(props, Mapping):
        raise TypeError("properties must be a mapping")
    for name, v in props.items():
        if not isinstance(name, str) or not is_representable(v):
            raise TypeError("property names are strings and values str/number/bool/None")
        if v is None:
            continue
        value_to_pb(v, out.properties[name])


# ----------------------------------------------------------------------------- models

_SPEC_FIELDS = ("name", "target", "horizon_ms", "lookback_ms", "churn", "algorithm",
                "target_segment", "seed")
_REPORT_SCALARS = ("name", "version", "auc", "base_rate", "rows", "positives", "trained_ms",
                   "cutoff_ms", "algorithm", "calibration_error", "validation_rows",
                   "validation_positives", "predicted_positives", "target", "target_segment",
                   "horizon_ms", "lookback_ms", "churn", "bucket_high", "bucket_medium")


def spec_to_pb(spec) -> "pb.ModelSpec":
    """``scoring.spec.ModelSpec`` -> ModelSpec (bucket cut-offs always sent)."""
    msg = pb.ModelSpec(features=list(spec.features), bucket_high=float(spec.bucket_high),
                       bucket_medium=float(spec.bucket_medium),
                       **{f: getattr(spec, f) for f in _SPEC_FIELDS})
    return msg


def spec_from_pb(msg: "pb.ModelSpec"):
    """ModelSpec -> ``scoring.spec.ModelSpec`` (unset cut-offs: the spec's defaults; an empty
    algorithm: "auto"). Field validation is ``ModelSpec.resolved``'s."""
    from scoring.spec import ModelSpec

    kw: dict[str, Any] = {f: getattr(msg, f) for f in _SPEC_FIELDS}
    kw["algorithm"] = msg.algorithm or "auto"
    kw["features"] = tuple(msg.features)
    for f in ("bucket_high", "bucket_medium"):
        if msg.HasField(f):
            kw[f] = getattr(msg, f)
    return ModelSpec(**kw)


def report_to_pb(report, out: "pb.ModelReport | None" = None) -> "pb.ModelReport":
    """``scoring.spec.ModelReport`` -> ModelReport."""
    out = pb.ModelReport() if out is None else out
    for f in _REPORT_SCALARS:
        v = getattr(report, f)
        setattr(out, f, v.item() if isinstance(v, np.generic) else v)
    out.features.extend(report.features)
    for p in report.curve:
        out.curve.add(threshold=p.threshold, precision=p.precision, recall=p.recall,
                      size=int(p.size))
    for k, v in dict(report.candidates or {}).items():
        out.candidates[k] = float(v)
    return out


def report_from_pb(msg: "pb.ModelReport"):
    """ModelReport -> ``scoring.spec.ModelReport`` (equal to the embedded engine's)."""
    from scoring.spec import CurvePoint, ModelReport

    kw: dict[str, Any] = {f: getattr(msg, f) for f in _REPORT_SCALARS}
    kw["features"] = tuple(msg.features)
    kw["curve"] = tuple(CurvePoint(p.threshold, p.precision, p.recall, int(p.size))
                        for p in msg.curve)
    kw["candidates"] = dict(msg.candidates)
    return ModelReport(**kw)
