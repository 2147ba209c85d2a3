"""Issue 16's real-host conditions as workloads, for the rig test
(tests/vm/guest/test_guest_real_hosts.py) and the side-by-side benchmark (S6, S7).

- ``PageCacheReader``: another process keeps node 0 full of clean page cache.  It loops over
  /dev/zram0 (1 GiB, more than node 0's 512 MiB) with buffered reads: the block device's page
  cache is ordinary clean file cache, allocated on node 0 (all CPUs are there) and refilled as
  fast as reclaim takes it, so node 0's MemFree stays at the kernel's watermarks - what any
  host that reads files looks like.  The device is never written: it holds no memory itself.
- ``Skewed``: a process twice node 0 touching its 4 KiB pages with zipf frequencies (rank ->
  page scattered); first touch puts node 0's worth of it there at random, the rest on node 1.
  Its ground truth is the weight of every page, so the pages on node 0 are scored against the
  best possible for as many pages (the hottest ones).

Both have the parts of ``workloads.Hotset``'s interface that the benchmark uses (``name``,
``pid``, ``placement``, ``touches``, ``verify``, ``stop``, a context manager).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from workloads import Placement, WorkloadError, node_meminfo, node_of

PAGE = 4096
ZRAM = Path("/sys/block/zram0")
READER = """
import sys
open("/proc/self/comm", "w").write(sys.argv[1])   # a name for the benchmark's reports
buf = bytearray(1 << 20)
while True:
    with open("/dev/zram0", "rb", buffering=0) as f:   # buffered by the page cache, not O_DIRECT
        while f.readinto(buf):
            pass
"""
SKEW_CHILD = """
import mmap, sys, time
import numpy as np
n, s, seed = int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
open("/proc/self/comm", "w").write(sys.argv[1])   # what a policy's comm selector matches
m = mmap.mmap(-1, n * 4096)
m.madvise(15)                          # MADV_NOHUGEPAGE: 4 KiB pages
a = np.frombuffer(m, dtype=np.uint8)
a[::4096] = 1                          # first touch: node 0 fills up, then node 1
print(a.ctypes.data, flush=True)
w = 1.0 / np.arange(1, n + 1) ** s     # zipf s over ranks
cum = np.cumsum(w / w.sum())
perm = np.random.default_rng(seed).permutation(n)   # rank -> page: hot pages scattered
rng = np.random.default_rng(1)
off = perm.astype(np.int64) * 4096
touches, t0, last = 0, time.monotonic(), 0.0
while True:
    r = np.searchsorted(cum, rng.random(100000))
    a[off[np.minimum(r, n - 1)]] += 1
    touches += 100000
    if (t := time.monotonic()) - last >= 1:
        open(sys.argv[5] + ".tmp", "w").write(f"{touches} {t - t0:.3f}")
        __import__("os").replace(sys.argv[5] + ".tmp", sys.argv[5])
        last = t
"""


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


class PageCacheReader:
    """Node 0 kept full of clean page cache by a reader of a ``size`` zram device; ``start``
    returns once node 0's MemFree is below ``below`` (a fraction of its MemTotal; the
    default is under the shipped demote_below, 5%)."""

    measured = False

    def __init__(self, name: str = "pcreader", size: str = "1G", below: float = 1 / 20,
                 timeout: float = 180) -> None:
        self.name, self.size, self.below, self.timeout = name, size, below, timeout
        self.proc: subprocess.Popen | None = None

    def start(self) -> PageCacheReader:
        if not ZRAM.exists():
            raise WorkloadError("no /sys/block/zram0 (CONFIG_ZRAM)")
        (ZRAM / "reset").write_text("1")
        (ZRAM / "disksize").write_text(self.size)
        self.proc = subprocess.Popen([sys.executable, "-c", READER, self.name])
        deadline = time.monotonic() + self.timeout
        total = node_meminfo(0, "MemTotal")
        try:
            while node_meminfo(0, "MemFree") > total * self.below:
                if self.proc.poll() is not None:
                    raise WorkloadError(f"the reader exited with {self.proc.returncode}")
                if time.monotonic() > deadline:
                    raise WorkloadError(f"the reader did not fill node 0 in {self.timeout:.0f} s")
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def verify(self) -> None:
        """Nothing to check: it holds no data of its own (None: not a data check)."""
        return None

    def stop(self) -> None:
        _stop(self.proc)
        subprocess.run(["sh", "-c", "echo 1 > /proc/sys/vm/drop_caches"], check=False)
        (ZRAM / "reset").write_text("1")

    def __enter__(self) -> PageCacheReader:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


class Skewed:
    """``size_mib`` of 4 KiB pages touched with zipf(``s``) frequencies.

    ``weight`` is every page's share of the accesses (ground truth, the same permutation as
    the child's).  ``score()``: the weight of the pages on the fast node against the hottest
    pages that fit in as many pages (1.0: the best placement for that much fast memory).
    ``placement()``'s hot set is the hottest pages that fit in the fast node's pages of this
    process at the start (first touch filled it), so its "hot on fast" is the same question
    in pages; each full placement also appends (monotonic time, score, pages on fast) to
    ``scores``."""

    measured = True

    def __init__(self, outdir: Path, size_mib: int, s: float = 1.1, name: str = "skew",
                 seed: int = 16) -> None:
        self.name, self.s, self.seed = name, s, seed
        self.n = size_mib * (1 << 20) // PAGE
        self.stat = Path(outdir) / f"{name}-{seed}.stat"
        self.proc: subprocess.Popen | None = None
        w = 1.0 / np.arange(1, self.n + 1) ** s
        self.weight = np.empty(self.n)
        self.weight[np.random.default_rng(seed).permutation(self.n)] = w / w.sum()
        self._best = np.cumsum(np.sort(self.weight)[::-1])  # best weight for k pages: [k-1]
        self.hot: np.ndarray | None = None
        self.scores: list[tuple[float, float, int]] = []

    def start(self, timeout: float = 300) -> Skewed:
        self.stat.unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-c", SKEW_CHILD, self.name, str(self.n),
                                      str(self.s), str(self.seed), str(self.stat)],
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()  # after first touch
        if not line:
            self.proc.wait(timeout)
            raise WorkloadError(f"{self.name}: the workload exited with {self.proc.returncode}")
        self.addrs = int(line) + np.arange(self.n, dtype=np.uint64) * np.uint64(PAGE)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def nodes(self) -> np.ndarray:
        return node_of(self.pid, self.addrs)

    def score(self, fast=(0,), where: np.ndarray | None = None) -> tuple[float, int]:
        """(weight on the fast node / best possible for as many pages, pages there)."""
        on = np.isin(self.nodes() if where is None else where, fast)
        k = int(on.sum())
        return (float(self.weight[on].sum() / self._best[k - 1]) if k else 0.0), k

    def placement(self, fast=(0,), cold: bool = True) -> Placement:
        """Ground truth (every page is queried: ``cold`` is accepted for Hotset's interface)."""
        where = self.nodes()
        on, present = np.isin(where, fast), where >= 0
        if self.hot is None:  # the hottest pages that fit where first touch put this process
            hot = np.zeros(self.n, bool)  # filled before it is shared (the sampling thread)
            hot[np.argsort(self.weight)[::-1][: int(on.sum())]] = True
            self.hot = hot
        ratio, k = self.score(fast, where)
        self.scores.append((time.monotonic(), ratio, k))
        hot = self.hot
        return Placement(hot=int((hot & present).sum()), hot_fast=int((hot & on).sum()),
                         cold=int((~hot & present).sum()), cold_fast=int((~hot & on).sum()),
                         absent=int((~present).sum()))

    def touches(self) -> tuple[int, float]:
        """(page touches since start, seconds since start), as the child last wrote them."""
        try:
            t, s = self.stat.read_text().split()
        except (FileNotFoundError, ValueError):
            return 0, 0.0
        return int(t), float(s)

    def verify(self) -> None:
        """Nothing to check: its pages are counters it keeps changing (None: not a data check)."""
        return None

    def stop(self) -> None:
        _stop(self.proc)

    def __enter__(self) -> Skewed:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
