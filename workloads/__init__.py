"""Workloads that know their hot pages, and a driver for them (tests/vm, benchmarks, demo).

The C programs here (built with the host's gcc by ``build()``; the QEMU guest runs the host's
binaries over 9p) keep a known set of pages hot and report it, so whether a tiering mechanism
put the right pages on the fast node is checked against ground truth, with move_pages(2) node
queries of our own (``node_of``), independent of the mechanism under test:

- ``hotset.c``: N MiB, of which H MiB hot: scattered 4 KiB pages, or whole 2 MiB blocks
  (``dense``), on 4 KiB pages or THP; optionally faulted in on one node (``start_node``);
  phases with disjoint hot sets (``next_phase`` / ``phase_after``); checksums on request.
  With ``hot_mib=0`` and ``start_node=0`` it is "another process's cold data" filling the
  fast node.
- ``churn.c``: maps, unmaps, forks and exits while tracked; verifies its data at exit.
- ``shortlived.c``: maps many small regions, touches them for a while and exits (the soak).

Scenarios built from these are in ``SCENARIOS`` (the side-by-side benchmark's S1-S7, the live
demo's workload); ``start_scenario`` starts one.

Usage::

    bindir = workloads.build()
    with workloads.Hotset(bindir, out, size_mib=768, hot_mib=96, start_node=1) as w:
        p = w.placement()           # Placement(hot_fast=.., hot=.., cold_fast=.., cold=..)
        w.next_phase(); w.verify()  # -> True if every page holds its pattern
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parent
PROGRAMS = ("hotset", "churn", "shortlived")
PAGE = 4096
CFLAGS = ("-O2", "-Wall", "-Wextra")


class WorkloadError(RuntimeError):
    """A workload could not be built, did not start, or misbehaved."""


def build_dir() -> Path:
    return Path(os.environ.get("TIERD_WORKLOADS_BUILD", SRC / "build"))


def build(dest: Path | None = None) -> Path:
    """Compile the programs that are missing or older than their source; returns the
    directory holding them.  Inside the QEMU guest the root is read-only: the binaries must
    have been built on the host first (tests/vm and the benchmark do so before booting)."""
    dest = Path(dest) if dest is not None else build_dir()
    for name in PROGRAMS:
        src, exe = SRC / f"{name}.c", dest / name
        if exe.exists() and exe.stat().st_mtime >= src.stat().st_mtime:
            continue
        if os.environ.get("TIERD_IN_VM"):
            raise WorkloadError(f"{exe} is missing or stale; build it on the host first "
                                "(python -c 'import workloads; workloads.build()')")
        dest.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["gcc", *CFLAGS, "-o", str(exe), str(src)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise WorkloadError(f"gcc {src} failed:\n{proc.stderr}")
    return dest


# -- ground truth: where pages are -----------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_MOVE_PAGES = 279  # x86_64


def node_of(pid: int, addrs: np.ndarray, batch: int = 16384) -> np.ndarray:
    """The node of each page (negative errno for absent ones), by move_pages(2) with
    nodes=NULL: a query that moves nothing.  Deliberately not tierd's own wrapper."""
    addrs = np.ascontiguousarray(addrs, dtype=np.uint64)
    out = np.empty(addrs.size, dtype=np.int32)
    for lo in range(0, addrs.size, batch):
        a = addrs[lo: lo + batch]
        st = np.empty(a.size, dtype=np.int32)
        rc = _libc.syscall(ctypes.c_long(_SYS_MOVE_PAGES), ctypes.c_long(pid),
                           ctypes.c_ulong(a.size), ctypes.c_void_p(a.ctypes.data),
                           ctypes.c_void_p(None), ctypes.c_void_p(st.ctypes.data),
                           ctypes.c_int(0))
        if rc < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"move_pages query of pid {pid}: {os.strerror(err)}")
        out[lo: lo + a.size] = st
    return out


def node_meminfo(node: int, key: str = "MemFree", sys: str = "/sys") -> int:
    """A /sys/devices/system/node/nodeN/meminfo field in bytes."""
    for line in Path(sys, f"devices/system/node/node{node}/meminfo").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2].rstrip(":") == key:
            return int(parts[3]) * 1024
    raise KeyError(key)


@dataclasses.dataclass(frozen=True)
class Layout:
    """What a hotset process reported: its region and the current phase's hot pages."""

    pid: int
    base: int
    pages: int
    thp: bool
    phase: int
    hot: np.ndarray  # page indices, int64

    def addrs(self, idx: np.ndarray | None = None) -> np.ndarray:
        idx = np.arange(self.pages) if idx is None else np.asarray(idx)
        return np.uint64(self.base) + idx.astype(np.uint64) * np.uint64(PAGE)

    def hot_mask(self) -> np.ndarray:
        m = np.zeros(self.pages, dtype=bool)
        m[self.hot] = True
        return m


def parse_report(text: str) -> Layout:
    lines = text.split("\n")
    kv = dict(line.split(" ", 1) for line in lines[:6])
    hot = np.array(lines[6].split(), dtype=np.int64) if len(lines) > 6 else np.zeros(0, np.int64)
    if hot.size != int(kv["hot"]):
        raise WorkloadError(f"report lists {hot.size} hot pages, header says {kv['hot']}")
    return Layout(int(kv["pid"]), int(kv["base"], 16), int(kv["pages"]), kv["thp"] == "1",
                  int(kv["phase"]), hot)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Pages of one workload by where they are (ground truth from move_pages queries)."""

    hot: int
    hot_fast: int
    cold: int
    cold_fast: int
    absent: int

    @property
    def hot_fraction(self) -> float:
        return self.hot_fast / self.hot if self.hot else 1.0

    @property
    def cold_fraction(self) -> float:
        return self.cold_fast / self.cold if self.cold else 0.0

    def __add__(self, other: Placement) -> Placement:
        return Placement(*(a + b for a, b in zip(dataclasses.astuple(self),
                                                 dataclasses.astuple(other))))


def _wait(pred, timeout: float, what: str, proc: subprocess.Popen | None = None):
    end = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise WorkloadError(f"{what}: the workload exited with {proc.returncode}")
        if time.monotonic() > end:
            raise WorkloadError(f"{what}: nothing after {timeout:.0f} s")
        time.sleep(0.1)


class Hotset:
    """One hotset process (see hotset.c); a context manager that stops it on exit."""

    def __init__(self, bindir: Path, outdir: Path, *, size_mib: int, hot_mib: int,
                 thp: bool = False, dense: bool = False, start_node: int | None = None,
                 seed: int = 1, name: str = "hotset", pause_us: int = 20000,
                 phase_after: float | None = None) -> None:
        self.report = Path(outdir) / f"{name}-{seed}.report"
        self.argv = [str(Path(bindir) / "hotset"), "--size", str(size_mib), "--hot", str(hot_mib),
                     "--seed", str(seed), "--report", str(self.report), "--name", name,
                     "--pause-us", str(pause_us)]
        self.argv += ["--thp"] if thp else []
        self.argv += ["--dense"] if dense else []
        self.argv += ["--start-node", str(start_node)] if start_node is not None else []
        self.argv += ["--phase-after", str(phase_after)] if phase_after else []
        self.name = name
        self.proc: subprocess.Popen | None = None
        self._layout: Layout | None = None
        self._layout_key: tuple | None = None
        self._last: Placement | None = None  # the last full placement (cold counts)

    def start(self, timeout: float = 300) -> Hotset:
        for suffix in ("", ".stat", ".verify"):
            Path(f"{self.report}{suffix}").unlink(missing_ok=True)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL)
        _wait(self.report.exists, timeout, f"{self.name} start", self.proc)
        self._layout = None
        self._layout = self.layout()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def layout(self) -> Layout:
        """The current report (parsed again only when it was rewritten: ground truth is
        sampled every second in the benchmark, and the guest parses slowly)."""
        st = self.report.stat()
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._layout is None or key != self._layout_key:
            self._layout = parse_report(self.report.read_text())
            self._layout_key = key
        return self._layout

    def nodes(self) -> np.ndarray:
        """Node of every page of the region (ground truth)."""
        lay = self._layout or self.layout()
        return node_of(self.pid, lay.addrs())

    def placement(self, fast=(0,), cold: bool = True) -> Placement:
        """Ground truth.  ``cold=False`` queries only the hot pages (an eighth of the cost,
        for sampling every second) and repeats the cold counts of the last full query."""
        lay = self.layout()
        if not cold and self._last is not None:
            where = node_of(self.pid, lay.addrs(lay.hot))
            present, on_fast = where >= 0, np.isin(where, fast)
            last = self._last
            return Placement(hot=int(present.sum()), hot_fast=int(on_fast.sum()), cold=last.cold,
                             cold_fast=last.cold_fast, absent=last.absent)
        where = self.nodes()
        on_fast = np.isin(where, fast)
        present = where >= 0
        hot = lay.hot_mask()
        self._last = Placement(hot=int((hot & present).sum()),
                               hot_fast=int((hot & on_fast).sum()),
                               cold=int((~hot & present).sum()),
                               cold_fast=int((~hot & on_fast).sum()),
                               absent=int((~present).sum()))
        return self._last

    def next_phase(self, timeout: float = 120) -> Layout:
        """Move the hot set to the next (disjoint) set of pages; returns the new layout."""
        before = self.layout().phase
        os.kill(self.pid, signal.SIGUSR2)
        return _wait(lambda: (lay := self.layout()).phase > before and lay, timeout,
                     f"{self.name} phase change", self.proc)

    def verify(self, timeout: float = 300) -> bool:
        """Ask the process to check every word of every page against its pattern."""
        path = Path(f"{self.report}.verify")
        path.unlink(missing_ok=True)
        os.kill(self.pid, signal.SIGUSR1)
        text = _wait(lambda: path.exists() and path.read_text(), timeout,
                     f"{self.name} verify", self.proc)
        return text.startswith("ok ")

    def touches(self) -> tuple[int, float]:
        """(hot-page reads since start, seconds since start), from its .stat file."""
        try:
            kv = dict(line.split() for line in
                      Path(f"{self.report}.stat").read_text().splitlines() if line)
        except (FileNotFoundError, ValueError):
            return 0, 0.0
        return int(kv["touches"]), float(kv["elapsed"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Hotset:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def churn(bindir: Path, duration: float, name: str = "churn", pause_us: int = 50000):
    """Start churn.c; wait() on the result: exit 0 = data intact, 3 = a word changed."""
    return subprocess.Popen([str(Path(bindir) / "churn"), "--duration", str(duration),
                             "--name", name, "--pause-us", str(pause_us)],
                            stdout=subprocess.PIPE, text=True)


# -- scenarios (the benchmark's S1-S7; sizes for the rig: node 0 = 512 MiB fast) ---------------

@dataclasses.dataclass(frozen=True)
class Spec:
    """One workload process of a scenario (Hotset keyword arguments)."""

    name: str
    size_mib: int
    hot_mib: int
    start_node: int | None = 1
    thp: bool = False
    dense: bool = False
    seed: int = 1
    fast_share: str | None = None  # policy of the target this process belongs to
    fast_cap: str | None = None
    measured: bool = True  # counted in "% hot on fast" (a filler is not)
    fill_free_mib: int | None = None  # size = start node's MemFree minus this (a filler)
    # "hotset" (hotset.c), or workloads.real_hosts': "pagecache" (a PageCacheReader, no
    # target of the policy) or "skew" (a Skewed process of size_mib, zipf 1.1)
    kind: str = "hotset"


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    specs: tuple[Spec, ...]
    phase_at: float | None = None  # seconds after the start: hot sets move


def scenarios(scale: float = 1.0) -> dict[str, Scenario]:
    """S1-S7 at ``scale`` (1.0: the issue's 768 MiB process with a 96 MiB hot set; the VM
    tests use smaller scales to stay within minutes).  S6 and S7 are issue 16's real-host
    conditions (workloads.real_hosts)."""
    def mib(x):
        return max(2, int(x * scale) // 2 * 2)
    big, hot = mib(768), mib(96)
    return {
        "S1": Scenario("S1", "room on the fast node: scattered 4 KiB hot set starts on the slow node",
                       (Spec("hs-s1", big, hot),)),
        "S2": Scenario("S2", "fast node filled with another process's cold data",
                       (Spec("filler", 0, 0, start_node=0, measured=False, seed=2,
                             fill_free_mib=20),
                        Spec("hs-s2", big, hot))),
        "S3": Scenario("S3", "hot set moves to other pages", (Spec("hs-s3", big, hot),),
                       phase_at=90.0),
        "S4": Scenario("S4", "THP, scattered hot set", (Spec("hs-s4", big, hot, thp=True),)),
        "S4d": Scenario("S4d", "THP, dense hot huge pages",
                        (Spec("hs-s4d", big, hot, thp=True, dense=True),)),
        "S5": Scenario("S5", "two targets with fast_share / fast_cap",
                       (Spec("hs-a", mib(384), mib(192), seed=3, fast_share="30%"),
                        Spec("hs-b", mib(384), mib(192), seed=4, fast_cap="15%"))),
        "S6": Scenario("S6", "fast node kept full of page cache (a reader looping over a 1 GiB "
                       "zram device); hot set starts on the slow node",
                       (Spec("pcreader", 0, 0, start_node=0, measured=False, kind="pagecache"),
                        Spec("hs-s6", big, hot))),
        "S7": Scenario("S7", "skewed (zipf 1.1) 4 KiB hot set, 2x the fast node; first touch "
                       "filled node 0 at random, then node 1",
                       (Spec("skew", mib(1024), 0, start_node=None, kind="skew"),)),
    }


def start_scenario(sc: Scenario, bindir: Path, outdir: Path, pause_us: int = 20000) -> list[Hotset]:
    """Start every process of a scenario (in order: a filler first takes the fast node)."""
    from workloads.real_hosts import PageCacheReader, Skewed

    procs = []
    try:
        for s in sc.specs:
            if s.kind == "pagecache":
                procs.append(PageCacheReader(s.name).start())
                continue
            if s.kind == "skew":
                procs.append(Skewed(outdir, s.size_mib, name=s.name, seed=16).start())
                continue
            size = s.size_mib
            if s.fill_free_mib is not None:
                size = node_meminfo(s.start_node or 0) // (1 << 20) - s.fill_free_mib
                if size < 2:
                    raise WorkloadError(f"{s.name}: node {s.start_node} has no room to fill")
            procs.append(Hotset(bindir, outdir, size_mib=size, hot_mib=s.hot_mib,
                                thp=s.thp, dense=s.dense, start_node=s.start_node, seed=s.seed,
                                name=s.name, pause_us=pause_us).start())
    except BaseException:
        for p in procs:
            p.stop()
        raise
    return procs


def policy_yaml(base: str, sc: Scenario, interval: str | None = None,
                tracking: str | None = None, metrics: bool = False,
                keep_targets: bool = False, min_rss: str | None = None) -> str:
    """The shipped policy ``base`` (text) with its targets replaced by the scenario's
    processes (one target per process, selected by name) and, optionally, another interval
    and tracking.  Everything else stays as shipped, except that the metrics listener is off
    unless ``metrics`` (several tierd runs in one guest must not fight over its port).
    ``keep_targets``: the shipped targets stay, before the scenario's (the PostgreSQL
    scenario has none of its own: the example target is database servers), with ``min_rss``
    instead of theirs if given."""
    import yaml

    doc = yaml.safe_load(base)
    if keep_targets:
        if min_rss is not None:
            for t in doc["targets"]:
                t["min_rss"] = min_rss
    else:
        doc["targets"] = []
    for s in sc.specs:
        if s.kind == "pagecache":  # another process: not a target
            continue
        t = {"name": s.name, "comm": f"^{s.name}$"}
        if s.fast_share:
            t["fast_share"] = s.fast_share
        if s.fast_cap:
            t["fast_cap"] = s.fast_cap
        doc["targets"].append(t)
    if interval:
        doc["interval"] = interval
        if interval != "auto":  # the auto_interval section applies only to interval: auto
            doc.pop("auto_interval", None)
    if tracking:
        doc["tracking"] = tracking
    if not metrics:
        doc.setdefault("metrics", {})["listen"] = ""
    return yaml.safe_dump(doc, sort_keys=False)
