"""Inside the rig: tierd's kernel boundary against the real patched kernel.

Node 0 = CPUs + fast memory, node 1 = memory-only slow memory in a lower memory tier.  These
tests prove /proc/PID/idle_bitmap and the stock page_idle path through tierd's own readers,
against access patterns the test makes itself, and move_pages between the two nodes.
"""

import ctypes
import mmap
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tierd.linux import IdleBitmapReader, Kernel

PAGE = 4096
HUGE = 2 << 20
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15


@pytest.fixture
def kernel():
    return Kernel()


class Region:
    """Anonymous memory aligned to 2 MiB (so it starts on a bitmap word), every page touched."""

    def __init__(self, size: int, huge: bool):
        self.mm = mmap.mmap(-1, size + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buf = np.frombuffer(self.mm, dtype=np.uint8)
        skip = (-buf.ctypes.data) % HUGE
        self.mm.madvise(MADV_HUGEPAGE if huge else MADV_NOHUGEPAGE, skip, size)
        self.view = buf[skip:skip + size]
        self.start = buf.ctypes.data + skip
        self.pages = size // PAGE
        self.view[::PAGE] = 1

    @property
    def words(self):
        return self.start // PAGE // 64, self.pages // 64

    def touch(self, pages: np.ndarray):
        self.view[pages * PAGE] += 1

    def addrs(self) -> np.ndarray:
        return self.start + np.arange(self.pages, dtype=np.uint64) * PAGE


def unpack(words: np.ndarray) -> np.ndarray:
    """uint64 words -> one bool per page (bit j of word w = page 64*w + j)."""
    return np.unpackbits(words.astype("<u8").view(np.uint8), bitorder="little").astype(bool)


def test_two_tiers_are_recognised(kernel):
    fast, slow = kernel.topology().classify()
    assert fast == (0,) and slow == (1,)
    features = kernel.features()
    assert features.best_reader() == "idle_bitmap"
    assert "page_idle" in features.readers


@pytest.mark.parametrize("reader_name", ["idle_bitmap", "page_idle"])
def test_reader_reports_exactly_the_touched_pages(kernel, reader_name):
    region = Region(8 << 20, huge=False)
    reader = kernel.reader(reader_name)
    pid = os.getpid()
    start, nwords = region.words
    # Freshly faulted folios wait in per-CPU LRU batches, where page_idle cannot mark them
    # idle (page_idle_get_folio() wants LRU folios).  move_pages() drains those batches
    # (lru_cache_disable() in do_pages_move()): move one page to where it already is.
    kernel.move_pages(pid, region.addrs()[:1], np.zeros(1, dtype=np.int32))
    reader.sample(pid, start, nwords)                 # resets: everything idle from here
    touched = np.zeros(region.pages, dtype=bool)
    touched[::3] = True
    touched[100:140] = True
    region.touch(np.flatnonzero(touched))
    present, accessed = reader.sample(pid, start, nwords)
    assert unpack(present).all()
    got = unpack(accessed)
    assert not (touched & ~got).any(), "a touched page was reported idle"
    extra = int((got & ~touched).sum())
    if reader_name == "idle_bitmap":
        assert extra == 0, f"{extra} untouched pages reported accessed"
    else:
        # page_idle misses pages still sitting in per-CPU LRU batches (not yet on an LRU
        # list, so page_idle_get_folio() skips them): a handful, never many.
        assert extra <= region.pages // 100, extra
    # Nothing touched since: all idle (the read above cleared what it saw).
    present, accessed = reader.sample(pid, start, nwords)
    assert unpack(present).all()
    assert int(np.bitwise_count(accessed).sum()) <= (0 if reader_name == "idle_bitmap"
                                                     else region.pages // 100)


def test_idle_bitmap_reports_huge_pages_whole(kernel):
    region = Region(8 << 20, huge=True)
    smaps = Path("/proc/self/smaps_rollup").read_text()
    anon_huge = int(smaps.split("AnonHugePages:")[1].split()[0]) << 10
    assert anon_huge >= 4 << 20, "THP did not back the region"
    reader = kernel.reader("idle_bitmap")
    start, nwords = region.words
    reader.sample(os.getpid(), start, nwords)
    region.touch(np.array([5, 512 * 2 + 511]))        # one subpage in huge pages 0 and 2
    present, accessed = reader.sample(os.getpid(), start, nwords)
    got = unpack(accessed).reshape(-1, 512)
    assert unpack(present).all()
    assert got[0].all() and got[2].all(), "a huge page must report all subpages accessed"
    assert not got[1].any() and not got[3].any()


def test_idle_bitmap_reports_absent_pages_as_neither(kernel):
    """Untouched pages of a mapping, and a hole punched into it, read 0/0: never "idle"
    (the 2018 RFC reported them idle, inviting pointless migrations)."""
    region = Region(8 << 20, huge=False)
    start, nwords = region.words
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    MADV_DONTNEED = 4
    assert libc.madvise(region.start, 2 << 20, MADV_DONTNEED) == 0   # mapped, not present
    assert libc.munmap(region.start + (4 << 20), 2 << 20) == 0        # a hole
    present, accessed = kernel.reader("idle_bitmap").sample(os.getpid(), start, nwords)
    present = unpack(present).reshape(4, 512)
    assert not present[0].any() and not present[2].any()
    assert present[1].all() and present[3].all()
    assert not unpack(accessed).reshape(4, 512)[[0, 2]].any()


def test_move_pages_between_tiers_and_back(kernel):
    region = Region(16 << 20, huge=False)
    addrs = region.addrs()
    pid = os.getpid()
    status = kernel.move_pages(pid, addrs, np.full(len(addrs), 1, dtype=np.int32))
    assert (status == 1).all(), np.unique(status, return_counts=True)
    assert (kernel.move_pages(pid, addrs) == 1).all()
    status = kernel.move_pages(pid, addrs, np.zeros(len(addrs), dtype=np.int32))
    assert (status == 0).all(), np.unique(status, return_counts=True)
    assert (kernel.move_pages(pid, addrs) == 0).all()


def test_cli_topology_and_scan(tmp_path):
    tierd = [sys.executable, "-m", "tierd"]
    out = subprocess.run(tierd + ["topology"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "idle_bitmap" in out.stdout
    # the child's known pattern: an 8 MiB mapping (no THP) whose first 4 MiB (1024 pages)
    # it writes every 50 ms and whose rest it never touches; it prints the mapping's address
    child = subprocess.Popen([sys.executable, "-c",
                              "import ctypes,mmap,sys,time\n"
                              "m=mmap.mmap(-1,8<<20,flags=mmap.MAP_PRIVATE|mmap.MAP_ANONYMOUS)\n"
                              "m.madvise(mmap.MADV_NOHUGEPAGE)\n"
                              "for i in range(0,4<<20,4096): m[i]=1\n"
                              "print(ctypes.addressof(ctypes.c_char.from_buffer(m)),flush=True)\n"
                              "while True:\n for i in range(0,4<<20,4096): m[i]=1\n"
                              " time.sleep(0.05)"], stdout=subprocess.PIPE, text=True)
    try:
        addr = int(child.stdout.readline())
        out = subprocess.run(tierd + ["scan", "--pid", str(child.pid), "--samples", "2",
                                      "--interval", "1"],
                             capture_output=True, text=True, timeout=300)
    finally:
        child.kill()
        child.wait()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "access tracking: idle_bitmap, 2 sample(s)" in out.stdout
    # the mapping's row: "anon START-END  VMAs size Rss pages c=0 c=1 c=2"
    rows = [line.split() for line in out.stdout.splitlines() if line.strip().startswith("anon 0x")]
    mine = [r for r in rows if int(r[1].split("-")[0], 16) <= addr < int(r[1].split("-")[1], 16)]
    assert len(mine) == 1, out.stdout
    assert mine[0][5:] == ["1024", "0", "0", "1024"], out.stdout  # present, c=0, c=1, c=2


# -- issue 9: the reader side against the v2 kernel ---------------------------------------------


def test_idle_bitmap_reader_splits_never_cut_a_huge_page(kernel):
    """Reads split at multiples of chunk_words of the address space: with 8-word chunks (one
    2 MiB THP each) a range that starts 3 words before a THP still reads it whole; split
    relative to the range start, the second read would find the THP's bit already cleared."""
    region = Region(8 << 20, huge=True)
    start, nwords = region.words
    reader = IdleBitmapReader(chunk_words=8)
    try:
        reader.sample(os.getpid(), start - 3, nwords + 3)
        region.touch(np.array([512 + 7]))                 # one subpage of huge page 1
        present, accessed = reader.sample(os.getpid(), start - 3, nwords + 3)
    finally:
        reader.close_all()
    got = unpack(accessed[3:]).reshape(-1, 512)
    assert unpack(present[3:]).all()
    assert got[1].all(), f"{int((~got[1]).sum())} subpages of the touched THP read idle"
    assert not got[0].any() and not got[2].any()


def test_idle_bitmap_zero_page_is_not_present(kernel):
    """Read-faulted anonymous memory maps the shared zero page: not memory of the process."""
    mm = mmap.mmap(-1, 64 * PAGE + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf = np.frombuffer(mm, dtype=np.uint8)
    skip = (-buf.ctypes.data) % HUGE
    mm.madvise(MADV_NOHUGEPAGE, skip, 64 * PAGE)
    view = buf[skip:skip + 64 * PAGE]
    assert int(view[::PAGE].sum()) == 0                   # read faults: the zero page
    view[5 * PAGE] = 1                                    # one real page
    word = (buf.ctypes.data + skip) // PAGE // 64
    present, _ = kernel.reader("idle_bitmap").sample(os.getpid(), word, 1)
    assert present.tolist() == [1 << 5]


def test_exec_is_a_new_process_to_the_reader_and_the_resolver(kernel, tmp_path):
    """After execve() the open idle_bitmap descriptor reads ESRCH.  Opening the file again by
    pid (what the reader did before issue 17) cannot tell exec from a reused pid, so the
    reader reports the process gone; the resolver sees the address space change (its pagemap
    witness reads nothing) and gives the process a new key, and reads through its new handle
    see the new address space."""
    from tierd.engine.targets import PsutilResolver
    from tierd.linux import ProcessGone
    from tierd.policy import TargetSpec

    ready = tmp_path / "ready"
    after = "import sys, time; open(sys.argv[1], 'w').close(); time.sleep(60)"
    code = ("import os, sys\n"
            "print('up', flush=True)\n"
            "sys.stdin.read(1)\n"
            f"os.execv(sys.executable, [sys.executable, '-c', {after!r}, {str(ready)!r}])\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    reader = IdleBitmapReader()
    resolver = PsutilResolver(self_pid=-1)
    spec = [TargetSpec("t", pids=(child.pid,))]
    try:
        assert child.stdout.readline() == b"up\n"  # its interpreter runs (Popen's exec done)
        [a] = resolver.resolve(spec)
        word = 0x400000 // PAGE // 64                      # any range: the file must read
        reader.sample(a.pid, word, 1)
        child.stdin.write(b"x")
        child.stdin.close()
        for _ in range(600):
            if ready.exists():
                break
            time.sleep(0.1)
        assert ready.exists(), "the child did not exec"
        with pytest.raises(ProcessGone, match="execve"):
            reader.sample(a.pid, word, 1)
        [b] = resolver.resolve(spec)
        assert b.key != a.key and b.key[:2] == a.key[:2] and a.pid.closed
        present, accessed = reader.sample(b.pid, word, 1)  # the new address space
        assert present.shape == (1,) and not (accessed & ~present).any()
    finally:
        reader.close_all()
        resolver.close()
        child.kill()
        child.wait()


# -- issue 18: the v3 kernel (IDLE_BITMAP_SCAN, page-granular clearing) ------------------------


def test_idle_bitmap_v3_scan_is_probed_and_clears_exactly_the_pages_asked(kernel):
    """The rig kernel carries v3: features name IDLE_BITMAP_SCAN, the reader uses it, reads
    never clear, and a sample that skips pages inside a word leaves their bits set."""
    f = kernel.features()
    assert f.idle_bitmap_scan.available, f.idle_bitmap_scan.detail
    reader = kernel.reader("idle_bitmap")
    assert reader.page_granular
    region = Region(2 << 20, huge=False)
    start, nwords = region.words
    pid = os.getpid()
    fd = os.open("/proc/self/idle_bitmap", os.O_RDWR)    # O_RDWR: v3 reads still never clear
    try:
        def accessed_pages():
            rec = np.frombuffer(os.pread(fd, 16 * nwords, 16 * start), dtype="<u8").reshape(-1, 2)
            return unpack(rec[:, 0] & ~rec[:, 1])

        reader.sample(pid, start, nwords)                 # resets every page
        region.touch(np.arange(region.pages))
        skip = [(64 * start + 10, 64 * start + 20), (64 * start + 100, 64 * start + 101)]
        present, accessed = reader.sample(pid, start, nwords, skip=skip)
        got = unpack(accessed)
        assert unpack(present).sum() == region.pages - 11 and got.sum() == region.pages - 11
        assert not got[10:20].any() and not got[100]      # skipped: neither reported
        left = accessed_pages()                           # ... nor cleared
        assert np.flatnonzero(left).tolist() == list(range(10, 20)) + [100]
        assert accessed_pages().sum() == 11               # the read did not clear them
    finally:
        os.close(fd)
        reader.close_all()
