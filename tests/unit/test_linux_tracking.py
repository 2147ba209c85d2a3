"""tierd.linux.tracking: both readers on byte strings written into fixture files.

IdleBitmapReader reads the record format of issue 3 / docs/design.md from a regular file.
PageIdleReader reads a fake pagemap, /proc/kpageflags and page_idle bitmap; the bitmap file
also records what the reader writes back, which these tests check (and then "access" pages by
clearing their bits, as the kernel's rmap walk would).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from fds import opened_since, snapshot
from hypothesis import given
from hypothesis import strategies as st

from tierd.linux import FeatureMissing, IdleBitmapReader, PageIdleReader, ProcessGone
from tierd.linux.tracking import (
    AccessReader,
    extents,
    pack_bits,
    popcount,
    unpack_words,
)
from tierd.pages import KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL, KPF_LRU, KPF_THP, KPF_ZERO_PAGE

PRESENT = 1 << 63


# -- helpers shared by both readers ----------------------------------------------------------------


def test_extents_round_out_and_merge():
    # VMAs (bytes): [0x1000,0x3000) and [0x3f000,0x41000) touch word 0 and words 0..1 -> merge;
    # a far VMA stays separate; input order does not matter.
    far = 0x7F0000000000
    ws, nw = extents([far, 0x1000, 0x3F000], [far + 0x1000, 0x3000, 0x41000])
    assert ws.tolist() == [0, far >> 18]
    assert nw.tolist() == [2, 1]
    assert extents([], [])[0].size == 0


def test_extents_adjacent_words_merge_but_gaps_do_not():
    w = 1 << 18  # bytes per word
    ws, nw = extents([0, w, 3 * w], [w, 2 * w, 4 * w])
    assert ws.tolist() == [0, 3] and nw.tolist() == [2, 1]


@given(st.lists(st.tuples(st.integers(0, 1 << 35), st.integers(1, 5000)), max_size=30))
def test_extents_properties(vmas):
    starts = [s << 12 for s, _ in vmas]
    ends = [(s + n) << 12 for s, n in vmas]
    ws, nw = extents(starts, ends)
    assert (nw > 0).all()
    assert (ws[1:] > ws[:-1] + nw[:-1]).all()  # ascending, disjoint, not even touching
    covered = set()
    for w, n in zip(ws.tolist(), nw.tolist()):
        covered.update(range(w, w + n))
    needed = set()
    for s, n in vmas:
        needed.update(range(s >> 6, ((s + n - 1) >> 6) + 1))
    assert covered == needed  # every word of every VMA, and nothing else


def test_pack_unpack_round_trip():
    rng = np.random.default_rng(1)
    bits = rng.random(64 * 5) < 0.3
    words = pack_bits(bits)
    assert words.dtype == np.uint64 and words.size == 5
    assert (unpack_words(words) == bits).all()
    assert popcount(words) == int(bits.sum())
    assert unpack_words(np.array([1 | (1 << 63)], np.uint64)).nonzero()[0].tolist() == [0, 63]
    with pytest.raises(ValueError):
        pack_bits(np.zeros(10, bool))


# -- IdleBitmapReader ----------------------------------------------------------------------------


def write_idle_bitmap(path, records: dict[int, tuple[int, int]], nrec: int | None = None):
    n = nrec if nrec is not None else (max(records) + 1 if records else 0)
    buf = np.zeros((n, 2), dtype="<u8")
    for i, (p, idle) in records.items():
        buf[i] = (p, idle)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(buf.tobytes())


def test_idle_bitmap_present_and_accessed(tmp_path):
    write_idle_bitmap(tmp_path / "10/idle_bitmap", {
        5: (0b1111, 0b0101),         # pages 0-3 present, 0 and 2 idle -> 1 and 3 accessed
        6: (1 << 63, 0),             # page 63 present and accessed
        7: (0xFF, 0xFF),             # all present pages idle
    })
    r = IdleBitmapReader(str(tmp_path))
    assert isinstance(r, AccessReader) and r.name == "idle_bitmap"
    present, accessed = r.sample(10, 5, 4)  # record 8 is past the end of the file: zeros
    assert present.dtype == np.uint64 and accessed.dtype == np.uint64
    assert present.tolist() == [0b1111, 1 << 63, 0xFF, 0]
    assert accessed.tolist() == [0b1010, 1 << 63, 0, 0]
    r.close_all()


def test_idle_bitmap_offsets_are_16_bytes_per_word(tmp_path):
    recs = {i: (i + 1, 0) for i in range(40)}
    write_idle_bitmap(tmp_path / "10/idle_bitmap", recs)
    with IdleBitmapReader(str(tmp_path), chunk_words=7) as r:  # several preads per range
        present, accessed = r.sample(10, 3, 30)
    assert present.tolist() == list(range(4, 34))
    assert accessed.tolist() == present.tolist()


def test_idle_bitmap_accessed_implies_present(tmp_path):
    # A broken record with idle bits outside present must not create accessed pages.
    write_idle_bitmap(tmp_path / "10/idle_bitmap", {0: (0b0011, 0b1100)})
    with IdleBitmapReader(str(tmp_path)) as r:
        present, accessed = r.sample(10, 0, 1)
    assert accessed.tolist() == [0b0011] and (accessed & ~present).tolist() == [0]


def test_idle_bitmap_keeps_fd_per_pid_and_closes(tmp_path):
    write_idle_bitmap(tmp_path / "10/idle_bitmap", {0: (1, 0)})
    write_idle_bitmap(tmp_path / "11/idle_bitmap", {0: (3, 0)})
    before = snapshot()
    r = IdleBitmapReader(str(tmp_path))
    r.sample(10, 0, 1)
    r.sample(10, 0, 1)
    r.sample(11, 0, 1)
    assert opened_since(before) == 2
    r.close(10)
    assert opened_since(before) == 1
    r.close(10)  # closing twice is harmless
    r.close_all()
    assert opened_since(before) == 0


def test_idle_bitmap_process_gone(tmp_path):
    r = IdleBitmapReader(str(tmp_path))
    before = snapshot()
    with pytest.raises(ProcessGone):
        r.sample(12, 0, 1)  # no /proc/12
    write_idle_bitmap(tmp_path / "13/idle_bitmap", {}, nrec=0)  # EOF at record 0: mm gone
    with pytest.raises(ProcessGone):
        r.sample(13, 100, 2)
    assert opened_since(before) == 0  # the descriptor of 13 was closed when it was found gone


def test_idle_bitmap_missing_file_is_feature_missing(tmp_path):
    (tmp_path / "14").mkdir()
    with pytest.raises(FeatureMissing, match="kernel/patches"):
        IdleBitmapReader(str(tmp_path)).sample(14, 0, 1)


# -- PageIdleReader ------------------------------------------------------------------------------


class PageIdleTree:
    """A fake /proc + /sys with pagemap, kpageflags and page_idle/bitmap files."""

    def __init__(self, root, pid=20, npfn=1 << 16):
        self.root = root
        self.pid = pid
        self.proc = root / "proc"
        self.sys = root / "sys"
        (self.proc / str(pid)).mkdir(parents=True)
        (self.sys / "kernel/mm/page_idle").mkdir(parents=True)
        self.pagemap = np.zeros(4096, dtype="<u8")
        self.kpf = np.zeros(npfn, dtype="<u8")
        self.flush()
        self.set_bitmap(np.zeros(npfn // 64, dtype="<u8"))

    def map(self, vpn, pfn, flags=1 << KPF_LRU):
        vpn = np.atleast_1d(vpn)
        pfn = np.atleast_1d(pfn).astype(np.uint64)
        self.pagemap[vpn] = np.uint64(PRESENT) | pfn
        self.kpf[pfn] = flags
        self.flush()

    def flush(self):
        (self.proc / str(self.pid) / "pagemap").write_bytes(self.pagemap.tobytes())
        (self.proc / "kpageflags").write_bytes(self.kpf.tobytes())

    def set_bitmap(self, words):
        (self.sys / "kernel/mm/page_idle/bitmap").write_bytes(np.asarray(words, "<u8").tobytes())

    def bitmap(self):
        return np.frombuffer((self.sys / "kernel/mm/page_idle/bitmap").read_bytes(), "<u8").copy()

    def access(self, pfns):
        """What the kernel does when a page is referenced: its idle bit reads 0 again."""
        b = self.bitmap()
        for p in np.atleast_1d(pfns):
            b[int(p) >> 6] &= ~np.uint64(1 << (int(p) & 63))
        self.set_bitmap(b)

    def reader(self, **kw):
        return PageIdleReader(str(self.proc), str(self.sys), **kw)


def bits_of(words, n=None):
    b = np.flatnonzero(unpack_words(words))
    return b.tolist() if n is None else b[b < n].tolist()


def test_page_idle_first_sample_reports_all_present_then_marks_idle(tmp_path):
    t = PageIdleTree(tmp_path)
    t.map([64, 65, 70], [1000, 5000, 1001])  # vpn 64.. = word 1
    r = t.reader()
    present, accessed = r.sample(t.pid, 1, 1)
    assert bits_of(present) == [0, 1, 6]
    assert bits_of(accessed) == [0, 1, 6]
    # Exactly our PFNs' bits were written (1000, 1001 share word 15; 5000 is in word 78).
    b = t.bitmap()
    assert b[1000 >> 6] == (1 << (1000 & 63)) | (1 << (1001 & 63))
    assert b[5000 >> 6] == 1 << (5000 & 63)
    assert int(np.count_nonzero(b)) == 2
    r.close_all()


def test_page_idle_second_sample_reports_only_accessed(tmp_path):
    t = PageIdleTree(tmp_path)
    t.map(np.arange(64, 128), np.arange(2000, 2064))
    with t.reader() as r:
        r.sample(t.pid, 1, 1)
        t.access([2003, 2040])
        present, accessed = r.sample(t.pid, 1, 1)
        assert popcount(present) == 64
        assert bits_of(accessed) == [3, 40]
        # Nothing touched since: nothing accessed.
        present, accessed = r.sample(t.pid, 1, 1)
        assert popcount(accessed) == 0 and popcount(present) == 64


def test_page_idle_thp_tail_pages_follow_their_head(tmp_path):
    """page_idle_get_folio() returns NULL for tail pages: only the head's bit means anything."""
    t = PageIdleTree(tmp_path)
    head = 4096  # 512-aligned PFN
    flags_head = (1 << KPF_COMPOUND_HEAD) | (1 << KPF_THP) | (1 << KPF_LRU)
    flags_tail = (1 << KPF_COMPOUND_TAIL) | (1 << KPF_THP) | (1 << KPF_LRU)
    t.map(512, head, flags_head)
    t.map(np.arange(513, 1024), np.arange(head + 1, head + 512), flags_tail)
    with t.reader() as r:
        r.sample(t.pid, 8, 8)  # words 8..15 = vpn 512..1023
        # Only the head bit was written: tails are meaningless in the bitmap.
        b = t.bitmap()
        assert b[head >> 6] == 1 and int(np.count_nonzero(b)) == 1
        present, accessed = r.sample(t.pid, 8, 8)
        assert popcount(present) == 512 and popcount(accessed) == 0  # tails read 0 but are idle
        t.access(head)
        present, accessed = r.sample(t.pid, 8, 8)
        assert popcount(accessed) == 512


def test_page_idle_partially_mapped_thp_finds_head_by_alignment(tmp_path):
    """A range that maps only tails (head not in the range) still uses the head's bit."""
    t = PageIdleTree(tmp_path)
    head = 8192
    t.kpf[head] = (1 << KPF_COMPOUND_HEAD) | (1 << KPF_THP) | (1 << KPF_LRU)
    tails = np.arange(head + 100, head + 164)
    t.map(np.arange(64, 128), tails, (1 << KPF_COMPOUND_TAIL) | (1 << KPF_THP))
    with t.reader() as r:
        r.sample(t.pid, 1, 1)
        assert t.bitmap()[head >> 6] == 1
        _, accessed = r.sample(t.pid, 1, 1)
        assert popcount(accessed) == 0
        t.access(head)
        _, accessed = r.sample(t.pid, 1, 1)
        assert popcount(accessed) == 64


def test_page_idle_small_order_folio_head(tmp_path):
    """mTHP (order 2): head at the 4-aligned PFN below the tail."""
    t = PageIdleTree(tmp_path)
    t.map([0, 1, 2, 3], [4100, 4101, 4102, 4103], 0)
    t.kpf[4100] = 1 << KPF_COMPOUND_HEAD
    t.kpf[4101:4104] = 1 << KPF_COMPOUND_TAIL
    t.flush()
    with t.reader() as r:
        r.sample(t.pid, 0, 1)
        assert t.bitmap()[4100 >> 6] == 1 << (4100 & 63)
        t.access(4100)
        _, accessed = r.sample(t.pid, 0, 1)
        assert bits_of(accessed) == [0, 1, 2, 3]


def test_page_idle_zero_page_is_not_present(tmp_path):
    t = PageIdleTree(tmp_path)
    t.map([0, 1], [300, 301])
    t.map([2, 3], [999, 999], 1 << KPF_ZERO_PAGE)  # the shared zero page, mapped twice
    with t.reader() as r:
        present, accessed = r.sample(t.pid, 0, 1)
        assert bits_of(present) == [0, 1] and bits_of(accessed) == [0, 1]
        assert t.bitmap()[999 >> 6] & np.uint64(1 << (999 & 63)) == 0


def test_page_idle_merges_nearby_words_and_skips_far_ones(tmp_path):
    t = PageIdleTree(tmp_path)
    t.map([0, 1, 2], [64 * 10, 64 * 12, 64 * 900])
    t.set_bitmap(np.full(1024, 0xFFFF0000, dtype="<u8"))  # foreign bits: must survive in gaps?
    with t.reader(merge_gap_words=8) as r:
        r.sample(t.pid, 0, 1)
    b = t.bitmap()
    # Words 10 and 12 are written in one span (word 11 written as 0: a no-op for the kernel);
    # word 900 separately; words far away are untouched.
    assert b[10] == 1 and b[12] == 1 and b[900] == 1 and b[11] == 0
    assert b[500] == 0xFFFF0000 and b[13] == 0xFFFF0000


def test_page_idle_without_pfns_needs_cap_sys_admin(tmp_path):
    t = PageIdleTree(tmp_path)
    t.pagemap[5] = PRESENT  # present, PFN hidden (unprivileged reader since Linux 4.2)
    t.flush()
    with pytest.raises(FeatureMissing, match="CAP_SYS_ADMIN"):
        t.reader().sample(t.pid, 0, 1)


def test_page_idle_missing_bitmap_is_feature_missing(tmp_path):
    t = PageIdleTree(tmp_path)
    t.map(0, 10)
    os.remove(t.sys / "kernel/mm/page_idle/bitmap")
    with pytest.raises(FeatureMissing, match="CONFIG_IDLE_PAGE_TRACKING"):
        t.reader().sample(t.pid, 0, 1)


def test_page_idle_process_gone_and_close(tmp_path):
    t = PageIdleTree(tmp_path)
    t.map(0, 10)
    before = snapshot()
    r = t.reader()
    r.sample(t.pid, 0, 1)
    assert opened_since(before) == 3  # pagemap, kpageflags, bitmap
    (t.proc / str(t.pid) / "pagemap").write_bytes(b"")  # mm gone: EOF
    with pytest.raises(ProcessGone):
        r.sample(t.pid, 0, 1)
    assert opened_since(before) == 2  # the pid's pagemap was closed
    with pytest.raises(ProcessGone):
        r.sample(999, 0, 1)
    r.close_all()
    assert opened_since(before) == 0


def test_page_idle_large_range_in_chunks(tmp_path):
    t = PageIdleTree(tmp_path)
    vpns = np.arange(0, 4096, 7)
    t.map(vpns, 10000 + vpns)
    with t.reader(chunk_words=5) as r:
        present, _ = r.sample(t.pid, 0, 64)
        assert bits_of(present) == vpns.tolist()
        t.access(10000 + vpns[::3])
        _, accessed = r.sample(t.pid, 0, 64)
        assert bits_of(accessed) == vpns[::3].tolist()


def test_page_idle_first_sample_follows_words_not_extents(tmp_path):
    """Issue 17 #5: a mapping that grows, shrinks or merges with a neighbour keeps the
    history of the words it had; only words never sampled read as all accessed.  (Keyed on
    (word_start, nwords), every change of an extent's bounds made all its pages read
    accessed: 19 of 19 samples of an allocator-heavy process had such changes.)"""
    t = PageIdleTree(tmp_path)
    # words 1..7, all present; word k's PFNs fill bitmap word 49 + k (the fixture's bitmap
    # file is overwritten by a write, where the kernel only sets bits: no shared words)
    t.map(np.arange(64, 64 * 8), 3200 + np.arange(64 * 7))
    with t.reader() as r:
        assert popcount(r.sample(t.pid, 1, 2)[1]) == 128  # first sample: words 1-2 accessed
        _, accessed = r.sample(t.pid, 1, 3)  # the mapping grew by word 3
        assert bits_of(accessed) == list(range(128, 192))  # only the new word is "first"
        t.access([3200 + 5, 3200 + 64 * 2 + 9])  # a page of word 1 and one of word 3
        _, accessed = r.sample(t.pid, 1, 2)  # it shrank back to words 1-2
        assert bits_of(accessed) == [5]
        # two neighbours sampled apart, then as one extent (an mmap between them merged them)
        r.sample(t.pid, 5, 1)
        r.sample(t.pid, 6, 2)
        t.access([3200 + 64 * 4 + 1])  # page 1 of word 5
        _, accessed = r.sample(t.pid, 4, 4)  # words 4-7: word 4 is new, 5-7 had samples
        assert bits_of(accessed) == list(range(64)) + [64 + 1]
        r.close(t.pid)  # forgotten with the process
        assert popcount(r.sample(t.pid, 1, 2)[1]) == 128


def test_covered_word_runs_merge_and_report_what_is_new():
    from tierd.linux.tracking import Covered

    c = Covered()
    assert c.missing(0, 10) == [(0, 10)]
    c.add(0, 10)
    c.add(20, 30)
    assert (c.lo, c.hi) == ([0, 20], [10, 30])
    assert c.missing(5, 25) == [(10, 20)]
    assert c.missing(0, 40) == [(10, 20), (30, 40)]
    assert c.missing(2, 8) == [] and c.missing(40, 40) == []
    c.add(10, 20)  # touching both: one run
    assert (c.lo, c.hi) == ([0], [30])
    c.add(35, 36)
    c.add(31, 34)
    c.add(33, 40)
    assert (c.lo, c.hi) == ([0, 31], [30, 40])
    rng = np.random.default_rng(7)
    model = np.zeros(300, bool)
    c = Covered()
    for _ in range(300):  # against a word-by-word model
        a, b = sorted(rng.integers(0, 300, 2).tolist())
        miss = np.zeros(300, bool)
        for x, y in c.missing(a, b):
            miss[x:y] = True
        want = np.zeros(300, bool)
        want[a:b] = ~model[a:b]
        assert (miss == want).all()
        c.add(a, b)
        model[a:b] = True
        assert all(lo < hi for lo, hi in zip(c.lo, c.hi))
        assert all(h < lo for h, lo in zip(c.hi, c.lo[1:]))  # disjoint, not touching


def test_unique_inverse_matches_numpy():
    from tierd.linux.tracking import _unique_inverse

    a = np.random.default_rng(3).integers(0, 500, 5000).astype(np.uint64)
    u, inv = _unique_inverse(a)
    assert (np.diff(u) > 0).all() and (u[inv] == a).all()
    assert u.tolist() == np.unique(a).tolist()


# -- IdleBitmapReader: split alignment, execve, the gone check (issue 9) -----------------------


def _spy_preads(monkeypatch, fail=None):
    """Record (first word, words) of every idle_bitmap pread; ``fail(call_no)`` may return an
    errno to raise instead."""
    from tierd.linux import tracking

    calls = []
    real = tracking.pread_full

    def spy(fd, length, offset, *a):
        calls.append((offset // 16, length // 16))
        err = fail(len(calls)) if fail else None
        if err:
            raise OSError(err, os.strerror(err))
        return real(fd, length, offset, *a)

    monkeypatch.setattr(tracking, "pread_full", spy)
    return calls


def test_idle_bitmap_splits_at_multiples_of_chunk_words_of_the_address_space(tmp_path, monkeypatch):
    from tierd.linux.tracking import HUGE_ALIGN_WORDS

    write_idle_bitmap(tmp_path / "10/idle_bitmap", {i: (i + 1, 0) for i in range(14100)})
    calls = _spy_preads(monkeypatch)
    with IdleBitmapReader(str(tmp_path), chunk_words=4096) as r:
        present, _ = r.sample(10, 4000, 10000)
    assert calls == [(4000, 96), (4096, 4096), (8192, 4096), (12288, 1712)]
    assert present.tolist() == list(range(4001, 14001))
    # The default never splits a 1 GiB page (4096 words) between two reads.
    assert IdleBitmapReader().chunk_words % HUGE_ALIGN_WORDS == 0
    with pytest.raises(ValueError):
        IdleBitmapReader(str(tmp_path), chunk_words=0)


def test_idle_bitmap_range_inside_one_chunk_is_one_read(tmp_path, monkeypatch):
    write_idle_bitmap(tmp_path / "10/idle_bitmap", {i: (1, 0) for i in range(100)})
    calls = _spy_preads(monkeypatch)
    with IdleBitmapReader(str(tmp_path), chunk_words=64) as r:
        r.sample(10, 64, 64)
        r.sample(10, 65, 10)
    assert calls == [(64, 64), (65, 10)]


def test_idle_bitmap_esrch_is_gone_even_while_proc_pid_exists(tmp_path, monkeypatch):
    """ESRCH on a live /proc/PID is execve() (the descriptor's address space is gone) or, by
    pid, another process holding the pid now: opening again by pid cannot tell them apart,
    so it is never done; a new address space is a new process to tierd (issue 17)."""
    import errno

    write_idle_bitmap(tmp_path / "10/idle_bitmap", {0: (0b111, 0b001)})
    calls = _spy_preads(monkeypatch, fail=lambda n: errno.ESRCH if n == 1 else None)
    before = snapshot()
    r = IdleBitmapReader(str(tmp_path))
    with pytest.raises(ProcessGone, match="execve"):
        r.sample(10, 0, 1)
    assert len(calls) == 1  # not opened again
    assert opened_since(before) == 0  # and its descriptor closed


def test_idle_bitmap_esrch_without_proc_pid_is_gone_at_once(tmp_path, monkeypatch):
    import errno
    import shutil

    write_idle_bitmap(tmp_path / "10/idle_bitmap", {0: (1, 0)})
    r = IdleBitmapReader(str(tmp_path))
    r.sample(10, 0, 1)

    def gone(n):
        shutil.rmtree(tmp_path / "10", ignore_errors=True)
        return errno.ESRCH

    calls = _spy_preads(monkeypatch, fail=gone)
    with pytest.raises(ProcessGone):
        r.sample(10, 0, 1)
    assert len(calls) == 1


def test_idle_bitmap_gone_check_reads_record_0_without_clearing(tmp_path, monkeypatch):
    """A 0-byte read (past the end of the address space) is checked with an O_RDONLY probe of
    record 0: a probe through the O_RDWR descriptor would clear Accessed bits."""
    from tierd.linux import procfs

    write_idle_bitmap(tmp_path / "10/idle_bitmap", {0: (1, 0)})
    flags = []
    real_open = procfs.ProcFS.open

    def spy_open(self, pid, name, fl=os.O_RDONLY):
        flags.append(fl & os.O_ACCMODE)
        return real_open(self, pid, name, fl)

    monkeypatch.setattr(procfs.ProcFS, "open", spy_open)
    before = snapshot()
    with IdleBitmapReader(str(tmp_path)) as r:
        present, accessed = r.sample(10, 100, 2)  # past the end: zeros, the process lives
        assert present.tolist() == [0, 0] and accessed.tolist() == [0, 0]
    assert flags == [os.O_RDWR, os.O_RDONLY]
    assert opened_since(before) == 0  # the probe's descriptor is closed
