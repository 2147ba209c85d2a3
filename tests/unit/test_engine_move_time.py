"""The move time budget: a fake kernel whose move_pages takes simulated time on a fake clock."""

from __future__ import annotations

import numpy as np
from engine_fakes import FakeKernel, FakeProc

from tierd.engine.daemon import Engine
from tierd.engine.executor import MIN_BATCH, NOT_TRIED, Executor
from tierd.engine.targets import ProcessRef, StaticResolver
from tierd.policy import Policy, TargetSpec

PID = 4242


class SlowKernel(FakeKernel):
    """move_pages advances ``now`` by ``per_page`` seconds per page (queries are free)."""

    def __init__(self, per_page: float, **kw) -> None:
        super().__init__(**kw)
        self.now = 0.0
        self.per_page = per_page
        self.call_times: list[float] = []

    def clock(self) -> float:
        return self.now

    def move_pages(self, pid, addrs, nodes=None, flags=0, batch=4096):
        if nodes is not None:
            dt = self.per_page * len(addrs)
            self.now += dt
            self.call_times.append(dt)
        return super().move_pages(pid, addrs, nodes, flags, batch)


def test_executor_stops_at_the_deadline_within_one_batch():
    k = SlowKernel(per_page=0.001)  # 1 ms a page: 4 MiB (1024 pages) would take 1 s
    proc = k.add(FakeProc(PID, 4096, node=1))
    ex = Executor(k, 1024, clock=k.clock)
    ex.deadline = 0.25
    addrs = np.array([proc.addr(i) for i in range(4096)], np.uint64)
    status, counts = ex.move(PID, addrs, np.zeros(4096, np.int32))
    biggest = max(k.call_times)
    assert k.now <= 0.25 + biggest  # at most one batch past the budget
    assert k.now >= 0.25 - biggest  # and the budget is used, not given up early
    assert counts.moved + counts.not_tried == 4096 and counts.not_tried > 3000
    assert (status[counts.moved:] == NOT_TRIED).all()
    # a deadline already past: nothing is tried
    ex.deadline = k.now
    _, c2 = ex.move(PID, addrs[-100:], np.zeros(100, np.int32))
    assert c2.calls == 0 and c2.not_tried == 100


def test_last_batch_is_cut_to_what_fits():
    k = SlowKernel(per_page=0.001)
    proc = k.add(FakeProc(PID, 4096, node=1))
    ex = Executor(k, 4096, clock=k.clock, call_seconds=10.0)  # batches would stay at 4096
    ex.page_seconds = 0.001  # measured on an earlier batch
    ex.deadline = 0.1
    addrs = np.array([proc.addr(i) for i in range(4096)], np.uint64)
    _, counts = ex.move(PID, addrs, np.zeros(4096, np.int32))
    assert counts.moved == 100 and k.now == 0.1
    ex.deadline = k.now + 0.001  # less than MIN_BATCH pages of time left: one small batch
    _, counts = ex.move(PID, addrs[100:], np.zeros(3996, np.int32))
    assert counts.moved == MIN_BATCH


def test_engine_bounds_each_intervals_moves_in_time_and_adapts_the_budget():
    """Huge-page-like migration speed (10 ms a page): the byte budget would allow 32768
    pages a second; the moves of each 1 s interval stop after about 1 s, and from then on
    the plan asks only for what the measured speed moves in an interval."""
    k = SlowKernel(per_page=0.01)
    proc = k.add(FakeProc(PID, 8192, node=1))
    pol = Policy(source="<t>", interval=1.0, interval_auto=False, rate=128 << 20,
                 targets=(TargetSpec(name="app", pids=(PID,)),))
    eng = Engine(k, pol, resolver=StaticResolver([ProcessRef(PID, 0.0, "app")]), clock=k.clock)
    eng.step()  # primes; queries are free
    hot = range(4000)
    budgets, move_times = [], []
    for _ in range(4):
        proc.next_access |= {proc.vpn(i) for i in hot}
        budgets.append(eng.move_budget)
        k.call_times.clear()
        stats = eng.step()
        move_times.append(stats.moves.seconds)
        assert stats.moves.seconds <= stats.interval + max(k.call_times, default=0)
    assert budgets[0] == 32768 and budgets[-1] <= 200  # 100 pages/s measured
    assert max(move_times) <= 1.0 + 0.01 * 1024
    on_fast = sum(proc.node[proc.vpn(i)] == 0 for i in hot)
    assert 0 < on_fast < 4000  # progress, within time: not all 40 s of moves at once


def test_each_interval_starts_with_a_measuring_batch():
    """What the last interval measured (fast 4 KiB pages) says nothing about this one's
    first batch (huge pages: one address moves a 2 MiB folio): begin() measures again with
    a MEASURE_BATCH batch, so a slow first batch cannot blow the budget."""
    from tierd.engine.executor import MEASURE_BATCH

    k = SlowKernel(per_page=0.0001)
    proc = k.add(FakeProc(PID, 8192, node=1))
    ex = Executor(k, 4096, clock=k.clock, call_seconds=10.0)  # batches stay at 4096
    addrs = np.array([proc.addr(i) for i in range(8192)], np.uint64)
    ex.begin(k.now + 1.0)
    _, c = ex.move(PID, addrs[:4096], np.zeros(4096, np.int32))
    assert c.moved == 4096 and k.call_times[0] == MEASURE_BATCH * 0.0001
    assert ex.page_seconds == 0.0001
    k.per_page = 0.01  # this interval: 100x slower per address
    k.call_times.clear()
    start = k.now
    ex.begin(start + 1.0)
    _, c = ex.move(PID, addrs[4096:], np.zeros(4096, np.int32))
    assert k.call_times[0] == MEASURE_BATCH * 0.01  # measured first, not 4096 pages (41 s)
    assert k.now - start <= 1.0 + max(k.call_times) and max(k.call_times) <= 1.0
    assert 80 <= c.moved <= 110 and c.not_tried == 4096 - c.moved
    # without begin() (the old behaviour, kept for a deadline set by hand) the stale estimate
    # would have let the first batch run for 4096 * 0.01 = 41 s: that is the bug
    ex.begin(None)
    assert ex.deadline is None and ex.page_seconds == 0.0


def test_a_cheap_batch_after_an_expensive_one_does_not_unleash_a_long_one():
    """Huge pages: the batch holding a folio's first address pays for all 512; the next
    batch of its tail addresses is nearly free.  The estimate is the interval's average (at
    least), so the batch after the cheap one is still sized to the time left."""

    class FolioKernel(SlowKernel):
        def move_pages(self, pid, addrs, nodes=None, flags=0, batch=4096):
            if nodes is not None:  # 512 addresses per folio; its first one costs 0.5 s
                heads = sum(1 for a in np.asarray(addrs).tolist() if (a // 4096) % 512 == 0)
                dt = 0.5 * heads + 1e-6 * len(addrs)
                self.now += dt
                self.call_times.append(dt)
            return FakeKernel.move_pages(self, pid, addrs, nodes, flags, batch)

    k = FolioKernel(per_page=0.0)
    proc = k.add(FakeProc(PID, 8192, node=1))
    ex = Executor(k, 4096, clock=k.clock, call_seconds=100.0)
    addrs = np.array([proc.addr(i) for i in range(8192)], np.uint64)
    ex.begin(2.0)
    ex.move(PID, addrs, np.zeros(8192, np.int32))
    assert k.now <= 2.0 + 0.5 + 0.01  # at most one folio past the budget


def test_one_slow_interval_does_not_cap_the_budget_for_good():
    """The measured speed cuts the next budget; if a slow interval (a stall, a loaded host)
    set it low, the small quick moves that follow must raise it again, or every later
    interval moves a few hundred pages (the rig: 88 pages/s for the rest of the run)."""
    k = SlowKernel(per_page=0.01)  # the first moves: 100 pages/s
    proc = k.add(FakeProc(PID, 16384, node=1))
    pol = Policy(source="<t>", interval=1.0, interval_auto=False, rate=128 << 20,
                 targets=(TargetSpec(name="app", pids=(PID,)),))
    eng = Engine(k, pol, resolver=StaticResolver([ProcessRef(PID, 0.0, "app")]), clock=k.clock)
    eng.step()
    hot = range(12000)
    proc.next_access |= {proc.vpn(i) for i in hot}
    eng.step()
    slow = eng.move_budget
    assert slow <= 200
    k.per_page = 0.00002  # the stall is over: 50,000 pages/s
    budgets = []
    for _ in range(6):
        proc.next_access |= {proc.vpn(i) for i in hot}
        eng.step()
        budgets.append(eng.move_budget)
    assert budgets[-1] >= 10000, budgets  # back to what the kernel really does
    assert all(b2 >= b1 for b1, b2 in zip(budgets, budgets[1:]))
    assert sum(proc.node[proc.vpn(i)] == 0 for i in hot) >= 11000
