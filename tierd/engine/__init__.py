"""tierd's engine: from access bits to move_pages calls, as arithmetic on numpy arrays.

- ``state``: the page state of a pack of processes (history bit-planes, node planes, presence,
  backoff) over its members' extents side by side, remapped when their VMAs change;
- ``pack``: every process (and shared memory object) a segment of a pack, ``Tracked``;
- ``hotness``: recency-weighted hotness 0..15 by bit-sliced adders, 16-bin histograms;
- ``placement``: pure policy: fast-tier budget, MEMTIS-style hot threshold, promotion and
  demotion requests within the migration budget;
- ``executor``: move_pages in short batches, per-status accounting;
- ``targets``: policy target selectors -> processes (psutil);
- ``daemon``: ``Engine`` (one interval), ``Daemon`` (loop, signals, reload), ``tierd run``.

The engine reaches the kernel only through a Kernel-like object (docs/design.md).  The
simulator (tierd.sim, ``tierd simulate``) is one such object: a user of the engine, which
never imports it.
"""

from tierd.engine.daemon import Daemon, Engine, IntervalStats, Observer
from tierd.engine.placement import Plan, Request, UnitCounts, plan, plan_queries
from tierd.engine.state import Extents, PageState

__all__ = [
    "Daemon", "Engine", "Extents", "IntervalStats", "Observer", "PageState", "Plan", "Request",
    "UnitCounts", "plan", "plan_queries",
]
