"""Placement policy: which pages to move where this interval.  Pure functions of the
per-process hotness histograms, the topology and the policy; no kernel, no page arrays.

The model (MEMTIS-style, Lee et al., SOSP 2023): the fast tier can hold ``budget`` pages of
the targets (what they hold now plus the free room above the keep_free floor).  The hot
threshold is the lowest hotness level such that every page at or above it fits in that
budget, chosen from the histogram rather than fixed, so it rises when the workload's hot set
grows and falls when it shrinks.  One threshold is shared by all targets (global hotness),
except that a target's guaranteed share (fast_share) lowers its own threshold until its pages
at or above it fill the share, and a cap (fast_cap) raises it until they fit under the cap.

Moves, in priority order, all within one migration budget (rate * interval, in pages):

1. watermark: a fast node whose MemFree is below demote_below gets its coldest pages demoted
   until MemFree is back at keep_free;
2. cap: a target holding more of the fast tier than its fast_cap gets its coldest demoted;
3. promotion, hottest level first: pages at or above their target's threshold that sit on a
   slow node go to the fast node with the most room.  Without room, a fast page is demoted to
   make it, coldest first, but only one that is below its own target's threshold *and* colder
   than the promoted page by more than ``hysteresis`` levels.  So the cold threshold is
   hot - hysteresis (pages below it give way to any hot page), and pages in between give way
   only to clearly hotter ones: two pages near the boundary cannot swap back and forth.
   And only a page accessed in at least two samples of the window may displace another
   (its hotness exceeds the largest weight, the most one access can give): one recent
   access says little, and without this filter the pages of a big cold working set that
   happen to be touched once take turns on the fast tier, spending the whole migration
   budget for nothing (the "two references" rule of 2Q and of TPP's active-list check);
4. fill: free room still left after that goes to the hottest pages below their threshold
   (at least min_hot), without displacing anything.  A threshold cannot split a level, so
   without this step a level that only partly fits would leave the room idle.

Pages already where they belong are never in the plan; pages whose node is unknown are
queried first (``plan_queries``, hottest first) and placed once known.  Page counts are
split across processes and nodes in a fixed order (target order, then process), so a plan is
deterministic.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tierd.engine.hotness import LEVELS, weights

PAGE_SIZE = 4096
NO_THRESHOLD = LEVELS  # "nothing is hot": no page has hotness 16
UNKNOWN = -1  # node id of pages whose node is not known


@dataclass(frozen=True)
class UnitCounts:
    """One process as placement sees it.

    ``hist[c, v]``: pages of class c at hotness v; class i is node ``node_ids[i]``, the last
    class is "node not known"."""

    key: Hashable
    target: str
    hist: np.ndarray


@dataclass(frozen=True)
class Request:
    """Move (or, with dest == -1, query) ``count`` pages of ``unit`` that are on node
    ``node`` (-1: unknown) at hotness ``level``."""

    unit: Hashable
    node: int
    level: int
    count: int
    dest: int
    reason: str  # "query" | "watermark" | "cap" | "promote" | "demote"


@dataclass(frozen=True)
class NodeRoom:
    """A fast node's free memory against the policy's watermarks, in pages."""

    node: int
    total: int
    free: int
    floor: int  # keep_free
    low: int  # demote_below

    @property
    def room(self) -> int:
        """Pages that may still be promoted onto the node."""
        return max(0, self.free - self.floor)

    @property
    def deficit(self) -> int:
        """Pages to demote now: the node is below its low watermark."""
        return self.floor - self.free if self.free < self.low else 0


@dataclass(frozen=True)
class Plan:
    requests: tuple[Request, ...]
    hot: dict[str, int]  # target -> hot threshold (NO_THRESHOLD: nothing is hot)
    cold: dict[str, int]  # target -> cold threshold
    budget: int  # pages of the targets the fast tier can hold
    fast_pages: int  # pages of the targets known to be on fast nodes
    rooms: tuple[NodeRoom, ...] = ()
    move_budget: int = 0

    def count(self, *reasons: str) -> int:
        return sum(r.count for r in self.requests if r.reason in reasons)


@dataclass
class _Ctx:
    """Mutable bookkeeping while one plan is built (local to ``plan``)."""

    units: Sequence[UnitCounts]
    cls: dict[int, int]  # node id -> class index
    budget_left: int
    claimed: dict = field(default_factory=dict)  # (unit idx, class, level) -> pages taken
    out: list = field(default_factory=list)

    def avail(self, u: int, node: int, level: int) -> int:
        c = self.cls[node]
        return int(self.units[u].hist[c, level]) - self.claimed.get((u, c, level), 0)

    def take(self, u: int, node: int, level: int, n: int, dest: int, reason: str) -> None:
        c = self.cls[node]
        self.claimed[(u, c, level)] = self.claimed.get((u, c, level), 0) + n
        self.out.append(Request(self.units[u].key, node, level, n, dest, reason))


# ---------------------------------------------------------------------------------------------


def node_rooms(topology, fast: Sequence[int], keep_free, demote_below) -> tuple[NodeRoom, ...]:
    """Each fast node's watermarks in pages (keep_free/demote_below are policy Amounts,
    relative to the node's MemTotal)."""
    out = []
    for n in fast:
        node = topology.node(n)
        total = node.mem_total // PAGE_SIZE
        out.append(NodeRoom(
            node=n,
            total=total,
            free=node.mem_free // PAGE_SIZE,
            floor=-(-keep_free.resolve(node.mem_total) // PAGE_SIZE),
            low=-(-demote_below.resolve(node.mem_total) // PAGE_SIZE),
        ))
    return tuple(out)


def demand(hist: np.ndarray) -> np.ndarray:
    """[17] pages at hotness >= v for v = 0..16 (all classes), from a [classes, 16] or [16]
    histogram."""
    h = np.asarray(hist, dtype=np.int64)
    if h.ndim == 2:
        h = h.sum(axis=0)
    out = np.zeros(LEVELS + 1, dtype=np.int64)
    out[:LEVELS] = np.cumsum(h[::-1])[::-1]
    return out


def target_threshold(v: int, d: np.ndarray, share: int | None, cap: int | None, min_hot: int) -> int:
    """A target's threshold when the global one is ``v``: raised until its hot pages fit
    under its cap, lowered while they still fit in its guaranteed share."""
    t = v
    if cap is not None:
        while t < NO_THRESHOLD and d[t] > cap:
            t += 1
    if share is not None:
        while t > min_hot and d[t - 1] <= share and (cap is None or d[t - 1] <= cap):
            t -= 1
    return t


def thresholds(
    demands: dict[str, np.ndarray],
    budget: int,
    min_hot: int,
    shares: dict[str, int] | None = None,
    caps: dict[str, int] | None = None,
) -> dict[str, int]:
    """Per-target hot thresholds: the lowest global level (>= min_hot) at which every
    target's pages at or above its own threshold fit in ``budget`` pages together."""
    shares = shares or {}
    caps = caps or {}
    thr: dict[str, int] = {}
    for v in range(min_hot, NO_THRESHOLD + 1):
        thr = {
            t: target_threshold(v, d, shares.get(t), caps.get(t), min_hot)
            for t, d in demands.items()
        }
        if sum(int(demands[t][thr[t]]) for t in demands) <= budget:
            break
    return thr


def plan_queries(units: Sequence[UnitCounts], budget: int) -> list[Request]:
    """Learn the node of pages whose node is unknown, hottest first, up to ``budget`` pages.
    (Promotion candidates are the hot ones; cold ones only matter when room is needed.)"""
    out = []
    for level in range(LEVELS - 1, -1, -1):
        for u in units:
            if budget <= 0:
                return out
            n = min(int(u.hist[-1, level]), budget)
            if n > 0:
                out.append(Request(u.key, UNKNOWN, level, n, UNKNOWN, "query"))
                budget -= n
    return out


def plan(
    units: Sequence[UnitCounts],
    node_ids: Sequence[int],
    topology,
    fast: Sequence[int],
    slow: Sequence[int],
    policy,
    move_budget: int,
) -> Plan:
    """The moves for this interval (see the module docstring).  ``policy`` supplies
    keep_free, demote_below, min_hot, hysteresis and the targets' fast_share/fast_cap."""
    node_ids = tuple(node_ids)
    cls = {n: i for i, n in enumerate(node_ids)}
    cls[UNKNOWN] = len(node_ids)
    fast = tuple(n for n in fast if n in cls)
    slow = tuple(n for n in slow if n in cls)
    rooms = node_rooms(topology, fast, policy.keep_free, policy.demote_below)
    fast_total = sum(r.total for r in rooms) * PAGE_SIZE
    on_fast = [sum(int(u.hist[cls[n]].sum()) for n in fast) for u in units]
    fast_pages = sum(on_fast)
    budget = fast_pages + sum(r.room for r in rooms) - sum(r.deficit for r in rooms)

    names = list(dict.fromkeys(u.target for u in units))
    specs = {t.name: t for t in getattr(policy, "targets", ())}
    shares, caps = {}, {}
    for t in names:
        spec = specs.get(t)
        if spec is not None and spec.fast_share is not None:
            shares[t] = spec.fast_share.resolve(fast_total) // PAGE_SIZE
        if spec is not None and spec.fast_cap is not None:
            caps[t] = spec.fast_cap.resolve(fast_total) // PAGE_SIZE
    demands = {t: demand(sum(u.hist for u in units if u.target == t)) for t in names}
    hot = thresholds(demands, budget, policy.min_hot, shares, caps)
    cold = {t: max(0, v - policy.hysteresis) for t, v in hot.items()}
    ctx = _Ctx(units, cls, move_budget)
    if not fast or not slow:
        return Plan((), hot, cold, budget, fast_pages, rooms, move_budget)

    slow_free = {n: topology.node(n).mem_free // PAGE_SIZE for n in slow}
    order = {n: i for i, n in enumerate(topology.ids)}

    def slow_for(n: int, k: int) -> int:
        """The slow node nearest to fast node n with room for k pages (else the nearest)."""
        dist = topology.node(n).distances

        def key(s):
            d = dist[order[s]] if order.get(s, len(dist)) < len(dist) else 0
            return (d, -slow_free[s], s)

        ranked = sorted(slow, key=key)
        for s in ranked:
            if slow_free[s] >= k:
                slow_free[s] -= k
                return s
        slow_free[ranked[0]] -= k
        return ranked[0]

    demoted_fast = [0] * len(units)

    # 1. watermark: coldest first, whatever their hotness
    for r in rooms:
        need = r.deficit
        for level in range(LEVELS):
            for ui in range(len(units)):
                k = min(need, ctx.avail(ui, r.node, level), ctx.budget_left)
                if k > 0:
                    ctx.take(ui, r.node, level, k, slow_for(r.node, k), "watermark")
                    need -= k
                    ctx.budget_left -= k
                    demoted_fast[ui] += k

    # 2. caps
    for t, cap in caps.items():
        members = [i for i, u in enumerate(units) if u.target == t]
        over = sum(on_fast[i] - demoted_fast[i] for i in members) - cap
        for level in range(LEVELS):
            for n in fast:
                for ui in members:
                    k = min(over, ctx.avail(ui, n, level), ctx.budget_left)
                    if k > 0:
                        ctx.take(ui, n, level, k, slow_for(n, k), "cap")
                        over -= k
                        ctx.budget_left -= k
                        demoted_fast[ui] += k

    # 3. promotions, hottest first, displacing colder pages when there is no room; then
    # 4. free room that is left goes to the hottest pages below their threshold (a level
    #    cannot be split by the threshold, so this keeps the fast tier from idling)
    room = {r.node: r.room for r in rooms}
    headroom = {t: None if t not in caps else caps[t] - sum(
        on_fast[i] - demoted_fast[i] for i, u in enumerate(units) if u.target == t) for t in names}
    hyst = policy.hysteresis
    window = getattr(policy, "window", 8)
    single = weights(window)[0] if window > 1 else -1  # most hotness one access can give
    for fill in (False, True):
        for p in range(LEVELS - 1, policy.min_hot - 1, -1):
            for ui, u in enumerate(units):
                if (p < hot[u.target]) != fill:
                    continue
                for s in slow:
                    c = ctx.avail(ui, s, p)
                    while c > 0 and ctx.budget_left > 0:
                        hr = headroom[u.target]
                        n = max(room, key=lambda x: (room[x], -x)) if room else None
                        if n is not None and room[n] > 0 and (hr is None or hr > 0):
                            k = min(c, room[n], ctx.budget_left, hr if hr is not None else c)
                            ctx.take(ui, s, p, k, n, "promote")
                            room[n] -= k
                            ctx.budget_left -= k
                            if hr is not None:
                                headroom[u.target] = hr - k
                            c -= k
                            continue
                        if fill or p <= single:
                            break
                        victim = _coldest_victim(ctx, units, fast, hot, p - hyst,
                                                 u.target if hr is not None and hr <= 0 else None)
                        if victim is None:
                            break
                        vi, vn, vl, vavail = victim
                        k = min(c, vavail, ctx.budget_left // 2)
                        if k <= 0:
                            break
                        ctx.take(vi, vn, vl, k, slow_for(vn, k), "demote")
                        ctx.take(ui, s, p, k, vn, "promote")
                        ctx.budget_left -= 2 * k
                        c -= k
    return Plan(tuple(ctx.out), hot, cold, budget, fast_pages, rooms, move_budget)


def _coldest_victim(ctx: _Ctx, units, fast, hot, below: int, only_target: str | None):
    """(unit, fast node, level, pages) of the coldest demotable fast pages: below their own
    target's threshold and below ``below``; None if there are none."""
    for level in range(max(0, min(below, LEVELS))):
        for n in fast:
            for ui, u in enumerate(units):
                if only_target is not None and u.target != only_target:
                    continue
                if level >= hot[u.target]:
                    continue
                a = ctx.avail(ui, n, level)
                if a > 0:
                    return ui, n, level, a
    return None
