"""Placement: pure functions of histograms, topology and policy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.engine.hotness import LEVELS
from tierd.engine.placement import (
    FALLBACK_HYSTERESIS,
    NO_THRESHOLD,
    PAGE_SIZE,
    UnitCounts,
    demand,
    node_rooms,
    plan,
    plan_queries,
    target_threshold,
    thresholds,
)
from tierd.linux.sysfs import Node, Topology
from tierd.policy import Policy, TargetSpec
from tierd.units import Amount

MIB = 1 << 20
NODES = (0, 1)  # class 0 = node 0 (fast), class 1 = node 1 (slow), class 2 = unknown


def topo(fast_total_pages=1000, fast_free_pages=100, slow_free_pages=10_000):
    return Topology((
        Node(0, (0,), fast_total_pages * PAGE_SIZE, fast_free_pages * PAGE_SIZE, (10, 20), None),
        Node(1, (), 100_000 * PAGE_SIZE, slow_free_pages * PAGE_SIZE, (20, 10), None),
    ))


def policy(**kw):
    base = dict(keep_free=Amount(bytes=0), demote_below=Amount(bytes=0), min_hot=1,
                targets=(TargetSpec("a"), TargetSpec("b")))
    base.update(kw)
    return Policy(**base)


def unit(key, target="a", fast=None, slow=None, unknown=None):
    h = np.zeros((3, LEVELS), np.int64)
    for c, d in enumerate((fast, slow, unknown)):
        for level, n in (d or {}).items():
            h[c, level] = n
    return UnitCounts(key, target, h)


def requests(p):
    return [(r.unit, r.node, r.level, r.count, r.dest, r.reason) for r in p.requests]


def test_node_rooms_watermarks():
    t = topo(fast_total_pages=1000, fast_free_pages=40)
    (r,) = node_rooms(t, (0,), Amount(fraction=0.1), Amount(fraction=0.05))
    assert (r.total, r.free, r.floor, r.low) == (1000, 40, 100, 50)
    assert r.room == 0 and r.deficit == 60
    (r,) = node_rooms(topo(fast_free_pages=300), (0,), Amount(fraction=0.1), Amount(fraction=0.05))
    assert r.room == 200 and r.deficit == 0


def test_threshold_fills_budget_with_hottest_pages():
    h = np.zeros(LEVELS, np.int64)
    h[[0, 3, 7, 15]] = [1000, 50, 30, 20]
    d = demand(h)
    assert d[0] == 1100 and d[16] == 0
    assert thresholds({"a": d}, 60, min_hot=1)["a"] == 4  # 50 pages at >= 4 fit, 100 at >= 3 do not
    assert thresholds({"a": d}, 100, min_hot=1)["a"] == 1
    assert thresholds({"a": d}, 10, min_hot=1)["a"] == NO_THRESHOLD
    assert thresholds({"a": d}, 5000, min_hot=5)["a"] == 5


def test_share_lowers_and_cap_raises_a_targets_threshold():
    h = np.zeros(LEVELS, np.int64)
    h[[2, 8, 12]] = [100, 100, 100]
    d = demand(h)
    assert target_threshold(12, d, share=250, cap=None, min_hot=1) == 3
    assert target_threshold(1, d, share=None, cap=150, min_hot=1) == 9
    assert target_threshold(12, d, share=250, cap=150, min_hot=1) == 9
    # global: a's hot pages crowd out b, unless b has a share
    hb = np.zeros(LEVELS, np.int64)
    hb[4] = 100
    demands = {"a": d, "b": demand(hb)}
    assert thresholds(demands, 200, 1) == {"a": 5, "b": 5}
    assert thresholds(demands, 200, 1, shares={"b": 100}) == {"a": 9, "b": 1}


def test_promotes_hottest_first_into_free_room_never_touching_placed_pages():
    u = unit("u", fast={15: 10, 0: 50}, slow={15: 5, 9: 20, 3: 30, 0: 500})
    p = plan([u], NODES, topo(fast_free_pages=40), (0,), (1,), policy(), move_budget=1000)
    # threshold 1 (65 pages >= 1 fit in 60 + 40): room first; the rest of level 3 would have
    # to displace pages, but 3 is within one access (weight 4): no evidence of reuse
    assert requests(p) == [
        ("u", 1, 15, 5, 0, "promote"),
        ("u", 1, 9, 20, 0, "promote"),
        ("u", 1, 3, 15, 0, "promote"),
    ]
    assert p.hot["a"] == 1 and p.budget == 100
    u = unit("u", fast={0: 50}, slow={5: 30})  # 5 > 4: two accesses at least
    p = plan([u], NODES, topo(fast_free_pages=10), (0,), (1,), policy(), move_budget=1000)
    assert requests(p) == [("u", 1, 5, 10, 0, "promote"), ("u", 0, 0, 20, 1, "demote"),
                           ("u", 1, 5, 20, 0, "promote")]


def test_move_budget_limits_promotions():
    u = unit("u", slow={15: 50, 9: 50})
    p = plan([u], NODES, topo(fast_free_pages=500), (0,), (1,), policy(), move_budget=70)
    assert requests(p) == [("u", 1, 15, 50, 0, "promote"), ("u", 1, 9, 20, 0, "promote")]


def test_no_room_displaces_colder_pages_beyond_hysteresis():
    u = unit("u", fast={6: 10, 4: 10, 1: 10}, slow={8: 30})
    p = plan([u], NODES, topo(fast_free_pages=0), (0,), (1,), policy(), move_budget=1000)
    # 8 may displace pages colder than 8 - 2 = 6: levels 1 and 4, coldest first; not 6
    assert requests(p) == [
        ("u", 0, 1, 10, 1, "demote"), ("u", 1, 8, 10, 0, "promote"),
        ("u", 0, 4, 10, 1, "demote"), ("u", 1, 8, 10, 0, "promote"),
    ]
    assert p.cold["a"] == p.hot["a"] - 2


def test_displacement_uses_two_moves_of_budget():
    u = unit("u", fast={0: 100}, slow={10: 100})
    p = plan([u], NODES, topo(fast_free_pages=0), (0,), (1,), policy(), move_budget=31)
    assert requests(p) == [("u", 0, 0, 15, 1, "demote"), ("u", 1, 10, 15, 0, "promote")]


def test_watermark_demotes_coldest_first_across_processes():
    u1 = unit("u1", fast={0: 5, 7: 100})
    u2 = unit("u2", "b", fast={0: 3, 2: 50})
    t = topo(fast_total_pages=1000, fast_free_pages=10)
    pol = policy(keep_free=Amount(fraction=0.05), demote_below=Amount(fraction=0.02))
    p = plan([u1, u2], NODES, t, (0,), (1,), pol, move_budget=1000)
    # deficit = 50 - 10 = 40 pages: 5 + 3 at level 0, then 32 of u2's level 2
    assert requests(p) == [
        ("u1", 0, 0, 5, 1, "watermark"), ("u2", 0, 0, 3, 1, "watermark"),
        ("u2", 0, 2, 32, 1, "watermark"),
    ]


def test_cap_demotes_a_target_over_its_cap():
    u = unit("u", fast={0: 30, 12: 90})
    pol = policy(targets=(TargetSpec("a", fast_cap=Amount(bytes=100 * PAGE_SIZE)),))
    p = plan([u], NODES, topo(fast_free_pages=500), (0,), (1,), pol, move_budget=1000)
    assert requests(p) == [("u", 0, 0, 20, 1, "cap")]


def test_capped_target_only_displaces_itself():
    a = unit("a1", "a", fast={5: 100}, slow={14: 10})
    b = unit("b1", "b", fast={1: 100})
    pol = policy(targets=(TargetSpec("a", fast_cap=Amount(bytes=100 * PAGE_SIZE)), TargetSpec("b")))
    p = plan([a, b], NODES, topo(fast_free_pages=300), (0,), (1,), pol, move_budget=1000)
    # room exists, but a is at its cap: its hot pages replace its own colder ones
    assert requests(p) == [("a1", 0, 5, 10, 1, "demote"), ("a1", 1, 14, 10, 0, "promote")]


def test_no_slow_tier_no_moves():
    u = unit("u", slow={15: 10})
    p = plan([u], NODES, topo(), (0, 1), (), policy(), move_budget=1000)
    assert p.requests == ()


def test_queries_hottest_first_within_budget():
    u1 = unit("u1", unknown={0: 100, 5: 10, 9: 3})
    u2 = unit("u2", unknown={5: 7})
    q = plan_queries([u1, u2], 25)
    assert [(r.unit, r.level, r.count, r.reason) for r in q] == [
        ("u1", 9, 3, "query"), ("u1", 5, 10, "query"), ("u2", 5, 7, "query"),
        ("u1", 0, 5, "query"),
    ]


hists = st.lists(st.integers(0, 50), min_size=LEVELS, max_size=LEVELS)


@settings(max_examples=150, deadline=None)
@given(fast=hists, slow=hists, free=st.integers(0, 400), budget=st.integers(0, 300),
       minhot=st.integers(0, 6))
def test_plan_invariants(fast, slow, free, budget, minhot):
    u = unit("u", fast=dict(enumerate(fast)), slow=dict(enumerate(slow)))
    t = topo(fast_total_pages=2000, fast_free_pages=free)
    pol = policy(min_hot=minhot)
    hyst = FALLBACK_HYSTERESIS
    p = plan([u], NODES, t, (0,), (1,), pol, move_budget=budget)
    assert sum(r.count for r in p.requests) <= budget
    taken = {}
    for r in p.requests:
        key = (r.node, r.level)
        taken[key] = taken.get(key, 0) + r.count
        assert r.count > 0 and r.node != r.dest
    for (node, level), n in taken.items():
        assert n <= u.hist[node, level]  # never more pages than exist
    promoted = [r for r in p.requests if r.reason == "promote"]
    demoted = [r for r in p.requests if r.reason == "demote"]
    thr = p.hot["a"]
    assert all(r.level >= minhot and r.node == 1 and r.dest == 0 for r in promoted)
    assert all(r.level < thr and r.node == 0 and r.dest == 1 for r in demoted)
    # fast pages at or above the threshold stay; promotions fit in room + displaced pages
    assert sum(r.count for r in promoted) <= free + sum(r.count for r in demoted)
    # each displacement is paired with (followed by) a promotion of a clearly hotter page
    for i, r in enumerate(p.requests):
        if r.reason == "demote":
            nxt = p.requests[i + 1]
            assert nxt.reason == "promote" and nxt.count == r.count
            assert nxt.level >= thr and r.level < nxt.level - hyst
            assert nxt.level > 4  # at least two accesses in the window (weights 4,3,2,...)


@pytest.mark.parametrize("share", [None, 0.5])
def test_two_targets_share_one_threshold(share):
    a = unit("a1", "a", slow={10: 300})
    b = unit("b1", "b", slow={5: 300})
    pol = policy(targets=(TargetSpec("a"), TargetSpec("b", fast_share=None if share is None else Amount(fraction=share))))
    p = plan([a, b], NODES, topo(fast_total_pages=1000, fast_free_pages=400), (0,), (1,), pol, 10_000)
    got = {r.unit: r.count for r in p.requests}
    if share is None:  # one threshold: a's 300 hot pages, then b's fill the remaining room
        assert p.hot == {"a": 6, "b": 6} and got == {"a1": 300, "b1": 100}
    else:  # b's share covers all its pages: they go first, a fills what is left
        assert p.hot["b"] == 1 and got == {"b1": 300, "a1": 100}
        assert [r.unit for r in p.requests] == ["b1", "a1"]


def test_share_is_proportional_exact_and_bounded():
    from tierd.engine.placement import share

    assert share(10, np.array([5, 5])).tolist() == [5, 5]
    assert share(7, np.array([10, 10, 10])).tolist() == [3, 2, 2]  # remainder by index on ties
    assert share(6, np.array([1, 10, 1])).tolist() == [1, 5, 0]  # 0.5, 5.0, 0.5: first tie wins
    assert share(100, np.array([3, 4])).tolist() == [3, 4]  # never more than there is
    assert share(0, np.array([3, 4])).tolist() == [0, 0]
    got = share(1000, np.array([300, 700, 0, 1000]))
    assert got.sum() == 1000 and got.tolist() == [150, 350, 0, 500]


def test_equal_processes_share_victims_and_room_equally():
    u1 = unit("u1", fast={0: 100}, slow={9: 60})
    u2 = unit("u2", fast={0: 100}, slow={9: 60})
    p = plan([u1, u2], NODES, topo(fast_total_pages=1000, fast_free_pages=40), (0,), (1,),
             policy(), move_budget=1000)
    # 40 pages of room split 20/20; the remaining 80 promotions displace 40 + 40 victims
    promoted = {u: sum(r.count for r in p.requests if r.unit == u and r.reason == "promote")
                for u in ("u1", "u2")}
    demoted = {u: sum(r.count for r in p.requests if r.unit == u and r.reason == "demote")
               for u in ("u1", "u2")}
    assert promoted == {"u1": 60, "u2": 60} and demoted == {"u1": 40, "u2": 40}


def test_cap_promotions_trims_to_the_room_left_in_plan_order():
    from tierd.engine.placement import Request, cap_promotions

    reqs = [Request("a", 1, 9, 30, 0, "promote"), Request("b", 1, 9, 30, 0, "promote"),
            Request("c", 2, 5, 10, 3, "promote")]
    assert cap_promotions(reqs, {0: 45, 3: 0}) == [reqs[0], Request("b", 1, 9, 15, 0, "promote")]
    assert cap_promotions(reqs, {0: 100, 3: 100}) == reqs


def test_gain_blocks_swaps_between_equally_accessed_pages_and_allows_real_ones():
    from tierd.engine.gain import estimate

    n = np.zeros((2, LEVELS))
    a = np.zeros((2, LEVELS))
    n[0, :6] = 10_000  # fast pages at levels 0-5 accessed with probability 0.10
    a[0, :6] = 1_000
    n[1, :10] = 100_000  # slow pages up to level 9: 0.10 as well (lucky cold pages)
    a[1, :10] = 10_000
    n[1, 12] = 5_000  # slow pages at level 12: really hot
    a[1, 12] = 4_000
    g = estimate(n, a, margin=0.05)
    assert not g.allows(9, 0) and g.victim_levels(9) == 0
    assert g.allows(12, 0) and g.victim_levels(12) == LEVELS  # empty fast cells: as level 5
    assert (np.diff(g.q, axis=1) >= -1e-12).all()  # monotone in level
    # without the slow cell's data the same level is not trusted
    n[1, 12] = a[1, 12] = 0
    assert not estimate(n, a, margin=0.05).allows(12, 0)
