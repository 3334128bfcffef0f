"""Event and trait files -> columnar batches with line numbers (``rtseg ingest`` / ``traits``).

Files are JSON lines or CSV, plain or gzip. Reading is pure: a binary stream in, batches out,
each batch holding the columns ``Client.ingest_columns`` (or the updates
``Client.set_traits_many``) takes, the 1-based file line of every row, and the lines that
could not be parsed with the reason. A bad line never stops the read. What the engine itself
checks (empty ids, sizes, the clock's rules) is left to the engine: its rejections come back
by row and :func:`load` maps them to lines through ``batch.lines``.

>>> import io
>>> data = b'{"user_id": "u1", "type": "view", "timestamp_ms": 1}\\n{oops\\n'
>>> [b] = event_batches(io.BytesIO(data), "jsonl")
>>> b.user_id, b.lines.tolist(), b.rejections[0].line
(['u1'], [1], 2)
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import math
import os
import re
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import numpy as np

from engine.errors import EngineError, Overloaded, Unavailable

__all__ = [
    "DEFAULT_BATCH_ROWS", "FORMATS", "EVENT_FIELDS", "FileError", "LineRejection", "EventBatch",
    "TraitBatch", "Source", "LoadSummary", "open_source", "detect_format", "parse_mapping",
    "event_batches", "trait_batches", "load", "transient", "cell_value",
]

FORMATS = ("jsonl", "csv")
DEFAULT_BATCH_ROWS = 10_000
# Rows x distinct property names of one batch: its property columns are dense on the wire,
# so a file with very many property names is sent in shorter batches.
MAX_BATCH_CELLS = 1 << 22
EVENT_FIELDS = ("user_id", "type", "timestamp_ms", "value", "properties")
TRAIT_FIELDS = ("user_id", "traits", "timestamp_ms")
GZIP_MAGIC = b"\x1f\x8b"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_SUFFIX_FORMAT = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
                  ".tsv": "csv"}
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_REASON_CHARS = 120


class FileError(EngineError, ValueError):
    """The file as a whole cannot be read (missing, a CSV header without ``user_id``, a bad
    ``--map``): nothing is sent. ``rtseg`` exits with the usage code."""


class _Bad(Exception):
    """One line cannot become a row; the message is its rejection reason."""


@dataclass(frozen=True)
class LineRejection:
    """A row that was not loaded: its 1-based line in the file and why."""

    line: int
    reason: str

    def to_dict(self) -> dict:
        return {"line": self.line, "reason": self.reason}


@dataclass(frozen=True)
class EventBatch:
    """Columns of ``Client.ingest_columns`` for up to ``batch_rows`` parsed rows.

    ``lines[i]`` is the file line of row ``i``; ``rejections`` the lines of this stretch of the
    file that could not be parsed. ``properties`` maps a name to one value per row (str, float
    or bool; None: the row does not have it).
    """

    lines: np.ndarray
    user_id: list[str]
    type: list[str]
    timestamp_ms: np.ndarray
    value: np.ndarray
    properties: dict[str, list]
    rejections: list[LineRejection] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.user_id)

    def columns(self) -> dict[str, Any]:
        """Keyword arguments of ``ingest_columns``."""
        return {"user_id": self.user_id, "type": self.type, "timestamp_ms": self.timestamp_ms,
                "value": self.value, "properties": self.properties}


@dataclass(frozen=True)
class TraitBatch:
    """``(user_id, traits, timestamp_ms | None)`` updates of ``Client.set_traits_many``."""

    lines: np.ndarray
    updates: list[tuple[str, dict[str, Any], int | None]]
    rejections: list[LineRejection] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.updates)


# ----------------------------------------------------------------------------- opening


@dataclass
class Source:
    """An opened input: ``stream`` the decompressed bytes; ``size_bytes`` of the file as stored
    (None for stdin or a pipe); ``position()`` the stored bytes read so far."""

    name: str
    stream: IO[bytes]
    size_bytes: int | None
    compressed: bool
    _raw: IO[bytes]
    _owns_raw: bool

    def position(self) -> int:
        try:
            return int(self._raw.tell())
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        if self.stream is not self._raw:
            self.stream.close()          # a GzipFile leaves its fileobj open
        if self._owns_raw:
            self._raw.close()

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_source(path: str, stdin: IO[bytes] | None = None) -> Source:
    """Open ``path`` ("-": ``stdin``, default the process's), gunzipping it when its name ends
    in ``.gz`` or it starts with the gzip magic bytes. FileError if it cannot be opened."""
    if path == "-":
        raw = stdin if stdin is not None else sys.stdin.buffer
        if not hasattr(raw, "peek"):
            raw = io.BufferedReader(raw)  # type: ignore[arg-type]
        size, owns = None, False
    else:
        try:
            raw = open(path, "rb")
        except OSError as err:
            raise FileError(f"cannot open {path}: {err.strerror or err}") from None
        size, owns = _regular_size(raw), True
    compressed = path.endswith(".gz") or raw.peek(2)[:2] == GZIP_MAGIC  # type: ignore[attr-defined]
    stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
    return Source(path, stream, size, compressed, raw, owns)


def _regular_size(f: IO[bytes]) -> int | None:
    try:
        st = os.fstat(f.fileno())
    except (OSError, ValueError):
        return None
    import stat

    return st.st_size if stat.S_ISREG(st.st_mode) else None


def detect_format(name: str, stream: IO[bytes] | None = None) -> str:
    """"jsonl" or "csv" from the name (``.jsonl``/``.ndjson``/``.json``, ``.csv``/``.tsv``,
    optionally ``.gz``), else from the first non-blank byte of ``stream`` ("{": JSON lines)."""
    fmt = _SUFFIX_FORMAT.get(os.path.splitext(name.removesuffix(".gz"))[1].lower())
    if fmt is not None:
        return fmt
    if stream is not None and hasattr(stream, "peek"):
        head = stream.peek(4096)[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")  # type: ignore[attr-defined]
        return "jsonl" if head.startswith(b"{") else "csv"
    raise FileError(f"cannot tell the format of {name}: give --format jsonl or --format csv")


def parse_mapping(items: Sequence[str]) -> dict[str, str]:
    """``["InvoiceNo=type", ...]`` (from ``--map COL=FIELD``) -> {source name: new name}."""
    out: dict[str, str] = {}
    for item in items:
        src, sep, dst = item.partition("=")
        src, dst = src.strip(), dst.strip()
        if not sep or not src or not dst:
            raise FileError(f"--map {item!r}: expected COLUMN=FIELD, e.g. --map uid=user_id")
        if src in out:
            raise FileError(f"--map {src}=...: given twice")
        out[src] = dst
    targets = list(out.values())
    for dst in targets:
        if targets.count(dst) > 1:
            raise FileError(f"--map: two columns are renamed to {dst!r}")
    return out


# ----------------------------------------------------------------------------- values


def _short(text: str) -> str:
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


def _json_kind(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", str: "string", int: "number", float: "number", list: "array",
            dict: "object"}.get(type(v), type(v).__name__)


def _json_user_id(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)           # as the same id reads from a CSV file
    raise _Bad(f"user_id must be a string, got {_json_kind(v)}")


def _json_timestamp(v: Any) -> int:
    """Missing or null: 0 (the wall clock's "now"; the event clock rejects it)."""
    if v is None:
        return 0
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
        raise _Bad(f"timestamp_ms must be an integer (ms since the Unix epoch), got "
                   f"{_json_kind(v)} {_short(json.dumps(v))}")
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise _Bad(f"timestamp_ms {v} is out of range")
    return v


def _json_scalars(obj: Any, what: str, item: str) -> dict[str, Any]:
    """A JSON object of properties or traits -> {name: str | float | bool | None}."""
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise _Bad(f"{what} must be a JSON object, got {_json_kind(obj)}")
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if isinstance(v, (str, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (int, float)):
            out[k] = float(v)
        else:
            kind = _json_kind(v)
            raise _Bad(f'{item} "{_short(k)}" is {"an" if kind[0] in "aeiou" else "a"} {kind}: '
                       "a value is a string, number, boolean or null")
    return out


def _cell_timestamp(text: str) -> int:
    if text == "":
        return 0
    try:
        v = int(text)
    except ValueError:
        try:
            f = float(text)
        except ValueError:
            f = math.nan
        if not (math.isfinite(f) and f.is_integer()):
            raise _Bad(f"timestamp_ms {_short(text)!r} is not an integer "
                       "(ms since the Unix epoch)") from None
        v = int(f)
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise _Bad(f"timestamp_ms {v} is out of range")
    return v


def _cell_number(text: str, column: str) -> float:
    if text == "":
        return 0.0
    try:
        return float(text)
    except ValueError:
        raise _Bad(f"{column} {_short(text)!r} is not a number") from None


def cell_value(text: str, infer: bool = True) -> str | float | bool | None:
    """A CSV cell as a property or trait value: empty -> None (not given); with ``infer``,
    ``true``/``false`` (any case) -> bool and a decimal number -> float; else the text."""
    if text == "":
        return None
    if not infer:
        return text
    low = text.lower()
    if low == "true":
        return True
    if low == "false":
        return False
    if _NUMBER.fullmatch(text):
        return float(text)
    return text


# ----------------------------------------------------------------------------- lines


def _json_lines(stream: IO[bytes]) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object or _Bad) for every non-blank line."""
    for n, raw in enumerate(stream, 1):
        if not raw.strip():
            continue
        try:
            yield n, json.loads(raw)
        except UnicodeDecodeError:
            yield n, _Bad("the line is not valid UTF-8")
        except json.JSONDecodeError as err:
            yield n, _Bad(f"not valid JSON: {err.msg} (column {err.colno})")


class _TextLines:
    """Decoded lines for ``csv.reader``; remembers which lines were not valid UTF-8."""

    def __init__(self, stream: IO[bytes]):
        self._stream = stream
        self.bad: set[int] = set()
        self._n = 0

    def __iter__(self) -> Iterator[str]:
        for raw in self._stream:
            self._n += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.bad.add(self._n)
                text = raw.decode("utf-8", "replace")
            if self._n == 1:
                text = text.lstrip("\ufeff")
            yield text


def _csv_rows(stream: IO[bytes], delimiter: str) -> Iterator[tuple[int, list[str] | _Bad]]:
    """(first line of the record, its fields or _Bad) for every non-blank CSV record."""
    lines = _TextLines(stream)
    reader = csv.reader(iter(lines), delimiter=delimiter)
    end = 0
    while True:
        start = end + 1
        try:
            row: list[str] | _Bad = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            row = _Bad(f"not valid CSV: {err}")
            if reader.line_num == end:        # nothing consumed: the reader cannot go on
                yield start, row
                return
        end = reader.line_num
        if isinstance(row, list) and not row:
            continue
        bad = sorted(x for x in lines.bad if start <= x <= end)
        if bad:
            lines.bad.difference_update(bad)
            row = _Bad(f"line {bad[0]} is not valid UTF-8")
        yield start, row


def _csv_header(rows: Iterator[tuple[int, list[str] | _Bad]], mapping: Mapping[str, str],
                required: Sequence[str], what: str) -> list[str]:
    for _, row in rows:
        if isinstance(row, _Bad):
            raise FileError(f"the CSV header cannot be read: {row}")
        names = [mapping.get(c.strip(), c.strip()) for c in row]
        for i, name in enumerate(names):
            if name == "":
                raise FileError(f"column {i + 1} of the CSV header has no name")
            if names.index(name) != i:
                raise FileError(f"the CSV header has two columns named {name!r}")
        missing = [c for c in required if c not in names]
        if missing:
            raise FileError(
                f"the CSV header has no {' or '.join(missing)} column (columns: "
                f"{_short(', '.join(names))}); rename one with --map COLUMN={missing[0]}"
                f" ({what})")
        return names
    raise FileError("the CSV file is empty: it needs a header line")


def _check_fields(cells: list[str], header: list[str]) -> None:
    if len(cells) != len(header):
        raise _Bad(f"the line has {len(cells)} fields but the header has {len(header)} "
                   f"({_short(', '.join(header))})")


# ----------------------------------------------------------------------------- events


class _EventRows:
    def __init__(self) -> None:
        self.lines: list[int] = []
        self.user_id: list[str] = []
        self.type: list[str] = []
        self.timestamp_ms: list[int] = []
        self.value: list[float] = []
        self.props: dict[str, dict[int, Any]] = {}
        self.rejections: list[LineRejection] = []

    def add(self, line: int, uid: str, typ: str, ts: int, value: float,
            props: Mapping[str, Any]) -> None:
        row = len(self.lines)
        self.lines.append(line)
        self.user_id.append(uid)
        self.type.append(typ)
        self.timestamp_ms.append(ts)
        self.value.append(value)
        for k, v in props.items():
            if v is not None:
                self.props.setdefault(k, {})[row] = v

    def full(self, batch_rows: int) -> bool:
        n = len(self.lines)
        return n + len(self.rejections) >= batch_rows or n * len(self.props) >= MAX_BATCH_CELLS

    def build(self) -> EventBatch:
        n = len(self.lines)
        return EventBatch(
            lines=np.asarray(self.lines, dtype=np.int64), user_id=self.user_id, type=self.type,
            timestamp_ms=np.asarray(self.timestamp_ms, dtype=np.int64),
            value=np.asarray(self.value, dtype=np.float64),
            properties={k: [d.get(i) for i in range(n)] for k, d in self.props.items()},
            rejections=self.rejections)


def _event_from_json(obj: Any, mapping: Mapping[str, str]) -> tuple[str, str, int, float, dict]:
    if isinstance(obj, _Bad):
        raise obj
    if not isinstance(obj, dict):
        raise _Bad(f"a line must be a JSON object (an event), got {_json_kind(obj)}")
    if mapping:
        obj = {mapping.get(k, k): v for k, v in obj.items()}
    extra = [k for k in obj if k not in EVENT_FIELDS]
    if extra:
        raise _Bad(f'unknown field "{_short(extra[0])}" (an event has '
                   f"{', '.join(EVENT_FIELDS)}; rename with --map {_short(extra[0])}=FIELD)")
    for name in ("user_id", "type"):
        if name not in obj:
            raise _Bad(f"missing {name}")
    typ = obj["type"]
    if not isinstance(typ, str):
        raise _Bad(f"type must be a string, got {_json_kind(typ)}")
    value = obj.get("value")
    if value is None:
        value = 0.0
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"value must be a number, got {_json_kind(value)}")
    return (_json_user_id(obj["user_id"]), typ, _json_timestamp(obj.get("timestamp_ms")),
            float(value), _json_scalars(obj.get("properties"), "properties", "property"))


def event_batches(stream: IO[bytes], fmt: str, *, batch_rows: int = DEFAULT_BATCH_ROWS,
                  mapping: Mapping[str, str] | None = None, delimiter: str = ",",
                  infer_types: bool = True) -> Iterator[EventBatch]:
    """Batches of events read from ``stream`` (bytes, already decompressed).

    JSON lines: one object per line with the Event fields (``properties`` a JSON object of
    strings, numbers, booleans; null = absent). CSV: a header line naming ``user_id``, ``type``
    and optionally ``timestamp_ms`` and ``value``; every other column is a property (see
    :func:`cell_value`). ``mapping`` renames JSON keys or CSV columns first. A missing
    ``timestamp_ms`` is 0 (the wall clock's "now"). Blank lines are skipped. Raises FileError
    only for a CSV header that cannot be used.
    """
    mapping = mapping or {}
    if batch_rows < 1:
        raise FileError(f"the batch size must be at least 1, got {batch_rows}")
    rows = _EventRows()
    if fmt == "jsonl":
        for line, obj in _json_lines(stream):
            try:
                rows.add(line, *_event_from_json(obj, mapping))
            except _Bad as bad:
                rows.rejections.append(LineRejection(line, str(bad)))
            if rows.full(batch_rows):
                yield rows.build()
                rows = _EventRows()
    elif fmt == "csv":
        records = _csv_rows(stream, delimiter)
        header = _csv_header(records, mapping, ("user_id", "type"), "an event file")
        at = {name: header.index(name) for name in ("user_id", "type", "timestamp_ms", "value")
              if name in header}
        others = [(i, name) for i, name in enumerate(header) if name not in EVENT_FIELDS]
        if "properties" in header:
            raise FileError('a CSV column may not be named "properties": every column other '
                            "than user_id, type, timestamp_ms and value is a property")
        i_user, i_type = at["user_id"], at["type"]
        i_ts, i_val = at.get("timestamp_ms"), at.get("value")
        for line, cells in records:
            try:
                if isinstance(cells, _Bad):
                    raise cells
                _check_fields(cells, header)
                ts = 0 if i_ts is None else _cell_timestamp(cells[i_ts].strip())
                val = 0.0 if i_val is None else _cell_number(cells[i_val].strip(), "value")
                props = {name: cell_value(cells[i], infer_types) for i, name in others}
                rows.add(line, cells[i_user], cells[i_type], ts, val, props)
            except _Bad as bad:
                rows.rejections.append(LineRejection(line, str(bad)))
            if rows.full(batch_rows):
                yield rows.build()
                rows = _EventRows()
    else:
        raise FileError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    if rows.lines or rows.rejections:
        yield rows.build()


# ----------------------------------------------------------------------------- traits


def _trait_from_json(obj: Any, mapping: Mapping[str, str]) -> tuple[str, dict, int | None]:
    if isinstance(obj, _Bad):
        raise obj
    if not isinstance(obj, dict):
        raise _Bad(f"a line must be a JSON object (a trait update), got {_json_kind(obj)}")
    if mapping:
        obj = {mapping.get(k, k): v for k, v in obj.items()}
    extra = [k for k in obj if k not in TRAIT_FIELDS]
    if extra:
        raise _Bad(f'unknown field "{_short(extra[0])}" (a trait update has '
                   f"{', '.join(TRAIT_FIELDS)})")
    if "user_id" not in obj:
        raise _Bad("missing user_id")
    if "traits" not in obj:
        raise _Bad("missing traits")
    ts = obj.get("timestamp_ms")
    return (_json_user_id(obj["user_id"]), _json_scalars(obj["traits"], "traits", "trait"),
            None if ts is None else _json_timestamp(ts))


def trait_batches(stream: IO[bytes], fmt: str, *, batch_rows: int = DEFAULT_BATCH_ROWS,
                  mapping: Mapping[str, str] | None = None, delimiter: str = ",",
                  infer_types: bool = True) -> Iterator[TraitBatch]:
    """Batches of trait updates read from ``stream``.

    JSON lines: ``{"user_id": ..., "traits": {name: value}, "timestamp_ms": ...}`` (the
    timestamp optional; a null value unsets the trait). CSV: a ``user_id`` column, optionally
    ``timestamp_ms``, every other column a trait; an empty cell leaves that trait as it is.
    """
    if batch_rows < 1:
        raise FileError(f"the batch size must be at least 1, got {batch_rows}")
    lines: list[int] = []
    updates: list[tuple[str, dict[str, Any], int | None]] = []
    rejections: list[LineRejection] = []
    for line, update in _trait_rows(stream, fmt, mapping or {}, delimiter, infer_types):
        if isinstance(update, _Bad):
            rejections.append(LineRejection(line, str(update)))
        else:
            updates.append(update)
            lines.append(line)
        if len(updates) + len(rejections) >= batch_rows:
            yield TraitBatch(np.asarray(lines, dtype=np.int64), updates, rejections)
            lines, updates, rejections = [], [], []
    if updates or rejections:
        yield TraitBatch(np.asarray(lines, dtype=np.int64), updates, rejections)


def _trait_rows(stream: IO[bytes], fmt: str, mapping: Mapping[str, str], delimiter: str,
                infer_types: bool) -> Iterator[tuple[int, tuple[str, dict, int | None] | _Bad]]:
    if fmt == "jsonl":
        for line, obj in _json_lines(stream):
            try:
                yield line, _trait_from_json(obj, mapping)
            except _Bad as bad:
                yield line, bad
        return
    if fmt != "csv":
        raise FileError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    records = _csv_rows(stream, delimiter)
    header = _csv_header(records, mapping, ("user_id",), "a trait file")
    i_user = header.index("user_id")
    i_ts = header.index("timestamp_ms") if "timestamp_ms" in header else None
    others = [(i, name) for i, name in enumerate(header) if name not in ("user_id", "timestamp_ms")]
    for line, cells in records:
        try:
            if isinstance(cells, _Bad):
                raise cells
            _check_fields(cells, header)
            ts = None if i_ts is None else (_cell_timestamp(cells[i_ts].strip()) or None)
            traits = {}
            for i, name in others:
                v = cell_value(cells[i], infer_types)
                if v is not None:
                    traits[name] = v
            yield line, (cells[i_user], traits, ts)
        except _Bad as bad:
            yield line, bad


# ----------------------------------------------------------------------------- loading


class _Result(Protocol):
    accepted: int
    rejections: list


@dataclass
class LoadSummary:
    """What a load did: rows accepted and rejected, batches sent, time taken; the first
    ``keep`` rejections; ``error`` and ``stopped_at_line`` when a batch could not be sent
    (everything before that line was loaded)."""

    accepted: int = 0
    rejected: int = 0
    batches: int = 0
    seconds: float = 0.0
    rejections: list[LineRejection] = field(default_factory=list)
    error: str | None = None
    stopped_at_line: int | None = None

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"accepted": self.accepted, "rejected": self.rejected,
                               "batches": self.batches, "seconds": round(self.seconds, 3)}
        if self.error is not None:
            out["error"] = self.error
            out["stopped_at_line"] = self.stopped_at_line
        out["rejections"] = [r.to_dict() for r in self.rejections]
        return out


def transient(err: BaseException) -> bool:
    """Worth sending the same batch again (with its batch id it is never applied twice)."""
    if isinstance(err, (Unavailable, Overloaded)):
        return True
    code = getattr(err, "code", None)
    name = getattr(code(), "name", "") if callable(code) else ""
    return name in ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")


def load(batches: Iterable[EventBatch | TraitBatch], send: Callable[[Any, str], _Result], *,
         on_rejection: Callable[[LineRejection], None] | None = None,
         on_batch: Callable[[Any], None] | None = None, keep: int = 20, attempts: int = 5,
         backoff_s: float = 0.2, is_transient: Callable[[BaseException], bool] = transient,
         ) -> LoadSummary:
    """Send every batch with ``send(batch, batch_id)`` (-> a result with ``accepted`` and
    ``rejections`` indexed by row) and account for it by file line.

    ``on_rejection`` gets every rejection in line order, ``on_batch`` every batch once done.
    A transient error is retried up to ``attempts`` times with the same batch id; any other
    error, and a file that turns out truncated or corrupt, stops the load and is recorded in
    the summary (not raised). FileError (a CSV header that cannot be used) is raised.
    """
    summary = LoadSummary()
    run_id = uuid.uuid4().hex
    started = time.monotonic()
    batches = iter(batches)
    try:
        for number in itertools.count():
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (OSError, EOFError, zlib.error) as err:     # a truncated or corrupt file
                summary.error = f"cannot read the file: {err}"
                break
            sent: list[LineRejection] = []
            if len(batch):
                try:
                    result = _send(send, batch, f"rtseg-load-{run_id}-{number}", attempts,
                                   backoff_s, is_transient)
                except Exception as err:  # noqa: BLE001 - recorded; the caller decides the exit
                    summary.error = f"{type(err).__name__}: {err}"
                    summary.stopped_at_line = min(
                        [int(batch.lines[0])] + [r.line for r in batch.rejections])
                    break
                summary.batches += 1
                summary.accepted += int(result.accepted)
                sent = [LineRejection(int(batch.lines[r.index]), r.reason)
                        for r in result.rejections]
            _account(summary, sorted(batch.rejections + sent, key=lambda r: r.line),
                     on_rejection, keep)
            if on_batch is not None:
                on_batch(batch)
    finally:
        summary.seconds = time.monotonic() - started
    return summary


def _send(send, batch, batch_id: str, attempts: int, backoff_s: float, is_transient):
    for attempt in range(attempts):
        try:
            return send(batch, batch_id)
        except Exception as err:  # retried or re-raised
            if attempt + 1 >= attempts or not is_transient(err):
                raise
            time.sleep(backoff_s * 2**attempt)
    raise AssertionError("unreachable")


def _account(summary: LoadSummary, rejections, on_rejection, keep: int) -> None:
    for r in rejections or ():
        summary.rejected += 1
        if len(summary.rejections) < keep:
            summary.rejections.append(r)
        if on_rejection is not None:
            on_rejection(r)
