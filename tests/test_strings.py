"""String columns and the interning string table (engine/kernels/_strings.py)."""

from __future__ import annotations

import doctest
import json
import pickle
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine.kernels._strings as strings_module
from engine.kernels._strings import (
    NUM_SLOTS,
    PROBLEM_NUL,
    PROBLEM_SURROGATE,
    StringColumn,
    StringTable,
    _hash_bytes,
    _bytes_array,
    fnv1a64,
    slot_of,
    split_strings,
    split_strings_report,
)

# Valid rtseg strings: any Unicode text without NUL and without lone surrogates.
texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12
)
UNICODE = ["", "a", "é", "日本語", "🙂", "e\u0301", "ß", "Ω≈ç√", "tab\there", "new\nline", " "]


def _column_invariants(col: StringColumn) -> None:
    assert col.blob.dtype == np.uint8
    assert col.offsets.dtype == np.int64 and col.offsets[0] == 0
    assert col.offsets[-1] == len(col.blob)
    assert np.all(np.diff(col.offsets) >= 0)
    assert col.hashes.dtype == np.uint64 and len(col.hashes) == len(col.offsets) - 1
    assert col.codes.dtype == np.int32
    uniques = col.uniques()
    assert len(set(uniques)) == len(uniques)
    for k, u in enumerate(uniques):
        assert int(col.hashes[k]) == fnv1a64(u.encode("utf-8"))


# ------------------------------------------------------------------------------------ hashing


def test_fnv1a64_known_vectors():
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a64(b"foobar") == 0x85944171F73967E8


@settings(deadline=None)
@given(st.binary(max_size=40))
def test_kernel_hash_matches_python(data):
    assert int(_hash_bytes(_bytes_array(data))) == fnv1a64(data)


def test_slot_of_is_hash_mod_num_slots():
    for s in ["u1", "u2", "日本", ""]:
        assert slot_of(s) == fnv1a64(s.encode()) % NUM_SLOTS
    assert NUM_SLOTS == 4096


# ---------------------------------------------------------------------------- split_strings


def test_split_strings_dedupes_in_first_seen_order():
    col = split_strings(["b", "a", "b", "c", "a"])
    assert col.uniques() == ["b", "a", "c"]
    assert col.codes.tolist() == [0, 1, 0, 2, 1]
    assert col.values() == ["b", "a", "b", "c", "a"]
    assert len(col) == 5 and col.n_unique == 3
    _column_invariants(col)


def test_split_strings_unicode_and_empty_strings_round_trip():
    values = UNICODE + UNICODE[::-1]
    col = split_strings(values)
    assert col.values() == values
    assert col.uniques() == UNICODE
    _column_invariants(col)


@pytest.mark.parametrize(
    "make",
    [list, tuple, lambda v: np.array(v, dtype=object), lambda v: np.array(v), lambda v: iter(v)],
    ids=["list", "tuple", "object-array", "U-array", "iterator"],
)
def test_split_strings_accepts_sequences_and_arrays(make):
    values = ["x", "yy", "x", "日本"]
    assert split_strings(make(values)).values() == values


def test_split_strings_empty_input():
    col = split_strings([])
    assert len(col) == 0 and col.n_unique == 0
    assert col.uniques() == [] and col.values() == []
    _column_invariants(col)


def test_split_strings_single_empty_string():
    col = split_strings([""])
    assert col.uniques() == [""] and col.codes.tolist() == [0]


def test_split_strings_report_names_bad_elements():
    values = ["ok", None, 7, "a\0b", "\ud800", "ok", b"bytes", "fine"]
    col, problems = split_strings_report(values)
    assert [i for i, _ in problems] == [1, 2, 3, 4, 6]
    reasons = dict(problems)
    assert reasons[1] == "is required"
    assert reasons[2] == "must be a string, got int"
    assert reasons[3] == PROBLEM_NUL
    assert reasons[4] == PROBLEM_SURROGATE
    assert reasons[6] == "must be a string, got bytes"
    # bad elements become "", the rest is intact
    assert col.values() == ["ok", "", "", "", "", "ok", "", "fine"]


def test_split_strings_raises_on_bad_elements():
    with pytest.raises(ValueError, match="string 1 must be a string, got int"):
        split_strings(["a", 1])
    with pytest.raises(ValueError, match="NUL"):
        split_strings(["a\0"])


def test_nul_only_in_last_element_is_detected():
    _, problems = split_strings_report(["a", "b", "c\0"])
    assert [i for i, _ in problems] == [2]


def test_string_column_take_recompacts_uniques():
    col = split_strings(["a", "b", "c", "b", "d"])
    sub = col.take(np.array([1, 3, 4]))
    assert sub.values() == ["b", "b", "d"]
    assert sub.uniques() == ["b", "d"]
    _column_invariants(sub)
    assert col.take(np.array([True, False, False, True, False])).values() == ["a", "b"]
    empty = col.take(np.array([], dtype=np.int64))
    assert len(empty) == 0 and empty.n_unique == 0
    # all uniques used: nothing re-compacted, order may repeat
    assert col.take(np.array([4, 3, 2, 1, 0])).values() == ["d", "b", "c", "b", "a"]


def test_string_column_pickles():
    col = split_strings(UNICODE)
    back = pickle.loads(pickle.dumps(col))
    assert back.values() == UNICODE


# Longer strings of a small alphabet share words, differ in one byte of a word, or differ only
# past their first 16 bytes (which the split compares byte by byte).
long_texts = st.text(alphabet=st.sampled_from("ab\u00e9\U0001f642"), max_size=40)


@settings(max_examples=120, deadline=None)
@given(st.lists(texts, max_size=40) | st.lists(long_texts, max_size=60))
def test_split_strings_matches_python(values):
    col = split_strings(values)
    assert col.values() == values
    assert col.uniques() == list(dict.fromkeys(values))
    _column_invariants(col)


def test_split_strings_tells_apart_strings_at_every_length_and_byte():
    # every length around the word edges (7/8/9, 15/16/17, 24/25), each string differing from
    # the next in one byte at one position; and a NUL-free buffer whose end is not word-aligned
    values = []
    for n in (0, 1, 7, 8, 9, 15, 16, 17, 23, 24, 25, 40):
        base = "x" * n
        values.append(base)
        for k in range(n):
            values.append(base[:k] + "y" + base[k + 1:])
    values = values + values[::-1] + ["x" * 17 + "z"] * 3
    col = split_strings(values)
    assert col.values() == values
    assert col.uniques() == list(dict.fromkeys(values))
    _column_invariants(col)


def test_split_strings_many_uniques_grow_the_table():
    values = [f"user-{i % 9000}" for i in range(30_000)]
    col = split_strings(values)
    assert col.n_unique == 9000
    assert col.values() == values
    _column_invariants(col)


# ------------------------------------------------------------------------------ StringTable


def test_intern_codes_in_insertion_order():
    t = StringTable()
    assert t.intern(split_strings(["x", "y", "x"])).tolist() == [0, 1]
    assert t.intern(split_strings(["z", "y", "w"])).tolist() == [2, 1, 3]
    assert len(t) == 4
    assert t.to_list() == ["x", "y", "z", "w"]
    assert t.gather(np.array([3, 3, 0], dtype=np.int32)) == ["w", "w", "x"]
    assert [t.get(c) for c in range(4)] == ["x", "y", "z", "w"]


def test_lookup_does_not_insert():
    t = StringTable()
    t.intern(split_strings(["a", "b"]))
    assert t.lookup(split_strings(["b", "nope", "a"])).tolist() == [1, -1, 0]
    assert len(t) == 2
    assert t.lookup_one("a") == 0 and t.lookup_one("nope") == -1
    assert t.lookup_one("a\0") == -1 and t.lookup_one("\ud800") == -1
    assert t.intern_one("nope") == 2 and t.intern_one("nope") == 2 and t.intern_one("a") == 0
    assert len(t) == 3


def test_empty_table():
    t = StringTable()
    assert len(t) == 0
    assert t.gather(np.array([], dtype=np.int64)) == []
    assert t.to_list() == []
    assert t.lookup(split_strings(["a"])).tolist() == [-1]
    assert t.lookup(split_strings([])).tolist() == []
    assert t.intern(split_strings([])).tolist() == []
    with pytest.raises(IndexError):
        t.get(0)
    with pytest.raises(IndexError):
        t.gather([0])
    back = StringTable.from_snapshot(t.snapshot())
    assert len(back) == 0 and back.intern_one("a") == 0


def test_unicode_and_empty_string_round_trip():
    t = StringTable()
    codes = t.intern(split_strings(UNICODE))
    assert codes.tolist() == list(range(len(UNICODE)))
    assert t.gather(codes) == UNICODE
    assert t.get(0) == "" and t.lookup_one("") == 0
    assert t.gather(np.array([0, 0])) == ["", ""]


def test_gather_rejects_out_of_range_codes():
    t = StringTable()
    t.intern(split_strings(["a"]))
    with pytest.raises(IndexError):
        t.gather([1])
    with pytest.raises(IndexError):
        t.gather([-1])


def test_intern_one_rejects_nul_and_non_str():
    t = StringTable()
    with pytest.raises(ValueError, match="NUL"):
        t.intern_one("a\0b")
    with pytest.raises(TypeError):
        t.intern_one(3)


def test_growth_across_many_inserts_from_a_tiny_table():
    t = StringTable(capacity=1, byte_capacity=1)
    expected: dict[str, int] = {}
    rng = np.random.default_rng(7)
    nbytes0 = t.nbytes
    for batch in range(60):
        ids = [f"user-{int(i)}-{'x' * int(i % 9)}" for i in rng.integers(0, 5000, 300)]
        codes = t.intern(split_strings(ids))
        col = split_strings(ids)
        for s in col.uniques():
            expected.setdefault(s, len(expected))
        assert codes.tolist() == [expected[s] for s in col.uniques()]
    assert len(t) == len(expected)
    assert t.to_list() == list(expected)
    assert t.nbytes > nbytes0
    # load factor stays at most 0.5
    assert len(t._slots) >= 2 * len(t)


def _column_with_hashes(values: list[str], hashes: list[int]) -> StringColumn:
    col = split_strings(values)
    assert col.n_unique == len(values)
    return StringColumn(col.blob, col.offsets, np.array(hashes, dtype=np.uint64), col.codes)


def test_collisions_are_resolved_by_bytes():
    # Same full hash for every string: only the byte comparison tells them apart.
    values = [f"s{i}" for i in range(200)] + ["", "日本"]
    t = StringTable(capacity=2)
    col = _column_with_hashes(values, [12345] * len(values))
    codes = t.intern(col)
    assert codes.tolist() == list(range(len(values)))
    assert t.intern(col).tolist() == codes.tolist()
    assert t.lookup(col).tolist() == codes.tolist()
    assert t.to_list() == values
    # survives a snapshot (slots are rebuilt from the stored hashes)
    back = StringTable.from_snapshot(t.snapshot())
    assert back.lookup(col).tolist() == codes.tolist()


def test_collisions_on_slot_bits_only():
    # Equal low bits (same home slot), different tags; and equal tags, different slots.
    low = [(k << 40) | 5 for k in range(1, 50)]
    tagged = [(7 << 40) | k for k in range(50)]
    values = [f"v{i}" for i in range(len(low) + len(tagged))]
    t = StringTable(capacity=4)
    col = _column_with_hashes(values, low + tagged)
    assert t.intern(col).tolist() == list(range(len(values)))
    assert t.lookup(col).tolist() == list(range(len(values)))


def test_snapshot_round_trip_and_pickle():
    t = StringTable()
    t.intern(split_strings(UNICODE + [f"u{i}" for i in range(3000)]))
    snap = t.snapshot()
    assert set(snap) == {"arena", "offsets", "hashes"}
    assert all(isinstance(a, np.ndarray) for a in snap.values())
    back = StringTable.from_snapshot(pickle.loads(pickle.dumps(snap)))
    assert back.to_list() == t.to_list()
    assert back.lookup_one("u2999") == t.lookup_one("u2999")
    assert back.intern_one("new") == len(t)
    with pytest.raises(ValueError):
        StringTable.from_snapshot({**snap, "offsets": snap["offsets"][:-1]})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(texts, max_size=25), max_size=6), st.integers(1, 64))
def test_table_matches_python_dict(batches, capacity):
    t = StringTable(capacity=capacity, byte_capacity=capacity)
    oracle: dict[str, int] = {}
    for values in batches:
        col = split_strings(values)
        before = dict(oracle)
        looked = t.lookup(col).tolist()
        assert looked == [before.get(s, -1) for s in col.uniques()]
        codes = t.intern(col)
        for s in col.uniques():
            oracle.setdefault(s, len(oracle))
        assert codes.tolist() == [oracle[s] for s in col.uniques()]
        assert t.gather(codes[col.codes]) == values
    assert len(t) == len(oracle)
    assert t.to_list() == list(oracle)
    for s, c in oracle.items():
        assert t.lookup_one(s) == c and t.get(c) == s


def test_intern_values_and_lookup_values():
    t = StringTable()
    assert t.intern_values(["a", "b", "a"]).tolist() == [0, 1, 0]
    assert t.lookup_values(["b", "zz", "b"]).tolist() == [1, -1, 1]
    assert t.intern_values([]).tolist() == []


def test_docstring_examples_run():
    result = doctest.testmod(strings_module)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------------------- benchmark


@pytest.mark.benchmark
def test_benchmark_split_and_intern_one_million_ids():
    """1M ids (~300k unique) -> split_strings + intern into a table of 1M ids."""
    rng = np.random.default_rng(42)
    table = StringTable()
    table.intern(split_strings([f"u{i}" for i in range(1_000_000)]))
    pool = rng.choice(2_000_000, 300_000, replace=False)  # about half of them new
    ids = np.array([f"u{p}" for p in pool], dtype=object)[rng.integers(0, 300_000, 1_000_000)].tolist()
    results = []
    for _ in range(3):
        t = StringTable.from_snapshot(table.snapshot())
        t0 = time.perf_counter()
        col = split_strings(ids)
        t1 = time.perf_counter()
        codes = t.intern(col)
        t2 = time.perf_counter()
        out = t.gather(codes[col.codes])
        t3 = time.perf_counter()
        assert out == ids
        results.append({"split_s": t1 - t0, "intern_s": t2 - t1, "gather_s": t3 - t2})
    best = {k: min(r[k] for r in results) for k in results[0]}
    best["split_plus_intern_s"] = min(r["split_s"] + r["intern_s"] for r in results)
    print(json.dumps({"benchmark": "strings_1M", "uniques": int(col.n_unique), **best}))
    assert best["split_plus_intern_s"] < 0.3
