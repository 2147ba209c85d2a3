"""Fake kernel for the engine tests: scripted accesses, recorded move_pages requests.

Only the Kernel facade of docs/design.md is faked (procfs.maps/comm/cgroup, topology,
reader, move_pages); everything else is the real engine.
"""

from __future__ import annotations

import errno

import numpy as np

from tierd.linux.errors import ProcessGone
from tierd.linux.procfs import Vma
from tierd.linux.sysfs import Node, Topology
from tierd.linux.syscalls import MPOL_MF_MOVE_ALL
from tierd.pages import PAGE_SIZE as PAGE

GIB = 1 << 30


class FakeProc:
    """A process with one anonymous mapping of ``npages`` pages at ``base`` (64-page
    aligned), all present, on ``node``."""

    def __init__(self, pid: int, npages: int, base: int = 0x7F00_0000_0000, node: int = 1) -> None:
        self.pid = pid
        self.vmas = [Vma(base, base + npages * PAGE, "rw-p", 0, "00:00", 0, "")]
        self.node: dict[int, int] = {}  # vpn -> node, for present pages
        for v in range(base // PAGE, base // PAGE + npages):
            self.node[v] = node
        self.next_access: set[int] = set()  # vpns accessed before the next sample
        self.gone = False
        self.status_override: dict[int, int] = {}  # vpn -> -errno returned by move_pages
        self.shared: list = []  # (first vpn, pages, object)
        self.untouched: set[int] = set()  # id() of shared objects without PTEs here
        self.elsewhere: set[int] = set()  # vpns of private pages other processes map too

    def map_shared(self, obj: FakeShared, addr: int, touched: bool = True) -> None:
        """MAP_SHARED the whole of ``obj`` at ``addr`` (above the first mapping): its pages
        are the object's (one node per page for every mapper), accessed per mapper
        (``next_access`` by vpn).  ``touched=False``: mapped but never faulted in by this
        process (no PTEs: its samples show no page, move_pages answers -ENOENT)."""
        if not touched:
            self.untouched.add(id(obj))
        self.vmas.append(Vma(addr, addr + obj.npages * PAGE, "rw-s", 0, "00:05", obj.inode, obj.path))
        self.vmas.sort(key=lambda v: v.start)
        self.shared.append((addr // PAGE, obj.npages, obj))

    def where(self, v: int):
        """(node dict, key) holding vpn ``v``'s page, and the shared object or None."""
        for lo, n, obj in self.shared:
            if lo <= v < lo + n:
                return obj.node, v - lo, obj
        return self.node, v, None

    def vpn(self, i: int) -> int:
        """vpn of the i-th page of the first mapping."""
        return self.vmas[0].start // PAGE + i

    def addr(self, i: int) -> int:
        return self.vpn(i) * PAGE


class FakeShared:
    """A shm/memfd object: ``npages`` pages on ``node``; mapped by FakeProc.map_shared."""

    def __init__(self, npages: int, node: int = 1, inode: int = 7777, path: str = "/dev/shm/fake") -> None:
        self.npages = npages
        self.inode = inode
        self.path = path
        self.node = {pg: node for pg in range(npages)}


class FakeReader:
    name = "fake"

    def __init__(self, kernel: FakeKernel) -> None:
        self.kernel = kernel
        self.closed: list[int] = []

    def sample(self, pid: int, word_start: int, nwords: int):
        proc = self.kernel.proc(pid)
        if self.kernel.gone_on_sample == pid:
            proc.gone = True
            raise ProcessGone(pid)
        present = np.zeros(nwords, np.uint64)
        accessed = np.zeros(nwords, np.uint64)
        lo, hi = word_start * 64, (word_start + nwords) * 64
        vpns = list(proc.node)
        for first, n, obj in proc.shared:
            if id(obj) not in proc.untouched:
                vpns += [first + pg for pg in obj.node if lo <= first + pg < hi]
        for v in vpns:
            if lo <= v < hi:
                w, b = divmod(v - lo, 64)
                present[w] |= np.uint64(1 << b)
                if v in proc.next_access:
                    accessed[w] |= np.uint64(1 << b)
        proc.next_access = {v for v in proc.next_access if not lo <= v < hi}
        return present, accessed

    def close(self, pid: int) -> None:
        self.closed.append(pid)


class FakeProcFS:
    def __init__(self, kernel: FakeKernel) -> None:
        self.kernel = kernel

    def maps(self, pid):
        return tuple(self.kernel.proc(pid).vmas)

    def comm(self, pid):
        self.kernel.proc(pid)
        return "fake"

    def cgroup(self, pid):
        self.kernel.proc(pid)
        return "/fake.slice"

    def status(self, pid):
        return {"VmRSS": len(self.kernel.proc(pid).node) * PAGE}


class FakeKernel:
    """Node 0: fast (CPUs), node 1: slow (memory only).  ``calls`` records every move_pages
    request as ("query"|"move", pid, [addr...], [node...] | None)."""

    def __init__(self, fast_total=4 * GIB, fast_free=3 * GIB, slow_total=16 * GIB, slow_free=15 * GIB):
        self.mem = {0: [fast_total, fast_free], 1: [slow_total, slow_free]}
        self.cache = {0: 0, 1: 0}  # clean page cache per node (bytes, outside mem's free)
        self.procs: dict[int, FakeProc] = {}
        self.calls: list[tuple] = []
        self.flags: list[int] = []  # move_pages flags, one per call
        self.procfs = FakeProcFS(self)
        self._reader = FakeReader(self)
        self.gone_on_sample: int | None = None
        self.gone_on_move: int | None = None

    def add(self, proc: FakeProc) -> FakeProc:
        self.procs[proc.pid] = proc
        return proc

    def proc(self, pid: int) -> FakeProc:
        p = self.procs.get(pid)
        if p is None or p.gone:
            raise ProcessGone(pid)
        return p

    def features(self):
        return None

    def topology(self) -> Topology:
        return Topology((
            Node(0, (0, 1), self.mem[0][0], self.mem[0][1], (10, 20), None, self.cache[0]),
            Node(1, (), self.mem[1][0], self.mem[1][1], (20, 10), None, self.cache[1]),
        ))

    def reader(self, name: str = "auto") -> FakeReader:
        return self._reader

    def move_pages(self, pid, addrs, nodes=None, flags=0, batch=4096):
        addrs = [int(a) for a in np.asarray(addrs, dtype=np.uint64)]
        dest = None if nodes is None else [int(n) for n in np.asarray(nodes)]
        self.calls.append(("query" if dest is None else "move", pid, addrs, dest))
        self.flags.append(flags)
        if self.gone_on_move == pid:
            self.procs[pid].gone = True
        proc = self.proc(pid)
        out = np.empty(len(addrs), np.int32)
        for i, a in enumerate(addrs):
            v = a // PAGE
            node, key, obj = proc.where(v)
            if key not in node or (obj is not None and id(obj) in proc.untouched):
                out[i] = -errno.ENOENT
            elif v in proc.status_override:
                out[i] = proc.status_override[v]
            elif dest is None:
                out[i] = node[key]
            elif ((obj is not None and self.mappers(obj) > 1) or v in proc.elsewhere) \
                    and not flags & MPOL_MF_MOVE_ALL:
                # mm/migrate.c: a page mapped more than once moves only with MPOL_MF_MOVE_ALL
                out[i] = -errno.EACCES
            else:
                old, new = node[key], dest[i]
                if old != new and self.mem[new][1] < PAGE and self.cache[new] >= PAGE:
                    self.cache[new] -= PAGE  # the allocation reclaims page cache
                    self.mem[new][1] += PAGE
                if old != new:
                    self.mem[old][1] += PAGE
                    self.mem[new][1] -= PAGE
                node[key] = new
                out[i] = new
        return out

    def mappers(self, obj: FakeShared) -> int:
        return sum(1 for p in self.procs.values() if not p.gone and any(o is obj for _, _, o in p.shared))

    def fill_cache(self, node: int, free_fraction: float) -> None:
        """A reader of files keeps ``node``'s MemFree at ``free_fraction``: page cache takes
        the rest of its free memory."""
        keep = int(self.mem[node][0] * free_fraction) // PAGE * PAGE
        if self.mem[node][1] > keep:
            self.cache[node] += self.mem[node][1] - keep
            self.mem[node][1] = keep

    def moves(self):
        """The move requests (not queries) as (pid, [page index in the first mapping], dest)."""
        out = []
        for kind, pid, addrs, dest in self.calls:
            if kind == "move":
                base = self.procs[pid].vmas[0].start
                out.append((pid, [(a - base) // PAGE for a in addrs], dest))
        return out
