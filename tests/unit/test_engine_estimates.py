"""Access-rate estimates per (node, level) cell, and the gain model built on them."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.engine.hotness import LEVELS
from tierd.engine.state import Extents, PageState

from test_engine_state import Naive, feed


@settings(max_examples=30, deadline=None)
@given(
    window=st.integers(1, 16),
    words=st.integers(1, 6),
    chunk=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
    samples=st.integers(2, 10),
)
def test_estimate_counts_match_the_per_page_reference(window, words, chunk, seed, samples):
    """est[0, c, v]: pages of node class c at hotness v at the previous commit (still present);
    est[1, c, v]: those accessed in this sample.  Small states count every word."""
    rng = np.random.default_rng(seed)
    n = words * 64
    st_ = PageState(Extents([3], [words]), window, (0, 1), chunk_words=chunk)
    ref = Naive(n, window)
    node = rng.integers(0, 2, n)
    prev = None
    for _ in range(samples):
        present = rng.random(n) < 0.9
        accessed = present & (rng.random(n) < rng.random())
        feed(st_, present, accessed)
        acc_eff = accessed & present & ref.present
        if prev is not None:
            h0, known0 = prev
            want = np.zeros((2, 3, LEVELS), np.int64)
            for c in (0, 1):
                sel = (known0 == c) & present
                want[0, c] = np.bincount(h0[sel], minlength=LEVELS)
                want[1, c] = np.bincount(h0[sel & acc_eff], minlength=LEVELS)
            assert np.array_equal(st_.est, want)
        ref.sample(present, accessed)
        # what the next commit counts against: hotness and node as of this commit (nodes
        # learned after it, as move_pages would, do not count)
        prev = (ref.hotness(), st_.node_of(np.arange(n)).astype(np.int64))
        pages = np.flatnonzero(present & (rng.random(n) < 0.6))
        cls = np.array([st_.class_of(int(x)) for x in st_.node_of(pages)], dtype=np.int64)
        st_.set_node(pages, st_.hotness(pages), cls, node[pages])
