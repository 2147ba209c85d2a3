"""The simulator: workload specs, the simulated machine, and short end-to-end runs."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from tierd.sim import simulate as sim
from tierd.sim.simulate import (
    FAST,
    SLOW,
    SimKernel,
    SimMachine,
    WorkloadError,
    Zipf,
    _mulmod,
    parse_workload,
    simulate,
    summarize,
)
from tierd.policy import Policy, TargetSpec

MIB = 1 << 20


def policy(**kw):
    base = dict(source="<test>", interval=5.0, targets=(TargetSpec("app"),), rate=1 << 30)
    base.update(kw)
    return Policy(**base)


def test_compact_spec():
    s = parse_workload("size=1TiB,fast=256GiB,dist=zipf:1.1,phase=every:20,accesses=2x,seed=3")
    (p,) = s.processes
    assert (p.size, p.dist, p.phase_every, p.accesses, s.fast, s.seed) == (
        1 << 40, "zipf:1.1", 20, 2.0, 256 << 30, 3)
    assert s.slow_size == 1 << 40


def test_yaml_spec(tmp_path):
    f = tmp_path / "w.yaml"
    f.write_text("machine: {fast: 1GiB, other: 100MiB}\nintervals: 7\nprocesses:\n"
                 "  - {size: 1GiB, dist: 'hotset:10%:80%', target: db}\n"
                 "  - {size: 512MiB, dist: uniform, layout: contig}\n")
    s = parse_workload(str(f))
    assert len(s.processes) == 2 and s.intervals == 7 and s.other == 100 * MIB
    assert s.processes[0].target == "db" and s.processes[1].layout == "contig"


@pytest.mark.parametrize("bad", [
    "size=1GiB", "fast=1GiB", "size=1GiB,fast=1GiB,dist=pareto", "size=1GiB,fast=1GiB,bogus=2",
    "size=1GiB,fast=1GiB,phase=sometimes", "size=lots,fast=1GiB", "size=1GiB,fast=1GiB,other=2GiB",
    "size=1GiB,fast=1GiB,dist=hotset:150%", "size=1GiB,fast=1GiB,accesses=-1x", "nonsense",
])
def test_bad_specs(bad):
    with pytest.raises(WorkloadError):
        parse_workload(bad)


def test_zipf_tables():
    z = Zipf(10_000, 1.1)
    w = z.weight(np.arange(10_000))
    assert abs(w.sum() - 1) < 1e-9 and np.all(np.diff(w) <= 0)
    assert abs(z.prefix(1234) - w[:1234].sum()) < 1e-12
    assert z.count_ge(w[99]) == 100


def test_mulmod_and_bijection():
    n = (1 << 40) + 7
    x = np.array([0, 1, n - 1, 123456789012], np.uint64)
    a = (n * 5) // 8 | 1
    assert _mulmod(x, a, n).tolist() == [(int(v) * a) % n for v in x]
    m = SimMachine(parse_workload("size=64MiB,fast=32MiB"))
    p = next(iter(m.procs.values()))
    ranks = np.arange(p.npages)
    pages = p.page_of(ranks)
    assert np.array_equal(np.sort(pages), ranks) and np.array_equal(p.rank_of(pages), ranks)


def test_accesses_follow_the_poisson_model():
    m = SimMachine(parse_workload("size=256MiB,fast=128MiB,dist=zipf:0.9,accesses=0.5x,seed=7"))
    p = next(iter(m.procs.values()))
    lam = p.rate * p.dist.weight(np.arange(p.npages))
    expected = (-np.expm1(-lam)).sum()
    counts = []
    for _ in range(3):
        p.generate()
        counts.append(int(np.bitwise_count(p.accessed).sum()))
    assert abs(np.mean(counts) - expected) < 0.01 * expected + 200


def test_move_pages_capacity_and_hit_bookkeeping():
    m = SimMachine(parse_workload("size=8MiB,fast=4MiB,init=slow"))
    k = SimKernel(m)
    p = next(iter(m.procs.values()))
    assert m.used[FAST] == 0 and m.hit_fraction() == 0.0
    addrs = (np.arange(p.npages, dtype=np.uint64) + np.uint64(p.base_vpn)) << np.uint64(12)
    from tierd.linux.errors import MovePagesError

    with pytest.raises(MovePagesError) as ei:  # a full destination: a whole-call ENOMEM
        k.move_pages(p.pid, addrs, np.full(p.npages, FAST, np.int32))
    st = ei.value.status
    room = 1024 - int(1024 * sim.MIN_FREE_FRACTION)
    assert ei.value.errno == errno.ENOMEM and ei.value.done == p.npages
    assert (st[:room] == FAST).all() and (st[room:] == SLOW).all()  # the rest did not move
    assert m.used[FAST] == room
    fw = p.fast_weight
    p.recompute_fast_weight()
    assert abs(fw - p.fast_weight) < 1e-9
    q = k.move_pages(p.pid, addrs[:3], None)
    assert q.tolist() == [FAST] * 3
    assert k.move_pages(p.pid, np.array([8], np.uint64), None).tolist() == [-errno.EFAULT]
    t = k.topology()
    assert t.node(FAST).mem_free == (1024 - room) * 4096
    assert t.classify() == ((FAST,), (SLOW,))


def test_small_zipf_run_reaches_the_oracle():
    spec = parse_workload("size=128MiB,fast=64MiB,dist=zipf:1.1,seed=2")
    rows, _ = simulate(policy(), spec, intervals=12)
    s = summarize(rows)
    assert s.steady_ratio > 0.95
    assert rows[0].queried == 32768  # the first interval learns where pages are


def test_phase_change_recovers_within_three_intervals():
    spec = parse_workload("size=128MiB,fast=32MiB,dist=hotset:5%:95%,phase=every:8,seed=4")
    rows, _ = simulate(policy(), spec, intervals=24)
    s = summarize(rows)
    assert [r.interval for r in rows if r.phase_change] == [8, 16]
    assert s.steady_ratio > 0.95
    assert all(r is not None and r <= 3 for r in s.recoveries)


def test_two_processes_two_targets():
    pol = policy(targets=(TargetSpec("a"), TargetSpec("b")))
    spec = sim._from_mapping({
        "machine": {"fast": "64MiB"},
        "processes": [{"size": "64MiB", "dist": "zipf:1.2", "target": "a"},
                      {"size": "64MiB", "dist": "uniform", "target": "b"}],
    }, "test")
    rows, m = simulate(pol, spec, intervals=8)
    assert summarize(rows).steady_ratio > 0.9
    with pytest.raises(WorkloadError):
        simulate(policy(), spec, intervals=1)  # target b is not in that policy


def test_cli_simulate(tmp_path, capsys):
    from tierd.cli import main

    cfg = tmp_path / "p.yaml"
    cfg.write_text("targets:\n  - name: app\n    comm: x\nmigration: {rate: 1GiB/s}\n")
    rc = main(["simulate", "--config", str(cfg), "--workload", "size=32MiB,fast=16MiB",
               "--intervals", "4"])
    out = capsys.readouterr().out
    assert rc == 0 and "steady state: hit/oracle" in out and out.count("\n") >= 6
    assert main(["simulate", "--config", str(cfg), "--workload", "size=1GiB"]) == 2


def test_wasted_moves_and_effective_access_time():
    """A page moved back within the window is wasted; a swap that demotes the heavier page
    is wasted twice; moves raise the effective access time."""
    m = SimMachine(parse_workload("size=8MiB,fast=4MiB,slow=16MiB,init=slow,dist=zipf:1.1"))
    k = SimKernel(m)
    p = next(iter(m.procs.values()))
    heavy = p.page_of(np.arange(4, dtype=np.uint64))  # the 4 heaviest pages
    light = p.page_of(np.arange(1000, 1004, dtype=np.uint64))

    def addrs(pages):
        return (np.asarray(pages, np.uint64) + np.uint64(p.base_vpn)) << np.uint64(12)

    m.interval = 0
    m.begin_moves()
    k.move_pages(p.pid, addrs(heavy), np.full(4, FAST, np.int32))
    assert m.move_stats() == (0, 0)  # first moves, into free room
    m.interval = 3
    m.begin_moves()
    k.move_pages(p.pid, addrs(heavy[:2]), np.full(2, SLOW, np.int32))  # back after 3 intervals
    k.move_pages(p.pid, addrs(light[:2]), np.full(2, FAST, np.int32))  # lighter ones promoted
    assert m.move_stats() == (2, 4)
    m.interval = 3 + sim.WASTE_WINDOW
    m.begin_moves()
    k.move_pages(p.pid, addrs(heavy[:2]), np.full(2, FAST, np.int32))  # back, but much later
    assert m.move_stats() == (0, 0)


def test_nodes_learned_within_the_documented_intervals():
    """etc/tierd.yaml: the default migration.query_rate learns a 1 TiB process in 4 intervals.
    The same schedule, scaled down (2 GiB, a quarter of it per interval), on the simulator:
    queries come out of their own budget, hottest first, and every page is known after the
    4th interval while moves go on."""
    default = Policy()
    per_interval = int(default.query_rate * default.interval) // 4096
    intervals = -(-(1 << 40) // 4096 // per_interval)
    assert intervals <= 4
    pages = (2 << 30) // 4096
    pol = policy(interval=4.0, query_rate=(2 << 30) // intervals // 4, rate=64 * MIB)
    rows, _ = simulate(pol, parse_workload("size=2GiB,fast=1GiB,dist=zipf:1.1,seed=5"), intervals=6)
    budget = pages // intervals
    assert [r.unknown for r in rows[:intervals]] == [pages - (i + 1) * budget for i in range(intervals)]
    assert all(r.unknown == 0 for r in rows[intervals - 1:])
    assert sum(r.queried for r in rows) == pages
    moved = [r for r in rows if r.moves]
    assert moved and all(r.moves <= 64 * MIB * 4 // 4096 for r in rows)
    assert all(r.eat_ns > sim.ACCESS_LINES * sim.T_FAST for r in moved)
    assert all(0 <= r.wasted <= r.moves for r in rows)


def test_churn_frees_and_faults_back_pages_and_kswapd_demotes_behind_tierds_back():
    spec = parse_workload("size=64MiB,fast=32MiB,dist=zipf:1.1,churn=10%,kswapd=on,seed=6")
    assert spec.processes[0].churn == 0.1 and spec.kswapd
    m = SimMachine(spec)
    p = next(iter(m.procs.values()))
    assert m.free(FAST) < sim.KSWAPD_LOW * m.capacity[FAST]  # first touch filled it
    m.begin_interval()
    assert m.kswapd_demoted > 0 and m.free(FAST) >= int(sim.KSWAPD_HIGH * m.capacity[FAST])
    m.begin_interval()
    lo, hi = p.freed
    assert hi - lo == int(p.npages * 0.1) // 64 * 64
    assert (p.node[lo:hi] == sim.ABSENT).all() and not p.present[lo // 64: hi // 64].any()
    assert not (p.accessed[lo // 64: hi // 64]).any()
    assert m.used[FAST] + m.used[SLOW] == p.npages - (hi - lo)
    k = SimKernel(m)
    addr = np.array([(p.base_vpn + lo) << 12], np.uint64)
    assert k.move_pages(p.pid, addr, None).tolist() == [-errno.ENOENT]
    assert k.move_pages(p.pid, addr, np.array([FAST], np.int32)).tolist() == [-errno.ENOENT]
    m.begin_interval()  # faulted back in (and another range freed)
    assert (p.node[lo:hi] != sim.ABSENT).all() or p.freed[0] < hi
    fw = p.fast_weight
    p.recompute_fast_weight()
    assert abs(fw - p.fast_weight) < 1e-9
    # the engine copes: pages vanish and come back with unknown node, kswapd moves pages
    rows, _ = simulate(policy(), spec, intervals=10)
    assert summarize(rows).steady_ratio > 0.8
    assert all(r.fast_used <= 1.0 for r in rows)


def test_two_fast_and_two_slow_nodes():
    spec = parse_workload("size=64MiB,fast=32MiB,dist=zipf:1.1,nodes=2+2,seed=8")
    m = SimMachine(spec)
    t = SimKernel(m).topology()
    assert t.classify() == ((0, 1), (2, 3))
    assert t.node(0).distances == (10, 21, 20, 30) and t.node(3).distances == (30, 20, 30, 10)
    assert m.capacity == {0: 4096, 1: 4096, 2: 8192, 3: 8192}
    # first touch: node 0, then node 1, then node 2, each to its reserve; the rest on node 3
    p = next(iter(m.procs.values()))
    fill = [c - int(c * sim.MIN_FREE_FRACTION) for c in (4096, 4096, 8192)]
    assert [int((p.node == n).sum()) for n in range(4)] == fill + [16384 - sum(fill)]
    rows, m = simulate(policy(), spec, intervals=10)
    assert summarize(rows).steady_ratio > 0.9
    for n in (0, 1):  # keep_free (10%) holds on each fast node, after the start
        assert m.free(n) >= int(0.1 * m.capacity[n]) - 1
    assert sum(m.used.values()) == p.npages
    with pytest.raises(WorkloadError):
        parse_workload("size=64MiB,fast=32MiB,nodes=2")


def test_huge_pages_move_and_are_accessed_as_512_page_units():
    """thp=100%: a move of one page moves its whole 2 MiB (the rest counted as dragged),
    needs room for all 512, and its other requested pages share the outcome; one access
    marks all 512 pages accessed (one Accessed bit)."""
    m = SimMachine(parse_workload("size=8MiB,fast=6MiB,init=slow,thp=100%"))
    k = SimKernel(m)
    p = next(iter(m.procs.values()))
    assert p.huge is not None and p.huge.all() and p.huge.size == 4
    addr = lambda i: (np.uint64(p.base_vpn + i)) << np.uint64(12)  # noqa: E731
    m.begin_moves()
    st = k.move_pages(p.pid, np.array([addr(5), addr(700), addr(6)]), np.full(3, FAST, np.int32))
    assert st.tolist() == [FAST] * 3
    assert (p.node[:1024] == FAST).all() and (p.node[1024:] == SLOW).all()
    assert m.used[FAST] == 1024 and m.dragged == 1024 - 3
    w = p.weight_of_pages(np.arange(1024)).sum()
    assert abs(p.fast_weight - w) < 1e-9
    # room for 1536 - 7 reserved - 1024 = 505 more pages: not a whole huge page
    from tierd.linux.errors import MovePagesError

    with pytest.raises(MovePagesError) as ei:
        k.move_pages(p.pid, np.array([addr(1100)]), np.array([FAST], np.int32))
    assert ei.value.errno == errno.ENOMEM and ei.value.status.tolist() == [SLOW]
    assert m.used[FAST] == 1024
    p.generate()
    acc = np.unpackbits(p.accessed.view(np.uint8), bitorder="little").reshape(4, 512)
    assert set(acc.sum(axis=1).tolist()) <= {0, 512} and acc.any()
    assert parse_workload("size=8MiB,fast=4MiB").processes[0].thp == 0
    with pytest.raises(WorkloadError):
        parse_workload("size=8MiB,fast=4MiB,thp=150%")


def test_huge_pages_cost_moves_in_a_run():
    """End to end with 10% huge pages: the run still converges, and the pages moved only
    as parts of huge pages are reported (and charged in the effective access time)."""
    spec = parse_workload("size=128MiB,fast=64MiB,dist=zipf:1.1,seed=2,thp=10%")
    rows, _ = simulate(policy(), spec, intervals=12)
    assert summarize(rows).steady_ratio > 0.9
    assert sum(r.dragged for r in rows) > 0
