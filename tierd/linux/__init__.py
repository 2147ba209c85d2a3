"""tierd's kernel boundary: the only package that opens /proc or /sys or makes syscalls.

``Kernel`` composes the pieces (ProcFS, SysFS, Syscalls, the access readers, the feature
probe) behind the facade the engine codes against (docs/design.md, "Kernel facade");
the simulator provides a fake with the same methods.  Roots are injected, so unit tests run
the same code on fixture trees.
"""

from __future__ import annotations

import numpy as np

from tierd.linux.errors import FeatureMissing, MovePagesError, ParseError, ProcessGone
from tierd.linux.features import Feature, Features, probe
from tierd.linux.procfs import (
    ProcFS,
    Vma,
    decode_pagemap,
    parse_cgroup,
    parse_cmdline,
    parse_maps,
    parse_meminfo,
    parse_smaps,
    parse_status,
)
from tierd.linux.syscalls import MPOL_MF_MOVE, MPOL_MF_MOVE_ALL, Syscalls
from tierd.linux.sysfs import (
    Node,
    SysFS,
    Topology,
    format_nodelist,
    parse_distance,
    parse_node_meminfo,
    parse_nodelist,
)
from tierd.linux.tracking import (
    AccessReader,
    IdleBitmapReader,
    PageIdleReader,
    extents,
    pack_bits,
    popcount,
    tracked_extents,
    unpack_words,
)
from tierd.pages import PAGE_SHIFT, PAGE_SIZE

__all__ = [
    "AccessReader", "Feature", "FeatureMissing", "Features", "IdleBitmapReader", "Kernel",
    "MPOL_MF_MOVE", "MPOL_MF_MOVE_ALL", "MovePagesError", "Node", "PAGE_SHIFT", "PAGE_SIZE",
    "PageIdleReader", "ParseError", "ProcFS", "ProcessGone", "SysFS", "Syscalls", "Topology",
    "Vma", "decode_pagemap", "extents", "format_nodelist", "pack_bits", "parse_cgroup",
    "parse_cmdline", "parse_distance", "parse_maps", "parse_meminfo", "parse_node_meminfo",
    "parse_nodelist", "parse_smaps", "parse_status", "popcount", "probe", "tracked_extents",
    "unpack_words",
]


class Kernel:
    """The running kernel (or a fixture tree of one), as tierd sees it."""

    def __init__(self, proc: str = "/proc", sys: str = "/sys", syscalls=None) -> None:
        self.proc = proc
        self.sys = sys
        self.procfs = ProcFS(proc)
        self.sysfs = SysFS(sys, proc)
        self.syscalls = syscalls if syscalls is not None else Syscalls()
        self._features: Features | None = None

    def features(self) -> Features:
        """Probed on first use, then cached (interfaces do not change while running)."""
        if self._features is None:
            self._features = probe(self.proc, self.sys, self.syscalls)
        return self._features

    def topology(self) -> Topology:
        """Read afresh on every call: MemFree changes from one interval to the next."""
        return self.sysfs.topology()

    def reader(self, name: str = "auto") -> AccessReader:
        """A new access reader: "auto" picks the best usable one (idle_bitmap, then
        page_idle).  Raises FeatureMissing (what is missing and how to get it) if the
        requested reader, or for "auto" every reader, cannot work on this kernel."""
        feats = self.features()
        if name == "auto":
            name = feats.best_reader()
        else:
            missing = feats.reader_missing(name)  # ValueError for an unknown name
            if missing is not None:
                raise missing
        if name == "idle_bitmap":
            return IdleBitmapReader(self.proc, scan=feats.idle_bitmap_scan.available)
        return PageIdleReader(self.proc, self.sys)

    def thp(self):
        """Finds and splits other processes' transparent huge pages (tierd/linux/thp.py)."""
        import os

        from tierd.linux.thp import ThpSplitter

        return ThpSplitter(self.proc, os.path.join(self.sys, "kernel/debug"), self.syscalls)

    def move_pages(
        self,
        pid: int,
        addrs: np.ndarray,
        nodes: np.ndarray | None = None,
        flags: int = MPOL_MF_MOVE,
        batch: int = 4096,
    ) -> np.ndarray:
        """move_pages(2); see tierd.linux.syscalls.Syscalls.move_pages."""
        return self.syscalls.move_pages(pid, addrs, nodes, flags, batch)
