"""Placement at the edges the main placement tests do not reach (issue 10's surviving
mutants): MemFree between the two watermarks, the fast-tier budget under a watermark deficit,
and the fast_share promise when a hotter target has to displace pages to get in.

Every expected number is worked out by hand in the comments from the page counts given, and
only the public ``plan``/``node_rooms`` API is used."""

from __future__ import annotations

import numpy as np

from tierd.engine.hotness import LEVELS
from tierd.engine.placement import PAGE_SIZE, UnitCounts, node_rooms, plan
from tierd.linux.sysfs import Node, Topology
from tierd.policy import Policy, TargetSpec
from tierd.units import Amount

FAST, SLOW = 0, 1
TOTAL = 1000  # fast node MemTotal in pages
# keep_free 10% = 100 pages (the floor demotion restores), demote_below 5% = 50 pages
WATERMARKS = dict(keep_free=Amount(fraction=0.10), demote_below=Amount(fraction=0.05))


def machine(free: int) -> Topology:
    """Fast node 0 with ``free`` of TOTAL pages free; a big, empty slow node 1."""
    return Topology((
        Node(FAST, (0,), TOTAL * PAGE_SIZE, free * PAGE_SIZE, (10, 20), None),
        Node(SLOW, (), 100_000 * PAGE_SIZE, 100_000 * PAGE_SIZE, (20, 10), None),
    ))


def pages(key, target, fast=(), slow=()):
    """A process: {level: pages} on the fast node and on the slow node."""
    h = np.zeros((3, LEVELS), np.int64)  # classes: node 0, node 1, unknown
    for cls, levels in ((0, dict(fast)), (1, dict(slow))):
        for level, n in levels.items():
            h[cls, level] = n
    return UnitCounts(key, target, h)


def run(units, free, **policy):
    kw = dict(WATERMARKS, min_hot=1,
              targets=tuple(TargetSpec(t) for t in dict.fromkeys(u.target for u in units)))
    kw.update(policy)
    return plan(units, (FAST, SLOW), machine(free), (FAST,), (SLOW,), Policy(**kw), 10_000)


def moved(p, reason):
    return [(r.unit, r.node, r.level, r.count, r.dest) for r in p.requests if r.reason == reason]


def test_deficit_only_below_demote_below():
    def room(free):
        (r,) = node_rooms(machine(free), (FAST,), WATERMARKS["keep_free"], WATERMARKS["demote_below"])
        assert (r.floor, r.low) == (100, 50)
        return r.room, r.deficit

    # above keep_free: room above the floor, nothing to demote
    assert room(130) == (30, 0)
    # between demote_below and keep_free: no room, and still nothing to demote (the band
    # between the watermarks is what keeps demotion from starting on every small dip)
    assert room(70) == (0, 0)
    assert room(50) == (0, 0)  # at demote_below exactly: not below it
    # below demote_below: demote back up to keep_free, not just to demote_below
    assert room(49) == (0, 51)
    assert room(0) == (0, 100)


def test_memfree_between_watermarks_demotes_nothing():
    u = pages("u", "a", fast={0: 100, 7: 100})
    p = run([u], free=70)
    assert p.requests == ()
    assert p.budget == 200  # what the targets hold; no room above the floor, no deficit


def test_memfree_below_demote_below_demotes_to_keep_free():
    u = pages("u", "a", fast={0: 100, 7: 100})
    p = run([u], free=40)
    # deficit 100 - 40 = 60 pages, coldest first: all from level 0
    assert moved(p, "watermark") == [("u", FAST, 0, 60, SLOW)]


def test_budget_takes_off_the_deficit():
    # 200 target pages on the fast node, free 10 < demote_below 50: the fast tier must give
    # back 100 - 10 = 90 pages, so it can hold 110 of the targets' pages, not 200
    u = pages("u", "a", fast={0: 50, 7: 150}, slow={15: 10})
    p = run([u], free=10)
    assert p.budget == 110
    # pages >= 7: 160, too many for 110; pages >= 8: the 10 at level 15, which fit
    assert p.hot["a"] == 8
    # the deficit is demoted coldest first: the 50 at level 0, then 40 of level 7
    assert moved(p, "watermark") == [("u", FAST, 0, 50, SLOW), ("u", FAST, 7, 40, SLOW)]
    # level 7 is now below the threshold, so the 10 hot pages displace 10 more of it
    assert moved(p, "promote") == [("u", SLOW, 15, 10, FAST)]
    assert moved(p, "demote") == [("u", FAST, 7, 10, SLOW)]


def test_fast_share_pages_are_never_displaced_by_another_target():
    # "a" is guaranteed 10% (100 pages) of the fast tier: its 100 pages at hotness 1 are at
    # or above its own threshold, whatever "b" does.  "b" has 100 fast pages at hotness 5
    # and 100 much hotter pages (12) on the slow node; the fast node is full.
    a = pages("a1", "a", fast={1: 100})
    b = pages("b1", "b", fast={5: 100}, slow={12: 100})
    p = run([a, b], free=0, keep_free=Amount(bytes=0), demote_below=Amount(bytes=0),
            targets=(TargetSpec("a", fast_share=Amount(fraction=0.10)), TargetSpec("b")))
    # budget 200 (the fast pages held): a's share keeps a's threshold at 1 (its 100 pages),
    # which leaves 100 for b: b's 100 pages >= 6 fit, its 200 >= 5 do not
    assert p.budget == 200
    assert p.hot == {"a": 1, "b": 6}
    # a's level-1 pages are the coldest on the node, but they are hot for their target:
    # b displaces its own level-5 pages (below b's threshold and 12 - 2)
    assert moved(p, "demote") == [("b1", FAST, 5, 100, SLOW)]
    assert moved(p, "promote") == [("b1", SLOW, 12, 100, FAST)]
    assert not [r for r in p.requests if r.unit == "a1"]


def test_fast_share_pages_without_another_victim_stay():
    # as above, but b has no fast pages of its own to give: nothing can make room for b
    a = pages("a1", "a", fast={1: 100})
    b = pages("b1", "b", slow={12: 100})
    p = run([a, b], free=0, keep_free=Amount(bytes=0), demote_below=Amount(bytes=0),
            targets=(TargetSpec("a", fast_share=Amount(fraction=0.10)), TargetSpec("b")))
    assert p.hot["a"] == 1
    assert p.requests == ()


def test_queries_use_the_last_page_of_budget():
    from tierd.engine.placement import plan_queries

    u = UnitCounts("u", "a", np.zeros((3, LEVELS), np.int64))
    u.hist[2, 9] = 5
    u.hist[2, 3] = 5
    assert [(r.level, r.count) for r in plan_queries([u], 1)] == [(9, 1)]
    assert [(r.level, r.count) for r in plan_queries([u], 6)] == [(9, 5), (3, 1)]
    assert plan_queries([u], 0) == []


def test_two_promotions_share_one_level_of_victims_exactly():
    # 10 fast pages at hotness 2 make room for 5 + 5 hot slow pages: the second promotion
    # sees exactly what the first left of that level
    u = pages("u", "a", fast={2: 10}, slow={15: 5, 14: 5})
    p = run([u], free=0, keep_free=Amount(bytes=0), demote_below=Amount(bytes=0))
    assert p.hot["a"] == 3  # the 10 pages >= 3 fit in the 10 the fast tier holds
    assert [(r.reason, r.node, r.level, r.count) for r in p.requests] == [
        ("demote", FAST, 2, 5), ("promote", SLOW, 15, 5),
        ("demote", FAST, 2, 5), ("promote", SLOW, 14, 5),
    ]


def test_plan_reports_what_it_was_given():
    u = pages("u", "a", fast={0: 30}, slow={9: 5})
    p = run([u], free=500)
    assert (p.fast_pages, p.move_budget, p.budget) == (30, 10_000, 30 + 400)
    assert len(p.rooms) == 1 and p.rooms[0].room == 400
    only_fast = plan([u], (FAST, SLOW), machine(500), (FAST,), (), Policy(**WATERMARKS), 77)
    assert only_fast.requests == () and only_fast.move_budget == 77
    # no slow tier, no moves, but the thresholds are still reported: all 35 pages fit (>= 1)
    assert only_fast.hot == {"a": 1} and only_fast.cold == {"a": 0}  # 1 - hysteresis, >= 0


def test_demand_has_one_entry_per_level_and_none_above():
    from tierd.engine.placement import demand

    d = demand(np.arange(LEVELS))
    assert d.shape == (LEVELS + 1,) and d[0] == sum(range(LEVELS)) and d[LEVELS] == 0


def test_full_slow_node_still_takes_the_demotions():
    t = Topology((
        Node(FAST, (0,), TOTAL * PAGE_SIZE, 40 * PAGE_SIZE, (10, 20), None),
        Node(SLOW, (), 100_000 * PAGE_SIZE, 5 * PAGE_SIZE, (20, 10), None),  # 5 pages free
    ))
    u = pages("u", "a", fast={0: 100})
    p = plan([u], (FAST, SLOW), t, (FAST,), (SLOW,), Policy(**WATERMARKS), 10_000)
    assert moved(p, "watermark") == [("u", FAST, 0, 60, SLOW)]


def cap(n, **kw):
    return (TargetSpec("a", fast_cap=Amount(bytes=n * PAGE_SIZE), **kw), TargetSpec("b"))


def test_watermark_demotions_count_toward_a_cap():
    # 160 fast pages of a (cap 80): the watermark takes 90 of them from three levels, which
    # leaves 70, under the cap: nothing more to demote for the cap
    u = pages("a1", "a", fast={0: 30, 1: 30, 9: 100})
    p = run([u], free=10, targets=cap(80))
    assert [r.count for r in p.requests if r.reason == "watermark"] == [30, 30, 30]
    assert moved(p, "cap") == []


def test_cap_demotion_of_one_page_and_within_the_move_budget():
    u = pages("a1", "a", fast={0: 81})
    p = run([u], free=500, targets=cap(80))
    assert moved(p, "cap") == [("a1", FAST, 0, 1, SLOW)]
    u = pages("a1", "a", fast={0: 130})
    b = pages("b1", "b", slow={12: 100})
    kw = dict(WATERMARKS, min_hot=1, targets=cap(80))
    p = plan([u, b], (FAST, SLOW), machine(500), (FAST,), (SLOW,), Policy(**kw), 20)
    # 50 over the cap, but only 20 moves this interval, and none left for b
    assert moved(p, "cap") == [("a1", FAST, 0, 20, SLOW)] and p.count("promote") == 0


def test_capped_target_promotes_only_up_to_its_cap():
    u = pages("a1", "a", slow={12: 100})
    p = run([u], free=500, targets=cap(50))
    assert moved(p, "promote") == [("a1", SLOW, 12, 50, FAST)]


def test_uncapped_target_displaces_another_targets_cold_pages():
    a = pages("a1", "a", fast={0: 40})
    b = pages("b1", "b", slow={12: 40})
    p = run([a, b], free=0, keep_free=Amount(bytes=0), demote_below=Amount(bytes=0))
    assert moved(p, "demote") == [("a1", FAST, 0, 40, SLOW)]
    assert moved(p, "promote") == [("b1", SLOW, 12, 40, FAST)]


def test_the_two_access_rule_follows_the_window():
    # with window 1 one access is the whole window (hotness 15): no "two accesses" to wait for
    u = pages("u", "a", fast={0: 10}, slow={15: 10})
    p = run([u], free=0, keep_free=Amount(bytes=0), demote_below=Amount(bytes=0), window=1)
    assert p.count("promote") == 10
    # with window 2 one access gives 9: a page at 8 has not been seen twice...
    u = pages("u", "a", fast={0: 10}, slow={8: 10})
    p = run([u], free=0, keep_free=Amount(bytes=0), demote_below=Amount(bytes=0), window=2)
    assert p.count("promote") == 0
    # ... while with the default window 8 (one access: 4) it has
    p = run([u], free=0, keep_free=Amount(bytes=0), demote_below=Amount(bytes=0))
    assert p.count("promote") == 10


def test_capped_target_finds_its_own_victims_after_another_targets_process():
    # b's process comes first in the list; a (at its cap) must still find its own cold pages
    b = pages("b1", "b", fast={1: 100})
    a = pages("a1", "a", fast={5: 100}, slow={14: 10})
    p = run([b, a], free=300, targets=cap(100))
    assert [(r.unit, r.reason, r.level, r.count) for r in p.requests] == [
        ("a1", "demote", 5, 10), ("a1", "promote", 14, 10)]
