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
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tierd.engine.executor import Executor, MoveCounts, outcome_masks
from tierd.engine.hotness import LEVELS
from tierd.engine.huge import SPLIT_SHARE, HugePages
from tierd.engine.interval import Bounds, IntervalController, observe
from tierd.engine.placement import (
    NO_THRESHOLD,
    PAGE_SIZE,
    UNKNOWN,
    Plan,
    Request,
    UnitCounts,
    cap_promotions,
    node_rooms,
    plan,
    plan_queries,
)
from tierd.engine.gain import GainModel
from tierd.engine.pack import Pack, Packs
from tierd.engine.state import CHUNK_WORDS, Extents, PageState
from tierd.engine.targets import GONE, ProcessRef, PsutilResolver
from tierd.logs import RateLimiter

log = logging.getLogger("tierd")

QUERY_MIN = 65536  # node queries per interval at least (256 MiB of address space)
# A target that has matched no process for this many intervals in a row is logged (once, until
# it matches again) and counted in tierd_targets_unmatched (tierd status shows it): a policy
# whose selectors match nothing would otherwise look like a healthy idle daemon.
NO_MATCH_INTERVALS = 12
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
    targets: dict[str, TargetStats] = field(default_factory=dict)
    nodes: dict[int, np.ndarray] = field(default_factory=dict)  # node id (-1 unknown) -> hist
    plan: Plan | None = None
    moves: MoveCounts = field(default_factory=MoveCounts)
    queries: MoveCounts = field(default_factory=MoveCounts)
    promoted: int = 0
    demoted: int = 0
    dropped: int = 0  # processes that exited (or stopped matching)
    primed: int = 0  # processes sampled for the first time (that sample only primes the bits)
    split: int = 0  # huge pages split (tierd/engine/huge.py)
    interval: float = 0.0  # the interval this one's move budget covered (seconds)
    unsampled_ranges: int = 0  # all targets: see TargetStats.unsampled_ranges
    unsampled_pages: int = 0


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
    if s.dropped:
        parts.append(f"exited {s.dropped}")
    if s.split:
        parts.append(f"split {s.split} huge")
    if s.unsampled_ranges:
        parts.append(f"NOT SAMPLED {s.unsampled_ranges} range(s) {_size(s.unsampled_pages)}")
    parts.append(f"engine {s.engine_seconds * 1e3:.0f}ms sample {s.sample_seconds * 1e3:.0f}ms "
                 f"move {s.move_seconds * 1e3:.0f}ms of {s.interval:g}s")
    return ", ".join(parts)


@dataclass
class Unit:
    """One target process and its page state."""

    ref: ProcessRef
    state: PageState | None = None


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
        self.units: dict[tuple, Unit] = {}
        self.packs = Packs()  # small processes in shared state (tierd/engine/pack.py)
        self.seq = 0
        self.gain = GainModel()  # access-rate estimates per (tier, level), across intervals
        self.interval: float | None = None  # set by the Daemon's pacing; None: policy.interval
        self.move_speed: float | None = None  # measured pages/s inside move_pages
        self.huge: HugePages | None = None
        self._set_huge(policy)
        self._warned_single_tier = False
        # repeated warnings: one line per (target, reason) per REPEAT_EVERY, with a count
        self.warn = RateLimiter(log, clock=clock)
        self.unmatched: dict[str, int] = {}  # target -> intervals in a row without a process

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
        for u in self.units.values():
            if u.state is not None:
                u.state.set_window(policy.window)
        for pk in self.packs:
            pk.state.set_window(policy.window)
        if reader is not old_reader:
            for u in self.units.values():
                _close(old_reader, u.ref.pid)

    def _set_huge(self, policy) -> None:
        """Huge page splitting (huge_pages.split), where the kernel facade offers it."""
        if not policy.huge_split or not hasattr(self.kernel, "thp"):
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
        fast, slow = topo.classify(pol.fast_nodes, pol.slow_nodes)
        stats.fast, stats.slow = tuple(fast), tuple(slow)
        stats.memory = {n.id: (n.mem_total, n.mem_free) for n in topo.nodes if n.has_memory}
        node_ids = tuple(n.id for n in topo.nodes if n.has_memory)

        refs = self.resolver.resolve(pol.targets)
        self._count_unmatched(refs)
        stats.dropped = self._sync(refs)
        engine_s = 0.0
        for key in list(self.units):
            unit = self.units[key]
            try:
                engine_s += self._sample(unit, node_ids, stats)
            except GONE:
                self._drop(key)
                stats.dropped += 1
            except OSError as e:  # one process we cannot read (permissions, odd mapping)
                self.warn.warning((unit.ref.target, "not sampled", _reason(e)),
                                  "pid %d (%s): not sampled: %s", unit.ref.pid, unit.ref.target, e)
        engine_s += self._sample_packs(node_ids, stats)
        t1 = self.clock()
        stats.sample_seconds = t1 - t0 - engine_s

        live = [u for u in self.units.values() if u.state is not None and u.state.samples]
        stats.primed = sum(u.state.samples == 1 for u in live)
        for u in live:
            u.state.expire(self.seq, pol.retry_after)
        for pk in self.packs:
            pk.state.expire(self.seq, pol.retry_after)
            pk.version += 1
        if fast and slow and live:
            queries = plan_queries(self._counts(live), self.query_budget)
            self._execute(queries, stats, query=True)
            counts = self._counts(live)
            gain = self._gain(live, node_ids, fast, slow)
            pl = plan(counts, node_ids, topo, fast, slow, pol, self.move_budget, gain)
            stats.plan = pl
            demotions = [r for r in pl.requests if r.reason != "promote"]
            promotions = [r for r in pl.requests if r.reason == "promote"]
            # Time budget: splits and moves together may take as long as the interval their
            # byte budget covers; splitting gets at most SPLIT_SHARE of it (huge.py).
            begun = self.clock()
            if self.huge is not None:  # splits sparsely hot THPs, holds back undecided ones
                stats.split = self.huge.step(
                    [u for u in live if not getattr(u.state, "packed", False)], pl, pol,
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
            log.warning("no slow memory tier (fast nodes %s, slow nodes %s): only observing",
                        list(fast), list(slow))
            self._warned_single_tier = True
        t2 = self.clock()
        stats.move_seconds = stats.moves.seconds + stats.queries.seconds
        stats.engine_seconds = engine_s + (t2 - t1) - stats.move_seconds
        stats.seconds = t2 - t0
        live = [u for u in live if u.ref.key in self.units]  # minus those that exited meanwhile
        self._fill_stats(stats, live, node_ids, fast)
        return stats

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
                self.units[k] = Unit(r)
        return len(gone)

    def _drop(self, key) -> None:
        unit = self.units.pop(key, None)
        self.packs.remove(key)
        if unit is not None:
            _close(self.reader, unit.ref.pid)
            if self.huge is not None:
                self.huge.forget(key)

    def _sample(self, unit: Unit, node_ids, stats: IntervalStats | None = None) -> float:
        """Read the maps and access bits of one process into its state.  Returns the time
        spent in our own arithmetic (the rest is the kernel's)."""
        pid = unit.ref.pid
        ext = Extents.from_vmas(self.kernel.procfs.maps(pid))
        t0 = self.clock()
        if self.packs.wants(unit, ext, len(self.units)):  # sampled with its pack
            self.packs.stage(unit, ext, self.policy.window, node_ids, self.chunk_words)
            return self.clock() - t0
        if self.packs.member(unit.ref.key) is not None:  # grew out of its pack
            self.packs.leave(unit)
        if unit.state is None:
            unit.state = PageState(ext, self.policy.window, node_ids, self.chunk_words)
        else:
            unit.state.set_node_ids(node_ids)
            unit.state.remap(ext)
        ours = self.clock() - t0
        st = unit.state
        self._read(unit, pid, ext, 0, st, st.sample_buffers(), stats)
        t0 = self.clock()
        st.commit()
        nodes_of = self._node_source()
        if nodes_of is not None:
            self._learn_nodes(unit, nodes_of)
        return ours + self.clock() - t0

    def _sample_packs(self, node_ids, stats: IntervalStats) -> float:
        """Sample every pack's members into its shared state and commit it once
        (tierd/engine/pack.py).  Returns the time spent in our own arithmetic."""
        ours = 0.0
        nodes_of = self._node_source()
        for pk in list(self.packs):
            t0 = self.clock()
            pk.layout(node_ids)
            ours += self.clock() - t0
            st = pk.state
            present, accessed = buffers = st.sample_buffers()
            for m in list(pk.members.values()):
                if m.seg is None:
                    continue
                try:
                    self._read(self.units.get(m.key), m.pid, m.ext, m.off, st, buffers, stats)
                except GONE:  # its pages vanish from the pack with this commit
                    present[m.off: m.off + m.ext.words] = 0
                    accessed[m.off: m.off + m.ext.words] = 0
                    self._drop(m.key)
                    stats.dropped += 1
            t0 = self.clock()
            st.commit()
            for m in pk.members.values():
                m.samples += 1
                m.staged = False
            pk.version += 1
            if nodes_of is not None:
                st.learn_nodes([(m.pid, m.ext, m.off) for m in pk.members.values() if m.seg is not None],
                               nodes_of, getattr(self.reader, "nodes_scope", "range"))
            ours += self.clock() - t0
        return ours

    def _read(self, unit: Unit, pid: int, ext: Extents, base: int, st, buffers, stats) -> None:
        """Read the access bits of ``ext``'s ranges into ``buffers`` (a state's present and
        accessed sample buffers) at word ``base`` (0 for a process's own state, its segment
        for a pack member).  GONE propagates; any other error loses that range only."""
        present, accessed = buffers
        for ws, nw, off in zip(ext.word_start.tolist(), ext.nwords.tolist(), ext.offset.tolist()):
            lo = base + off
            try:
                p, a = self.reader.sample(pid, ws, nw)
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

    def _unsampled(self, unit: Unit, ws: int, nw: int, err: OSError, stats):
        """A range whose access bits could not be read: count it where operators look (the
        interval line, IntervalStats/TargetStats.unsampled_*) and warn, rate-limited."""
        if stats is not None:
            ts = stats.targets.setdefault(unit.ref.target, TargetStats())
            for s in (stats, ts):
                s.unsampled_ranges += 1
                s.unsampled_pages += 64 * nw
        # per (target, errno): a reader that fails on every range (permissions, a broken
        # interface) is seen at once, then summed up every REPEAT_EVERY
        self.warn.warning((unit.ref.target, "range not sampled", _reason(err)),
                          "pid %d (%s): range %#x (%s) not sampled: %s", unit.ref.pid,
                          unit.ref.target, ws * 64 << 12, _size(64 * nw), err)

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
            except OSError as e:
                log.debug("pid %d: nodes not read: %s", pid, e)
                return np.full(nwords * 64, -1, dtype=np.int16)

        return nodes

    def _learn_nodes(self, unit: Unit, nodes_of) -> None:
        """A reader that knows each page's node (``nodes(pid, word_start, nwords)`` -> int16
        per page, -1 unknown: pagemap PFNs and the sysfs memory blocks, or numa_maps) saves
        the move_pages queries: pages of unknown node learn it here."""
        st = unit.state
        st.learn_nodes([(unit.ref.pid, st.extents, 0)], nodes_of,
                       getattr(self.reader, "nodes_scope", "range"))

    @staticmethod
    def _counts(units: Sequence[Unit]) -> list[UnitCounts]:
        """Histograms per process; movable: minus pages in retry backoff, and nothing before
        a second sample (the first one carries no recency: no page has history yet)."""
        out = []
        for u in units:
            h = u.state.histograms()
            movable = h - u.state.backoff_histograms() if u.state.samples >= 2 else np.zeros_like(h)
            out.append(UnitCounts(u.ref.key, u.ref.target, h, movable))
        return out

    def _gain(self, units: Sequence[Unit], node_ids, fast, slow):
        """This interval's access-rate estimates (tierd.engine.gain), or None: the level
        rule."""
        est = sum([u.state.est for u in units if u.state.node_ids == tuple(node_ids)
                   and not getattr(u.state, "packed", False)]
                  + [pk.state.est for pk in self.packs if pk.state.node_ids == tuple(node_ids)])
        if not isinstance(est, np.ndarray):
            return None
        cls = {n: i for i, n in enumerate(node_ids)}
        return self.gain.update(est, [cls[n] for n in fast if n in cls],
                                [cls[n] for n in slow if n in cls], self.policy.min_gain)

    def _execute(self, requests: Sequence[Request], stats: IntervalStats, query: bool = False) -> int:
        """Select the pages for ``requests`` and run move_pages on them, process by process
        (in the order of each process's first request), at most SLICE_PAGES pages at a time
        (bounded memory at any scale).  Returns the pages moved (for queries: learned)."""
        by_unit: dict = {}
        for r in requests:
            by_unit.setdefault(r.unit, []).append(r)
        done = 0
        packs_done: set = set()
        for key, reqs in by_unit.items():
            pk = self.packs.where.get(key)
            if pk is not None:  # the whole pack at once, at its first member's turn
                if id(pk) not in packs_done:
                    packs_done.add(id(pk))
                    done += self._execute_pack(pk, by_unit, stats, query)
                continue
            unit = self.units.get(key)
            if unit is None or unit.state is None:
                continue
            st = unit.state
            cls = [st.class_of(r.node) for r in reqs]
            left = [r.count for r in reqs]
            while any(left) and not self.should_stop():
                # a selected page leaves its (class, level) when it moves, is learned, fails
                # (backoff) or is absent, so the next slice finds the next pages
                sel = st.select([(c, r.level, n) for c, r, n in zip(cls, reqs, left)], limit=SLICE_PAGES)
                sizes = [p.size for p in sel]
                if not sum(sizes):
                    break
                pages = np.concatenate(sel)
                addrs = st.extents.vpn_of(pages) << np.uint64(12)
                try:
                    if query:
                        status, counts = self.executor.query(unit.ref.pid, addrs)
                        dest = None
                    else:
                        dest = np.repeat(np.array([r.dest for r in reqs], np.int32), sizes)
                        status, counts = self.executor.move(unit.ref.pid, addrs, dest)
                except GONE:
                    self._drop(key)
                    stats.dropped += 1
                    break
                except OSError as e:  # PermissionError, MovePagesError: this process, this time
                    self.warn.warning((unit.ref.target, "move_pages", _reason(e)),
                                      "pid %d (%s): move_pages: %s", unit.ref.pid, unit.ref.target, e)
                    break
                (stats.queries if query else stats.moves).add(counts)
                done += counts.learned if query else counts.moved
                self._apply(st, pages, np.repeat([r.level for r in reqs], sizes),
                            np.repeat(cls, sizes), status, dest)
                left = [n - k for n, k in zip(left, sizes)]
                if counts.not_tried:
                    break
        return done

    def _execute_pack(self, pk: Pack, by_unit: dict, stats: IntervalStats, query: bool) -> int:
        """``_execute`` for the members of one pack: one selection over the shared state per
        slice, the members' move_pages calls in one executor pass, one fold of all results."""
        st = pk.state
        reqs = [(m, r) for key, rs in by_unit.items() if (m := pk.members.get(key)) is not None
                and m.seg is not None for r in rs]
        reqs.sort(key=lambda x: x[0].seg)  # stable: each member's requests stay in order
        seg = np.array([m.seg for m, _ in reqs], dtype=np.int64)
        cls = np.array([st.class_of(r.node) for _, r in reqs], dtype=np.int64)
        level = np.array([r.level for _, r in reqs], dtype=np.int64)
        dests = np.array([r.dest for _, r in reqs], dtype=np.int32)
        left = np.array([r.count for _, r in reqs], dtype=np.int64)
        done = 0
        while left.any() and not self.should_stop():
            # by member (segment), then request
            pages, sizes = st.select_segments(seg, cls, level, left, limit=SLICE_PAGES)
            if not sizes.sum():
                break
            addrs = pk.real_addresses(pages)
            dest = None if query else np.repeat(dests, sizes)
            # one job per member: its requests are adjacent
            per = np.bincount(seg, weights=sizes, minlength=int(seg.max()) + 1).astype(np.int64)
            who = [m for m in sorted({m.seg: m for m, _ in reqs}.values(), key=lambda m: m.seg)
                   if per[m.seg]]
            bounds = np.concatenate(([0], np.cumsum([per[m.seg] for m in who])))
            jobs = [(m.pid, addrs[a:b], None if dest is None else dest[a:b])
                    for m, a, b in zip(who, bounds[:-1].tolist(), bounds[1:].tolist())]
            status, counts, errors = self.executor.run_many(jobs, query=query)
            ran = np.ones(pages.size, dtype=bool)
            for i, e in errors.items():
                ran[bounds[i]: bounds[i + 1]] = False
                m = who[i]
                if isinstance(e, GONE):
                    self._drop(m.key)
                    stats.dropped += 1
                else:  # PermissionError, MovePagesError: this process, this time
                    unit = self.units.get(m.key)
                    target = unit.ref.target if unit else "?"
                    self.warn.warning((target, "move_pages", _reason(e)),
                                      "pid %d (%s): move_pages: %s", m.pid, target, e)
            (stats.queries if query else stats.moves).add(counts)
            done += counts.learned if query else counts.moved
            # folded in per (class, level): the pages of one cell are ascending in this
            # order (requests by segment, each segment's slices of the cell in address
            # order), so each fold is one sorted run with scalar level and class
            kid = cls * LEVELS + level
            page_kid = np.repeat(kid, sizes)
            for k in np.unique(kid[sizes > 0]).tolist():
                mine = page_kid == k
                if errors:
                    mine &= ran
                sel = np.flatnonzero(mine)
                if sel.size:
                    self._apply(st, pages[sel], k % LEVELS, k // LEVELS, status[sel],
                                None if dest is None else dest[sel])
            pk.version += 1
            left -= sizes
            if counts.not_tried:
                break
        return done

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
        for u in live:
            st = u.state
            g = groups.setdefault((u.ref.target, st.node_ids), [])
            g.append(st.histograms())
            stats.tracked_pages += st.pages
            if not getattr(st, "packed", False):
                stats.state_bytes += st.nbytes
        stats.state_bytes += sum(pk.state.nbytes for pk in self.packs)
        for (target, ids), hs in groups.items():
            h = np.sum(hs, axis=0) if len(hs) > 1 else hs[0]
            ts = stats.targets.setdefault(target, TargetStats())
            ts.processes += len(hs)
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

    def close(self) -> None:
        for key in list(self.units):
            self._drop(key)
        closer = getattr(self.reader, "close_all", None)
        if closer is not None:
            closer()


def _reason(err: BaseException) -> str:
    """The reason part of a rate-limit key: the errno's name, else the exception type."""
    code = getattr(err, "errno", None)
    return errno.errorcode.get(code, type(err).__name__) if code else type(err).__name__


def _close(reader, pid: int) -> None:
    close = getattr(reader, "close", None)
    if close is not None:
        try:
            close(pid)
        except OSError:
            pass


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
        self.pacer: IntervalController | None = None  # interval: auto
        self.heartbeat = heartbeat  # seconds between on_heartbeat calls while idle (None: never)
        self.errors = RateLimiter(log, clock=clock)  # a traceback once per distinct error
        engine.should_stop = self.stop.is_set
        engine.executor.should_stop = self.stop.is_set

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: stop after the current batch; SIGHUP: reload at the next tick."""
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())

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


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run the tiering daemon: every interval, sample the target processes' page accesses, "
        "keep the hottest pages on the fast memory nodes and demote cold ones, within the "
        "policy's watermarks and migration rate.  SIGHUP reloads the policy file, SIGTERM "
        "stops after the current move_pages batch."
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE",
                        help=f"policy file (default {DEFAULT_CONFIG})")
    parser.add_argument("--intervals", type=int, default=None, metavar="N",
                        help="stop after N intervals (default: run until signalled)")
    parser.add_argument("--log-level", default=None,
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="logging threshold (default: the policy's log_level, INFO: one "
                        "line per interval)")
