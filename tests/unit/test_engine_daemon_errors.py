"""The engine's error paths: a fake kernel whose maps, access-bit reader and move_pages raise
OSError on demand, and what the operator is told (caplog) and what the engine does next.
Also the backoff of absent pages and the daemon giving up after failing intervals."""

from __future__ import annotations

import argparse
import errno
import logging
import signal

import numpy as np
from engine_fakes import FakeKernel, FakeProc

from tierd.engine import daemon as daemon_mod
from tierd.engine.daemon import MAX_FAILED_INTERVALS, Daemon, Engine
from tierd.engine.executor import NOT_TRIED, Executor, tally
from tierd.engine.targets import ProcessRef, StaticResolver
from tierd.policy import Policy, TargetSpec
from tierd import service

PID = 4242
BASE2 = 0x7E00_0000_0000  # a second process's mapping


class FailingKernel(FakeKernel):
    """FakeKernel whose ``fail[what]`` (what: "maps", "sample", "move_pages") maps a pid to
    the OSError to raise there."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.fail: dict[str, dict[int, OSError]] = {"maps": {}, "sample": {}, "move_pages": {}}
        maps, sample = self.procfs.maps, self._reader.sample

        def failing_maps(pid):
            if pid in self.fail["maps"]:
                raise self.fail["maps"][pid]
            return maps(pid)

        def failing_sample(pid, word_start, nwords):
            if pid in self.fail["sample"]:
                raise self.fail["sample"][pid]
            return sample(pid, word_start, nwords)

        self.procfs.maps = failing_maps
        self._reader.sample = failing_sample

    def move_pages(self, pid, addrs, nodes=None, flags=0, batch=4096):
        if pid in self.fail["move_pages"]:
            raise self.fail["move_pages"][pid]
        return super().move_pages(pid, addrs, nodes, flags, batch)


def policy(**kw) -> Policy:
    base = dict(source="<test>", interval=1.0, targets=(TargetSpec("app", pids=(PID,)),),
                rate=1 << 30, batch=4 << 20, retry_after=4)
    base.update(kw)
    return Policy(**base)


def engine(k, pids=(PID,), **kw) -> Engine:
    return Engine(k, policy(**kw), resolver=StaticResolver([ProcessRef(p, 0.0, "app") for p in pids]),
                  clock=lambda: 0.0)


def access(proc, pages):
    proc.next_access |= {proc.vpn(i) for i in pages}


def warnings_(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def two_processes():
    """PID and PID + 1 as targets, both sampled once: (kernel, PID's FakeProc, engine)."""
    k = FailingKernel()
    a = k.add(FakeProc(PID, 64, node=1))
    k.add(FakeProc(PID + 1, 64, base=BASE2, node=1))
    eng = engine(k, pids=(PID, PID + 1))
    eng.step()
    return k, a, eng


def test_maps_error_warns_and_skips_only_that_process(caplog):
    k, a, eng = two_processes()
    k.fail["maps"][PID + 1] = PermissionError(errno.EACCES, "Permission denied")
    access(a, [1])
    with caplog.at_level(logging.INFO, logger="tierd"):
        stats = eng.step()
    assert warnings_(caplog) == [f"pid {PID + 1} (app): not sampled: [Errno 13] Permission denied"]
    # the other process is sampled and placed; the unreadable one is kept, not dropped
    assert stats.promoted == 1 and k.moves() == [(PID, [1], [0])]
    assert set(eng.units) == {(PID, 0.0), (PID + 1, 0.0)} and stats.dropped == 0


def test_reader_error_warns_once_per_process_and_errno(caplog):
    k, a, eng = two_processes()
    k.fail["sample"][PID + 1] = OSError(errno.EIO, "Input/output error")
    with caplog.at_level(logging.DEBUG, logger="tierd"):
        for _ in range(3):
            access(a, [1])
            stats = eng.step()
    warned = warnings_(caplog)
    assert len(warned) == 1 and warned[0].startswith(f"pid {PID + 1} (app): range ")
    assert warned[0].endswith("not sampled: [Errno 5] Input/output error")
    # the repeats are still there for whoever debugs
    assert sum("not sampled" in r.getMessage() for r in caplog.records
               if r.levelno == logging.DEBUG) == 2
    # the unreadable process keeps its last sample (not dropped, not made cold) and is
    # counted as not sampled; the other is placed
    assert k.moves() == [(PID, [1], [0])] and set(eng.units) == {(PID, 0.0), (PID + 1, 0.0)}
    assert stats.targets["app"].pages == 128
    assert (stats.unsampled_ranges, stats.targets["app"].unsampled_ranges) == (1, 1)
    # another errno is news again
    k.fail["sample"][PID + 1] = PermissionError(errno.EACCES, "Permission denied")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tierd"):
        eng.step()
    assert len(warnings_(caplog)) == 1 and "Permission denied" in warnings_(caplog)[0]


def test_move_pages_error_warns_and_the_next_interval_retries(caplog):
    k = FailingKernel()
    proc = k.add(FakeProc(PID, 64, node=1))
    eng = engine(k)
    eng.step()
    k.fail["move_pages"][PID] = OSError(errno.EINVAL, "Invalid argument")
    access(proc, [3])
    with caplog.at_level(logging.INFO, logger="tierd"):
        stats = eng.step()
    assert warnings_(caplog) == [f"pid {PID} (app): move_pages: [Errno 22] Invalid argument"]
    assert stats.promoted == 0 and k.moves() == []
    assert (PID, 0.0) in eng.units  # the process stays a target
    del k.fail["move_pages"][PID]
    access(proc, [3])
    stats = eng.step()
    assert stats.promoted == 1 and k.moves() == [(PID, [3], [0])]


def test_absent_page_backs_off_like_a_failed_move():
    # move_pages says ENOENT for page 7 though the samples keep showing it: asking about it
    # again every interval would spend budget for nothing, so it waits retry_after (4)
    # intervals before move_pages sees it again (then as a page of unknown node: a query)
    k = FailingKernel()
    proc = k.add(FakeProc(PID, 64, node=1))
    eng = engine(k)
    eng.step()
    proc.status_override[proc.vpn(7)] = -errno.ENOENT
    asked = []
    for seq in range(2, 8):
        access(proc, [7])
        k.calls.clear()
        stats = eng.step()
        assert eng.seq == seq
        for kind, pid, addrs, dest in k.calls:
            if proc.addr(7) in addrs:
                asked.append((seq, kind))
        if seq == 2:
            assert stats.moves.absent == 1
    assert asked == [(2, "move"), (6, "query"), (7, "query")]


def test_query_counts_only_pages_it_asked_about():
    class Kernel:
        def move_pages(self, pid, addrs, nodes=None, flags=0, batch=4096):
            stop["now"] = True
            return np.ones(len(addrs), np.int32)

    stop = {"now": False}
    ex = Executor(Kernel(), 100, clock=lambda: 0.0, should_stop=lambda: stop["now"])
    status, c = ex.query(1, np.arange(5000, dtype=np.uint64))
    asked = int((status != NOT_TRIED).sum())
    assert 0 < asked < 5000  # stopped after the first batch
    assert (c.queried, c.learned, c.not_tried) == (asked, asked, 5000 - asked)


def test_not_tried_is_no_errno():
    # NOT_TRIED must not collide with any -errno move_pages can return
    for e in errno.errorcode:
        c = tally(np.array([-e], np.int32), np.array([0], np.int32))
        assert c.not_tried == 0 and c.failed == 1, errno.errorcode[e]
    c = tally(np.array([NOT_TRIED], np.int32), np.array([0], np.int32))
    assert c.not_tried == 1 and c.failed == 0


def test_daemon_gives_up_after_failing_intervals_in_a_row(caplog):
    k = FailingKernel()
    k.add(FakeProc(PID, 64, node=1))
    eng = engine(k)
    d = Daemon(eng, max_failed=3)
    outcomes = iter([RuntimeError("a"), None, RuntimeError("b"), RuntimeError("c"),
                     None, RuntimeError("d"), RuntimeError("e"), RuntimeError("f"), None])
    steps = []
    step = eng.step

    def flaky():
        steps.append(1)
        exc = next(outcomes)
        if exc is not None:
            raise exc
        return step()

    eng.step = flaky
    d.stop.wait = lambda timeout=None: False  # no sleeping between intervals
    with caplog.at_level(logging.ERROR, logger="tierd"):
        d.run(max_intervals=100)
    # a success resets the count: it stops at the third failure in a row, the 8th interval
    assert len(steps) == 8 and d.failed
    assert "3 intervals in a row failed: stopping" in caplog.text
    assert MAX_FAILED_INTERVALS >= 3


def test_run_exits_1_when_intervals_keep_failing(tmp_path, monkeypatch):
    cfg = tmp_path / "tierd.yaml"
    cfg.write_text(f"interval: 1s\nmetrics:\n  listen: ''\ntargets:\n  - name: app\n    pids: [{PID}]\n")
    k = FailingKernel()
    k.add(FakeProc(PID, 64, node=1))
    k.fail["maps"][PID] = OSError(errno.EIO, "x")

    def boom(self):
        raise RuntimeError("bug")

    monkeypatch.setattr(Engine, "step", boom)
    monkeypatch.setattr(daemon_mod.threading.Event, "wait", lambda self, timeout=None: self.is_set())
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        args = argparse.Namespace(config=str(cfg), intervals=None, log_level="INFO")
        assert service.main(args, kernel=k, env={}) == 1
        args.intervals = MAX_FAILED_INTERVALS - 1  # fewer failures than the limit: still 0
        assert service.main(args, kernel=k, env={}) == 0
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def test_executor_adds_up_call_time_and_grows_batches_only_after_quick_calls():
    class Kernel:
        def move_pages(self, pid, addrs, nodes=None, flags=0, batch=4096):
            return np.zeros(len(addrs), np.int32)

    class Clock:  # each call takes `step` seconds
        def __init__(self, step):
            self.t, self.n, self.step = 0.0, 0, step

        def __call__(self):
            self.n += 1
            if self.n % 2 == 0:
                self.t += self.step
            return self.t

    ex = Executor(Kernel(), 64, clock=Clock(0.0045), call_seconds=0.020)
    ex.batch["query"] = 16
    _, c = ex.query(1, np.arange(16 + 32, dtype=np.uint64))
    # 4.5 ms < 20/4 ms: a quick call, the next batch doubles (16 -> 32)
    assert c.calls == 2 and abs(c.seconds - 0.009) < 1e-9
    ex = Executor(Kernel(), 64, clock=Clock(0.0055), call_seconds=0.020)
    ex.batch["query"] = 16
    _, c = ex.query(1, np.arange(48, dtype=np.uint64))
    assert c.calls == 3  # 5.5 ms is not quick: the batch stays 16


def test_unparsable_maps_drop_that_process_for_the_interval_warned_once(caplog):
    from tierd.linux.errors import ParseError

    k, a, eng = two_processes()
    k.fail["maps"][PID + 1] = ParseError(f"/proc/{PID + 1}/maps", 3, "bad address range x-y")
    access(a, [1])
    with caplog.at_level(logging.INFO, logger="tierd"):
        stats = [eng.step() for _ in range(3)]
    assert warnings_(caplog) == [f"pid {PID + 1} (app): not sampled: /proc/{PID + 1}/maps:3: "
                                 "bad address range x-y"]
    assert stats[0].promoted == 1 and k.moves() == [(PID, [1], [0])]


class _NumaProcFS:
    """procfs for tierd.linux.nodes.NumaMapsNodes: the fake maps, numa_maps text per pid."""

    def __init__(self, k, texts):
        self.maps, self.texts = k.procfs.maps, texts

    def read_text(self, pid, name):
        assert name == "numa_maps"
        return self.texts[pid]


def test_bad_numa_maps_or_a_node_id_past_int16_leave_nodes_unknown_not_the_interval_failed():
    from tierd.linux.nodes import NumaMapsNodes

    k = FailingKernel()
    a = k.add(FakeProc(PID, 64, node=1))
    k.add(FakeProc(PID + 1, 64, base=BASE2, node=1))
    texts = {PID: "zzz default N0=1\n",  # unparsable start address
             PID + 1: f"{BASE2:x} default anon=64 N40000=64\n"}  # no such node id in int16
    calls = []
    source = NumaMapsNodes(_NumaProcFS(k, texts))
    k._reader.nodes = lambda *a: calls.append(a[0]) or source.nodes(*a)
    eng = engine(k, pids=(PID, PID + 1))
    for _ in range(2):  # raised ParseError / OverflowError out of step() before
        access(a, [1])
        stats = eng.step()
    assert PID in calls and PID + 1 in calls
    assert stats.promoted == 1 and k.moves() == [(PID, [1], [0])]
