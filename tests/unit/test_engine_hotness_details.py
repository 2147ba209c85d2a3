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


def test_adder_network_every_window_including_saturation():
    from tierd.engine.hotness import AdderNetwork, hotness_reference

    rng = np.random.default_rng(7)
    for window in range(1, 17):
        hist = rng.integers(0, 2**63, (window, 6), dtype=np.uint64) * np.uint64(2)
        hist[:, 0] = np.uint64(2**64 - 1)  # pages 0-63: accessed in every sample
        hist[:, 1] = 0  # pages 64-127: never
        net = AdderNetwork(window)
        out = np.empty((4, 6), np.uint64)
        net.run(list(hist), out, np.empty((net.scratch_rows, 6), np.uint64))
        bits = np.unpackbits(hist.view(np.uint8), axis=-1, bitorder="little").astype(bool)
        got = sum(np.unpackbits(out[b].view(np.uint8), bitorder="little").astype(np.int64) << b
                  for b in range(4))
        ref = hotness_reference(bits, window)
        assert got.tolist() == ref.tolist(), window
        # always accessed: the top level (a window of 16 sums to 16 and saturates at 15)
        assert set(got[:64].tolist()) == {15} and set(got[64:128].tolist()) == {0}


def test_bad_window_says_the_range():
    import pytest

    from tierd.engine.hotness import weights

    with pytest.raises(ValueError, match=r"^window must be 1\.\.16, got 0$"):
        weights(0)
