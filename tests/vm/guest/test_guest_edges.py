"""Inside the rig: tierd's clearing samples leave the Accessed bits of mappings it does not track.

Here two mappings share 64-page words with a PROT_NONE mapping between them, whose pages were
accessed before it was protected (tierd does not track PROT_NONE).  The engine's path,
Extents.from_vmas() over /proc/PID/maps and one reader.sample() per extent, must leave those
bits set: a read of idle_bitmap (which never clears) still reports them accessed.

page_idle marks whole PFN words, so tierd leaves out the shared words (edge_pages counts the
tracked pages lost).  idle_bitmap v3 clears at page granularity (IDLE_BITMAP_SCAN): the
shared words are tracked, only the neighbour's pages are skipped, and edge_pages is 0.
"""

import ctypes
import mmap
import os

import numpy as np
import pytest

from tierd.engine.state import Extents
from tierd.linux import Kernel

PAGE = 4096
WORD = 64 * PAGE
PROT_NONE = 0
MADV_NOHUGEPAGE = 15


def idle_bitmap_ro(word: int, nwords: int) -> tuple[np.ndarray, np.ndarray]:
    """(present, idle) of records [word, word + nwords): a read, which never clears."""
    fd = os.open("/proc/self/idle_bitmap", os.O_RDONLY)
    try:
        rec = np.frombuffer(os.pread(fd, 16 * nwords, 16 * word), dtype="<u8").reshape(-1, 2)
    finally:
        os.close(fd)
    return rec[:, 0].astype(np.uint64), rec[:, 1].astype(np.uint64)


def bits(first: int, last: int) -> int:
    """Mask of bits first..last-1 of one word."""
    return ((1 << (last - first)) - 1) << first


@pytest.mark.parametrize("reader_name", ["idle_bitmap", "page_idle"])
def test_clearing_reads_leave_an_untracked_neighbours_accessed_bits(reader_name):
    kernel = Kernel()
    reader = kernel.reader(reader_name)
    pid = os.getpid()
    mm = mmap.mmap(-1, 5 * WORD, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf = np.frombuffer(mm, dtype=np.uint8)
    skip = (-buf.ctypes.data) % WORD
    mm.madvise(MADV_NOHUGEPAGE, skip, 4 * WORD)
    start = buf.ctypes.data + skip
    w0 = start // WORD
    buf[skip:skip + 4 * WORD:PAGE] = 1                    # pages 0..255, all accessed
    # pages 100..139 become PROT_NONE: words 1 and 2 hold tracked and untracked pages
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(start + 100 * PAGE, 40 * PAGE, PROT_NONE) == 0, ctypes.get_errno()
    try:
        present, idle = idle_bitmap_ro(w0 + 1, 2)
        neighbour = np.array([bits(36, 64), bits(0, 12)], dtype=np.uint64)  # pages 100..139
        assert (present & neighbour == neighbour).all() and not (idle & neighbour).any()

        granular = getattr(reader, "page_granular", False)
        assert granular == (reader_name == "idle_bitmap")  # the v3 kernel's ioctl is used
        ext = Extents.from_vmas(kernel.procfs.maps(pid), granular)
        ours = [(i, int(w), int(n)) for i, (w, n) in enumerate(zip(ext.word_start, ext.nwords))
                if w < w0 + 4 and w + n > w0]
        for _ in range(2):                               # two samples, as the engine does
            for i, w, n in ours:
                holes = ext.holes_of(i)
                reader.sample(pid, w, n, skip=holes) if holes else reader.sample(pid, w, n)
        # the neighbour's pages still read accessed through a non-clearing descriptor
        present, idle = idle_bitmap_ro(w0 + 1, 2)
        lost = int(np.bitwise_count(idle & neighbour).sum())
        assert (present & neighbour == neighbour).all() and lost == 0, \
            f"{lost} of 40 untracked pages lost their Accessed bits"
        covered = {w for _, a, n in ours for w in range(a, a + n)}
        assert w0 in covered and w0 + 3 in covered       # the tracked-only words
        present, idle = idle_bitmap_ro(w0, 4)
        full = np.uint64(2**64 - 1)
        if not granular:
            assert not covered & {w0 + 1, w0 + 2}        # the shared ones are left out
            assert ext.edge_pages >= (100 - 64) + (192 - 140)
            return
        # v3: the shared words are tracked, their tracked pages sampled and cleared
        assert {w0 + 1, w0 + 2} <= covered and ext.edge_pages == 0
        assert (present == full).all()
        tracked = np.array([full, ~neighbour[0], ~neighbour[1], full], dtype=np.uint64)
        assert (idle == tracked).all(), [hex(int(x)) for x in idle]
    finally:
        reader.close_all()
