"""Inside the rig: `tierd run` end to end on a real process of the patched kernel.

A child process maps 64 MiB of 4 KiB pages, which the test places on the slow node 1; the
child then keeps touching its first 8 MiB.  A few intervals of the daemon must bring those
hot pages to the fast node 0 and leave the untouched ones where they are.
"""

import subprocess
import sys

import hot_child
from tierd.linux import Kernel


def test_run_promotes_the_hot_pages_of_a_target(tmp_path):
    kernel = Kernel()
    child, addrs = hot_child.start(kernel)
    try:
        policy = tmp_path / "tierd.yaml"
        policy.write_text(f"interval: 1s\n"
                          f"targets:\n  - name: child\n    pids: [{child.pid}]\n"
                          f"migration:\n  rate: 1GiB/s\n"
                          f"metrics:\n  listen: ''\n")
        out = subprocess.run([sys.executable, "-m", "tierd", "run", "--config", str(policy),
                              "--intervals", "8"], capture_output=True, text=True,
                             timeout=900)
        assert out.returncode == 0, out.stdout + out.stderr
        hot_on_fast, cold_on_slow = hot_child.placement(kernel, child, addrs)
        assert hot_on_fast >= 0.95, (hot_on_fast, out.stderr[-3000:])
        assert cold_on_slow >= 0.95, (cold_on_slow, out.stderr[-3000:])
    finally:
        child.kill()
        child.wait()
