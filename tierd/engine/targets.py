"""Resolving the policy's targets into processes, every interval.

A process belongs to a target when it satisfies every selector the target gives (pids, comm,
exe and cmdline regexes, cgroup v2 subtree) and has at least ``min_rss`` resident; a process
matching several targets belongs to the first in policy order.  Processes are identified by
(pid, start time), so a recycled pid is a new process.  tierd itself and processes without
resident memory (kernel threads) are never targets.

Processes exit at any moment: psutil.NoSuchProcess / ZombieProcess and the kernel boundary's
ProcessGone while looking at one simply mean it is not a target (any more).  AccessDenied
for one attribute means that selector does not match; since such a target silently loses
processes, that is logged at WARNING once per target and reason (attribute and error), as is
any other psutil error that makes a process be skipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import psutil

from tierd.policy import RegexTimeout

log = logging.getLogger(__name__)

GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, ProcessLookupError, FileNotFoundError)


@dataclass(frozen=True)
class ProcessRef:
    """One target process.  ``key`` (pid, start time) is stable for the process's life."""

    pid: int
    start: float
    target: str
    name: str = ""

    @property
    def key(self) -> tuple[int, float]:
        return (self.pid, self.start)


class Resolver(Protocol):
    def resolve(self, specs: Sequence) -> list[ProcessRef]:
        """The processes the targets cover now, in target order then pid order."""
        ...


def cgroup_matches(path: str | None, selector: str) -> bool:
    """True if cgroup ``path`` is ``selector`` or below it ("/a/b" matches "/a", not "/ab")."""
    if path is None:
        return False
    sel = selector.rstrip("/")
    return sel == "" or path == sel or path.startswith(sel + "/")


class PsutilResolver:
    """Resolves targets with psutil; comm and cgroup are read through the kernel boundary
    (``kernel.procfs``, or a ProcFS on /proc), since psutil has no cgroup and its name() may
    differ from comm for long names."""

    def __init__(self, kernel=None, self_pid: int | None = None) -> None:
        if kernel is None:
            from tierd.linux.procfs import ProcFS

            self.procfs = ProcFS()
        else:
            self.procfs = kernel.procfs
        self.self_pid = os.getpid() if self_pid is None else self_pid
        self._warned: set[tuple[str, str]] = set()  # (target, reason) already logged
        # (pid, create_time) of processes whose command line a bounded regex match gave up
        # on (python3-regex only, see policy.Regex): not tried again while they live, so a
        # hostile command line costs one time bound, not one per interval.
        self._slow: set[tuple[int, float]] = set()

    def _warn_once(self, target: str, reason: str, pid: int, detail: str) -> None:
        if (target, reason) in self._warned:
            log.debug("target %s: pid %d: %s", target, pid, detail)
            return
        self._warned.add((target, reason))
        log.warning("target %s: pid %d: %s (further cases logged at DEBUG)", target, pid, detail)

    def resolve(self, specs: Sequence) -> list[ProcessRef]:
        if not specs:
            return []
        if all(s.pids for s in specs):  # only explicit pids: no need to list every process
            pids = sorted({p for s in specs for p in s.pids})
            procs = []
            for pid in pids:
                try:
                    procs.append(psutil.Process(pid))
                except GONE:
                    continue
        else:
            procs = list(psutil.process_iter())
        out: list[ProcessRef] = []
        if self._slow:
            live = {p.pid for p in procs}
            self._slow = {k for k in self._slow if k[0] in live}
        for proc in sorted(procs, key=lambda p: p.pid):
            if proc.pid == self.self_pid:
                continue
            try:
                if self._slow and (proc.pid, proc.create_time()) in self._slow:
                    continue
                ref = self._match(proc, specs)
            except GONE:
                continue
            if ref is not None:
                out.append(ref)
        order = {s.name: i for i, s in enumerate(specs)}
        out.sort(key=lambda r: (order[r.target], r.pid))
        return out

    def _match(self, proc: psutil.Process, specs: Sequence) -> ProcessRef | None:
        cache: dict[str, object] = {}
        denied: dict[str, Exception] = {}
        spec = None

        def get(attr: str):
            if attr not in cache:
                try:
                    cache[attr] = self._attr(proc, attr)
                except (psutil.AccessDenied, PermissionError) as e:
                    cache[attr], denied[attr] = None, e
            if attr in denied:  # this target's selector cannot be checked: it will not match
                self._warn_once(spec.name, f"{attr}: {type(denied[attr]).__name__}", proc.pid,
                                f"cannot read {attr} ({_describe(denied[attr])}), so it does not match "
                                f"this target; run tierd as root")
            return cache[attr]

        try:
            for spec in specs:
                if spec.pids and proc.pid not in spec.pids:
                    continue
                if spec.comm is not None and not _search(spec.comm, get("comm")):
                    continue
                if spec.exe is not None and not _search(spec.exe, get("exe")):
                    continue
                if spec.cmdline is not None and not _search(spec.cmdline, get("cmdline")):
                    continue
                if spec.cgroup is not None and not cgroup_matches(get("cgroup"), spec.cgroup):
                    continue
                rss = get("rss")
                if not rss or rss < spec.min_rss:
                    continue
                return ProcessRef(proc.pid, proc.create_time(), spec.name, str(get("comm") or ""))
        except GONE:
            raise
        except RegexTimeout as e:
            self._slow.add((proc.pid, proc.create_time()))
            self._warn_once(spec.name, "slow match", proc.pid,
                            f"{e}: not matched, and not tried again while this process lives")
        except psutil.Error as e:  # e.g. AccessDenied on create_time(): skip the process
            self._warn_once(spec.name, type(e).__name__, proc.pid,
                            f"skipped, cannot be checked against this target: {_describe(e)}")
        return None

    def _attr(self, proc: psutil.Process, attr: str):
        """One attribute; raises psutil.AccessDenied / PermissionError when it cannot be read
        (``_match`` then treats it as not matching, and says so)."""
        if attr == "comm":
            return self.procfs.comm(proc.pid)
        if attr == "exe":
            return proc.exe() or None
        if attr == "cmdline":
            return " ".join(proc.cmdline())
        if attr == "cgroup":
            return self.procfs.cgroup(proc.pid)
        if attr == "rss":
            return proc.memory_info().rss
        raise ValueError(attr)


def _describe(e: Exception) -> str:
    """"AccessDenied: (pid=5)"; psutil.Error("x") has an empty str()."""
    return f"{type(e).__name__}: {str(e) or ' '.join(map(str, e.args))}"


def _search(pattern, value) -> bool:
    return value is not None and pattern.search(value) is not None


class StaticResolver:
    """A fixed list of processes (tests and the simulator): every ref whose target is one
    of the policy's targets."""

    def __init__(self, refs: Sequence[ProcessRef]) -> None:
        self.refs = list(refs)

    def resolve(self, specs: Sequence) -> list[ProcessRef]:
        names = [s.name for s in specs]
        order = {n: i for i, n in enumerate(names)}
        return sorted((r for r in self.refs if r.target in order), key=lambda r: (order[r.target], r.pid))
