"""The daemon: one interval = resolve targets, sample, update hotness, plan, move.

``Engine`` does one interval (``step``) against a Kernel-like object: the real
``tierd.linux.Kernel`` or the simulator's fake; the engine talks to nothing else.
``Daemon`` runs the loop ``while not stop.wait(...)``: SIGTERM/SIGINT set ``stop`` (the
executor checks it between move_pages batches, so the daemon stops after the current batch),
SIGHUP sets ``reload``, handled at the next tick: the policy file is re-read and validated
(and checked against the machine: nodes exist, the tracking interface works) and swapped in
whole; on any error the old policy stays and the error is logged with file:line.

``tierd.service.main`` (``tierd run``) is the composition root: it alone builds the Kernel,
loads the policy, wires the engine and the integrations and installs signal handlers; the
arguments of ``tierd run`` are declared here (``add_run_arguments``).

Seams for later work: ``Observer`` gets ready/interval/reloading/reloaded/stopping calls with
the per-interval ``IntervalStats`` (histograms per target and node, move counters) -
sd_notify (READY=1, WATCHDOG=1, RELOADING=1) and the Prometheus exporter plug in there.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tierd.engine.executor import NOT_TRIED, Executor, MoveCounts, outcome_masks
from tierd.engine.hotness import LEVELS
from tierd.engine.huge import SPLIT_SHARE, HugePages
from tierd.engine.interval import Bounds, IntervalController, observe
from tierd.engine.placement import (
    NO_THRESHOLD,
    UNKNOWN,
    Plan,
    Request,
    UnitCounts,
    cap_promotions,
    node_rooms,
    plan,
    plan_queries,
)
from tierd.engine.gain import NEED_SHARES, GainModel, group_rate, need
from tierd.engine.pack import Pack, Packs, SharedRef, Tracked
from tierd.engine.state import (
    CHUNK_WORDS,
    TOP_LEVELS,
    Extents,
    PageState,
    carry_words,
    is_shared,
    test_bits,
)
from tierd.engine.targets import GONE, ProcessRef, PsutilResolver
from tierd.linux.errors import ParseError
from tierd.linux.syscalls import MPOL_MF_MOVE, MPOL_MF_MOVE_ALL
from tierd.linux.sysfs import format_nodelist
from tierd.linux.tracking import extents as word_extents
from tierd.logs import RateLimiter
from tierd.pages import PAGE_SHIFT, PAGE_SIZE, PAGES_PER_WORD

log = logging.getLogger("tierd")

QUERY_MIN = 65536  # node queries per interval at least (256 MiB of address space)
# Pages whose node is known are asked again, a rotating slice every RECHECK_EVERY intervals,
# so that pages the kernel moved (kswapd demotion, NUMA balancing, compaction) are found:
# 1/RECHECK_DIV of the query budget per interval, at least RECHECK_MIN pages (a process is
# covered in pages / that many intervals: the demo's 16 GiB at every recheck, 1 TiB in 13).
RECHECK_EVERY = 4
RECHECK_DIV = 32
RECHECK_MIN = 1 << 18
NOTED_MAX = 1 << 16  # moved pages per pack and direction whose next sample is looked at
# Shared memory objects tracked at most (each costs a read per mapper and interval, and a
# process may map tens of thousands of memfds); the largest first.
SHARED_MAX = 4096
NEED_EVERY = 12  # intervals between two fits of a target's miss-ratio curve (1 min at 5 s)
NEED_MOVED = 0.01  # ... or sooner when its hotness histogram moved by this much
# A target that has matched no process for this many intervals in a row is logged (once, until
# it matches again) and counted in tierd_targets_unmatched (tierd status shows it): a policy
# whose selectors match nothing would otherwise look like a healthy idle daemon.
NO_MATCH_INTERVALS = 12
# State is sized by tracked address space (1.6 B per page): a sparse mapping (an ASan-style
# 20 TiB shadow, a huge PROT_READ reservation) would cost GiB for a few resident pages.  A
# process tracking more than TRACK_FLOOR_PAGES pages is bounded to TRACK_RSS_FACTOR times its
# resident set (VmRSS): its largest ranges are left out, with a warning naming it.
TRACK_FLOOR_PAGES = 1 << 24  # 64 GiB of address space (27 MB of state) always tracked
TRACK_RSS_FACTOR = 4
SLICE_PAGES = 1 << 22  # pages selected and moved at a time: ~100 MB of temporaries at most
SPEED_MIN_PAGES = 1024  # fewer pages in less than half the interval: call overhead, not speed
DEFAULT_CONFIG = "/etc/tierd.yaml"
# Intervals in a row that may fail (an unexpected exception in Engine.step) before the daemon
# gives up and `tierd run` exits 1: one failure is logged and skipped, but a daemon that fails
# every interval does nothing while looking alive; exiting lets systemd restart it or alert.
MAX_FAILED_INTERVALS = 10


@dataclass
class TargetStats:
    processes: int = 0
    pages: int = 0  # present pages
    fast_pages: int = 0  # present pages known to be on fast nodes
    hist: np.ndarray = field(default_factory=lambda: np.zeros(LEVELS, np.int64))
    hot: int = NO_THRESHOLD
    cold: int = NO_THRESHOLD
    # node id (-1 unknown) -> pages by hotness level: the per target and node histograms
    by_node: dict[int, np.ndarray] = field(default_factory=dict)
    # Address ranges (merged VMAs) whose access bits could not be read this interval, and their
    # size in pages (the engine repeats their last sample).  Non-zero means tierd is partly
    # blind for this target: the interval line says NOT SAMPLED and a warning is logged.
    unsampled_ranges: int = 0
    unsampled_pages: int = 0
    # hot pages (at or above the threshold) left on slow nodes because the fast nodes had no
    # room (Plan.waiting): the fast tier is full of other memory, or the hot set outgrew it
    waiting: int = 0
    # fast memory (pages) that would serve 90/95/99% of the target's accesses, from the
    # measured access rates (tierd.engine.gain.need); None before the first estimate
    need: tuple | None = None
    unmatched_intervals: int = 0  # intervals in a row in which no process matched this target


@dataclass
class IntervalStats:
    """What one interval saw and did; handed to observers (log line, metrics, sd_notify)."""

    seq: int
    started: float  # time.time() at the start
    seconds: float = 0.0  # whole interval
    sample_seconds: float = 0.0  # reading maps and access bits (kernel work)
    engine_seconds: float = 0.0  # hotness, histograms, placement, selection (our work)
    move_seconds: float = 0.0  # inside move_pages
    processes: int = 0
    tracked_pages: int = 0  # pages of address space tracked
    state_bytes: int = 0
    fast: tuple[int, ...] = ()
    slow: tuple[int, ...] = ()
    memory: dict[int, tuple[int, int]] = field(default_factory=dict)  # node -> (total, free) bytes
    reclaimable: dict[int, int] = field(default_factory=dict)  # node -> clean page cache bytes
    targets: dict[str, TargetStats] = field(default_factory=dict)
    nodes: dict[int, np.ndarray] = field(default_factory=dict)  # node id (-1 unknown) -> hist
    plan: Plan | None = None
    moves: MoveCounts = field(default_factory=MoveCounts)
    queries: MoveCounts = field(default_factory=MoveCounts)
    promoted: int = 0
    demoted: int = 0
    dropped: int = 0  # processes that exited (or stopped matching)
    primed: int = 0  # processes sampled for the first time (that sample only primes the bits)
    rechecked: int = 0  # pages of known node asked again (RECHECK_DIV)
    stale: int = 0  # ... found on another node than tierd knew: moved behind its back
    split: int = 0  # huge pages split (tierd/engine/huge.py)
    interval: float = 0.0  # the interval this one's move budget covered (seconds)
    unsampled_ranges: int = 0  # all targets: see TargetStats.unsampled_ranges
    unsampled_pages: int = 0
    shared_pages: int = 0  # present pages of shared objects (counted once, in their target)
    # ... of them not moved: shared by several processes, moving them needs MPOL_MF_MOVE_ALL
    # and CAP_SYS_NICE, which tierd lacks (never attempted: the kernel would refuse each)
    shared_unmovable: int = 0


class Observer:
    """Receives the daemon's life cycle; every method is optional (no-op here)."""

    def on_ready(self, engine: Engine) -> None: ...

    def on_interval(self, stats: IntervalStats) -> None: ...

    def on_reloading(self) -> None: ...

    def on_reloaded(self, policy, error: Exception | None) -> None: ...

    def on_stopping(self) -> None: ...

    def on_heartbeat(self) -> None:
        """The loop is alive: called after every interval and, while it waits for the next
        one, at least every ``Daemon.heartbeat`` seconds (the systemd watchdog ping)."""


class LogObserver(Observer):
    """The one INFO line per interval."""

    def on_interval(self, stats: IntervalStats) -> None:
        log.info("%s", summary_line(stats))


def _size(pages: int) -> str:
    from tierd.units import format_size

    return format_size(pages * PAGE_SIZE)


def summary_line(s: IntervalStats) -> str:
    hot = sorted({t.hot for t in s.targets.values()})
    thr = "/".join("-" if h >= NO_THRESHOLD else str(h) for h in hot) or "-"
    fast = sum(t.fast_pages for t in s.targets.values())
    present = sum(t.pages for t in s.targets.values())
    m = s.moves
    parts = [
        f"#{s.seq}: {s.processes} proc {_size(present)} resident",
        f"{_size(fast)} fast",
        f"hot>={thr}",
        f"promoted {s.promoted} demoted {s.demoted}",
    ]
    if m.failed:
        parts.append(f"failed {m.failed} (busy {m.busy} absent {m.absent} nomem {m.nomem} "
                     f"denied {m.denied} other {m.other})")
    if s.queries.queried:
        parts.append(f"queried {s.queries.queried}")
    if s.stale:
        parts.append(f"{s.stale} moved by the kernel")
    if s.dropped:
        parts.append(f"exited {s.dropped}")
    if s.split:
        parts.append(f"split {s.split} huge")
    waiting = sum(t.waiting for t in s.targets.values())
    if waiting:
        parts.append(f"{_size(waiting)} hot WAITING on slow (no room on fast)")
    if s.unsampled_ranges:
        parts.append(f"NOT SAMPLED {s.unsampled_ranges} range(s) {_size(s.unsampled_pages)}")
    parts.append(f"engine {s.engine_seconds * 1e3:.0f}ms sample {s.sample_seconds * 1e3:.0f}ms "
                 f"move {s.move_seconds * 1e3:.0f}ms of {s.interval:g}s")
    return ", ".join(parts)


class Engine:
    """One interval of tiering work per ``step()`` (see the module docstring)."""

    def __init__(
        self,
        kernel,
        policy,
        *,
        resolver=None,
        should_stop: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
        chunk_words: int = CHUNK_WORDS,
    ) -> None:
        self.kernel = kernel
        self.policy = policy
        self.resolver = resolver if resolver is not None else PsutilResolver(kernel)
        self.should_stop = should_stop
        self.clock = clock
        self.chunk_words = chunk_words
        self.reader = kernel.reader(policy.tracking)
        self.executor = Executor(kernel, policy.batch // PAGE_SIZE, should_stop=should_stop, clock=clock)
        self.units: dict[tuple, Tracked] = {}  # every tracked process, by identity
        self.shared: dict[tuple, Tracked] = {}  # shared objects their mappings name (pack.py)
        # pages mapped by several processes move only with MPOL_MF_MOVE_ALL (CAP_SYS_NICE)
        feats = kernel.features()
        self.move_shared = feats is not None and feats.cap_sys_nice
        self.fast_ids = np.zeros(0, dtype=np.int32)  # the fast nodes of this interval
        self._warned_shared = False
        self.packs = Packs()  # their shared page states (tierd/engine/pack.py)
        self.seq = 0
        self.gain = GainModel()  # access-rate estimates per (tier, level), across intervals
        self.interval: float | None = None  # set by the Daemon's pacing; None: policy.interval
        self.move_speed: float | None = None  # measured pages/s inside move_pages
        self.huge: HugePages | None = None
        self._set_huge(policy)
        self._warned_single_tier = False
        self._need: dict[str, tuple] = {}  # target -> (interval, histogram, need) of its fit
        # pack -> ([promoted vpns], [demoted vpns], [their levels], [their levels]): the last
        # interval's moves, judged in the next sample (_judge_moves)
        self._noted: dict = {}
        # repeated warnings: one line per (target, reason) per REPEAT_EVERY, with a count
        self.warn = RateLimiter(log, clock=clock)
        self.unmatched: dict[str, int] = {}  # target -> intervals in a row without a process
        self._memory_nodes: tuple[int, ...] | None = None  # last interval's, for _classify

    # -- policy ------------------------------------------------------------------------------
    def set_policy(self, policy) -> None:
        """Swap in a new policy whole, after checking it against this machine (the node lists
        must name memory nodes, the tracking interface must work).  Raises (ValueError,
        FeatureMissing ...) and changes nothing if it does not fit."""
        topo = self.kernel.topology()
        topo.classify(policy.fast_nodes, policy.slow_nodes)
        reader = self.reader if policy.tracking == self.policy.tracking else self.kernel.reader(policy.tracking)
        old_reader = self.reader
        self.policy = policy
        self.reader = reader
        self.executor.set_batch(policy.batch // PAGE_SIZE)
        self._set_huge(policy)
        for pk in self.packs:
            pk.state.set_window(policy.window)
        if reader is not old_reader:
            for u in self.units.values():
                u.reader = reader
            _close_all(old_reader)  # every pid's descriptors and the reader's own

    def _set_huge(self, policy) -> None:
        """Huge page splitting (huge_pages.split), where the kernel facade offers it."""
        if not policy.huge_split or not hasattr(self.kernel, "thp"):
            if self.huge is not None:  # turned off: its holds must not outlive it
                self.huge.release_all(self.units.values())
            self.huge = None
        elif self.huge is None:
            self.huge = HugePages(self.kernel.thp(), policy.huge_dense, clock=self.clock)
        else:
            self.huge.tracker.dense = policy.huge_dense

    @property
    def move_budget(self) -> int:
        """Pages that may be migrated this interval: migration.rate * interval, or less if
        move_pages has been measured slower than that (the moves must also fit in time)."""
        pages = int(self.policy.rate * self.covered) // PAGE_SIZE
        if self.move_speed is not None:
            pages = min(pages, max(1, int(self.move_speed * self.covered)))
        return pages

    @property
    def covered(self) -> float:
        """Seconds this interval's budget covers: the pacing's interval, else the policy's."""
        return self.interval if self.interval is not None else self.policy.interval

    @property
    def query_budget(self) -> int:
        """Pages whose node may be asked for this interval (migration.query_rate * interval):
        a budget of its own, so learning where pages are never costs migrations."""
        return max(QUERY_MIN, int(self.policy.query_rate * self.policy.interval) // PAGE_SIZE)

    # -- one interval ------------------------------------------------------------------------
    def step(self) -> IntervalStats:
        """One interval: topology, targets, a sample of every process, node queries,
        placement, moves (demotions first).  Never sleeps; the Daemon paces it."""
        pol = self.policy
        self.seq += 1
        stats = IntervalStats(seq=self.seq, started=time.time(), interval=self.covered)
        t0 = self.clock()
        topo = self.kernel.topology()
        fast, slow = self._classify(topo)
        self.fast_ids = np.array(fast, dtype=np.int32)
        stats.fast, stats.slow = tuple(fast), tuple(slow)
        stats.memory = {n.id: (n.mem_total, n.mem_free) for n in topo.nodes if n.has_memory}
        stats.reclaimable = {n.id: n.reclaimable for n in topo.nodes if n.has_memory}
        node_ids = tuple(n.id for n in topo.nodes if n.has_memory)

        refs = self.resolver.resolve(pol.targets)
        self._count_unmatched(refs)
        stats.dropped = self._sync(refs)
        engine_s = 0.0
        for key in list(self.units):
            unit = self.units[key]
            try:
                engine_s += self._stage(unit, node_ids)
            except GONE:
                self._drop(key)
                stats.dropped += 1
            except OSError as e:  # one process we cannot read (permissions, odd mapping)
                self.warn.warning((unit.ref.target, "not sampled", _reason(e)),
                                  "pid %d (%s): not sampled: %s", unit.ref.pid, unit.ref.target, e)
            except ParseError as e:  # its maps did not parse: this process, this interval
                self.warn.warning((unit.ref.target, "not sampled", "parse"),
                                  "pid %d (%s): not sampled: %s", unit.ref.pid, unit.ref.target, e)
        engine_s += self._stage_shared(node_ids)
        engine_s += self._sample(node_ids, stats)
        t1 = self.clock()
        stats.sample_seconds = t1 - t0 - engine_s

        live = [u for u in self._tracked() if u.samples and u.seg is not None]
        stats.primed = sum(u.samples == 1 for u in live if not u.shared)
        for pk in self.packs:
            pk.state.expire(self.seq, pol.retry_after)
            pk.version += 1
        self._judge_moves()
        if fast and slow and live:
            # a process that exits at a move_pages call is closed there: leave it out
            self._recheck(stats)
            live = [u for u in live if u.pack is not None]
            queries = plan_queries(self._counts(live), self.query_budget)
            self._execute(queries, stats, query=True)
            live = [u for u in live if u.pack is not None]
            counts = self._counts(live, stats)
            gain = self._gain(node_ids, fast, slow)
            budget = self.move_budget
            pl = plan(counts, node_ids, topo, fast, slow, pol, budget, gain,
                      self.gain.promotion_budget(budget) / max(1, budget))
            stats.plan = pl
            demotions = [r for r in pl.requests if r.reason != "promote"]
            promotions = [r for r in pl.requests if r.reason == "promote"]
            # Time budget: splits and moves together may take as long as the interval their
            # byte budget covers; splitting gets at most SPLIT_SHARE of it (huge.py).
            begun = self.clock()
            if self.huge is not None:  # splits sparsely hot THPs, holds back undecided ones
                stats.split = self.huge.step([u for u in live if not u.shared], pl, pol,
                                             self.reader, deadline=begun + SPLIT_SHARE * self.covered)
            # demotions first: they make the room the promotions were planned into; then
            # promote only into the room there is now (a failed demotion cancels its pair).
            self.executor.begin(begun + self.covered)
            try:
                stats.demoted = self._execute(demotions, stats)
                rooms = node_rooms(self.kernel.topology(), fast, pol.keep_free, pol.demote_below)
                promotions = cap_promotions(promotions, {r.node: r.room for r in rooms})
                stats.promoted = self._execute(promotions, stats)
            finally:
                self.executor.deadline = None
            self._measure_speed(stats.moves)
        elif live and not self._warned_single_tier:
            log.warning("one memory tier only (fast nodes %s, slow nodes %s): only observing",
                        list(fast), list(slow))
            self._warned_single_tier = True
        live = [u for u in live if u.pack is not None]  # minus those that exited meanwhile
        self._fill_stats(stats, live, node_ids, fast)
        self._fill_need(stats, fast)
        t2 = self.clock()  # the statistics and the curve fit are the engine's work too
        stats.move_seconds = stats.moves.seconds + stats.queries.seconds
        stats.engine_seconds = engine_s + (t2 - t1) - stats.move_seconds
        stats.seconds = t2 - t0
        self._warn_waiting(stats)
        return stats

    def _classify(self, topo) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """This interval's fast and slow nodes (issue 17 #7).  Memory nodes come and go
        (hotplug, CXL): a node the policy lists that is not online with memory is left out
        and a node that comes online is classified like any other, each a WARNING
        (rate-limited), never an error: an error here failed every interval until the
        daemon gave up, and the restart refused the policy."""
        pol = self.policy
        fast, slow = topo.classify(pol.fast_nodes, pol.slow_nodes, strict=False)
        mem = tuple(n.id for n in topo.nodes if n.has_memory)
        offline = topo.offline(pol.fast_nodes, pol.slow_nodes)
        if offline:
            self.warn.warning(("nodes", "offline", offline),
                              "node(s) %s listed in the policy's nodes.fast/nodes.slow are not "
                              "online with memory: left out until they are (fast node(s) %s, slow "
                              "node(s) %s)", format_nodelist(offline), format_nodelist(fast),
                              format_nodelist(slow))
        was = self._memory_nodes
        if was is not None and mem != was:
            came, went = sorted(set(mem) - set(was)), sorted(set(was) - set(mem))
            self.warn.warning(("nodes", "changed", mem),
                              "memory nodes changed: %s%s; now fast node(s) %s, slow node(s) %s, "
                              "unused %s", f"online {format_nodelist(came)}" if came else "",
                              (", " if came and went else "") + (
                                  f"offline {format_nodelist(went)}" if went else ""),
                              format_nodelist(fast), format_nodelist(slow),
                              format_nodelist(set(mem) - set(fast) - set(slow)))
        self._memory_nodes = mem
        return fast, slow

    def _fill_need(self, stats: IntervalStats, fast) -> None:
        """Each target's miss-ratio curve read at 90/95/99% (TargetStats.need).  The fit
        costs tens of ms per target: it is done again when the target's hotness histogram
        moved by more than NEED_MOVED (total variation) since the last one, or after
        NEED_EVERY intervals; a steady target costs one fit a minute."""
        g = self.gain.last
        if g is None:
            return
        for name, ts in stats.targets.items():
            cells = np.zeros((2, LEVELS))
            for nid, h in ts.by_node.items():
                cells[0 if nid in fast else 1] += np.asarray(h, dtype=np.float64)
            shape = cells.sum(axis=0) / max(cells.sum(), 1.0)
            seq, last_shape, last = self._need.get(name, (None, None, None))
            if (seq is not None and self.seq - seq < NEED_EVERY
                    and 0.5 * np.abs(shape - last_shape).sum() <= NEED_MOVED):
                ts.need = last
                continue
            ts.need = need(cells, g.q, window=self.policy.window)
            self._need[name] = (self.seq, shape, ts.need)
        for name in set(self._need) - set(stats.targets):  # targets a reload removed
            del self._need[name]

    def _warn_waiting(self, stats: IntervalStats) -> None:
        """Hot pages waiting on slow memory for room: a WARNING with the numbers, rate-limited
        per target (tierd.logs)."""
        pl = stats.plan
        if pl is None or not pl.waiting:
            return
        rooms = "; ".join(
            f"node {r.node}: {_size(r.free)} free + {_size(r.reclaimable)} reclaimable page "
            f"cache, keep_free {_size(r.floor)}" for r in pl.rooms)
        for name, n in sorted(pl.waiting.items()):
            ts = stats.targets.get(name)
            fast = _size(ts.fast_pages) if ts is not None else "?"
            sizing = ""
            if ts is not None and ts.need is not None:
                sizing = ("; it would need " + ", ".join(
                    f"{_size(k)} for {int(f * 100)}%" for f, k in zip(NEED_SHARES, ts.need))
                    + " of its accesses")
            self.warn.warning((name, "waiting"),
                              "target %s: %s of hot pages (hotness >= %d) wait on slow memory: no "
                              "room on the fast tier (%s); the target has %s there%s", name,
                              _size(n), pl.hot.get(name, NO_THRESHOLD), rooms, fast, sizing)

    def _note_moves(self, pk: Pack, pages, moved, reasons, levels) -> None:
        """Remember (a sample of) the pages promoted and displaced this interval in a pack,
        by (synthetic) vpn, with the (extended) level they were moved at, for
        ``_judge_moves`` to look at in the next sample."""
        noted = self._noted.setdefault(pk, ([], [], [], []))
        for i, reason in enumerate(("promote", "demote")):
            have = sum(a.size for a in noted[i])
            sel = np.flatnonzero(moved & (reasons == reason))[: max(0, NOTED_MAX - have)]
            if sel.size:
                noted[i].append(pk.state.extents.vpn_of(pages[sel]).astype(np.int64))
                noted[2 + i].append(levels[sel])

    def _judge_moves(self) -> None:
        """Did last interval's moves pay?  The accesses its promoted pages got in this
        sample minus its demoted pages', to the gain model's pace (tierd/engine/gain.py,
        "Thrash")."""
        if not self._noted:
            return
        gained = pages = 0
        expected = 0.0
        for pk, noted in self._noted.items():
            st = pk.state
            # displacements count only as far as they made room for promotions (a demotion
            # whose promotion was cancelled for lack of room is no swap)
            paired = sum(a.size for a in noted[0])
            # promotions ranked by the top counter (a hot set bigger than the fast tier):
            # judged in accesses, not accessed bits (gain.py, "Overflow")
            rates = bool(noted[2]) and bool((np.concatenate(noted[2]) >= LEVELS).any())
            for i, sign in ((0, 1), (1, -1)):
                if not noted[i] or not paired:
                    continue
                # pages of processes gone since (or moved out of the pack) are not tracked here
                flat = st.extents.flat_of(np.concatenate(noted[i])[:paired])
                lv = np.concatenate(noted[2 + i])[:paired][flat >= 0]
                flat = flat[flat >= 0]
                acc = int(test_bits(st.hist[st.head], flat).sum())
                gained += sign * (group_rate(flat.size, acc) if rates else acc)
                pages += flat.size
                expected += (self.gain.expected(lv, [], rates) if sign > 0
                             else self.gain.expected([], lv, rates))
        self._noted.clear()
        self.gain.moved(gained, expected, pages, self.policy.min_gain)

    def _recheck(self, stats: IntervalStats) -> None:
        """Ask the kernel again where a rotating slice of every pack's known pages are and
        follow what it moved behind tierd's back.  Bounded: RECHECK_DIV of the query
        budget, shared by size."""
        if self.seq % RECHECK_EVERY:
            return
        total = sum(pk.state.words for pk in self.packs) * PAGES_PER_WORD
        if not total:
            return
        budget = RECHECK_EVERY * max(RECHECK_MIN, self.query_budget // RECHECK_DIV)
        share = min(1.0, budget / total)
        for pk in self.packs:
            st = pk.state
            pages = st.recheck_pages(max(1, math.ceil(st.words * share)))
            spans = pk.members_of(pages)
            if not spans:
                continue
            who = [m for m, _, _ in spans]
            bounds = np.array([spans[0][1]] + [b for _, _, b in spans], dtype=np.int64)
            pages = pages[bounds[0]: bounds[-1]]
            bounds -= bounds[0]
            status, counts, ran = self._run_jobs(st, pages, who, bounds, None, None)
            status[~ran] = -1
            stats.queries.calls += counts.calls
            stats.queries.seconds += counts.seconds
            stats.rechecked += int(ran.sum())
            known = st.node_of(pages)
            moved = (status >= 0) & (status != known)
            if moved.any():
                p, was = pages[moved], known[moved]
                from_cls = np.full(p.size, st.unknown, dtype=np.int64)
                for i, nid in enumerate(st.node_ids):
                    from_cls[was == nid] = i
                st.set_node(p, st.hotness(p), from_cls, status[moved])
                stats.stale += int(moved.sum())
                pk.version += 1

    def _count_unmatched(self, refs: Sequence[ProcessRef]) -> None:
        """Intervals in a row in which each target matched no process; a target reaching
        NO_MATCH_INTERVALS is logged once (all such targets of an interval in one line) until
        it matches again."""
        matched = {r.target for r in refs}
        names = [t.name for t in self.policy.targets]
        self.unmatched = {n: 0 if n in matched else self.unmatched.get(n, 0) + 1 for n in names}
        now = [n for n in names if self.unmatched[n] == NO_MATCH_INTERVALS]
        if not now:
            return
        shown = ", ".join(now[:5]) + (f" (and {len(now) - 5} more)" if len(now) > 5 else "")
        whole = ("the policy matches no process at all: " if not matched
                 and all(v >= NO_MATCH_INTERVALS for v in self.unmatched.values()) else "")
        log.warning("%starget(s) %s matched no process for %d intervals: check their selectors "
                    "in %s (tierd check-config shows them)", whole, shown, NO_MATCH_INTERVALS,
                    self.policy.source)

    def _measure_speed(self, m: MoveCounts) -> None:
        """Running estimate of move_pages' speed (pages/s), from intervals that moved enough
        to measure it; the next byte budget is cut to what that speed moves in time."""
        done = m.moved + m.elsewhere
        if m.seconds <= 0 or done <= 0:
            return
        speed = done / m.seconds
        # A small move in a short time says little (the fixed cost per call dominates) and
        # may only raise the estimate: done / seconds is a lower bound of the speed.  Were it
        # ignored, one slow interval would cap every later budget below SPEED_MIN_PAGES and
        # no later interval would measure again (seen in the rig: 88 pages/s for good).
        if (done < SPEED_MIN_PAGES and m.seconds < self.covered / 2
                and (self.move_speed is None or speed <= self.move_speed)):
            return
        self.move_speed = speed if self.move_speed is None else (self.move_speed + speed) / 2

    def _sync(self, refs: Sequence[ProcessRef]) -> int:
        """New processes join, vanished ones leave.  Returns how many left."""
        current = {r.key: r for r in refs}
        gone = [k for k in self.units if k not in current]
        for k in gone:
            self._drop(k)
        for k, r in current.items():
            if k in self.units:
                self.units[k].ref = r  # the target may be renamed by a reload
            else:
                self.units[k] = Tracked(r)
        return len(gone)

    def _drop(self, key) -> None:
        unit = self.units.pop(key, None)
        if unit is not None:
            unit.close()

    def _stage(self, unit: Tracked, node_ids) -> float:
        """Read the maps of one process and stage its extents in its pack (joining one if
        new).  Returns the time spent in our own arithmetic."""
        vmas = self.kernel.procfs.maps(unit.pid)
        granular = getattr(self.reader, "page_granular", False)
        if unit.mapped is not None and unit.mapped[0] is vmas and unit.mapped[1] == granular:
            ext = unit.mapped[2]  # the same mappings as last time (ProcFS.maps kept them)
        else:
            ext = Extents.from_vmas(vmas, granular, shared=False)
            unit.spans = [(("shared", v.dev, v.inode), v.start // PAGE_SIZE, v.end // PAGE_SIZE,
                           v.offset // PAGE_SIZE) for v in vmas if is_shared(v)]
            unit.mapped = (vmas, granular, ext)
        if ext.pages > TRACK_FLOOR_PAGES:
            ext = self._bounded(unit, ext)
        t0 = self.clock()
        unit.reader, unit.huge = self.reader, self.huge
        self.packs.stage(unit, ext, self.policy.window, node_ids, self.chunk_words)
        return self.clock() - t0

    def _bounded(self, unit: Tracked, ext: Extents) -> Extents:
        """``ext`` within TRACK_RSS_FACTOR x the process's resident pages (at least
        TRACK_FLOOR_PAGES): the largest ranges are left out (sparse reservations are the
        large ones), with a warning naming the process."""
        rss = int(self.kernel.procfs.status(unit.pid).get("VmRSS", 0)) // PAGE_SIZE
        cap = max(TRACK_FLOOR_PAGES, TRACK_RSS_FACTOR * rss) // PAGES_PER_WORD
        if ext.words <= cap:
            return ext
        order = np.argsort(ext.nwords, kind="stable")  # smallest first
        keep = np.zeros(len(ext), dtype=bool)
        keep[order[np.cumsum(ext.nwords[order]) <= cap]] = True
        left = int(ext.nwords[~keep].sum()) * PAGES_PER_WORD
        self.warn.warning((unit.ref.target, "address space bounded"),
                          "pid %d (%s): %s of address space for %s resident: %d largest range(s), "
                          "%s, not tracked (state is bounded to %dx the resident set, at least %s)",
                          unit.pid, unit.ref.target, _size(ext.pages), _size(rss),
                          int((~keep).sum()), _size(left), TRACK_RSS_FACTOR, _size(TRACK_FLOOR_PAGES))
        return Extents(ext.word_start[keep], ext.nwords[keep], ext.edge_pages, ext.holes)

    def _tracked(self):
        """Every Tracked: the processes, then the shared objects."""
        return [*self.units.values(), *self.shared.values()]

    def _stage_shared(self, node_ids) -> float:
        """The shared objects the processes' shared mappings name (pack.py): new ones join a
        pack, ones no tracked process maps any more are closed.  Each counts in its first
        mapper's target; its extents are the page offsets mapped.  Returns our time."""
        t0 = self.clock()
        mapped: dict = {}
        for u in self.units.values():
            for key, lo, hi, pg in u.spans:
                mapped.setdefault(key, []).append((u, lo, hi, pg))
        if len(mapped) > SHARED_MAX:  # a process can map 65k memfds: the largest are tracked
            size = {k: max(hi - lo for _, lo, hi, _ in v) for k, v in mapped.items()}
            order = sorted(mapped, key=lambda k: (-size[k], k))
            self.warn.warning(("*", "shared objects"), "%d shared memory objects are mapped by "
                              "targets: the %d largest are tracked, the others (%s each or less) "
                              "are not", len(mapped), SHARED_MAX, _size(size[order[SHARED_MAX]]))
            mapped = {k: mapped[k] for k in order[:SHARED_MAX]}
        for key in [k for k in self.shared if k not in mapped]:
            self.shared.pop(key).close()
        for key, spans in mapped.items():
            first = spans[0][0]
            ref = SharedRef(key[1], key[2], first.pid, first.ref.target, f"shared {key[1]}:{key[2]}")
            obj = self.shared.get(key)
            if obj is None:
                obj = self.shared[key] = Tracked(ref)
            obj.ref = ref
            obj.mappers = [(u.pid, lo, hi, pg) for u, lo, hi, pg in spans]
            ext = Extents(*word_extents([pg * PAGE_SIZE for _, _, _, pg in spans],
                                        [(pg + hi - lo) * PAGE_SIZE for _, lo, hi, pg in spans]))
            self.packs.stage(obj, ext, self.policy.window, node_ids, self.chunk_words)
        return self.clock() - t0

    def _read_shared(self, obj: Tracked, st: PageState, buffers, stats) -> None:
        """A shared object's sample: every mapper's bits of the object's pages, OR-ed (a page
        is present if any mapper maps it, accessed if any mapper accessed it).  A mapper gone
        is left out (it is dropped at its own read); one that cannot be read is counted and
        warned about like a process's range, and the object's last sample is OR-ed in: a
        blind spot must neither make its pages look cold nor absent (forgetting them)."""
        present, accessed = buffers
        lo_w, hi_w = obj.off, obj.off + obj.words
        present[lo_w:hi_w] = 0
        accessed[lo_w:hi_w] = 0
        # which mapper has each page in its page tables: moves and node queries go through
        # it (a mapper that never touched a page, e.g. PostgreSQL's postmaster and its
        # buffer pool, has no PTE there, and move_pages(2) answers -ENOENT through it)
        via = np.full(obj.pages, -1, dtype=np.int16)
        claimed = np.zeros(obj.words, dtype=np.uint64)
        blind = False
        for i, (pid, lo, hi, pg) in enumerate(obj.mappers):
            ws, we = lo // PAGES_PER_WORD, -(-hi // PAGES_PER_WORD)
            # a page-granular reader leaves the neighbours in the edge words alone (their
            # Accessed bits are the process's own segment's); a word-clearing one is not
            # given those words for the process's own segment (Extents.from_vmas)
            skip = [(a, b) for a, b in ((ws * PAGES_PER_WORD, lo), (hi, we * PAGES_PER_WORD)) if b > a]
            try:
                p, a = (self.reader.sample(pid, ws, we - ws, skip=skip)
                        if skip and getattr(self.reader, "page_granular", False)
                        else self.reader.sample(pid, ws, we - ws))
            except GONE as e:
                log.debug("pid %d: shared mapping %#x not sampled: %s", pid, lo << PAGE_SHIFT, e)
                continue
            except OSError as e:
                self._unsampled(obj, ws, we - ws, e, stats)
                blind = True
                continue
            for start, words in carry_words(p, ws, lo, hi, pg, obj.ext):
                present[lo_w + start: lo_w + start + words.size] |= words
                if i >= np.iinfo(via.dtype).max:
                    continue
                new = words & ~claimed[start: start + words.size]
                claimed[start: start + words.size] |= new
                nz = np.flatnonzero(new)
                if nz.size:
                    bits = np.unpackbits(new[nz].view(np.uint8), bitorder="little").reshape(nz.size, 64)
                    rows, cols = np.nonzero(bits)
                    via[(start + nz[rows]) * PAGES_PER_WORD + cols] = i
            for start, words in carry_words(a, ws, lo, hi, pg, obj.ext):
                accessed[lo_w + start: lo_w + start + words.size] |= words
        if blind:
            present[lo_w:hi_w] |= st.present[lo_w:hi_w]
            accessed[lo_w:hi_w] |= st.hist[st.head][lo_w:hi_w]
        obj.via = via

    def _sample(self, node_ids, stats: IntervalStats) -> float:
        """Sample every pack's members into its shared state and commit it once.  Returns
        the time spent in our own arithmetic."""
        ours = 0.0
        nodes_of = self._node_source()
        self.packs.prune()
        for pk in self.packs:
            t0 = self.clock()
            pk.layout(node_ids)
            ours += self.clock() - t0
            st = pk.state
            present, accessed = buffers = st.sample_buffers()
            for m in list(pk.members.values()):
                if m.seg is None:
                    continue
                if m.shared:
                    self._read_shared(m, st, buffers, stats)
                    continue
                try:
                    self._read(m, st, buffers, stats)
                except GONE:  # its pages vanish from the pack with this commit
                    present[m.off: m.off + m.ext.words] = 0
                    accessed[m.off: m.off + m.ext.words] = 0
                    self._drop(m.key)
                    stats.dropped += 1
            t0 = self.clock()
            st.commit()
            for m in pk.members.values():
                m.samples += 1
            pk.version += 1
            if nodes_of is not None:
                # processes only: a shared object's extents are page offsets in the object,
                # not addresses of any one mapper (its pages are learnt by the queries,
                # through the mapper that has each page)
                st.learn_nodes([(m.pid, m.ext, m.off) for m in pk.members.values()
                                if m.seg is not None and not m.shared],
                               nodes_of, getattr(self.reader, "nodes_scope", "range"))
            ours += self.clock() - t0
        self.packs.prune()
        return ours

    def _read(self, unit: Tracked, st: PageState, buffers, stats) -> None:
        """Read the access bits of ``unit``'s ranges into ``buffers`` (its pack's present and
        accessed sample buffers) at its segment.  GONE propagates; any other error loses
        that range only."""
        present, accessed = buffers
        ext = unit.ext
        for i, (ws, nw, off) in enumerate(zip(ext.word_start.tolist(), ext.nwords.tolist(),
                                              ext.offset.tolist())):
            lo = unit.off + off
            holes = ext.holes_of(i)  # only for a page-granular reader (idle_bitmap v3)
            try:
                p, a = (self.reader.sample(unit.pid, ws, nw, skip=holes) if holes
                        else self.reader.sample(unit.pid, ws, nw))
            except GONE:
                raise
            except OSError as e:  # this range only (e.g. unmapped between maps and read)
                self._unsampled(unit, ws, nw, e, stats)
                # A missed sample repeats the last one for this range: a blind spot must
                # neither make pages look cold (demote) nor new (forget their history).
                p = st.present[lo: lo + nw].copy()
                a = st.hist[st.head][lo: lo + nw].copy()
            present[lo: lo + nw] = p
            accessed[lo: lo + nw] = a

    def _unsampled(self, unit: Tracked, ws: int, nw: int, err: OSError, stats):
        """A range whose access bits could not be read: count it where operators look (the
        interval line, IntervalStats/TargetStats.unsampled_*) and warn, rate-limited."""
        ts = stats.targets.setdefault(unit.ref.target, TargetStats())
        for s in (stats, ts):
            s.unsampled_ranges += 1
            s.unsampled_pages += PAGES_PER_WORD * nw
        # per (target, errno): a reader that fails on every range (permissions, a broken
        # interface) is seen at once, then summed up every REPEAT_EVERY
        self.warn.warning((unit.ref.target, "range not sampled", _reason(err)),
                          "pid %d (%s): range %#x (%s) not sampled: %s", unit.ref.pid,
                          unit.ref.target, ws * PAGES_PER_WORD << PAGE_SHIFT, _size(PAGES_PER_WORD * nw), err)

    def _node_source(self):
        """The reader's ``nodes`` (None without one), failing soft: a page source that
        cannot be read (a process gone meanwhile, numa_maps missing) leaves those pages
        unknown for the move_pages queries, and never fails the sample or the interval."""
        nodes_of = getattr(self.reader, "nodes", None)
        if nodes_of is None:
            return None

        def nodes(pid: int, word_start: int, nwords: int) -> np.ndarray:
            try:
                return nodes_of(pid, word_start, nwords)
            except (OSError, ParseError, OverflowError) as e:  # Overflow: a node id past int16
                log.debug("pid %d: nodes not read: %s", pid, e)
                return np.full(nwords * PAGES_PER_WORD, -1, dtype=np.int16)

        return nodes

    def _counts(self, units: Sequence[Tracked], stats: IntervalStats | None = None) -> list[UnitCounts]:
        """Histograms per process; movable: minus pages in retry backoff, and nothing before
        a second sample (the first one carries no recency: no page has history yet), and
        no shared object's pages without CAP_SYS_NICE (counted in ``stats``, warned once)."""
        out = []
        for u in units:
            h = u.histograms()
            movable = h - u.backoff_histograms() if u.samples >= 2 else np.zeros_like(h)
            if u.shared and not self._movable(u):
                if stats is not None:
                    stats.shared_unmovable += int(h.sum())
                    self._warn_shared(u)
                movable = np.zeros_like(h)
            top = u.top_histograms if u.state.has_top else None
            out.append(UnitCounts(u.key, u.ref.target, h, movable, top))
        return out

    def _movable(self, obj: Tracked) -> bool:
        """Can a shared object be moved?  With CAP_SYS_NICE (MPOL_MF_MOVE_ALL) yes; without,
        only while one tracked process maps it (plain MPOL_MF_MOVE moves a page mapped once;
        an untracked second mapper makes the kernel refuse it: EACCES, backed off)."""
        return self.move_shared or len(obj.mappers) == 1

    def _warn_shared(self, obj: Tracked) -> None:
        if self._warned_shared:
            return
        self._warned_shared = True
        log.warning("target %s: shared memory (%s, mapped by %d tracked process(es)) is not moved: "
                    "a page mapped by several processes moves only with MPOL_MF_MOVE_ALL, which "
                    "needs CAP_SYS_NICE (systemd/tierd.service: CapabilityBoundingSet); its pages "
                    "are counted in tierd_shared_pages{state=\"unmovable\"}", obj.ref.target,
                    obj.ref.name, len(obj.mappers))

    def _gain(self, node_ids, fast, slow):
        """This interval's access-rate estimates (tierd.engine.gain), or None: the level
        rule."""
        states = [pk.state for pk in self.packs if pk.state.node_ids == tuple(node_ids)]
        est = sum([st.est for st in states])
        if not isinstance(est, np.ndarray):
            return None
        # the top level's pages by top counter (state.py), where every state keeps one
        est_top = sum([st.est_top for st in states]) if all(st.has_top for st in states) else None
        cls = {n: i for i, n in enumerate(node_ids)}
        return self.gain.update(est, [cls[n] for n in fast if n in cls],
                                [cls[n] for n in slow if n in cls], self.policy.min_gain, est_top)

    def _execute(self, requests: Sequence[Request], stats: IntervalStats, query: bool = False) -> int:
        """Select the pages for ``requests`` and run move_pages on them, pack by pack (in
        the order of each pack's first request), at most SLICE_PAGES pages at a time
        (bounded memory at any scale).  Returns the pages moved (for queries: learned)."""
        by_pack: dict = {}
        for r in requests:
            unit = self.units.get(r.unit) or self.shared.get(r.unit)
            if unit is not None and unit.pack is not None and unit.seg is not None:
                by_pack.setdefault(id(unit.pack), (unit.pack, []))[1].append((unit, r))
        return sum(self._execute_pack(pk, reqs, stats, query) for pk, reqs in by_pack.values())

    def _execute_pack(self, pk: Pack, reqs: list, stats: IntervalStats, query: bool) -> int:
        """``_execute`` for the members of one pack: one selection over the shared state per
        slice, the members' move_pages calls in one executor pass, one fold of all results."""
        st = pk.state
        reqs.sort(key=lambda x: x[0].seg)  # stable: each member's requests stay in order
        seg = np.array([m.seg for m, _ in reqs], dtype=np.int64)
        cls = np.array([st.class_of(r.node) for _, r in reqs], dtype=np.int64)
        level = np.array([r.level for _, r in reqs], dtype=np.int64)
        dests = np.array([r.dest for _, r in reqs], dtype=np.int32)
        reasons = np.array([r.reason for _, r in reqs])
        left = np.array([r.count for _, r in reqs], dtype=np.int64)
        members = {m.seg: m for m, _ in reqs}
        done = 0
        while left.any() and not self.should_stop():
            # a selected page leaves its (class, level) when it moves, is learned, fails
            # (backoff) or is absent, so the next slice finds the next pages
            pages, sizes = st.select_segments(seg, cls, level, left, limit=SLICE_PAGES)
            if not sizes.sum():
                break
            dest = None if query else np.repeat(dests, sizes)
            # one job per member (a shared object's: per mapper); its requests are adjacent
            per = np.bincount(seg, weights=sizes, minlength=int(seg.max()) + 1).astype(np.int64)
            who = [members[s] for s in sorted(members) if per[s]]
            bounds = np.concatenate(([0], np.cumsum([per[m.seg] for m in who]))).astype(np.int64)
            status, counts, ran = self._run_jobs(st, pages, who, bounds, dest, stats)
            (stats.queries if query else stats.moves).add(counts)
            done += counts.learned if query else counts.moved
            # a process found gone was dropped (closed): its pages stay in the state until
            # the next layout, and its pid must not be asked again (it may be reused)
            left[[m.pack is None for m, _ in reqs]] = 0
            # folded in per (class, level): the pages of one cell are ascending in this
            # order (requests by segment, each segment's slices of the cell in address
            # order), so each fold is one sorted run with scalar level and class
            kid = cls * (LEVELS + TOP_LEVELS) + level
            page_kid = np.repeat(kid, sizes)
            for k in np.unique(kid[sizes > 0]).tolist():
                sel = np.flatnonzero((page_kid == k) & ran)
                if sel.size:
                    self._apply(st, pages[sel], k % (LEVELS + TOP_LEVELS), k // (LEVELS + TOP_LEVELS),
                                status[sel], None if dest is None else dest[sel])
            if not query:
                self._note_moves(pk, pages, (status == dest) & ran, np.repeat(reasons, sizes),
                                 np.repeat(level, sizes))
            pk.version += 1
            left -= sizes
            if counts.not_tried:
                break
        return done

    def _run_jobs(self, st: PageState, pages, who: Sequence[Tracked], bounds, dest, stats):
        """move_pages (``dest`` None: a query) on flat pages of a pack, member ``who[i]``'s at
        pages[bounds[i]:bounds[i + 1]]: one executor pass over every member's jobs (a
        process: its own addresses; a shared object: through its mappers, with
        MPOL_MF_MOVE_ALL).  Returns (status per page, counts, ran: pages whose status
        counts).  A process gone is dropped; other refusals are warned about (``stats``:
        not for rechecks)."""
        base = np.repeat(np.array([m.base_vpn for m in who], dtype=np.int64), np.diff(bounds))
        vpn = st.extents.vpn_of(pages).astype(np.int64) - base  # each member's own vpns
        addrs = vpn.astype(np.uint64) << np.uint64(PAGE_SHIFT)
        jobs, order, owner = [], [], []
        for m, a, b in zip(who, bounds[:-1].tolist(), bounds[1:].tolist()):
            if not m.shared and (dest is None or not self.move_shared):  # its own addresses
                jobs.append((m.pid, addrs[a:b], None if dest is None else dest[a:b], MPOL_MF_MOVE))
                order.append(slice(a, b))
                owner.append(m)
                continue
            if not m.shared:
                # promotions with MPOL_MF_MOVE_ALL: a page of a private file mapping (program
                # text, libraries) that other processes map too is refused to MPOL_MF_MOVE
                # (EACCES); on fast memory it serves them too.  Demotions stay MPOL_MF_MOVE:
                # a page cold here may be hot in a process tierd does not sample.
                up = np.isin(dest[a:b], self.fast_ids)
                for sel, flags in ((up, MPOL_MF_MOVE_ALL), (~up, MPOL_MF_MOVE)):
                    idx = np.flatnonzero(sel) + a
                    if idx.size:
                        jobs.append((m.pid, addrs[idx], dest[idx], flags))
                        order.append(idx)
                        owner.append(m)
                continue
            flags = MPOL_MF_MOVE_ALL if self.move_shared else MPOL_MF_MOVE
            for pid, idx, maddrs in m.address_jobs(vpn[a:b]):
                idx = idx + a
                jobs.append((pid, maddrs, None if dest is None else dest[idx], flags))
                order.append(idx)
                owner.append(m)
        got, counts, errors = self.executor.run_many(jobs, query=dest is None)
        if all(isinstance(o, slice) for o in order):  # no shared object: page order
            order = np.arange(pages.size)
        else:
            order = np.concatenate([np.arange(o.start, o.stop) if isinstance(o, slice) else o
                                    for o in order]) if order else np.zeros(0, np.int64)
        status = np.full(pages.size, NOT_TRIED, dtype=np.int32)
        status[order] = got
        ran = np.zeros(pages.size, dtype=bool)  # shared pages no mapper maps: not tried
        ran[order] = True
        if stats is not None and dest is not None and not (status == dest).all():
            self._warn_refused(who, bounds, status)
        jb = np.cumsum([0] + [j[1].size for j in jobs])
        for i, e in errors.items():
            # a refused job keeps what moved before the error (executor.run_many)
            idx = order[jb[i]: jb[i + 1]]
            ran[idx] = False if isinstance(e, GONE) else status[idx] != NOT_TRIED
            m = owner[i]
            if isinstance(e, GONE):
                # a shared object's mapper is dropped at its own sample
                if not m.shared and m.key in self.units:
                    self._drop(m.key)
                    if stats is not None:
                        stats.dropped += 1
            elif stats is not None:  # PermissionError, MovePagesError: this process, this time
                self.warn.warning((m.ref.target, "move_pages", _reason(e)),
                                  "pid %d (%s): move_pages: %s", jobs[i][0], m.ref.name or m.ref.target, e)
        return status, counts, ran

    def _warn_refused(self, who: Sequence[Tracked], bounds, status) -> None:
        """A rate-limited WARNING per target whose pages the kernel refused to move, with the
        counts by errno and what each means: a refused page only waits ``retry_after`` and
        is tried again, so without this line a target whose pages can never move (shared
        without CAP_SYS_NICE, pinned by a device, a full node) shows only in a counter."""
        per: dict[str, np.ndarray] = {}
        for m, a, b in zip(who, bounds[:-1].tolist(), bounds[1:].tolist()):
            s = status[a:b]
            row = np.array([np.count_nonzero(s == -e) for e in _REFUSED_ERRNOS], np.int64)
            if row.any():
                per[m.ref.target] = per.get(m.ref.target, 0) + row
        for target, row in per.items():
            why = "; ".join(f"{n} {errno.errorcode[e]} ({_REFUSED_ERRNOS[e]})"
                            for e, n in zip(_REFUSED_ERRNOS, row.tolist()) if n)
            self.warn.warning((target, "pages refused"), "target %s: the kernel refused to "
                              "move %d pages in interval %d: %s; they are tried again after "
                              "retry_after", target, int(row.sum()), self.seq, why)

    def _apply(self, st: PageState, pages, level, cls, status, dest) -> None:
        """Fold move_pages results back into the state (level, class and dest: scalars or
        one per page)."""
        if dest is not None and (status == dest).all():  # the common case: everything moved
            st.set_node(pages, level, cls, dest)
            st.succeed(pages)
            return
        m = outcome_masks(status, dest)
        ok = m["ok"]
        level = np.broadcast_to(np.asarray(level), pages.shape)
        cls = np.broadcast_to(np.asarray(cls), pages.shape)
        st.set_node(pages[ok], level[ok], cls[ok], status[ok])
        absent = m["absent"]
        st.mark_absent(pages[absent], level[absent], cls[absent])
        lost = m["unreported"]  # no status at all: where it is must be learnt again
        st.set_node(pages[lost], level[lost], cls[lost], -1)
        failed = m["busy"] | m["nomem"] | m["denied"] | m["other"]
        if dest is not None:
            failed |= absent  # do not retry an absent page every interval
            st.succeed(pages[ok])
        st.fail(pages[failed], self.seq, self.policy.retry_after)

    def _fill_stats(self, stats: IntervalStats, live, node_ids, fast) -> None:
        stats.processes = len(self.units)
        for spec in self.policy.targets:
            stats.targets.setdefault(spec.name, TargetStats())  # may hold unsampled_* already
        for nid in list(node_ids) + [UNKNOWN]:
            stats.nodes[nid] = np.zeros(LEVELS, np.int64)
        fast_cls = [i for i, n in enumerate(node_ids) if n in fast]
        # summed per (target, node layout) first: hundreds of packed processes, few numpy calls
        groups: dict = {}
        nprocs: dict = {}
        for u in live:
            h = u.histograms()
            groups.setdefault((u.ref.target, u.state.node_ids), []).append(h)
            if u.shared:
                stats.shared_pages += int(h.sum())
            nprocs[u.ref.target] = nprocs.get(u.ref.target, 0) + (not u.shared)
            stats.tracked_pages += u.pages
        stats.state_bytes = sum(pk.state.nbytes for pk in self.packs)
        for (target, ids), hs in groups.items():
            h = np.sum(hs, axis=0) if len(hs) > 1 else hs[0]
            ts = stats.targets.setdefault(target, TargetStats())
            ts.processes = nprocs.get(target, 0)
            ts.hist = ts.hist + h.sum(axis=0)
            ts.pages += int(h.sum())
            for i, nid in enumerate(ids):
                stats.nodes.setdefault(nid, np.zeros(LEVELS, np.int64))
                stats.nodes[nid] = stats.nodes[nid] + h[i]
                ts.by_node[nid] = ts.by_node.get(nid, 0) + h[i]
                if i in fast_cls and nid in fast:
                    ts.fast_pages += int(h[i].sum())
            stats.nodes[UNKNOWN] = stats.nodes[UNKNOWN] + h[-1]
            ts.by_node[UNKNOWN] = ts.by_node.get(UNKNOWN, 0) + h[-1]
        for name, n in self.unmatched.items():
            if name in stats.targets:
                stats.targets[name].unmatched_intervals = n
        if stats.plan is not None:
            for name, ts in stats.targets.items():
                ts.hot = stats.plan.hot.get(name, NO_THRESHOLD)
                ts.cold = stats.plan.cold.get(name, NO_THRESHOLD)
                ts.waiting = stats.plan.waiting.get(name, 0)

    def close(self) -> None:
        for key in list(self.units):
            self._drop(key)
        for obj in self.shared.values():
            obj.close()
        self.shared.clear()
        _close_all(self.reader)
        close = getattr(self.resolver, "close", None)  # it holds the processes it found
        if close is not None:
            close()


def _close_all(reader) -> None:
    """Close everything a reader holds (a fake or simulated reader may hold nothing)."""
    close_all = getattr(reader, "close_all", None)
    if close_all is not None:
        close_all()


_REFUSED_ERRNOS = {  # per-page move_pages errors worth an operator's attention, and why
    errno.EACCES: "mapped by other processes: moving it needs MPOL_MF_MOVE_ALL, CAP_SYS_NICE",
    errno.EPERM: "not permitted",
    errno.EBUSY: "locked, under writeback or pinned by a device",
    errno.ENOMEM: "the destination node is full",
}


def _reason(err: BaseException) -> str:
    """The reason part of a rate-limit key: the errno's name, else the exception type."""
    code = getattr(err, "errno", None)
    return errno.errorcode.get(code, type(err).__name__) if code else type(err).__name__


class Daemon:
    """The interval loop around an Engine, with stop and reload events."""

    def __init__(
        self,
        engine: Engine,
        *,
        loader: Callable[[str], object] | None = None,
        observers: Sequence[Observer] = (),
        stop: threading.Event | None = None,
        reload: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_failed: int = MAX_FAILED_INTERVALS,
        heartbeat: float | None = None,
    ) -> None:
        if loader is None:
            from tierd.policy import load_policy

            loader = load_policy
        self.engine = engine
        self.loader = loader
        self.observers = list(observers)
        self.stop = stop if stop is not None else threading.Event()
        self.reload_requested = reload if reload is not None else threading.Event()
        self.clock = clock
        self.max_failed = max_failed
        self.failed = False  # set when run() gave up after max_failed failed intervals
        self.interrupted = False  # stopped by SIGINT (Ctrl-C): tierd run exits 130
        self.pacer: IntervalController | None = None  # interval: auto
        self.heartbeat = heartbeat  # seconds between on_heartbeat calls while idle (None: never)
        self.errors = RateLimiter(log, clock=clock)  # a traceback once per distinct error
        engine.should_stop = self.stop.is_set
        engine.executor.should_stop = self.stop.is_set

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: stop after the current batch; SIGHUP: reload at the next tick."""
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, self._interrupt)
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())

    def _interrupt(self, *_) -> None:
        self.interrupted = True
        self.stop.set()

    def _notify(self, method: str, *args) -> None:
        for obs in self.observers:
            try:
                getattr(obs, method)(*args)
            except Exception:  # an observer (metrics, notify) must not stop the daemon
                self.errors.exception("observer %s.%s failed", type(obs).__name__, method)

    def reload(self) -> bool:
        """Re-read the policy file; swap it in whole, or keep the old one on any error."""
        self._notify("on_reloading")
        source = self.engine.policy.source
        try:
            policy = self.loader(source)
            self.engine.set_policy(policy)
        except Exception as e:  # PolicyError (FILE:LINE: KEY: msg), OSError, ValueError ...
            log.error("reload of %s failed, keeping the current policy: %s", source, e)
            self._notify("on_reloaded", self.engine.policy, e)
            return False
        log.info("reloaded policy from %s", source)
        self._notify("on_reloaded", policy, None)
        return True

    def next_interval(self, stats: IntervalStats | None) -> float:
        """Seconds until the next interval: the policy's, or with ``interval: auto`` the
        pacing controller's (tierd/engine/interval.py).  The engine's next move budget
        covers exactly this long."""
        pol = self.engine.policy
        if not pol.interval_auto:
            self.pacer = None
            self.engine.interval = None
            return pol.interval
        bounds = Bounds(pol.interval_min, pol.interval, pol.cpu_budget)
        if self.pacer is None:
            self.pacer = IntervalController(bounds)
        self.pacer.configure(bounds)
        if stats is None:  # the interval failed: nothing observed, back off
            interval = pol.interval
        else:
            interval = self.pacer.next(observe(stats), self.clock())
        self.engine.interval = interval
        return interval

    def tick(self) -> IntervalStats | None:
        """One interval; an unexpected error is logged and the daemon carries on."""
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            self.reload()
        try:
            stats = self.engine.step()
        except Exception:
            self.errors.exception("interval %d failed", self.engine.seq)
            return None
        self._notify("on_interval", stats)
        return stats

    def _wait(self, until: float) -> bool:
        """Sleep until ``until`` (clock time) or a stop; True if stopped.  With a heartbeat,
        wake up at least that often to tell the observers the loop is alive."""
        self._notify("on_heartbeat")
        if self.heartbeat is None:
            return self.stop.wait(max(0.0, until - self.clock()))
        while not self.stop.wait(max(0.0, min(self.heartbeat, until - self.clock()))):
            if self.clock() >= until:
                return False
            self._notify("on_heartbeat")
        return True

    def run(self, max_intervals: int | None = None) -> None:
        """Sample now, then every policy interval until ``stop`` is set, or until
        ``max_failed`` intervals in a row failed (then ``failed`` is set)."""
        self._notify("on_ready", self.engine)
        done = 0
        failed_in_a_row = 0
        due = self.clock()
        try:
            while True:
                stats = self.tick()
                failed_in_a_row = failed_in_a_row + 1 if stats is None else 0
                if failed_in_a_row >= self.max_failed:
                    log.error("%d intervals in a row failed: stopping", failed_in_a_row)
                    self.failed = True
                    break
                done += 1
                if max_intervals is not None and done >= max_intervals:
                    break
                due += self.next_interval(stats)
                if self._wait(due):
                    break
                if due < self.clock() - self.engine.policy.interval:
                    due = self.clock()  # fell behind (a slow interval): do not burst
        finally:
            self._notify("on_stopping")
            self.engine.close()


# ---------------------------------------------------------------------------------------------
# tierd run


def _positive_int(text: str) -> int:
    """argparse type for counts: 0 or a negative number would run nothing and exit 0."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run the tiering daemon: every interval, sample the target processes' page accesses, "
        "keep the hottest pages on the fast memory nodes and demote cold ones, within the "
        "policy's watermarks and migration rate.  SIGHUP reloads the policy file, SIGTERM "
        "stops after the current move_pages batch."
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE",
                        help=f"policy file (default {DEFAULT_CONFIG})")
    parser.add_argument("--intervals", type=_positive_int, default=None, metavar="N",
                        help="stop after N intervals (default: run until signalled)")
    parser.add_argument("--log-level", default=None,
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="logging threshold (default: the policy's log_level, INFO: one "
                        "line per interval)")
