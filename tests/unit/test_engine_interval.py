"""The adaptive interval (tierd/engine/interval.py) on a fake clock, and its hook in the daemon."""

from __future__ import annotations

import pytest
from engine_fakes import FakeKernel, FakeProc

from tierd.engine.daemon import Daemon, Engine
from tierd.engine.interval import (
    BURST_SECONDS,
    BUSY_PAGES,
    Bounds,
    IntervalController,
    Observation,
)
from tierd.engine.targets import ProcessRef, StaticResolver
from tierd.policy import Policy, TargetSpec, parse_policy

B = Bounds(min=1.0, max=5.0, cpu=0.10)
QUIET = Observation(cost=0.05)


def run(ctl: IntervalController, observations, start: float = 0.0):
    """Feed observations one interval apart (as the daemon would); returns the intervals."""
    now, out = start, []
    for obs in observations:
        iv = ctl.next(obs, now)
        out.append(iv)
        now += iv
    return out


def test_quiet_backs_off_by_doubling_to_max_and_stays():
    assert run(IntervalController(B), [QUIET] * 6) == [2.0, 4.0, 5.0, 5.0, 5.0, 5.0]


def test_a_new_process_is_confirmed_after_min():
    ctl = IntervalController(B)
    run(ctl, [QUIET] * 4)
    assert ctl.next(Observation(cost=0.05, primed=1), 100.0) == 1.0 and ctl.busy


@pytest.mark.parametrize("obs", [
    Observation(cost=0.05, moved=BUSY_PAGES),
    Observation(cost=0.05, split=1),
    Observation(cost=0.05, deficit=True),
])
def test_moves_or_a_watermark_deficit_keep_it_short(obs):
    ctl = IntervalController(B)
    run(ctl, [QUIET] * 4)
    assert run(ctl, [obs] * 3, 20.0) == [1.0, 1.0, 1.0]
    assert run(ctl, [QUIET] * 3, 30.0) == [2.0, 4.0, 5.0]  # the change is over: back off


def test_a_few_moved_pages_are_noise():
    ctl = IntervalController(B)
    assert run(ctl, [Observation(cost=0.05, moved=BUSY_PAGES - 1)] * 3) == [2.0, 4.0, 5.0]


def test_a_hot_set_appearing_on_the_slow_tier_is_a_change_a_steady_tail_is_not():
    ctl = IntervalController(B)
    tail = Observation(cost=0.05, slow_active=50_000)
    assert run(ctl, [tail] * 4) == [2.0, 4.0, 5.0, 5.0]  # warm pages that stay: quiet
    grown = Observation(cost=0.05, slow_active=50_000 + 24_576)  # 96 MiB newly accessed
    assert ctl.next(grown, 100.0) == 1.0
    # small growth (below 10% of what is there) is noise
    ctl2 = IntervalController(B)
    run(ctl2, [Observation(cost=0.05, slow_active=1_000_000)] * 4)
    assert ctl2.next(Observation(cost=0.05, slow_active=1_000_000 + 50_000), 100.0) == 5.0


def test_a_target_filling_its_memory_is_a_change_a_steady_size_is_not():
    """A workload that starts while tierd runs loads its data before its hot phase: tierd
    must still be sampling at ``min`` when the accesses begin, not backed off to ``max``."""
    ctl = IntervalController(B)
    steady = Observation(cost=0.05, resident=100_000)
    assert run(ctl, [steady] * 4) == [2.0, 4.0, 5.0, 5.0]
    loading = [Observation(cost=0.05, resident=100_000 + 20_000 * i) for i in range(1, 6)]
    assert run(ctl, loading, 100.0) == [1.0] * 5
    # a few pages faulted in (below BUSY_PAGES) or a small fraction of a large target: quiet
    ctl2 = IntervalController(B)
    run(ctl2, [Observation(cost=0.05, resident=1_000_000)] * 4)
    assert ctl2.next(Observation(cost=0.05, resident=1_000_000 + 50_000), 100.0) == 5.0
    assert ctl2.next(Observation(cost=0.05, resident=1_000_000 + 50_000 + BUSY_PAGES - 1),
                     105.0) == 5.0


def test_cpu_budget_lengthens_the_interval_once_the_burst_is_spent():
    """A sample costing 0.5 s at a 10% budget: min (1 s) while the bucket lasts, then the
    sustainable 5 s; averaged over the run the CPU stays at the budget plus the burst."""
    ctl = IntervalController(B)
    busy = Observation(cost=0.5, moved=10 * BUSY_PAGES)
    ivs = run(ctl, [busy] * 40)
    assert ivs[0] == 1.0
    assert ivs[-1] == pytest.approx(5.0)
    spent = 0.5 * len(ivs)
    elapsed = sum(ivs[:-1])
    assert spent <= B.cpu * (elapsed + BURST_SECONDS) + 0.5 + 1e-9


def test_budget_between_bounds():
    """At a 20% budget, a 0.4 s sample is sustainable every 2 s: not min, not max."""
    ctl = IntervalController(Bounds(1.0, 5.0, 0.20))
    ivs = run(ctl, [Observation(cost=0.4, moved=10 * BUSY_PAGES)] * 60)
    assert ivs[-1] == pytest.approx(2.0, rel=0.05)


def test_max_is_a_hard_bound_even_over_budget():
    ctl = IntervalController(B)
    assert run(ctl, [Observation(cost=3.0)] * 10)[-1] == 5.0


def test_steady_state_cpu_is_that_of_a_fixed_max_interval():
    ctl = IntervalController(B)
    ivs = run(ctl, [QUIET] * 100)
    assert sum(ivs[5:]) / len(ivs[5:]) == 5.0


def test_reconfigure_clamps_the_current_interval():
    ctl = IntervalController(B)
    run(ctl, [QUIET] * 5)
    ctl.configure(Bounds(0.5, 2.0, 0.10))
    assert ctl.interval == 2.0
    assert ctl.next(QUIET, 100.0) == 2.0


# -- policy ------------------------------------------------------------------------------------


def test_policy_auto_interval_keys():
    p = parse_policy("interval: auto\nauto_interval:\n  min: 500ms\n  max: 10s\n  cpu: 5%\n")
    assert (p.interval_auto, p.interval_min, p.interval, p.cpu_budget) == (True, 0.5, 10.0, 0.05)
    fixed = parse_policy("interval: 2s\n")
    assert not fixed.interval_auto and fixed.interval == 2.0
    assert Policy().interval_auto  # the shipped default


# -- the daemon hook -------------------------------------------------------------------------------

PID = 4242


def test_daemon_paces_with_the_controller_and_budgets_the_interval():
    k = FakeKernel()
    proc = k.add(FakeProc(PID, 4096, node=1))
    pol = Policy(source="<t>", targets=(TargetSpec(name="app", pids=(PID,)),),
                 rate=4096 * 100, metrics_listen="")  # 100 pages/s
    now = {"t": 0.0}
    eng = Engine(k, pol, resolver=StaticResolver([ProcessRef(PID, 0.0, "app")]),
                 clock=lambda: now["t"])
    d = Daemon(eng, clock=lambda: now["t"])
    ivs = []
    for i in range(6):
        if i == 3:  # a hot set appears at the fourth sample
            proc.next_access |= {proc.vpn(j) for j in range(1000)}
        stats = d.tick()
        ivs.append(d.next_interval(stats))
        now["t"] += ivs[-1]
    # first sample primes -> 1 s; quiet -> 2, 4; the hot set is seen -> 1 s (and the moves
    # of the next intervals keep it there)
    assert ivs[:4] == [1.0, 2.0, 4.0, 1.0]
    assert eng.move_budget == 100 * ivs[-1]  # the byte budget covers the chosen interval
    fixed = Daemon(Engine(k, Policy(source="<t>", interval=3.0, interval_auto=False),
                          resolver=StaticResolver([])))
    assert fixed.next_interval(None) == 3.0
    assert fixed.engine.move_budget == 3 * (128 << 20) // 4096
