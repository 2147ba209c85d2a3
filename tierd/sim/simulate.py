"""Policy simulator: the real engine against a simulated machine and workload.

``tierd simulate --config etc/tierd.yaml --workload SPEC`` runs ``tierd.engine.daemon.Engine``
(targets, state, hotness, placement, executor: all real) with only the kernel boundary
replaced by ``SimKernel``: a machine of fast nodes with CPUs and slow memory-only nodes (by
default one each: node 0 fast, node 1 slow) whose MemFree follows the pages placed on it, an access reader that reports the
workload's accesses, and a move_pages that moves pages (ENOMEM when the destination is full).
Intervals run back to back; nothing sleeps.

Workload model.  Each process has N pages; page weights follow a distribution over *ranks*
(uniform, zipf:S, or hotset:F[:Q] = a fraction F of the pages gets a share Q of the accesses,
default 90%), and a bijection rank -> page (``layout=scatter``: an affine permutation, hot
pages spread over the address space; ``contig``: hot pages together).  A phase change
(``phase=every:K``) replaces the bijection, so the hot set moves.  Per interval the process
makes ``accesses`` x N page accesses (default 1x); a page of weight w is accessed with
probability 1 - exp(-accesses * N * w) - exactly the Poisson model, sampled without
enumerating pages: Bernoulli draws for the head of the distribution, and for the long tail a
Poisson number of accesses drawn by rank in proportion to weight.  Sizes up to terabytes fit
(state is one byte per simulated page for its node).

Scores.  The fraction of accesses served by the fast tier is the total weight of the pages on
it (exact, maintained as pages move).  The oracle is the best placement for the same fast
capacity the engine may fill (fast node size minus the keep_free floor and other users): the
heaviest pages, i.e. the prefix sum of the weights by rank.  Printed per interval, measured
*during* the interval (before that interval's moves): hit fraction, oracle, their ratio,
pages promoted / demoted, and the engine's own time.  And what the moves cost: ``wasted``
moves (pages moved back within WASTE_WINDOW intervals of their last move, plus swaps whose
promoted page is not more accessed than its demoted one, matched heaviest with heaviest),
``eat_ns`` (effective access time per access: fast/slow latency by the hit fraction, plus
each migrated page's cost spread over the interval's accesses; constants T_FAST, T_SLOW,
ACCESS_LINES, T_MOVE), and ``unknown`` (pages whose node the engine has not learned yet).

Compact SPEC: comma-separated key=value, e.g.
``size=1TiB,fast=256GiB,dist=zipf:1.1,phase=every:20`` or ``size=64GiB,fast=16GiB,dist=hotset:10%``.
Keys: size, fast, slow (default: size), other (fast memory used by others, default 0),
nodes (F+S: the fast and the slow memory split evenly over F and S nodes, default 1+1; fast
nodes have CPUs, each slow node is near one of them),
dist (uniform | zipf:S | hotset:F[:Q]), phase (none | every:K), accesses (per page per
interval, "1x"), layout (scatter | contig), init (first | slow: where pages start; first = first
touch, the fast node fills up first), busy (fraction of moves failing with EBUSY),
target (policy target name; default the first), churn (fraction of the pages freed each
interval, as one range, and faulted back in the next: first touch puts them on the fast node
while it has room), thp (fraction of the 2 MiB-aligned blocks that are transparent huge
pages, default 0: such a block has one Accessed bit for its 512 pages - any access marks all
of them - and moves as a unit: a move_pages of any of its pages moves all 512, which count in
``dragged``, and needs room for all of them), kswapd (on/off: the kernel itself demotes pages not accessed lately when
the fast node's free memory falls below 1%, behind tierd's back; with page cache it reclaims
that first), cache (page cache a reader of files adds to each fast node per interval, e.g.
cache=1GiB: it fills the free memory above the kernel's reserve, the node reports it as
reclaimable, and allocations there - promotions, first touch - reclaim it first, like the
kernel's own reclaim), numa_balancing (on/off: the kernel promotes pages accessed on slow
nodes to the fast node with the most free memory, up to 1% of it per interval, while it has
more than 2% free, behind tierd's back), intervals, seed.

move_pages returns what real kernels return (mm/migrate.c, through tierd.linux.syscalls): a
node status or -EBUSY/-ENOENT/-EFAULT per page, and a destination that fills up part-way is a
whole-call ENOMEM (MovePagesError with the statuses so far attached), never a per-page
ENOMEM.
A YAML file instead gives ``machine: {fast, slow, other, kswapd, nodes}``, ``intervals``, ``seed``
and a ``processes:`` list of maps with the per-process keys (size, dist, phase, accesses,
layout, init, busy, target, churn, thp).
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np

from tierd.engine.daemon import Engine
from tierd.engine.targets import ProcessRef, StaticResolver
from tierd.pages import HPAGE_PAGES, HPAGE_WORDS, PAGE_SHIFT, PAGE_SIZE, PAGES_PER_WORD

log = logging.getLogger("tierd.simulate")

FAST, SLOW = 0, 1
BASE_VPN = 0x7F00_0000_0000 >> PAGE_SHIFT  # first process's mapping; 64-page aligned
CHUNK = 1 << 24  # ranks/pages per vectorized step: bounds temporaries to ~100 MB
BLOCK = 1 << 12  # ranks per block of the tail-sampling table
HEAD_LAMBDA = 0.5  # ranks expecting at least this many accesses are drawn one by one
MIN_FREE_FRACTION = 0.005  # the simulated kernel keeps this much of a node free
KSWAPD_LOW, KSWAPD_HIGH = 0.01, 0.02  # kswapd=on: demotes below LOW free until HIGH is free
ABSENT = -1  # node of a freed page
WASTE_WINDOW = 8  # a page moved back within this many intervals was moved for nothing
# Effective access time model (ns), a relative score: each simulated access stands for
# ACCESS_LINES cache-line misses served by the page's tier; each migrated page costs T_MOVE
# (copy 4 KiB, unmap, TLB shootdown, remap).
T_FAST, T_SLOW, ACCESS_LINES, T_MOVE = 80.0, 250.0, 16, 8000.0


class WorkloadError(ValueError):
    """An invalid workload spec; the message says which key and why."""


# Bounds of a workload (what the simulator, holding state per page, can run)
MAX_WORKLOAD = 4 << 40  # bytes of all processes together (state is per page: 2^30 pages)
MAX_MACHINE = 1 << 60  # bytes of a machine size (fast, slow, other)
MAX_INTERVALS = 100_000
MAX_SEED = (1 << 63) - 1
MAX_ACCESSES = 1000.0  # accesses per page per interval


# ---------------------------------------------------------------------------------------------
# Workload spec


@dataclass(frozen=True)
class ProcessSpec:
    size: int
    dist: str = "zipf:1.1"
    phase_every: int | None = None
    accesses: float = 1.0
    layout: str = "scatter"
    init: str = "first"
    busy: float = 0.0
    target: str | None = None
    churn: float = 0.0  # fraction of the pages freed each interval, faulted back in the next
    thp: float = 0.0  # fraction of the 512-page blocks that are huge pages


@dataclass(frozen=True)
class WorkloadSpec:
    processes: tuple[ProcessSpec, ...]
    fast: int
    slow: int | None = None
    other: int = 0
    intervals: int = 30
    seed: int = 1
    kswapd: bool = False  # the kernel demotes by itself when the fast node runs low
    fast_nodes: int = 1  # fast and slow are split evenly over this many nodes each
    slow_nodes: int = 1
    cache: int = 0  # page cache added per fast node per interval (bytes)
    numa_balancing: bool = False  # the kernel promotes accessed slow pages behind tierd

    @property
    def slow_size(self) -> int:
        return self.slow if self.slow is not None else sum(p.size for p in self.processes)


_PROC_KEYS = {"size", "dist", "phase", "accesses", "layout", "init", "busy", "target", "churn", "thp"}
_MACHINE_KEYS = {"fast", "slow", "other", "kswapd", "nodes", "cache", "numa_balancing"}


def parse_workload(text: str) -> WorkloadSpec:
    """A compact "key=value,..." spec, or the path of a YAML workload file."""
    if os.path.isfile(text) or text.endswith((".yaml", ".yml")):
        import yaml

        from tierd.policy import PolicyError, read_policy_text

        try:  # a regular file of at most 1 MiB (a FIFO, /dev/zero or a directory refused)
            doc = yaml.safe_load(read_policy_text(text, "a workload file")) or {}
        except PolicyError as e:
            raise WorkloadError(f"{text}: {e.message}") from None
        except (yaml.YAMLError, RecursionError) as e:
            raise WorkloadError(f"{text}: not valid YAML: {e}") from None
        return _from_mapping(doc, text)
    kv: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        k, sep, v = part.partition("=")
        if not sep:
            raise WorkloadError(f"{part!r}: expected key=value")
        kv[k.strip()] = v.strip()
    unknown = set(kv) - _PROC_KEYS - _MACHINE_KEYS - {"intervals", "seed"}
    if unknown:
        raise WorkloadError(f"unknown key(s) {', '.join(sorted(unknown))}")
    machine = {k: kv.pop(k) for k in list(kv) if k in _MACHINE_KEYS}
    top = {k: kv.pop(k) for k in list(kv) if k in ("intervals", "seed")}
    return _from_mapping({"machine": machine, "processes": [kv], **top}, "workload")


def _from_mapping(doc, where: str) -> WorkloadSpec:
    from tierd.units import UnitError, parse_size

    if not isinstance(doc, dict):
        raise WorkloadError(f"{where}: expected a mapping")
    unknown = set(doc) - {"machine", "processes", "intervals", "seed"}
    if unknown:
        raise WorkloadError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    machine = doc.get("machine") or {}
    if not isinstance(machine, dict):
        raise WorkloadError(f"{where}: machine: expected a mapping of {', '.join(sorted(_MACHINE_KEYS))}")
    if not isinstance(doc.get("processes") or [], list):
        raise WorkloadError(f"{where}: processes: expected a list")
    if set(machine) - _MACHINE_KEYS:
        raise WorkloadError(f"{where}: machine: unknown key(s) {', '.join(sorted(set(machine) - _MACHINE_KEYS))}")

    def size(v, key, default=None):
        if v is None:
            if default is None:
                raise WorkloadError(f"{where}: {key} is required")
            return default
        try:
            n = parse_size(v)
        except (UnitError, ValueError, TypeError) as e:
            raise WorkloadError(f"{where}: {key}: {e}") from None
        if n > MAX_MACHINE:
            raise WorkloadError(f"{where}: {key}: at most 1024PiB")
        return n

    procs = []
    for i, p in enumerate(doc.get("processes") or []):
        key = f"processes[{i}]"
        if not isinstance(p, dict) or set(p) - _PROC_KEYS:
            raise WorkloadError(f"{where}: {key}: expected a mapping of {', '.join(sorted(_PROC_KEYS))}")
        procs.append(_process(p, key, where, size))
    if not procs:
        raise WorkloadError(f"{where}: no process (give size=...)")
    if sum(p.size for p in procs) > MAX_WORKLOAD:
        raise WorkloadError(f"{where}: processes: at most 4TiB in all (the simulator keeps "
                            "state per page)")
    fast = size(machine.get("fast"), "fast")
    slow = machine.get("slow")
    spec = WorkloadSpec(
        processes=tuple(procs),
        fast=fast,
        slow=None if slow is None else size(slow, "slow"),
        other=size(machine.get("other", 0), "other"),
        kswapd=_onoff(machine.get("kswapd", "off"), "kswapd", where),
        cache=size(machine.get("cache", 0), "cache"),
        numa_balancing=_onoff(machine.get("numa_balancing", "off"), "numa_balancing", where),
        **_node_counts(machine.get("nodes", "1+1"), where),
        intervals=_int(doc.get("intervals", 30), "intervals", where),
        seed=_int(doc.get("seed", 1), "seed", where),
    )
    if spec.other >= spec.fast:
        raise WorkloadError(f"{where}: other ({spec.other}) must be smaller than fast ({spec.fast})")
    if spec.slow_size < 1:
        raise WorkloadError(f"{where}: slow must be > 0")
    return spec


def _node_counts(v, where) -> dict:
    f, plus, sl = str(v).partition("+")
    if not (plus and f.isdigit() and sl.isdigit() and 1 <= int(f) <= 8 and 1 <= int(sl) <= 8):
        raise WorkloadError(f"{where}: nodes: FAST+SLOW node counts such as 2+2, got {v!r}")
    return {"fast_nodes": int(f), "slow_nodes": int(sl)}


def _below_one(v, what: str) -> float:
    """A fraction 0 <= f < 1, as a number or a percentage."""
    from tierd.units import UnitError, parse_fraction

    try:
        f = parse_fraction(v) if isinstance(v, str) and v.endswith("%") else float(v)
        if not 0 <= f < 1:
            raise ValueError
    except (ValueError, TypeError, UnitError):
        raise WorkloadError(f"{what}: a fraction below 1") from None
    return f


def _onoff(v, key, where) -> bool:
    if v in (True, False):
        return bool(v)
    if str(v) in ("on", "off"):
        return str(v) == "on"
    raise WorkloadError(f"{where}: {key}: on or off, got {v!r}")


def _int(v, key, where) -> int:
    """intervals (1 .. MAX_INTERVALS) or seed (0 .. MAX_SEED): a whole number, not 2.5."""
    try:
        i = int(v, 10) if isinstance(v, str) else int(v) if not isinstance(v, (bool, float)) else None
    except (TypeError, ValueError, OverflowError):
        i = None
    if i is None and isinstance(v, float) and v.is_integer():
        i = int(v)
    if i is None:
        raise WorkloadError(f"{where}: {key}: expected a whole number, got {v!r}")
    return check_int(i, key, where)


def check_int(i: int, key: str, where: str) -> int:
    lo, hi = (0, MAX_SEED) if key == "seed" else (1, MAX_INTERVALS)
    if not lo <= i <= hi:
        raise WorkloadError(f"{where}: {key}: {i} is out of range ({lo}..{hi})")
    return i


def _process(p: dict, key: str, where: str, size) -> ProcessSpec:
    from tierd.units import UnitError

    s = size(p.get("size"), f"{key}.size")
    if s < PAGE_SIZE * PAGES_PER_WORD:
        raise WorkloadError(f"{where}: {key}.size: at least 256KiB")
    dist = str(p.get("dist", "zipf:1.1"))
    try:
        _make_dist(dist, 64)
    except (ValueError, UnitError) as e:
        raise WorkloadError(f"{where}: {key}.dist: {e}") from None
    phase = str(p.get("phase", "none"))
    every = None
    if phase != "none":
        kind, _, k = phase.partition(":")
        if kind != "every" or not k.isdigit() or int(k) < 1:
            raise WorkloadError(f"{where}: {key}.phase: expected none or every:K, got {phase!r}")
        every = int(k)
    acc = str(p.get("accesses", "1x")).rstrip("x")
    try:
        accesses = float(acc)
        if not 0 < accesses <= MAX_ACCESSES:
            raise ValueError
    except ValueError:
        raise WorkloadError(f"{where}: {key}.accesses: expected a positive number like 2x "
                            f"(at most {MAX_ACCESSES:g}x)") from None
    layout = str(p.get("layout", "scatter"))
    if layout not in ("scatter", "contig"):
        raise WorkloadError(f"{where}: {key}.layout: scatter or contig")
    init = str(p.get("init", "first"))
    if init not in ("first", "slow"):
        raise WorkloadError(f"{where}: {key}.init: first or slow")
    busy, churn = (_below_one(p.get(k, 0), f"{where}: {key}.{k}") for k in ("busy", "churn"))
    thp = p.get("thp", 0)
    thp = 1.0 if str(thp) in ("100%", "1", "1.0") else _below_one(thp, f"{where}: {key}.thp")
    if not isinstance(p.get("target"), (str, type(None))):
        raise WorkloadError(f"{where}: {key}.target: expected a target name")
    return ProcessSpec(s, dist, every, accesses, layout, init, busy, p.get("target"), churn, thp)


# ---------------------------------------------------------------------------------------------
# Distributions over ranks (rank 0 = heaviest page); weights sum to 1


class Distribution:
    """Non-increasing weights over ranks 0..n-1, with the tables needed to sample the tail
    and to sum prefixes without materializing n floats."""

    def __init__(self, n: int) -> None:
        self.n = n
        nb = -(-n // BLOCK)
        sums = np.empty(nb, dtype=np.float64)
        for lo in range(0, nb, CHUNK // BLOCK):
            hi = min(nb, lo + CHUNK // BLOCK)
            r = np.arange(lo * BLOCK, min(n, hi * BLOCK), dtype=np.int64)
            w = self._raw(r)
            pad = (hi - lo) * BLOCK - r.size
            if pad:
                w = np.concatenate((w, np.zeros(pad)))
            sums[lo:hi] = w.reshape(-1, BLOCK).sum(axis=1)
        self._norm = float(sums.sum())
        self.block_cum = np.concatenate(([0.0], np.cumsum(sums / self._norm)))

    def _raw(self, ranks: np.ndarray) -> np.ndarray:  # unnormalized
        raise NotImplementedError

    def weight(self, ranks: np.ndarray) -> np.ndarray:
        return self._raw(np.asarray(ranks, dtype=np.int64)) / self._norm

    def prefix(self, k: int) -> float:
        """Sum of the k heaviest weights."""
        k = max(0, min(int(k), self.n))
        b = k // BLOCK
        rest = self.weight(np.arange(b * BLOCK, k, dtype=np.int64)).sum() if k % BLOCK else 0.0
        return float(self.block_cum[b] + rest)

    def need(self, share: float) -> int:
        """Fewest pages (the heaviest) that get ``share`` of the accesses: the true miss-ratio
        curve, to check the engine's estimate (TargetStats.need) against."""
        lo, hi = 0, self.n
        while lo < hi:
            mid = (lo + hi) // 2
            if self.prefix(mid) >= share:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def count_ge(self, w: float) -> int:
        """Number of ranks with weight >= w (weights are non-increasing)."""
        lo, hi = 0, self.n  # invariant: ranks < lo have weight >= w; ranks >= hi below
        while lo < hi:
            mid = (lo + hi) // 2
            if self.weight(np.array([mid]))[0] >= w:
                lo = mid + 1
            else:
                hi = mid
        return lo


class Uniform(Distribution):
    def _raw(self, ranks):
        return np.ones(ranks.shape, dtype=np.float64)


class Zipf(Distribution):
    def __init__(self, n: int, s: float) -> None:
        self.s = s
        super().__init__(n)

    def _raw(self, ranks):
        return np.power(ranks.astype(np.float64) + 1.0, -self.s)


class HotSet(Distribution):
    def __init__(self, n: int, fraction: float, share: float) -> None:
        self.hot = max(1, min(n - 1, int(round(n * fraction)))) if n > 1 else 1
        self.share = share
        super().__init__(n)

    def _raw(self, ranks):
        cold = (1 - self.share) / max(1, self.n - self.hot)
        return np.where(ranks < self.hot, self.share / self.hot, cold)


def _make_dist(text: str, n: int) -> Distribution:
    from tierd.units import parse_fraction

    kind, _, arg = text.partition(":")
    if kind == "uniform" and not arg:
        return Uniform(n)
    if kind == "zipf":
        s = float(arg or "1.0")
        if not 0 < s <= 5:
            raise ValueError("zipf exponent must be in (0, 5]")
        return Zipf(n, s)
    if kind == "hotset":
        f, _, q = arg.partition(":")
        frac = parse_fraction(f) if f.endswith("%") else float(f)
        share = (parse_fraction(q) if q.endswith("%") else float(q)) if q else 0.9
        if not (0 < frac < 1 and 0 < share <= 1):
            raise ValueError("hotset:F[:Q] needs 0 < F < 1 and 0 < Q <= 1")
        return HotSet(n, frac, share)
    raise ValueError(f"unknown distribution {text!r} (uniform, zipf:S, hotset:F[:Q])")


def _mulmod(x: np.ndarray, a: int, n: int) -> np.ndarray:
    """(x * a) mod n for uint64 x < n < 2**48, without overflow (16-bit split of a)."""
    x = x.astype(np.uint64)
    nn = np.uint64(n)
    hi = (x * np.uint64(a >> 16)) % nn
    return ((hi << np.uint64(16)) + x * np.uint64(a & 0xFFFF)) % nn


# ---------------------------------------------------------------------------------------------
# The simulated machine


class SimProcess:
    """One simulated process: its mapping, where each page is, and this interval's accesses."""

    def __init__(self, pid: int, spec: ProcessSpec, base_vpn: int, rng: np.random.Generator,
                 nfast: int = 1) -> None:
        self.pid = pid
        self.nfast = nfast  # nodes 0 .. nfast-1 are fast
        self.spec = spec
        self.rng = rng
        self.npages = spec.size // PAGE_SIZE
        if self.npages >= 1 << 47:
            raise WorkloadError("size too large for the simulator (at most 512 PiB)")
        self.base_vpn = base_vpn
        self.words = -(-self.npages // PAGES_PER_WORD)
        self.dist = _make_dist(spec.dist, self.npages)
        self.rate = spec.accesses * self.npages  # accesses per interval
        self.node = np.full(self.npages, nfast, dtype=np.int8)  # the first slow node
        self.present = np.full(self.words, np.uint64(0xFFFF_FFFF_FFFF_FFFF))
        if self.npages % PAGES_PER_WORD:
            self.present[-1] = np.uint64((1 << (self.npages % PAGES_PER_WORD)) - 1)
        self.accessed = np.zeros(self.words, dtype=np.uint64)
        self._mark = np.zeros(self.words * PAGES_PER_WORD, dtype=bool)
        # interval of each page's last move + 1 (0: never moved), modulo 255: one byte a page
        self.moved_at = np.zeros(self.npages, dtype=np.uint8)
        self.phase = 0
        self.freed: tuple[int, int] | None = None  # pages freed last interval (churn)
        self._new_mapping()
        # ranks below `head` expect >= HEAD_LAMBDA accesses: drawn one by one
        self.head = self.dist.count_ge(HEAD_LAMBDA / self.rate)
        self.fast_weight = 0.0
        # huge pages: whole 512-page blocks, chosen at random (thp of them)
        nblocks = self.npages // HPAGE_PAGES
        self.huge = rng.random(nblocks) < spec.thp if spec.thp and nblocks else None

    # rank <-> page: page = (a * rank + b) mod n
    def _new_mapping(self) -> None:
        n = self.npages
        if self.spec.layout == "contig" or n < 3:
            a = 1
        else:
            # the golden ratio spreads the ranks evenly; after a phase change a random
            # multiplier, so the new hot set is not a shifted copy of the old one (a shift
            # keeps how much of it overlaps any fixed set of pages, e.g. the fast tier's)
            a = int(n * 0.6180339887 if self.phase == 0 else self.rng.integers(n // 4, 3 * n // 4)) | 1
            while math.gcd(a, n) != 1:
                a += 2
        self.a, self.b = a, int(self.rng.integers(0, n))
        self.a_inv = pow(a, -1, n) if n > 1 else 0

    def page_of(self, ranks: np.ndarray) -> np.ndarray:
        n = self.npages
        return ((_mulmod(ranks, self.a, n) + np.uint64(self.b)) % np.uint64(n)).astype(np.int64)

    def rank_of(self, pages: np.ndarray) -> np.ndarray:
        n = self.npages
        x = (np.asarray(pages, dtype=np.int64) - self.b) % n
        return _mulmod(x.astype(np.uint64), self.a_inv, n).astype(np.int64)

    def weight_of_pages(self, pages: np.ndarray) -> np.ndarray:
        return self.dist.weight(self.rank_of(pages))

    def recompute_fast_weight(self) -> None:
        total = 0.0
        for lo in range(0, self.npages, CHUNK):
            hi = min(self.npages, lo + CHUNK)
            nd = self.node[lo:hi]
            fast = np.flatnonzero((nd >= 0) & (nd < self.nfast)) + lo
            if fast.size:
                total += float(self.weight_of_pages(fast).sum())
        self.fast_weight = total

    def phase_change(self) -> None:
        self.phase += 1
        self._new_mapping()
        self.recompute_fast_weight()

    def generate(self) -> None:
        """This interval's accesses -> ``accessed`` bitmap (see the module docstring)."""
        rng, mark = self.rng, self._mark
        touched = []
        # head: one Bernoulli draw per rank
        for lo in range(0, self.head, CHUNK):
            hi = min(self.head, lo + CHUNK)
            r = np.arange(lo, hi, dtype=np.int64)
            p = -np.expm1(-self.rate * self.dist.weight(r))
            touched.append(r[rng.random(hi - lo, dtype=np.float32) < p])
        # tail: Poisson(total) accesses, ranks in proportion to weight (block table, then
        # rejection within the block: weights are non-increasing, so the block's first rank
        # is its heaviest)
        bc = self.dist.block_cum
        first_block = self.head // BLOCK
        tail_mass = bc[-1] - self.dist.prefix(self.head)
        k = int(rng.poisson(self.rate * tail_mass)) if tail_mass > 0 else 0
        while k > 0:
            m = min(k, CHUNK)
            u = rng.random(m) * (bc[-1] - bc[first_block]) + bc[first_block]
            blk = np.minimum(np.searchsorted(bc, u, side="right") - 1, bc.size - 2)
            start = blk * BLOCK
            length = np.minimum(BLOCK, self.npages - start)
            r = start + (rng.random(m) * length).astype(np.int64)
            top = self.dist.weight(np.maximum(start, self.head))
            keep = (r >= self.head) & (rng.random(m) * top < self.dist.weight(r))
            r = r[keep]
            touched.append(r)
            k -= r.size
        ranks = np.concatenate(touched) if touched else np.zeros(0, np.int64)
        pages = self.page_of(ranks)
        mark[pages] = True
        self.accessed = np.packbits(mark, bitorder="little").view(np.uint64).copy()
        mark[pages] = False
        if self.huge is not None:  # one Accessed bit per huge page: any access marks all 512
            blocks = self.accessed[: self.huge.size * HPAGE_WORDS].reshape(-1, HPAGE_WORDS)
            hit = self.huge & blocks.any(axis=1)
            blocks[hit] = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
        self.accessed &= self.present  # freed pages are not accessed

    def set_present(self, lo: int, hi: int, on: bool) -> None:
        """Pages lo..hi (64-aligned lo) present or not (freed: node ABSENT)."""
        w0, w1 = lo // PAGES_PER_WORD, -(-hi // PAGES_PER_WORD)
        self.present[w0:w1] = np.uint64(0xFFFF_FFFF_FFFF_FFFF) if on else np.uint64(0)
        if on and self.npages % PAGES_PER_WORD and w1 == self.words:
            self.present[-1] = np.uint64((1 << (self.npages % PAGES_PER_WORD)) - 1)

    def place_initially(self, runs) -> None:
        """First touch: ``runs`` is a list of (node, pages), in address order."""
        lo = 0
        for node, n in runs:
            self.node[lo: lo + n] = node
            lo += n
        self.recompute_fast_weight()


class SimMachine:
    """Fast nodes 0 .. F-1 (with CPUs), slow nodes F .. F+S-1 (memory only), and the
    processes on them.  FAST and SLOW name the first node of each tier."""

    def __init__(self, spec: WorkloadSpec, seed: int | None = None) -> None:
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed if seed is None else seed)
        nf, ns = spec.fast_nodes, spec.slow_nodes
        self.fast_ids = tuple(range(nf))
        self.slow_ids = tuple(range(nf, nf + ns))
        self.capacity = {n: spec.fast // PAGE_SIZE // nf for n in self.fast_ids}
        self.capacity.update({n: spec.slow_size // PAGE_SIZE // ns for n in self.slow_ids})
        self.other = spec.other // PAGE_SIZE
        self.used = {n: 0 for n in self.capacity}
        self.used[FAST] = self.other
        self.cache = {n: 0 for n in self.capacity}  # clean page cache per node (pages)
        self.procs: dict[int, SimProcess] = {}
        vpn = BASE_VPN
        for i, ps in enumerate(spec.processes):
            pid = 1000 + i
            proc = SimProcess(pid, ps, vpn, np.random.default_rng(self.rng.integers(1 << 62)), nf)
            self.procs[pid] = proc
            vpn += (proc.words * PAGES_PER_WORD + (1 << 18))  # a gap between processes' mappings
        # initial placement: first touch fills the fast nodes up to the kernel's reserve, in
        # order, then the slow ones
        for proc in self.procs.values():
            proc.place_initially(self.first_touch(proc.npages, proc.spec.init == "slow"))
        self.interval = -1
        self.kswapd_demoted = 0
        self.balanced = 0  # pages NUMA balancing promoted this interval
        self.begin_moves()

    def begin_moves(self) -> None:
        """Start this interval's move accounting (see ``move_stats``)."""
        self.dragged = 0  # pages moved only because they share a huge page with a moved one
        self._back = 0  # pages moved back within WASTE_WINDOW intervals of their last move
        self._rates: dict[int, list[np.ndarray]] = {FAST: [], SLOW: []}  # true rates of moved pages

    def move_stats(self) -> tuple[int, int]:
        """(moved back within the window, moves that did not improve the fast tier) this
        interval.  The second: promoted and demoted pages matched heaviest with heaviest; a
        pair whose promoted page is not more accessed than its demoted one is two wasted
        moves."""
        up = np.sort(np.concatenate(self._rates[FAST] or [np.zeros(0)]))[::-1]
        down = np.sort(np.concatenate(self._rates[SLOW] or [np.zeros(0)]))[::-1]
        k = min(up.size, down.size)
        return self._back, 2 * int((up[:k] <= down[:k]).sum())

    def free(self, node: int) -> int:
        return self.capacity[node] - self.used[node] - self.cache[node]

    def reclaim(self, node: int, pages: int) -> int:
        """Page cache given back on ``node`` so that ``pages`` more fit above the reserve
        (an allocation's direct reclaim); returns the pages that now fit."""
        short = pages - max(0, self.free(node) - self.reserve(node))
        if short > 0:
            self.cache[node] -= min(short, self.cache[node])
        return max(0, min(pages, self.free(node) - self.reserve(node)))

    def fill_cache(self) -> None:
        """A reader of files adds up to ``cache`` of page cache to each fast node, into the
        free memory above the kernel's reserve (it reclaims older cache to go on: the node
        stays full of cache)."""
        add = self.spec.cache // PAGE_SIZE
        for n in self.fast_ids:
            self.cache[n] += max(0, min(add, self.free(n) - self.reserve(n)))
    def reserve(self, node: int) -> int:
        return int(self.capacity[node] * MIN_FREE_FRACTION)

    def first_touch(self, n: int, slow_only: bool = False) -> list[tuple[int, int]]:
        """Allocate n pages as Linux's local allocation would: fast nodes while they have
        more than the reserve free, then slow ones (the last takes any excess).  Returns
        (node, pages) runs and charges them to ``used``."""
        runs = []
        nodes = (() if slow_only else self.fast_ids) + self.slow_ids
        for i, node in enumerate(nodes):
            k = n if i == len(nodes) - 1 else self.reclaim(node, n)
            if k:
                runs.append((node, k))
                self.used[node] += k
                n -= k
        return runs

    def fast_used(self) -> float:
        return sum(self.used[n] for n in self.fast_ids) / sum(self.capacity[n] for n in self.fast_ids)

    def is_fast(self, nodes: np.ndarray) -> np.ndarray:
        return (nodes >= 0) & (nodes < len(self.fast_ids))

    def churn(self, proc: SimProcess) -> None:
        """Fault back in the pages freed last interval (first touch: the fast node while it
        has more than the kernel's reserve free, like Linux's local allocation), then free a
        new range of ``churn`` of the pages."""
        if proc.freed is not None:
            lo, hi = proc.freed
            proc.set_present(lo, hi, True)
            at = lo
            for node, k in self.first_touch(hi - lo):
                proc.node[at: at + k] = node
                if node in self.fast_ids:
                    proc.fast_weight += float(proc.weight_of_pages(np.arange(at, at + k)).sum())
                at += k
            proc.freed = None
        n = int(proc.npages * proc.spec.churn) // PAGES_PER_WORD * PAGES_PER_WORD
        if n <= 0:
            return
        lo = int(proc.rng.integers(0, (proc.npages - n) // PAGES_PER_WORD + 1)) * PAGES_PER_WORD
        hi = lo + n
        sl = proc.node[lo:hi]
        on_fast = np.flatnonzero(self.is_fast(sl)) + lo
        if on_fast.size:
            proc.fast_weight -= float(proc.weight_of_pages(on_fast).sum())
        for node, k in enumerate(np.bincount(sl[sl >= 0], minlength=len(self.capacity)).tolist()):
            self.used[node] -= k
        proc.node[lo:hi] = ABSENT
        proc.set_present(lo, hi, False)
        proc.freed = (lo, hi)

    def kswapd(self) -> int:
        """The kernel's own demotion (memory tiering's reclaim path): below KSWAPD_LOW of the
        fast node free, demote pages not accessed in the last interval until KSWAPD_HIGH is
        free.  tierd does not see these moves; it must cope with stale node knowledge.
        Returns the pages demoted."""
        done = 0
        for fast in self.fast_ids:
            cap = self.capacity[fast]
            if self.free(fast) >= KSWAPD_LOW * cap:
                continue
            need = int(KSWAPD_HIGH * cap) - self.free(fast)
            dropped = min(need, self.cache[fast])  # page cache goes first
            self.cache[fast] -= dropped
            need -= dropped
            slow = max(self.slow_ids, key=self.free)
            for proc in self.procs.values():
                if need <= 0:
                    break
                idle = np.flatnonzero(proc.node == fast)
                acc = ((proc.accessed[idle >> 6] >> (idle & 63).astype(np.uint64)) & np.uint64(1)).astype(bool)
                idle = idle[~acc][:need]
                if idle.size == 0:
                    continue
                proc.fast_weight -= float(proc.weight_of_pages(idle).sum())
                proc.node[idle] = slow
                self.used[fast] -= idle.size
                self.used[slow] += idle.size
                need -= idle.size
                done += idle.size
        return done

    def begin_interval(self) -> bool:
        """Advance to the next interval: phase changes, then this interval's accesses.
        Returns True if some process's hot set moved."""
        self.interval += 1
        changed = False
        for proc in self.procs.values():
            every = proc.spec.phase_every
            if every and self.interval > 0 and self.interval % every == 0:
                proc.phase_change()
                changed = True
            if proc.spec.churn and self.interval > 0:
                self.churn(proc)
            proc.generate()
        if self.spec.cache:
            self.fill_cache()
        self.kswapd_demoted = self.kswapd() if self.spec.kswapd else 0
        self.balanced = self.numa_balance() if self.spec.numa_balancing else 0
        return changed

    def numa_balance(self) -> int:
        """The kernel's NUMA-balancing promotion (tiering mode): pages accessed this
        interval on slow nodes go to the fast node with the most free memory, up to 1% of
        it per interval while it keeps 2% free.  tierd does not see these moves."""
        done = 0
        for proc in self.procs.values():
            fast = max(self.fast_ids, key=self.free)
            room = min(self.capacity[fast] // 100, self.free(fast) - int(KSWAPD_HIGH * self.capacity[fast]))
            if room <= 0:
                break
            acc = np.flatnonzero(np.unpackbits(proc.accessed.view(np.uint8), bitorder="little")[: proc.npages])
            cand = acc[~self.is_fast(proc.node[acc].astype(np.int64)) & (proc.node[acc] >= 0)][:room]
            if cand.size == 0:
                continue
            for node, k in enumerate(np.bincount(proc.node[cand], minlength=len(self.capacity)).tolist()):
                self.used[node] -= k
            proc.fast_weight += float(proc.weight_of_pages(cand).sum())
            proc.node[cand] = fast
            self.used[fast] += cand.size
            done += cand.size
        return done

    def hit_fraction(self) -> float:
        total = sum(p.rate for p in self.procs.values())
        return sum(p.rate * p.fast_weight for p in self.procs.values()) / total

    def oracle(self, capacity_pages: int) -> float:
        """Best possible hit fraction with ``capacity_pages`` of the processes on fast."""
        procs = list(self.procs.values())
        total = sum(p.rate for p in procs)
        if sum(p.npages for p in procs) <= capacity_pages:
            return 1.0
        if len(procs) == 1:
            p = procs[0]
            return p.dist.prefix(capacity_pages)
        # one threshold on the absolute access rate: bisect on it (log scale)
        lo, hi = 1e-300, max(p.rate * p.dist.weight(np.array([0]))[0] for p in procs)
        for _ in range(200):
            mid = math.sqrt(lo * hi)
            n = sum(p.dist.count_ge(mid / p.rate) for p in procs)
            if n > capacity_pages:
                lo = mid
            else:
                hi = mid
        return sum(p.rate * p.dist.prefix(p.dist.count_ge(hi / p.rate)) for p in procs) / total

    # -- the kernel's side -------------------------------------------------------------------
    def move(self, pid: int, addrs: np.ndarray, nodes: np.ndarray | None) -> np.ndarray:
        proc = self.procs.get(pid)
        if proc is None:
            from tierd.linux.errors import ProcessGone

            raise ProcessGone(pid)
        vpn = (np.asarray(addrs, dtype=np.uint64) >> np.uint64(PAGE_SHIFT)).astype(np.int64)
        page = vpn - proc.base_vpn
        inside = (page >= 0) & (page < proc.npages)
        status = np.full(page.shape, -errno.EFAULT, dtype=np.int32)
        pg = page[inside]
        cur = proc.node[pg].astype(np.int64)
        if nodes is None:
            status[inside] = np.where(cur == ABSENT, -errno.ENOENT, cur)
            return status
        dest = np.asarray(nodes, dtype=np.int64)[inside]
        if np.any((dest < 0) | (dest >= len(self.capacity))):
            from tierd.linux.errors import MovePagesError

            raise MovePagesError(errno.ENODEV, "no such node")
        st = np.where(cur == ABSENT, -errno.ENOENT, cur)
        want = (dest != cur) & (cur != ABSENT)
        lead = follow = None
        dragged = 0  # pages moved as parts of whole huge pages
        if proc.huge is not None:
            # a huge page moves once, as a whole, to the destination of its first request;
            # its other requested pages share that outcome
            blk = pg // HPAGE_PAGES
            hb = (blk < proc.huge.size) & proc.huge[np.minimum(blk, proc.huge.size - 1)]
            hidx = np.flatnonzero(hb)
            _, first, inv = np.unique(blk[hidx], return_index=True, return_inverse=True)
            lead, follow = hidx[first], hidx
            follower = np.zeros(pg.size, bool)
            follower[hidx] = True
            follower[lead] = False
            want &= ~follower
        if proc.spec.busy:
            busy = want & (proc.rng.random(pg.size) < proc.spec.busy)
            st[busy] = -errno.EBUSY
            want &= ~busy
        enomem = False
        for d in self.capacity:
            idx = np.flatnonzero(want & (dest == d))
            size = np.ones(idx.size, np.int64)
            if lead is not None:
                is_lead = np.isin(idx, lead)
                size[is_lead] = HPAGE_PAGES
            room = self.reclaim(d, int(size.sum()))  # page cache there gives way
            fits = np.cumsum(size) <= room
            ok, full = idx[fits], idx[~fits]
            if full.size:
                # the kernel's migrate_pages fails with ENOMEM for the whole call: the pages
                # not moved are where they were (what the status query reports)
                enomem = True
                st[full] = cur[full]
            if ok.size:
                moved = pg[ok]
                if lead is not None and is_lead[fits].any():  # whole huge pages
                    heads = moved[is_lead[fits]] // HPAGE_PAGES * HPAGE_PAGES
                    whole = (heads[:, None] + np.arange(HPAGE_PAGES)).ravel()
                    dragged += whole.size
                    moved = np.concatenate((moved[~is_lead[fits]], whole))
                src = proc.node[moved].astype(np.int64)
                cross = self.is_fast(src) != (d in self.fast_ids)  # changes tier
                moved_t = moved[cross]
                wp = proc.weight_of_pages(moved_t)
                w = float(wp.sum())
                proc.fast_weight += w if d in self.fast_ids else -w
                self._rates[FAST if d in self.fast_ids else SLOW].append(wp * proc.rate)
                now = self.interval % 255 + 1
                last = proc.moved_at[moved].astype(np.int64)
                age = (now - last) % 255
                self._back += int(((last > 0) & (age < WASTE_WINDOW)).sum())
                proc.moved_at[moved] = now
                proc.node[moved] = d
                st[ok] = d
                self.used[d] += moved.size
                for node, k in enumerate(np.bincount(src[src >= 0], minlength=len(self.capacity)).tolist()):
                    self.used[node] -= k
        if lead is not None and follow.size:  # the rest of each huge page's requests
            st[follow] = st[lead][inv]
            ok = st[follow] >= 0
            st[follow[ok]] = proc.node[pg[follow[ok]]]
            # what the caller did not ask for: huge pages' pages beyond the requested ones
            asked = np.unique(pg[follow[st[follow] == dest[follow]]])
            self.dragged += max(0, dragged - asked.size)
        status[inside] = st
        if enomem:
            from tierd.linux.errors import MovePagesError

            e = MovePagesError(errno.ENOMEM, "the destination node is full")
            e.status, e.done = status, status.size
            raise e
        return status

    def topology(self):
        from tierd.linux.sysfs import Node, Topology

        nf, ns = len(self.fast_ids), len(self.slow_ids)

        def dist(i, j):
            if i == j:
                return 10
            if i < nf and j < nf:
                return 21  # the other socket
            if i >= nf and j >= nf:
                return 30
            f, s = (i, j) if i < nf else (j, i)
            return 20 if (s - nf) % nf == f % ns or ns == 1 else 30  # each socket's near slow node

        ids = self.fast_ids + self.slow_ids
        return Topology(tuple(
            Node(n, (n,) if n < nf else (), self.capacity[n] * PAGE_SIZE, self.free(n) * PAGE_SIZE,
                 tuple(dist(n, m) for m in ids), None, self.cache[n] * PAGE_SIZE)
            for n in ids))


class SimReader:
    """AccessReader over the simulated processes' current interval."""

    name = "simulated"

    def __init__(self, machine: SimMachine) -> None:
        self.machine = machine

    def sample(self, pid: int, word_start: int, nwords: int) -> tuple[np.ndarray, np.ndarray]:
        proc = self.machine.procs.get(pid)
        if proc is None:
            from tierd.linux.errors import ProcessGone

            raise ProcessGone(pid)
        present = np.zeros(nwords, dtype=np.uint64)
        accessed = np.zeros(nwords, dtype=np.uint64)
        lo = word_start - proc.base_vpn // PAGES_PER_WORD
        a, b = max(lo, 0), min(lo + nwords, proc.words)
        if a < b:
            present[a - lo: b - lo] = proc.present[a:b]
            accessed[a - lo: b - lo] = proc.accessed[a:b]
            proc.accessed[a:b] = 0  # reading resets: "accessed since the previous sample"
        return present, accessed

    def close(self, pid: int) -> None:
        pass


class SimProcFS:
    def __init__(self, machine: SimMachine) -> None:
        self.machine = machine

    def _proc(self, pid):
        proc = self.machine.procs.get(int(pid))
        if proc is None:
            from tierd.linux.errors import ProcessGone

            raise ProcessGone(int(pid))
        return proc

    def maps(self, pid):
        from tierd.linux.procfs import Vma

        proc = self._proc(pid)
        start = proc.base_vpn << PAGE_SHIFT
        return (Vma(start, start + proc.npages * PAGE_SIZE, "rw-p", 0, "00:00", 0, "[anon:sim]"),)

    def comm(self, pid):
        self._proc(pid)
        return "sim"

    def status(self, pid):
        proc = self._proc(pid)
        return {"VmRSS": int((proc.node >= 0).sum()) * PAGE_SIZE}

    def cgroup(self, pid):
        self._proc(pid)
        return "/sim.slice"


@dataclass(frozen=True)
class SimFeatures:
    readers: tuple[str, ...] = ("simulated",)
    cap_sys_nice: bool = True  # no shared memory is simulated: nothing needs it


class SimSplitter:
    """The THP splitter facade (tierd.linux.thp.ThpSplitter) over the simulated huge
    pages, so huge_pages.split runs through the engine's own path (tierd/engine/huge.py):
    ``is_thp`` reads the blocks' huge flags, ``split`` clears them (the 512 pages are then
    accessed and moved one by one)."""

    last_method = "simulated"

    def __init__(self, machine: SimMachine) -> None:
        self.machine = machine
        self.splits = 0

    def feature(self):
        from tierd.linux.features import Feature

        return Feature("thp_split", True, "simulated", "simulated huge pages")

    def _blocks(self, pid: int, block_vpns):
        proc = self.machine.procs.get(pid)
        if proc is None:
            from tierd.linux.errors import ProcessGone

            raise ProcessGone(pid)
        blk = (np.asarray(block_vpns, dtype=np.int64) - proc.base_vpn) // HPAGE_PAGES
        if proc.huge is None:
            return proc, blk, np.zeros(blk.size, dtype=bool)
        ok = (blk >= 0) & (blk < proc.huge.size)
        return proc, blk, ok

    def is_thp(self, pid: int, block_vpns) -> np.ndarray:
        proc, blk, ok = self._blocks(pid, block_vpns)
        out = np.zeros(blk.size, dtype=bool)
        out[ok] = proc.huge[blk[ok]]
        return out

    def split(self, pid: int, block_vpns) -> int:
        proc, blk, ok = self._blocks(pid, block_vpns)
        if ok.any():
            self.splits += int(proc.huge[blk[ok]].sum())
            proc.huge[blk[ok]] = False
        return 1


class SimKernel:
    """The Kernel facade (docs/design.md) over a SimMachine."""

    def __init__(self, machine: SimMachine) -> None:
        self.machine = machine
        self.procfs = SimProcFS(machine)
        self.move_calls = 0

    def features(self) -> SimFeatures:
        return SimFeatures()

    def topology(self):
        return self.machine.topology()

    def reader(self, name: str = "auto") -> SimReader:
        return SimReader(self.machine)

    def thp(self) -> SimSplitter:
        return SimSplitter(self.machine)

    def move_pages(self, pid, addrs, nodes=None, flags=0, batch=4096) -> np.ndarray:
        self.move_calls += 1
        return self.machine.move(pid, addrs, nodes)


# ---------------------------------------------------------------------------------------------
# Running it


@dataclass(frozen=True)
class Row:
    interval: int
    hit: float
    oracle: float
    promoted: int
    demoted: int
    failed: int
    queried: int
    engine_ms: float
    phase_change: bool
    fast_used: float  # fraction of the fast node in use
    unknown: int = 0  # present pages whose node the engine does not know yet
    moved_back: int = 0  # pages moved back within WASTE_WINDOW intervals of their last move
    unimproving: int = 0  # moves in pairs whose promoted page was not the more accessed
    eat_ns: float = 0.0  # effective access time per access, migrations included (T_* model)
    dragged: int = 0  # pages moved along with requested ones, as parts of huge pages
    need: tuple | None = None  # the engine's TargetStats.need of the first target (pages)

    @property
    def moves(self) -> int:
        return self.promoted + self.demoted

    @property
    def wasted(self) -> int:
        """Moves that bought nothing (moved back, or not more accessed), at most all moves."""
        return min(self.moves, self.moved_back + self.unimproving)

    @property
    def ratio(self) -> float:
        return self.hit / self.oracle if self.oracle > 0 else 1.0


@dataclass
class Summary:
    steady_ratio: float | None  # mean hit/oracle over the steady-state intervals
    steady_intervals: int
    recoveries: list[int | None] = field(default_factory=list)  # per phase change
    engine_ms_mean: float = 0.0
    engine_ns_per_page: float = 0.0


def fast_capacity_pages(spec: WorkloadSpec, policy) -> int:
    """Pages of the workload the policy lets onto the fast node: its size minus the
    keep_free floor and other users (the same budget the engine computes)."""
    per_node = spec.fast // spec.fast_nodes
    floor = spec.fast_nodes * policy.keep_free.resolve(per_node)  # keep_free is per fast node
    return max(0, (spec.fast - floor - spec.other) // PAGE_SIZE)


def simulate(policy, spec: WorkloadSpec, intervals: int | None = None, on_row=None,
             chunk_words: int | None = None, on_end=None, clock=None,
             still: bool = False) -> tuple[list[Row], SimMachine]:
    """Run the engine on the simulated machine; returns the per-interval rows.
    ``on_end(engine, machine)`` is called after the last interval, before the engine
    closes (to inspect its state).  ``clock``: the engine's (default time.monotonic;
    time.process_time measures the engine's own CPU time, steadier on a loaded host).
    ``still``: the baseline "not moving" at the same fast capacity: the engine keeps the
    fast node at keep_free (watermark demotions) but never promotes (no promotion budget)."""
    machine = SimMachine(spec)
    kernel = SimKernel(machine)
    names = [t.name for t in policy.targets]
    if not names:
        from tierd.policy import TargetSpec

        policy = replace(policy, targets=(TargetSpec(name="sim"),))
        names = ["sim"]
    refs = []
    for proc in machine.procs.values():
        target = proc.spec.target or names[0]
        if target not in names:
            raise WorkloadError(f"target {target!r} is not in the policy ({', '.join(names)})")
        refs.append(ProcessRef(proc.pid, 0.0, target, "sim"))
    kw = {} if chunk_words is None else {"chunk_words": chunk_words}
    if clock is not None:
        kw["clock"] = clock
    engine = Engine(kernel, policy, resolver=StaticResolver(refs), **kw)
    if still:
        engine.gain.promotion_budget = lambda budget: 0
    oracle = machine.oracle(fast_capacity_pages(spec, policy))
    rows = []
    for _ in range(intervals or spec.intervals):
        changed = machine.begin_interval()
        machine.begin_moves()
        hit = machine.hit_fraction()
        stats = engine.step()
        back, unimproving = machine.move_stats()
        accesses = sum(p.rate for p in machine.procs.values())
        moves = stats.promoted + stats.demoted
        row = Row(
            interval=machine.interval, hit=hit, oracle=oracle, promoted=stats.promoted,
            demoted=stats.demoted, failed=stats.moves.failed, queried=stats.queries.queried,
            engine_ms=stats.engine_seconds * 1e3, phase_change=changed,
            fast_used=machine.fast_used(),
            unknown=int(stats.nodes[-1].sum()) if -1 in stats.nodes else 0,
            moved_back=back, unimproving=unimproving, dragged=machine.dragged,
            need=next((t.need for t in stats.targets.values() if getattr(t, "need", None) is not None), None),
            eat_ns=ACCESS_LINES * (hit * T_FAST + (1 - hit) * T_SLOW)
            + (moves + machine.dragged) * T_MOVE / accesses,
        )
        rows.append(row)
        if on_row is not None:
            on_row(row)
    if on_end is not None:
        on_end(engine, machine)
    engine.close()
    return rows, machine


def summarize(rows: list[Row], threshold: float = 0.95, tail: int = 5, pages: int = 0) -> Summary:
    """Steady state = the last ``tail`` intervals of each phase (before the next change, or
    the end), never the interval of a change itself; recovery = intervals from a phase change
    until hit/oracle is back at ``threshold`` or above (the change's own interval counts: it
    was served by the old placement)."""
    changes = [i for i, r in enumerate(rows) if r.phase_change]
    starts = [0] + [c + 1 for c in changes]
    ends = changes + [len(rows)]
    steady = []
    for s0, e in zip(starts, ends):
        steady.extend(r.ratio for r in rows[max(s0, e - tail): e])
    rec: list[int | None] = []
    for c, e in zip(changes, ends[1:]):
        k = next((j - c for j in range(c, e) if rows[j].ratio >= threshold), None)
        rec.append(k)
    eng = [r.engine_ms for r in rows[1:]] or [0.0]
    mean_ms = float(np.mean(eng))
    return Summary(
        steady_ratio=float(np.mean(steady)) if steady else None,
        steady_intervals=len(steady),
        recoveries=rec,
        engine_ms_mean=mean_ms,
        engine_ns_per_page=mean_ms * 1e6 / pages if pages else 0.0,
    )


# ---------------------------------------------------------------------------------------------
# tierd simulate


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run the tiering engine on a simulated two-node machine with a synthetic workload and "
        "print, per interval, the fraction of accesses served by the fast tier next to the "
        "best possible placement (oracle).  No root, no NUMA hardware needed."
    )
    parser.add_argument("--config", default="etc/tierd.yaml", metavar="FILE",
                        help="policy file (default etc/tierd.yaml)")
    parser.add_argument("--workload", required=True, metavar="SPEC",
                        help='e.g. "size=1TiB,fast=256GiB,dist=zipf:1.1,phase=every:20", '
                             '"size=64GiB,fast=16GiB,dist=hotset:10%%", or a YAML file')
    parser.add_argument("--intervals", type=int, default=None, metavar="N",
                        help="intervals to simulate (default: the workload's, 30)")
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")


def main(args: argparse.Namespace) -> int:
    """``tierd simulate``.  Returns 0, or 2 for a bad policy or workload."""
    from tierd.policy import PolicyError, load_policy

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        policy = load_policy(args.config)
    except PolicyError as e:
        print(f"tierd simulate: {e}", file=sys.stderr)
        return 2
    try:
        spec = parse_workload(args.workload)
        if args.seed is not None:
            spec = replace(spec, seed=check_int(args.seed, "seed", "--seed"))
        if args.intervals is not None:
            check_int(args.intervals, "intervals", "--intervals")
    except WorkloadError as e:
        print(f"tierd simulate: workload: {e}", file=sys.stderr)
        return 2
    from tierd.units import format_size

    pages = sum(p.size for p in spec.processes) // PAGE_SIZE
    cap = fast_capacity_pages(spec, policy)
    print(f"simulating {len(spec.processes)} process(es), {format_size(pages * PAGE_SIZE)} "
          f"({pages} pages); fast node {format_size(spec.fast)}, usable by the workload "
          f"{format_size(cap * PAGE_SIZE)}; policy {policy.source}: window {policy.window}, "
          f"rate {format_size(policy.rate)}/s x {policy.interval:g}s")
    if not args.quiet:
        print(f"{'interval':>8} {'hit':>6} {'oracle':>6} {'ratio':>6} {'promoted':>9} "
              f"{'demoted':>9} {'failed':>7} {'queried':>9} {'fast%':>6} {'engine_ms':>9} "
              f"{'wasted':>8} {'eat_ns':>7} {'unknown':>9} {'dragged':>8}")

    def show(r: Row) -> None:
        if not args.quiet:
            mark = "  <- hot set moved" if r.phase_change else ""
            print(f"{r.interval:>8} {r.hit:6.3f} {r.oracle:6.3f} {r.ratio:6.3f} {r.promoted:>9} "
                  f"{r.demoted:>9} {r.failed:>7} {r.queried:>9} {100 * r.fast_used:6.1f} "
                  f"{r.engine_ms:9.1f} {r.wasted:>8} {r.eat_ns:7.0f} {r.unknown:>9} {r.dragged:>8}{mark}", flush=True)

    t0 = time.monotonic()
    try:
        rows, _ = simulate(policy, spec, args.intervals, on_row=show)
    except WorkloadError as e:
        print(f"tierd simulate: workload: {e}", file=sys.stderr)
        return 2
    s = summarize(rows, pages=pages)
    rec = ", ".join("-" if r is None else str(r) for r in s.recoveries) or "no phase change"
    print(f"steady state: hit/oracle {s.steady_ratio:.3f} (mean of {s.steady_intervals} "
          f"intervals); recovery after phase change (intervals to >= 0.95 of oracle): {rec}; "
          f"engine {s.engine_ms_mean:.1f} ms/interval = {s.engine_ns_per_page:.3f} ns/page; "
          f"wall {time.monotonic() - t0:.1f}s")
    return 0
