"""Hotness details the main tests leave open (found by mutation testing)."""

from __future__ import annotations

import numpy as np

from tierd.engine import hotness
from tierd.engine.hotness import LEVELS, subsets_to_hist


def subset_counts(hot):
    return np.array([np.sum((hot & s) == s) for s in range(LEVELS)])


def test_moebius_matrix_built_by_the_function_inverts_subset_counting():
    # MOEBIUS is built once at import; check the builder itself as well
    hot = np.random.default_rng(1).integers(0, LEVELS, 500)
    m = hotness._moebius()
    assert m.dtype == np.int64 and m.shape == (LEVELS, LEVELS)
    assert (m @ subset_counts(hot)).tolist() == np.bincount(hot, minlength=LEVELS).tolist()


def test_subsets_to_hist_is_exact_for_unsigned_counts():
    # the planes' popcounts arrive as unsigned integers: the result must stay exact int64,
    # not float (uint64 @ int64 would be float64 in numpy)
    hot = np.full(3, 15)
    got = subsets_to_hist(subset_counts(hot).astype(np.uint64) * np.uint64(2**40))
    assert got.dtype == np.int64 and got[15] == 3 * 2**40 and not got[:15].any()
