"""Executor: status accounting and batches sized to keep each move_pages call short."""

from __future__ import annotations

import errno

import numpy as np

from tierd.engine.executor import MEASURE_BATCH, NOT_TRIED, Executor, MoveCounts, tally


def test_tally_sorts_statuses():
    status = np.array([0, 0, 1, -errno.EBUSY, -errno.ENOENT, -errno.EFAULT, -errno.ENOMEM,
                       -errno.EACCES, -errno.EPERM, -errno.EINVAL, NOT_TRIED], np.int32)
    c = tally(status, np.zeros(status.size, np.int32))
    assert (c.moved, c.elsewhere, c.busy, c.absent, c.nomem, c.denied, c.other, c.not_tried) == (
        2, 1, 1, 2, 1, 2, 1, 1)
    assert c.failed == 7
    q = tally(np.array([0, 1, -errno.ENOENT], np.int32), None)
    assert (q.queried, q.learned, q.absent, q.moved) == (3, 2, 1, 0)


class RecordingKernel:
    def __init__(self):
        self.sizes = []

    def move_pages(self, pid, addrs, nodes=None, flags=0, batch=4096):
        self.sizes.append(len(addrs))
        assert batch == len(addrs)
        return np.zeros(len(addrs), np.int32) if nodes is None else np.asarray(nodes, np.int32)


class Clock:
    """Each move_pages call takes ``step`` seconds."""

    def __init__(self, step):
        self.t = 0.0
        self.step = step
        self.n = 0

    def __call__(self):
        self.n += 1
        if self.n % 2 == 0:
            self.t += self.step
        return self.t


class PageClock:
    """A move_pages call takes ``fixed`` seconds plus ``per_page`` per page."""

    def __init__(self, fixed, per_page):
        self.t = 0.0
        self.fixed = fixed
        self.per_page = per_page

    def __call__(self):
        return self.t


class TimedKernel(RecordingKernel):
    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def move_pages(self, pid, addrs, nodes=None, flags=0, batch=4096):
        self.clock.t += self.clock.fixed + self.clock.per_page * len(addrs)
        return super().move_pages(pid, addrs, nodes, flags, batch)


def test_batches_shrink_when_calls_are_slow_and_grow_back():
    clock = PageClock(0.0, 0.0002)  # 0.2 ms a page: 256 pages take 51 ms, above the 20 ms aim
    k = TimedKernel(clock)
    ex = Executor(k, 256, clock=clock)
    status, c = ex.move(1, np.arange(1000, dtype=np.uint64) << np.uint64(12), np.zeros(1000, np.int32))
    assert k.sizes[:3] == [256, 128, 64] and sum(k.sizes) == 1000
    assert set(k.sizes[2:-1]) == {64}  # 64 pages = 12.8 ms: within the aim
    assert c.moved == 1000 and c.calls == len(k.sizes)
    clock.per_page = 0.00001
    ex.batch["move"] = 16
    k.sizes.clear()
    ex.move(1, np.arange(600, dtype=np.uint64), np.zeros(600, np.int32))
    assert k.sizes == [16, 32, 64, 128, 256, 104]  # fast calls: back up to the policy batch
    assert ex.batch["move"] == 256


def test_a_fixed_cost_per_call_does_not_shrink_the_batch():
    """move_pages starts with lru_cache_disable() (an RCU grace period and an LRU drain on
    every CPU): 30 ms per call in the rig whatever the size.  Once a small call shows that
    cost, calls may take 8x as long, so the batch is not driven down to 16 pages, where the
    fixed cost would be all of the time."""
    clock = PageClock(0.030, 0.00002)  # 30 ms a call + 20 us a page
    k = TimedKernel(clock)
    ex = Executor(k, 1024, clock=clock)
    ex.begin(None)  # an interval starts with a measuring batch: it shows the fixed cost
    ex.move(1, np.arange(20000, dtype=np.uint64) << np.uint64(12), np.zeros(20000, np.int32))
    assert k.sizes[0] == MEASURE_BATCH and set(k.sizes[1:-1]) == {1024}
    # without a small call, nothing tells a fixed cost from a per-page one: 1024 stays slow
    # until the batch is small enough to reveal it (<= 32 pages), then grows back
    clock.fixed, clock.per_page = 0.030, 0.0
    ex2 = Executor(k, 1024, clock=clock)
    k.sizes.clear()
    ex2.move(1, np.arange(8000, dtype=np.uint64) << np.uint64(12), np.zeros(8000, np.int32))
    assert k.sizes[:7] == [1024, 512, 256, 128, 64, 32, 64] and 1024 in k.sizes


def test_queries_use_longer_batches():
    k = RecordingKernel()
    ex = Executor(k, 64, clock=lambda: 0.0)
    status, c = ex.query(1, np.arange(3000, dtype=np.uint64))
    assert k.sizes == [1024, 1024, 952] and c.learned == 3000


def test_stop_between_batches():
    k = RecordingKernel()
    stop = {"now": False}

    def kernel_call(*a, **kw):
        stop["now"] = True
        return RecordingKernel.move_pages(k, *a, **kw)

    k.move_pages = kernel_call
    ex = Executor(k, 100, clock=lambda: 0.0, should_stop=lambda: stop["now"])
    status, c = ex.move(1, np.arange(250, dtype=np.uint64), np.ones(250, np.int32))
    assert (status[:100] == 1).all() and (status[100:] == NOT_TRIED).all()
    assert c.moved == 100 and c.not_tried == 150


def test_counts_add_up():
    a, b = MoveCounts(moved=1, busy=2, seconds=0.5), MoveCounts(moved=3, calls=2)
    a.add(b)
    assert a.moved == 4 and a.busy == 2 and a.calls == 2 and a.as_dict()["seconds"] == 0.5


def test_a_held_process_that_is_no_longer_alive_is_not_moved_by_pid():
    """move_pages(2) takes a pid: a process that exited since its sample (its pid maybe
    reused by another) was moved by number; a held one is now checked first."""

    class Held(int):
        def __new__(cls, pid, alive):
            h = super().__new__(cls, pid)
            h.live = alive
            return h

        def alive(self):
            return self.live

    k = RecordingKernel()
    calls = []
    k.move_pages = lambda pid, addrs, nodes=None, flags=0, batch=4096: (
        calls.append(int(pid)) or np.asarray(nodes, np.int32))
    ex = Executor(k, 100, clock=lambda: 0.0)
    jobs = [(Held(7, False), np.arange(4, dtype=np.uint64), np.ones(4, np.int32), 0),
            (Held(8, True), np.arange(4, dtype=np.uint64), np.ones(4, np.int32), 0)]
    status, counts, errors = ex.run_many(jobs)
    assert calls == [8]
    assert list(errors) == [0] and errors[0].errno == errno.ESRCH
    assert counts.moved == 4 and (status[:4] == NOT_TRIED).all()
