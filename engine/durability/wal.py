"""Write-ahead log: one checksummed msgpack frame per accepted change, group-committed.

Records
    A record is a msgpack-able value (dicts, lists, str, bytes, int up to int64/uint64, float
    including NaN and inf, bool, None). numpy arrays of bool, integer, float and complex dtypes,
    of any shape and memory layout, travel as a msgpack ExtType (code ``1``): ``<u8 len(dtype)>``
    ``<dtype str> <u8 ndim> <u64 shape...>`` then the raw little-endian C-order bytes. They decode
    as writable C-contiguous arrays of the little-endian dtype. numpy scalars are stored as the
    equal Python scalar; tuples come back as lists. Decoding never runs code or unpickles.

Frames
    ``<u32 payload length><u32 crc32c><u64 lsn>`` (little-endian), then the payload. The CRC32C
    covers the eight lsn bytes followed by the payload. LSNs start at 1 and are consecutive
    across the whole log.

Segments
    ``wal-<first lsn, 20 digits>.log``. A segment is closed (fsynced, whatever the policy) when the
    log rotates to the next one, so only the last segment can ever have a torn tail. A bad frame
    in the last segment is a torn tail: readers stop before it, and opening the log for writing
    cuts the file back to the last good frame. A bad frame anywhere else, a file name that
    disagrees with its first frame, or segments that overlap or leave a gap is ``LogCorrupt``:
    skipping it would silently drop acknowledged records.

fsync policies (what an acknowledged record survives; ``wait``/``await_durable`` acknowledge)
    ``always``    acknowledged after the fsync that covers it: survives a process kill and a
                  power loss or kernel crash.
    ``interval``  acknowledged once written to the OS: survives a process kill; the writer
                  fsyncs at most every ``fsync_interval_ms`` while unsynced data exists, so a power
                  loss loses about that window (Redis ``appendfsync everysec``).
    ``never``     acknowledged once written to the OS: survives a process kill; after a power
                  loss, whatever the OS had not written back yet is lost.

One background thread per log writes everything buffered with a single ``write`` and then fsyncs
according to the policy, so concurrent appenders share writes and fsyncs (group commit). A write
or fsync error stops the log for good (an fsync failure cannot be retried safely): every waiter
not yet acknowledged gets the error; reopen the directory to continue after the last good frame.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import heapq
import itertools
import logging
import os
import re
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import crc32c
import msgpack
import numpy as np

from ..errors import EngineError
from engine.durability.files import fsync_dir

__all__ = [
    "FSYNC_POLICIES", "MAX_RECORD_BYTES", "LogClosed", "LogCorrupt", "LogScan", "SegmentFile",
    "TornTail", "WriteAheadLog", "decode_record", "encode_record", "read_log", "scan_log",
]

log = logging.getLogger(__name__)

FSYNC_POLICIES = ("always", "interval", "never")
MAX_RECORD_BYTES = 1 << 30  # a longer length field is a torn frame, never an allocation

_HEADER = struct.Struct("<IIQ")
_HEADER_BYTES = _HEADER.size
_LSN = struct.Struct("<Q")
_SEGMENT_RE = re.compile(r"^wal-(\d{20})\.log$")
_LOCK_FILE = "wal.lock"
_FSYNC_SAMPLES = 1024

_EXT_NDARRAY = 1
_ARRAY_KINDS = "biufc"
_DTYPE_RE = re.compile(r"^[<|][biufc]\d{1,2}$")
_MAX_NDIM = 32
_U8 = struct.Struct("<B")


class LogCorrupt(EngineError):
    """The log cannot be read without skipping or inventing acknowledged records.

    ``path`` and ``offset`` name the place when known.
    """

    def __init__(self, message: str, path: Path | str | None = None, offset: int | None = None):
        self.path = path
        self.offset = offset
        super().__init__(message)


class LogClosed(EngineError):
    """The log was closed before the operation could complete."""


# ----------------------------------------------------------------------------------- records

def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ARRAY_KINDS or obj.dtype.fields is not None:
            raise TypeError(f"cannot log a numpy array of dtype {obj.dtype}: only bool, integer, "
                            "float and complex arrays are supported")
        if obj.ndim > _MAX_NDIM:
            raise TypeError(f"cannot log a {obj.ndim}-d array (at most {_MAX_NDIM} dimensions)")
        dtype = obj.dtype.newbyteorder("<")
        arr = obj.astype(dtype, order="C", copy=False)  # no copy when already C-order and '<'
        dstr = dtype.str.encode("ascii")
        head = b"".join((_U8.pack(len(dstr)), dstr, _U8.pack(arr.ndim),
                         struct.pack(f"<{arr.ndim}Q", *arr.shape)))
        return msgpack.ExtType(_EXT_NDARRAY, b"".join((head, arr.reshape(-1).view(np.uint8))))
    if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
        return obj.item()
    raise TypeError(f"cannot log a value of type {type(obj).__name__}")


def _corrupt(message: str) -> LogCorrupt:
    return LogCorrupt(f"malformed record: {message}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _EXT_NDARRAY:
        raise _corrupt(f"unknown msgpack ext type {code}")
    n = len(data)
    if n < 1:
        raise _corrupt("empty array ext")
    dlen = data[0]
    pos = 1 + dlen
    if pos + 1 > n:
        raise _corrupt("array ext shorter than its dtype")
    try:
        dstr = data[1:pos].decode("ascii")
    except UnicodeDecodeError:
        raise _corrupt("array dtype is not ascii") from None
    if not _DTYPE_RE.match(dstr):
        raise _corrupt(f"array dtype {dstr!r} is not a little-endian numeric dtype")
    try:
        dtype = np.dtype(dstr)
    except TypeError:
        raise _corrupt(f"unknown array dtype {dstr!r}") from None
    if dtype.kind not in _ARRAY_KINDS or dtype.itemsize == 0 or dtype.str != dstr:
        raise _corrupt(f"array dtype {dstr!r} is not a canonical little-endian numeric dtype")
    ndim = data[pos]
    pos += 1
    if ndim > _MAX_NDIM or pos + 8 * ndim > n:
        raise _corrupt("array ext shorter than its shape")
    shape = struct.unpack_from(f"<{ndim}Q", data, pos)
    pos += 8 * ndim
    count = 1
    for dim in shape:
        count *= dim
    if count * dtype.itemsize != n - pos:
        raise _corrupt(f"array of shape {shape} and dtype {dstr} does not fit {n - pos} bytes")
    try:
        return np.frombuffer(data, dtype=dtype, count=count, offset=pos).reshape(shape).copy()
    except ValueError as err:
        raise _corrupt(f"array of shape {shape}: {err}") from None


def encode_record(obj: Any) -> bytes:
    """msgpack bytes of ``obj``; ``TypeError``/``OverflowError`` for values the log cannot hold."""
    return msgpack.packb(obj, default=_pack_default, use_bin_type=True, datetime=False)


def decode_record(data: bytes | bytearray | memoryview) -> Any:
    """The record encoded in ``data``; ``LogCorrupt`` if it is not one ``encode_record`` made."""
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False,
                               use_list=True, timestamp=0)
    except LogCorrupt:
        raise
    except Exception as err:  # noqa: BLE001 - msgpack raises ValueError, TypeError, its own...
        raise _corrupt(f"{type(err).__name__}: {err}") from None


# ---------------------------------------------------------------------------- reading frames

@dataclass(frozen=True)
class SegmentFile:
    """One segment file as the reader found it."""

    path: Path
    first_lsn: int
    frames: int
    good_bytes: int   # bytes up to the end of the last good frame
    file_bytes: int


@dataclass(frozen=True)
class TornTail:
    """Where the last segment stops being a valid log."""

    path: Path
    offset: int
    reason: str
    discarded_bytes: int


@dataclass(frozen=True)
class LogScan:
    """What ``scan_log`` found: ``frames == last_lsn - first_lsn + 1``."""

    segments: tuple[SegmentFile, ...]
    frames: int
    first_lsn: int
    last_lsn: int
    torn_tail: TornTail | None

    @property
    def next_lsn(self) -> int:
        return self.last_lsn + 1


def _segment_name(first_lsn: int) -> str:
    return f"wal-{first_lsn:020d}.log"


def _list_segments(directory: Path) -> list[tuple[int, Path]]:
    found = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        m = _SEGMENT_RE.match(name)
        if m:
            found.append((int(m.group(1)), directory / name))
    found.sort()
    if found and found[0][0] < 1:
        raise LogCorrupt(f"segment {found[0][1]} starts at lsn 0; LSNs are 1-based", found[0][1])
    return found


class _SegmentWalk:
    """Iterates the good frames of one segment's bytes as ``(lsn, payload memoryview)``.

    After iteration ``frames``, ``good_bytes`` and ``torn`` (a ``TornTail`` or None) describe it.
    A bad frame in a segment that is not the last raises ``LogCorrupt`` instead.
    """

    def __init__(self, data: bytes, path: Path, first_lsn: int, is_last: bool):
        self.data = data
        self.path = path
        self.first_lsn = first_lsn
        self.is_last = is_last
        self.frames = 0
        self.good_bytes = 0
        self.torn: TornTail | None = None

    def _bad(self, offset: int, reason: str) -> None:
        if not self.is_last:
            raise LogCorrupt(f"{self.path}: {reason} at offset {offset} in a segment that is not "
                             "the last; records after it would be lost", self.path, offset)
        self.torn = TornTail(self.path, offset, reason, len(self.data) - offset)

    def __iter__(self) -> Iterator[tuple[int, memoryview]]:
        data = self.data
        view = memoryview(data)
        n = len(data)
        off = 0
        expected = self.first_lsn
        unpack = _HEADER.unpack_from
        crc = crc32c.crc32c
        while off < n:
            if n - off < _HEADER_BYTES:
                self._bad(off, f"short frame header ({n - off} bytes)")
                return
            length, checksum, lsn = unpack(data, off)
            end = off + _HEADER_BYTES + length
            if length > MAX_RECORD_BYTES or end > n:
                self._bad(off, f"frame length {length} runs past the end of the file")
                return
            payload = view[off + _HEADER_BYTES:end]
            if crc(payload, crc(view[off + 8:off + _HEADER_BYTES])) != checksum:
                self._bad(off, "checksum mismatch")
                return
            if lsn != expected:
                if expected == self.first_lsn:
                    raise LogCorrupt(f"{self.path}: the file name says lsn {self.first_lsn} but "
                                     f"its first frame has lsn {lsn}", self.path, off)
                self._bad(off, f"lsn {lsn} where {expected} was expected")
                return
            yield lsn, payload
            off = end
            expected += 1
            self.frames += 1
            self.good_bytes = off


def _read_file(path: Path) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read()


def _walk_log(directory: Path, after_lsn: int, *, warn: bool, check_start: bool
              ) -> Iterator[tuple[int, memoryview] | LogScan]:
    """Good frames with lsn > after_lsn, then (as the last item) the LogScan of what was read."""
    segments = _list_segments(directory)
    infos: list[SegmentFile] = []
    torn = None
    expected = segments[0][0] if segments else 1
    if check_start and segments and expected > after_lsn + 1:
        raise LogCorrupt(f"{directory}: the log starts at lsn {expected}; records "
                         f"{after_lsn + 1}..{expected - 1} are gone", segments[0][1])
    first_lsn = expected
    for i, (seg_lsn, path) in enumerate(segments):
        is_last = i == len(segments) - 1
        if seg_lsn != expected:
            word = "overlaps" if seg_lsn < expected else "leaves a gap after"
            raise LogCorrupt(f"{path} starts at lsn {seg_lsn}, which {word} the previous "
                             f"segment (next lsn {expected})", path, 0)
        if not is_last and segments[i + 1][0] <= after_lsn + 1:
            # Every frame is <= after_lsn: the next segment's name says where this one ends.
            expected = segments[i + 1][0]
            continue
        data = _read_file(path)
        walk = _SegmentWalk(data, path, seg_lsn, is_last)
        for lsn, payload in walk:
            if lsn > after_lsn:
                yield lsn, payload
        infos.append(SegmentFile(path, seg_lsn, walk.frames, walk.good_bytes, len(data)))
        expected = seg_lsn + walk.frames
        if walk.torn is not None:
            torn = walk.torn
            if warn:
                log.warning("write-ahead log %s: torn tail at offset %d (%s); %d bytes after the "
                            "last good frame (lsn %d) ignored", torn.path, torn.offset,
                            torn.reason, torn.discarded_bytes, expected - 1)
    yield LogScan(tuple(infos), expected - first_lsn, first_lsn, expected - 1, torn)


def read_log(directory: str | os.PathLike, after_lsn: int = 0) -> Iterator[tuple[int, Any]]:
    """``(lsn, record)`` for every record with lsn > ``after_lsn``, in order, over all segments.

    Stops with a warning at a torn tail of the last segment; raises ``LogCorrupt`` where records
    would otherwise be skipped (including when the log now starts after ``after_lsn + 1``).
    Segments that end at or before ``after_lsn`` are not read; a missing directory is an empty
    log. Arrays come back as writable copies.
    """
    for item in _walk_log(Path(directory), after_lsn, warn=True, check_start=True):
        if isinstance(item, LogScan):
            return
        lsn, payload = item
        try:
            yield lsn, decode_record(payload)
        except LogCorrupt as err:
            raise LogCorrupt(f"lsn {lsn}: {err}") from None


def scan_log(directory: str | os.PathLike) -> LogScan:
    """Check every frame's checksum and lsn (records are not decoded) and report the layout.

    Raises ``LogCorrupt`` where ``read_log`` would; a torn tail is reported, not logged.
    """
    for item in _walk_log(Path(directory), 0, warn=False, check_start=False):
        if isinstance(item, LogScan):
            return item
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------ writer

_fdatasync = getattr(os, "fdatasync", os.fsync)


class WriteAheadLog:
    """An append-only log in ``directory``, written by one background thread.

    ``append`` never touches the disk; ``wait``/``await_durable`` return once the record is
    durable under the ``fsync`` policy (see the module docstring). Use as a context manager or
    call ``close()``. One writer per directory: a second one raises ``BlockingIOError``.
    """

    def __init__(self, directory: str | os.PathLike, *, fsync: str = "interval",
                 fsync_interval_ms: int = 10, segment_bytes: int = 64 << 20):
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy must be one of {', '.join(FSYNC_POLICIES)}, "
                             f"not {fsync!r}")
        if not isinstance(fsync_interval_ms, (int, float)) or not fsync_interval_ms > 0:
            raise ValueError("fsync_interval_ms must be a positive number, not "
                             f"{fsync_interval_ms!r}")
        if not isinstance(segment_bytes, int) or segment_bytes < 1:
            raise ValueError(f"segment_bytes must be a positive int, not {segment_bytes!r}")
        self.directory = Path(directory)
        self.fsync_policy = fsync
        self.fsync_interval_ms = fsync_interval_ms
        self.segment_bytes = segment_bytes
        self._interval_s = fsync_interval_ms / 1000.0
        self.directory.mkdir(parents=True, exist_ok=True)

        self._lock_fd = os.open(self.directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise BlockingIOError(errno.EWOULDBLOCK, f"{self.directory} is already open for "
                                  "writing by another WriteAheadLog; close that one first",
                                  str(self.directory / _LOCK_FILE)) from None
        self._fd: int | None = None
        try:
            self._open_tail()
        except BaseException:
            if self._fd is not None:
                os.close(self._fd)
            os.close(self._lock_fd)
            raise

        lock = threading.Lock()
        self._wake_writer = threading.Condition(lock)
        self._progress = threading.Condition(lock)
        self._lock = lock
        self._pending: list[tuple[int, bytes]] = []
        self._written_lsn = self._next_lsn - 1   # handed to the OS
        self._synced_lsn = self._next_lsn - 1    # covered by an fsync
        self._durable_lsn = self._next_lsn - 1   # acknowledged under the policy
        self._flush_to = 0
        self._rotate_at: int | None = None
        self._rotate_mutex = threading.Lock()
        self._closing = False
        self._stop = False
        self._error: BaseException | None = None
        self._async_waiters: list[tuple[int, int, asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._waiter_ids = itertools.count()
        self._last_sync_s = time.monotonic()
        self._bytes_written = 0
        self._frames_written = 0
        self._write_batches = 0
        self._fsyncs = 0
        self._fsync_ms: deque[float] = deque(maxlen=_FSYNC_SAMPLES)
        self._close_raised = False
        self._thread = threading.Thread(target=self._run, name=f"wal-writer:{self.directory.name}",
                                        daemon=True)
        self._thread.start()

    def _open_tail(self) -> None:
        scan = scan_log(self.directory)
        self._segment_starts = [s.first_lsn for s in scan.segments]
        if not scan.segments:
            self._next_lsn = 1
            self._create_segment(1)
            self._segment_starts = [1]
            return
        last = scan.segments[-1]
        self._fd = os.open(last.path, os.O_WRONLY)
        if scan.torn_tail is not None:
            torn = scan.torn_tail
            log.warning("write-ahead log %s: cutting a torn tail at offset %d (%s): %d bytes "
                        "after lsn %d removed", torn.path, torn.offset, torn.reason,
                        torn.discarded_bytes, scan.last_lsn)
            os.ftruncate(self._fd, last.good_bytes)
            os.fsync(self._fd)
        os.lseek(self._fd, last.good_bytes, os.SEEK_SET)
        self._segment_size = last.good_bytes
        self._next_lsn = scan.next_lsn

    def _create_segment(self, first_lsn: int) -> None:
        path = self.directory / _segment_name(first_lsn)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._segment_size = 0
        fsync_dir(self.directory)

    # ------------------------------------------------------------------------- public API

    @property
    def last_lsn(self) -> int:
        """The lsn of the last record appended (0 if none ever was)."""
        return self._next_lsn - 1

    @property
    def durable_lsn(self) -> int:
        """Every record up to this lsn is durable under the policy."""
        return self._durable_lsn

    def append(self, record: Any) -> int:
        """Buffer one record and return its lsn; the writer thread stores it soon after."""
        payload = encode_record(record)
        self._check_size(payload)
        with self._lock:
            self._check_open()
            lsn = self._next_lsn
            self._next_lsn = lsn + 1
            self._pending.append((lsn, payload))
            if len(self._pending) == 1:
                self._wake_writer.notify()
        return lsn

    def append_many(self, records: Iterable[Any]) -> int:
        """Buffer records with consecutive lsns; returns the last one (``last_lsn`` if empty)."""
        payloads = [encode_record(r) for r in records]
        for p in payloads:
            self._check_size(p)
        with self._lock:
            self._check_open()
            first = self._next_lsn
            self._next_lsn = first + len(payloads)
            was_empty = not self._pending
            self._pending.extend(zip(range(first, first + len(payloads)), payloads))
            if was_empty and payloads:
                self._wake_writer.notify()
            return self._next_lsn - 1

    def wait(self, lsn: int, timeout: float | None = None) -> None:
        """Block until ``lsn`` is durable under the policy.

        Raises the writer's error if it failed first, ``LogClosed`` if the log was closed first,
        ``TimeoutError`` after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._check_lsn(lsn)
            while self._durable_lsn < lsn:
                self._raise_if_stopped()
                if deadline is None:
                    self._progress.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"lsn {lsn} not durable after {timeout} s "
                                           f"(durable up to {self._durable_lsn})")
                    self._progress.wait(remaining)

    async def await_durable(self, lsn: int) -> None:
        """``wait`` for asyncio: resolved from the writer thread, no polling."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._check_lsn(lsn)
            if self._durable_lsn >= lsn:
                return
            self._raise_if_stopped()
            fut = loop.create_future()
            heapq.heappush(self._async_waiters, (lsn, next(self._waiter_ids), loop, fut))
        await fut

    def flush(self) -> None:
        """Write and fsync everything appended so far (whatever the policy); blocks."""
        with self._lock:
            target = self._next_lsn - 1
            if self._synced_lsn >= target:
                return
            self._raise_if_failed()
            if self._stop:
                raise LogClosed(f"write-ahead log {self.directory} is closed")
            self._flush_to = max(self._flush_to, target)
            self._wake_writer.notify()
            while self._synced_lsn < target:
                self._raise_if_failed()
                self._progress.wait()

    def rotate(self) -> None:
        """Write what is buffered, close the current segment and start one at the next lsn.

        Does nothing when the current segment holds no frames.
        """
        with self._rotate_mutex, self._lock:
            self._check_open()
            self._rotate_at = self._next_lsn
            self._wake_writer.notify()
            while self._rotate_at is not None:
                self._raise_if_failed()
                self._progress.wait()

    def segments(self) -> list[Path]:
        """The segment files, oldest first; the last is the one being written."""
        with self._lock:
            return [self.directory / _segment_name(s) for s in self._segment_starts]

    def truncate_before(self, lsn: int) -> list[Path]:
        """Delete the segments whose every frame is < ``lsn`` (never the current one).

        Returns the deleted paths, oldest first.
        """
        with self._lock:
            starts = self._segment_starts
            keep_from = 0
            while keep_from < len(starts) - 1 and starts[keep_from + 1] <= lsn:
                keep_from += 1
            doomed = starts[:keep_from]
            self._segment_starts = starts[keep_from:]
        paths = [self.directory / _segment_name(s) for s in doomed]
        for path in paths:  # oldest first, so a crash leaves a contiguous log
            path.unlink()
        if paths and self.fsync_policy != "never":
            fsync_dir(self.directory)
        return paths

    def stats(self) -> dict[str, Any]:
        """Counters of the writer: bytes, frames, write batches, fsyncs and their latency."""
        with self._lock:
            samples = sorted(self._fsync_ms)
            out = {
                "policy": self.fsync_policy,
                "last_lsn": self._next_lsn - 1,
                "written_lsn": self._written_lsn,
                "synced_lsn": self._synced_lsn,
                "durable_lsn": self._durable_lsn,
                "pending_frames": len(self._pending),
                "bytes_written": self._bytes_written,
                "frames": self._frames_written,
                "write_batches": self._write_batches,
                "fsyncs": self._fsyncs,
                "segments": len(self._segment_starts),
            }
        if samples:
            out["fsync_p50_ms"] = samples[(len(samples) - 1) // 2]
            out["fsync_p99_ms"] = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
            out["fsync_max_ms"] = samples[-1]
        else:
            out["fsync_p50_ms"] = out["fsync_p99_ms"] = out["fsync_max_ms"] = None
        return out

    def close(self) -> None:
        """Flush, stop the writer thread and close the files. Later calls do nothing.

        If the writer has failed, everything is still released and then its error is raised
        (once).
        """
        with self._lock:
            first = not self._closing
            self._closing = True
        if first:
            try:
                self.flush()
            except (OSError, LogClosed):
                pass
            except BaseException:
                if self._error is None:
                    raise
        with self._lock:
            self._stop = True
            self._wake_writer.notify()
        self._thread.join()
        with self._lock:
            fd, self._fd = self._fd, None
            lock_fd, self._lock_fd = self._lock_fd, None
            error = self._error if not self._close_raised else None
            self._close_raised = True
            leftover, self._async_waiters = self._async_waiters, []
        for _, _, loop, fut in leftover:
            _call_soon(loop, _set_exception, fut, error or LogClosed(
                f"write-ahead log {self.directory} was closed before the record was durable"))
        if fd is not None:
            os.close(fd)
        if lock_fd is not None:
            os.close(lock_fd)
        if error is not None:
            raise error

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"WriteAheadLog({str(self.directory)!r}, fsync={self.fsync_policy!r}, "
                f"last_lsn={self.last_lsn}, durable_lsn={self._durable_lsn})")

    # ------------------------------------------------------------------------- internals

    @staticmethod
    def _check_size(payload: bytes) -> None:
        if len(payload) > MAX_RECORD_BYTES:
            raise ValueError(f"record of {len(payload)} bytes is larger than the log's limit of "
                             f"{MAX_RECORD_BYTES} bytes; split it")

    def _check_open(self) -> None:  # lock held
        self._raise_if_failed()
        if self._closing:
            raise LogClosed(f"write-ahead log {self.directory} is closed")

    def _check_lsn(self, lsn: int) -> None:  # lock held
        if lsn >= self._next_lsn:
            raise ValueError(f"lsn {lsn} was never appended (last lsn {self._next_lsn - 1})")

    def _raise_if_failed(self) -> None:  # lock held
        if self._error is not None:
            raise self._error

    def _raise_if_stopped(self) -> None:  # lock held, lsn not durable
        self._raise_if_failed()
        if self._stop:
            raise LogClosed(f"write-ahead log {self.directory} was closed before the record "
                            "was durable")

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as err:  # noqa: BLE001 - the waiters get it instead
            self._fail(err)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not (self._pending or self._rotate_at is not None or self._stop
                           or self._flush_to > self._synced_lsn):
                    if self.fsync_policy == "interval" and self._written_lsn > self._synced_lsn:
                        remaining = self._last_sync_s + self._interval_s - time.monotonic()
                        if remaining <= 0:
                            break
                        self._wake_writer.wait(remaining)
                    else:
                        self._wake_writer.wait()
                batch, self._pending = self._pending, []
                rotate_at = self._rotate_at
                stop = self._stop
            if rotate_at is not None:
                cut = 0
                while cut < len(batch) and batch[cut][0] < rotate_at:
                    cut += 1
                self._write(batch[:cut])
                if self._segment_size > 0:
                    self._rotate(rotate_at)
                self._write(batch[cut:])
                with self._lock:
                    self._rotate_at = None
                    self._progress.notify_all()
            else:
                self._write(batch)
            with self._lock:
                unsynced = self._written_lsn > self._synced_lsn
                need_sync = unsynced and (
                    self.fsync_policy == "always" or self._flush_to > self._synced_lsn or stop
                    or (self.fsync_policy == "interval"
                        and time.monotonic() >= self._last_sync_s + self._interval_s))
                done = stop and not self._pending
            if need_sync:
                self._sync()
            if done:
                return

    def _write(self, frames: list[tuple[int, bytes]]) -> None:
        """Frames go to the current segment with one write, rotating when it would overflow."""
        parts: list[bytes] = []
        size = self._segment_size
        last = 0
        crc = crc32c.crc32c
        pack = _HEADER.pack
        for lsn, payload in frames:
            frame_bytes = _HEADER_BYTES + len(payload)
            if size > 0 and size + frame_bytes > self.segment_bytes:
                if parts:
                    self._write_out(parts, last)
                    parts = []
                self._rotate(lsn)
                size = 0
            lsn_bytes = _LSN.pack(lsn)
            parts.append(pack(len(payload), crc(payload, crc(lsn_bytes)), lsn))
            parts.append(payload)
            size += frame_bytes
            last = lsn
        if parts:
            self._write_out(parts, last)

    def _write_out(self, parts: list[bytes], last_lsn: int) -> None:
        data = b"".join(parts)
        view = memoryview(data)
        start = self._segment_size
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except BaseException:
            try:  # leave no partial frame behind; the log is failed either way
                os.ftruncate(self._fd, start)
                os.lseek(self._fd, start, os.SEEK_SET)
            except OSError:
                pass
            raise
        self._segment_size = start + len(data)
        with self._lock:
            self._bytes_written += len(data)
            self._frames_written += len(parts) // 2
            self._write_batches += 1
            self._written_lsn = last_lsn
            if self.fsync_policy != "always":
                self._advance_durable(last_lsn)

    def _sync(self) -> None:
        target = self._written_lsn  # only this thread writes, so it cannot move meanwhile
        start = time.monotonic()
        _fdatasync(self._fd)
        elapsed_ms = (time.monotonic() - start) * 1000.0
        with self._lock:
            self._last_sync_s = start
            self._fsyncs += 1
            self._fsync_ms.append(elapsed_ms)
            self._synced_lsn = target
            if self.fsync_policy == "always":
                self._advance_durable(target)
            else:
                self._progress.notify_all()  # flush() waits on synced_lsn

    def _rotate(self, next_lsn: int) -> None:
        """Close the current segment (fsynced under every policy) and start one at next_lsn."""
        self._sync()
        os.close(self._fd)
        self._fd = None
        self._create_segment(next_lsn)
        with self._lock:
            self._segment_starts.append(next_lsn)

    def _advance_durable(self, lsn: int) -> None:  # lock held
        self._durable_lsn = lsn
        self._progress.notify_all()
        ready = []
        waiters = self._async_waiters
        while waiters and waiters[0][0] <= lsn:
            _, _, loop, fut = heapq.heappop(waiters)
            ready.append((loop, fut))
        for loop, fut in ready:
            _call_soon(loop, _set_result, fut)

    def _fail(self, err: BaseException) -> None:
        with self._lock:
            self._error = err
            self._stop = True
            self._closing = True
            self._progress.notify_all()
            waiters, self._async_waiters = self._async_waiters, []
        if not isinstance(err, Exception):
            log.error("write-ahead log %s: writer thread stopped by %r", self.directory, err)
        else:
            log.error("write-ahead log %s: writer failed, the log is stopped: %s",
                      self.directory, err)
        for _, _, loop, fut in waiters:
            _call_soon(loop, _set_exception, fut, err)


def _call_soon(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the waiter's loop is closed: nobody is left to tell
        pass


def _set_result(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def _set_exception(fut: asyncio.Future, err: BaseException) -> None:
    if not fut.done():
        fut.set_exception(err)
