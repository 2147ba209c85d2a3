"""Huge pages whose hot data is scattered: split them to see which 4 KiB parts are hot.

A PMD-mapped THP has one Accessed bit for its 512 pages, so all of them look equally hot,
and move_pages moves the whole 2 MiB folio.  When a process's hot data is scattered thinly
over its huge pages, promoting "the hot pages" fills the fast tier with cold data (the S4
measurement in issue 12: 52% of the cold pages dragged along).  MEMTIS (SOSP 2023) splits
huge pages whose access counts are skewed; tierd has no per-subpage counts before a split,
so it finds out by splitting a few:

1. Gate: nothing happens while the fast tier can hold everything that is hot: the target's
   hot threshold (placement.py) is still at hotness.min_hot.  Huge pages are then kept
   whole, however sparse, because their TLB reach is free.  (Once a process is found
   sparse, its remaining hot huge pages are split even after the first splits made room
   for them: moved whole, they would fill that room with their cold pages.)
2. Candidates: 2 MiB-aligned blocks, fully present, accessed within the window, whose 512
   pages share one history in every sample (what one Accessed bit looks like), confirmed as
   THPs by the kernel (kpageflags, tierd/linux/thp.py).  Hottest first.
3. Probe: split a few candidates (1/8 of them, 1..PROBE_MAX), prime their new PTEs' Accessed
   bits (a split copies the PMD's bit into all 512) and forget their history.  After
   WATCH samples, a probe is dense if at least ``huge_pages.dense`` of its pages were
   accessed.  Most probes dense: the process's huge pages are densely hot; keep the others
   whole (splitting would cost TLB reach and save no fast memory).  Otherwise: sparse.
4. Sparse: split the remaining candidates, MAX_SPLIT_BLOCKS per interval.  From then on the
   ordinary 4 KiB placement promotes exactly the hot subpages and leaves (or demotes) the
   cold ones.
5. A verdict is re-examined after RECHECK_SAMPLES samples (the workload may change).

Time bound: splitting runs inside the interval's time budget, before the moves (it is the
same kind of kernel work under the process's locks: under emulation a split cost ~75 ms per
huge page, 9.6 s for 128 in one interval).  It may use SPLIT_SHARE of the interval, leaving
the rest to the moves, in batches of SPLIT_BATCH huge pages with the clock checked between
batches, so it overruns that share by at most one batch.  What is not split waits for the
next interval: those blocks stay candidates and are held back from moving meanwhile.

Splitting costs: TLB reach (512 TLB entries, or one 2 MiB entry, per 2 MiB: a page walk
per 4 KiB touched where one served 2 MiB), 4 KiB of page table per split huge page, and the
split itself (a few microseconds per huge page under the process's mmap lock).  khugepaged
may collapse a split range back (its default pages_to_scan collapses up to ~8 huge pages per
10 s when the VMA is THP-eligible); a re-collapsed block is a candidate again and is split
again while the verdict is sparse, so the churn is bounded by khugepaged's own rate.  A
process cannot be told MADV_NOHUGEPAGE from outside (process_madvise takes only COLD,
PAGEOUT, WILLNEED and COLLAPSE): see README "Huge pages" for the kernel interface that
would make a split stick.

The decision (``SplitTracker``) is pure; ``HugePages`` applies it to the engine's units.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tierd.engine.state import PageState
from tierd.linux.errors import FeatureMissing
from tierd.linux.thp import block_runs
from tierd.logs import RateLimiter
from tierd.pages import HPAGE_PAGES, HPAGE_WORDS

log = logging.getLogger("tierd")

PROBE_MAX = 8  # huge pages split to find out whether a process's hot huge pages are sparse
WATCH = 2  # samples of a split probe before it is judged
RECHECK_SAMPLES = 120  # a verdict holds this many samples, then candidates are probed again
# huge pages split per process and interval (2 GiB; the time share bounds it too): 128 took
# 64 intervals to split a 16 GiB process whose blocks are all huge pages (issue 16)
MAX_SPLIT_BLOCKS = 1024
SCAN_BLOCKS = 1 << 16  # blocks examined per numpy pass (bounded temporaries)
CHECK_BLOCKS = 4 * MAX_SPLIT_BLOCKS  # hottest candidates asked about per interval (2 preads each)
ALL = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
SPLIT_SHARE = 0.5  # of an interval's time budget that splitting may use (the moves get the rest)
SPLIT_BATCH = 4  # huge pages per split call between clock checks (~0.3 s under emulation)


@dataclass
class _Proc:
    verdict: str | None = None  # None (not known) | "sparse" | "dense"
    last: str | None = None  # the last verdict reached (kept across rechecks)
    verdict_at: int = 0
    probes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    probed_at: int = 0


class SplitTracker:
    """Which huge pages to split, per process (see the module docstring, steps 3-5)."""

    def __init__(self, dense: float, probe_max: int = PROBE_MAX, watch: int = WATCH,
                 recheck: int = RECHECK_SAMPLES, max_split: int = MAX_SPLIT_BLOCKS) -> None:
        self.dense = dense
        self.probe_max = probe_max
        self.watch = watch
        self.recheck = recheck
        self.max_split = max_split
        self.procs: dict = {}

    def verdict(self, key) -> str | None:
        p = self.procs.get(key)
        return None if p is None else p.verdict

    def decide(self, key, now: int, candidates: np.ndarray, fits: bool, density) -> np.ndarray:
        """Blocks (first vpns) to split now.  ``now``: the process's sample count;
        ``candidates``: THP blocks that look hot, hottest first; ``fits``: the fast tier holds
        everything hot; ``density(blocks)``: fraction of each block's pages accessed in the
        last ``watch`` samples."""
        p = self.procs.setdefault(key, _Proc())
        none = np.zeros(0, np.int64)
        if p.probes.size and now - p.probed_at >= self.watch:
            d = np.asarray(density(p.probes), dtype=float)
            sparse = float((d < self.dense).mean())
            verdict = "sparse" if sparse >= 0.5 else "dense"
            # INFO only when it changes: a recheck that confirms it is not news
            log.log(logging.INFO if verdict != p.last else logging.DEBUG,
                    "huge pages of %s: %s (probes %s dense)", key, verdict,
                    "/".join(f"{x:.0%}" for x in d))
            p.verdict = p.last = verdict
            p.verdict_at = now
            p.probes = none
        if p.verdict is not None and now - p.verdict_at >= self.recheck:
            p.verdict = None
        cand = np.asarray(candidates, dtype=np.int64)
        if p.verdict == "sparse" and cand.size and not p.probes.size:
            # decided under pressure: the rest goes too, even once it would fit whole (the
            # first splits made the room; moving the rest whole would drag their cold pages)
            return cand[: self.max_split]
        if fits or cand.size == 0 or p.probes.size:
            return none
        if p.verdict is None:
            n = min(self.probe_max, max(1, cand.size // 8))
            p.probes = cand[:n].copy()
            p.probed_at = now
            return p.probes
        return none

    def not_split(self, key, blocks: np.ndarray) -> None:
        """The kernel left ``blocks`` whole (a busy folio): they are not probes."""
        p = self.procs.get(key)
        if p is not None and p.probes.size:
            p.probes = np.setdiff1d(p.probes, blocks)

    def forget(self, key) -> None:
        self.procs.pop(key, None)


# ---------------------------------------------------------------------------------------------
# Reading blocks out of a PageState


def _blocks(st: PageState) -> tuple[np.ndarray, np.ndarray]:
    """(flat word of each block's first word, its first vpn) for every 2 MiB-aligned block
    lying wholly inside one extent, all extents at once (a pack has one per member)."""
    ext = st.extents
    ws, nw, off = ext.word_start, ext.nwords, ext.offset[:-1]
    first = -(-ws // HPAGE_WORDS) * HPAGE_WORDS
    nb = np.maximum((ws + nw - first) // HPAGE_WORDS, 0)
    k = np.arange(int(nb.sum())) - np.repeat(np.cumsum(nb) - nb, nb)
    return (np.repeat(off + first - ws, nb) + k * HPAGE_WORDS,
            (np.repeat(first, nb) + k * HPAGE_WORDS) * 64)


def uniform_hot_blocks(st: PageState) -> tuple[np.ndarray, np.ndarray]:
    """(first vpn, hotness) of the fully present 2 MiB blocks that look like one Accessed
    bit now (the newest sample is all set or all clear) and had every page accessed in some
    sample of the window, hottest first.  Only the newest sample must be uniform: a range
    khugepaged collapsed again still has its split-time history for a window, and must be
    seen (and held back) at once.  In passes of SCAN_BLOCKS blocks (bounded temporaries)."""
    fw, vpn0 = _blocks(st)
    rows = st.history_rows()
    keep = []
    for i in range(0, fw.size, SCAN_BLOCKS):
        w = fw[i: i + SCAN_BLOCKS, None] + np.arange(HPAGE_WORDS)
        full = (st.present[w] == ALL).all(axis=1)
        h = rows[0][w]
        uniform = full & ((h == 0).all(axis=1) | (h == ALL).all(axis=1))
        hot = np.zeros(w.shape[0], dtype=bool)
        for r in rows:
            hot |= (r[w] == ALL).all(axis=1)
        keep.append(i + np.flatnonzero(uniform & hot))
    idx = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    if not idx.size:
        return np.zeros(0, np.int64), np.zeros(0, np.uint8)
    v = vpn0[idx].astype(np.int64)
    hot = st.hotness(fw[idx] * 64)
    order = np.argsort(-hot.astype(np.int64), kind="stable")
    return v[order], hot[order]


def _flat_words(st: PageState, vpns: np.ndarray) -> np.ndarray:
    """Flat word index of each block's first word (-1 if untracked)."""
    flat = st.extents.flat_of(np.asarray(vpns, dtype=np.int64))
    return np.where(flat >= 0, flat // 64, -1)


def density(st: PageState, vpns: np.ndarray, watch: int) -> np.ndarray:
    """Fraction of each block's 512 pages accessed in the newest ``watch`` samples."""
    fw = _flat_words(st, vpns)
    out = np.zeros(fw.size)
    rows = st.history_rows()[:watch]
    for i, w in enumerate(fw.tolist()):
        if w < 0:
            continue
        acc = np.zeros(HPAGE_WORDS, np.uint64)
        for r in rows:
            acc |= r[w: w + HPAGE_WORDS]
        out[i] = int(np.bitwise_count(acc).sum()) / HPAGE_PAGES
    return out


def forget_history(st: PageState, vpns: np.ndarray, keep_nodes=()) -> None:
    """Split blocks start over: their one shared history says nothing about the subpages,
    and their node is asked again (khugepaged moves a range it collapses back to the node
    holding most of it, without telling tierd).  Except blocks on ``keep_nodes`` (the fast
    nodes): they keep the huge page's history until their own shows which subpages are cold
    - started over at hotness 0, a hot huge page just split on the fast tier would be the
    first victim of every displacement (issue 16: a hot set bigger than the fast tier)."""
    fw = _flat_words(st, vpns)
    fw = fw[fw >= 0]
    if keep_nodes and fw.size:
        node = st.node_of(fw * 64)
        fw = fw[~np.isin(node, np.asarray(keep_nodes))]
    st.forget_words((fw[:, None] + np.arange(HPAGE_WORDS)).ravel())


# ---------------------------------------------------------------------------------------------
# The engine's side


class HugePages:
    """Runs the split decision over the engine's units once per interval (after the moves,
    so a split's priming sample is followed by a whole interval of real accesses)."""

    def __init__(self, splitter, dense: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.splitter = splitter  # tierd.linux.thp.ThpSplitter or a fake
        self.clock = clock
        self.deadline: float | None = None  # no split batch starts at or after this clock()
        self.tracker = SplitTracker(dense)
        self.disabled: str | None = None  # why splitting is off (logged once)
        self.held: dict = {}  # unit key -> blocks kept from moving this interval
        self.fast_nodes: tuple = ()  # split blocks there keep their history (forget_history)
        self.split_before: dict = {}  # unit key -> blocks (vpns) split at some point
        self.warn = RateLimiter(log, clock=clock)  # per (target, reason)
        feat = splitter.feature()
        if not feat.available:
            self._disable(f"{feat.detail} ({feat.since}); to enable: {feat.how_to_fix}")

    def _disable(self, why: str) -> None:
        self.disabled = why
        log.warning("huge pages with scattered hot data will not be split: %s", why)

    def step(self, units, plan, policy, reader, deadline: float | None = None) -> int:
        """Split what the tracker decides for each unit, until ``deadline`` (a clock() time;
        the rest waits for the next interval); returns huge pages split.  Runs between
        planning and moving: whole huge pages that are candidates for a split are held back
        from this interval's moves while the verdict is open or sparse (moving one would
        drag its cold 4 KiB pages along)."""
        if self.disabled is not None or plan is None:
            return 0
        self.deadline = deadline
        self.fast_nodes = tuple(r.node for r in getattr(plan, "rooms", ()))
        done = 0
        blocks: dict = {}  # pack -> its uniform hot blocks (synthetic vpns), one pass per pack
        for unit in units:
            st = unit.state
            if st is None or not unit.samples or unit.seg is None:
                continue
            key = unit.ref.key
            base = unit.base_vpn  # real vpn + base = the pack's (synthetic) vpn
            self._release(unit)
            fits = plan.hot.get(unit.ref.target, policy.min_hot) <= policy.min_hot
            try:
                cand = np.zeros(0, np.int64)
                if not fits or self.tracker.verdict(key) == "sparse":
                    if unit.pack not in blocks:
                        blocks[unit.pack] = uniform_hot_blocks(st)[0]
                    vpns = blocks[unit.pack]
                    end = base + int(unit.ext.word_start[-1] + unit.ext.nwords[-1]) * 64
                    vpns = vpns[(vpns >= base) & (vpns < end)][:CHECK_BLOCKS] - base
                    if vpns.size:
                        cand = vpns[self.splitter.is_thp(unit.ref.pid, vpns)]
                self._drop_recollapsed(unit)
                todo = self.tracker.decide(key, unit.samples, cand, fits,
                                           lambda b, st=st: density(st, b + base, self.tracker.watch))
                split = self._split(unit, todo, reader) if todo.size else todo
                done += split.size
                if self.tracker.verdict(key) != "dense" and cand.size:
                    self._hold(unit, np.setdiff1d(cand, split))
            except ProcessLookupError:  # exited (ProcessGone): the next sample drops it
                continue
            except FeatureMissing as e:
                self._disable(str(e))
                self.release_all(units)
                break
            except OSError as e:  # this process, this time (e.g. EBUSY on the debugfs mutex)
                self.warn.warning((unit.ref.target, "huge page split", getattr(e, "errno", None)),
                                  "pid %d (%s): huge page split: %s", unit.ref.pid,
                                  unit.ref.target, e)
        return done

    def _drop_recollapsed(self, unit) -> None:
        """Probes due for judgement that are huge pages again (khugepaged collapsed them
        back, a few seconds after the split in the rig: its scan walks adjacent blocks, and
        the probes are adjacent) would read as 100% dense and turn the verdict: they are
        not judged.  (Seen in the rig: 5 of 8 probes re-collapsed, verdict "dense", 42% of
        the cold pages dragged to the fast node.)"""
        p = self.tracker.procs.get(unit.ref.key)
        if p is None or not p.probes.size or unit.samples - p.probed_at < self.tracker.watch:
            return
        again = p.probes[self.splitter.is_thp(unit.ref.pid, p.probes)]
        if again.size:
            log.debug("pid %d (%s): %d probe(s) are huge pages again (khugepaged): not judged",
                     unit.ref.pid, unit.ref.target, again.size)
            self.tracker.not_split(unit.ref.key, again)

    def _split(self, unit, blocks: np.ndarray, reader) -> np.ndarray:
        """Split ``blocks``, SPLIT_BATCH at a time until the deadline; returns those the
        kernel did split (primed, history reset).  Blocks not reached count as left whole."""
        pid = unit.ref.pid
        tried = 0
        while tried < blocks.size:
            if self.deadline is not None and self.clock() >= self.deadline:
                break
            self.splitter.split(pid, blocks[tried: tried + SPLIT_BATCH])
            tried += SPLIT_BATCH
        tried = min(tried, blocks.size)
        # DEBUG: the interval line already says "split N huge" (one INFO line per interval)
        log.debug("pid %d (%s): splitting %d huge page(s) (%s)%s", pid, unit.ref.target, tried,
                 getattr(self.splitter, "last_method", "") or "split",
                 f"; {blocks.size - tried} wait for the next interval (time budget)"
                 if tried < blocks.size else "")
        if tried < blocks.size:
            self.tracker.not_split(unit.ref.key, blocks[tried:])
            blocks = blocks[:tried]
        if not blocks.size:
            return blocks
        # the kernel skips folios it cannot lock: a probe left whole would read as dense
        whole = blocks[self.splitter.is_thp(pid, blocks)]
        if whole.size:
            self.tracker.not_split(unit.ref.key, whole)
            blocks = np.setdiff1d(blocks, whole)
        # prime: the 512 new PTEs all carry the huge PMD's Accessed bit
        for lo, hi in block_runs(blocks):
            reader.sample(pid, lo // 64, (hi - lo) // 64)
        # a block split before was collapsed back by khugepaged, which may have moved it
        # without telling tierd: it starts over wherever it is
        before = self.split_before.get(unit.ref.key, np.zeros(0, np.int64))
        again = np.isin(blocks, before)
        forget_history(unit.state, blocks[again] + unit.base_vpn)
        forget_history(unit.state, blocks[~again] + unit.base_vpn, self.fast_nodes)
        self.split_before[unit.ref.key] = np.union1d(before, blocks)
        return blocks

    def _hold(self, unit, blocks: np.ndarray) -> None:
        """Keep ``blocks`` out of this interval's moves (their backoff bits; selection skips
        pages in backoff)."""
        fw = _flat_words(unit.state, blocks + unit.base_vpn)
        fw = fw[fw >= 0]
        if fw.size:
            self.held[unit.ref.key] = blocks  # by vpn: the extents may change before release
            unit.state.backoff[(fw[:, None] + np.arange(HPAGE_WORDS)).ravel()] = ALL

    def _release(self, unit) -> None:
        """Lift last interval's hold, keeping the backoff of pages whose moves failed."""
        blocks = self.held.pop(unit.ref.key, None)
        st = unit.state
        if blocks is None or st is None:
            return
        fw = _flat_words(st, blocks + unit.base_vpn)
        fw = fw[fw >= 0]
        words = (fw[:, None] + np.arange(HPAGE_WORDS)).ravel()
        words = words[words < st.words]  # the address space may have shrunk
        st.backoff[words] = 0
        if st.retry_vpn.size:
            flat = st.extents.flat_of(st.retry_vpn)
            flat = flat[flat >= 0]
            inside = np.isin(flat // 64, words)
            np.bitwise_or.at(st.backoff, flat[inside] // 64,
                             np.left_shift(np.uint64(1), (flat[inside] % 64).astype(np.uint64)))

    def release_all(self, units) -> None:
        """Lift every hold now (splitting turned off by a reload, or the kernel interface
        lost): held blocks must not stay out of the moves for ever."""
        for unit in units:
            self._release(unit)
        self.held.clear()

    def forget(self, key) -> None:
        self.tracker.forget(key)
        self.held.pop(key, None)
        self.split_before.pop(key, None)
