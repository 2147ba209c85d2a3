"""PageIdleReader against a page_idle bitmap that behaves like mm/page_idle.c at max_pfn, and
the engine's accounting of ranges it could not sample.

The kernel's bitmap (Linux 4.3+, unchanged in 6.12) transfers whole 64-bit words only and
clamps every access at max_pfn: a read there returns 0 bytes, a write whose words run past the
last PFN returns short (the partial last word is applied but not counted, so a write starting
at it returns 0), and a write entirely past max_pfn fails with ENXIO.  Pages at the top of the
highest NUMA node (the slow tier in the rig) live in that last word.  ``ClampedBitmap``
implements exactly that on the bitmap's file descriptor (os.pread/os.pwrite are wrapped for
that one descriptor; every other file is untouched), and can inject short writes and errors.
"""

from __future__ import annotations

import errno
import logging
import os

import numpy as np
import pytest
from engine_fakes import FakeKernel, FakeProc

from tierd.engine.daemon import Engine, summary_line
from tierd.logs import REPEAT_EVERY
from tierd.engine.targets import ProcessRef, StaticResolver
from tierd.linux import PageIdleReader
from tierd.linux.tracking import popcount, unpack_words
from tierd.pages import KPF_LRU
from tierd.policy import Policy, TargetSpec

PRESENT = 1 << 63
PID = 31


class ClampedBitmap:
    """The kernel side of /sys/kernel/mm/page_idle/bitmap for PFNs 0 .. max_pfn-1.

    ``idle[pfn]`` is the page's idle flag; ``access(pfns)`` clears it (a reference seen through
    rmap).  ``short_writes``: cap every write at this many bytes (a kernel that returns
    early); ``zero_write_at``: word indices where a write returns 0 although it is not the
    end of memory; ``fail_writes``: errno raised by every write."""

    def __init__(self, path: str, max_pfn: int) -> None:
        self.path = os.path.realpath(path)
        self.max_pfn = max_pfn
        self.idle = np.zeros(max_pfn, dtype=bool)
        self.short_writes = 0
        self.zero_write_at: set[int] = set()
        self.fail_writes: int | None = None
        self.writes: list[tuple[int, int]] = []  # (byte offset, bytes returned)

    def install(self, monkeypatch) -> None:
        real_pread, real_pwrite = os.pread, os.pwrite

        def mine(fd: int) -> bool:
            try:
                return os.readlink(f"/proc/self/fd/{fd}") == self.path
            except OSError:
                return False

        monkeypatch.setattr(os, "pread", lambda fd, n, off: self.read(n, off) if mine(fd)
                            else real_pread(fd, n, off))
        monkeypatch.setattr(os, "pwrite", lambda fd, b, off: self.write(bytes(b), off) if mine(fd)
                            else real_pwrite(fd, b, off))

    @staticmethod
    def _check(pos: int, count: int) -> None:
        if pos % 8 or count % 8:
            raise OSError(errno.EINVAL, "unaligned")

    def read(self, count: int, pos: int) -> bytes:
        count = min(count, 4096)  # kernfs: one page per read(2)
        self._check(pos, count)
        pfn = pos * 8
        if pfn >= self.max_pfn:
            return b""
        end = min(pfn + count * 8, self.max_pfn)
        whole = (end - pfn) // 64  # the partial last word is never returned
        bits = self.idle[pfn: pfn + 64 * whole]
        return np.packbits(bits, bitorder="little").tobytes()

    def write(self, buf: bytes, pos: int) -> int:
        buf = buf[:4096]
        if self.fail_writes is not None:
            raise OSError(self.fail_writes, os.strerror(self.fail_writes))
        self._check(pos, len(buf))
        if self.short_writes:
            buf = buf[: self.short_writes]
        pfn = pos * 8
        if pos // 8 in self.zero_write_at:
            self.writes.append((pos, 0))
            return 0
        if pfn >= self.max_pfn:
            raise OSError(errno.ENXIO, "past max_pfn")
        end = min(pfn + len(buf) * 8, self.max_pfn)
        bits = np.unpackbits(np.frombuffer(buf, np.uint8), bitorder="little").astype(bool)
        self.idle[pfn:end] |= bits[: end - pfn]
        n = 8 * ((end - pfn) // 64)
        self.writes.append((pos, n))
        return n

    def access(self, pfns) -> None:
        self.idle[np.asarray(pfns)] = False


class Tree:
    """Fake /proc (pagemap, kpageflags) and /sys with a ClampedBitmap."""

    def __init__(self, root, monkeypatch, max_pfn: int) -> None:
        self.proc, self.sys = root / "proc", root / "sys"
        (self.proc / str(PID)).mkdir(parents=True)
        (self.sys / "kernel/mm/page_idle").mkdir(parents=True)
        bitmap = self.sys / "kernel/mm/page_idle/bitmap"
        bitmap.write_bytes(b"")
        self.pagemap = np.zeros(4096, dtype="<u8")
        self.kpf = np.zeros(max_pfn, dtype="<u8")
        self.bitmap = ClampedBitmap(str(bitmap), max_pfn)
        self.bitmap.install(monkeypatch)

    def map(self, vpns, pfns) -> None:
        self.pagemap[np.asarray(vpns)] = np.uint64(PRESENT) | np.asarray(pfns, np.uint64)
        self.kpf[np.asarray(pfns)] = 1 << KPF_LRU
        (self.proc / str(PID) / "pagemap").write_bytes(self.pagemap.tobytes())
        (self.proc / "kpageflags").write_bytes(self.kpf.tobytes())

    def reader(self, **kw) -> PageIdleReader:
        return PageIdleReader(str(self.proc), str(self.sys), **kw)


def pages(words) -> list[int]:
    return np.flatnonzero(unpack_words(words)).tolist()


# The rig's e820 map ends below a 64-page boundary: max_pfn = 0x7ffdf in the QEMU guest.
MAX_PFN = 64 * 100 + 31


@pytest.fixture
def tree(tmp_path, monkeypatch):
    return Tree(tmp_path, monkeypatch, MAX_PFN)


def test_pages_at_the_top_of_memory_are_sampled_not_lost(tree):
    """64 pages in the last whole word (99) and 16 in the partial last word (100: PFNs
    6400..6430 exist)."""
    top = np.arange(6400 - 64, 6400)
    partial = np.arange(6400, 6416)
    tree.map(np.arange(64), top)
    tree.map(np.arange(64, 80), partial)
    with tree.reader() as r:
        present, accessed = r.sample(PID, 0, 2)  # raised "short write" before the fix
        assert pages(present) == list(range(80))
        assert pages(accessed) == list(range(80))  # first sample: everything
        assert r.unreadable_pages == 16  # summed over samples
        # The kernel applied the marks in the partial word too (it just did not count them).
        assert tree.bitmap.idle[top].all() and tree.bitmap.idle[partial].all()
        tree.bitmap.access(top[[3, 40]])
        present, accessed = r.sample(PID, 0, 2)
        assert pages(present) == list(range(80))
        # The partial word cannot be read back: its pages are reported accessed, and counted.
        assert pages(accessed) == [3, 40] + list(range(64, 80))
        assert r.unreadable_pages == 32


def test_partial_word_alone_is_written_once_then_probed(tree):
    tree.map([0], [6401])
    with tree.reader() as r:
        r.sample(PID, 0, 1)
    # the 0-byte write at word 100, the zero-word probe there, and the ENXIO probe after it
    assert tree.bitmap.writes == [(800, 0), (800, 0)]
    assert tree.bitmap.idle[6401]


def test_short_writes_are_continued_not_ignored(tree):
    pfns = np.arange(0, 64 * 40, 64)  # one bit in each of 40 words: one 320-byte span
    tree.map(np.arange(40), pfns)
    tree.bitmap.short_writes = 16  # the kernel takes two words per call
    with tree.reader(merge_gap_words=8) as r:
        r.sample(PID, 0, 1)
    assert tree.bitmap.idle[pfns].all(), "words after the first short write were not written"
    assert len(tree.bitmap.writes) == 20


def test_a_zero_write_that_is_not_the_end_of_memory_raises(tree):
    tree.map([0, 1], [64 * 10, 64 * 12])  # words 10 and 12: one span
    tree.bitmap.zero_write_at = {10}
    with tree.reader() as r, pytest.raises(OSError, match="short write .* word 10"):
        r.sample(PID, 0, 1)


def test_a_zero_write_with_bits_after_it_raises(tree):
    tree.map([0, 1], [64 * 10 + 5, 64 * 12])
    tree.bitmap.short_writes = 8  # one word per call, so the write at word 11 returns 0
    tree.bitmap.zero_write_at = {11}  # the gap word: word 12 after it must not be dropped

    with tree.reader() as r, pytest.raises(OSError, match="short write"):
        r.sample(PID, 0, 1)


def test_a_zero_write_on_the_last_word_without_enxio_after_it_raises(tree):
    """A 0 return on the only written word is accepted only if the next word is past the end
    of memory (ENXIO): here it is not, so it is an error, not the clamp."""
    tree.map([0], [64 * 10])
    tree.bitmap.zero_write_at = {10, 11}
    with tree.reader() as r, pytest.raises(OSError, match="short write"):
        r.sample(PID, 0, 1)


def test_write_errors_propagate(tree):
    tree.map([0], [64 * 10])
    tree.bitmap.fail_writes = errno.EIO
    with tree.reader() as r, pytest.raises(OSError) as exc:
        r.sample(PID, 0, 1)
    assert exc.value.errno == errno.EIO


# -- the engine: a range that cannot be sampled is never silent -------------------------------


class FailingReader:
    """Wraps the fake kernel's reader; fails every sample of the ranges in ``failing``."""

    name = "failing"

    def __init__(self, inner) -> None:
        self.inner = inner
        self.failing = True

    def sample(self, pid, word_start, nwords):
        if self.failing:
            raise OSError(errno.EIO, "short write to /sys/kernel/mm/page_idle/bitmap")
        return self.inner.sample(pid, word_start, nwords)

    def close(self, pid):
        self.inner.close(pid)


def make_engine(kernel, clock):
    policy = Policy(source="<test>", interval=1.0, targets=(TargetSpec(name="app", pids=(PID,)),),
                    rate=1 << 30, batch=4 << 20, retry_after=4)
    reader = FailingReader(kernel.reader())
    kernel.reader = lambda name="auto": reader
    eng = Engine(kernel, policy, resolver=StaticResolver([ProcessRef(PID, 0.0, "app")]),
                 clock=clock)
    return eng, reader


def test_unsampled_range_is_counted_warned_rate_limited_and_keeps_its_pages(caplog):
    k = FakeKernel()
    proc = k.add(FakeProc(PID, 128, node=1))
    now = [0.0]
    eng, reader = make_engine(k, lambda: now[0])
    reader.failing = False
    eng.step()
    proc.next_access |= {proc.vpn(i) for i in range(8)}
    first = eng.step()
    assert first.unsampled_ranges == 0 and first.targets["app"].pages == 128
    reader.failing = True
    with caplog.at_level(logging.WARNING, logger="tierd"):
        stats = [eng.step() for _ in range(3)]
        now[0] = REPEAT_EVERY
        stats.append(eng.step())
    for s in stats:
        assert s.unsampled_ranges == 1 and s.unsampled_pages == 128
        assert s.targets["app"].unsampled_ranges == 1
        assert s.targets["app"].unsampled_pages == 128
        # the pages are not forgotten: still present, and not turned cold by the blind spot
        assert s.targets["app"].pages == 128
        assert s.targets["app"].hist[0] < 128
        assert s.demoted == 0
    warnings = [r.getMessage() for r in caplog.records if "not sampled" in r.getMessage()]
    assert len(warnings) == 2, warnings  # at 0 s and again once REPEAT_EVERY has passed
    assert "short write" in warnings[0] and "2 more like this in the last 10 min" in warnings[1]
    assert "NOT SAMPLED 1 range(s) 512KiB" in summary_line(stats[0])
    reader.failing = False
    assert eng.step().unsampled_ranges == 0


def test_hot_pages_of_an_unsampled_range_keep_their_hotness():
    k = FakeKernel()
    proc = k.add(FakeProc(PID, 128, node=1))
    eng, reader = make_engine(k, lambda: 0.0)
    reader.failing = False
    for _ in range(3):
        proc.next_access |= {proc.vpn(i) for i in range(8)}
        eng.step()
    hot_before = eng.units[(PID, 0.0)].state.hotness(np.arange(8)).tolist()
    reader.failing = True
    eng.step()
    assert eng.units[(PID, 0.0)].state.hotness(np.arange(8)).tolist() >= hot_before
    assert popcount(eng.units[(PID, 0.0)].state.present) == 128
