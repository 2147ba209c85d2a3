"""Inside the rig: a soak of 1,000 short-lived target processes through `tierd run` (issue 17).

Each process (workloads/shortlived.c) maps 192 small regions (384 VMAs with their guard
pages), touches them for 0.3-1.3 s and exits; 16 run at once, so `tierd run` (interval 1s)
finds, samples, moves and drops hundreds of them.  kernel.pid_max is lowered for the run so
that pids are reused (the 1,000 processes share a few hundred pids).  After a warm-up of WARMUP
processes the daemon's resident memory and open descriptors are the baseline; after the
rest, once every process has exited, they must be within 5% of it (what the daemon keeps per
process grows with its mappings, so a per-process leak shows as several MiB), its metrics
must say it holds nothing (no process, no tracked page, no page state), and its log must
hold no traceback.  The warm-up is 300 processes: after 150 the interpreter's heap was still
reaching its high-water mark (+5.4% at 1,000 in one run, with fds, metrics and the log clean),
while the engine's own Python allocations over 100 intervals of the same churn on the fake
kernel grow by 16 KB (tracemalloc); a per-process leak over the 700 after the warm-up still
shows as several MiB.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
import workloads  # noqa: E402
from workloads.harness import Tierd  # noqa: E402

TOTAL = 1000
WARMUP = 300
AT_ONCE = 16
PID_MAX = 512  # pids above RESERVED_PIDS (300): ~200 to share among 1,000 processes
PORT = 9479
POLICY = f"""interval: 1s
targets:
  - name: soak
    comm: "^shortlived$"
migration:
  rate: 1GiB/s
metrics:
  listen: "127.0.0.1:{PORT}"
"""


def metrics() -> dict[str, float]:
    """Unlabelled series of tierd's /metrics, and labelled ones summed by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r"^(tierd_\w+)(?:\{[^}]*\})? (\S+)$", text, re.M):
        out[m[1]] = out.get(m[1], 0.0) + float(m[2])
    return out


def holdings(pid: int) -> dict[str, float]:
    """What the daemon holds: resident memory, open descriptors, and its own counts."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)[1]) * 1024
    m = metrics()
    return {"rss": rss, "fds": len(list(Path(f"/proc/{pid}/fd").iterdir())),
            "processes": m.get("tierd_processes", -1), "tracked": m.get("tierd_tracked_pages", -1),
            "state": m.get("tierd_state_bytes", -1),
            "exited": m.get("tierd_exited_processes_total", 0),
            "intervals": m.get("tierd_intervals_total", 0)}


@pytest.fixture
def low_pid_max():
    path = Path("/proc/sys/kernel/pid_max")
    old = path.read_text()
    path.write_text(str(PID_MAX))
    try:
        yield PID_MAX
    finally:
        path.write_text(old)


def churn(exe: Path, n: int, rng: random.Random, pids: list[int]) -> None:
    """Run ``n`` shortlived processes, AT_ONCE at a time; each must exit 0."""
    running: list[subprocess.Popen] = []
    started = 0
    while started < n or running:
        while started < n and len(running) < AT_ONCE:
            ms = rng.randint(300, 1300)
            running.append(subprocess.Popen([str(exe), "--maps", "192", "--pages", "2",
                                             "--ms", str(ms)]))
            pids.append(running[-1].pid)
            started += 1
        for p in running[:]:
            rc = p.poll()
            if rc is not None:
                assert rc == 0, f"shortlived pid {p.pid} exited {rc}"
                running.remove(p)
        time.sleep(0.05)


def settle(tierd: Tierd, intervals: int = 3, timeout: float = 120) -> dict[str, float]:
    """Wait until the daemon has run ``intervals`` more intervals; returns its holdings."""
    assert tierd.proc.poll() is None, tierd.text()[-3000:]
    first = holdings(tierd.pid)["intervals"]
    end = time.monotonic() + timeout
    while (h := holdings(tierd.pid))["intervals"] < first + intervals:
        assert time.monotonic() < end, f"no {intervals} intervals in {timeout} s"
        assert tierd.proc.poll() is None, tierd.text()[-3000:]
        time.sleep(0.5)
    return h


def test_a_thousand_short_lived_targets_leave_nothing_behind(tmp_path, low_pid_max):
    exe = workloads.build() / "shortlived"
    rng = random.Random(17)
    pids: list[int] = []
    # THP off for the daemon: the guest's THP is "always", and khugepaged collapsing parts of
    # its heap at its own pace moved its RSS by 2 MiB steps (+12% in one CI dry run, +0.1 to
    # +1.9% in three runs alone), which is not what this test measures
    with Tierd(POLICY, tmp_path, thp=False) as tierd:
        tierd.wait_intervals(2, 240)
        t0 = time.monotonic()
        churn(exe, WARMUP, rng, pids)
        base = settle(tierd)
        churn(exe, TOTAL - WARMUP, rng, pids)
        seconds = time.monotonic() - t0
        end = settle(tierd)
        text = tierd.text()
    reused = len(pids) - len(set(pids))
    print(f"soak: {len(pids)} processes in {seconds:.0f} s on {len(set(pids))} pids "
          f"(pid_max {PID_MAX}); tierd saw {end['exited']:.0f} exit; after {WARMUP}: "
          f"RSS {base['rss'] / 2**20:.1f} MiB, {base['fds']} fds; after {TOTAL}: "
          f"RSS {end['rss'] / 2**20:.1f} MiB ({end['rss'] / base['rss'] - 1:+.1%}), "
          f"{end['fds']} fds; holding {end['processes']:.0f} processes, "
          f"{end['tracked']:.0f} tracked pages, {end['state']:.0f} state bytes")
    assert tierd.returncode == 0, text[-3000:]
    assert reused > TOTAL // 4, f"only {reused} pids reused: pid_max did not bite"
    # the churn went through the daemon: it tracked (and saw exit) most of the processes
    assert end["exited"] >= TOTAL // 2, (end, text[-3000:])
    assert "Traceback" not in text and "ERROR" not in text, text[-5000:]
    assert end["processes"] == 0 and end["tracked"] == 0, end
    assert end["state"] <= base["state"], (base, end)
    assert end["fds"] <= base["fds"] * 1.05, (base, end)
    assert end["rss"] <= base["rss"] * 1.05, (base, end)
