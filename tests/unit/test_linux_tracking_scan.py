"""idle_bitmap v3: the IDLE_BITMAP_SCAN reader path and page-granular extents.

The kernel's ioctl is replaced by a model (per-page present/accessed sets) that behaves as
the patch documents: records of [start, end) only, the first for start's 64 pages, zeros
outside the range, clearing exactly the pages it reports, and stopping early at walk_end
when asked to.  The real ioctl is exercised in the VM (tests/vm/guest).
"""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from engine_fakes import PAGE, FakeKernel, FakeReader
from hypothesis import given
from hypothesis import strategies as st

from tierd.engine.state import Extents
from tierd.linux import tracking
from tierd.linux.errors import ProcessGone
from tierd.linux.procfs import Vma
from tierd.linux.tracking import IDLE_BITMAP_SCAN, IdleBitmapReader, untracked_holes
from test_linux_tracking_edges import two_samples_beside_a_prot_none_neighbour

PID = 4242
BASE = 0x7F00_0000_0000  # 64-page aligned


class ScanModel:
    """What the kernel holds for one process: present and accessed vpns."""

    def __init__(self, present, accessed, stop_every: int = 0):
        self.present, self.accessed = set(present), set(accessed)
        self.calls: list[tuple[int, int, int]] = []
        self.stop_every = stop_every  # end a walk early after this many pages (0: never)
        self.errno = 0

    def __call__(self, fd, start, end, vec, flags):
        if self.errno:
            raise OSError(self.errno, os.strerror(self.errno))
        a, b = start // PAGE, end // PAGE
        self.calls.append((a, b, flags))
        if self.stop_every and b - a > self.stop_every:
            b = a + self.stop_every
        base = a // 64
        n = (b - 1) // 64 - base + 1 if b > a else 0
        assert n <= vec.size // 2, "vec too short"
        vec = vec.reshape(-1)  # a view: records as (present, idle) word pairs
        vec[: 2 * n] = 0
        for v in range(a, b):
            if v in self.present:
                w, bit = divmod(v - 64 * base, 64)
                vec[2 * w] |= np.uint64(1 << bit)
                if v not in self.accessed:
                    vec[2 * w + 1] |= np.uint64(1 << bit)
                elif flags & tracking.IDLE_BITMAP_SCAN_CLEAR:
                    self.accessed.discard(v)
        return n, b * PAGE


@pytest.fixture
def reader(tmp_path, monkeypatch):
    (tmp_path / str(PID)).mkdir()
    (tmp_path / str(PID) / "idle_bitmap").write_bytes(b"")
    r = IdleBitmapReader(str(tmp_path), scan=True)
    yield r
    r.close_all()


def bits(words: np.ndarray) -> set[int]:
    return {64 * w + b for w in range(words.size) for b in range(64) if int(words[w]) >> b & 1}


def test_request_number_is_iowr_f_18_of_56_bytes():
    assert tracking.SCAN_ARG.size == 56
    assert IDLE_BITMAP_SCAN == 0xC0386612


def test_scan_reports_and_clears_around_the_skipped_pages(reader, monkeypatch):
    w0 = BASE // PAGE // 64
    present = range(64 * w0, 64 * w0 + 192)
    model = ScanModel(present, present)
    monkeypatch.setattr(tracking, "idle_bitmap_scan", model)
    skip = [(64 * w0 + 100, 64 * w0 + 140)]  # an untracked mapping inside words 1 and 2
    p, a = reader.sample(PID, w0, 3, skip=skip)
    inside = set(range(192)) - set(range(100, 140))
    assert bits(p) == inside and bits(a) == inside  # both pieces ORed into words 1 and 2
    # the skipped pages keep their Accessed bits, the others were cleared
    assert model.accessed == {64 * w0 + q for q in range(100, 140)}
    assert [(c[0] - 64 * w0, c[1] - 64 * w0) for c in model.calls] == [(0, 100), (140, 192)]
    p, a = reader.sample(PID, w0, 3, skip=skip)
    assert bits(p) == inside and not bits(a)


def test_scan_resumes_from_walk_end(reader, monkeypatch):
    model = ScanModel(range(0, 640), [3, 300, 639], stop_every=100)
    monkeypatch.setattr(tracking, "idle_bitmap_scan", model)
    p, a = reader.sample(PID, 0, 10)
    assert bits(p) == set(range(640)) and bits(a) == {3, 300, 639}
    assert len(model.calls) == 7 and not model.accessed


def test_scan_esrch_is_process_gone(reader, monkeypatch):
    model = ScanModel([], [])
    model.errno = errno.ESRCH
    monkeypatch.setattr(tracking, "idle_bitmap_scan", model)
    os.remove(os.path.join(reader.procfs.root, str(PID), "idle_bitmap"))
    os.rmdir(os.path.join(reader.procfs.root, str(PID)))
    reader._fds[PID] = os.open(os.devnull, os.O_RDONLY)
    with pytest.raises(ProcessGone):
        reader.sample(PID, 0, 1)


def test_v2_reader_refuses_to_skip(tmp_path):
    r = IdleBitmapReader(str(tmp_path))
    assert not r.page_granular
    with pytest.raises(ValueError, match="whole 64-page records"):
        r.sample(PID, 0, 2, skip=[(3, 4)])


@st.composite
def layouts(draw):
    """Disjoint VMAs in address order: (first page, pages, tracked)."""
    out, page = [], draw(st.integers(0, 200))
    for _ in range(draw(st.integers(0, 12))):
        page += draw(st.sampled_from([0, 0, 1, 63, 64, 65, 200]))
        n = draw(st.integers(1, 300))
        out.append((page, n, draw(st.booleans())))
        page += n
    return out


def vma(first_page: int, pages: int, perms: str = "rw-p", path: str = "") -> Vma:
    return Vma(BASE + first_page * PAGE, BASE + (first_page + pages) * PAGE, perms, 0, "00:00", 0,
               path)


@given(layouts())
def test_page_granular_extents_cover_every_tracked_page_and_no_untracked_one(layout):
    ext = Extents.from_vmas([vma(p, n, "rw-p" if t else "---p") for p, n, t in layout],
                            page_granular=True)
    b0 = BASE // PAGE
    tracked = {b0 + q for p, n, t in layout if t for q in range(p, p + n)}
    untracked = {b0 + q for p, n, t in layout if not t for q in range(p, p + n)}
    covered = set()
    for i, (w, n) in enumerate(zip(ext.word_start.tolist(), ext.nwords.tolist())):
        pages = set(range(64 * w, 64 * (w + n)))
        for lo, hi in ext.holes_of(i):
            assert 64 * w <= lo < hi <= 64 * (w + n)
            pages -= set(range(lo, hi))
        covered |= pages
    assert ext.edge_pages == 0
    assert tracked <= covered and not covered & untracked


def test_untracked_holes_are_clipped_to_the_words():
    lo, hi = untracked_holes([1], [2], [0, 150 * PAGE], [100 * PAGE, 400 * PAGE])
    assert lo.tolist() == [64, 150] and hi.tolist() == [100, 192]


class PageGranularReader(FakeReader):
    """The fake reader, page-granular as idle_bitmap v3: skipped pages are neither reported
    nor cleared."""

    page_granular = True

    def __init__(self, kernel):
        super().__init__(kernel)
        self.skips = []

    def sample(self, pid, word_start, nwords, skip=()):
        self.skips.append(list(skip))
        proc = self.kernel.proc(pid)
        keep = {v for v in proc.next_access if any(a <= v < b for a, b in skip)}
        p, a = super().sample(pid, word_start, nwords)
        for lo, hi in skip:
            for v in range(lo, hi):
                w, b = divmod(v - 64 * word_start, 64)
                if 0 <= w < nwords:
                    p[w] &= ~np.uint64(1 << b)
                    a[w] &= ~np.uint64(1 << b)
        proc.next_access |= keep
        return p, a


def test_engine_tracks_the_edge_words_with_a_page_granular_reader():
    """As test_linux_tracking_edges' engine test, with idle_bitmap v3: the tracked pages that
    share word 1 with the PROT_NONE neighbour are tracked (edge_pages 0) and sampled, the
    neighbour's Accessed bits are left set."""
    k = FakeKernel()
    k._reader = PageGranularReader(k)
    proc, nb, eng = two_samples_beside_a_prot_none_neighbour(k)
    assert nb <= proc.next_access, f"{len(nb - proc.next_access)} untracked pages cleared"
    assert not {proc.vpn(i) for i in range(100)} & proc.next_access  # words 0 and 1 read
    (unit,) = eng.units.values()
    assert unit.ext.edge_pages == 0
    assert unit.ext.nwords.tolist() == [2]
    b0 = BASE // PAGE
    assert [(lo - b0, hi - b0) for lo, hi in k._reader.skips[-1]] == [(100, 128)]
