"""Start-up probe of the kernel interfaces tierd can use, into one immutable ``Features``.

Each ``Feature`` says whether it is usable here, since which kernel it exists, what was found
(or what is missing) and how to get it.  Probes touch only this process: one page of our own
(written so it is present) is asked about through pagemap, idle_bitmap and move_pages.

| feature      | since                                   | needs                             |
|--------------|-----------------------------------------|-----------------------------------|
| idle_bitmap  | tierd kernel patch (kernel/patches)     | CAP_SYS_ADMIN                     |
| idle_bitmap_ | tierd kernel patch v3: IDLE_BITMAP_SCAN | (as idle_bitmap); without it (v2) |
|   scan       | ioctl, page-granular clearing           | whole-word clearing reads         |
| page_idle    | Linux 4.3, CONFIG_IDLE_PAGE_TRACKING    | root (the bitmap is mode 0600)    |
| pagemap_pfn  | Linux 2.6.25 pagemap; PFNs need         | CAP_SYS_ADMIN                     |
|              | CAP_SYS_ADMIN since 4.2                 |                                   |
| kpageflags   | Linux 2.6.25, CONFIG_PROC_PAGE_MONITOR  | root (mode 0400)                  |
| move_pages   | Linux 2.6.18, CONFIG_NUMA+MIGRATION     | ptrace access for others' pages   |
| numa         | /sys/devices/system/node, CONFIG_NUMA   |                                   |
| memory_tiers | Linux 6.1, memory_tiering in sysfs      |                                   |
| privileges   | root or CAP_SYS_ADMIN + CAP_SYS_PTRACE  |                                   |
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, fields

import numpy as np

from tierd.linux.errors import FeatureMissing, ProcessGone
from tierd.linux.procfs import PM_ENTRY_BYTES, ProcFS, decode_pagemap
from tierd.linux.sysfs import SysFS, format_nodelist
from tierd.linux.syscalls import Syscalls, touched_page
from tierd.linux.tracking import IDLE_RECORD_BYTES, idle_bitmap_scan
from tierd.pages import PAGE_SIZE, PAGES_PER_WORD

# include/uapi/linux/capability.h
CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_SYS_NICE = 23

READER_PREFERENCE = ("idle_bitmap", "page_idle")


@dataclass(frozen=True)
class Feature:
    """One kernel interface: usable or not, and why."""

    name: str
    available: bool
    since: str  # kernel version (or patch) that introduced it
    detail: str  # what the probe found (the reason when unavailable)
    how_to_fix: str = ""  # empty when available

    def require(self) -> None:
        """Raise FeatureMissing unless available."""
        if not self.available:
            raise FeatureMissing(self.name, self.how_to_fix, what=self.detail)


@dataclass(frozen=True)
class Features:
    """What this kernel offers tierd, probed once at start-up."""

    idle_bitmap: Feature
    idle_bitmap_scan: Feature
    page_idle: Feature
    pagemap_pfn: Feature
    kpageflags: Feature
    move_pages: Feature
    numa: Feature
    memory_tiers: Feature
    privileges: Feature
    nodes: tuple[int, ...] = ()  # online NUMA nodes (0 alone without NUMA)
    is_root: bool = False
    cap_sys_admin: bool = False
    cap_sys_nice: bool = False

    def all(self) -> tuple[Feature, ...]:
        return tuple(getattr(self, f.name) for f in fields(self) if f.type in ("Feature", Feature))

    def reader_missing(self, name: str) -> FeatureMissing | None:
        """None if reader ``name`` can run here, else the FeatureMissing saying why not."""
        if name == "idle_bitmap":
            needed = (self.idle_bitmap,)
        elif name == "page_idle":
            needed = (self.page_idle, self.pagemap_pfn, self.kpageflags)
        else:
            raise ValueError(f"unknown access reader {name!r} (idle_bitmap, page_idle)")
        for f in needed:
            if not f.available:
                return FeatureMissing(f.name, f.how_to_fix, what=f.detail)
        return None

    @property
    def readers(self) -> tuple[str, ...]:
        """Usable access readers, best first."""
        return tuple(n for n in READER_PREFERENCE if self.reader_missing(n) is None)

    def best_reader(self) -> str:
        """The best usable reader, or FeatureMissing naming every reason."""
        missing = []
        for name in READER_PREFERENCE:
            why = self.reader_missing(name)
            if why is None:
                return name
            missing.append((name, why))
        reasons = "; ".join(f"{n}: {w.what}" for n, w in missing)
        fixes = ", or ".join(w.how_to_fix for _, w in missing)
        raise FeatureMissing("access tracking", fixes, what=f"no interface is usable ({reasons})")


def _caps(status: dict) -> int:
    try:
        return int(str(status.get("CapEff", "0")), 16)
    except ValueError:
        return 0


def probe(proc: str = "/proc", sys: str = "/sys", syscalls=None) -> Features:
    """Probe this kernel.  ``syscalls`` is a tierd.linux.syscalls.Syscalls (or a fake); None
    creates one.  Never raises for a missing feature: it is recorded instead."""
    procfs = ProcFS(proc)
    sysfs = SysFS(sys, proc)
    me = os.getpid()
    try:
        status = procfs.status(me)
    except OSError:
        status = {}
    caps = _caps(status)
    is_root = os.geteuid() == 0
    admin = bool(caps >> CAP_SYS_ADMIN & 1)
    nice = bool(caps >> CAP_SYS_NICE & 1)
    # move_pages(2) on another process is a ptrace access check (PTRACE_MODE_READ_REALCREDS,
    # mm/migrate.c since Linux 4.13, commit 197e7e521384); CAP_SYS_NICE is needed for
    # MPOL_MF_MOVE_ALL, which shared memory takes (tierd/engine/pack.py): without it shared
    # pages are tracked but not moved.
    ptrace = bool(caps >> CAP_SYS_PTRACE & 1)

    if admin and ptrace:
        privileges = Feature("privileges", True, "root or CAP_SYS_ADMIN + CAP_SYS_PTRACE",
                             f"{'root' if is_root else 'not root'}, CAP_SYS_ADMIN and CAP_SYS_PTRACE")
    else:
        lacking = [n for n, ok in (("CAP_SYS_ADMIN", admin), ("CAP_SYS_PTRACE", ptrace)) if not ok]
        privileges = Feature(
            "privileges", False, "root or CAP_SYS_ADMIN + CAP_SYS_PTRACE",
            f"running without {' and '.join(lacking)} (uid {os.geteuid()}): page frame numbers, "
            "idle_bitmap and page_idle need CAP_SYS_ADMIN, reading and moving other users' "
            "pages CAP_SYS_PTRACE",
            "run tierd as root (the systemd unit does)",
        )

    if syscalls is None:
        try:
            syscalls = Syscalls()
        except OSError as e:  # pragma: no cover - libc always loads on Linux
            syscalls = e

    with touched_page() as addr:
        vpn = addr // PAGE_SIZE
        pagemap_pfn, kpageflags = _probe_pagemap(procfs, proc, me, vpn, admin)
        idle_bitmap, idle_bitmap_scan = _probe_idle_bitmap(procfs, me, vpn)
        move = _probe_move_pages(syscalls, addr)
    page_idle = _probe_page_idle(sys)

    if sysfs.has_numa():
        nodes = sysfs.online_nodes()
        numa = Feature("numa", True, "CONFIG_NUMA (/sys/devices/system/node)",
                       f"{len(nodes)} online node(s): {format_nodelist(nodes)}")
    else:
        nodes = (0,)
        numa = Feature("numa", False, "CONFIG_NUMA (/sys/devices/system/node)",
                       "no /sys/devices/system/node: the kernel has no NUMA support, so the "
                       "machine is one node and there is no slow tier to move pages to",
                       "boot a kernel with CONFIG_NUMA=y on a machine with several memory nodes")
    tiers = sysfs.memory_tiers()
    if sysfs.has_memory_tiers():
        memory_tiers = Feature(
            "memory_tiers", True, "Linux 6.1 (memory_tiering sysfs)",
            ", ".join(f"memory_tier{t}: nodes {format_nodelist(n)}" for t, n in tiers.items())
            or "no tiers listed")
    else:
        memory_tiers = Feature(
            "memory_tiers", False, "Linux 6.1 (memory_tiering sysfs)",
            "no /sys/devices/virtual/memory_tiering (kernel older than 6.1 or without NUMA): "
            "fast/slow nodes are told apart by CPUs (memory-only nodes are slow)",
            "boot Linux >= 6.1, or list fast/slow nodes under `nodes:` in the policy",
        )
    return Features(
        idle_bitmap=idle_bitmap, idle_bitmap_scan=idle_bitmap_scan, page_idle=page_idle,
        pagemap_pfn=pagemap_pfn,
        kpageflags=kpageflags, move_pages=move, numa=numa, memory_tiers=memory_tiers,
        privileges=privileges, nodes=nodes, is_root=is_root, cap_sys_admin=admin,
        cap_sys_nice=nice,
    )


def _probe_pagemap(procfs: ProcFS, proc: str, me: int, vpn: int, admin: bool):
    since = "Linux 2.6.25 (/proc/PID/pagemap); PFNs need CAP_SYS_ADMIN since Linux 4.2"
    fix_cfg = "boot a kernel with CONFIG_PROC_PAGE_MONITOR=y"
    try:
        entry = procfs.pagemap(me, vpn, 1)
    except (FileNotFoundError, ProcessGone):
        f = Feature("pagemap_pfn", False, since,
                    "no /proc/PID/pagemap (kernel built without CONFIG_PROC_PAGE_MONITOR)", fix_cfg)
    except OSError as e:
        f = Feature("pagemap_pfn", False, since, f"cannot read /proc/self/pagemap: {e.strerror}",
                    "run tierd as root")
    else:
        present, pfn = decode_pagemap(entry)
        if present[0] and pfn[0]:
            f = Feature("pagemap_pfn", True, since, "page frame numbers visible")
        elif present[0]:
            f = Feature("pagemap_pfn", False, since,
                        "pagemap hides page frame numbers (the reader lacks CAP_SYS_ADMIN)",
                        "run tierd as root (CAP_SYS_ADMIN)")
        else:
            f = Feature("pagemap_pfn", False, since,
                        "pagemap did not report a page this process just wrote as present",
                        "report this: the kernel's pagemap looks broken")
    kpf_since = "Linux 2.6.25 (/proc/kpageflags, CONFIG_PROC_PAGE_MONITOR)"
    path = os.path.join(proc, "kpageflags")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.pread(fd, PM_ENTRY_BYTES, 0)
        finally:
            os.close(fd)
        k = Feature("kpageflags", True, kpf_since, "readable")
    except FileNotFoundError:
        k = Feature("kpageflags", False, kpf_since, f"no {path}", fix_cfg)
    except OSError as e:
        k = Feature("kpageflags", False, kpf_since, f"cannot read {path}: {e.strerror}",
                    "run tierd as root")
    return f, k


def _probe_idle_bitmap(procfs: ProcFS, me: int, vpn: int) -> tuple[Feature, Feature]:
    """(idle_bitmap, idle_bitmap_scan): the file, and the v3 ioctl that clears at page
    granularity (a v2 kernel answers ENOTTY; tierd then clears with O_RDWR reads)."""
    since = "tierd kernel patch (kernel/patches, not upstream)"
    fix = ("build and boot tierd's patched kernel: kernel/build.sh applies kernel/patches "
           "(CONFIG_PROC_IDLE_BITMAP)")
    scan_since = "tierd kernel patch v3 (IDLE_BITMAP_SCAN ioctl on /proc/PID/idle_bitmap)"
    scan_fix = ("boot a kernel with tierd's v3 patch (kernel/build.sh); on v2 tierd clears "
                "whole 64-page words and leaves out those shared with untracked mappings")

    def both(f: Feature) -> tuple[Feature, Feature]:
        return f, Feature("idle_bitmap_scan", False, scan_since, f"no idle_bitmap: {f.detail}",
                          f.how_to_fix)

    try:
        # O_RDONLY: the probe must not clear our own Accessed bits (v3 reads never do).
        fd = procfs.open(me, "idle_bitmap", os.O_RDONLY)
    except (FileNotFoundError, ProcessGone):
        return both(Feature("idle_bitmap", False, since, "no /proc/PID/idle_bitmap: this kernel "
                            "does not carry tierd's patch", fix))
    except OSError as e:
        return both(Feature("idle_bitmap", False, since,
                            f"cannot open /proc/self/idle_bitmap: {e.strerror}",
                            "run tierd as root (CAP_SYS_ADMIN)"))
    try:
        data = os.pread(fd, IDLE_RECORD_BYTES, IDLE_RECORD_BYTES * (vpn // PAGES_PER_WORD))
        scan = _probe_scan(fd, vpn)
    except OSError as e:
        return both(Feature("idle_bitmap", False, since,
                            f"reading /proc/self/idle_bitmap failed: {e.strerror}",
                            "run tierd as root (CAP_SYS_ADMIN)"
                            if e.errno in (errno.EPERM, errno.EACCES) else fix))
    finally:
        os.close(fd)
    if len(data) == 16:
        present = int.from_bytes(data[:8], "little")
        if present >> (vpn % 64) & 1:
            f = Feature("idle_bitmap", True, since, "present and readable")
        else:
            f = Feature("idle_bitmap", False, since,
                        "/proc/self/idle_bitmap did not report a page this process just wrote",
                        "check the kernel patch version against tierd's (kernel/patches)")
    else:
        f = Feature("idle_bitmap", False, since, "/proc/self/idle_bitmap returned a short read",
                    "check the kernel patch version against tierd's (kernel/patches)")
    if not f.available:
        return both(f)
    if scan is None:
        return f, Feature("idle_bitmap_scan", False, scan_since,
                          "IDLE_BITMAP_SCAN answers ENOTTY: a v2 kernel patch", scan_fix)
    if not scan:
        return f, Feature("idle_bitmap_scan", False, scan_since,
                          "IDLE_BITMAP_SCAN did not report a page this process just wrote",
                          "check the kernel patch version against tierd's (kernel/patches)")
    return f, Feature("idle_bitmap_scan", True, scan_since,
                      "page-granular clearing (IDLE_BITMAP_SCAN)")


def _probe_scan(fd: int, vpn: int) -> bool | None:
    """None if the kernel has no IDLE_BITMAP_SCAN (ENOTTY), else whether a report-only scan
    of our own written page says present.  Other errors propagate."""
    vec = np.zeros(2, dtype=np.uint64)
    try:
        n, _ = idle_bitmap_scan(fd, vpn * PAGE_SIZE, (vpn + 1) * PAGE_SIZE, vec, 0)
    except OSError as e:
        if e.errno == errno.ENOTTY:
            return None
        raise
    return n == 1 and bool(int(vec[0]) >> (vpn % 64) & 1)


def _probe_page_idle(sys: str) -> Feature:
    since = "Linux 4.3 (CONFIG_IDLE_PAGE_TRACKING, commit 33c3fc71c8cf)"
    path = os.path.join(sys, "kernel/mm/page_idle/bitmap")
    try:
        # Open for writing (as the reader will) but do not write: that would mark pages idle.
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return Feature("page_idle", False, since,
                       f"no {path}: the kernel was built without CONFIG_IDLE_PAGE_TRACKING",
                       "boot a kernel with CONFIG_IDLE_PAGE_TRACKING=y (or tierd's patched "
                       "kernel, kernel/build.sh)")
    except OSError as e:
        return Feature("page_idle", False, since, f"cannot open {path}: {e.strerror}",
                       "run tierd as root (the bitmap is mode 0600)")
    os.close(fd)
    return Feature("page_idle", True, since, f"{path} is readable and writable")


def _probe_move_pages(syscalls, addr: int) -> Feature:
    since = "Linux 2.6.18 (CONFIG_NUMA, CONFIG_MIGRATION)"
    if isinstance(syscalls, Exception):  # pragma: no cover
        return Feature("move_pages", False, since, f"cannot load libc: {syscalls}",
                       "run tierd with a glibc/musl Python")
    try:
        status = syscalls.move_pages(0, np.array([addr], dtype=np.uint64))
    except FeatureMissing as e:
        return Feature("move_pages", False, since, e.what, e.how_to_fix)
    except OSError as e:
        return Feature("move_pages", False, since, f"move_pages query failed: {e}",
                       "boot a kernel with CONFIG_NUMA=y and CONFIG_MIGRATION=y")
    s = int(status[0])
    if s >= 0:
        return Feature("move_pages", True, since, f"a page of ours reports node {s}")
    name = errno.errorcode.get(-s, str(-s))
    return Feature("move_pages", False, since,
                   f"querying a page of our own returned {name}",
                   "boot a kernel with CONFIG_NUMA=y and CONFIG_MIGRATION=y")
