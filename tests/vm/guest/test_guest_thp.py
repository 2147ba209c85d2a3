"""Inside the rig: `tierd run` on real transparent huge pages (tierd/engine/huge.py).

Two workloads (thp_scatter_child.py) start with their huge pages on the slow node 1, each
target capped on the fast tier below its hot huge pages, so the daemon must decide:
- sparse: 32 MiB of THP with one page in 16 hot (2 MiB of hot data scattered over all 16
  huge pages): the huge pages are split and only the hot 4 KiB pages come to node 0;
- dense: 16 MiB of THP with every page hot: one probe is split, the rest stay whole.
khugepaged is paused for the run (it would collapse split ranges back; README "Huge pages").
And each split method (process_madvise, debugfs) on real THPs.
"""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from tierd.linux import Kernel

HERE = Path(__file__).resolve().parent
DEBUGFS = Path("/sys/kernel/debug")
KHUGEPAGED = Path("/sys/kernel/mm/transparent_hugepage/khugepaged/scan_sleep_millisecs")
PAGE = 4096


def spawn(size_mib, stride):
    child = subprocess.Popen([sys.executable, str(HERE / "thp_scatter_child.py"), str(size_mib),
                              str(stride)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return child, int(child.stdout.readline())


def anon_huge_kib(pid, base, size):
    """AnonHugePages (KiB) of the VMA holding [base, base + size)."""
    text = Path(f"/proc/{pid}/smaps").read_text()
    total, inside = 0, False
    for line in text.splitlines():
        m = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
        if m:
            lo, hi = int(m[1], 16), int(m[2], 16)
            inside = lo < base + size and base < hi
        elif inside and line.startswith("AnonHugePages:"):
            total += int(line.split()[1])
    return total


def mount_debugfs():
    if not (DEBUGFS / "split_huge_pages").exists():
        subprocess.run(["mount", "-t", "debugfs", "debugfs", str(DEBUGFS)], check=True)
    assert (DEBUGFS / "split_huge_pages").exists(), "kernel without CONFIG_DEBUG_FS"


def test_both_split_methods_split_exactly_the_given_huge_pages():
    """process_madvise(MADV_COLD) on one 4 KiB page, and debugfs, each on one of 4 THPs."""
    from tierd.linux.thp import ThpSplitter

    mount_debugfs()
    kernel = Kernel()
    child, base = spawn(8, 1)
    try:
        blocks = base // PAGE + np.arange(4) * 512
        assert kernel.thp().is_thp(child.pid, blocks).all(), "no THP to test with"
        via_madvise = kernel.thp()
        via_madvise.split(child.pid, blocks[1:2])
        assert via_madvise.last_method == "madvise"
        assert kernel.thp().is_thp(child.pid, blocks).tolist() == [True, False, True, True]
        via_debugfs = ThpSplitter()  # no syscalls: debugfs only
        via_debugfs.split(child.pid, blocks[2:3])
        assert via_debugfs.last_method == "debugfs"
        assert kernel.thp().is_thp(child.pid, blocks).tolist() == [True, False, False, True]
        assert anon_huge_kib(child.pid, base, 8 << 20) == 4 << 10
    finally:
        child.kill()
        child.wait()


def test_sparse_huge_pages_split_dense_kept_whole(tmp_path):
    kernel = Kernel()
    sleep = KHUGEPAGED.read_text()
    KHUGEPAGED.write_text("3600000")
    sparse, sbase = spawn(32, 16)
    dense, dbase = spawn(16, 1)
    try:
        for pid, base, mib in ((sparse.pid, sbase, 32), (dense.pid, dbase, 16)):
            assert anon_huge_kib(pid, base, mib << 20) >= (mib - 2) << 10, "no THP to test with"
            where = kernel.move_pages(pid, base + np.arange(mib << 8, dtype=np.uint64) * PAGE)
            assert (where == 1).mean() > 0.95, np.unique(where, return_counts=True)
        for c in (sparse, dense):
            c.stdin.write("go\n")
            c.stdin.flush()
        policy = tmp_path / "tierd.yaml"
        policy.write_text(
            "interval: auto\nauto_interval:\n  min: 1s\n  max: 2s\n"
            f"targets:\n  - name: sparse\n    pids: [{sparse.pid}]\n    fast_cap: 8MiB\n"
            f"  - name: dense\n    pids: [{dense.pid}]\n    fast_cap: 4MiB\n"
            "metrics:\n  listen: ''\n")
        out = subprocess.run([sys.executable, "-m", "tierd", "run", "--config", str(policy),
                              "--intervals", "14"], capture_output=True, text=True, timeout=600)
        log = out.stdout + out.stderr
        assert out.returncode == 0, log[-4000:]
        where = kernel.move_pages(sparse.pid, sbase + np.arange(32 << 8, dtype=np.uint64) * PAGE)
        hot = np.zeros(where.size, bool)
        hot[::16] = True
        hot_fast, cold_fast = (where[hot] == 0).mean(), (where[~hot] == 0).mean()
        print(f"sparse: hot on fast {hot_fast:.1%}, cold on fast {cold_fast:.1%}; "
              f"THP left {anon_huge_kib(sparse.pid, sbase, 32 << 20)} KiB")
        assert "sparse (probes" in log, log[-4000:]
        assert hot_fast >= 0.9, (hot_fast, log[-4000:])
        assert cold_fast <= 0.1, (cold_fast, log[-4000:])
        assert anon_huge_kib(sparse.pid, sbase, 32 << 20) <= 4 << 10  # split (a few may be left)
        kept = anon_huge_kib(dense.pid, dbase, 16 << 20)
        print(f"dense: THP kept {kept} KiB of 16384")
        assert "dense (probes" in log, log[-4000:]
        assert kept >= 14 << 10, (kept, log[-4000:])  # all but the one probe
    finally:
        KHUGEPAGED.write_text(sleep)
        for c in (sparse, dense):
            c.kill()
            c.wait()
