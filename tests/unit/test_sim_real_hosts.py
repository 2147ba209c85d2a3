"""Issue 16 in the simulator, on the shipped policy (etc/tierd.yaml): hot sets bigger than the
fast tier, hot sets that move faster than tierd can follow.  Small machines, so the unit tier
stays quick; benchmarks/simulate_real_hosts.py runs the issue's sizes."""

from __future__ import annotations

import os
import statistics

import pytest

from tierd.engine.gain import need
from tierd.policy import load_policy
from tierd.sim.simulate import parse_workload, simulate, summarize

POLICY = os.path.join(os.path.dirname(__file__), "..", "..", "etc", "tierd.yaml")


@pytest.fixture(scope="module")
def policy():
    return load_policy(POLICY)


@pytest.mark.parametrize("spec", [
    "size=1GiB,fast=64MiB,dist=zipf:0.7",  # 16x the fast tier
    "size=1GiB,fast=64MiB,dist=zipf:1.1",
    "size=1GiB,fast=128MiB,dist=zipf:0.7",  # 8x
    "size=2GiB,fast=32MiB,dist=zipf:1.1",  # 64x: the boundary page is accessed in 97.5% of
    # the samples; before its swaps were judged by access rate, 0.86
])
def test_hot_set_bigger_than_the_fast_tier_fills_it_with_the_hottest(policy, spec):
    """Old code: the top level overflows, nothing is hot, hit/oracle 0.14 (zipf 0.7)."""
    rows, _ = simulate(policy, parse_workload(spec + ",intervals=30,seed=7"))
    assert summarize(rows).steady_ratio >= 0.90


@pytest.mark.parametrize("every", [1, 2, 3, 20])
def test_a_hot_set_moving_faster_than_tierd_can_follow_costs_nothing(policy, every):
    """Effective access time (moves included) never worse than not moving at the same fast
    capacity (the engine holding keep_free without promoting); a probe of 128 pages every 4
    intervals is what tierd spends to notice that the hot set settled (<= 0.1% here).  Old
    code: 3-6% worse at every 1 and 2."""
    spec = parse_workload(f"size=256MiB,fast=64MiB,dist=hotset:5%,phase=every:{every},intervals=30")
    rows = simulate(policy, spec)[0][5:]
    moving = statistics.mean(r.eat_ns for r in rows)
    still = statistics.mean(r.eat_ns for r in simulate(policy, spec, still=True)[0][5:])
    assert moving <= still * 1.001
    if every <= 2:  # tierd backed off: moves are probes (old code: 5-10% of the pages)
        assert statistics.mean(r.moves for r in rows) <= 0.01 * 65536
    if every >= 3:
        assert moving < still * 0.9  # where moves pay, tierd still makes them


def test_fast_node_kept_full_of_page_cache_still_takes_the_hot_set(policy):
    """A reader refills the fast node with page cache every interval (cache=...): the hot
    set starting on slow reaches fast (old code: room is MemFree, 0, nothing promoted)."""
    spec = parse_workload("size=1GiB,fast=256MiB,dist=hotset:10%,init=slow,cache=256MiB,intervals=12")
    rows, machine = simulate(policy, spec)
    assert machine.cache[0] > 0  # the page cache is there all along
    assert summarize(rows).steady_ratio >= 0.95


def test_kernel_moves_behind_tierds_back_are_recovered(policy):
    """NUMA balancing promotes pages tierd did not move (about 8,500 in this run); after a
    recheck interval tierd's node of every page it knows is the kernel's (old code: 6,117
    pages wrong, where tierd last saw them).  kswapd demotions: test_engine_recheck.py."""
    spec = parse_workload("size=1GiB,fast=256MiB,dist=zipf:1.1,numa_balancing=on,intervals=16")
    seen = {}

    def check(engine, machine):
        import numpy as np

        proc = next(iter(machine.procs.values()))
        st = next(iter(engine.units.values())).state
        vpn = proc.base_vpn + np.arange(proc.npages)
        known = st.node_of(st.extents.flat_of(vpn))
        ok = (known >= 0) & (proc.node >= 0)
        seen["wrong"] = int((known[ok] != proc.node[ok]).sum())
        seen["known"] = int(ok.sum())

    rows, machine = simulate(policy, spec, on_end=check)
    assert seen["known"] > 0.9 * (1 << 18) and seen["wrong"] == 0


def test_need_reads_the_miss_ratio_curve_from_rates():
    # 100 pages at rate ln 2 (q 0.5) a sample, 900 at rate ln(10/9) (q 0.1): 69.3 + 94.8
    pages = [[100, 900], [0, 0]]
    q = [[0.5, 0.1], [0.0, 0.0]]
    hot, cold = 100 * 0.6931, 900 * 0.10536
    got = need(pages, q, (0.3, 0.9))
    assert got[0] == int(-(-0.3 * (hot + cold) // 0.6931))  # inside the hot cell
    assert got[1] == int(-(-(100 + (0.9 * (hot + cold) - hot) / 0.10536) // 1))


@pytest.mark.parametrize("spec, shares", [
    ("size=1GiB,fast=256MiB,dist=uniform", (0, 1, 2)),
    ("size=1GiB,fast=256MiB,dist=hotset:10%,accesses=0.2", (0, 2)),
    ("size=1GiB,fast=256MiB,dist=zipf:0.7,accesses=0.1", (0, 1, 2)),
    ("size=4GiB,fast=1GiB,dist=zipf:1.1", (0, 1, 2)),
])
def test_need_matches_the_true_curve(policy, spec, shares):
    """Within 10% of the true curve.  Old code: pages accessed many times per sample all
    read as 'accessed' (at most 6.9 a sample): zipf 1.1's 90% need 7x too big, zipf 0.7's
    18% (the skew inside the coldest level); now both from the power-law fit of the
    hotness histogram (gain.zipf_fit).  The hot set (one rate, no power law) is read from
    its cells as before; its 95% point falls inside a level (0.76 of the true need)."""
    rows, machine = simulate(policy, parse_workload(spec + ",intervals=16"))
    proc = next(iter(machine.procs.values()))
    est = rows[-1].need
    for i in shares:
        true = proc.dist.need((0.9, 0.95, 0.99)[i])
        assert abs(est[i] - true) <= 0.10 * true, (i, est, true)


def test_the_curve_is_fitted_again_only_when_the_histogram_moves(policy, monkeypatch):
    """The fit costs tens of ms per target (55-80 ms measured) and ran for every target in
    every interval, outside the engine time the CPU budget paces: a steady target is now
    fitted once a minute (NEED_EVERY), sooner only while its histogram moves."""
    from tierd.engine import daemon

    calls = []

    def counted(*a, **kw):
        calls.append(1)
        return need(*a, **kw)

    monkeypatch.setattr(daemon, "need", counted)
    rows, _ = simulate(policy, parse_workload("size=1GiB,fast=256MiB,dist=zipf:0.7,intervals=40"))
    assert rows[-1].need is not None
    assert 2 <= len(calls) <= 40 // 3, len(calls)


def test_huge_pages_split_on_the_fast_tier_are_not_the_first_victims(policy):
    """Every block a huge page, 4x the fast tier: huge.py splits them (1024 per interval;
    128 before, 0.84 here at 30 intervals, 0.56 at 16 GiB); a hot huge page split on the
    fast tier keeps its history until its own shows the cold subpages (started over at
    hotness 0 it was displaced at once: 0.70 here, 0.24 at 16 GiB)."""
    rows, _ = simulate(policy, parse_workload("size=8GiB,fast=2GiB,dist=zipf:1.1,thp=1,seed=7,intervals=30"))
    assert summarize(rows).steady_ratio >= 0.90


@pytest.mark.parametrize("accesses", ["1x", "2x"])
def test_huge_pages_of_a_skewed_hot_set_are_split(policy, accesses):
    """Every block a huge page, zipf 0.7, 4x the fast tier: the split probes find 65-71% of
    their 4 KiB pages accessed within 2 samples (83-88% at 2x).  With huge_pages.dense at
    50% (before) they were judged densely hot and kept whole, and every whole block weighs
    the same: 0.39 here, 0.36 at 16 GiB.  Split, the 4 KiB placement ranks them: 0.97."""
    rows, _ = simulate(policy, parse_workload(
        f"size=512MiB,fast=128MiB,dist=zipf:0.7,thp=1,accesses={accesses},seed=7,intervals=30"))
    assert summarize(rows).steady_ratio >= 0.90
