"""The write-ahead log (engine/durability/wal.py): encoding, fsync policies, group commit,
segments, failure propagation, and a reader that never yields a wrong record however the files
are damaged (hypothesis)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import struct
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from engine.durability import wal
from engine.durability.wal import (LogClosed, LogCorrupt, WriteAheadLog, decode_record,
                                   encode_record, read_log, scan_log)

LOGGER = "engine.durability.wal"
DTYPES = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
          "float16", "float32", "float64", "complex64", "complex128")


# ------------------------------------------------------------------------------- helpers

def same(a, b) -> bool:
    """Exact equality: arrays bit for bit with their dtype and shape, floats bit for bit."""
    if isinstance(a, np.ndarray):
        return (isinstance(b, np.ndarray) and a.shape == b.shape
                and a.dtype.newbyteorder("<") == b.dtype
                and np.ascontiguousarray(a, dtype=b.dtype).tobytes() == b.tobytes())
    if isinstance(a, float):
        return isinstance(b, float) and struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, (list, tuple)):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return (isinstance(b, dict) and a.keys() == b.keys()
                and all(same(v, b[k]) for k, v in a.items()))
    return type(a) is type(b) and a == b


def eventually(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


@contextlib.contextmanager
def captured_warnings():
    """The WAL logger's records (caplog is function-scoped, which hypothesis refuses)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def sample_record(i: int) -> dict:
    rng = np.random.default_rng(i)
    dtype = DTYPES[i % len(DTYPES)]
    arr = (rng.integers(0, 200, size=(3, 1 + i % 4)).astype(dtype) if i % 2
           else rng.integers(0, 200, size=1 + i % 5).astype(dtype))
    return {"seq": i, "user": f"u{i % 7}", "ts_ms": 1_700_000_000_000 + i, "values": arr,
            "tags": [i, -i, None, True, float(i) / 3], "blob": bytes([i % 256]) * (i % 3)}


def segment_name(first_lsn: int) -> str:
    return f"wal-{first_lsn:020d}.log"


def frame_ends_from(data: bytes) -> list[int]:
    """End offsets of the whole frames in a segment's bytes (parsed independently of wal.py)."""
    ends, off = [], 0
    while len(data) - off >= 16:
        off += 16 + struct.unpack_from("<I", data, off)[0]
        if off > len(data):
            break
        ends.append(off)
    return ends


def frame_ends(path: Path) -> list[int]:
    """End offsets of the frames of an undamaged segment."""
    data = path.read_bytes()
    ends = frame_ends_from(data)
    assert ends[-1:] == [len(data)] or not data
    return ends


def read_outcome(directory: Path):
    """("ok", [(lsn, record)], warnings) or ("corrupt", error, warnings). Any other exception
    propagates and fails the test."""
    with captured_warnings() as warned:
        got = []
        try:
            got.extend(read_log(directory))
        except LogCorrupt as err:
            return "corrupt", err, got, warned
    return "ok", got, got, warned


def assert_correct_prefix(got, records, first_lsn: int = 1) -> None:
    """Items are consecutive lsns from first_lsn, each equal to what was written."""
    for k, (lsn, rec) in enumerate(got):
        assert lsn == first_lsn + k
        assert same(records[lsn - 1], rec), f"lsn {lsn}: wrong record"


# ------------------------------------------------------------------------------ encoding

@pytest.mark.parametrize("dtype", DTYPES)
def test_arrays_round_trip_exactly(dtype):
    rng = np.random.default_rng(7)
    base = rng.normal(size=(6, 5)) * 1000
    arrays = [base.astype(dtype), base.astype(dtype)[:, 0], base.astype(dtype)[::2, 1::2],
              np.asfortranarray(base.astype(dtype)), base.astype(dtype)[::-1],
              np.zeros((0, 3), dtype=dtype), np.array(base[0, 0]).astype(dtype)]
    if np.dtype(dtype).itemsize > 1:
        arrays.append(base.astype(np.dtype(dtype).newbyteorder(">")))
    if np.dtype(dtype).kind in "fc":
        special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0], dtype=dtype)
        arrays.append(special)
    for arr in arrays:
        out = decode_record(encode_record({"a": arr}))["a"]
        assert same(arr, out)
        assert out.flags.writeable and out.flags.c_contiguous
        out[...] = 0  # the decoded array owns its memory


natives = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=4) | st.integers(-5, 5), inner, max_size=4),
    max_leaves=20)
arrays = st.sampled_from(DTYPES).flatmap(
    lambda d: hnp.arrays(d, hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=5)))


@given(st.recursive(natives | arrays, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=10))
def test_records_round_trip(value):
    assert same(value, decode_record(encode_record(value)))


def test_numpy_scalars_become_python_scalars():
    out = decode_record(encode_record([np.int64(-3), np.uint64(2**64 - 1), np.float32(0.5),
                                       np.bool_(True)]))
    assert out == [-3, 2**64 - 1, 0.5, True]
    assert [type(v) for v in out] == [int, int, float, bool]


@pytest.mark.parametrize("value", [np.array(["a"]), np.array([object()]),
                                   np.zeros(2, dtype="datetime64[ms]"), object(), {1, 2}])
def test_unsupported_values_are_refused(value):
    with pytest.raises(TypeError):
        encode_record({"x": value})


def _ext(payload: bytes, code: int = 1) -> bytes:
    return msgpack.packb(msgpack.ExtType(code, payload))


@pytest.mark.parametrize("data", [
    _ext(b""),
    _ext(b"\x03<f8"),                                   # no ndim
    _ext(b"\x03<f8\x01" + struct.pack("<Q", 2) + b"\0" * 15),   # 15 bytes for 2 x f8
    _ext(b"\x03|O8\x01" + struct.pack("<Q", 1) + b"\0" * 8),    # object dtype
    _ext(b"\x03>f8\x01" + struct.pack("<Q", 1) + b"\0" * 8),    # big-endian on disk
    _ext(b"\x03|f8\x01" + struct.pack("<Q", 1) + b"\0" * 8),    # not how the encoder spells it
    _ext(b"\x03<U1\x01" + struct.pack("<Q", 1) + b"\0" * 4),    # string dtype
    _ext(b"\x03<f8\x02" + struct.pack("<QQ", 0, 2**63)),       # impossible shape
    _ext(b"\x03<f8\x01" + struct.pack("<Q", 2**61) + b"\0" * 8),  # overflowing size
    _ext(b"\x03<f8\x21" + b"\0" * 300),                        # too many dimensions
    _ext(b"\x0a[('a','<f8')]\x00", code=1),
    _ext(b"anything", code=5),                          # unknown ext code
    b"\x92\x01",                                        # truncated list
    b"\x01\x02",                                        # trailing data
    b"\xc1",                                            # reserved byte
    b"",
    b"\xa2\xff\xfe",                                    # invalid utf-8
])
def test_malformed_payloads_raise_log_corrupt(data):
    with pytest.raises(LogCorrupt):
        decode_record(data)


@given(st.binary(max_size=64))
def test_decoding_random_bytes_never_raises_anything_else(data):
    try:
        decode_record(data)
    except LogCorrupt:
        pass


# ---------------------------------------------------------------------- writer and policies

def test_round_trip_through_the_log(tmp_path):
    records = [sample_record(i) for i in range(60)]
    with WriteAheadLog(tmp_path, fsync="always") as log:
        lsns = [log.append(r) for r in records[:30]]
        last = log.append_many(records[30:])
        log.wait(last)
        assert lsns == list(range(1, 31)) and last == 60 and log.last_lsn == 60
    got = list(read_log(tmp_path))
    assert [lsn for lsn, _ in got] == list(range(1, 61))
    assert_correct_prefix(got, records)
    assert [lsn for lsn, _ in read_log(tmp_path, after_lsn=55)] == [56, 57, 58, 59, 60]
    report = scan_log(tmp_path)
    assert (report.first_lsn, report.last_lsn, report.frames, report.torn_tail) == (1, 60, 60, None)


def test_always_acknowledges_only_after_an_fsync(tmp_path):
    with WriteAheadLog(tmp_path, fsync="always") as log:
        for i in range(5):
            before = log.stats()["fsyncs"]
            lsn = log.append({"i": i})
            log.wait(lsn, timeout=30)
            stats = log.stats()
            assert stats["fsyncs"] > before
            assert stats["synced_lsn"] >= lsn and log.durable_lsn >= lsn
        assert stats["fsync_p50_ms"] <= stats["fsync_p99_ms"] <= stats["fsync_max_ms"]


def test_interval_acknowledges_on_write_and_fsyncs_soon_after(tmp_path):
    with WriteAheadLog(tmp_path, fsync="interval", fsync_interval_ms=20) as log:
        for i in range(3):
            lsn = log.append({"i": i, "x": np.arange(10)})
            log.wait(lsn, timeout=30)
            assert log.stats()["written_lsn"] >= lsn
            assert eventually(lambda lsn=lsn: log.stats()["synced_lsn"] >= lsn, timeout_s=30)
        assert log.stats()["fsyncs"] >= 1


def test_never_leaves_fsync_to_the_os_until_flush(tmp_path):
    with WriteAheadLog(tmp_path, fsync="never") as log:
        lsn = log.append_many({"i": i} for i in range(100))
        log.wait(lsn, timeout=30)
        stats = log.stats()
        assert stats["written_lsn"] == 100 and stats["fsyncs"] == 0 and stats["synced_lsn"] == 0
        log.flush()
        stats = log.stats()
        assert stats["fsyncs"] == 1 and stats["synced_lsn"] == 100
    assert len(list(read_log(tmp_path))) == 100


@pytest.mark.parametrize("kwargs", [{"fsync": "sometimes"}, {"fsync": "ALWAYS"},
                                    {"fsync_interval_ms": 0}, {"segment_bytes": 0}])
def test_bad_settings_are_refused(tmp_path, kwargs):
    with pytest.raises(ValueError, match="fsync|segment_bytes"):
        WriteAheadLog(tmp_path, **kwargs)


def test_one_writer_per_directory(tmp_path):
    with WriteAheadLog(tmp_path), pytest.raises(BlockingIOError, match="already open"):
        WriteAheadLog(tmp_path)
    WriteAheadLog(tmp_path).close()


def test_closed_log_refuses_appends_and_close_is_idempotent(tmp_path):
    log = WriteAheadLog(tmp_path, fsync="never")
    lsn = log.append({"a": 1})
    log.close()
    log.close()
    log.wait(lsn)  # durable before the close: still fine
    with pytest.raises(LogClosed):
        log.append({"a": 2})
    with pytest.raises(ValueError, match="never appended"):
        log.wait(lsn + 1)
    assert [r for _, r in read_log(tmp_path)] == [{"a": 1}]


@pytest.mark.parametrize("policy", wal.FSYNC_POLICIES)
def test_group_commit_under_concurrent_appenders(tmp_path, policy):
    threads_n, per_thread = 8, 250
    seen: dict[int, tuple[int, int]] = {}
    errors = []
    lock = threading.Lock()
    start = threading.Barrier(threads_n)

    with WriteAheadLog(tmp_path, fsync=policy, fsync_interval_ms=5, segment_bytes=16 << 10) as log:
        def worker(t: int) -> None:
            try:
                start.wait()
                for k in range(per_thread):
                    if k % 50 == 49:
                        last = log.append_many([{"t": t, "k": k, "sub": j} for j in range(3)])
                        lsns = range(last - 2, last + 1)
                        log.wait(last, timeout=60)
                        with lock:
                            for j, lsn in enumerate(lsns):
                                seen[lsn] = (t, k, j)
                    else:
                        lsn = log.append({"t": t, "k": k, "sub": -1, "x": np.full(4, t)})
                        log.wait(lsn, timeout=60)
                        with lock:
                            seen[lsn] = (t, k, -1)
            except BaseException as err:  # noqa: BLE001 - reported below
                errors.append(err)

        workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert not errors
        stats = log.stats()
    total = threads_n * (per_thread + 2 * (per_thread // 50))
    assert sorted(seen) == list(range(1, total + 1))
    assert stats["frames"] == total and stats["write_batches"] <= total
    got = list(read_log(tmp_path))
    assert [lsn for lsn, _ in got] == list(range(1, total + 1))
    for lsn, rec in got:
        assert (rec["t"], rec["k"], rec["sub"]) == seen[lsn]
    per_thread_order: dict[int, list[int]] = {}
    for _, rec in got:
        per_thread_order.setdefault(rec["t"], []).append(rec["k"])
    assert all(ks == sorted(ks) for ks in per_thread_order.values())


# ---------------------------------------------------------------------------- segments

def test_rotation_and_truncate_before(tmp_path):
    records = [sample_record(i) for i in range(40)]
    with WriteAheadLog(tmp_path, fsync="interval", segment_bytes=400) as log:
        log.wait(log.append_many(records[:20]))
        log.rotate()
        log.rotate()  # nothing written since: no empty segment
        assert log.segments()[-1].name == segment_name(21)
        log.wait(log.append_many(records[20:]))
        segments = log.segments()
        assert [p.name for p in segments] == sorted(p.name for p in tmp_path.glob("wal-*.log"))
        starts = [int(p.name[4:24]) for p in segments]
        assert 21 in starts and len(starts) > 3
        for path, start, nxt in zip(segments, starts, starts[1:] + [41]):
            assert len(frame_ends(path)) == nxt - start
            # automatic rotation: a segment only exceeds the limit with its first frame
            assert path.stat().st_size <= 400 or len(frame_ends(path)) == 1

        deleted = log.truncate_before(starts[2] + 1)
        assert deleted == segments[:2]
        assert log.segments() == segments[2:]
        assert log.truncate_before(10**9) == segments[2:-1]  # never the current segment
        assert log.segments() == segments[-1:]
        after = starts[-1] - 1
        log.wait(log.append({"after": "truncate"}))
    got = list(read_log(tmp_path, after_lsn=after))
    assert [lsn for lsn, _ in got] == list(range(after + 1, 42))
    assert_correct_prefix(got[:-1], records, first_lsn=after + 1)
    with pytest.raises(LogCorrupt, match="are gone"):
        list(read_log(tmp_path))  # records 1..after no longer exist
    assert scan_log(tmp_path).first_lsn == starts[-1]


def test_reopen_appends_after_existing_frames(tmp_path):
    with WriteAheadLog(tmp_path, segment_bytes=300) as log:
        log.append_many({"run": 1, "i": i} for i in range(10))
    with WriteAheadLog(tmp_path, segment_bytes=300) as log:
        assert log.last_lsn == 10 and log.durable_lsn == 10
        assert log.append({"run": 2, "i": 0}) == 11
        log.rotate()
    with WriteAheadLog(tmp_path, segment_bytes=300) as log:  # last segment empty
        assert log.last_lsn == 11
        log.wait(log.append({"run": 3, "i": 0}))
    got = list(read_log(tmp_path))
    assert [lsn for lsn, _ in got] == list(range(1, 13))
    assert [r["run"] for _, r in got] == [1] * 10 + [2, 3]


def test_segment_layout_errors(tmp_path):
    with WriteAheadLog(tmp_path, segment_bytes=500) as log:
        log.append_many(sample_record(i) for i in range(12))
    segments = log.segments()
    assert len(segments) >= 3
    pristine = tmp_path.parent / "pristine"
    shutil.copytree(tmp_path, pristine)

    def damaged(action):
        shutil.rmtree(tmp_path)
        shutil.copytree(pristine, tmp_path)
        action()
        with pytest.raises(LogCorrupt) as info:
            list(read_log(tmp_path))
        with pytest.raises(LogCorrupt):
            scan_log(tmp_path)
        with pytest.raises(LogCorrupt):
            WriteAheadLog(tmp_path).close()
        return str(info.value)

    assert "gap" in damaged(lambda: segments[1].unlink())
    assert "leaves a gap" in damaged(
        lambda: segments[1].rename(segments[1].with_name(segment_name(
            int(segments[1].name[4:24]) + 1))))

    def swap():
        first, second = segments[1].read_bytes(), segments[2].read_bytes()
        segments[1].write_bytes(second)
        segments[2].write_bytes(first)
    assert "file name says" in damaged(swap)
    multi = next(p for p in segments[:-1] if len(frame_ends(p)) >= 2)
    assert "overlaps" in damaged(lambda: shutil.copy(
        multi, tmp_path / segment_name(int(multi.name[4:24]) + 1)))

    def flip_middle():
        data = bytearray(segments[1].read_bytes())
        data[20] ^= 0x10
        segments[1].write_bytes(bytes(data))
    message = damaged(flip_middle)
    assert str(segments[1]) in message and "offset 0" in message


def test_huge_length_field_is_a_torn_frame_not_an_allocation(tmp_path):
    with WriteAheadLog(tmp_path) as log:
        log.append_many({"i": i} for i in range(3))
        path = log.segments()[-1]
    with open(path, "ab") as f:
        f.write(struct.pack("<IIQ", 0xFFFFFFFF, 0, 4) + b"\0" * 100)
    kind, got, _, warned = read_outcome(tmp_path)
    assert kind == "ok" and [lsn for lsn, _ in got] == [1, 2, 3]
    assert len(warned) == 1 and "torn" in warned[0].getMessage()


# ---------------------------------------------------------------------------- failures

def test_write_error_fails_every_waiter(tmp_path, monkeypatch):
    log = WriteAheadLog(tmp_path, fsync="always")
    ok = log.append({"ok": True})
    log.wait(ok)
    real_write = os.write

    def disk_full(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(wal.os, "write", disk_full)
    outcomes = []

    def appender(i):
        try:
            log.wait(log.append({"i": i}), timeout=60)
            outcomes.append("durable")
        except Exception as err:  # noqa: BLE001 - checked below
            outcomes.append(err)

    async def async_waiter():
        try:
            await asyncio.wait_for(log.await_durable(log.append({"async": 1})), 60)
        except Exception as err:  # noqa: BLE001
            return err

    workers = [threading.Thread(target=appender, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    async_outcome = asyncio.run(async_waiter())
    for w in workers:
        w.join()
    assert len(outcomes) == 4
    for err in outcomes + [async_outcome]:
        assert isinstance(err, OSError) and err.errno == errno.ENOSPC
    log.wait(ok)  # durable before the failure: still acknowledged
    with pytest.raises(OSError):
        log.append({"late": 1})
    with pytest.raises(OSError):
        log.close()
    log.close()
    monkeypatch.undo()

    with captured_warnings() as warned:
        assert [r for _, r in read_log(tmp_path)] == [{"ok": True}]
    assert not warned  # the partial write was cut off
    with WriteAheadLog(tmp_path) as log:
        assert log.append({"after": "repair"}) == 2


def test_await_durable(tmp_path):
    async def main(log):
        lsns = [log.append({"i": i}) for i in range(200)]
        await asyncio.gather(*(log.await_durable(lsn) for lsn in lsns[::7]))
        await log.await_durable(lsns[-1])
        assert log.durable_lsn >= lsns[-1]
        await log.await_durable(lsns[0])  # already durable: returns at once
        return lsns[-1]

    for policy in wal.FSYNC_POLICIES:
        path = tmp_path / policy
        with WriteAheadLog(path, fsync=policy) as log:
            last = asyncio.run(main(log))
            if policy == "always":
                assert log.stats()["synced_lsn"] >= last
        assert len(list(read_log(path))) == 200


# ------------------------------------------------------------------------------- fuzzing

FUZZ_RECORDS = [sample_record(i) for i in range(30)]


@pytest.fixture(scope="module")
def pristine_log(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pristine-wal")
    with WriteAheadLog(path, fsync="never", segment_bytes=700) as log:
        log.append_many(FUZZ_RECORDS)
    assert len(log.segments()) >= 4
    return path


@contextlib.contextmanager
def copy_of(pristine: Path):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "wal"
        shutil.copytree(pristine, path)
        yield path, sorted(path.glob("wal-*.log"))


def test_truncation_at_every_offset(pristine_log):
    with copy_of(pristine_log) as (path, segments):
        ends = [frame_ends(p) for p in segments]
        # The first segments (read first) and the last (torn tail); the others are alike.
        for seg_index in (0, 1, len(segments) - 1):
            target = segments[seg_index]
            raw = target.read_bytes()
            is_last = seg_index == len(segments) - 1
            for cut in range(len(raw) + 1):
                target.write_bytes(raw[:cut])
                kind, _, got, warned = read_outcome(path)
                assert_correct_prefix(got, FUZZ_RECORDS)
                if is_last:
                    n = sum(len(e) for e in ends[:-1]) + sum(1 for e in ends[-1] if e <= cut)
                    assert kind == "ok"
                    assert [lsn for lsn, _ in got] == list(range(1, n + 1))
                    assert bool(warned) == (cut not in ends[-1] and cut != 0)
                elif cut < len(raw):
                    assert kind == "corrupt", (seg_index, cut)
                else:
                    assert kind == "ok" and len(got) == len(FUZZ_RECORDS)


def _frame_index(ends: list[int], byte: int) -> int:
    return next(i for i, end in enumerate(ends) if byte < end)


@settings(max_examples=150)
@given(st.data())
def test_single_bit_flip_is_always_caught(pristine_log, data):
    with copy_of(pristine_log) as (path, segments):
        seg_index = data.draw(st.integers(0, len(segments) - 1))
        target = segments[seg_index]
        raw = bytearray(target.read_bytes())
        byte = data.draw(st.integers(0, len(raw) - 1))
        raw[byte] ^= 1 << data.draw(st.integers(0, 7))
        ends = frame_ends(target)
        target.write_bytes(bytes(raw))
        kind, result, got, warned = read_outcome(path)
        assert_correct_prefix(got, FUZZ_RECORDS)
        if seg_index < len(segments) - 1:
            assert kind == "corrupt"
            assert str(target) in str(result)
        else:
            n = sum(len(frame_ends(p)) for p in segments[:-1]) + _frame_index(ends, byte)
            assert kind == "ok" and len(got) == n and len(warned) == 1


def _mutate(path: Path, segments: list[Path], data) -> None:
    action = data.draw(st.sampled_from(
        ["truncate", "flip", "garbage", "copy_frame", "delete", "rename", "duplicate", "swap",
         "zeros"]))
    target = data.draw(st.sampled_from(segments))
    raw = target.read_bytes()
    if action == "truncate":
        target.write_bytes(raw[:data.draw(st.integers(0, len(raw)))])
    elif action == "flip" and raw:
        buf = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 8))):
            buf[data.draw(st.integers(0, len(buf) - 1))] ^= data.draw(st.integers(1, 255))
        target.write_bytes(bytes(buf))
    elif action == "garbage":
        target.write_bytes(raw + data.draw(st.binary(min_size=1, max_size=64)))
    elif action == "zeros":  # what a power loss often leaves after an extended file
        target.write_bytes(raw + b"\0" * data.draw(st.integers(1, 200)))
    elif action == "copy_frame":  # a valid frame, but in the wrong place
        source = data.draw(st.sampled_from(segments)).read_bytes()
        ends = [0] + frame_ends_from(source)
        if len(ends) > 1:  # the source may itself be damaged already: then any bytes will do
            k = data.draw(st.integers(0, len(ends) - 2))
            target.write_bytes(raw + source[ends[k]:ends[k + 1]])
    elif action == "delete":
        target.unlink()
    elif action == "rename":
        lsn = data.draw(st.integers(1, len(FUZZ_RECORDS) + 5))
        new = path / segment_name(lsn)
        if new != target:
            os.replace(target, new)
    elif action == "duplicate":
        lsn = data.draw(st.integers(1, len(FUZZ_RECORDS) + 5))
        new = path / segment_name(lsn)
        if new != target:
            shutil.copyfile(target, new)
    elif action == "swap":
        other = data.draw(st.sampled_from(segments))
        other_raw = other.read_bytes()
        other.write_bytes(raw)
        target.write_bytes(other_raw)


@settings(max_examples=200)
@given(st.data())
def test_damaged_logs_yield_a_correct_prefix_or_raise(pristine_log, data):
    with copy_of(pristine_log) as (path, _):
        for _ in range(data.draw(st.integers(1, 3))):
            current = sorted(path.glob("wal-*.log"))
            if current:
                _mutate(path, current, data)
        kind, result, got, warned = read_outcome(path)
        first = scan_first_lsn(path)
        assert_correct_prefix(got, FUZZ_RECORDS, first_lsn=first or 1)
        if kind == "ok":
            assert (scan_log(path).torn_tail is not None) == bool(warned)
        else:
            assert isinstance(result, LogCorrupt)


def scan_first_lsn(path: Path) -> int | None:
    names = sorted(path.glob("wal-*.log"))
    return int(names[0].name[4:24]) if names else None


@settings(max_examples=80)
@given(st.data())
def test_reopening_a_damaged_log_cuts_the_tail_and_appends_after_it(pristine_log, data):
    with copy_of(pristine_log) as (path, segments):
        last = segments[-1]
        raw = last.read_bytes()
        how = data.draw(st.sampled_from(["truncate", "flip", "garbage"]))
        if how == "truncate":
            last.write_bytes(raw[:data.draw(st.integers(0, len(raw)))])
        elif how == "flip":
            buf = bytearray(raw)
            buf[data.draw(st.integers(0, len(buf) - 1))] ^= 0x40
            last.write_bytes(bytes(buf))
        else:
            last.write_bytes(raw + data.draw(st.binary(min_size=1, max_size=40)))
        before = [lsn for lsn, _ in read_outcome(path)[2]]
        torn = scan_log(path).torn_tail
        with captured_warnings() as warned:
            log = WriteAheadLog(path, fsync="always", segment_bytes=700)
        assert (torn is not None) == any("cutting" in w.getMessage() for w in warned)
        with log:
            assert log.last_lsn == len(before)
            extra = [sample_record(100 + i) for i in range(data.draw(st.integers(1, 5)))]
            log.wait(log.append_many(extra))
        records = FUZZ_RECORDS[:len(before)] + extra
        with captured_warnings() as warned:
            got = list(read_log(path))
        assert not warned
        assert [lsn for lsn, _ in got] == list(range(1, len(records) + 1))
        assert_correct_prefix(got, records)
