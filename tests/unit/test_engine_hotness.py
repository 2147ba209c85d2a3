"""Bit-sliced hotness and histograms against a straightforward per-page reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.engine.hotness import (
    HOT_MAX,
    LEVELS,
    MOEBIUS,
    AdderNetwork,
    HistogramKernel,
    hotness_reference,
    subsets_to_hist,
    weights,
)


def unpack(words: np.ndarray) -> np.ndarray:
    """uint64[..., n] -> bool[..., 64n] (bit j of word w = index 64w + j)."""
    w = np.ascontiguousarray(words, dtype="<u8")
    return np.unpackbits(w.view(np.uint8), axis=-1, bitorder="little").astype(bool)


@pytest.mark.parametrize("window", range(1, 17))
def test_weights_shape(window):
    w = weights(window)
    assert len(w) == window
    assert all(x >= 1 for x in w)
    assert list(w) == sorted(w, reverse=True)
    assert sum(w) == (HOT_MAX if window < LEVELS else window)


def test_default_weights():
    # documented in hotness.py: a page turning hot overtakes a cooling one after 3 samples
    assert weights(8) == (4, 3, 2, 2, 1, 1, 1, 1)


def test_bad_window():
    with pytest.raises(ValueError):
        weights(0)
    with pytest.raises(ValueError):
        weights(17)


def test_reference_endpoints():
    for window in range(1, 17):
        assert hotness_reference(np.ones((window, 1), bool), window)[0] == HOT_MAX
        assert hotness_reference(np.zeros((window, 1), bool), window)[0] == 0


def test_moebius_inverts_subset_counting():
    rng = np.random.default_rng(0)
    hot = rng.integers(0, LEVELS, 1000)
    subset = np.array([np.sum((hot & s) == s) for s in range(LEVELS)])
    assert np.array_equal(subsets_to_hist(subset), np.bincount(hot, minlength=LEVELS))
    assert MOEBIUS.shape == (LEVELS, LEVELS)


words64 = st.integers(min_value=0, max_value=(1 << 64) - 1)


@settings(max_examples=60, deadline=None)
@given(window=st.integers(1, 16), n=st.integers(1, 4), data=st.data())
def test_adder_network_matches_reference(window, n, data):
    hist = np.array(data.draw(st.lists(st.lists(words64, min_size=n, max_size=n),
                                       min_size=window, max_size=window)), dtype=np.uint64)
    net = AdderNetwork(window)
    out = np.empty((4, n), np.uint64)
    net.run(list(hist), out, np.empty((net.scratch_rows, n), np.uint64))
    got = sum(unpack(out[b]).astype(np.int64) << b for b in range(4))
    assert np.array_equal(got, hotness_reference(unpack(hist), window))


@settings(max_examples=60, deadline=None)
@given(window=st.integers(1, 16), n=st.integers(1, 5), nmasks=st.integers(0, 3), data=st.data())
def test_histograms_match_reference(window, n, nmasks, data):
    """Subset counts + Moebius = bincount of the reference hotness, overall and per class
    (the state guarantees: history only on present pages, classes within present)."""
    present = np.array(data.draw(st.lists(words64, min_size=n, max_size=n)), dtype=np.uint64)
    hist = np.array(data.draw(st.lists(st.lists(words64, min_size=n, max_size=n),
                                       min_size=window, max_size=window)), dtype=np.uint64)
    hist &= present
    masks = [present & np.array(data.draw(st.lists(words64, min_size=n, max_size=n)), dtype=np.uint64)
             for _ in range(nmasks)]
    k = HistogramKernel(window, chunk_words=8, max_classes=1)
    counts = k.subset_counts(list(hist), masks)
    counts[0, 0] = int(unpack(present).sum())
    for i, m in enumerate(masks):
        counts[1 + i, 0] = int(unpack(m).sum())
    got = subsets_to_hist(counts)
    ref = hotness_reference(unpack(hist), window)
    assert np.array_equal(got[0], np.bincount(ref[unpack(present)], minlength=LEVELS))
    for i, m in enumerate(masks):
        assert np.array_equal(got[1 + i], np.bincount(ref[unpack(m)], minlength=LEVELS))


@settings(max_examples=40, deadline=None)
@given(window=st.integers(1, 16), level=st.integers(0, 15), data=st.data())
def test_level_mask(window, level, data):
    hist = np.array(data.draw(st.lists(st.lists(words64, min_size=2, max_size=2),
                                       min_size=window, max_size=window)), dtype=np.uint64)
    base = np.array(data.draw(st.lists(words64, min_size=2, max_size=2)), dtype=np.uint64)
    k = HistogramKernel(window, chunk_words=4)
    planes = k.hot_planes(list(hist), 2)
    m = k.level_mask(planes, level, base, np.empty(2, np.uint64))
    ref = hotness_reference(unpack(hist), window)
    assert np.array_equal(unpack(m), (ref == level) & unpack(base))


@settings(max_examples=40, deadline=None)
@given(window=st.integers(1, 16), levels=st.sets(st.integers(0, 15), min_size=1), data=st.data())
def test_level_masks_tree_matches_single_masks(window, levels, data):
    hist = np.array(data.draw(st.lists(st.lists(words64, min_size=3, max_size=3),
                                       min_size=window, max_size=window)), dtype=np.uint64)
    base = np.array(data.draw(st.lists(words64, min_size=3, max_size=3)), dtype=np.uint64)
    k = HistogramKernel(window, chunk_words=4)
    planes = k.hot_planes(list(hist), 3)
    got = k.level_masks(planes, levels, base)
    assert sorted(got) == sorted(levels)
    for v, m in got.items():
        assert np.array_equal(m, k.level_mask(planes, v, base, np.empty(3, np.uint64)))
