"""The adaptive sampling interval (``interval: auto``): sample often while placement has work
to do, rarely once it has none, and never spend more than a CPU budget on sampling.

Why: with a fixed interval a change in the workload is seen at the next sample and, since
one access is no evidence (the two-reference rule in placement.py, and a new process's first
sample only primes its Accessed bits), confirmed one more interval later: at the old fixed
5 s that made reaction 10-15 s before the first move.  A short fixed interval reacts fast but
pays the sampling cost (a page-table walk and the per-page arithmetic, proportional to the
targets' mapped memory) all the time.  This controller gets both: the confirmation sample
comes ``min`` after the first sign of a change, and at steady state the interval backs off
to ``max`` (the shipped 5 s: steady-state CPU as before).

Signals that a change is under way (``Observation``, built from an interval's stats):

- a process was sampled for the first time (its first sample only primes the bits);
- at least ``busy_pages`` pages were moved (placement is following a change; what it moved
  is checked by the next sample).  Moves planned but not made do not count: pages that
  cannot move (pinned, shared, in backoff) stay in the plan and would keep the interval
  short for ever;
- huge pages were split (their 4 KiB pages are being watched: tierd/engine/huge.py);
- a fast node is below its demote_below watermark (a deficit);
- the targets' resident pages grew by at least ``busy_pages`` and 10% since the previous
  sample: a process loading or allocating its data, whose accesses are about to follow.
  Without this, a daemon that is already running when a workload starts backs off while the
  workload fills its memory and sees the hot phase that follows up to ``max`` late;
- the pages on slow nodes that were accessed within the window grew by at least
  ``busy_pages`` and 10% since the previous sample: a hot set appearing on the slow tier,
  before it is hot enough to be planned.  A steady warm tail on the slow tier does not grow,
  so it does not keep the interval short.

Busy: the next interval is ``min``.  Quiet: it doubles, up to ``max`` (1, 2, 4, 5 s).

CPU budget: a token bucket of CPU seconds.  It earns ``cpu`` seconds per second (capped at
``cpu * BURST_SECONDS``) and each interval spends its cost (sampling and engine time, not
move_pages: moves are bounded by migration.rate and their own time budget).  While the bucket
holds at least one more interval's cost, the interval may go down to ``min``; otherwise it is
lengthened until the budget has earned that cost back, so averaged over a burst window the
sampling CPU stays within ``cpu``.  ``max`` is a hard bound (it bounds how late a change is
seen): a target so large that one sample per ``max`` costs more than ``cpu`` is sampled
every ``max`` anyway, as with a fixed interval.

Pure logic: time is passed in (``now``), nothing sleeps or reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

BURST_SECONDS = 60.0  # the CPU budget is an average over about this long
BUSY_PAGES = 256  # 1 MiB of 4 KiB pages: fewer changed pages are noise, not a change
GROWTH = 0.10  # ... and the slow tier's accessed pages must grow by at least this fraction


@dataclass(frozen=True)
class Observation:
    """What one interval saw, as far as pacing is concerned."""

    cost: float  # seconds of sampling + engine work (not move_pages)
    primed: int = 0  # processes sampled for the first time
    moved: int = 0  # pages moved (promoted + demoted)
    split: int = 0  # huge pages split
    deficit: bool = False  # a fast node below demote_below
    slow_active: int = 0  # pages on slow nodes accessed within the window (hotness >= 1)
    resident: int = 0  # the targets' pages in memory (on any node, known or not yet)


@dataclass(frozen=True)
class Bounds:
    """The policy's auto_interval section, in seconds and a fraction of one CPU."""

    min: float
    max: float
    cpu: float


class IntervalController:
    """Chooses the next interval from the last one's ``Observation`` (see the module docstring)."""

    def __init__(self, bounds: Bounds, busy_pages: int = BUSY_PAGES) -> None:
        self.bounds = bounds
        self.busy_pages = busy_pages
        self.tokens = bounds.cpu * BURST_SECONDS  # start full: a new daemon may react at once
        self.interval = bounds.min
        self.last: float | None = None  # time of the previous observation
        self.slow_active: int | None = None
        self.resident: int | None = None
        self.busy = False  # the last decision's reason, for logs and tests

    def configure(self, bounds: Bounds) -> None:
        """New bounds (policy reload); the bucket and history carry over."""
        if bounds != self.bounds:
            self.bounds = bounds
            self.tokens = min(self.tokens, bounds.cpu * BURST_SECONDS)
            self.interval = min(max(self.interval, bounds.min), bounds.max)

    def changing(self, obs: Observation) -> bool:
        """Is a change under way (any of the signals in the module docstring)?"""
        grew = self._grew(self.slow_active, obs.slow_active)
        grew |= self._grew(self.resident, obs.resident)
        self.slow_active, self.resident = obs.slow_active, obs.resident
        return bool(obs.primed or obs.deficit or obs.split or obs.moved >= self.busy_pages
                    or grew)

    def _grew(self, before: int | None, now: int) -> bool:
        d = 0 if before is None else now - before
        return d >= self.busy_pages and d >= GROWTH * before

    def next(self, obs: Observation, now: float) -> float:
        """The interval to wait before the next sample, in seconds."""
        b = self.bounds
        cap = b.cpu * BURST_SECONDS
        if self.last is not None:
            self.tokens = min(cap, self.tokens + b.cpu * max(0.0, now - self.last))
        self.last = now
        self.tokens -= max(0.0, obs.cost)
        self.busy = self.changing(obs)
        want = b.min if self.busy else min(b.max, 2 * self.interval)
        # Another interval of the same cost must be affordable: if the bucket cannot pay it,
        # wait until the budget has earned it back.
        short = max(0.0, obs.cost) - self.tokens
        floor = short / b.cpu if short > 0 and b.cpu > 0 else 0.0
        self.interval = min(b.max, max(b.min, want, floor))
        return self.interval


def observe(stats) -> Observation:
    """An Observation from a daemon ``IntervalStats`` (duck-typed: this module imports no
    engine code)."""
    plan = stats.plan
    deficit = plan is not None and any(r.deficit > 0 for r in plan.rooms)
    slow_active = sum(int(stats.nodes[n][1:].sum()) for n in stats.slow if n in stats.nodes)
    resident = sum(int(h.sum()) for h in stats.nodes.values())
    return Observation(
        cost=stats.sample_seconds + stats.engine_seconds,
        primed=getattr(stats, "primed", 0),
        moved=stats.promoted + stats.demoted,
        split=getattr(stats, "split", 0),
        deficit=deficit,
        slow_active=slow_active,
        resident=resident,
    )
