"""Issue 19: exit codes systemd can act on, and quiet logs (rate-limited warnings, one
traceback per distinct error, a policy that matches nothing said once, log_level)."""

from __future__ import annotations

import argparse
import errno
import logging

import numpy as np
import pytest
from engine_fakes import GIB, FakeKernel, FakeProc
from test_integrations import saved_signals

from tierd import service
from tierd.cli import EXIT_UNAVAILABLE
from tierd.engine import daemon as daemon_mod
from tierd.engine.daemon import NO_MATCH_INTERVALS, Daemon, Engine
from tierd.engine.targets import ProcessRef, StaticResolver
from tierd.linux import FeatureMissing
from tierd.linux.sysfs import Node, Topology
from tierd.logs import REPEAT_EVERY, RateLimiter
from tierd.policy import Policy, PolicyError, TargetSpec, parse_policy

PID = 4242
POLICY = "interval: 1s\nmetrics:\n  listen: ''\ntargets:\n  - name: app\n    pids: [{pid}]\n"


signals = saved_signals  # service.main installs signal handlers: restore them


def run_main(tmp_path, kernel, text=POLICY.format(pid=PID), intervals=1, env=None,
             log_level=None) -> int:
    cfg = tmp_path / "tierd.yaml"
    cfg.write_text(text)
    args = argparse.Namespace(config=str(cfg), intervals=intervals, log_level=log_level)
    return service.main(args, kernel=kernel, env=env or {})


# -- exit codes ------------------------------------------------------------------------------


# service.main sets up its own stderr handler (run by hand): its lines are read with capsys


def test_one_memory_node_is_exit_69_with_one_sentence_and_the_fix(tmp_path, capsys, signals):
    k = FakeKernel()
    k.topology = lambda: Topology((Node(0, (0,), 4 * GIB, 3 * GIB, (10,), None),))
    k.add(FakeProc(PID, 64, node=0))
    assert run_main(tmp_path, k) == EXIT_UNAVAILABLE == 69
    (msg,) = capsys.readouterr().err.splitlines()
    assert msg.startswith("ERROR this host cannot tier: only one class of memory"), msg
    assert "fix: give the machine a second, slower memory node" in msg and "tierd topology" in msg


def test_no_access_tracking_interface_is_exit_69(tmp_path, capsys, signals):
    k = FakeKernel()

    def no_reader(name="auto"):
        raise FeatureMissing("idle_bitmap", "boot a kernel with tierd's patch or "
                             "CONFIG_IDLE_PAGE_TRACKING=y", what="no access-tracking interface")

    k.reader = no_reader
    assert run_main(tmp_path, k) == EXIT_UNAVAILABLE
    (msg,) = capsys.readouterr().err.splitlines()
    assert msg.startswith("ERROR this host cannot tier: idle_bitmap") and "Fix: boot a kernel" in msg


def test_invalid_policy_stays_2_and_a_good_two_tier_run_0(tmp_path, signals):
    k = FakeKernel()
    k.add(FakeProc(PID, 64, node=1))
    assert run_main(tmp_path, k, "interval: -1s\n") == 2
    assert run_main(tmp_path, k) == 0


def test_transient_failures_still_exit_1_through_the_fail_hook(tmp_path, monkeypatch, capsys,
                                                                signals):
    """TIERD_DEBUG_FAIL_FILE (the VM test's way to a transient failure): every interval
    fails, the daemon gives up after MAX_FAILED_INTERVALS and exits 1, with one traceback."""
    k = FakeKernel()
    k.add(FakeProc(PID, 64, node=1))
    trigger = tmp_path / "fail"
    trigger.write_text("")
    monkeypatch.setattr(daemon_mod.threading.Event, "wait", lambda self, timeout=None: self.is_set())
    monkeypatch.setattr(service.time, "time", lambda: 0.0)  # the file is newer than the start
    rc = run_main(tmp_path, k, intervals=None, env={service.FAIL_ENV: str(trigger)})
    assert rc == 1
    err = capsys.readouterr().err
    assert err.count("Traceback") == 1 and "failing the interval on purpose" in err
    failed = [line for line in err.splitlines() if line.startswith("ERROR interval ")]
    assert len(failed) == daemon_mod.MAX_FAILED_INTERVALS


# -- rate limiting -----------------------------------------------------------------------------


def test_rate_limiter_per_key_with_a_count_of_what_was_suppressed(caplog):
    now = [0.0]
    rl = RateLimiter(logging.getLogger("tierd.test"), every=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="tierd.test"):
        for i in range(100):
            now[0] = i
            rl.warning(("db", "EACCES"), "pid %d (%s): refused", i, "db")
            rl.warning(("web", "EACCES"), "pid %d (%s): refused", i, "web")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines  # each key at 0 s and at 60 s
    assert lines[0] == "pid 0 (db): refused"
    assert lines[2] == "pid 60 (db): refused (59 more like this in the last 60 s)"
    assert rl.suppressed(("db", "EACCES")) == 39


def test_tracebacks_once_per_distinct_error(caplog):
    rl = RateLimiter(logging.getLogger("tierd.test"))

    def fail(kind, n):
        try:
            if kind:
                raise KeyError(n)
            raise ValueError(f"bad {n}")
        except Exception:
            rl.exception("interval %d failed", n)

    with caplog.at_level(logging.ERROR, logger="tierd.test"):
        for n in range(5):
            fail(0, n)
            fail(1, n)
    assert len(caplog.records) == 10
    assert sum(r.exc_info is not None for r in caplog.records) == 2
    assert "interval 4 failed: ValueError: bad 4 (same error as before" in caplog.text


def engine_with(kernel, policy, refs):
    return Engine(kernel, policy, resolver=StaticResolver(refs), clock=lambda: 0.0)


def test_daemon_logs_a_repeated_interval_failure_traceback_once(caplog):
    k = FakeKernel()
    k.add(FakeProc(PID, 64, node=1))
    pol = Policy(source="<t>", targets=(TargetSpec(name="app", pids=(PID,)),), metrics_listen="")
    eng = engine_with(k, pol, [ProcessRef(PID, 0.0, "app")])

    def boom():
        raise RuntimeError(f"bug in interval {eng.seq}")

    eng.step = boom
    d = Daemon(eng, max_failed=100)
    with caplog.at_level(logging.ERROR, logger="tierd"):
        for _ in range(20):
            assert d.tick() is None
    assert caplog.text.count("Traceback") == 1
    assert len(caplog.records) == 20


def test_refused_move_pages_and_unreadable_maps_are_one_line_per_target_and_reason(caplog):
    """The issue's measurement: 99 of 100 intervals logged a refused move_pages, 100 of 100
    "not sampled".  Now: one line each per REPEAT_EVERY per (target, reason)."""
    k = FakeKernel()
    procs = [k.add(FakeProc(PID + i, 64, base=0x7F00_0000_0000 + (i << 32), node=1))
             for i in range(3)]

    def refuse(pid, addrs, nodes=None, flags=0, batch=4096):
        if nodes is not None:
            raise PermissionError(errno.EPERM, "move_pages: EPERM")
        return np.full(len(addrs), 1, np.int32)

    k.move_pages = refuse
    unreadable = k.add(FakeProc(PID + 9, 64, base=0x7E00_0000_0000, node=1))
    maps = k.procfs.maps

    def maps_or_fail(pid):
        if pid == unreadable.pid:
            raise PermissionError(errno.EACCES, "maps: EACCES")
        return maps(pid)

    k.procfs.maps = maps_or_fail
    now = [0.0]
    pol = Policy(source="<t>", interval=1.0, interval_auto=False, metrics_listen="",
                 targets=(TargetSpec(name="app", pids=tuple(p.pid for p in procs)),
                          TargetSpec(name="other", pids=(unreadable.pid,))))
    refs = [ProcessRef(p.pid, 0.0, "app") for p in procs] + [ProcessRef(unreadable.pid, 0.0, "other")]
    eng = Engine(k, pol, resolver=StaticResolver(refs), clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="tierd"):
        for i in range(100):
            now[0] = i * 5.0
            for p in procs:
                p.next_access |= {p.vpn(j) for j in range(8)}
            eng.step()
    moves = [r.getMessage() for r in caplog.records if "move_pages" in r.getMessage()]
    unsampled = [r.getMessage() for r in caplog.records if "not sampled" in r.getMessage()]
    assert 1 <= len(moves) <= 1 + 500 // REPEAT_EVERY, moves
    assert len(unsampled) == 1, unsampled
    assert caplog.records[0].levelno == logging.WARNING


def test_pages_the_kernel_refuses_are_one_warning_per_target_with_counts_and_the_cause(caplog):
    """Per-page refusals (EACCES: shared without CAP_SYS_NICE; EBUSY: pinned) were only an
    INFO summary and a counter: a target whose hot pages can never move looked healthy."""
    k = FakeKernel()
    p = k.add(FakeProc(PID, 64, node=1))
    refused = {p.vpn(j) * 4096: -errno.EACCES for j in range(6)} | {p.vpn(6) * 4096: -errno.EBUSY}
    move_pages = k.move_pages

    def refuse_some(pid, addrs, nodes=None, flags=0, batch=4096):
        out = np.empty(len(addrs), np.int32)
        mine = np.array([int(a) in refused for a in addrs], bool)
        if nodes is None or not mine.any():
            return move_pages(pid, addrs, nodes, flags, batch)
        out[mine] = [refused[int(a)] for a in np.asarray(addrs)[mine]]
        if (~mine).any():
            out[~mine] = move_pages(pid, np.asarray(addrs)[~mine], np.asarray(nodes)[~mine], flags)
        return out

    k.move_pages = refuse_some
    now = [0.0]
    pol = Policy(source="<t>", interval=1.0, interval_auto=False, metrics_listen="",
                 retry_after=1, targets=(TargetSpec(name="app", pids=(PID,)),))
    eng = Engine(k, pol, resolver=StaticResolver([ProcessRef(PID, 0.0, "app")]),
                 clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="tierd"):
        for i in range(int(REPEAT_EVERY // 5) + 20):
            now[0] = i * 5.0
            p.next_access |= {p.vpn(j) for j in range(16)}
            eng.step()
    lines = [r.getMessage() for r in caplog.records if "refused to move" in r.getMessage()]
    assert len(lines) == 2, lines  # the first, and one after REPEAT_EVERY with the count
    assert lines[0].startswith("target app: the kernel refused to move 7 pages")
    assert "6 EACCES (mapped by other processes" in lines[0] and "CAP_SYS_NICE" in lines[0]
    assert "1 EBUSY (" in lines[0]
    assert "more like this" in lines[1]


def test_a_policy_that_matches_nothing_says_so_once(caplog):
    k = FakeKernel()
    pol = Policy(source="/etc/tierd.yaml", metrics_listen="",
                 targets=(TargetSpec(name="databases", pids=(PID,)),))
    resolver = StaticResolver([])
    eng = Engine(k, pol, resolver=resolver, clock=lambda: 0.0)
    with caplog.at_level(logging.INFO, logger="tierd"):
        stats = [eng.step() for _ in range(3 * NO_MATCH_INTERVALS)]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [f"the policy matches no process at all: target(s) databases matched no "
                      f"process for {NO_MATCH_INTERVALS} intervals: check their selectors in "
                      "/etc/tierd.yaml (tierd check-config shows them)"]
    assert stats[-1].targets["databases"].unmatched_intervals == 3 * NO_MATCH_INTERVALS
    assert stats[NO_MATCH_INTERVALS - 2].targets["databases"].unmatched_intervals == NO_MATCH_INTERVALS - 1
    # it matches again: the count resets, and a later silence is said once more
    k.add(FakeProc(PID, 64, node=1))
    resolver.refs = [ProcessRef(PID, 0.0, "databases")]
    assert eng.step().targets["databases"].unmatched_intervals == 0


def test_steady_state_is_at_most_one_info_line_per_interval(caplog, signals, tmp_path):
    k = FakeKernel()
    proc = k.add(FakeProc(PID, 256, node=1))
    pol = Policy(source="<t>", interval=1.0, interval_auto=False, metrics_listen="",
                 targets=(TargetSpec(name="app", pids=(PID,)),))
    eng = engine_with(k, pol, [ProcessRef(PID, 0.0, "app")])
    from tierd.integrations.journal import JournalLogObserver

    d = Daemon(eng, observers=[JournalLogObserver()])
    with caplog.at_level(logging.INFO, logger="tierd"):
        for _ in range(30):
            proc.next_access |= {proc.vpn(i) for i in range(16)}
            d.tick()
    info = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) == 30 and all(r.getMessage().startswith("#") for r in info)


# -- log_level -------------------------------------------------------------------------------


def test_log_level_is_a_policy_key():
    assert parse_policy("log_level: debug\n").log_level == "DEBUG"
    assert Policy().log_level == "INFO"
    with pytest.raises(PolicyError, match=r"p.yaml:2: log_level: 'loud' is not one of DEBUG"):
        parse_policy("interval: 1s\nlog_level: loud\n", "p.yaml")


def test_the_policy_log_level_applies_unless_the_command_line_fixes_it(tmp_path, signals):
    k = FakeKernel()
    k.add(FakeProc(PID, 64, node=1))
    text = POLICY.format(pid=PID) + "log_level: WARNING\n"
    assert run_main(tmp_path, k, text) == 0
    assert logging.getLogger().level == logging.WARNING
    assert run_main(tmp_path, k, text, log_level="DEBUG") == 0
    assert logging.getLogger().level == logging.DEBUG
    logging.getLogger().setLevel(logging.WARNING)
