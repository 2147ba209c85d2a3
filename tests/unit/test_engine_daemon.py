"""The engine end to end against a fake kernel: the exact move_pages requests it makes."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import threading

import numpy as np
from engine_fakes import GIB, PAGE, FakeKernel, FakeProc, FakeShared

from tierd import service
from tierd.engine import daemon as daemon_mod
from tierd.engine.daemon import Daemon, Engine, Observer, summary_line
from tierd.engine.executor import MEASURE_BATCH
from tierd.engine.targets import ProcessRef, StaticResolver
from tierd.linux.procfs import Vma
from tierd.policy import Policy, TargetSpec

PID = 4242
FLOOR_PAGES = -(-int(4 * GIB * 0.10) // PAGE)  # keep_free 10% of the 4 GiB fast node
LOW_PAGES = -(-int(4 * GIB * 0.05) // PAGE)  # demote_below 5%


def make_policy(**kw) -> Policy:
    base = dict(source="<test>", interval=1.0, targets=(TargetSpec(name="app", pids=(PID,)),),
                rate=1 << 30, batch=4 << 20, retry_after=4)
    base.update(kw)
    return Policy(**base)


def make_engine(kernel, policy=None, pids=(PID,)) -> Engine:
    refs = [ProcessRef(p, 0.0, "app") for p in pids]
    return Engine(kernel, policy or make_policy(), resolver=StaticResolver(refs), clock=lambda: 0.0)


def access(proc: FakeProc, pages) -> None:
    proc.next_access |= {proc.vpn(i) for i in pages}


def test_first_interval_queries_then_hot_pages_are_promoted():
    k = FakeKernel()
    proc = k.add(FakeProc(PID, 128, node=1))
    eng = make_engine(k)
    access(proc, range(10))  # the first sample of a page says nothing about recency
    eng.step()
    assert k.calls == [("query", PID, [proc.addr(i) for i in range(128)], None)]
    k.calls.clear()
    access(proc, range(10))
    stats = eng.step()
    assert k.moves() == [(PID, list(range(10)), [0] * 10)]
    assert stats.promoted == 10 and stats.demoted == 0
    assert stats.plan.hot["app"] == 1
    k.calls.clear()
    eng.step()  # placed right: nothing to do
    assert k.calls == []


def test_no_room_demotes_coldest_then_promotes():
    k = FakeKernel(fast_free=FLOOR_PAGES * PAGE)  # at the keep_free floor: no room
    proc = k.add(FakeProc(PID, 128, node=1))
    for i in range(64):
        proc.node[proc.vpn(i)] = 0
    eng = make_engine(k)
    eng.step()
    access(proc, [64, 65, 66, 67])
    eng.step()
    assert k.moves() == []  # one access is no evidence: nothing is displaced for it
    k.calls.clear()
    access(proc, [64, 65, 66, 67])
    eng.step()
    # demotions first (they make the room), coldest first = lowest addresses at hotness 0
    assert k.moves() == [
        (PID, [0, 1, 2, 3], [1, 1, 1, 1]),
        (PID, [64, 65, 66, 67], [0, 0, 0, 0]),
    ]


def test_level_rule_without_estimates_keeps_pages_near_the_boundary():
    k = FakeKernel(fast_free=FLOOR_PAGES * PAGE)
    proc = k.add(FakeProc(PID, 128, node=1))
    for i in range(64):
        proc.node[proc.vpn(i)] = 0
    eng = make_engine(k)
    eng.gain.update = lambda *a, **kw: None  # as after a misprediction: the plain level rule
    eng.step()
    access(proc, range(64))
    eng.step()  # fast pages: hotness 4
    k.calls.clear()
    access(proc, [64])
    eng.step()  # fast pages now 3, page 64 is 4: 4 - 3 <= FALLBACK_HYSTERESIS 2 -> no swap
    assert k.moves() == []
    access(proc, [64])
    eng.step()  # fast pages 2, page 64 is 7: a victim below min(threshold 3, 7 - 2)
    assert k.moves() == [(PID, [0], [1]), (PID, [64], [0])]


def test_watermark_demotes_coldest_within_the_rate_budget():
    k = FakeKernel()
    proc = k.add(FakeProc(PID, 128, node=0))
    eng = make_engine(k, make_policy(rate=16 * PAGE))  # 16 pages per 1 s interval
    eng.step()
    access(proc, range(8))
    eng.step()
    k.calls.clear()
    k.mem[0][1] = (LOW_PAGES - 1) * PAGE  # someone else filled the fast node
    stats = eng.step()
    assert k.moves() == [(PID, list(range(8, 24)), [1] * 16)]
    assert stats.plan.count("watermark") == 16


def test_failed_moves_back_off_with_doubling():
    k = FakeKernel()
    proc = k.add(FakeProc(PID, 64, node=1))
    eng = make_engine(k, make_policy(retry_after=2))
    eng.step()
    proc.status_override[proc.vpn(5)] = -errno.EBUSY
    retried = []
    for seq in range(2, 10):
        k.calls.clear()
        access(proc, [5])
        stats = eng.step()
        assert eng.seq == seq
        if k.moves():
            assert k.moves() == [(PID, [5], [0])]
            assert stats.moves.busy == 1
            retried.append(seq)
    # failed at 2: wait 2 intervals; failed again at 4: wait 4; then at 8
    assert retried == [2, 4, 8]


def test_absent_page_is_dropped_until_seen_again():
    k = FakeKernel()
    proc = k.add(FakeProc(PID, 64, node=1))
    eng = make_engine(k)
    eng.step()
    proc.status_override[proc.vpn(7)] = -errno.ENOENT
    access(proc, [6, 7])
    stats = eng.step()
    assert k.moves()[-1] == (PID, [6, 7], [0, 0])
    assert stats.moves.absent == 1 and stats.moves.moved == 1
    st = eng.units[(PID, 0.0)].state
    assert not (int(st.present[0]) >> 7) & 1
    assert st.node_of(np.array([6, 7])).tolist() == [0, -1]


def test_exiting_target_is_dropped_quietly(caplog):
    k = FakeKernel()
    a = k.add(FakeProc(PID, 64, node=1))
    k.add(FakeProc(PID + 1, 64, base=0x7E00_0000_0000, node=1))
    eng = make_engine(k, pids=(PID, PID + 1))
    eng.step()
    k.gone_on_sample = PID + 1  # exits while its access bits are read
    access(a, [1])
    with caplog.at_level(logging.INFO, logger="tierd"):
        stats = eng.step()
    assert list(eng.units) == [(PID, 0.0)]
    assert stats.dropped == 1 and stats.promoted == 1
    assert k._reader.closed == [PID + 1]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # and one that exits during move_pages
    k.gone_on_move = PID
    access(a, [2])
    eng.step()
    assert eng.units == {}


def test_a_process_gone_during_moves_is_not_asked_again_in_later_slices(monkeypatch):
    """Its pages stay in the pack until the next layout: later slices of the same interval
    selected them again and called move_pages on the dead (maybe reused) pid, 16 times."""
    from tierd.engine import daemon

    monkeypatch.setattr(daemon, "SLICE_PAGES", 64)
    k = FakeKernel()
    p = k.add(FakeProc(PID, 1024, node=1))
    eng = make_engine(k)
    eng.step()  # learns the nodes
    k.calls.clear()
    k.gone_on_move = PID
    access(p, range(1024))
    eng.step()  # 1024 hot pages to promote, 64 a slice: it exits at the first move_pages
    assert eng.units == {}
    assert [c[0] for c in k.calls if c[1] == PID].count("move") == 1


def test_vma_changes_keep_known_pages():
    k = FakeKernel()
    proc = k.add(FakeProc(PID, 64, node=1))
    eng = make_engine(k)
    eng.step()
    access(proc, [3])
    eng.step()
    assert k.moves() == [(PID, [3], [0])]
    k.calls.clear()
    # mmap of a new region: only its pages are unknown and get queried
    base2 = 0x7F00_1000_0000
    proc.vmas.append(Vma(base2, base2 + 64 * PAGE, "rw-p", 0, "00:00", 0, ""))
    for v in range(base2 // PAGE, base2 // PAGE + 64):
        proc.node[v] = 1
    access(proc, [3])
    eng.step()
    assert k.calls[0] == ("query", PID, [base2 + i * PAGE for i in range(64)], None)
    assert k.moves() == []  # page 3 still known to be on node 0
    # munmap of the first region: its state goes, the second's stays
    k.calls.clear()
    del proc.vmas[0]
    for i in range(64):
        del proc.node[0x7F00_0000_0000 // PAGE + i]
    eng.step()
    st = eng.units[(PID, 0.0)].state
    # nothing of the old region is asked about (interval 4 rechecks the known pages' nodes)
    assert st.extents.words == 1 and all(a >= base2 for c in k.calls for a in c[2])


def test_stop_between_batches_leaves_the_rest_untouched():
    k = FakeKernel()
    proc = k.add(FakeProc(PID, 256, node=1))
    eng = make_engine(k, make_policy(batch=64 * PAGE))
    eng.step()
    stop = threading.Event()
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return stop.is_set()

    orig = k.move_pages

    def move_pages(*a, **kw):
        out = orig(*a, **kw)
        stop.set()  # SIGTERM during the first batch
        return out

    k.move_pages = move_pages
    eng.executor.should_stop = should_stop
    k.calls.clear()
    access(proc, range(200))
    stats = eng.step()
    n = MEASURE_BATCH  # an interval's first move batch is the measuring one
    assert [len(c[2]) for c in k.calls] == [n]
    assert stats.moves.moved == n and stats.moves.not_tried == 200 - n
    st = eng.units[(PID, 0.0)].state
    assert st.node_of(np.arange(n, 200)).tolist() == [1] * (200 - n)


def test_summary_line_is_one_line():
    k = FakeKernel()
    proc = k.add(FakeProc(PID, 64, node=1))
    eng = make_engine(k)
    eng.step()
    access(proc, [1, 2])
    line = summary_line(eng.step())
    assert "\n" not in line and "promoted 2" in line and "hot>=1" in line


# -- the daemon: loop, signals, reload -----------------------------------------------------------

GOOD = """
interval: 1s
targets:
  - name: app
    pids: [4242]
hotness:
  window: 8
"""


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def test_reload_keeps_old_policy_on_error_and_swaps_valid_one(tmp_path, caplog):
    from tierd.policy import load_policy

    cfg = tmp_path / "tierd.yaml"
    write(cfg, GOOD)
    k = FakeKernel()
    k.add(FakeProc(PID, 64, node=1))
    eng = Engine(k, load_policy(str(cfg)), resolver=StaticResolver([ProcessRef(PID, 0.0, "app")]))
    d = Daemon(eng, loader=load_policy)
    d.tick()
    old = eng.policy
    write(cfg, GOOD.replace("window: 8", "window: 99"))
    with caplog.at_level(logging.ERROR, logger="tierd"):
        assert d.reload() is False
    assert eng.policy is old
    line = GOOD.splitlines().index("  window: 8") + 1
    assert f"{cfg}:{line}: hotness.window" in caplog.text
    write(cfg, GOOD + "nodes:\n  fast: [7]\n")  # valid file, but no node 7 on this machine
    assert d.reload() is False and eng.policy is old
    write(cfg, GOOD.replace("window: 8", "window: 4"))
    assert d.reload() is True
    assert eng.policy.window == 4
    assert eng.units[(PID, 0.0)].state.window == 4
    d.tick()


def test_signals_set_the_events():
    k = FakeKernel()
    eng = make_engine(k)
    d = Daemon(eng)
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        d.install_signal_handlers()
        os.kill(os.getpid(), signal.SIGHUP)
        assert d.reload_requested.wait(5)
        assert not d.stop.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert d.stop.wait(5)
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def test_run_loop_until_stopped_and_sighup_reload(tmp_path):
    from tierd.policy import load_policy

    cfg = tmp_path / "tierd.yaml"
    write(cfg, GOOD.replace("interval: 1s", "interval: 10ms"))
    k = FakeKernel()
    k.add(FakeProc(PID, 64, node=1))
    eng = Engine(k, load_policy(str(cfg)), resolver=StaticResolver([ProcessRef(PID, 0.0, "app")]))
    events = []

    class Obs(Observer):
        def on_ready(self, engine):
            events.append("ready")

        def on_interval(self, stats):
            events.append(stats.seq)
            if stats.seq == 2:
                write(cfg, GOOD.replace("interval: 1s", "interval: 10ms").replace("window: 8", "window: 5"))
                d.reload_requested.set()  # what SIGHUP does
            if stats.seq == 4:
                d.stop.set()  # what SIGTERM does

        def on_reloaded(self, policy, error):
            events.append(("reloaded", policy.window, error))

        def on_stopping(self):
            events.append("stopping")

    d = Daemon(eng, loader=load_policy, observers=[Obs()])
    d.run()
    assert events == ["ready", 1, 2, ("reloaded", 5, None), 3, 4, "stopping"]
    assert k._reader.closed == [PID]


def test_an_interval_that_fails_does_not_stop_the_daemon(caplog):
    k = FakeKernel()
    eng = make_engine(k)
    d = Daemon(eng)

    def boom():
        raise RuntimeError("bug")

    eng.step = boom
    with caplog.at_level(logging.ERROR, logger="tierd"):
        assert d.tick() is None
    assert "interval 0 failed" in caplog.text


def test_main_runs_and_rejects_bad_config(tmp_path, capsys):
    cfg = tmp_path / "tierd.yaml"
    write(cfg, GOOD + 'metrics:\n  listen: ""\n')  # no endpoint: port 9464 may be taken
    k = FakeKernel()
    k.add(FakeProc(PID, 64, node=1))
    args = argparse.Namespace(config=str(cfg), intervals=1, log_level="INFO")
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        assert service.main(args, kernel=k, env={}) == 0
        write(cfg, "interval: -1s\n")
        assert service.main(args, kernel=k, env={}) == 2
        assert f"{cfg}:1: interval" in capsys.readouterr().err
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def test_run_arguments_parse():
    p = argparse.ArgumentParser()
    daemon_mod.add_run_arguments(p)
    a = p.parse_args(["--config", "x.yaml", "--intervals", "3"])
    assert a.config == "x.yaml" and a.intervals == 3 and a.log_level is None  # the policy's


def test_single_tier_machine_only_observes(caplog):
    from tierd.linux.sysfs import Node, Topology

    k = FakeKernel()
    k.topology = lambda: Topology((Node(0, (0,), 4 * GIB, 3 * GIB, (10,), None),))
    proc = k.add(FakeProc(PID, 64, node=0))
    proc.map_shared(FakeShared(128, node=0), 0x7F10_0000_0000)
    eng = make_engine(k)
    with caplog.at_level(logging.WARNING, logger="tierd"):
        eng.step()
        access(proc, [1])
        stats = eng.step()
    assert k.calls == [] and stats.plan is None
    assert caplog.text.count("one memory tier only") == 1
    assert stats.targets["app"].hist.sum() == 64 + 128
    assert stats.shared_pages == 128  # observed too (it was counted only when moving)


def test_target_exiting_at_its_node_query_is_dropped_quietly(caplog):
    """A short-lived process that exits between its sample and its node query (move_pages
    without nodes) leaves the interval: the interval completes (it used to fail on the
    process's closed state, 10 in a row stopped the daemon in the VM soak)."""
    k = FakeKernel()
    a = k.add(FakeProc(PID, 64, node=1))
    k.add(FakeProc(PID + 1, 64, base=0x7E00_0000_0000, node=1))
    eng = make_engine(k, pids=(PID, PID + 1))
    k.gone_on_move = PID + 1  # its pages' nodes are unknown: queried in this interval
    with caplog.at_level(logging.INFO, logger="tierd"):
        for _ in range(3):
            access(a, [1])
            eng.step()
    assert list(eng.units) == [(PID, 0.0)]
    assert a.node[a.vpn(1)] == 0  # the other process was placed as usual
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
