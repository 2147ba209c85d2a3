"""Resolving the policy's targets into processes, every interval.

A process belongs to a target when it satisfies every selector the target gives (pids, comm,
exe and cmdline regexes, cgroup v2 subtree) and has at least ``min_rss`` resident; a process
matching several targets belongs to the first in policy order.  tierd itself and processes
without resident memory (kernel threads) are never targets.

Identity: a process is held from the moment it is looked at by a ProcHandle
(tierd/linux/procfs.py: its /proc/PID directory descriptor and its start time in clock ticks
since boot, from stat), and a matched one stays held across intervals while it lives; every
file tierd reads of it later (maps, numa_maps, idle_bitmap, pagemap) is opened through it,
so a recycled pid is a new process and never shows tierd the old one's files.  The key
(pid, start ticks, exec generation) does not depend on the wall clock (psutil >= 7.0.1's
create_time() adds a boot time computed afresh from it, so a clock step changed it), and
execve() - a new address space - makes a new key (ProcHandle.execed).  Selectors that psutil
reads by pid (exe, cmdline, rss) are read between opening the handle and checking that its
process still lives: a pid cannot be reused while its process exists, so they were this
process's.

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

from tierd.linux.errors import ParseError
from tierd.linux.procfs import ProcFS, ProcHandle
from tierd.policy import RegexTimeout

log = logging.getLogger(__name__)

GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, ProcessLookupError, FileNotFoundError)


@dataclass(frozen=True)
class ProcessRef:
    """One target process.  ``pid`` is the ProcHandle holding it (an int: the pid) when the
    PsutilResolver found it, a plain pid from StaticResolver (tests, the simulator).
    ``key`` (pid, start time) is stable for the process's life; after an execve() it is
    (pid, start time, exec generation): a new process.  ``close()`` releases what the handle
    holds (idempotent)."""

    pid: int
    start: float
    target: str
    name: str = ""

    @property
    def key(self) -> tuple:
        generation = getattr(self.pid, "generation", 0)
        return (int(self.pid), self.start, generation) if generation else (int(self.pid), self.start)

    def close(self) -> None:
        if isinstance(self.pid, ProcHandle):
            self.pid.close()


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
        self.procfs = ProcFS() if kernel is None else kernel.procfs
        self.self_pid = os.getpid() if self_pid is None else self_pid
        self._warned: set[tuple[str, str]] = set()  # (target, reason) already logged
        # (pid, start ticks) of processes whose command line a bounded regex match gave up
        # on (python3-regex only, see policy.Regex) -> the binary they ran then: not tried
        # again while they live and run it, so a hostile command line costs one time bound,
        # not one per interval (not keyed on the command line: a process may rewrite it)
        self._slow: dict[tuple[int, int], tuple[int, int] | None] = {}
        # pid -> the handle of the process returned for it last time: kept while it matches
        # (its history's identity), closed when it no longer does or is gone
        self._held: dict[int, ProcHandle] = {}

    def _warn_once(self, target: str, reason: str, pid: int, detail: str) -> None:
        if (target, reason) in self._warned:
            log.debug("target %s: pid %d: %s", target, pid, detail)
            return
        self._warned.add((target, reason))
        log.warning("target %s: pid %d: %s (further cases logged at DEBUG)", target, pid, detail)

    def resolve(self, specs: Sequence) -> list[ProcessRef]:
        if not specs:
            self.close()
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
            self._slow = {k: v for k, v in self._slow.items() if k[0] in live}
        held, self._held = self._held, {}
        try:
            for proc in sorted(procs, key=lambda p: p.pid):
                if proc.pid == self.self_pid:
                    continue
                h = self._hold(proc.pid, held.pop(proc.pid, None))
                if h is None:
                    continue
                ref = None
                try:
                    if not self._skipped(h):
                        ref = self._match(proc, h, specs)
                except GONE:
                    pass
                if ref is not None and h.alive():  # psutil read this process's attributes
                    h.watch_mm()
                    self._held[proc.pid] = h
                    out.append(ref)
                else:
                    h.close()
        finally:
            for h in held.values():  # gone, or no longer listed
                h.close()
        order = {s.name: i for i, s in enumerate(specs)}
        out.sort(key=lambda r: (order[r.target], r.pid))
        return out

    def _skipped(self, h: ProcHandle) -> bool:
        """Was this process's match given up on (a regex timeout), and does it still run
        the same binary?  After an execve() of another binary (a wrapper with a hostile
        command line starting the real server) it is tried again.  One stat a process."""
        key = (h.pid, h.starttime)
        if key not in self._slow:
            return False
        if self.procfs.exe_id(h) == self._slow[key]:
            return True
        del self._slow[key]
        return False

    def _hold(self, pid: int, old: ProcHandle | None) -> ProcHandle | None:
        """The handle of the process now holding ``pid``: ``old`` while it is still that
        process with the same address space, else a new one (None if there is none).  After
        execve() the new handle is the next generation: a new key, a new process to tierd."""
        generation = 0
        if old is not None and not old.closed:
            if old.alive():
                if not old.execed():
                    return old
                generation = old.generation + 1
            old.close()
        try:
            h = self.procfs.open_process(pid)
        except GONE:
            return None
        except (OSError, ParseError) as e:  # EACCES on a hardened /proc, a garbled stat: skip it
            log.debug("pid %d: not held: %s", pid, e)
            return None
        if generation and h.starttime == old.starttime:
            h.generation = generation
        return h

    def close(self) -> None:
        """Release every held process."""
        held, self._held = self._held, {}
        for h in held.values():
            h.close()

    def _match(self, proc: psutil.Process, h: ProcHandle, specs: Sequence) -> ProcessRef | None:
        cache: dict[str, object] = {}
        denied: dict[str, Exception] = {}
        spec = None

        def get(attr: str):
            if attr not in cache:
                try:
                    cache[attr] = self._attr(proc, h, attr)
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
                return ProcessRef(h, h.starttime, spec.name, str(get("comm") or ""))
        except GONE:
            raise
        except RegexTimeout as e:
            self._slow[(proc.pid, h.starttime)] = self.procfs.exe_id(h)
            self._warn_once(spec.name, "slow match", proc.pid,
                            f"{e}: not matched, and not tried again while this process lives")
        except psutil.Error as e:  # an unexpected one: skip the process
            self._warn_once(spec.name, type(e).__name__, proc.pid,
                            f"skipped, cannot be checked against this target: {_describe(e)}")
        return None

    def _attr(self, proc: psutil.Process, h: ProcHandle, attr: str):
        """One attribute; raises psutil.AccessDenied / PermissionError when it cannot be read
        (``_match`` then treats it as not matching, and says so).  comm and cgroup are read
        through the handle, the rest by pid (see the module docstring)."""
        if attr == "comm":
            return self.procfs.comm(h)
        if attr == "exe":
            return proc.exe() or None
        if attr == "cmdline":
            return " ".join(proc.cmdline())
        if attr == "cgroup":
            return self.procfs.cgroup(h)
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
