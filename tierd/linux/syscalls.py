"""The one ctypes module: raw system calls tierd makes (move_pages(2), process_madvise(2)).

``Syscalls`` binds libc's variadic ``syscall(2)`` once (``CDLL(None, use_errno=True)``: the
symbols already loaded into the interpreter, with errno captured right after each call) and
calls it with numpy buffers, so a batch of pages costs one call and no per-page Python work.

move_pages(2) appeared in Linux 2.6.18 (needs CONFIG_NUMA and CONFIG_MIGRATION; without them the
syscall is sys_ni_syscall and fails with ENOSYS).  Its number is per architecture: 279 on
x86_64 (arch/x86/entry/syscalls/syscall_64.tbl) and 239 on aarch64, which uses the generic
table (include/uapi/asm-generic/unistd.h, scripts/syscall.tbl; 235 there is mbind).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import platform
from collections.abc import Iterator
from types import MappingProxyType

import numpy as np

from tierd.linux.errors import FeatureMissing, MovePagesError, ProcessGone
from tierd.pages import PAGE_SIZE

# include/uapi/linux/mempolicy.h
MPOL_MF_MOVE = 1 << 1  # move pages owned by this process only (not shared with others)
MPOL_MF_MOVE_ALL = 1 << 2  # move every page, shared ones too; needs CAP_SYS_NICE

# __NR_move_pages per platform.machine().
MOVE_PAGES_NR = MappingProxyType({
    "x86_64": 279,  # arch/x86/entry/syscalls/syscall_64.tbl
    "aarch64": 239,  # include/uapi/asm-generic/unistd.h
    "arm64": 239,
})

# __NR_process_madvise (Linux 5.10): 440 in both tables.
PROCESS_MADVISE_NR = MappingProxyType({"x86_64": 440, "aarch64": 440, "arm64": 440})
MADV_COLD = 20  # include/uapi/asm-generic/mman-common.h
UIO_MAXIOV = 1024  # iovecs per process_madvise call

# Status of a page the kernel reported nothing about: a value no kernel writes (it writes
# node ids >= 0 and small -errno).  See ``Syscalls.move_pages``.
UNREPORTED = np.int32(-(1 << 29))


class Syscalls:
    """System calls through libc's ``syscall()``.

    ``libc`` and ``machine`` can be injected (tests pass a fake libc whose ``syscall`` is a
    Python function receiving the same integer arguments and setting errno with
    ``ctypes.set_errno``).
    """

    def __init__(self, libc=None, machine: str | None = None) -> None:
        self.machine = machine or platform.machine()
        self.libc = libc if libc is not None else ctypes.CDLL(None, use_errno=True)
        fn = self.libc.syscall
        # long syscall(long number, ...); the arguments below are move_pages's:
        # (int pid, unsigned long count, void **pages, const int *nodes, int *status, int flags)
        # Declared explicitly so ctypes passes full 64-bit integers and pointers.
        fn.argtypes = [
            ctypes.c_long,
            ctypes.c_long,
            ctypes.c_ulong,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
        ]
        fn.restype = ctypes.c_long
        self._syscall = fn

    @property
    def move_pages_nr(self) -> int:
        nr = MOVE_PAGES_NR.get(self.machine)
        if nr is None:
            raise FeatureMissing(
                "move_pages",
                "add it to tierd.linux.syscalls.MOVE_PAGES_NR (x86_64 and aarch64 are known)",
                what=f"tierd does not know the move_pages syscall number on {self.machine}",
            )
        return nr

    def move_pages(
        self,
        pid: int,
        addrs: np.ndarray,
        nodes: np.ndarray | None = None,
        flags: int = MPOL_MF_MOVE,
        batch: int = 4096,
    ) -> np.ndarray:
        """move_pages(2) on ``addrs`` (uint64 virtual addresses) of process ``pid`` (0 = self).

        ``nodes`` (int32 per address) moves each page to that node; None only queries.  Calls
        the kernel once per ``batch`` addresses.  Returns int32 status per address: >= 0 the
        node the page is on (after the move), < 0 -errno for that page (EBUSY, EACCES, ENOENT,
        EFAULT, ENOMEM ...).  Whole-call failures: ESRCH -> ProcessGone, EPERM/EACCES ->
        PermissionError, ENOSYS -> FeatureMissing, others (ENODEV, EINVAL, E2BIG, ENOMEM) ->
        MovePagesError.

        The kernel does not always write every status (mm/migrate.c do_pages_move): pages are
        queued in runs with the same destination and each run's statuses are stored only
        after it migrated.  When migrate_pages() leaves some pages of a run behind, the call
        returns a positive count (the run's failures plus every page not reached) and stops:
        the run's statuses and all later ones stay unwritten, though most of the run moved.
        A whole-call error (ENOMEM from migrate_pages, EFAULT, ENODEV ...) part-way through
        likewise leaves the current run unwritten, and earlier ``batch`` calls have moved.
        So the status array starts as UNREPORTED and, after a move call that did not report
        every page, the unreported pages of that call are asked for with a query
        (nodes=NULL, which writes every status): a page is never taken for absent because
        its status was not written.  If that query fails too they stay UNREPORTED (node
        unknown).  A whole-call failure raises with the status so far attached as the
        exception's ``status`` (this array) and ``done`` (entries up to the end of the
        failing call; later ones were not attempted).
        """
        pages = np.ascontiguousarray(addrs, dtype=np.uint64)
        if pages.ndim != 1:
            raise ValueError("addrs must be one-dimensional")
        n = pages.shape[0]
        status = np.full(n, UNREPORTED, dtype=np.int32)
        if n == 0:
            return status
        target = None
        if nodes is not None:
            target = np.ascontiguousarray(nodes, dtype=np.int32)
            if target.shape != pages.shape:
                raise ValueError(f"nodes has shape {target.shape}, addrs {pages.shape}")
        if batch <= 0:
            raise ValueError("batch must be positive")
        nr = self.move_pages_nr
        pages_p, status_p = pages.ctypes.data, status.ctypes.data
        nodes_p = target.ctypes.data if target is not None else None
        for lo in range(0, n, batch):
            count = min(batch, n - lo)
            ctypes.set_errno(0)
            ret = self._syscall(
                nr,
                pid,
                count,
                pages_p + 8 * lo,
                None if nodes_p is None else nodes_p + 4 * lo,
                status_p + 4 * lo,
                flags,
            )
            err = ctypes.get_errno() if ret < 0 else 0
            if ret != 0 and err != errno.ESRCH:
                self._fill_unreported(pid, pages[lo: lo + count], status[lo: lo + count], flags)
            if ret < 0:
                try:
                    self._raise(err, pid, nodes is not None)
                except OSError as e:
                    e.status, e.done = status, lo + count
                    raise
        return status

    def _fill_unreported(self, pid: int, pages: np.ndarray, status: np.ndarray, flags: int) -> None:
        """Query the node of the entries of one call the kernel left UNREPORTED (in place)."""
        left = np.flatnonzero(status == UNREPORTED)
        if left.size == 0:
            return
        q = np.full(left.size, UNREPORTED, dtype=np.int32)
        a = np.ascontiguousarray(pages[left])
        ctypes.set_errno(0)
        if self._syscall(self.move_pages_nr, pid, left.size, a.ctypes.data, None,
                         q.ctypes.data, flags) >= 0:
            status[left] = q

    def process_madvise(self, pidfd: int, ranges: np.ndarray, advice: int) -> int:
        """process_madvise(2) of ``advice`` on ``ranges`` (uint64 [n, 2]: start, length) of
        the process behind ``pidfd``, UIO_MAXIOV ranges per call.  Returns the bytes advised.
        ESRCH -> ProcessGone, EPERM -> PermissionError (needs ptrace access), EINVAL/ENOSYS ->
        FeatureMissing (Linux < 5.10, or an advice this kernel does not take remotely)."""
        iov = np.ascontiguousarray(ranges, dtype=np.uint64).reshape(-1, 2)
        nr = PROCESS_MADVISE_NR.get(self.machine)
        if nr is None:
            raise FeatureMissing("process_madvise", "add it to PROCESS_MADVISE_NR",
                                 what=f"unknown process_madvise number on {self.machine}")
        done = 0
        for lo in range(0, iov.shape[0], UIO_MAXIOV):
            n = min(UIO_MAXIOV, iov.shape[0] - lo)
            ctypes.set_errno(0)
            # (int pidfd, const struct iovec *iov, size_t vlen, int advice, unsigned flags),
            # through the move_pages-shaped prototype: every argument is one register
            ret = self._syscall(nr, pidfd, iov.ctypes.data + 16 * lo, n, advice, 0, 0)
            if ret < 0:
                err = ctypes.get_errno()
                if err == errno.ESRCH:
                    raise ProcessGone(-1, "process_madvise: ESRCH")
                if err == errno.EPERM:
                    raise PermissionError(err, "process_madvise needs CAP_SYS_NICE")
                if err in (errno.EINVAL, errno.ENOSYS):
                    raise FeatureMissing(
                        "process_madvise", "boot Linux >= 5.10",
                        what=f"process_madvise(advice {advice}) failed: {errno.errorcode[err]}")
                raise OSError(err, f"process_madvise: {errno.errorcode.get(err, err)}")
            done += ret
        return done

    @staticmethod
    def _raise(err: int, pid: int, moving: bool) -> None:
        if err == errno.ESRCH:
            raise ProcessGone(pid, "move_pages: ESRCH")
        if err in (errno.EPERM, errno.EACCES):
            why = (
                "moving another process's pages needs ptrace access to it (same user, or "
                "CAP_SYS_PTRACE); MPOL_MF_MOVE_ALL also needs CAP_SYS_NICE"
                if err == errno.EPERM
                else "a target node is not allowed by the caller's cpuset"
            )
            raise PermissionError(err, f"move_pages of pid {pid} refused: {why}")
        if err == errno.ENOSYS:
            raise FeatureMissing(
                "move_pages",
                "boot a kernel with CONFIG_NUMA=y and CONFIG_MIGRATION=y (Linux >= 2.6.18)",
                what="the kernel has no move_pages(2) (built without CONFIG_NUMA/CONFIG_MIGRATION)",
            )
        detail = "a target node is not online" if err == errno.ENODEV and moving else ""
        raise MovePagesError(err, detail)


def move_pages(
    pid: int,
    addrs: np.ndarray,
    nodes: np.ndarray | None = None,
    flags: int = MPOL_MF_MOVE,
    batch: int = 4096,
) -> np.ndarray:
    """Convenience wrapper: ``Syscalls().move_pages(...)`` (binds libc on each call; code that
    calls repeatedly should hold a ``Syscalls`` or use ``Kernel.move_pages``)."""
    return Syscalls().move_pages(pid, addrs, nodes, flags, batch)


@contextlib.contextmanager
def touched_page() -> Iterator[int]:
    """An anonymous private page of this process, written once (so it is present), yielding
    its address.  Used by feature probes that need one page of our own to ask about."""
    m = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        m[0:1] = b"\x01"
        c = ctypes.c_char.from_buffer(m)
        try:
            yield ctypes.addressof(c)
        finally:
            del c  # release the buffer export before closing the mapping
    finally:
        m.close()
