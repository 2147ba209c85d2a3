"""Guest side of kernel/stress.sh: the loads that race idle_bitmap's walks, for SECONDS.

    python kernel/stress_guest.py scan SECONDS       clearing IDLE_BITMAP_SCANs and reads of
                                                     the top TiB of every selftest and churn
                                                     process
    python kernel/stress_guest.py churn SECONDS      THP faults, splits (MADV_DONTNEED of one
                                                     page), collapses (MADV_COLLAPSE), mremap,
                                                     fork/exit, migration between the nodes
    python kernel/stress_guest.py page_idle SECONDS  reads of /sys/kernel/mm/page_idle/bitmap

Errors of the loads themselves (a process gone, EBUSY, no THP) are expected and ignored: the
run passes or fails on the kernel log (stress.sh).
"""

import mmap
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HUGE = 2 << 20
MADV_HUGEPAGE, MADV_COLLAPSE = 14, 25
TOP = 0x7F00_0000_0000 - (1 << 40)  # 1 TiB below where mmap places things


def scan(deadline: float) -> None:
    import numpy as np

    from tierd.linux.tracking import IDLE_BITMAP_SCAN_CLEAR, idle_bitmap_scan

    vec = np.zeros(2 * 4096, dtype=np.uint64)  # 4096 records = 1 GiB per call
    while time.time() < deadline:
        for d in Path("/proc").glob("[0-9]*"):
            try:
                comm = d.joinpath("comm").read_text().strip()
                if comm not in ("idle_bitmap", "python", "python3"):
                    continue
                fd = os.open(d / "idle_bitmap", os.O_RDONLY)
            except OSError:
                continue
            try:
                for i in range(0, 1024, 16):  # 1 TiB: 64 GiB steps, one GiB scanned in each
                    a = TOP + (i << 30)
                    idle_bitmap_scan(fd, a, a + (1 << 30), vec, IDLE_BITMAP_SCAN_CLEAR)
                    os.pread(fd, 4096, a // 4096 // 64 * 16)
            except OSError:
                pass
            finally:
                os.close(fd)


def churn(deadline: float) -> None:
    import numpy as np

    from tierd.linux.syscalls import Syscalls

    sc = Syscalls()
    size = 8 * HUGE
    while time.time() < deadline:
        try:
            mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            mm.madvise(MADV_HUGEPAGE)
            buf = np.frombuffer(mm, dtype=np.uint8)
            buf[::4096] = 1                                   # THP faults
            base = buf.ctypes.data
            addrs = base + np.arange(0, size, 4096, dtype=np.uint64)
            sc.move_pages(0, addrs[::512], np.ones(8, dtype=np.int32))  # to node 1
            mm.madvise(mmap.MADV_DONTNEED, HUGE + 4096, 4096)  # split one THP
            try:
                mm.madvise(MADV_COLLAPSE, 0, size)            # collapse again
            except OSError:
                pass
            pid = os.fork()
            if pid == 0:
                buf[::4096] = 2                                # COW faults, then exit
                os._exit(0)
            os.waitpid(pid, 0)
            sc.move_pages(0, addrs, np.zeros(addrs.size, dtype=np.int32))  # back to node 0
            del buf
            mm.resize(2 * size)                                # mremap (may move)
            mm.close()
        except (OSError, ValueError, BufferError):
            pass


def page_idle(deadline: float) -> None:
    path = "/sys/kernel/mm/page_idle/bitmap"
    while time.time() < deadline:
        try:
            fd = os.open(path, os.O_RDONLY)
            off = 0
            while os.pread(fd, 4096, off):
                off += 4096
            os.close(fd)
        except OSError:
            pass


if __name__ == "__main__":
    {"scan": scan, "churn": churn, "page_idle": page_idle}[sys.argv[1]](
        time.time() + float(sys.argv[2]))
