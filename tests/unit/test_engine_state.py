"""Per-process page state: sampling, histograms, selection, remap on VMA changes, budget."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.engine.hotness import LEVELS, hotness_reference
from tierd.engine.state import Extents, PageState, page_bits, words_to_pages
from tierd.linux.procfs import Vma
from tierd.pages import PAGE_SIZE as PAGE


def vma(start_page, npages, perms="rw-p", path=""):
    return Vma(start_page * PAGE, (start_page + npages) * PAGE, perms, 0, "00:00", 0, path)


def bits_to_words(b: np.ndarray) -> np.ndarray:
    return np.packbits(np.asarray(b, bool), bitorder="little").view("<u8").astype(np.uint64)


class Naive:
    """Per-page reference model of the state's rules, bool arrays."""

    def __init__(self, npages, window):
        self.window = window
        self.hist = np.zeros((window, npages), bool)  # row 0 newest
        self.present = np.zeros(npages, bool)

    def sample(self, present, accessed):
        accessed = accessed & present & self.present  # first sight carries no recency
        gone = self.present & ~present
        self.hist[:, gone] = False
        self.hist = np.roll(self.hist, 1, axis=0)
        self.hist[0] = accessed
        self.present = present.copy()

    def hotness(self):
        return hotness_reference(self.hist, self.window)


def feed(state: PageState, present_bits, accessed_bits):
    p, a = state.sample_buffers()
    p[:] = bits_to_words(present_bits)
    a[:] = bits_to_words(accessed_bits)
    state.commit()


@settings(max_examples=40, deadline=None)
@given(
    window=st.integers(1, 16),
    words=st.integers(1, 7),
    chunk=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
    samples=st.integers(1, 12),
)
def test_histograms_follow_the_reference_over_samples(window, words, chunk, seed, samples):
    rng = np.random.default_rng(seed)
    n = words * 64
    st_ = PageState(Extents([10], [words]), window, (0, 1), chunk_words=chunk)
    ref = Naive(n, window)
    node = rng.integers(-1, 2, n)  # -1 unknown
    for _ in range(samples):
        present = rng.random(n) < 0.9
        accessed = present & (rng.random(n) < rng.random())
        feed(st_, present, accessed)
        ref.sample(present, accessed)
        # learn some nodes, like move_pages would
        pages = np.flatnonzero(present & (node >= 0) & (rng.random(n) < 0.5))
        hot = st_.hotness(pages)
        cls = np.array([st_.class_of(int(x)) for x in st_.node_of(pages)])
        st_.set_node(pages, hot, cls, node[pages])
        known = st_.node_of(np.arange(n))
        h = ref.hotness()
        want = np.zeros((3, LEVELS), np.int64)
        for c, nid in enumerate((0, 1, -1)):
            sel = ref.present & (known == nid)
            want[c] = np.bincount(h[sel], minlength=LEVELS)
        assert np.array_equal(st_.histograms(), want)
        assert np.array_equal(st_.hotness(np.flatnonzero(ref.present)), h[ref.present])


def test_cold_chunks_take_the_shortcut_and_stay_exact():
    st_ = PageState(Extents([0], [8]), 2, (0,), chunk_words=2)
    n = 8 * 64
    present = np.ones(n, bool)
    acc = np.zeros(n, bool)
    acc[5] = True
    for _ in range(4):
        feed(st_, present, acc)
    h = st_.histograms()
    assert h.sum() == n and h[1, 15] == 1 and h[1, 0] == n - 1
    feed(st_, present, np.zeros(n, bool))
    feed(st_, present, np.zeros(n, bool))
    assert st_.histograms()[1, 0] == n  # all chunks cold now


def test_select_lowest_addresses_exact_counts_and_backoff():
    st_ = PageState(Extents([0], [4]), 4, (0, 1), chunk_words=1)
    n = 256
    present = np.ones(n, bool)
    acc = np.zeros(n, bool)
    acc[[3, 70, 71, 130, 200]] = True
    feed(st_, present, np.zeros(n, bool))
    feed(st_, present, acc)
    level = st_.hotness(np.array([3]))[0]
    unk = st_.unknown
    got = st_.select([(unk, level, 2), (unk, level, 2), (unk, level, 10), (unk, 0, 3)])
    assert [g.tolist() for g in got] == [[3, 70], [71, 130], [200], [0, 1, 2]]
    st_.fail(np.array([70]), now=1, retry_after=1)
    assert st_.select([(unk, level, 2)])[0].tolist() == [3, 71]
    st_.expire(now=2, retry_after=1)
    assert st_.select([(unk, level, 2)])[0].tolist() == [3, 70]


def test_moves_keep_chunk_histograms_consistent():
    st_ = PageState(Extents([0], [4]), 8, (0, 1), chunk_words=1)
    n = 256
    rng = np.random.default_rng(3)
    feed(st_, np.ones(n, bool), np.zeros(n, bool))
    feed(st_, np.ones(n, bool), rng.random(n) < 0.3)
    pages = np.arange(0, n, 3)
    st_.set_node(pages, st_.hotness(pages), st_.unknown, 1)
    moved = pages[::2]
    st_.set_node(moved, st_.hotness(moved), st_.class_of(1), 0)
    st_.mark_absent(np.array([9]), st_.hotness(np.array([9])), st_.class_of(1))
    incremental = st_.chunk_hist.copy()
    st_._recompute()
    assert np.array_equal(incremental, st_.chunk_hist)
    # next sample with unchanged presence reuses the class populations: still exact
    present = np.ones(n, bool)
    present[9] = False
    feed(st_, present, rng.random(n) < 0.3)
    st_.set_node(np.array([12]), st_.hotness(np.array([12])), st_.class_of(0), 1)
    feed(st_, present, rng.random(n) < 0.3)
    incremental = st_.chunk_hist.copy()
    st_._recompute()
    assert np.array_equal(incremental, st_.chunk_hist)


def test_remap_keeps_surviving_words_and_starts_new_ones_fresh():
    st_ = PageState(Extents([0, 10], [4, 2]), 4, (0, 1), chunk_words=2)
    n = st_.pages
    feed(st_, np.ones(n, bool), np.zeros(n, bool))
    acc = np.zeros(n, bool)
    acc[[0, 64 * 3 + 1, 64 * 4 + 5]] = True  # vpn 0, vpn 193, vpn 645
    feed(st_, np.ones(n, bool), acc)
    st_.set_node(np.array([0, 64 * 4 + 5]), 4, st_.unknown, 0)
    st_.fail(np.array([64 * 3 + 1]), now=2, retry_after=4)
    before = st_.hotness(np.array([0, 64 * 4 + 5]))
    # munmap of words 1-2, mremap/growth of the second region by 3 words, a new region
    new = Extents([0, 3, 9, 20], [1, 1, 5, 1])
    st_.remap(new)
    assert st_.words == 8
    flat = new.flat_of(np.array([0, 193, 645, 9 * 64, 20 * 64]))
    assert flat.tolist() == [0, 65, 2 * 64 + 5 + 64, 128, 7 * 64]
    assert st_.hotness(flat[[0, 2]]).tolist() == before.tolist()
    assert st_.node_of(flat[[0, 2]]).tolist() == [0, 0]
    assert st_.retry_vpn.tolist() == [193]
    assert st_.select([(st_.class_of(0), int(before[0]), 5)])[0].size == 0  # not sampled yet
    # new words: not present, no history, unknown node
    assert not int(st_.present[7]) and st_.node_of(flat[[4]]).tolist() == [-1]
    feed(st_, np.ones(st_.pages, bool), np.zeros(st_.pages, bool))
    h = st_.histograms()
    assert h.sum() == st_.pages - 4 * 64 + 64 * 4  # every page present now
    assert h[st_.class_of(0)].sum() == 2


def test_extents_from_vmas_skip_special_and_prot_none():
    vmas = [vma(0, 10), vma(10, 100), vma(1000, 64, perms="---p"), vma(5000, 1, path="[vdso]"),
            vma(3000, 65)]
    ext = Extents.from_vmas(vmas)
    assert ext.word_start.tolist() == [0, 46] and ext.nwords.tolist() == [2, 2]
    flat = np.arange(ext.pages)
    assert np.array_equal(ext.flat_of(ext.vpn_of(flat)), flat)
    assert ext.flat_of(np.array([200, 64 * 46 - 1])).tolist() == [-1, -1]


def test_page_bits_roundtrip():
    pages = np.array([5, 3, 64, 5, 130])
    w, m = page_bits(pages)
    assert w.tolist() == [0, 1, 2]
    assert words_to_pages(w, m).tolist() == [3, 5, 64, 130]


def test_set_window_keeps_newest_samples():
    st_ = PageState(Extents([0], [1]), 8, (0,))
    acc = np.zeros(64, bool)
    acc[1] = True
    feed(st_, np.ones(64, bool), np.zeros(64, bool))
    feed(st_, np.ones(64, bool), acc)
    feed(st_, np.ones(64, bool), np.zeros(64, bool))  # page 1: accessed one sample ago
    st_.set_window(2)
    assert st_.hotness(np.array([1]))[0] == hotness_reference(np.array([[0], [1]]), 2)[0]
    assert st_.histograms()[-1].sum() == 64
    st_.set_window(16)
    assert st_.hotness(np.array([1]))[0] == 1


def test_backoff_doubles_and_is_forgotten():
    st_ = PageState(Extents([0], [1]), 8, (0,))
    p = np.array([7])
    st_.fail(p, now=10, retry_after=3)
    assert st_.retry_until.tolist() == [13] and st_.backoff_pages == 1
    st_.expire(12, 3)
    assert st_.backoff_pages == 1
    st_.expire(13, 3)
    assert st_.backoff_pages == 0
    st_.fail(p, now=13, retry_after=3)
    assert st_.retry_fails.tolist() == [2] and st_.retry_until.tolist() == [19]
    st_.succeed(p)
    assert st_.retry_vpn.size == 0 and st_.backoff_pages == 0
    st_.fail(p, now=20, retry_after=3)
    st_.expire(26, 3)  # quiet for as long as the last wait: failures forgotten
    assert st_.retry_vpn.size == 0


@pytest.mark.parametrize("window,nodes", [(8, 2), (16, 4), (14, 2), (1, 1)])
def test_bytes_per_page_budget(window, nodes):
    """Measured from the arrays themselves (the issue's budget: <= 3 bytes per page): one bit
    per page for each history sample, each node, the two present planes and the backoff
    plane, the top counter's planes (a window below 16), plus per-chunk counters."""
    st_ = PageState(Extents([0], [1 << 14]), window, tuple(range(nodes)))  # 1M pages, 4 GiB
    top = 4 if window < 16 else 0
    assert st_.bytes_per_page <= (window + nodes + 3 + top) / 8 + 0.01
    assert st_.bytes_per_page <= 3.0
