"""Runs move_pages(2) for a plan: batches sized to keep each call short, status accounting.

One move_pages call migrates its pages while the target's threads that touch them wait, so
calls are kept to about ``call_seconds`` (20 ms): the batch starts at the policy's
migration.batch and halves after a slower call, growing back after fast ones.  Between
batches the stop event is checked, so SIGTERM ends the interval after the current batch.

Every move_pages call that moves also has a fixed cost: do_pages_move() starts with
lru_cache_disable(), i.e. synchronize_rcu_expedited() and an LRU drain on every CPU (tens
of microseconds on hardware, ~30 ms in the TCG rig).  A batch shrunk to MIN_BATCH then pays
that cost every 16 pages: in the rig, moves fell to ~2 MiB/s, ten times below the copy rate.
So the aim of a call is at least OVERHEAD_FACTOR times the fixed cost, estimated as the
cheapest recent small call (<= 2 * MIN_BATCH pages: the measuring batch that starts every
interval is one): a call is "slow" only when its pages make it slow.

Time budget: the engine starts each interval's moves with ``begin(deadline)`` (a ``clock()``
time).  No move batch starts after the deadline, and every batch is cut to the pages the time
per page measured in this interval says still fit, so an interval's moves overrun their time
budget by at most one batch (huge pages moved at 10 MiB/s would otherwise turn a byte budget
into tens of seconds).  The time per page is measured afresh in every interval, starting with
a measuring batch of MEASURE_BATCH pages: what the last interval measured may have been 4 KiB
pages, or the cheap tail addresses of a huge page already moved, while this interval's first
batch may hold huge pages (one address of a THP moves its whole 2 MiB folio).  The estimate is
the larger of the last batch's and the interval's average, so a cheap batch after an expensive
one does not unleash a long one.  Pages not reached are NOT_TRIED, as after a stop.  Queries
copy nothing and are not limited.

Per-page status (docs/design.md, "move_pages contract"): >= 0 is the node the page is on
after the call; negative is -errno.  ``tally`` sorts them into the counters operators see:

=========  ====================================================================
moved      on the requested node after the call (the kernel reports a page that
           was already there the same way: it cannot be told apart)
elsewhere  on another node (the page moved under us, or the kernel left it)
busy       EBUSY (page locked, under writeback, pinned): retried after backoff
absent     ENOENT/EFAULT: not present (swapped out, unmapped, zero page)
nomem      ENOMEM: the destination node is full
denied     EACCES/EPERM: shared with other processes (MPOL_MF_MOVE moves only
           pages mapped once) or not permitted
other      any other errno
unknown    the kernel wrote no status and a query could not tell either
           (``tierd.linux.syscalls.UNREPORTED``): the page's node is forgotten
           and learnt again, never taken for absent
=========  ====================================================================

A whole-call error part-way (ENOMEM from migrate_pages, ...) raises from ``move``/``query``
with the exception's ``status`` (NOT_TRIED beyond what was attempted) and ``counts`` set, so
the caller can fold in the pages that did move before it gives up on the process.
"""

from __future__ import annotations

import errno
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np

from tierd.linux.errors import ProcessGone
from tierd.linux.syscalls import MPOL_MF_MOVE, UNREPORTED

NOT_TRIED = np.int32(-(1 << 30))  # status of pages skipped because the daemon is stopping
MIN_BATCH = 16
MEASURE_BATCH = MIN_BATCH  # an interval's first move batch: measures the time per page
CALL_SECONDS = 0.020
QUERY_BATCH_FACTOR = 16  # a query copies nothing: batches can be this much longer
OVERHEAD_FACTOR = 8  # a call aims at >= 8x the fixed cost per call: that cost <= 1/8-1/4
FLOOR_CALLS = 32  # the fixed cost: the cheapest of this many recent small move calls

_ABSENT = (errno.ENOENT, errno.EFAULT)
_DENIED = (errno.EACCES, errno.EPERM)


@dataclass
class MoveCounts:
    """Pages by outcome, plus the calls made; added up over an interval."""

    moved: int = 0
    elsewhere: int = 0
    busy: int = 0
    absent: int = 0
    nomem: int = 0
    denied: int = 0
    other: int = 0
    unknown: int = 0  # no status from the kernel (UNREPORTED): node forgotten, not failed
    queried: int = 0  # pages whose node was asked for
    learned: int = 0  # ... and is now known
    not_tried: int = 0
    calls: int = 0
    seconds: float = 0.0

    def add(self, other: MoveCounts) -> None:
        for name in _COUNT_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def failed(self) -> int:
        return self.busy + self.absent + self.nomem + self.denied + self.other

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_COUNT_FIELDS = tuple(f.name for f in fields(MoveCounts))


def outcome_masks(status: np.ndarray, dest: np.ndarray | None) -> dict[str, np.ndarray]:
    """Boolean masks per outcome for a move (dest given) or a query (dest None)."""
    s = np.asarray(status)
    ok = s >= 0
    tried = s != NOT_TRIED
    masks = {
        "ok": ok,
        "absent": (s == -_ABSENT[0]) | (s == -_ABSENT[1]),
        "busy": s == -errno.EBUSY,
        "nomem": s == -errno.ENOMEM,
        "denied": (s == -_DENIED[0]) | (s == -_DENIED[1]),
        "not_tried": ~tried,
        "unreported": s == UNREPORTED,
    }
    masks["other"] = (tried & ~ok & ~masks["absent"] & ~masks["busy"] & ~masks["nomem"]
                      & ~masks["denied"] & ~masks["unreported"])
    if dest is not None:
        d = np.broadcast_to(np.asarray(dest), s.shape)
        masks["moved"] = ok & (s == d)
        masks["elsewhere"] = ok & (s != d)
    return masks


def tally(status: np.ndarray, dest: np.ndarray | None) -> MoveCounts:
    """Counters for one batch of statuses (see the module docstring)."""
    if dest is not None and np.array_equal(status, dest):  # the common case: all moved
        return MoveCounts(moved=int(np.size(status)))
    if dest is None and (np.asarray(status) >= 0).all():  # ... all queried pages known
        return MoveCounts(queried=int(np.size(status)), learned=int(np.size(status)))
    m = outcome_masks(status, dest)
    c = MoveCounts(
        busy=int(m["busy"].sum()), absent=int(m["absent"].sum()), nomem=int(m["nomem"].sum()),
        denied=int(m["denied"].sum()), other=int(m["other"].sum()),
        not_tried=int(m["not_tried"].sum()), unknown=int(m["unreported"].sum()),
    )
    if dest is None:
        c.queried = int((~m["not_tried"] & ~m["unreported"]).sum())
        c.learned = int(m["ok"].sum())
    else:
        c.moved = int(m["moved"].sum())
        c.elsewhere = int(m["elsewhere"].sum())
    return c


class Executor:
    """move_pages through a Kernel (or the simulator's fake), in adaptive batches.

    ``should_stop`` is polled between batches; ``clock`` times the calls (injectable, so tests
    get the same batches on a loaded machine)."""

    def __init__(
        self,
        kernel,
        batch_pages: int,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
        call_seconds: float = CALL_SECONDS,
    ) -> None:
        self.kernel = kernel
        self.should_stop = should_stop
        self.clock = clock
        self.call_seconds = call_seconds
        self.deadline: float | None = None  # no move batch starts at or after this clock()
        self.page_seconds = 0.0  # time per page measured in this interval (0: not yet)
        self._spent = (0.0, 0)  # this interval's move seconds and pages
        self._measure = False  # begin() was called: start with a measuring batch
        self._recent: deque[float] = deque(maxlen=FLOOR_CALLS)  # recent move call times
        self.set_batch(batch_pages)

    def begin(self, deadline: float | None) -> None:
        """Start an interval's moves: no batch starts after ``deadline`` (None: no limit),
        and the time per page is measured again, from a MEASURE_BATCH first batch."""
        self.deadline = deadline
        self.page_seconds = 0.0
        self._spent = (0.0, 0)
        self._measure = True

    def set_batch(self, batch_pages: int) -> None:
        self.max_batch = max(MIN_BATCH, int(batch_pages))
        self.batch = {"move": self.max_batch, "query": self.max_batch * QUERY_BATCH_FACTOR}

    def move(self, pid: int, addrs: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, MoveCounts]:
        """Move pages (uint64 addresses) to ``nodes`` (int32 per page).  Returns (status,
        counts); pages not reached before a stop have status NOT_TRIED."""
        return self._run("move", pid, addrs, np.ascontiguousarray(nodes, dtype=np.int32))

    def query(self, pid: int, addrs: np.ndarray) -> tuple[np.ndarray, MoveCounts]:
        """Ask which node each page is on."""
        return self._run("query", pid, addrs, None)

    def run_many(self, jobs, query: bool = False):
        """``move`` (or ``query``) for several processes at once: ``jobs`` = [(pid, addrs,
        nodes or None, move_pages flags)] (MPOL_MF_MOVE_ALL for shared pages).  Returns
        (status for all pages in job order, counts over the jobs that ran, {job index:
        exception} for jobs whose process was gone or refused).
        One status array and one tally for all: the members of a pack
        (tierd/engine/pack.py) do not pay the per-call accounting each."""
        kind = "query" if query else "move"
        sizes = [np.size(j[1]) for j in jobs]
        status = np.full(sum(sizes), NOT_TRIED, dtype=np.int32)
        counts = MoveCounts()
        errors: dict[int, Exception] = {}
        lo = 0
        for i, ((pid, addrs, nodes, flags), n) in enumerate(zip(jobs, sizes)):
            # move_pages(2) takes a pid: a held process (tierd.linux.procfs.ProcHandle) is
            # checked first, so that a pid reused since the sample is not moved (the window
            # left is this check to the call, not the interval)
            alive = getattr(pid, "alive", None)
            if alive is not None and not alive():
                errors[i] = ProcessGone(int(pid), "before move_pages")
                lo += n
                continue
            try:
                self._calls(kind, pid, np.ascontiguousarray(addrs, dtype=np.uint64),
                            None if nodes is None else np.ascontiguousarray(nodes, dtype=np.int32),
                            status[lo: lo + n], counts, flags)
            except OSError as e:  # ProcessGone, PermissionError, MovePagesError: this one
                errors[i] = e
            lo += n
        ran = np.ones(status.size, dtype=bool)
        if errors:
            bounds = np.cumsum([0] + sizes)
            for i, e in errors.items():  # a refused job keeps what moved before the error
                job = slice(bounds[i], bounds[i + 1])
                ran[job] = False if e.errno == errno.ESRCH else status[job] != NOT_TRIED
        dest = None if query else np.concatenate([j[2] for j in jobs]) if jobs else np.zeros(0, np.int32)
        c = tally(status[ran] if errors else status, None if dest is None else dest[ran] if errors else dest)
        c.calls, c.seconds = counts.calls, counts.seconds
        return status, c, errors

    def _run(self, kind: str, pid: int, addrs: np.ndarray, nodes: np.ndarray | None):
        addrs = np.ascontiguousarray(addrs, dtype=np.uint64)
        status = np.full(addrs.size, NOT_TRIED, dtype=np.int32)
        counts = MoveCounts()
        try:
            self._calls(kind, pid, addrs, nodes, status, counts)
        except OSError as e:  # whole-call error part-way: what did move is in status
            e.status, e.counts = status, tally(status, nodes)
            raise
        c = tally(status, nodes)
        c.calls, c.seconds = counts.calls, counts.seconds
        return status, c

    def _calls(self, kind: str, pid: int, addrs: np.ndarray, nodes: np.ndarray | None,
               status: np.ndarray, counts: MoveCounts, flags: int = MPOL_MF_MOVE) -> None:
        """The move_pages calls for one process, filling ``status`` (NOT_TRIED beforehand)
        and ``counts.calls/seconds``."""
        n = addrs.size
        cap = self.max_batch * (QUERY_BATCH_FACTOR if kind == "query" else 1)
        lo = 0
        while lo < n:
            if self.should_stop():
                break
            size = min(self.batch[kind], n - lo)
            t0 = self.clock()
            if kind == "move":
                left = None if self.deadline is None else self.deadline - t0
                if left is not None and left <= 0:
                    break
                if self.page_seconds <= 0 and (left is not None or self._measure):
                    size = min(size, MEASURE_BATCH)  # nothing measured yet in this interval
                elif left is not None:  # only what still fits
                    size = min(size, max(MIN_BATCH, int(left / self.page_seconds)))
            try:
                # MPOL_MF_MOVE is move_pages' default here: other flags only when asked
                more = {} if flags == MPOL_MF_MOVE else {"flags": flags}
                st = self.kernel.move_pages(
                    pid, addrs[lo: lo + size], None if nodes is None else nodes[lo: lo + size],
                    batch=size, **more,
                )
            except OSError as e:
                part = getattr(e, "status", None)
                if part is not None:  # the statuses the failing call did give
                    done = min(int(getattr(e, "done", len(part))), size)
                    status[lo: lo + done] = part[:done]
                counts.calls += 1
                raise
            dt = self.clock() - t0
            status[lo: lo + size] = st
            counts.calls += 1
            counts.seconds += dt
            if kind == "move":
                spent, pages = self._spent[0] + dt, self._spent[1] + size
                self._spent = (spent, pages)
                self.page_seconds = max(dt / size, spent / pages)
            lo += size
            # keep each call near its aim: halve after a slow one, grow after fast ones
            aim = self.call_seconds
            if kind == "move":  # queries skip lru_cache_disable(): no fixed cost to speak of
                if size <= 2 * MIN_BATCH:  # a small call is mostly fixed cost
                    self._recent.append(dt)
                if self._recent:
                    aim = max(aim, OVERHEAD_FACTOR * min(self._recent))
            if dt > aim and self.batch[kind] > MIN_BATCH:
                self.batch[kind] = max(MIN_BATCH, self.batch[kind] // 2)
            elif dt < aim / 4 and self.batch[kind] < cap:
                self.batch[kind] = min(cap, self.batch[kind] * 2)
