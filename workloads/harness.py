"""Run a tiering mechanism next to the workloads and watch the ground truth over time.

``Tierd`` runs ``tierd run`` on a policy text in a subprocess and parses its interval lines;
``Watcher`` samples, in a background thread, what the workloads' own reports and move_pages
queries say (hot pages on the fast node, cold pages there), the fast node's free memory and
the CPU time of whatever mechanism is measured.  The VM tests, the live demo and the
side-by-side benchmark share these.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from workloads import Hotset, Placement, node_meminfo

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
LINE = re.compile(r"#(\d+): .*?promoted (\d+) demoted (\d+)")
COST = re.compile(r"engine (\d+)ms sample (\d+)ms move (\d+)ms")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat; 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def kthread_cpu(name_prefix: str) -> float:
    """CPU seconds of kernel threads whose name starts with ``name_prefix`` (kdamond.N)."""
    total = 0.0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().startswith(name_prefix):
                    total += cpu_seconds(int(d.name))
            except OSError:
                pass
    return total


@dataclasses.dataclass
class Interval:
    seq: int
    promoted: int
    demoted: int
    unsampled: bool
    engine_ms: int = 0  # tierd's own numpy work (hotness, histograms, placement, selection)
    sample_ms: int = 0  # reading maps and access bits: the kernel's work
    move_ms: int = 0  # inside move_pages


def parse_intervals(text: str) -> list[Interval]:
    """tierd's interval lines in a log (its stderr, or the journal of tierd.service)."""
    out = []
    for line in text.splitlines():
        m = LINE.search(line)
        if m:
            c = COST.search(line)
            cost = (int(c[1]), int(c[2]), int(c[3])) if c else (0, 0, 0)
            out.append(Interval(int(m[1]), int(m[2]), int(m[3]), "NOT SAMPLED" in line, *cost))
    return out


def _no_thp() -> None:
    """In the child before exec: no transparent huge pages for it (prctl PR_SET_THP_DISABLE,
    inherited across execve)."""
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(41, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_THP_DISABLE)")


class Tierd:
    """``python -m tierd run --config POLICY`` with its log in a file."""

    def __init__(self, policy_text: str, workdir: Path, python: str = sys.executable,
                 args: tuple[str, ...] = (), thp: bool = True) -> None:
        """``thp=False``: the daemon runs with PR_SET_THP_DISABLE (for a test that reads its
        resident memory: khugepaged collapsing its heap adds 2 MiB steps at its own pace)."""
        self.thp = thp
        self.workdir = Path(workdir)
        self.policy = self.workdir / "tierd-policy.yaml"
        self.log = self.workdir / "tierd.log"
        self.policy_text = policy_text
        self.argv = [python, "-m", "tierd", "run", "--config", str(self.policy), *args]
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None

    def start(self) -> Tierd:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.policy.write_text(self.policy_text)
        self._log = open(self.log, "w")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=REPO,
                                     preexec_fn=None if self.thp else _no_thp)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def intervals(self) -> list[Interval]:
        return parse_intervals(self.text())

    def wait_intervals(self, n: int, timeout: float) -> list[Interval]:
        end = time.monotonic() + timeout
        while True:
            iv = self.intervals()
            if len(iv) >= n:
                return iv
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"tierd exited {self.proc.returncode}:\n{self.text()[-3000:]}")
            if time.monotonic() > end:
                raise TimeoutError(f"{len(iv)} of {n} intervals in {timeout:.0f} s:\n"
                                   f"{self.text()[-3000:]}")
            time.sleep(0.2)

    def cpu(self) -> float:
        return cpu_seconds(self.pid) if self.proc is not None else 0.0

    def stop(self, timeout: float = 120) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.returncode = self.proc.returncode
        return self.returncode

    def __enter__(self) -> Tierd:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclasses.dataclass
class Sample:
    t: float  # seconds since the watcher started
    placement: Placement  # summed over the measured workloads
    per: dict[str, Placement]
    fast_free: int  # bytes free on the fast node
    cpu: float  # mechanism CPU seconds since the watcher started
    touches: int  # hot-page reads by the measured workloads since they started


class Watcher:
    """Samples ground truth every ``period`` seconds in a thread (``samples``), and the fast
    node's MemFree more often (``min_free`` after ``floor_from``: see ``free_floor``)."""

    def __init__(self, hotsets: list[Hotset], *, fast=(0,), period: float = 1.0,
                 cpu=lambda: 0.0, cold_every: float = 0.0) -> None:
        self.hotsets = hotsets
        self.cold_every = cold_every  # query the cold pages only this often (0: every sample)
        self._cold_at = -1e9
        self.fast = tuple(fast)
        self.period = period
        self.cpu = cpu
        self.samples: list[Sample] = []
        self.free_trace: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.monotonic()
        self.cpu0 = 0.0
        self.error: BaseException | None = None

    def start(self) -> Watcher:
        self.t0 = time.monotonic()
        self.cpu0 = self.cpu()
        self._thread.start()
        return self

    def sample(self) -> Sample:
        per = {}
        now = time.monotonic()
        cold = now - self._cold_at >= self.cold_every
        if cold:
            self._cold_at = now
        for h in self.hotsets:
            per[h.name] = h.placement(self.fast, cold=cold)
        total = Placement(0, 0, 0, 0, 0)
        for p in per.values():
            total = total + p
        return Sample(time.monotonic() - self.t0, total, per,
                      sum(node_meminfo(n) for n in self.fast), self.cpu() - self.cpu0,
                      sum(h.touches()[0] for h in self.hotsets))

    def _run(self) -> None:
        next_sample = 0.0
        while not self._stop.is_set():
            now = time.monotonic() - self.t0
            try:
                self.free_trace.append((now, sum(node_meminfo(n) for n in self.fast)))
                if now >= next_sample:
                    self.samples.append(self.sample())
                    next_sample = now + self.period
            except Exception as e:  # a workload exited: the test decides what that means
                self.error = e
            self._stop.wait(0.25)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def first(self, pred) -> Sample | None:
        return next((s for s in self.samples if pred(s)), None)

    def __enter__(self) -> Watcher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
