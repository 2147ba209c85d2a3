"""Minimal THP workload for tests/vm/guest/test_guest_thp.py (not a test module).

    python thp_scatter_child.py SIZE_MIB STRIDE_PAGES

Maps SIZE_MIB of anonymous memory on a 2 MiB boundary with MADV_HUGEPAGE, its memory policy
bound to the slow node 1 (so the huge pages start there), writes every page, prints the
region's address, waits for a line on stdin, then touches one page in every STRIDE_PAGES
every 20 ms (STRIDE_PAGES 1: every page, densely hot) until killed.
"""

import ctypes
import mmap
import sys
import time

import numpy as np

HPAGE = 2 << 20
MADV_HUGEPAGE = 14
MPOL_BIND = 2
SYS_SET_MEMPOLICY = 238  # x86-64

size = int(sys.argv[1]) << 20
stride = int(sys.argv[2]) * 4096
mask = ctypes.c_ulong(1 << 1)  # node 1
libc = ctypes.CDLL(None, use_errno=True)
if libc.syscall(SYS_SET_MEMPOLICY, MPOL_BIND, ctypes.byref(mask), 64) != 0:
    sys.exit(f"set_mempolicy: errno {ctypes.get_errno()}")
m = mmap.mmap(-1, size + HPAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # shmem: no THP
a = np.frombuffer(m, dtype=np.uint8)
start = (-a.ctypes.data) % HPAGE
m.madvise(MADV_HUGEPAGE, start, size)
r = a[start: start + size]
r[::4096] = 1
print(r.ctypes.data, flush=True)
sys.stdin.readline()
while True:
    r[::stride] += 1
    time.sleep(0.02)
