"""PageState helpers and edges that the main state tests leave open (found by mutation
testing): duplicates, unsorted input, extent ends, the selection limit across requests and
chunks, the backoff cap, forgetting several failures at once."""

from __future__ import annotations

import numpy as np
from test_engine_state import feed

from tierd.engine.state import (
    BACKOFF_MAX_DOUBLINGS,
    Extents,
    PageState,
    _lowest_bits,
    page_bits,
    unique_sorted,
)


def test_unique_sorted_drops_duplicates():
    assert unique_sorted(np.array([3, 1, 3, 2, 2, 9])).tolist() == [1, 2, 3, 9]
    assert unique_sorted(np.array([4, 4])).tolist() == [4]
    assert unique_sorted(np.array([4, 4, 4])).tolist() == [4]
    assert unique_sorted(np.array([7])).tolist() == [7]
    assert unique_sorted(np.array([], np.int64)).tolist() == []
    assert unique_sorted([2**40 + 1, 2**40 + 1]).dtype == np.int64


def test_page_bits_sorts_two_pages_and_ors_duplicates():
    w, m = page_bits(np.array([65, 1]))
    assert w.tolist() == [0, 1] and m.tolist() == [2, 2]
    w, m = page_bits(np.array([5, 5, 6]))
    assert w.tolist() == [0] and m.tolist() == [0b1100000]
    w, m = page_bits(np.array([], np.int64))
    assert w.shape == (0,) and w.dtype == np.int64 and m.dtype == np.uint64


def test_flat_of_ends_of_extents():
    ext = Extents([2, 10], [1, 2])  # vpns 128..191 and 640..767
    vpns = np.array([127, 128, 191, 192, 639, 640, 767, 768])
    assert ext.flat_of(vpns).tolist() == [-1, 0, 63, -1, -1, 64, 191, -1]
    assert ext.vpn_of(np.array([0, 63, 64, 191])).tolist() == [128, 191, 640, 767]
    none = Extents([], [])
    assert none.flat_of(np.array([[1, 2]])).tolist() == [[-1, -1]]


def test_lowest_bits():
    assert _lowest_bits(0b101101000, 2) == 0b1000 + 0b100000
    assert _lowest_bits(0b101101000, 0) == 0
    assert _lowest_bits(1 << 63, 1) == 1 << 63


def hot_state():
    """3 chunks of 64 pages, all present; chunks 0 and 1 accessed in the last sample, chunk 2
    not: (state, hot level, unknown class)."""
    st_ = PageState(Extents([0], [3]), 4, (0, 1), chunk_words=1)
    present = np.ones(192, bool)
    acc = np.zeros(192, bool)
    acc[:128] = True
    feed(st_, present, np.zeros(192, bool))
    feed(st_, present, acc)
    return st_, int(st_.hotness(np.array([0]))[0]), st_.unknown


def test_select_finds_a_later_request_past_a_chunk_with_nothing_left_to_take():
    st_, hot, unk = hot_state()
    assert hot > 0
    # chunk 0 serves the hot request, chunk 1 has only hot pages (no longer needed),
    # chunk 2 holds the cold page asked for
    got = st_.select([(unk, hot, 1), (unk, 0, 1)])
    assert [g.tolist() for g in got] == [[0], [128]]


def test_select_limit_counts_across_requests():
    st_, hot, unk = hot_state()
    got = st_.select([(unk, hot, 3), (unk, 0, 3)], limit=5)
    assert [g.tolist() for g in got] == [[0, 1, 2], [128, 129]]
    got = st_.select([(unk, hot, 100), (unk, 0, 100)], limit=70)
    assert [g.size for g in got] == [70, 0]  # the limit spans the chunks of one request
    assert [g.size for g in st_.select([(unk, hot, 3)], limit=0)] == [0]


def test_backoff_stops_doubling_at_the_cap():
    st_ = PageState(Extents([0], [1]), 8, (0,))
    p = np.array([7])
    for now in range(20):
        st_.fail(p, now=now, retry_after=3)
    assert st_.retry_fails.tolist() == [BACKOFF_MAX_DOUBLINGS + 1]
    assert st_.retry_until.tolist() == [19 + 3 * 2**BACKOFF_MAX_DOUBLINGS]


def test_succeed_forgets_exactly_the_pages_given():
    st_ = PageState(Extents([0], [1]), 8, (0,))
    st_.fail(np.array([3, 7, 9]), now=1, retry_after=2)
    st_.succeed(np.array([9, 3]))
    assert st_.retry_vpn.tolist() == [7] and st_.backoff_pages == 1


def test_remap_keeps_backoff_of_pages_still_tracked_including_the_first():
    st_ = PageState(Extents([0, 10], [1, 1]), 8, (0,))
    feed(st_, np.ones(128, bool), np.zeros(128, bool))
    st_.fail(np.array([0, 64]), now=1, retry_after=2)  # vpn 0 and vpn 640
    st_.remap(Extents([0], [2]))  # the second region is unmapped, the first grows
    assert st_.retry_vpn.tolist() == [0] and st_.retry_until.tolist() == [3]
    assert st_.backoff_pages == 1
    st_.expire(now=3, retry_after=2)
    assert st_.backoff_pages == 0


def test_set_node_unsorted_pages_with_a_node_each():
    st_ = PageState(Extents([0], [2]), 8, (0, 1), chunk_words=1)
    feed(st_, np.ones(128, bool), np.zeros(128, bool))
    unk = st_.unknown
    st_.set_node(np.array([70, 3, 65, 9]), 0, unk, np.array([1, 0, -1, 1]))
    assert st_.node_of(np.array([70, 3, 65, 9, 4])).tolist() == [1, 0, -1, 1, -1]
    h = st_.histograms()
    assert (h[0, 0], h[1, 0], h[unk, 0]) == (1, 2, 125)


def test_extents_skip_every_special_mapping_with_or_without_the_attribute():
    from types import SimpleNamespace

    from tierd.linux.procfs import Vma

    def v(page, path):
        return Vma(page * 4096, (page + 1) * 4096, "r-xp", 0, "00:00", 0, path)

    # Vma knows its special mappings ([uprobes] is one only Vma.special lists)
    ext = Extents.from_vmas([v(0, ""), v(128, "[uprobes]"), v(256, "[vvar]")])
    assert ext.word_start.tolist() == [0] and ext.nwords.tolist() == [1]
    # duck-typed mappings without .special: by path
    # one page each, two words apart (so that kept neighbours do not merge)
    ns = [SimpleNamespace(start=p * 128 * 4096, end=(p * 128 + 1) * 4096, perms="r--p", path=path)
          for p, path in enumerate(["", "[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", "x"])]
    ext = Extents.from_vmas(ns)
    assert ext.word_start.tolist() == [0, 10] and ext.nwords.tolist() == [1, 1]


def test_extents_repr_and_equality():
    # word 2 = vpn 0x80, word 10 = vpn 0x280
    assert repr(Extents([2, 10], [1, 2])) == "Extents(0x80+64p, 0x280+128p)"
    assert Extents([2], [1]) == Extents([2], [1])
    assert Extents([2], [1]) != Extents([3], [1]) and Extents([2], [1]) != Extents([2], [2])


def test_extents_must_be_ascending_disjoint_and_non_empty():
    import pytest

    assert Extents([0, 2], [2, 1]).words == 3  # touching is fine
    for ws, nw in (([0, 1], [2, 1]), ([4, 0], [1, 1]), ([0], [0]), ([0, 5, 6], [1, 3, 1])):
        with pytest.raises(ValueError, match="^extents must be ascending, disjoint and non-empty$"):
            Extents(ws, nw)


def test_accessed_without_present_is_not_an_access():
    st_ = PageState(Extents([0], [1]), 8, (0,))
    present = np.ones(64, bool)
    present[5] = False
    feed(st_, present, np.zeros(64, bool))
    acc = np.zeros(64, bool)
    acc[[5, 6]] = True  # page 5: a broken record says accessed but not present
    feed(st_, present, acc)
    assert st_.hotness(np.array([5, 6])).tolist() == [0, 4]
    assert st_.histograms().sum() == 63


def test_mark_absent_touches_only_the_pages_given():
    st_ = PageState(Extents([0], [1]), 8, (0,))
    present = np.ones(64, bool)
    present[10] = False
    feed(st_, present, np.zeros(64, bool))
    st_.mark_absent(np.array([3]), 0, st_.unknown)
    assert st_.histograms().sum() == 62  # 64 - page 10 (never there) - page 3
    assert int(st_.present[0]) == (2**64 - 1) & ~(1 << 3) & ~(1 << 10)
    feed(st_, present, present)  # page 3 is back (fresh), page 10 still not there
    assert st_.histograms().sum() == 63


def test_two_requests_for_one_class_and_level_get_both_counts():
    st_, hot, unk = hot_state()
    got = st_.select([(unk, 0, 2), (unk, 0, 3)])
    assert [g.tolist() for g in got] == [[128, 129], [130, 131, 132]]


def test_growing_the_window_keeps_the_order_of_samples():
    from tierd.engine.hotness import hotness_reference

    st_ = PageState(Extents([0], [2]), 3, (0,))  # one chunk of two words
    rows = []
    feed(st_, np.ones(128, bool), np.zeros(128, bool))
    for k in range(3):  # page k accessed in sample k only; pages 8+ every time
        acc = np.zeros(128, bool)
        acc[k] = True
        acc[8:] = True
        feed(st_, np.ones(128, bool), acc)
        rows.insert(0, acc[:4])
    st_.set_window(6)
    # newest first; rows 3-5 of the longer window: no samples yet
    want = hotness_reference(np.array(rows + [[False] * 4] * 3), 6)
    assert st_.hotness(np.arange(4)).tolist() == want.tolist()
    feed(st_, np.ones(128, bool), np.zeros(128, bool))  # and the new window keeps working
    assert st_.histograms().sum() == 128


def test_select_limit_of_one_page_into_the_next_chunk():
    st_, hot, unk = hot_state()
    (got,) = st_.select([(unk, hot, 100)], limit=65)
    assert got.tolist() == list(range(65))


def test_select_skips_a_level_in_backoff_for_the_next_request_in_the_same_chunk():
    st_ = PageState(Extents([0], [1]), 4, (0, 1), chunk_words=1)
    acc = np.zeros(64, bool)
    acc[:32] = True
    feed(st_, np.ones(64, bool), np.zeros(64, bool))
    feed(st_, np.ones(64, bool), acc)
    hot, unk = int(st_.hotness(np.array([0]))[0]), st_.unknown
    st_.fail(np.arange(32), now=1, retry_after=5)  # every hot page waits
    got = st_.select([(unk, hot, 1), (unk, 0, 1)])
    assert [g.tolist() for g in got] == [[], [32]]


def test_a_chunk_that_emptied_does_not_stop_the_later_chunks():
    st_ = PageState(Extents([0], [3]), 4, (0,), chunk_words=1)
    present = np.ones(192, bool)
    acc = np.zeros(192, bool)
    acc[64:128] = True  # chunk 1 accessed
    feed(st_, present, np.zeros(192, bool))
    feed(st_, present, acc)
    present2 = present.copy()
    present2[64:128] = False  # chunk 1 unmapped in the next sample
    acc2 = np.zeros(192, bool)
    acc2[128:130] = True  # two pages of chunk 2 accessed
    feed(st_, present2, acc2)
    h = st_.histograms().sum(axis=0)
    assert h.sum() == 128 and h[0] == 126  # chunk 0 + chunk 2, two of them hot


def test_set_node_pages_unsorted_after_the_first():
    st_ = PageState(Extents([0], [2]), 8, (0, 1), chunk_words=1)
    feed(st_, np.ones(128, bool), np.zeros(128, bool))
    st_.set_node(np.array([3, 70, 65, 9]), 0, st_.unknown, np.array([0, 1, 0, 1]))
    assert st_.node_of(np.array([3, 9, 65, 70])).tolist() == [0, 1, 0, 1]
