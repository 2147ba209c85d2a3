"""Which NUMA node a process's pages are on, without move_pages(2) queries.

The engine learns each page's node once (then follows its own moves).  Asking move_pages
with nodes=NULL costs a syscall per batch and a page-table walk; two cheaper sources:

- ``PagemapNodes``, for the page_idle reader: /proc/PID/pagemap already gives each present
  page's PFN, and the memory blocks in sysfs (/sys/devices/system/node/nodeN/memoryM, read
  once: ``SysFS.memory_map``) map a PFN to its node.  One pread of pagemap for the words
  asked about, then a vectorized lookup.
- ``NumaMapsNodes``, for the idle_bitmap reader (which sees no PFNs): /proc/PID/numa_maps
  counts each mapping's pages per node (``N0=512 N1=3``); a mapping whose pages are all on
  one node gives that node for all of them.  Mappings spread over several nodes stay
  unknown (-1) and are queried as before.  The kernel walks the whole process's page
  tables to print numa_maps, so this source costs about one pagemap read of the process:
  the engine uses it only while many of a process's pages are unknown
  (``nodes_scope = "process"``, tierd/engine/daemon.py).

numa_maps format (fs/proc/task_mmu.c, show_numa_map): one line per VMA, ``START POLICY``
then space-separated ``key=value`` pairs and flags: ``file=PATH`` (seq_path escapes space,
tab, newline and ``=`` in it as octal, so it is one token), ``anon=``, ``dirty=``,
``mapped=``, ``N<node>=<pages>``, ``kernelpagesize_kB=``, flags ``heap``, ``stack``,
``huge``.  A VMA without present pages has no counters.  Page counts are in units of the
VMA's page size.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field

import numpy as np

from tierd.linux.errors import ParseError
from tierd.linux.procfs import ProcFS, decode_pagemap, read_pagemap

PAGES_PER_WORD = 64
RELOAD_SECONDS = 60.0  # memory blocks are read again at most this often (hotplug is rare)
_NODE_RE = re.compile(r"N(\d+)=(\d+)$")


@dataclass(frozen=True)
class NumaMapping:
    """One numa_maps line: the VMA's start address and its present pages per node."""

    start: int
    policy: str
    nodes: dict[int, int] = field(default_factory=dict)

    @property
    def only_node(self) -> int | None:
        """The node holding all of the mapping's pages, or None (none present, or several)."""
        held = [n for n, k in self.nodes.items() if k > 0]
        return held[0] if len(held) == 1 else None


def parse_numa_maps(text: str, what: str = "numa_maps") -> tuple[NumaMapping, ...]:
    """Parse /proc/PID/numa_maps text; ParseError (what:line: why) on a malformed line."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) < 2:
            raise ParseError(what, lineno, f"expected 'START POLICY ...', got {line!r}")
        try:
            start = int(parts[0], 16)
        except ValueError:
            raise ParseError(what, lineno, f"bad start address {parts[0]!r}") from None
        nodes = {}
        for tok in parts[2:]:
            m = _NODE_RE.match(tok)
            if m:
                nodes[int(m.group(1))] = int(m.group(2))
            elif tok.startswith("N") and "=" in tok and not tok.startswith(("N=",)):
                raise ParseError(what, lineno, f"bad node counter {tok!r}")
        out.append(NumaMapping(start, parts[1], nodes))
    return tuple(out)


def single_node_spans(vmas, numa: tuple[NumaMapping, ...]) -> list[tuple[int, int, int]]:
    """(first vpn, end vpn, node) of each VMA whose present pages are all on one node
    (VMAs matched by start address; ``vmas`` from maps, which gives the ends)."""
    by_start = {m.start: m for m in numa}
    out = []
    for v in vmas:
        m = by_start.get(v.start)
        node = m.only_node if m is not None else None
        if node is not None:
            out.append((v.start >> 12, v.end >> 12, node))
    return out


def fill_spans(spans, word_start: int, nwords: int) -> np.ndarray:
    """int16 node per page of words word_start .. +nwords from (vpn, end vpn, node) spans,
    -1 elsewhere."""
    lo = word_start * PAGES_PER_WORD
    hi = lo + nwords * PAGES_PER_WORD
    out = np.full(hi - lo, -1, dtype=np.int16)
    for a, b, node in spans:
        a, b = max(a, lo), min(b, hi)
        if a < b:
            out[a - lo: b - lo] = node
    return out


class NumaMapsNodes:
    """``nodes(pid, word_start, nwords)`` from /proc/PID/numa_maps (read once per pid until
    ``forget(pid)``: the engine asks for several ranges of a process in a row)."""

    def __init__(self, procfs: ProcFS) -> None:
        self.procfs = procfs
        self._spans: dict[int, list] = {}

    def nodes(self, pid: int, word_start: int, nwords: int) -> np.ndarray:
        spans = self._spans.get(pid)
        if spans is None:
            numa = parse_numa_maps(self.procfs.read_text(pid, "numa_maps"),
                                   f"/proc/{pid}/numa_maps")
            spans = self._spans[pid] = single_node_spans(self.procfs.maps(pid), numa)
        return fill_spans(spans, word_start, nwords)

    def forget(self, pid: int) -> None:
        self._spans.pop(pid, None)

    def forget_all(self) -> None:
        self._spans.clear()


class PagemapNodes:
    """``nodes(pid, word_start, nwords)`` from the PFNs in /proc/PID/pagemap and the sysfs
    memory blocks (``memory_map``: a callable returning a tierd.linux.sysfs.MemoryMap,
    called once, and again - at most every RELOAD_SECONDS - when a PFN falls outside every
    block: memory hotplug).  Without memory block sysfs every node reads -1 (the engine
    queries) and pagemap is not read."""

    def __init__(self, procfs: ProcFS, memory_map, chunk_words: int = 1 << 14) -> None:
        self.procfs = procfs
        self._load = memory_map
        self._map = None
        self._loaded = 0.0
        self.chunk_words = chunk_words

    def nodes(self, pid: int, word_start: int, nwords: int, fd: int | None = None) -> np.ndarray:
        out = np.full(nwords * PAGES_PER_WORD, -1, dtype=np.int16)
        now = time.monotonic()
        if self._map is None or (not self._map.start.size and now - self._loaded >= RELOAD_SECONDS):
            self._map, self._loaded = self._load(), now
        if not self._map.start.size:  # no memory block sysfs (CONFIG_MEMORY_HOTPLUG=n): query
            return out
        own = fd is None
        if own:
            fd = self.procfs.open(pid, "pagemap")
        try:
            for lo in range(0, nwords, self.chunk_words):
                n = min(self.chunk_words, nwords - lo)
                entries = read_pagemap(fd, pid, PAGES_PER_WORD * (word_start + lo), PAGES_PER_WORD * n)
                present, pfn = decode_pagemap(entries)
                idx = np.flatnonzero(present & (pfn != 0))
                node = self._map.node_of(pfn[idx])
                if (node < 0).any() and time.monotonic() - self._loaded >= RELOAD_SECONDS:
                    # a block added since (memory hotplug): read the blocks again
                    self._map, self._loaded = self._load(), time.monotonic()
                    node = self._map.node_of(pfn[idx])
                out[PAGES_PER_WORD * lo + idx] = node
        finally:
            if own:
                os.close(fd)
        return out
