"""The hot-set child shared by the guest daemon test and the systemd service test.

The child maps 64 MiB of 4 KiB pages; ``start`` places all of them on the slow node 1 with
move_pages(2), then lets the child keep touching its first 8 MiB.  Whatever then moves the
hot pages to node 0 is the daemon under test; ``placement`` reads the ground truth.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np

PAGES = 16384          # 64 MiB
HOT = 2048             # the first 8 MiB

CHILD = """
import mmap, sys, time
import numpy as np
m = mmap.mmap(-1, 64 << 20)
m.madvise(15)                          # MADV_NOHUGEPAGE: 4 KiB pages, page-exact results
a = np.frombuffer(m, dtype=np.uint8)
a[::4096] = 1
print(a.ctypes.data, flush=True)
sys.stdin.readline()                   # the test has moved everything to node 1
while True:
    a[:8 << 20:4096] += 1
    time.sleep(0.02)
"""


def start(kernel, *argv: str, **popen) -> tuple[subprocess.Popen, np.ndarray]:
    """Start the child (extra ``argv`` tag its command line), move all of its pages to node 1
    and start its hot loop; returns the child and its page addresses."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, *argv], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, **popen)
    try:
        base = int(child.stdout.readline())
        addrs = base + np.arange(PAGES, dtype=np.uint64) * 4096
        status = kernel.move_pages(child.pid, addrs, np.ones(PAGES, dtype=np.int32))
        assert (status == 1).mean() > 0.99, np.unique(status, return_counts=True)
        child.stdin.write("go\n")
        child.stdin.flush()
    except BaseException:
        child.kill()
        child.wait()
        raise
    return child, addrs


def placement(kernel, child, addrs) -> tuple[float, float]:
    """(fraction of the hot pages on node 0, fraction of the cold pages on node 1)."""
    where = kernel.move_pages(child.pid, addrs)
    return float((where[:HOT] == 0).mean()), float((where[HOT:] == 1).mean())
