"""Inside the rig: `tierd run` end to end on a real process of the patched kernel.

A child process maps 64 MiB of 4 KiB pages, which the test places on the slow node 1; the
child then keeps touching its first 8 MiB.  A few intervals of the daemon must bring those
hot pages to the fast node 0 and leave the untouched ones where they are.
"""

import subprocess
import sys

import numpy as np

from tierd.linux import Kernel

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


def test_run_promotes_the_hot_pages_of_a_target(tmp_path):
    kernel = Kernel()
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        base = int(child.stdout.readline())
        addrs = base + np.arange(PAGES, dtype=np.uint64) * 4096
        status = kernel.move_pages(child.pid, addrs, np.ones(PAGES, dtype=np.int32))
        assert (status == 1).mean() > 0.99, np.unique(status, return_counts=True)
        child.stdin.write("go\n")
        child.stdin.flush()
        policy = tmp_path / "tierd.yaml"
        policy.write_text(f"interval: 1s\n"
                          f"targets:\n  - name: child\n    pids: [{child.pid}]\n"
                          f"migration:\n  rate: 1GiB/s\n"
                          f"metrics:\n  listen: ''\n")
        out = subprocess.run([sys.executable, "-m", "tierd", "run", "--config", str(policy),
                              "--intervals", "8"], capture_output=True, text=True,
                             timeout=900)
        assert out.returncode == 0, out.stdout + out.stderr
        where = kernel.move_pages(child.pid, addrs)
        hot_on_fast = (where[:HOT] == 0).mean()
        cold_on_slow = (where[HOT:] == 1).mean()
        assert hot_on_fast >= 0.95, (hot_on_fast, out.stderr[-3000:])
        assert cold_on_slow >= 0.95, (cold_on_slow, out.stderr[-3000:])
    finally:
        child.kill()
        child.wait()
