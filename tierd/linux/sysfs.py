"""/sys: NUMA topology and memory tiers.

Sources (all text, parsed by the pure functions here):
- ``devices/system/node/online``: online node list ("0-1"); ``has_memory`` as a fallback.
- ``devices/system/node/possible``: every node that can ever come online (firmware's SRAT
  and CXL windows, node_possible_map); a node listed in the policy that is possible but
  offline now (hot-unplugged, not yet onlined) is left out, not refused.
- ``devices/system/node/nodeN/{cpulist,meminfo,distance}``: CPUs, "Node N MemTotal: X kB"
  lines, and the SLIT distance row (drivers/base/node.c).
- ``devices/virtual/memory_tiering/memory_tierN/nodelist``: memory tiers, since Linux 6.1
  (mm/memory-tiers.c).  A lower tier id means higher performance: the tier id is the node's
  abstract distance divided by the chunk size (MEMTIER_CHUNK_BITS), DRAM is tier 4.
- A kernel without CONFIG_NUMA has no ``devices/system/node``: then the machine is one node 0
  with /proc/meminfo's totals and every online CPU.
- ``devices/system/memory/block_size_bytes`` (hex) and the ``nodeN/memoryM`` links: which
  node each memory block (PFNs M * block .. (M + 1) * block - 1) belongs to, so a PFN read
  from pagemap gives its page's node without a move_pages query (``MemoryMap``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from tierd.linux.errors import ParseError
from tierd.linux.procfs import parse_meminfo
from tierd.pages import PAGE_SIZE

NODE_DIR = "devices/system/node"
TIER_DIR = "devices/virtual/memory_tiering"
_TIER_RE = re.compile(r"memory_tier(\d+)\Z")
# Larger than any NR_CPUS/MAX_NUMNODES: bounds the work a corrupt list can cause.
LIST_MAX = 1 << 20
_NODE_RE = re.compile(r"node(\d+)\Z")
_BLOCK_RE = re.compile(r"memory(\d+)\Z")
MEMORY_DIR = "devices/system/memory"


def parse_nodelist(text: str) -> tuple[int, ...]:
    """Kernel list format ("0-3,5,7-8", "" or "\\n" for none) -> sorted unique ids."""
    out: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not (lo.isascii() and lo.isdigit()) or (sep and not (hi.isascii() and hi.isdigit())):
            raise ParseError("list", 0, f"bad range {part!r}")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a or b >= LIST_MAX:
            raise ParseError("list", 0, f"bad range {part!r}")
        out.update(range(a, b + 1))
    return tuple(sorted(out))


def format_nodelist(ids) -> str:
    """Inverse of parse_nodelist: (0, 1, 2, 5) -> "0-2,5"; () -> "none"."""
    ids = sorted(set(int(i) for i in ids))
    if not ids:
        return "none"
    runs = []
    start = prev = ids[0]
    for i in ids[1:]:
        if i != prev + 1:
            runs.append((start, prev))
            start = i
        prev = i
    runs.append((start, prev))
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


def parse_node_meminfo(text: str) -> dict[str, int]:
    """nodeN/meminfo ("Node 0 MemTotal:  123 kB") -> {"MemTotal": bytes, ...}."""
    return parse_meminfo(text)


def reclaimable_bytes(meminfo: dict[str, int]) -> int:
    """Page cache a node can give back without I/O or harm: its file LRU pages (Active(file) +
    Inactive(file); shmem is on the anon lists, so not in them) minus Dirty and Writeback,
    and minus Mapped: pages some process maps (program text, libraries, mmapped files) are
    in use, and reclaiming them for a promotion only makes their owners fault them back (the
    kernel's reclaim itself protects mapped executable pages).  Mapped also counts mapped
    shmem, which is not in the file lists, so this errs on the side of less room.  It is
    MemAvailable's page cache term (mm/show_mem.c si_mem_available) per node, less what must
    be written back first or is mapped; the kernel watermarks it also subtracts lie inside
    tierd's own keep_free floor."""
    file = meminfo.get("Active(file)", 0) + meminfo.get("Inactive(file)", 0)
    busy = meminfo.get("Dirty", 0) + meminfo.get("Writeback", 0) + meminfo.get("Mapped", 0)
    return max(0, file - busy)


def parse_distance(text: str) -> tuple[int, ...]:
    """nodeN/distance ("10 21") -> (10, 21), in the order of the online nodes."""
    try:
        return tuple(int(w) for w in text.split())
    except ValueError:
        raise ParseError("distance", 0, f"bad distance row {text.strip()!r}") from None


@dataclass(frozen=True)
class Node:
    """One NUMA node.  Sizes in bytes; ``tier`` is the memory_tierN id or None.
    ``reclaimable``: clean page cache on the node (``reclaimable_bytes``), memory an
    allocation there (a promotion by move_pages) gets by reclaim."""

    id: int
    cpus: tuple[int, ...]
    mem_total: int
    mem_free: int
    distances: tuple[int, ...]
    tier: int | None
    reclaimable: int = 0

    @property
    def mem_available(self) -> int:
        """What the node can give: free plus reclaimable page cache."""
        return self.mem_free + self.reclaimable

    @property
    def has_memory(self) -> bool:
        return self.mem_total > 0


@dataclass(frozen=True)
class Topology:
    """The machine's NUMA nodes (ascending ids) as read at one moment; ``possible``: the
    node ids that can ever be online (None: not known)."""

    nodes: tuple[Node, ...]
    possible: tuple[int, ...] | None = None

    def node(self, id: int) -> Node:
        for n in self.nodes:
            if n.id == id:
                return n
        raise KeyError(f"no NUMA node {id} (online: {format_nodelist(self.ids)})")

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(n.id for n in self.nodes)

    @property
    def has_tiers(self) -> bool:
        return any(n.tier is not None for n in self.nodes)

    def classify(self, fast="auto", slow="auto", strict: bool = True) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(fast node ids, slow node ids).

        ``fast``/``slow`` are "auto" (or None) or explicit node id sequences from the policy;
        an explicit list wins, and the other side defaults to the remaining memory nodes.
        Automatic rule: when memory tiers (Linux 6.1) put the memory nodes in at least two
        tiers, the nodes in the numerically lowest tier are fast and the rest slow; otherwise
        (no tiers, or one tier for all: tiers give no information) nodes with CPUs are fast
        and memory-only nodes slow.  Nodes without memory (CPU-only) are in neither list.  One
        memory node: it is fast and there is no slow tier.

        A listed node that is not online with memory now is left out of its list: memory
        comes and goes (hotplug, CXL), and the next call classifies again.  ``strict`` (a
        policy being loaded) raises ValueError for a listed id that can never be online
        here: not in ``possible``, or, that not known, not online with memory now.  A node
        in both lists is a ValueError either way.
        """
        mem = [n for n in self.nodes if n.has_memory]
        mem_ids = tuple(n.id for n in mem)
        fast_ids = None if fast in ("auto", None) else tuple(sorted(set(int(i) for i in fast)))
        slow_ids = None if slow in ("auto", None) else tuple(sorted(set(int(i) for i in slow)))
        for label, ids in (("fast", fast_ids), ("slow", slow_ids)):
            bad = [i for i in ids or () if i not in mem_ids
                   and (self.possible is None or i not in self.possible)]
            if bad and strict:
                can = ("" if self.possible is None
                       else f"; nodes that can come online: {format_nodelist(self.possible)}")
                raise ValueError(
                    f"{label} node(s) {format_nodelist(bad)} are not online nodes with memory "
                    f"(those are: {format_nodelist(mem_ids)}{can})"
                )
        if fast_ids is not None and slow_ids is not None and set(fast_ids) & set(slow_ids):
            both = set(fast_ids) & set(slow_ids)
            raise ValueError(f"node(s) {format_nodelist(both)} listed as both fast and slow")
        fast_ids = None if fast_ids is None else tuple(i for i in fast_ids if i in mem_ids)
        slow_ids = None if slow_ids is None else tuple(i for i in slow_ids if i in mem_ids)
        if fast_ids is not None and slow_ids is not None:
            return fast_ids, slow_ids
        if fast_ids is not None:
            return fast_ids, tuple(i for i in mem_ids if i not in fast_ids)
        if slow_ids is not None:
            return tuple(i for i in mem_ids if i not in slow_ids), slow_ids
        tiers = {n.tier for n in mem if n.tier is not None}
        if len(tiers) >= 2:
            top = min(tiers)
            fast_ids = tuple(
                n.id for n in mem if n.tier == top or (n.tier is None and n.cpus)
            )
        else:
            fast_ids = tuple(n.id for n in mem if n.cpus)
        if not fast_ids:  # memory-only everywhere (odd VMs): nothing to rank, all fast
            fast_ids = mem_ids
        return fast_ids, tuple(i for i in mem_ids if i not in fast_ids)

    def offline(self, *lists) -> tuple[int, ...]:
        """The ids of the given node lists ("auto"/None: none) not online with memory now."""
        mem_ids = {n.id for n in self.nodes if n.has_memory}
        return tuple(sorted({int(i) for ids in lists if ids not in ("auto", None)
                             for i in ids} - mem_ids))


@dataclass(frozen=True)
class MemoryMap:
    """PFN ranges [start, end) per node, sorted and merged (from the memory blocks)."""

    start: np.ndarray  # int64 first PFN of each range
    end: np.ndarray  # int64 PFN after the range
    node: np.ndarray  # int16 node of each range

    def node_of(self, pfns) -> np.ndarray:
        """Node of each PFN (int16), -1 where no block covers it (vectorized)."""
        p = np.asarray(pfns, dtype=np.int64)
        i = np.searchsorted(self.start, p, side="right") - 1
        ok = (i >= 0) & (p < self.end[np.maximum(i, 0)]) if self.start.size else np.zeros(p.shape, bool)
        return np.where(ok, self.node[np.maximum(i, 0)] if self.start.size else -1, -1).astype(np.int16)


def parse_block_size(text: str) -> int:
    """Bytes per memory block from block_size_bytes (hexadecimal without 0x, e.g.
    "8000000" = 128 MiB)."""
    try:
        v = int(text.strip(), 16)
    except ValueError:
        raise ParseError("block_size_bytes", 1, f"not a hexadecimal number: {text.strip()!r}") from None
    if v <= 0 or v % PAGE_SIZE:
        raise ParseError("block_size_bytes", 1, f"{v} is not a positive multiple of the page size")
    return v


def parse_memory_blocks(block_size_text: str, node_blocks: dict[int, Iterable[str]],
                        page_size: int = PAGE_SIZE) -> MemoryMap:
    """MemoryMap from block_size_bytes and, per node, the names of its ``nodeN`` directory
    entries (``memoryM`` ones are its blocks; other names are ignored)."""
    pages = parse_block_size(block_size_text) // page_size
    rows = sorted((int(m.group(1)), nid) for nid, names in node_blocks.items()
                  for m in map(_BLOCK_RE.match, names) if m)
    start, end, node = [], [], []
    for block, nid in rows:
        lo = block * pages
        if start and node[-1] == nid and end[-1] == lo:
            end[-1] = lo + pages
        elif start and lo < end[-1]:
            raise ParseError(f"memory{block}", 0, f"listed under nodes {node[-1]} and {nid}")
        else:
            start.append(lo)
            end.append(lo + pages)
            node.append(nid)
    return MemoryMap(np.array(start, np.int64), np.array(end, np.int64), np.array(node, np.int16))


class SysFS:
    """Reads /sys below ``root``; ``proc`` is only used for /proc/meminfo on a host without
    NUMA sysfs (CONFIG_NUMA=n), where the whole machine is node 0."""

    def __init__(self, root: str = "/sys", proc: str = "/proc") -> None:
        self.root = root
        self.proc = proc

    def _p(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def _read(self, *parts: str) -> str:
        with open(self._p(*parts), encoding="utf-8", errors="surrogateescape") as f:
            return f.read()

    def has_numa(self) -> bool:
        return os.path.isdir(self._p(NODE_DIR))

    def has_memory_tiers(self) -> bool:
        return os.path.isdir(self._p(TIER_DIR))

    def online_nodes(self) -> tuple[int, ...]:
        """Online node ids; falls back to has_memory, then to the nodeN directories."""
        for name in ("online", "has_memory"):
            try:
                ids = parse_nodelist(self._read(NODE_DIR, name))
            except FileNotFoundError:
                continue
            if ids:
                return ids
        try:
            names = os.listdir(self._p(NODE_DIR))
        except FileNotFoundError:
            return ()
        return tuple(sorted(int(m.group(1)) for m in map(_NODE_RE.match, names) if m))

    def memory_tiers(self) -> dict[int, tuple[int, ...]]:
        """{tier id: node ids} from memory_tiering (empty before Linux 6.1)."""
        try:
            names = os.listdir(self._p(TIER_DIR))
        except FileNotFoundError:
            return {}
        tiers = {}
        for name in names:
            m = _TIER_RE.match(name)
            if m:
                try:
                    tiers[int(m.group(1))] = parse_nodelist(self._read(TIER_DIR, name, "nodelist"))
                except FileNotFoundError:
                    continue
        return dict(sorted(tiers.items()))

    def cpus_online(self) -> tuple[int, ...]:
        try:
            return parse_nodelist(self._read("devices/system/cpu/online"))
        except FileNotFoundError:
            return tuple(range(os.cpu_count() or 1))

    def possible_nodes(self) -> tuple[int, ...] | None:
        """Ids of every node that can ever be online (None: no ``possible`` file)."""
        try:
            return parse_nodelist(self._read(NODE_DIR, "possible")) or None
        except FileNotFoundError:
            return None

    def _node(self, nid: int, tier_of: dict[int, int]) -> Node | None:
        """Node ``nid``, or None if it went offline while being read (no meminfo)."""
        d = f"node{nid}"
        try:
            cpus = parse_nodelist(self._read(NODE_DIR, d, "cpulist"))
        except FileNotFoundError:
            cpus = ()
        try:
            meminfo = parse_node_meminfo(self._read(NODE_DIR, d, "meminfo"))
        except FileNotFoundError:  # offlined between reading ``online`` and here
            return None
        try:
            distances = parse_distance(self._read(NODE_DIR, d, "distance"))
        except FileNotFoundError:
            distances = ()
        return Node(
            id=nid,
            cpus=cpus,
            mem_total=meminfo.get("MemTotal", 0),
            mem_free=meminfo.get("MemFree", 0),
            distances=distances,
            tier=tier_of.get(nid),
            reclaimable=reclaimable_bytes(meminfo),
        )

    def topology(self) -> Topology:
        """Read the topology now (MemFree changes: call again each interval)."""
        if not self.has_numa():
            with open(os.path.join(self.proc, "meminfo"), encoding="utf-8", errors="surrogateescape") as f:
                mi = parse_meminfo(f.read())
            return Topology(
                (Node(0, self.cpus_online(), mi.get("MemTotal", 0), mi.get("MemFree", 0), (10,), None),)
            )
        tier_of = {nid: tid for tid, nids in self.memory_tiers().items() for nid in nids}
        nodes = (self._node(nid, tier_of) for nid in self.online_nodes())
        return Topology(tuple(n for n in nodes if n is not None), self.possible_nodes())

    def memory_map(self) -> MemoryMap:
        """PFN -> node from the memory blocks (empty without memory hotplug sysfs)."""
        try:
            size = self._read(MEMORY_DIR, "block_size_bytes")
        except FileNotFoundError:
            return parse_memory_blocks("1000", {})
        blocks = {}
        for nid in self.online_nodes():
            try:
                blocks[nid] = os.listdir(self._p(NODE_DIR, f"node{nid}"))
            except FileNotFoundError:
                continue
        return parse_memory_blocks(size, blocks)
