"""Access-tracking readers: which pages of a virtual range were accessed since the last sample.

Both readers implement ``AccessReader`` (docs/design.md, "Access tracking contract"): ranges are
given in 64-page words (word w = virtual pages 64*w .. 64*w+63, bit j = page 64*w + j) and the
result is two uint64 bitmaps, ``present`` and ``accessed``.  No per-page Python work: every
step is a numpy operation over the whole range.

- ``IdleBitmapReader``: /proc/PID/idle_bitmap from tierd's kernel patch (kernel/patches, not
  upstream).  One IDLE_BITMAP_SCAN ioctl per range (patch v3): the kernel walks the page tables
  once, reports and clears the Accessed bits of exactly the pages of the range, at page
  granularity, and flushes the TLB.  On a v2 kernel (no ioctl: ENOTTY) a pread of the file
  opened O_RDWR reports and clears whole 64-page records instead.
- ``PageIdleReader``: the stock interfaces, Linux 4.3+ with CONFIG_IDLE_PAGE_TRACKING (commit
  33c3fc71c8cf, "mm: introduce idle page tracking"): /proc/PID/pagemap gives the PFN of each
  present page (CAP_SYS_ADMIN, Linux 4.2+), /sys/kernel/mm/page_idle/bitmap has one bit per
  PFN: reading it reports "idle since marked" (after harvesting the PTE Accessed bits through
  rmap), writing 1s marks pages idle.  Large folios carry one idle flag: page_idle_get_folio()
  returns NULL for tail pages (mm/page_idle.c), so a tail page's bit always reads 0; the tail
  is mapped to its head PFN using /proc/kpageflags (KPF_COMPOUND_HEAD 15, KPF_COMPOUND_TAIL 16).
  The first sample of a range reports every present page as accessed (nothing was marked yet).
  Known limitation (the reason for the patch): page_idle clears Accessed bits without flushing
  the TLB (the *_young_notify helpers), and a CPU does not set the bit again while it still
  caches the translation, so pages in constant use can read idle.  Measured in the QEMU rig on
  a process touching 4096 pages every 10 ms: page_idle saw 1536 of them in all 3 samples,
  idle_bitmap 4096; huge pages (one TLB entry per 2 MiB) are hit hardest.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import logging
import os
import struct
from typing import Protocol, runtime_checkable

import numpy as np

from tierd.linux.errors import FeatureMissing, ProcessGone
from tierd.linux.nodes import NumaMapsNodes, PagemapNodes
from tierd.linux.procfs import ProcFS, decode_pagemap, pread_full, proc_key, read_pagemap
from tierd.linux.sysfs import SysFS
from tierd.pages import (
    KPF_COMPOUND_HEAD,
    KPF_COMPOUND_TAIL,
    KPF_ZERO_PAGE,
    PAGE_SHIFT,
    PAGE_SIZE,
    PAGES_PER_WORD,
)

log = logging.getLogger("tierd")

IDLE_RECORD_BYTES = 16  # idle_bitmap: (present u64 LE, idle u64 LE) per 64 pages

# A tail's head is at the tail's PFN rounded down to the folio size (folios are naturally
# aligned).  Orders searched: up to 13 covers PMD-sized THP with 4K (9), 16K (11) pages and
# MAX_PAGE_ORDER (10 by default).
HEAD_SEARCH_ORDERS = np.arange(1, 14, dtype=np.uint64)
HEAD_SEARCH_ORDERS.setflags(write=False)  # a constant

# IDLE_BITMAP_SCAN (include/uapi/linux/fs.h of tierd's patch v3): struct idle_bitmap_scan_arg
# is seven native u64s (size, flags, start, end, walk_end, vec, vec_len); the request is
# _IOWR('f', 18, struct idle_bitmap_scan_arg).
SCAN_ARG = struct.Struct("=7Q")
IDLE_BITMAP_SCAN = (3 << 30) | (SCAN_ARG.size << 16) | (ord("f") << 8) | 18
IDLE_BITMAP_SCAN_CLEAR = 1

# Disjoint word runs remembered per process for the "first sample" rule (Covered) before
# the memory is reset: a process whose sampled ranges never merge cannot grow it for ever.
COVERED_RUNS_MAX = 1 << 16

# sysfs binary attributes transfer at most PAGE_SIZE per read/write (fs/kernfs/file.c).
SYSFS_IO_MAX = PAGE_SIZE


@runtime_checkable
class AccessReader(Protocol):
    """The contract both readers implement (and fakes in tests/simulation)."""

    name: str

    def sample(self, pid: int, word_start: int, nwords: int) -> tuple[np.ndarray, np.ndarray]:
        """(present, accessed), each uint64[nwords]; accessed implies present; resets the
        accessed state for the next sample.  Raises ProcessGone if the process exited.

        A reader whose ``page_granular`` attribute is true also takes ``skip``, page ranges
        [lo, hi) (virtual page numbers) inside the words that it must neither report nor
        reset: the pages of mappings tierd does not track that share a word with tracked
        ones (Extents.holes_of)."""
        ...

    def close(self, pid: int) -> None:
        """Forget ``pid``: close its cached file descriptors."""
        ...


def _merge(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of intervals [lo, hi) (int64): (start, end) of the disjoint runs, ascending;
    intervals that touch or overlap merge."""
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], np.maximum(hi[order], lo[order])
    run_end = np.maximum.accumulate(hi)
    new = np.ones(lo.size, dtype=bool)
    new[1:] = lo[1:] > run_end[:-1]
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, lo.size - 1)
    return lo[first], run_end[last]


def _words(starts, ends) -> tuple[np.ndarray, np.ndarray]:
    """Byte ranges [start, end) -> the 64-page words they touch, [first, last + 1) (int64)."""
    s = np.asarray(starts, dtype=np.uint64).ravel()
    e = np.asarray(ends, dtype=np.uint64).ravel()
    ws = (s >> np.uint64(18)).astype(np.int64)  # 12 (page) + 6 (64 pages per word)
    # (e + 2**18-1) would overflow for a VMA ending at 2**64; never the case for user space,
    # but [vsyscall] ends at 0xffffffffff601000: still fine, the sum stays below 2**64.
    we = ((e + np.uint64((1 << 18) - 1)) >> np.uint64(18)).astype(np.int64)
    return ws, we


def extents(starts, ends) -> tuple[np.ndarray, np.ndarray]:
    """Tracked extents of a set of VMAs: (word_start int64[m], nwords int64[m]), ascending.

    Each VMA [start, end) (byte addresses) is rounded out to 64-page words; ranges that touch
    or overlap merge, so every extent is a whole number of words (design.md, Page addressing).
    """
    if np.size(starts) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lo, hi = _merge(*_words(starts, ends))
    return lo, hi - lo


def _inside(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """bool per x: inside one of the disjoint ascending intervals [lo, hi)."""
    return np.searchsorted(lo, x, side="right") > np.searchsorted(hi, x, side="right")


def tracked_extents(starts, ends, skip_starts=(), skip_ends=()) -> tuple[np.ndarray, np.ndarray, int]:
    """Extents that a clearing read may cover: those of the tracked VMAs [starts, ends), less
    every word that also holds a page of a VMA tierd does not track [skip_starts, skip_ends).

    A clearing read of idle_bitmap (and page_idle's marking) acts on whole 64-page words, so
    reading such an edge word would clear the Accessed bits of the untracked neighbour's pages
    too.  Its tracked pages (at most 63 per shared edge) are left untracked instead, and
    counted: returns (word_start int64[m], nwords int64[m], edge_pages).  (Reading such words
    through a non-clearing O_RDONLY descriptor instead would never clear them: their tracked
    pages would read accessed for ever after one access, and look hot.)  Words that are only
    rounded out into unmapped space stay: nothing there has Accessed bits.
    """
    ws, nw = extents(starts, ends)
    if ws.size == 0 or np.size(skip_starts) == 0:
        return ws, nw, 0
    we = ws + nw
    ss, sn = extents(skip_starts, skip_ends)
    se = ss + sn
    # Elementary segments between all interval ends; keep those in T and not in S.
    cuts = np.unique(np.concatenate((ws, we, ss, se)))
    lo, hi = cuts[:-1], cuts[1:]
    in_t = _inside(lo, ws, we)
    keep = in_t & ~_inside(lo, ss, se)
    if keep.any():
        kws, kwe = _merge(lo[keep], hi[keep])
    else:
        kws = kwe = np.zeros(0, np.int64)
    # Tracked pages in the dropped words: F(end) - F(start), F(x) = tracked pages below page x.
    gone = in_t & ~keep
    pl, ph = _merge((np.asarray(starts, np.uint64).ravel() >> np.uint64(12)).astype(np.int64),
                    (np.asarray(ends, np.uint64).ravel() >> np.uint64(12)).astype(np.int64))
    below = np.concatenate(([0], np.cumsum(ph - pl)))

    def pages_below(x: np.ndarray) -> np.ndarray:
        i = np.maximum(np.searchsorted(pl, x, side="right") - 1, 0)
        return below[i] + np.clip(x - pl[i], 0, ph[i] - pl[i])

    edge = pages_below(64 * hi[gone]) - pages_below(64 * lo[gone])
    return kws, kwe - kws, int(edge.sum())


def untracked_holes(ws, nw, skip_starts, skip_ends) -> tuple[np.ndarray, np.ndarray]:
    """Page ranges [lo, hi) (virtual page numbers, int64, merged, ascending) of the untracked
    mappings [skip_starts, skip_ends) (byte addresses) that lie inside the words of the
    extents (ws, nw): what a page-granular reader must leave alone in those words."""
    none = np.zeros(0, np.int64), np.zeros(0, np.int64)
    ws = np.asarray(ws, np.int64)
    if ws.size == 0 or np.size(skip_starts) == 0:
        return none
    el, eh = ws * PAGES_PER_WORD, (ws + np.asarray(nw, np.int64)) * PAGES_PER_WORD
    def pages(addrs) -> np.ndarray:
        return (np.asarray(addrs, np.uint64).ravel() >> np.uint64(PAGE_SHIFT)).astype(np.int64)

    sl, sh = _merge(pages(skip_starts), pages(skip_ends))
    cuts = np.unique(np.concatenate((el, eh, sl, sh)))
    lo, hi = cuts[:-1], cuts[1:]
    keep = _inside(lo, el, eh) & _inside(lo, sl, sh)
    return _merge(lo[keep], hi[keep]) if keep.any() else none


def idle_bitmap_scan(fd: int, start: int, end: int, vec: np.ndarray, flags: int) -> tuple[int, int]:
    """One IDLE_BITMAP_SCAN ioctl over byte addresses [start, end) into ``vec`` (a writable,
    C-contiguous uint64 array, two words per record, the first for start's 64 pages):
    (records stored, walk_end).  OSError from the kernel propagates (ENOTTY: a v2 kernel)."""
    arg = bytearray(SCAN_ARG.pack(SCAN_ARG.size, flags, start, end, 0, vec.ctypes.data,
                                  vec.size // 2))
    n = fcntl.ioctl(fd, IDLE_BITMAP_SCAN, arg, True)
    return n, SCAN_ARG.unpack(arg)[4]


def has_idle_bitmap_scan(proc: str = "/proc") -> bool:
    """Whether this kernel's idle_bitmap has the IDLE_BITMAP_SCAN ioctl (patch v3): an empty
    scan of our own file succeeds; ENOTTY (v2), no file or no rights: False."""
    try:
        fd = os.open(os.path.join(proc, "self", "idle_bitmap"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        idle_bitmap_scan(fd, 0, 0, np.zeros(2, dtype=np.uint64), 0)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def unpack_words(words: np.ndarray) -> np.ndarray:
    """uint64[n] bitmap words -> bool[64*n], index 64*w + j = bit j of word w."""
    w = np.ascontiguousarray(words, dtype="<u8")
    return np.unpackbits(w.view(np.uint8), bitorder="little").view(bool)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """bool[64*n] -> uint64[n] (inverse of unpack_words); len(bits) must be a multiple of 64."""
    b = np.ascontiguousarray(bits, dtype=bool)
    if b.size % PAGES_PER_WORD:
        raise ValueError("bit count must be a multiple of 64")
    return np.packbits(b, bitorder="little").view("<u8").astype(np.uint64)


def popcount(words: np.ndarray) -> int:
    """Number of set bits in a uint64 array."""
    w = np.ascontiguousarray(words, dtype=np.uint64)
    return int(np.unpackbits(w.view(np.uint8)).sum(dtype=np.int64))


def _unique_inverse(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(a, return_inverse=True) without its quicksort argsort: under QEMU's TCG with
    ``-cpu max`` (the VM rig) numpy's SIMD quicksort argsort returns misordered results,
    while np.sort and stable argsorts are right.  Hash-unique + sort + searchsorted."""
    u = np.unique(a)
    return u, np.searchsorted(u, a)


def _spans(sorted_idx: np.ndarray, gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Cover sorted unique indices with [lo, hi] spans, merging neighbours closer than gap."""
    breaks = np.flatnonzero(np.diff(sorted_idx) > gap)
    lo = sorted_idx[np.append(0, breaks + 1)]
    hi = sorted_idx[np.append(breaks, sorted_idx.size - 1)]
    return lo, hi


class Covered:
    """Disjoint word runs [lo, hi) a reader has sampled (and so marked idle) before, sorted.

    The page_idle "first sample" rule asks which words of a range are new; runs merge as
    ranges touch, so a process costs one run per separate stretch of address space it has
    (a few hundred), not one per range ever read.  Bounded: past COVERED_RUNS_MAX runs it
    starts over (every word reads as new once, as after a restart)."""

    __slots__ = ("lo", "hi")

    def __init__(self) -> None:
        self.lo: list[int] = []
        self.hi: list[int] = []

    def missing(self, a: int, b: int) -> list[tuple[int, int]]:
        """The runs of [a, b) not covered, ascending."""
        out = []
        i = bisect.bisect_right(self.hi, a)  # first run ending after a
        while a < b:
            if i == len(self.lo) or self.lo[i] >= b:
                out.append((a, b))
                break
            if self.lo[i] > a:
                out.append((a, self.lo[i]))
            a = max(a, self.hi[i])
            i += 1
        return out

    def add(self, a: int, b: int) -> None:
        """Cover [a, b), merging with the runs it touches or overlaps."""
        if a >= b:
            return
        i = bisect.bisect_left(self.hi, a)  # first run that ends at or after a: touches
        j = bisect.bisect_right(self.lo, b)  # runs before j start at or before b
        if i < j:
            a, b = min(a, self.lo[i]), max(b, self.hi[j - 1])
        self.lo[i:j] = [a]
        self.hi[i:j] = [b]
        if len(self.lo) > COVERED_RUNS_MAX:
            self.lo, self.hi = [a], [b]


def _open_feature(path: str, flags: int, feature: str, how_to_fix: str, why: str) -> int:
    """Open a kernel interface file; its absence is a FeatureMissing naming the fix."""
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FeatureMissing(feature, how_to_fix, what=f"{path} does not exist ({why})") from None


def _is_gone(procfs: ProcFS, pid: int, name: str, entry: int) -> bool:
    """After a 0-byte read where data was due: is the process (its address space) gone?

    The idle_bitmap patch fails reads with ESRCH once the mm is gone and returns 0 bytes only
    past the end of the address space (TASK_SIZE), so a 0-byte read normally means "nothing
    there".  To be sure, read entry 0 (vpn 0, below TASK_SIZE in every process) through a fresh
    O_RDONLY descriptor, which only reports and never clears Accessed bits: empty or ESRCH means
    gone.  ``entry`` is the file's record size (idle_bitmap refuses reads of other sizes)."""
    try:
        fd = procfs.open(pid, name, os.O_RDONLY)
    except ProcessGone:
        return True
    try:
        return not os.pread(fd, entry, 0)
    except OSError as e:
        return e.errno == errno.ESRCH
    finally:
        os.close(fd)


# Reads of a range are split at multiples of this many words of the address space: 4096
# words = 1 GiB with 4 KiB pages, the largest huge page size on x86, so no huge mapping spans
# two reads (the first read would clear its Accessed bit and the second report it idle).
HUGE_ALIGN_WORDS = 4096


class IdleBitmapReader:
    """/proc/PID/idle_bitmap (tierd's kernel patch).  Keeps one O_RDWR descriptor per pid.

    A range is read in steps of at most ``chunk_words`` words, split at multiples of
    ``chunk_words`` in the address space (not relative to the range), so with the default
    (2**20, a multiple of HUGE_ALIGN_WORDS) no huge mapping is split between two steps.
    After the target calls execve() the descriptor refers to the old address space and reads
    fail with ESRCH: that is ProcessGone too, never a new open by pid (which cannot tell exec
    from a reused pid); a new address space is a new process to tierd.  Given a ProcHandle
    (tierd/linux/procfs.py) every file is opened through the held /proc/PID directory, so
    the files of a process that got the pid later are never read.

    ``scan`` (patch v3, features.idle_bitmap_scan): each step is an IDLE_BITMAP_SCAN ioctl
    with IDLE_BITMAP_SCAN_CLEAR, which clears exactly the pages of its range, so the reader is
    ``page_granular``: sample() takes the pages of untracked neighbours in the words
    (``skip``) and scans around them.  Without it (patch v2) each step is a pread of the
    O_RDWR descriptor, which clears all 64 pages of a record: callers then pass ranges from
    tracked_extents(), which leaves out the words shared with mappings tierd does not track
    (special mappings, PROT_NONE), so their pages keep their Accessed bits.
    """

    name = "idle_bitmap"

    def __init__(self, proc: str = "/proc", chunk_words: int = 1 << 20,
                 scan: bool | None = None) -> None:
        if chunk_words <= 0:
            raise ValueError(f"chunk_words must be positive, not {chunk_words}")
        self.procfs = ProcFS(proc)
        self.chunk_words = chunk_words  # 16 MiB of records per step at most
        # None: ask the kernel (features.idle_bitmap_scan is the full probe)
        self.page_granular = has_idle_bitmap_scan(proc) if scan is None else bool(scan)
        self._fds: dict[int, int] = {}
        self._numa = NumaMapsNodes(self.procfs)

    # Nodes from /proc/PID/numa_maps (tierd/linux/nodes.py): a whole process's page-table
    # walk, so the engine asks only while many of its pages are unknown.
    nodes_scope = "process"

    def nodes(self, pid: int, word_start: int, nwords: int) -> np.ndarray:
        """Node per page of the range where its whole mapping is on one node, else -1."""
        return self._numa.nodes(pid, word_start, nwords)

    def _fd(self, pid: int) -> int:
        fd = self._fds.get(proc_key(pid))
        if fd is None:
            try:
                # O_RDWR: v2 reads clear the Accessed bits they report (O_RDONLY only
                # peeks); v3 reads never clear, its ioctl works on either.
                fd = self.procfs.open(pid, "idle_bitmap", os.O_RDWR)
            except FileNotFoundError:
                raise FeatureMissing(
                    "idle_bitmap",
                    "build and boot the patched kernel: kernel/build.sh applies kernel/patches",
                    what="/proc/PID/idle_bitmap does not exist (tierd kernel patch, not upstream)",
                ) from None
            self._fds[proc_key(pid)] = fd
        return fd

    def _splits(self, word_start: int, nwords: int) -> list[tuple[int, int]]:
        """(offset in the range, words) of each pread: boundaries at multiples of chunk_words
        of the address space."""
        c = self.chunk_words
        cuts = range((word_start // c + 1) * c, word_start + nwords, c)
        edges = [word_start, *cuts, word_start + nwords]
        return [(a - word_start, b - a) for a, b in zip(edges[:-1], edges[1:])]

    def sample(self, pid: int, word_start: int, nwords: int,
               skip=()) -> tuple[np.ndarray, np.ndarray]:
        self._numa.forget(pid)  # nodes() after this sample reads numa_maps afresh
        if len(skip) and not self.page_granular:
            raise ValueError("idle_bitmap v2 clears whole 64-page records: it cannot skip pages")
        if nwords <= 0:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64)
        return self._sample(pid, word_start, nwords, skip)

    def _gone(self, pid: int, e: OSError):
        """An OSError of a read or scan: ESRCH is exit or execve(), both ProcessGone."""
        if e.errno != errno.ESRCH:
            raise e
        self.close(pid)
        raise ProcessGone(pid, "idle_bitmap: ESRCH; or it called execve(): a new process to tierd") from None

    def _sample(self, pid: int, word_start: int, nwords: int, skip) -> tuple[np.ndarray, np.ndarray]:
        rec = np.zeros((nwords, 2), dtype=np.uint64)  # (present, idle) per word, CPU order
        fd = self._fd(pid)
        for lo, n in self._splits(word_start, nwords):
            if self.page_granular:
                self._scan(fd, pid, word_start + lo, n, skip, rec[lo: lo + n])
                continue
            try:
                data = pread_full(fd, IDLE_RECORD_BYTES * n, IDLE_RECORD_BYTES * (word_start + lo))
            except OSError as e:
                self._gone(pid, e)
            if not data and lo == 0 and _is_gone(self.procfs, pid, "idle_bitmap", IDLE_RECORD_BYTES):
                self.close(pid)
                raise ProcessGone(pid, "idle_bitmap: end of file")
            k = len(data) // IDLE_RECORD_BYTES
            rec[lo: lo + k] = np.frombuffer(data, dtype="<u8", count=2 * k).reshape(k, 2)
        present, idle = rec[:, 0].copy(), rec[:, 1]
        return present, present & ~idle

    def _scan(self, fd: int, pid: int, word: int, n: int, skip, out: np.ndarray) -> None:
        """Clearing scans of words [word, word + n) less the ``skip`` page ranges, ORed into
        ``out`` (uint64[n, 2]): scans of the pieces on either side of a skipped range each
        store their whole edge record, zeros outside their range."""
        lo_page, hi_page = word * PAGES_PER_WORD, (word + n) * PAGES_PER_WORD
        cuts = [lo_page]
        for a, b in skip:
            a, b = max(int(a), lo_page), min(int(b), hi_page)
            if a < b:
                cuts += [a, b]
        cuts.append(hi_page)
        tmp = np.empty((n, 2), dtype="<u8")
        for a, b in zip(cuts[::2], cuts[1::2]):
            while a < b:
                first = a // PAGES_PER_WORD - word
                vec = tmp[: n - first]
                try:
                    k, walk_end = idle_bitmap_scan(fd, a << PAGE_SHIFT, b << PAGE_SHIFT, vec,
                                                   IDLE_BITMAP_SCAN_CLEAR)
                except OSError as e:
                    self._gone(pid, e)
                out[first: first + k] |= vec[:k]
                end = walk_end >> PAGE_SHIFT
                if end <= a:  # no progress: the kernel stored nothing (cannot happen here)
                    raise OSError(errno.EIO, f"idle_bitmap scan of pid {pid} stopped at "
                                  f"{walk_end:#x}")
                a = end

    def close(self, pid: int) -> None:
        """Everything held for ``pid``: its descriptor and its numa_maps spans (a later
        process with the same pid must not inherit them)."""
        self._numa.forget(pid)
        fd = self._fds.pop(proc_key(pid), None)
        if fd is not None:
            os.close(fd)

    def close_all(self) -> None:
        for key in list(self._fds):
            self.close(key)
        self._numa.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close_all()


class PageIdleReader:
    """pagemap + /proc/kpageflags + /sys/kernel/mm/page_idle/bitmap (stock kernels).

    Per sample of a range: one pread of pagemap; the kpageflags of the present PFNs (to drop
    the shared zero page and map THP tail pages to their head); the distinct bitmap words those
    PFNs fall in, read in spans that merge words less than ``merge_gap_words`` apart; then the
    same words written back with the bits of exactly these PFNs set, marking them idle for the
    next sample.  (Writing only our bits rather than whole all-ones words costs the same number
    of writes, skips the rmap walks for other processes' pages, and keeps two targets that
    share a bitmap word from resetting each other's pages.)
    """

    name = "page_idle"

    def __init__(
        self,
        proc: str = "/proc",
        sys: str = "/sys",
        merge_gap_words: int = 8,
        merge_gap_pfns: int = 512,
        chunk_words: int = 1 << 14,
    ) -> None:
        self.procfs = ProcFS(proc)
        self.bitmap_path = os.path.join(sys, "kernel/mm/page_idle/bitmap")
        self.kpageflags_path = os.path.join(proc, "kpageflags")
        self.merge_gap_words = merge_gap_words
        self.merge_gap_pfns = merge_gap_pfns
        self.chunk_words = chunk_words  # 1M pages = 8 MiB of pagemap per pread at most
        self._fds: dict[int, int] = {}
        self._covered: dict[object, Covered] = {}  # proc_key -> words marked idle before
        self._bitmap_fd: int | None = None
        self._kpf_fd: int | None = None
        self._pfn_nodes = PagemapNodes(self.procfs, SysFS(sys, proc).memory_map)
        # Pages whose idle bit could not be read (the bitmap's partial last word), summed over
        # all samples: reported accessed, counted here for `tierd scan` and the engine.
        self.unreadable_pages = 0
        self._warned_unreadable = False

    # -- file descriptors ------------------------------------------------------------------
    def _pagemap_fd(self, pid: int) -> int:
        fd = self._fds.get(proc_key(pid))
        if fd is None:
            fd = self._fds[proc_key(pid)] = self.procfs.open(pid, "pagemap")
        return fd

    def _bitmap(self) -> int:
        if self._bitmap_fd is None:
            self._bitmap_fd = _open_feature(
                self.bitmap_path, os.O_RDWR, "page_idle",
                "boot a kernel with CONFIG_IDLE_PAGE_TRACKING=y, or tierd's patched kernel",
                "kernel built without CONFIG_IDLE_PAGE_TRACKING, Linux 4.3+")
        return self._bitmap_fd

    def _kpageflags(self) -> int:
        if self._kpf_fd is None:
            self._kpf_fd = _open_feature(
                self.kpageflags_path, os.O_RDONLY, "kpageflags",
                "boot a kernel with CONFIG_PROC_PAGE_MONITOR=y", "CONFIG_PROC_PAGE_MONITOR")
        return self._kpf_fd

    # -- sparse reads of per-PFN files -------------------------------------------------------
    def _read_u64(self, fd: int, idx: np.ndarray, gap: int, chunk: int = 0,
                  got: np.ndarray | None = None) -> np.ndarray:
        """u64 entries at sorted unique indices ``idx`` of a file of u64s, read in spans.
        Entries the file did not return (a short read: past its end) read 0; ``got``, if
        given (bool[idx.size]), is set True exactly for the entries that were read."""
        out = np.zeros(idx.size, dtype=np.uint64)
        if idx.size == 0:
            return out
        lo, hi = _spans(idx, gap)
        pos = np.searchsorted(idx, lo)
        end = np.searchsorted(idx, hi, side="right")
        for a, b, p, q in zip(lo.tolist(), hi.tolist(), pos.tolist(), end.tolist()):
            data = pread_full(fd, 8 * (b - a + 1), 8 * a, chunk)
            span = np.zeros(b - a + 1, dtype=np.uint64)
            k = len(data) // 8
            span[:k] = np.frombuffer(data, dtype=np.uint64, count=k)  # native byte order
            out[p:q] = span[idx[p:q] - a]
            if got is not None:
                got[p:q] = idx[p:q] - a < k
        return out

    def _flags(self, pfns: np.ndarray) -> np.ndarray:
        """kpageflags of sorted unique PFNs."""
        return self._read_u64(self._kpageflags(), pfns, self.merge_gap_pfns)

    def _heads(self, tails: np.ndarray) -> np.ndarray:
        """Head PFN of each tail PFN (vectorized): the first of tail & ~(2**k - 1), k = 1, 2 ..
        whose kpageflags has COMPOUND_HEAD.  A tail whose head is not found (the folio was
        split meanwhile) keeps its own PFN."""
        masks = ~((np.uint64(1) << HEAD_SEARCH_ORDERS) - np.uint64(1))
        cand = tails[:, None] & masks[None, :]
        uc = np.unique(cand)
        flags = self._flags(uc)[np.searchsorted(uc, cand)]
        is_head = ((flags >> np.uint64(KPF_COMPOUND_HEAD)) & np.uint64(1)).astype(bool)
        first = np.argmax(is_head, axis=1)
        found = is_head[np.arange(tails.size), first]
        return np.where(found, cand[np.arange(tails.size), first], tails)

    # -- the contract -------------------------------------------------------------------------
    nodes_scope = "range"  # nodes() costs a pagemap read of the words asked about

    def nodes(self, pid: int, word_start: int, nwords: int) -> np.ndarray:
        """Node per page (int16, -1 not present): pagemap PFNs through the sysfs memory
        blocks (tierd/linux/nodes.py), so the engine needs no move_pages queries."""
        return self._pfn_nodes.nodes(pid, word_start, nwords, self._pagemap_fd(pid))

    def sample(self, pid: int, word_start: int, nwords: int) -> tuple[np.ndarray, np.ndarray]:
        present = np.zeros(nwords, dtype=np.uint64)
        accessed = np.zeros(nwords, dtype=np.uint64)
        words, masks = [], []
        for lo in range(0, max(nwords, 0), self.chunk_words):
            n = min(self.chunk_words, nwords - lo)
            p, a, w, m = self._sample(pid, word_start + lo, n)
            present[lo : lo + n], accessed[lo : lo + n] = p, a
            words.append(w)
            masks.append(m)
        if words:
            # Mark idle once per sample, after every read: chunks can share bitmap words.
            w = np.concatenate(words)
            m = np.concatenate(masks)
            order = np.argsort(w, kind="stable")  # one chunk: already sorted, O(n)
            w, m = w[order], m[order]
            uw, first = np.unique(w, return_index=True)
            if uw.size:
                self._write_words(self._bitmap(), uw, np.bitwise_or.reduceat(m, first))
        # Words of the range that no sample marked idle before: their present pages read
        # accessed (the contract), whatever stale idle flags the bitmap holds.  Kept per word,
        # not per range, so a mapping that grows, shrinks or merges with a neighbour keeps
        # the history of the words it had.
        covered = self._covered.setdefault(proc_key(pid), Covered())
        for a, b in covered.missing(word_start, word_start + nwords):
            accessed[a - word_start: b - word_start] = present[a - word_start: b - word_start]
        covered.add(word_start, word_start + nwords)
        return present, accessed

    def _sample(self, pid: int, word_start: int, nwords: int) -> tuple[np.ndarray, ...]:
        """(present, accessed, bitmap words, our bits in them) of one chunk."""
        npages = PAGES_PER_WORD * nwords
        fd = self._pagemap_fd(pid)
        try:
            entries = read_pagemap(fd, pid, PAGES_PER_WORD * word_start, npages)
        except ProcessGone:
            self.close(pid)
            raise
        present, pfn = decode_pagemap(entries)
        idx = np.flatnonzero(present)
        pfns = pfn[idx]
        if idx.size and not pfns.any():
            raise FeatureMissing(
                "pagemap_pfn",
                "run tierd as root (it needs CAP_SYS_ADMIN)",
                what="/proc/PID/pagemap shows no page frame numbers (hidden without CAP_SYS_ADMIN "
                "since Linux 4.2)",
            )
        upfn, inv = _unique_inverse(pfns)
        flags = self._flags(upfn)
        # The shared zero page (and huge zero folio) is not this process's memory.
        real = ((flags >> np.uint64(KPF_ZERO_PAGE)) & np.uint64(1)) == 0
        head = upfn.copy()
        tail = (((flags >> np.uint64(KPF_COMPOUND_TAIL)) & np.uint64(1)) != 0) & real
        if tail.any():
            head[tail] = self._heads(upfn[tail])
        # Distinct head PFNs -> distinct bitmap words, and the mask of our bits in each.
        if tail.any():
            uh, hinv = _unique_inverse(head[real])
        else:  # no large folios: heads are the (sorted, unique) PFNs themselves
            uh, hinv = upfn[real], np.arange(int(real.sum()))
        words = uh >> np.uint64(6)
        bits = np.uint64(1) << (uh & np.uint64(63))
        uw, wfirst = np.unique(words, return_index=True)
        mask = np.add.reduceat(bits, wfirst) if uh.size else np.zeros(0, np.uint64)  # distinct bits
        bitmap = self._bitmap()
        got = np.zeros(uw.size, dtype=bool)
        idle_words = self._read_u64(bitmap, uw, self.merge_gap_words, SYSFS_IO_MAX, got)
        wi = np.searchsorted(uw, words)
        idle_h = (idle_words[wi] & bits) != 0
        if not got.all():
            # mm/page_idle.c returns whole words only and stops at max_pfn, so the last,
            # partial word of the bitmap (PFNs just below max_pfn, the top of the highest
            # node) can never be read.  Its pages read "not idle", i.e. accessed: a page we
            # know nothing about must not look cold (and once promoted it has a new PFN).
            self._note_unreadable(int((~got[wi]).sum()), uw[~got])
        # Back to pages: page -> unique pfn -> (real) head -> idle.
        idle_u = np.zeros(upfn.size, dtype=bool)
        idle_u[real] = idle_h[hinv]
        page_present = np.zeros(npages, dtype=bool)
        page_present[idx] = real[inv]
        page_accessed = np.zeros(npages, dtype=bool)
        page_accessed[idx] = real[inv] & ~idle_u[inv]
        return pack_bits(page_present), pack_bits(page_accessed), uw, mask

    def _write_words(self, fd: int, words: np.ndarray, values: np.ndarray) -> None:
        """Write ``values`` at bitmap word indices ``words`` (sorted unique), in spans; the
        gaps inside a span are written as 0, which the kernel ignores (only set bits act).

        A short write continues where the kernel stopped.  A write of 0 bytes is the end of
        memory: mm/page_idle.c clamps to max_pfn and returns only whole words, so the last,
        partial word is applied (its PFNs below max_pfn marked idle) but not counted.  That
        is checked, not assumed: a 0-byte write is accepted only at the last word of the
        bitmap (the next word's write fails with ENXIO: past max_pfn) and only if no word
        after it carries bits; anything else is an OSError naming the file and offset."""
        if words.size == 0:
            return
        lo, hi = _spans(words, self.merge_gap_words)
        pos = np.searchsorted(words, lo)
        end = np.searchsorted(words, hi, side="right")
        for a, b, p, q in zip(lo.tolist(), hi.tolist(), pos.tolist(), end.tolist()):
            span = np.zeros(b - a + 1, dtype=np.uint64)  # native, like the kernel's u64s
            span[words[p:q] - a] = values[p:q]
            buf = span.tobytes()
            done = 0
            while done < len(buf):
                n = os.pwrite(fd, buf[done : done + SYSFS_IO_MAX], 8 * a + done)
                if n > 0:
                    done += n
                    continue
                word = a + done // 8
                if span[done // 8 + 1 :].any() or not self._is_last_word(fd, word):
                    raise OSError(errno.EIO, f"short write to {self.bitmap_path} at word {word} "
                                  f"(byte {8 * word}): {len(buf) - done} bytes not written")
                break  # the partial last word: applied by the kernel, nothing after it

    def _is_last_word(self, fd: int, word: int) -> bool:
        """Whether ``word`` is the bitmap's partial last word: writing a zero word (a no-op:
        only set bits act) there returns 0, and one word further fails with ENXIO."""
        zero = bytes(8)
        try:
            if os.pwrite(fd, zero, 8 * word) != 0:
                return False
            os.pwrite(fd, zero, 8 * (word + 1))
        except OSError as e:
            return e.errno == errno.ENXIO
        return False

    def _note_unreadable(self, pages: int, words: np.ndarray) -> None:
        """Count (and log once) pages whose idle bit the bitmap cannot return."""
        self.unreadable_pages += pages
        if not self._warned_unreadable:
            self._warned_unreadable = True
            log.warning("%s: bitmap word(s) %s (PFNs from %d) cannot be read (the partial "
                        "word at max_pfn, mm/page_idle.c): their pages are reported accessed",
                        self.bitmap_path, words.tolist()[:4], int(words[0]) * 64)

    def close(self, pid: int) -> None:
        self._covered.pop(proc_key(pid), None)
        fd = self._fds.pop(proc_key(pid), None)
        if fd is not None:
            os.close(fd)

    def close_all(self) -> None:
        for key in list(self._fds):
            self.close(key)
        self._covered.clear()
        for attr in ("_bitmap_fd", "_kpf_fd"):
            fd = getattr(self, attr)
            if fd is not None:
                os.close(fd)
                setattr(self, attr, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close_all()
