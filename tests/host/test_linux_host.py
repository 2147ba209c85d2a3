"""tierd.linux against the real kernel of the machine running the tests (needs root).

Everything here looks only at the test process itself (or children it starts): its maps, its
pagemap, move_pages queries and moves of its own pages.  Runs on the development host (one
NUMA node: a move to node 0 is a no-op but must still report node 0) and inside the QEMU guest
(two nodes: the pages really move).  Readers are exercised when the kernel has them.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tierd.linux import (
    IdleBitmapReader,
    Kernel,
    PageIdleReader,
    ProcessGone,
    ProcFS,
    Syscalls,
    decode_pagemap,
    extents,
    popcount,
    unpack_words,
)

pytestmark = [
    pytest.mark.host,
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="needs root: pagemap PFNs need CAP_SYS_ADMIN, /proc/kpageflags and "
        "page_idle are root-only",
    ),
]

PAGE = mmap.PAGESIZE
NPAGES = 64


@pytest.fixture(scope="module")
def kernel() -> Kernel:
    return Kernel()


def flush_tlb(addr: int, length: int) -> None:
    """Make the next access to [addr, addr+length) set the Accessed bit again.

    page_idle clears Accessed bits without flushing the TLB (mm/page_idle.c uses the
    *_young_notify helpers), and a CPU does not set the bit again while the translation is
    cached, so a page touched right after marking can read idle.  Dropping write permission
    and restoring it flushes the range (change_protection() -> flush_tlb_range()).  The patched
    idle_bitmap flushes by itself: its tests must not do this.  (ctypes here is test-only.)
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for prot in (mmap.PROT_READ, mmap.PROT_READ | mmap.PROT_WRITE):
        assert libc.mprotect(addr, length, prot) == 0, os.strerror(ctypes.get_errno())


def page_node(addr: int) -> int:
    """The node of the present page at ``addr`` by get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR):
    ground truth that does not go through move_pages.  Only for present pages (on an absent
    one the kernel would fault it in).  (ctypes here is test-only.)"""
    nr = {"x86_64": 239, "aarch64": 236}[os.uname().machine]  # __NR_get_mempolicy
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    mode = ctypes.c_int(-1)
    rc = libc.syscall(ctypes.c_long(nr), ctypes.byref(mode), None, ctypes.c_ulong(0),
                      ctypes.c_void_p(addr), ctypes.c_ulong(1 | 2))
    assert rc == 0, os.strerror(ctypes.get_errno())
    return mode.value


def kernel_list(text: str) -> set[int]:
    """A kernel cpu/node list ("0", "0-1", "0,2-3") as a set, parsed here independently of
    tierd.linux.sysfs."""
    out: set[int] = set()
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


class Buffer:
    """An anonymous private mapping of ours, 64-page aligned, without THP."""

    def __init__(self, npages: int = NPAGES, touch=None):
        self.npages = npages
        # Over-allocate so a 64-page-aligned (one bitmap word) window exists inside.
        self.m = mmap.mmap(-1, (npages + 64) * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.m.madvise(mmap.MADV_NOHUGEPAGE)
        self.view = np.frombuffer(self.m, dtype=np.uint8)
        base = self.view.ctypes.data
        self.addr = (base + 64 * PAGE - 1) // (64 * PAGE) * (64 * PAGE)
        self.off = self.addr - base
        if touch is not None:
            self.write(touch)

    def write(self, pages) -> None:
        for p in np.atleast_1d(pages).tolist():
            self.view[self.off + p * PAGE] = 1 + p % 200

    def read(self, pages) -> int:
        return int(sum(int(self.view[self.off + p * PAGE]) for p in np.atleast_1d(pages).tolist()))

    def addrs(self, pages=None) -> np.ndarray:
        pages = np.arange(self.npages) if pages is None else np.asarray(pages)
        return np.uint64(self.addr) + np.asarray(pages, np.uint64) * np.uint64(PAGE)

    @property
    def vpn(self) -> int:
        return self.addr // PAGE

    def close(self) -> None:
        del self.view
        self.m.close()


@pytest.fixture
def buf():
    b = Buffer(touch=np.arange(0, NPAGES, 2))  # even pages written, odd never touched
    yield b
    b.close()


def test_maps_of_self(kernel, buf):
    vmas = kernel.procfs.maps(os.getpid())
    mine = [v for v in vmas if v.start <= buf.addr and buf.addr + NPAGES * PAGE <= v.end]
    assert len(mine) == 1
    assert mine[0].perms == "rw-p" and mine[0].path == "" and mine[0].anonymous
    paths = {v.path for v in vmas}
    assert "[stack]" in paths
    exe = os.path.realpath(sys.executable)
    assert any(os.path.realpath(v.path) == exe for v in vmas if v.path.startswith("/"))
    assert all(a.end <= b.start for a, b in zip(vmas, vmas[1:]))  # sorted, no overlap


def test_status_and_identity_of_self(kernel):
    procfs = kernel.procfs
    me = os.getpid()
    st = procfs.status(me)
    assert st["Pid"] == me and st["VmRSS"] > 1 << 20
    assert procfs.comm(me) == open("/proc/self/comm").read().strip()
    assert procfs.cmdline(me)[0].endswith(("python", "python3", "pytest")) or "pytest" in " ".join(
        procfs.cmdline(me))
    assert procfs.exe(me) == os.path.realpath(sys.executable)
    cg = procfs.cgroup(me)
    assert cg is None or cg.startswith("/")


def test_pagemap_of_own_pages(kernel, buf):
    present, pfn = decode_pagemap(kernel.procfs.pagemap(os.getpid(), buf.vpn, NPAGES))
    assert present[0::2].all(), "written pages must be present"
    assert not present[1::2].any(), "never-touched anonymous pages must not be present"
    assert (pfn[0::2] > 0).all(), "root sees page frame numbers"
    assert len(set(pfn[0::2].tolist())) == NPAGES // 2


def test_move_pages_query_of_own_pages(kernel, buf):
    status = kernel.move_pages(os.getpid(), buf.addrs())
    assert status.dtype == np.int32 and status.shape == (NPAGES,)
    nodes = set(kernel.topology().ids)
    assert set(status[0::2].tolist()) <= nodes
    assert (status[1::2] == -errno.ENOENT).all()


def test_move_own_pages_to_a_node(kernel, buf):
    """To another memory node when there is one (the rig); on a one-node host the only node
    (the move is then a no-op, but status and get_mempolicy must still say that node)."""
    pages = np.arange(0, NPAGES, 2)
    addrs = buf.addrs(pages)
    before = buf.read(pages)
    now = page_node(int(addrs[0]))
    mem = [n.id for n in kernel.topology().nodes if n.has_memory]
    target = next((n for n in mem if n != now), now)
    status = kernel.move_pages(os.getpid(), addrs, np.full(pages.size, target, np.int32), batch=7)
    # a page can be transiently busy (-EBUSY) on a real move: most must have moved
    moved = status == target
    assert np.count_nonzero(moved) >= pages.size * 0.9, status
    assert [page_node(int(a)) for a in addrs[moved]] == [target] * int(moved.sum())
    assert buf.read(pages) == before  # contents survive the move


@pytest.mark.rig
def test_move_own_pages_between_nodes(kernel, buf):
    fast, slow = kernel.topology().classify()
    mem_nodes = list(fast) + list(slow)
    if len(mem_nodes) < 2:
        pytest.skip(f"one memory node ({mem_nodes}): nowhere to move pages to")
    pages = np.arange(0, NPAGES, 2)
    before = buf.read(pages)
    for target in (mem_nodes[-1], mem_nodes[0]):
        status = kernel.move_pages(os.getpid(), buf.addrs(pages), np.full(pages.size, target, np.int32))
        # A page can be transiently busy (-EBUSY): most must have moved, and re-querying agrees.
        assert np.count_nonzero(status == target) >= pages.size * 0.9, status
        # where the pages are by get_mempolicy, not by move_pages itself
        truth = [page_node(int(a)) for a in buf.addrs(pages)]
        assert [t for t, s in zip(truth, status.tolist()) if s >= 0] == [s for s in status.tolist() if s >= 0]
    assert buf.read(pages) == before


def test_process_gone_everywhere(kernel):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert kernel.procfs.maps(child.pid)
    finally:
        child.kill()
        child.wait()
    with pytest.raises(ProcessGone):
        kernel.procfs.maps(child.pid)
    with pytest.raises(ProcessGone):
        kernel.procfs.pagemap(child.pid, 0, 1)
    with pytest.raises(ProcessGone):
        kernel.move_pages(child.pid, np.array([0x400000], np.uint64))


def test_zombie_pagemap_is_process_gone(kernel):
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while kernel.procfs.status(child.pid)["State"][0] != "Z":  # exited, not yet reaped
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        with pytest.raises(ProcessGone):
            kernel.procfs.pagemap(child.pid, 0x400, 4)
    finally:
        child.wait()


def test_topology_nodes_are_the_online_nodes(kernel):
    if not os.path.isdir("/sys/devices/system/node"):
        pytest.skip("no /sys/devices/system/node: kernel built without CONFIG_NUMA")
    online = open("/sys/devices/system/node/online").read()
    assert set(kernel.topology().ids) == kernel_list(online), online
    with_memory = kernel_list(open("/sys/devices/system/node/has_memory").read())
    assert {n.id for n in kernel.topology().nodes if n.has_memory} == with_memory


def test_topology_matches_the_kernel(kernel):
    topo = kernel.topology()
    # Per-node totals need not add up to /proc/meminfo's (seen on a Firecracker guest with
    # hot-plugged memory: node0 7 GiB, MemTotal 24 GiB), but never exceed it.
    total = kernel.procfs.meminfo()["MemTotal"]
    assert 0 < sum(n.mem_total for n in topo.nodes) <= 1.01 * total
    assert all(0 <= n.mem_free <= n.mem_total for n in topo.nodes)
    cpus = sorted(c for n in topo.nodes for c in n.cpus)
    assert len(cpus) == len(set(cpus)) and len(cpus) >= 1
    fast, slow = topo.classify()
    assert fast and not set(fast) & set(slow)


def test_features_probe_matches_the_kernel(kernel):
    f = kernel.features()
    assert f.move_pages.available, f.move_pages.detail
    assert f.pagemap_pfn.available and f.kpageflags.available
    assert f.privileges.available and f.cap_sys_admin
    assert f.page_idle.available == os.path.exists("/sys/kernel/mm/page_idle/bitmap")
    assert f.idle_bitmap.available == os.path.exists("/proc/self/idle_bitmap")
    assert f.memory_tiers.available == os.path.isdir("/sys/devices/virtual/memory_tiering")
    assert set(f.nodes) == set(kernel.topology().ids)


def _reader_roundtrip(reader, buf, kernel) -> None:
    pid = os.getpid()
    word = buf.vpn // 64
    # Freshly faulted pages wait in per-CPU LRU batches, where page_idle cannot see them (not
    # PageLRU).  A move_pages move drains every CPU's batches (lru_cache_disable() in
    # do_pages_move, mm/migrate.c): move our pages to the node they are on.
    even = buf.addrs(np.arange(0, NPAGES, 2))
    kernel.move_pages(pid, even, kernel.move_pages(pid, even))
    reader.sample(pid, word, 1)  # baseline: resets accessed state
    reader.sample(pid, word, 1)
    hot = np.arange(0, NPAGES, 4)  # a subset of the present (even) pages
    if reader.name == "page_idle":
        flush_tlb(buf.addr, NPAGES * PAGE)
    buf.write(hot)
    present, accessed = reader.sample(pid, word, 1)
    pbits, abits = unpack_words(present), unpack_words(accessed)
    assert pbits[0::2].all() and not pbits[1::2].any()
    assert abits[hot].all(), "written pages must read as accessed"
    cold = np.setdiff1d(np.arange(0, NPAGES, 2), hot)
    # A few untouched pages may still sit in per-CPU LRU batches (not yet trackable).
    assert np.count_nonzero(abits[cold]) <= cold.size // 4
    assert popcount(accessed & ~present) == 0
    reader.close(pid)


@pytest.mark.rig
def test_page_idle_reader_on_own_pages(kernel, buf):
    if not kernel.features().page_idle.available:
        pytest.skip(f"page_idle: {kernel.features().page_idle.detail}")
    _reader_roundtrip(PageIdleReader(), buf, kernel)


@pytest.mark.rig
def test_idle_bitmap_reader_on_own_pages(kernel, buf):
    if not kernel.features().idle_bitmap.available:
        pytest.skip(f"idle_bitmap: {kernel.features().idle_bitmap.detail}")
    _reader_roundtrip(IdleBitmapReader(), buf, kernel)


def test_extents_of_own_maps_cover_own_pages(kernel, buf):
    vmas = [v for v in kernel.procfs.maps(os.getpid()) if not v.special]
    ws, nw = extents([v.start for v in vmas], [v.end for v in vmas])
    w = buf.vpn // 64
    assert np.any((ws <= w) & (w < ws + nw))
    assert (ws[1:] > ws[:-1] + nw[:-1]).all()  # merged: no two extents touch


def test_syscalls_module_function_reports_where_pages_are(kernel, buf):
    from tierd.linux.syscalls import move_pages

    mem = [n.id for n in kernel.topology().nodes if n.has_memory]
    # on two nodes, put every fourth page on the last one so the answer is not all one node
    Syscalls().move_pages(os.getpid(), buf.addrs(np.arange(0, NPAGES, 4)),
                          np.full(NPAGES // 4, mem[-1], np.int32))
    even = buf.addrs(np.arange(0, NPAGES, 2))
    truth = [page_node(int(a)) for a in even]
    assert move_pages(0, even).tolist() == truth  # pid 0: the caller
    assert (move_pages(0, buf.addrs(np.arange(1, NPAGES, 2))) == -errno.ENOENT).all()


def test_procfs_self_and_pid_agree():
    assert ProcFS("/proc").comm(os.getpid()) == ProcFS("/proc/").comm("self")
    assert ProcFS("/proc").cmdline("self") == ProcFS("/proc").cmdline(os.getpid())


@pytest.mark.parametrize("cmd", [["topology"], ["scan", "--samples", "1", "--interval", "50ms"]])
def test_cli_gives_a_plain_answer(cmd):
    """On any kernel: exit 0, or 1 with the reason (no interface), never a traceback."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        if cmd[0] == "scan":
            cmd = cmd + ["--pid", str(sleeper.pid)]
        p = subprocess.run([sys.executable, "-m", "tierd", *cmd], capture_output=True, text=True,
                           timeout=120)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    if cmd[0] == "topology":
        assert p.returncode == 0 and "kernel interfaces:" in p.stdout
        return
    assert "node " in p.stdout  # the per-node summary is always printed
    f = Kernel().features()
    if f.readers:
        assert p.returncode == 0 and f"access tracking: {f.readers[0]}" in p.stdout, p.stderr
    else:
        assert p.returncode == 1 and "NOT AVAILABLE" in p.stdout and "scan incomplete" in p.stderr


@pytest.mark.rig
@pytest.mark.parametrize("reader_name", ["page_idle", "idle_bitmap"])
def test_reader_on_transparent_huge_pages(kernel, reader_name):
    """A PMD-mapped THP has one Accessed bit (and page_idle one idle flag, on the head page):
    touching one byte marks all 512 subpages accessed; an untouched THP stays idle."""
    feat = getattr(kernel.features(), reader_name)
    if not feat.available:
        pytest.skip(f"{reader_name}: {feat.detail}")
    huge = 2 << 20
    m = mmap.mmap(-1, 3 * huge, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    view = np.frombuffer(m, dtype=np.uint8)
    region = None
    try:
        off = (-view.ctypes.data) % huge
        region = view[off : off + 2 * huge]
        m.madvise(mmap.MADV_HUGEPAGE, off, 2 * huge)
        region[::PAGE] = 1
        vpn = (view.ctypes.data + off) // PAGE
        present, pfn = decode_pagemap(kernel.procfs.pagemap(os.getpid(), vpn, 1024))
        with open("/proc/kpageflags", "rb") as f:
            f.seek(8 * int(pfn[0]))
            flags = int.from_bytes(f.read(8), "little")
        if not (present.all() and flags >> 22 & 1):  # KPF_THP
            pytest.skip("no transparent huge page was allocated (THP disabled or no memory)")
        addrs = np.uint64(view.ctypes.data + off) + np.arange(1024, dtype=np.uint64) * np.uint64(PAGE)
        kernel.move_pages(0, addrs, kernel.move_pages(0, addrs))  # drain per-CPU LRU batches
        reader = kernel.reader(reader_name)
        word = vpn // 64
        reader.sample(os.getpid(), word, 16)  # baseline
        reader.sample(os.getpid(), word, 16)
        if reader_name == "page_idle":
            flush_tlb(view.ctypes.data + off, 2 * huge)
        region[12345] = 7  # one byte of the first huge page
        p, a = reader.sample(os.getpid(), word, 16)
        pbits, abits = unpack_words(p), unpack_words(a)
        assert pbits.all()
        assert abits[:512].all(), "every subpage of the touched THP reads accessed"
        assert not abits[512:].any(), "the untouched THP reads idle"
        reader.close(os.getpid())
    finally:
        del region, view
        m.close()


@pytest.mark.rig
def test_readers_know_the_nodes_of_own_pages(kernel, buf):
    """nodes(): the page_idle reader's pagemap PFNs through the sysfs memory blocks, and the
    idle_bitmap reader's numa_maps, agree with move_pages queries on the touched pages
    (untouched ones: -1 from the PFN source; numa_maps may name the mapping's node)."""
    from tierd.linux.sysfs import SysFS

    if not SysFS().memory_map().start.size:
        pytest.skip("no memory blocks in sysfs (CONFIG_MEMORY_HOTPLUG=n)")
    if not os.path.exists("/proc/self/numa_maps"):
        pytest.skip("no /proc/PID/numa_maps (CONFIG_NUMA=n)")
    pid = os.getpid()
    status = kernel.move_pages(pid, buf.addrs())
    word = (buf.addr >> 12) // 64
    lo = (buf.addr >> 12) - word * 64
    nwords = -(-(lo + NPAGES) // 64)
    pfn_nodes = PageIdleReader().nodes(pid, word, nwords)[lo: lo + NPAGES]
    assert pfn_nodes[0::2].tolist() == status[0::2].tolist()
    assert (pfn_nodes[1::2] == -1).all()
    numa = IdleBitmapReader().nodes(pid, word, nwords)[lo: lo + NPAGES]
    known = numa[0::2] >= 0
    assert (numa[0::2][known] == status[0::2][known]).all()
    if len(set(status[0::2].tolist())) == 1:  # the whole mapping on one node: all known
        assert known.all()
