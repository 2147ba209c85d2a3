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

1. watermark: a fast node whose available memory (MemFree plus clean page cache, see
   ``NodeRoom``) is below demote_below gets its coldest pages demoted until it is back at
   keep_free;
2. cap: a target holding more of the fast tier than its fast_cap gets its coldest demoted;
3. promotion, hottest level first: pages at or above their target's threshold that sit on a
   slow node go to the fast node with the most room.  Without room, a fast page below its
   own target's threshold is demoted to make it, coldest first, but only when the move is
   worth it: with a measured estimate (``tierd.engine.gain``), when the promoted page's
   estimated access probability beats the victim's by more than hotness.min_gain plus the
   statistical error of the two estimates; without one (the first intervals, or an interval
   where the estimate mispredicted, e.g. a phase change), by the plain level rule: the
   victim is more than ``FALLBACK_HYSTERESIS`` levels colder and the promoted page was
   accessed in at least two samples of the window (its hotness exceeds the largest weight,
   the "two references" rule of 2Q and of TPP's active-list check);
4. fill: free room still left after that goes to the hottest pages below their threshold
   (at least min_hot), without displacing anything and without a gain test.  A threshold
   cannot split a level, so without this step a level that only partly fits would leave the
   room idle.

Overflow: a hot set bigger than the fast tier.  When even the top level (hotness 15: accessed
in every sample of the window) holds more pages than the budget, no threshold fits; the
plain rule would leave nothing hot and the fast tier unmanaged.  Instead such a target's
threshold is 15 and its top level is ranked by a longer history, the top counter (samples in
a row at level 15, PageState.top): placement works on extended levels 0..14, 15 (level 15
without a counter), 16..30 (level 15 with counter 1..15), so the fast tier fills with the
pages at the top longest, and a slow page displaces a fast one of a lower extended level when
the gain test on the extended estimate (``Gain.ext``) says so, or, without one, by the level
rule on extended levels (FALLBACK_HYSTERESIS counter values apart).

Only ``UnitCounts.movable`` pages are moved: not pages in retry backoff, and nothing of a
process before its pages have any history (its first sample says nothing about recency).
Pages already where they belong are never in the plan; pages whose node is unknown are
queried first (``plan_queries``, hottest first) and placed once known.

Fairness: pages of the same level are shared between processes (and so between targets) in
proportion to the pages each has at that level, for victims as for promotions, so at equal
hotness no process goes first; remainders go by largest fraction, then process order, so a
plan is deterministic.  The arithmetic is vectorized over processes ([processes, classes,
levels] arrays), so hundreds of processes cost little more than one.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from tierd.engine.hotness import LEVELS, weights
from tierd.engine.state import TOP_LEVELS
from tierd.pages import PAGE_SIZE

NO_THRESHOLD = LEVELS  # "nothing is hot": no page has hotness 16
UNKNOWN = -1  # node id of pages whose node is not known
FALLBACK_HYSTERESIS = 2  # level rule without an estimate: victims this much colder at least
EXT_LEVELS = LEVELS + TOP_LEVELS - 1  # 0..14, 15, then 15 + top counter 1..15 (overflow)


@dataclass(frozen=True)
class UnitCounts:
    """One process as placement sees it.

    ``hist[c, v]``: pages of class c at hotness v; class i is node ``node_ids[i]``, the last
    class is "node not known".  ``movable``: the part of ``hist`` that may be moved now
    (default all of it): not pages in retry backoff, nothing before the pages have
    history.  ``top``: a function returning the level-15 pages by top counter, [classes,
    16] (PageState.top_histograms), called only when the top level overflows; None: the
    top level of this process is not ranked."""

    key: Hashable
    target: str
    hist: np.ndarray
    movable: np.ndarray | None = None
    top: Callable[[], np.ndarray] | None = None


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
    """A fast node's memory against the policy's watermarks, in pages.

    The watermarks apply to what the node can give, ``available``: MemFree plus the clean
    page cache on it (``Node.reclaimable``).  A promotion's allocation on the node reclaims
    page cache there (move_pages allocates with __GFP_THISNODE and direct reclaim), so a
    node full of clean page cache has room and is not in deficit; only memory that cannot
    be reclaimed (anonymous pages, dirty and kernel memory) makes it full."""

    node: int
    total: int
    free: int  # MemFree
    floor: int  # keep_free
    low: int  # demote_below
    reclaimable: int = 0  # clean page cache

    @property
    def available(self) -> int:
        return self.free + self.reclaimable

    @property
    def room(self) -> int:
        """Pages that may still be promoted onto the node."""
        return max(0, self.available - self.floor)

    @property
    def deficit(self) -> int:
        """Pages to demote now: the node is below its low watermark."""
        return self.floor - self.available if self.available < self.low else 0


@dataclass(frozen=True)
class Plan:
    requests: tuple[Request, ...]
    hot: dict[str, int]  # target -> hot threshold (NO_THRESHOLD: nothing is hot)
    cold: dict[str, int]  # target -> cold threshold: fast pages below it give way to any hot page
    budget: int  # pages of the targets the fast tier can hold
    fast_pages: int  # pages of the targets known to be on fast nodes
    rooms: tuple[NodeRoom, ...] = ()
    move_budget: int = 0
    gain: object = None  # the tierd.engine.gain.Gain placed by; None: the plain level rule
    # target -> its movable pages at or above its threshold left on slow nodes although the
    # fast nodes have no room left (not counted while room is left: then only the migration
    # budget held them back)
    waiting: dict = None

    def __post_init__(self) -> None:
        if self.waiting is None:
            object.__setattr__(self, "waiting", {})

    def count(self, *reasons: str) -> int:
        return sum(r.count for r in self.requests if r.reason in reasons)


def share(total: int, avail: np.ndarray) -> np.ndarray:
    """Split ``total`` pages (at most sum(avail)) in proportion to ``avail`` (int64 per
    process): floors first, the remainder one page each by largest fraction, then lowest
    index.  No process gets more than it has."""
    avail = np.asarray(avail, dtype=np.int64)
    s = int(avail.sum())
    total = min(int(total), s)
    if total <= 0:
        return np.zeros_like(avail)
    if total == s:
        return avail.copy()
    exact = avail * total
    out = exact // s
    rest = total - int(out.sum())
    if rest:
        frac = exact - out * s
        order = np.lexsort((np.arange(avail.size), -frac))
        order = order[avail[order] > out[order]]
        out[order[:rest]] += 1
    return out


class _Ctx:
    """Mutable bookkeeping while one plan is built (local to ``plan``)."""

    def __init__(self, units: Sequence[UnitCounts], cls: dict[int, int], budget_left: int,
                 left: np.ndarray) -> None:
        self.units = units
        self.cls = cls
        self.budget_left = budget_left
        self.left = left  # [units, classes, EXT_LEVELS] movable pages
        self.out: list[Request] = []

    def avail(self, node: int, level: int) -> np.ndarray:
        """Movable pages per process on ``node`` at ``level`` (a view)."""
        return self.left[:, self.cls[node], level]

    def take(self, counts: np.ndarray, node: int, level: int, dest, reason: str) -> int:
        """Plan ``counts[u]`` pages of each process; ``dest`` one node or a function of the
        page count.  Returns the pages taken."""
        c = self.cls[node]
        total = 0
        for u in np.flatnonzero(counts).tolist():
            k = int(counts[u])
            self.left[u, c, level] -= k
            d = dest(k) if callable(dest) else dest
            self.out.append(Request(self.units[u].key, node, level, k, d, reason))
            total += k
        return total


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
            reclaimable=getattr(node, "reclaimable", 0) // PAGE_SIZE,
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
    """Learn the node of pages whose node is unknown, hottest first, up to ``budget`` pages,
    shared between processes in proportion to their unknown pages at each level.
    (Promotion candidates are the hot ones; cold ones only matter when room is needed.)"""
    out: list[Request] = []
    if not units:
        return out
    unknown = np.stack([u.hist[-1] for u in units]).astype(np.int64)  # [units, levels]
    for level in range(LEVELS - 1, -1, -1):
        if budget <= 0:
            break
        k = share(budget, unknown[:, level])
        for u in np.flatnonzero(k).tolist():
            out.append(Request(units[u].key, UNKNOWN, level, int(k[u]), UNKNOWN, "query"))
        budget -= int(k.sum())
    return out


def cap_promotions(promotions: Sequence[Request], room: dict[int, int]) -> list[Request]:
    """Promotions trimmed, in plan order, to the room each fast node has *now* (free pages
    above keep_free after this interval's demotions ran): a promotion whose paired demotion
    failed does not run, so tierd never takes a fast node below keep_free."""
    left = dict(room)
    out = []
    for r in promotions:
        k = min(r.count, max(0, left.get(r.dest, 0)))
        if k > 0:
            out.append(r if k == r.count else Request(r.unit, r.node, r.level, k, r.dest, r.reason))
            left[r.dest] -= k
    return out


def plan(
    units: Sequence[UnitCounts],
    node_ids: Sequence[int],
    topology,
    fast: Sequence[int],
    slow: Sequence[int],
    policy,
    move_budget: int,
    gain=None,
    pace: float = 1.0,
) -> Plan:
    """The moves for this interval (see the module docstring).  ``policy`` supplies
    keep_free, demote_below, min_hot, window and the targets' fast_share/fast_cap; ``gain``
    (a tierd.engine.gain.Gain, or None for the plain level rule) decides displacements;
    ``pace`` (GainModel.pace) scales the budget of promotions and displacements, after the
    watermark and cap demotions took theirs."""
    node_ids = tuple(node_ids)
    cls = {n: i for i, n in enumerate(node_ids)}
    cls[UNKNOWN] = len(node_ids)
    fast = tuple(n for n in fast if n in cls)
    slow = tuple(n for n in slow if n in cls)
    rooms = node_rooms(topology, fast, policy.keep_free, policy.demote_below)
    fast_total = sum(r.total for r in rooms) * PAGE_SIZE
    fast_cls = [cls[n] for n in fast]
    hists = np.stack([u.hist for u in units]) if units else np.zeros((0, len(cls), LEVELS), np.int64)
    on_fast = hists[:, fast_cls].sum(axis=(1, 2)).astype(np.int64)
    fast_pages = int(on_fast.sum())
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
    target_of = [u.target for u in units]
    demands = {t: demand(hists[[x == t for x in target_of]].sum(axis=0)) for t in names}
    hot = thresholds(demands, budget, policy.min_hot, shares, caps)
    # overflow: the highest level a target has pages at does not fit alone; that level is
    # hot (level 15: ranked by the top counter; a lower one while the window fills up)
    tops = {t: int(np.flatnonzero(demands[t][:LEVELS])[-1]) if demands[t][0] else -1 for t in names}
    overflow = set()
    if tops and all(hot[t] > tops[t] for t in names):  # no page is hot: not even the top level fits
        peak = max(tops.values())
        overflow = {t for t in names if tops[t] == peak >= policy.min_hot}
        for t in overflow:
            hot[t] = peak
    window = getattr(policy, "window", 8)
    single = weights(window)[0] if window > 1 else -1  # most hotness one access can give

    def victim_levels(p: int) -> int:
        """Fast (extended) levels below this that a slow page at level p may displace."""
        if p >= LEVELS and gain is not None:  # a top sub-level
            return gain.ext.victim_levels(p) if gain.ext is not None else gain.victim_levels(LEVELS - 1)
        if gain is not None:
            return min(gain.victim_levels(p), p)
        return 0 if p <= single else max(0, p - FALLBACK_HYSTERESIS)

    cold = {t: min(v, victim_levels(min(v, LEVELS - 1))) for t, v in hot.items()}
    if not units or not fast or not slow:
        return Plan((), hot, cold, budget, fast_pages, rooms, move_budget, gain)
    ranked = np.array([u.target in overflow and hot[u.target] == LEVELS - 1 and u.top is not None
                       for u in units], dtype=bool)
    ctx = _Ctx(units, cls, move_budget, _extended(units, ranked))
    hot_u = np.array([hot[t] for t in target_of], dtype=np.int64)
    # a fast page at or above its target's threshold is no victim, except in a ranked top
    ceil_u = np.where(ranked, EXT_LEVELS, hot_u)

    slow_free = {n: topology.node(n).mem_free // PAGE_SIZE for n in slow}
    order = {n: i for i, n in enumerate(topology.ids)}

    def slow_for(n: int):
        """dest(k): the slow node nearest to fast node n with room for k pages (else the
        nearest)."""
        dist = topology.node(n).distances

        def key(s):
            d = dist[order[s]] if order.get(s, len(dist)) < len(dist) else 0
            return (d, -slow_free[s], s)

        def dest(k: int) -> int:
            if len(slow) == 1:  # nothing to rank (one request per process: keep it cheap)
                slow_free[slow[0]] -= k
                return slow[0]
            ranked = sorted(slow, key=key)
            for s in ranked:
                if slow_free[s] >= k:
                    slow_free[s] -= k
                    return s
            slow_free[ranked[0]] -= k
            return ranked[0]

        return dest

    demoted_fast = np.zeros(len(units), dtype=np.int64)

    # 1. watermark: coldest first, whatever their hotness, shared between processes
    for r in rooms:
        need = r.deficit
        for level in range(EXT_LEVELS):
            k = min(need, ctx.budget_left)
            if k <= 0:
                break
            counts = share(k, ctx.avail(r.node, level))
            ctx.take(counts, r.node, level, slow_for(r.node), "watermark")
            need -= int(counts.sum())
            ctx.budget_left -= int(counts.sum())
            demoted_fast += counts

    # 2. caps
    for t, cap in caps.items():
        member = np.array([x == t for x in target_of])
        over = int((on_fast - demoted_fast)[member].sum()) - cap
        for level in range(EXT_LEVELS):
            for n in fast:
                k = min(over, ctx.budget_left)
                if k <= 0:
                    break
                counts = share(k, ctx.avail(n, level) * member)
                ctx.take(counts, n, level, slow_for(n), "cap")
                over -= int(counts.sum())
                ctx.budget_left -= int(counts.sum())
                demoted_fast += counts

    ctx.budget_left = min(ctx.budget_left, int(move_budget * pace))
    # 3. promotions, hottest first, displacing colder pages when there is no room; then
    # 4. free room that is left goes to the hottest pages below their threshold (a level
    #    cannot be split by the threshold, so this keeps the fast tier from idling)
    room = {r.node: r.room for r in rooms}
    headroom = {t: caps[t] - int((on_fast - demoted_fast)[[x == t for x in target_of]].sum())
                for t in caps}
    capped = {t: np.array([x == t for x in target_of]) for t in caps}
    for fill in (False, True):
        for p in range(EXT_LEVELS - 1, policy.min_hot - 1, -1):
            elig = (p < hot_u) if fill else (p >= hot_u)
            if not elig.any():
                continue
            for s in slow:
                cand = ctx.avail(s, p) * elig
                # free room first, within each capped target's headroom
                while cand.any() and ctx.budget_left > 0 and room:
                    n = max(room, key=lambda x: (room[x], -x))
                    if room[n] <= 0:
                        break
                    limited = _within_headroom(cand, headroom, capped)
                    k = min(int(limited.sum()), room[n], ctx.budget_left)
                    if k <= 0:
                        break
                    counts = share(k, limited)
                    ctx.take(counts, s, p, n, "promote")
                    room[n] -= k
                    ctx.budget_left -= k
                    _charge(headroom, capped, counts)
                    cand = cand - counts
                if fill or not cand.any():
                    continue
                # no room: displace colder fast pages, if the gain is worth it; a target at
                # its cap only displaces its own pages
                below = victim_levels(p)
                everyone = np.ones(len(units), dtype=bool)
                at_cap = [capped[t] for t in caps if headroom[t] <= 0]
                free = everyone.copy()
                for m in at_cap:
                    free &= ~m
                # (whose promotions, whose pages they may displace)
                for scope, victims in [(free, everyone)] + [(m, m) for m in at_cap]:
                    c = cand * scope
                    while c.any() and ctx.budget_left >= 2:
                        victim = _coldest_victim(ctx, fast, ceil_u, below, victims)
                        if victim is None:
                            break
                        vn, vl, vavail = victim
                        k = min(int(c.sum()), int(vavail.sum()), ctx.budget_left // 2)
                        dem = share(k, vavail)
                        pro = share(k, c)
                        ctx.take(dem, vn, vl, slow_for(vn), "demote")
                        ctx.take(pro, s, p, vn, "promote")
                        ctx.budget_left -= 2 * k
                        c = c - pro
    waiting = {}
    if all(v <= 0 for v in room.values()):
        slow_cls = [cls[n] for n in slow]
        levels = np.arange(EXT_LEVELS)[None, :] >= hot_u[:, None]  # [units, levels]
        left = (ctx.left[:, slow_cls].sum(axis=1) * levels).sum(axis=1)
        for t in names:
            k = int(left[[x == t for x in target_of]].sum())
            if k:
                waiting[t] = k
    return Plan(tuple(ctx.out), hot, cold, budget, fast_pages, rooms, move_budget, gain, waiting)


def _within_headroom(cand: np.ndarray, headroom: dict, capped: dict) -> np.ndarray:
    """Candidates per process, each capped target's trimmed to its remaining headroom."""
    out = cand
    for t, m in capped.items():
        have = int(cand[m].sum())
        if have > max(0, headroom[t]):
            out = out.copy() if out is cand else out
            out[m] = share(max(0, headroom[t]), cand * m)[m]
    return out


def _charge(headroom: dict, capped: dict, counts: np.ndarray) -> None:
    for t, m in capped.items():
        headroom[t] -= int(counts[m].sum())


def _extended(units: Sequence[UnitCounts], ranked: np.ndarray) -> np.ndarray:
    """Movable pages [units, classes, EXT_LEVELS]: levels 0..15 as counted, and for the
    ``ranked`` processes their level-15 pages spread over the top sub-levels by counter
    (pages in backoff taken from the lowest counters: they are few, and selection skips
    them anyway)."""
    # movable = hist minus the pages in backoff, whose hotness and node are read now while
    # hist is the last commit's: a cell can come out negative, and a negative victim count
    # would stall the displacement loop (k <= 0 pages taken, for ever)
    mov = np.maximum(np.stack([u.hist if u.movable is None else u.movable for u in units]), 0)
    mov = mov.astype(np.int64)
    out = np.zeros(mov.shape[:2] + (EXT_LEVELS,), dtype=np.int64)
    out[:, :, :LEVELS] = mov
    for i in np.flatnonzero(ranked).tolist():
        top = np.asarray(units[i].top(), dtype=np.int64)[:, 1:]  # [classes, 15]
        top = np.minimum(top, units[i].hist[:, LEVELS - 1:LEVELS])
        rest = units[i].hist[:, LEVELS - 1] - top.sum(axis=1)  # at level 15 without a counter
        short = np.maximum(units[i].hist[:, LEVELS - 1] - mov[i, :, LEVELS - 1], 0)
        take = np.minimum(short, rest)
        rest = rest - take
        short = short - take
        csum = np.cumsum(top, axis=1)
        top = top - np.clip(short[:, None] - (csum - top), 0, top)
        out[i, :, LEVELS - 1] = np.maximum(rest, 0)
        out[i, :, LEVELS:] = top
    return out


def _coldest_victim(ctx: _Ctx, fast, hot_u: np.ndarray, below: int, scope: np.ndarray):
    """(fast node, level, pages per process) of the coldest demotable fast pages: below
    ``hot_u`` (their own target's threshold, or the top of a ranked top level) and below
    ``below``, among the processes in ``scope``; None if there are none."""
    for level in range(max(0, min(below, EXT_LEVELS))):
        ok = scope & (level < hot_u)
        if not ok.any():
            continue
        for n in fast:
            a = ctx.avail(n, level) * ok
            if a.any():
                return n, level, a
    return None
