"""Inside the rig: shared memory on the real kernel (issue 17, deliverable 3).

A process maps 32 MiB of shared anonymous memory (MAP_SHARED, as a database's shared buffers)
and forks: both then touch its first 8 MiB.  Every page is mapped twice, so move_pages(2)
with MPOL_MF_MOVE refuses it (EACCES, mm/migrate.c); tierd tracks the region once, merges
the two processes' accesses and moves it once with MPOL_MF_MOVE_ALL (root: CAP_SYS_NICE).
Before, every hot shared page was refused and retried: none reached the fast node.
"""

import re
import subprocess
import sys
import time

import numpy as np

from tierd.linux import MPOL_MF_MOVE, MPOL_MF_MOVE_ALL, Kernel

PAGES = 8192  # 32 MiB
HOT = 2048  # the first 8 MiB

CHILD = """
import mmap, os, sys, time
import numpy as np
m = mmap.mmap(-1, 32 << 20)            # MAP_SHARED | MAP_ANONYMOUS
m.madvise(15)                          # MADV_NOHUGEPAGE: 4 KiB pages, page-exact results
a = np.frombuffer(m, dtype=np.uint8)
a[::4096] = 1
r, w = os.pipe()
pid = os.fork()
a[::4096] += 1                         # both map every page now (a fork copies no shared PTEs)
if pid:
    os.read(r, 1)                      # the child has touched them too
    print(a.ctypes.data, pid, flush=True)
else:
    os.write(w, b"x")
while not os.path.exists(sys.argv[1]):  # the test has moved everything to node 1
    time.sleep(0.01)
while True:
    a[:8 << 20:4096] += 1
    time.sleep(0.02)
"""


def test_shared_memory_of_two_targets_is_moved_once_with_move_all(tmp_path):
    kernel = Kernel()
    go = tmp_path / "go"
    parent = subprocess.Popen([sys.executable, "-c", CHILD, str(go)], stdout=subprocess.PIPE,
                              text=True)
    child = None
    try:
        base, child = (int(x) for x in parent.stdout.readline().split())
        addrs = base + np.arange(PAGES, dtype=np.uint64) * 4096
        # mapped by two processes: plain MPOL_MF_MOVE is refused, MOVE_ALL moves them
        refused = kernel.move_pages(parent.pid, addrs[:16], np.ones(16, np.int32), flags=MPOL_MF_MOVE)
        assert (refused == -13).all(), refused  # EACCES
        status = kernel.move_pages(parent.pid, addrs, np.ones(PAGES, np.int32), flags=MPOL_MF_MOVE_ALL)
        assert (status == 1).mean() > 0.99, np.unique(status, return_counts=True)
        go.touch()
        time.sleep(0.5)
        policy = tmp_path / "tierd.yaml"
        policy.write_text(f"interval: 1s\n"
                          f"targets:\n  - name: db\n    pids: [{parent.pid}, {child}]\n"
                          f"migration:\n  rate: 1GiB/s\n"
                          f"metrics:\n  listen: ''\n")
        out = subprocess.run([sys.executable, "-m", "tierd", "run", "--config", str(policy),
                              "--intervals", "8"], capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stdout + out.stderr
        where = kernel.move_pages(parent.pid, addrs)
        hot_on_fast = float((where[:HOT] == 0).mean())
        cold_on_slow = float((where[HOT:] == 1).mean())
        assert hot_on_fast >= 0.95, (hot_on_fast, out.stderr[-3000:])
        assert cold_on_slow >= 0.95, (cold_on_slow, out.stderr[-3000:])
        assert not re.search(r"denied [1-9]", out.stderr), out.stderr[-3000:]
    finally:
        if child:
            subprocess.run(["kill", "-9", str(child)], check=False)
        parent.kill()
        parent.wait()
