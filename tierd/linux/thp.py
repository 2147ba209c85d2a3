"""Transparent huge pages of a target: which 2 MiB blocks are THP-mapped, and splitting them.

Which blocks are THPs: for the block's first page, /proc/PID/pagemap gives the PFN
(CAP_SYS_ADMIN since Linux 4.2) and /proc/kpageflags that PFN's flags: KPF_THP (Linux 4.9
for anonymous THP) on a KPF_COMPOUND_HEAD page means a huge folio starts there.  Chosen over
/proc/PID/smaps (AnonHugePages is a per-VMA total: it says a VMA has huge pages, not which
blocks) and over the PAGEMAP_SCAN ioctl (Linux 6.7, PAGE_IS_HUGE: one call per range, but a
struct-and-pointer ioctl for what two 8-byte reads per candidate block answer).  Only the
blocks the engine asks about are read: hot blocks whose 512 pages share one access history
(what a PMD mapping's single Accessed bit looks like), a few hundred at most per interval.

Splitting, two ways, the first that works:

- ``madvise``: process_madvise(pidfd, [one 4 KiB page of the block], MADV_COLD) (Linux 5.10,
  CAP_SYS_NICE).  MADV_COLD on a range that covers only part of a PMD-mapped THP splits the
  folio (mm/madvise.c, madvise_cold_or_pageout_pte_range: split_folio when
  ``next - addr != HPAGE_PMD_SIZE``, since MADV_COLD's introduction in 5.4) and then
  deactivates that one 4 KiB page: a documented, production interface, with the side effect
  of one page per split huge page moved to the inactive LRU list (and its Accessed bit
  cleared, which the priming sample does anyway).  It relies on the kernel splitting rather
  than skipping a partly covered THP; the result is checked (kpageflags) after every call,
  and if a call split nothing, debugfs is used from then on.
- ``debugfs``: Linux 6.12 (since 5.13, commit fa6c02315f74) splits the THPs of a process's
  address range through debugfs: write "PID,0xSTART,0xEND" to
/sys/kernel/debug/split_huge_pages (CONFIG_DEBUG_FS, debugfs mounted, root).  The kernel
walks the range 4 KiB at a time under mmap_read_lock and splits every THP it can lock;
it stops at the first address without a VMA, so ranges are written per run of adjacent
blocks.  A split copies the PMD's Accessed bit into all 512 new PTEs: the caller primes the
range (one discarded sample) before trusting its bits.

debugfs is a debugging interface (ABI not stable, root only, often not mounted or compiled
out on production kernels, global mutex), acceptable for a daemon only as a stopgap.  The
MADV_COLD route is a stable interface used for a side effect.  The proper interface is an
explicit one, e.g. process_madvise(pidfd, MADV_SPLIT_HUGE) (an advice that splits the
range's THPs and marks the range so khugepaged does not collapse it back until
MADV_HUGEPAGE/MADV_COLLAPSE), see README "Huge pages".
"""

from __future__ import annotations

import errno
import os

import numpy as np

from tierd.linux.errors import FeatureMissing, ProcessGone
from tierd.linux.features import Feature
from tierd.linux.procfs import ProcFS, ProcHandle, decode_pagemap
from tierd.pages import HPAGE_PAGES, KPF_COMPOUND_HEAD, KPF_THP, PAGE_SHIFT

SPLIT_SINCE = ("Linux 5.13 (debugfs split_huge_pages with a pid and address range, "
               "CONFIG_DEBUG_FS, debugfs mounted)")
MADVISE_SINCE = "Linux 5.10 (process_madvise; MADV_COLD splits a partly covered THP since 5.4)"
SPLIT_FIX = ("boot a kernel with CONFIG_DEBUG_FS=y (and CONFIG_TRANSPARENT_HUGEPAGE=y) and "
             "mount debugfs: mount -t debugfs none /sys/kernel/debug; run tierd as root")
# process_madvise refused (EPERM): no CAP_SYS_NICE, or a seccomp filter without process_madvise
# or pidfd_open.  The shipped tierd.service grants both; a drop-in or another unit may not.
SPLIT_CAP_FIX = ("give tierd CAP_SYS_NICE and the process_madvise and pidfd_open system calls: "
                 "under systemd a drop-in (systemctl edit tierd) with [Service] "
                 "CapabilityBoundingSet=CAP_SYS_NICE and SystemCallFilter=process_madvise "
                 "pidfd_open (the shipped tierd.service has both); or set huge_pages.split: off")


class ThpSplitter:
    """Finds and splits THPs of other processes (roots injected for tests)."""

    def __init__(self, proc: str = "/proc", debugfs: str = "/sys/kernel/debug",
                 syscalls=None) -> None:
        self.procfs = ProcFS(proc)
        self.kpageflags_path = os.path.join(proc, "kpageflags")
        self.split_path = os.path.join(debugfs, "split_huge_pages")
        self.syscalls = syscalls  # tierd.linux.syscalls.Syscalls, or None: debugfs only
        self.madvise_works: bool | None = None if syscalls is not None else False
        self.last_method = ""  # how the last split was done (for logs and tests)
        self.madvise_denied = ""  # why process_madvise was refused (EPERM), if it was

    def feature(self) -> Feature:
        """Whether splitting can work here; nothing is split.  process_madvise is taken as
        working until a call shows otherwise (then debugfs must be there)."""
        if self.madvise_works is not False:
            return Feature("thp_split", True, MADVISE_SINCE,
                           "process_madvise(MADV_COLD) on part of each huge page")
        return self.debugfs_feature()

    def debugfs_feature(self) -> Feature:
        if not os.path.exists(self.split_path):
            return Feature("thp_split", False, SPLIT_SINCE,
                           f"no {self.split_path} (CONFIG_DEBUG_FS off, or debugfs not mounted)",
                           SPLIT_FIX)
        if not os.access(self.split_path, os.W_OK):
            return Feature("thp_split", False, SPLIT_SINCE,
                           f"{self.split_path} is not writable (not root?)", SPLIT_FIX)
        return Feature("thp_split", True, SPLIT_SINCE, f"{self.split_path} is writable")

    def is_thp(self, pid: int, block_vpns: np.ndarray) -> np.ndarray:
        """bool per block (first vpn of a 2 MiB-aligned block): a THP starts there."""
        vpns = np.asarray(block_vpns, dtype=np.int64)
        out = np.zeros(vpns.size, dtype=bool)
        if vpns.size == 0:
            return out
        fd = self.procfs.open(pid, "pagemap")
        try:
            entries = np.array([_pread_u64(fd, int(v)) for v in vpns], dtype=np.uint64)
        finally:
            os.close(fd)
        present, pfn = decode_pagemap(entries)
        if present.any() and not pfn[present].any():
            raise FeatureMissing("pagemap_pfn", "run tierd as root (it needs CAP_SYS_ADMIN)",
                                 what="/proc/PID/pagemap shows no page frame numbers")
        try:
            kfd = os.open(self.kpageflags_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FeatureMissing("kpageflags", "boot a kernel with CONFIG_PROC_PAGE_MONITOR=y",
                                 what=f"no {self.kpageflags_path}") from None
        try:
            for i in np.flatnonzero(present):
                flags = _pread_u64(kfd, int(pfn[i]))
                out[i] = bool(flags >> KPF_THP & 1) and bool(flags >> KPF_COMPOUND_HEAD & 1)
        finally:
            os.close(kfd)
        return out

    def split(self, pid: int, block_vpns: np.ndarray) -> int:
        """Split the THPs of the given 2 MiB blocks: process_madvise while it works, else
        debugfs.  Returns the number of kernel calls.  Raises ProcessGone, FeatureMissing
        (no way works), or OSError.  Blocks the kernel leaves whole (a locked folio) are the
        caller's to notice (``is_thp``)."""
        blocks = np.unique(np.asarray(block_vpns, dtype=np.int64))
        if self.madvise_works is not False and blocks.size:
            try:
                calls = self._split_madvise(pid, blocks)
            except PermissionError as e:
                # EPERM is about tierd, not this process (process_madvise's ptrace check on
                # the target is EACCES): no later call will do better
                self.madvise_works = False
                self.madvise_denied = f"{e.strerror or e}"
            else:
                whole = self.is_thp(pid, blocks)
                if self.madvise_works is None:
                    self.madvise_works = not whole.all()
                if self.madvise_works:
                    self.last_method = "madvise"
                    return calls
                blocks = blocks[whole]  # this kernel does not split that way: debugfs
        if self.madvise_denied and not self.debugfs_feature().available:
            raise FeatureMissing("thp_split", SPLIT_CAP_FIX,
                                 what=f"process_madvise was refused ({self.madvise_denied}): "
                                 "tierd lacks CAP_SYS_NICE or may not make that system call, "
                                 "and debugfs split_huge_pages is not there either")
        self.last_method = "debugfs"
        return self._split_debugfs(pid, blocks)

    def _split_madvise(self, pid: int, blocks: np.ndarray) -> int:
        from tierd.linux.syscalls import MADV_COLD, UIO_MAXIOV

        try:
            # a held process (ProcHandle): a pidfd checked to be that process, not the pid's
            # next owner (tierd/linux/procfs.py)
            pidfd = pid.pidfd() if isinstance(pid, ProcHandle) else os.pidfd_open(pid)
        except ProcessLookupError:
            raise ProcessGone(pid, "pidfd_open: no such process") from None
        try:
            ranges = np.empty((blocks.size, 2), dtype=np.uint64)
            ranges[:, 0] = blocks.astype(np.uint64) << np.uint64(PAGE_SHIFT)
            ranges[:, 1] = 1 << PAGE_SHIFT  # one 4 KiB page: a partial range splits the THP
            try:
                self.syscalls.process_madvise(pidfd, ranges, MADV_COLD)
            except ProcessGone:
                raise ProcessGone(pid, "process_madvise: no such process") from None
        finally:
            os.close(pidfd)
        return -(-blocks.size // UIO_MAXIOV)

    def _split_debugfs(self, pid: int, block_vpns: np.ndarray) -> int:
        runs = block_runs(block_vpns)
        if not runs:
            return 0
        try:
            fd = os.open(self.split_path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FeatureMissing("thp_split", SPLIT_FIX,
                                 what=f"process_madvise(MADV_COLD) did not split huge pages and "
                                 f"there is no {self.split_path} (CONFIG_DEBUG_FS, "
                                 "debugfs)") from None
        try:
            for lo, hi in runs:
                cmd = f"{pid},{lo << PAGE_SHIFT:#x},{hi << PAGE_SHIFT:#x}"
                try:
                    os.write(fd, cmd.encode())
                except OSError as e:
                    if e.errno == errno.ESRCH:
                        raise ProcessGone(pid, "split_huge_pages: no such process") from None
                    raise
        finally:
            os.close(fd)
        return len(runs)


def block_runs(block_vpns) -> list[tuple[int, int]]:
    """Sorted 2 MiB block starts -> [(first vpn, end vpn)) runs of adjacent blocks."""
    v = np.unique(np.asarray(block_vpns, dtype=np.int64))
    if v.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(v) != HPAGE_PAGES) + 1
    starts = np.split(v, breaks)
    return [(int(s[0]), int(s[-1]) + HPAGE_PAGES) for s in starts]


def _pread_u64(fd: int, index: int) -> int:
    data = os.pread(fd, 8, 8 * index)
    return int.from_bytes(data, "little") if len(data) == 8 else 0
