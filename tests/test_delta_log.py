"""The delta log (engine._deltas.DeltaLog) against a plain list of every delta ever appended:
sequence numbers, retention, SequenceTooOld, segment filters and limits."""

from __future__ import annotations

import random

import numpy as np
import pytest

from engine._deltas import DeltaBatch, DeltaLog
from engine.errors import SequenceTooOld


def _batch(rng: random.Random, n: int) -> DeltaBatch:
    return DeltaBatch([rng.choice("abc") for _ in range(n)], [f"u{rng.randrange(9)}" for _ in range(n)],
                      np.array([rng.choice([1, 2]) for _ in range(n)], np.int8), np.ones(n, np.int8),
                      np.arange(n, dtype=np.int64))


def _check_read(log: DeltaLog, every: list, cap: int, after: int, segs, limit) -> None:
    kept = every[-cap:]
    first_kept = kept[0][0] if kept else log.last_sequence + 1
    assert log.first_retained == first_kept
    too_old = after + 1 < first_kept and after < log.last_sequence
    if too_old:
        with pytest.raises(SequenceTooOld):
            log.read(after, segs, limit)
        return
    want = [d for d in kept if d[0] > after and (not segs or d[1] in segs)][:limit]
    got = [(d.sequence, d.segment, d.user_id, d.kind) for d in log.read(after, segs, limit)]
    assert got == want
    upto = after + 5                                   # the parts, cut at a sequence
    parts = log.read_parts(after, segs, limit, upto=upto)
    assert [(first + j, b.segments[j], b.user_ids[j]) for first, b, rows in parts for j in rows] \
        == [d[:3] for d in want if d[0] <= upto]


@pytest.mark.parametrize("seed", range(40))
def test_reads_equal_a_plain_list(seed):
    rng = random.Random(seed)
    cap = rng.randrange(1, 60)
    log, every = DeltaLog(cap), []
    for _ in range(rng.randrange(1, 120)):
        b = _batch(rng, rng.randrange(0, 12))
        first, last = log.append(b)
        assert last - first + 1 == len(b) and first == len(every) + 1
        every += [(first + i, b.segments[i], b.user_ids[i], "ENTER" if b.kind[i] == 1 else "EXIT")
                  for i in range(len(b))]
        for _ in range(3):
            _check_read(log, every, cap, rng.randrange(0, len(every) + 2),
                        rng.choice([None, {"a"}, {"a", "c"}, {"z"}]), rng.choice([None, 1, 3, 100]))


def test_many_small_chunks_are_dropped_and_compacted():
    rng = random.Random(1)
    log, every = DeltaLog(10), []
    for _ in range(5000):
        b = _batch(rng, 1)
        first, _ = log.append(b)
        every.append((first, b.segments[0], b.user_ids[0], "ENTER" if b.kind[0] == 1 else "EXIT"))
    assert len(log._batches) - log._head == 10 and len(log._batches) < 3000
    for after in (0, 4989, 4990, 4995, 5000):
        _check_read(log, every, 10, after, None, None)
        _check_read(log, every, 10, after, {"b"}, 2)
    first, nxt, batch = log.export()
    assert (first, nxt, len(batch)) == (4991, 5001, 10)


@pytest.mark.parametrize("protocol", [4, 5])
def test_delta_batch_pickles_with_its_dtypes(protocol):
    """A shard's DeltaBatch goes to the gateway pickled: lists and arrays come back equal,
    with their dtypes, and the arrays writable."""
    import pickle

    b = DeltaBatch(["s", "t"], ["u1", "u2"], np.array([1, 2], np.int8), np.array([1, 3], np.int8),
                   np.array([5, 6], np.int64))
    for x in (b, DeltaBatch()):
        y = pickle.loads(pickle.dumps(x, protocol=protocol))
        assert (y.segments, y.user_ids) == (x.segments, x.user_ids)
        for f in ("kind", "cause", "at_ms"):
            a, c = getattr(x, f), getattr(y, f)
            assert a.dtype == c.dtype and a.tolist() == c.tolist() and c.flags.writeable


def test_snapshot_arrays_in_steps_hold_what_was_captured(monkeypatch):
    """A snapshot captures the log in its pause and converts it afterwards, in steps, while
    new deltas arrive: the arrays hold exactly the captured deltas (a chunk larger than one
    step and a trimmed head included), as one split of all of them would, and restore to the
    same reads."""
    from engine.durability import embedded
    from engine.kernels._strings import split_strings

    monkeypatch.setattr(embedded, "DELTA_PIECE", 7)
    rng = random.Random(3)
    log = DeltaLog(capacity=60)
    for n in (5, 30, 3, 25, 9, 1, 16):          # 89 appended, the first ones trimmed
        log.append(_batch(rng, n))
    captured = log.capture()
    first, nxt, batch = log.export()
    expected = list(zip(batch.segments, batch.user_ids, batch.kind.tolist(), batch.at_ms.tolist()))
    conv = embedded.DeltaArrays(captured)
    steps = 0
    for _ in conv.steps():
        steps += 1
        log.append(_batch(rng, 4))              # the log goes on meanwhile
    assert steps == sum(-(-len(c) // 7) for c in captured[2]) and steps > len(captured[2])
    arrays = conv.arrays()
    for key, values in (("seg", batch.segments), ("user", batch.user_ids)):
        one = split_strings(values)
        assert np.array_equal(arrays[f"d_{key}_blob"], one.blob)
        assert np.array_equal(arrays[f"d_{key}_offsets"], one.offsets)
        assert np.array_equal(arrays[f"d_{key}_codes"], one.codes)
        assert arrays[f"d_{key}_codes"].dtype == np.int32
    restored = DeltaLog(capacity=60)
    embedded.deltas_from_arrays(restored, conv.meta(), arrays)
    assert (restored.first_retained, restored.last_sequence) == (first, nxt - 1) == (30, 89)
    got = [(d.segment, d.user_id, 1 if d.kind == "ENTER" else 2, d.at_ms) for d in restored.read(first - 1)]
    assert got == expected
