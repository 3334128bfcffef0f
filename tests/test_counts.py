"""engine.kernels._counts.slot_counts against a per-bit numpy count."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.kernels._counts import slot_counts


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 300), st.integers(1, 4), st.floats(0.0, 1.0))
def test_slot_counts_match_a_count_per_bit(seed, rows, words, density):
    rng = np.random.default_rng(seed)
    bits = rng.random((rows + 5, words * 64)) < density
    member = np.packbits(bits, axis=1, bitorder="little").view(np.uint64).reshape(rows + 5, words)
    out = np.zeros(words * 64, np.int64)
    slot_counts(member, rows, out)
    assert out.tolist() == bits[:rows].sum(axis=0).tolist()
