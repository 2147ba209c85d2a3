"""Guest side of kernel/stress.sh: the loads that race idle_bitmap's walks, for SECONDS.

    python kernel/stress_guest.py scan SECONDS       clearing IDLE_BITMAP_SCANs and reads of
                                                     every mapping of every selftest and
                                                     churn process
    python kernel/stress_guest.py churn SECONDS      THP faults, splits (MADV_DONTNEED of one
                                                     page), collapses (MADV_COLLAPSE), mremap,
                                                     fork/exit, migration between the nodes
    python kernel/stress_guest.py page_idle SECONDS  reads of /sys/kernel/mm/page_idle/bitmap

Errors of the loads themselves (a process gone, EBUSY, no THP) are expected and ignored: the
run passes or fails on the kernel log (stress.sh).  Each load prints how many operations of
each kind it did when its time is up.
"""

import mmap
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HUGE = 2 << 20
MADV_HUGEPAGE, MADV_COLLAPSE = 14, 25


def mapped_ranges(pid_dir: Path) -> list[tuple[int, int]]:
    """The VMAs of /proc/PID/maps below the 47-bit TASK_SIZE ([vsyscall] is above it)."""
    ranges = []
    for line in pid_dir.joinpath("maps").read_text().splitlines():
        lo, hi = (int(x, 16) for x in line.split(None, 1)[0].split("-"))
        if hi <= 1 << 47:
            ranges.append((lo, hi))
    return ranges


def scan(deadline: float) -> None:
    import numpy as np

    from tierd.linux.tracking import IDLE_BITMAP_SCAN_CLEAR, idle_bitmap_scan

    vec = np.zeros(2 * 4096, dtype=np.uint64)  # 4096 records = 1 GiB per call
    n = {"processes": 0, "scans": 0, "resumed": 0, "records": 0, "reads": 0, "errors": 0}
    while time.time() < deadline:
        for d in Path("/proc").glob("[0-9]*"):
            try:
                comm = d.joinpath("comm").read_text().strip()
                if comm not in ("idle_bitmap", "python", "python3"):
                    continue
                fd = os.open(d / "idle_bitmap", os.O_RDONLY)
            except OSError:
                continue
            n["processes"] += 1
            try:
                # Every mapping as /proc/PID/maps lists it a moment ago: by the time of the
                # scan it may be unmapped, split, collapsed, migrating or the process gone.
                for lo, hi in mapped_ranges(d):
                    a = lo
                    while a < hi:
                        got, walk_end = idle_bitmap_scan(fd, a, min(hi, a + (1 << 30)), vec,
                                                         IDLE_BITMAP_SCAN_CLEAR)
                        n["scans"] += 1
                        n["records"] += got
                        n["resumed"] += walk_end < min(hi, a + (1 << 30))
                        if walk_end <= a:
                            break
                        a = walk_end
                    os.pread(fd, 4096, lo // 4096 // 64 * 16)
                    n["reads"] += 1
            except OSError:
                n["errors"] += 1
            finally:
                os.close(fd)
    print("stress_guest scan:", ", ".join(f"{v} {k}" for k, v in n.items()), flush=True)


def churn(deadline: float) -> None:
    import numpy as np

    from tierd.linux.syscalls import Syscalls

    sc = Syscalls()
    size = 8 * HUGE
    n = {"rounds": 0, "thp_faulted": 0, "splits": 0, "collapses": 0, "collapse_errors": 0,
         "forks": 0, "to_node1": 0, "to_node0": 0, "mremaps": 0, "errors": 0}
    while time.time() < deadline:
        try:
            n["rounds"] += 1
            mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            mm.madvise(MADV_HUGEPAGE)
            buf = np.frombuffer(mm, dtype=np.uint8)
            buf[::4096] = 1                                   # THP faults
            base = buf.ctypes.data
            n["thp_faulted"] += thp_kib() // 2048
            addrs = base + np.arange(0, size, 4096, dtype=np.uint64)
            st = sc.move_pages(0, addrs[::512], np.ones(8, dtype=np.int32))  # to node 1
            n["to_node1"] += int((st == 1).sum())  # of 8 THP heads
            mm.madvise(mmap.MADV_DONTNEED, HUGE + 4096, 4096)  # split one THP
            n["splits"] += 1
            try:
                mm.madvise(MADV_COLLAPSE, 0, size)            # collapse again
                n["collapses"] += 1
            except OSError:
                n["collapse_errors"] += 1
            pid = os.fork()
            if pid == 0:
                buf[::4096] = 2                                # COW faults, then exit
                os._exit(0)
            os.waitpid(pid, 0)
            n["forks"] += 1
            st = sc.move_pages(0, addrs, np.zeros(addrs.size, dtype=np.int32))  # back to 0
            n["to_node0"] += int((st == 0).sum())  # of 4096 pages
            del buf
            mm.resize(2 * size)                                # mremap (may move)
            n["mremaps"] += 1
            mm.close()
        except (OSError, ValueError, BufferError):
            n["errors"] += 1
    print("stress_guest churn:", ", ".join(f"{v} {k}" for k, v in n.items()), flush=True)


def thp_kib() -> int:
    """AnonHugePages of this process (kB): the churn's THP faults that got a huge page."""
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


def page_idle(deadline: float) -> None:
    path = "/sys/kernel/mm/page_idle/bitmap"
    passes = nbytes = errors = 0
    while time.time() < deadline:
        try:
            fd = os.open(path, os.O_RDONLY)
            off = 0
            while chunk := os.pread(fd, 4096, off):
                off += len(chunk)
            os.close(fd)
            passes += 1
            nbytes += off
        except OSError:
            errors += 1
    print(f"stress_guest page_idle: {passes} passes over the bitmap, {nbytes} bytes, "
          f"{errors} errors", flush=True)


if __name__ == "__main__":
    {"scan": scan, "churn": churn, "page_idle": page_idle}[sys.argv[1]](
        time.time() + float(sys.argv[2]))
