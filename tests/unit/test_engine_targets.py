"""Target resolution with psutil: selectors, first match wins, exits are quiet."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import psutil
import pytest

from tierd.engine.targets import PsutilResolver, ProcessRef, StaticResolver, cgroup_matches
from tierd.linux.procfs import ProcFS
from tierd.policy import TargetSpec

ME = os.getpid()


def test_cgroup_subtree_matching():
    assert cgroup_matches("/system.slice/x.service", "/system.slice")
    assert cgroup_matches("/system.slice", "/system.slice/")
    assert not cgroup_matches("/system.slicex", "/system.slice")
    assert cgroup_matches("/anything", "/")
    assert not cgroup_matches(None, "/")


def test_own_process_by_pid_comm_cmdline_and_cgroup():
    r = PsutilResolver(self_pid=-1)
    comm = ProcFS().comm(ME)
    specs = [TargetSpec("by-pid", pids=(ME,)),
             TargetSpec("by-comm", comm=re.compile("^" + re.escape(comm) + "$"))]
    refs = r.resolve(specs)
    mine = [x for x in refs if x.pid == ME]
    assert [(x.target, x.name) for x in mine] == [("by-pid", comm)]  # first target wins
    assert mine[0].start == ProcFS().stat(ME).starttime  # clock ticks since boot
    r.close()
    spec = TargetSpec("cmd", pids=(ME,), cmdline=re.compile("pytest|python"))
    assert [x.pid for x in r.resolve([spec])] == [ME]


def test_own_process_by_cgroup():
    cg = ProcFS().cgroup(ME)
    if cg is None:
        pytest.skip("no cgroup v2 line (0::PATH) in /proc/self/cgroup: cgroup v1 only")
    r = PsutilResolver(self_pid=-1)
    assert [x.pid for x in r.resolve([TargetSpec("cg", pids=(ME,), cgroup=cg)])] == [ME]
    assert r.resolve([TargetSpec("cg", pids=(ME,), cgroup="/no/such/group")]) == []


def test_min_rss_and_self_exclusion():
    assert PsutilResolver().resolve([TargetSpec("me", pids=(ME,))]) == []  # tierd itself
    r = PsutilResolver(self_pid=-1)
    assert r.resolve([TargetSpec("me", pids=(ME,), min_rss=1 << 50)]) == []
    assert len(r.resolve([TargetSpec("me", pids=(ME,), min_rss=1 << 20)])) == 1


def test_exited_process_is_not_a_target():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert PsutilResolver(self_pid=-1).resolve([TargetSpec("gone", pids=(p.pid,))]) == []


def test_process_vanishing_mid_scan_is_skipped(monkeypatch):
    def vanish(self):
        raise psutil.NoSuchProcess(self.pid)

    monkeypatch.setattr(psutil.Process, "memory_info", vanish)
    assert PsutilResolver(self_pid=-1).resolve([TargetSpec("x", comm=re.compile("."))]) == []


def test_kernel_procfs_gone_is_skipped():
    from tierd.linux.errors import ProcessGone

    class Gone(ProcFS):
        def comm(self, pid):
            raise ProcessGone(pid)

        def cgroup(self, pid):
            raise ProcessGone(pid)

    class K:
        procfs = Gone()

    assert PsutilResolver(K(), self_pid=-1).resolve([TargetSpec("x", pids=(ME,), comm=re.compile("."))]) == []


def test_static_resolver_orders_by_target():
    refs = [ProcessRef(3, 0, "b"), ProcessRef(1, 0, "a"), ProcessRef(2, 0, "zzz")]
    specs = [TargetSpec("a"), TargetSpec("b")]
    assert [r.pid for r in StaticResolver(refs).resolve(specs)] == [1, 3]
    assert ProcessRef(1, 2.0, "a").key == (1, 2.0)


_REDOS = r"""
import subprocess, sys
from tierd.engine.targets import PsutilResolver
from tierd.policy import parse_policy
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "a" * 40 + "!"])
try:
    pol = parse_policy("targets:\n  - name: t\n    pids: [%d]\n    cmdline: '(a+)+$'\n" % child.pid)
    print(len(PsutilResolver(self_pid=-1).resolve(pol.targets)))
finally:
    child.kill()
"""


def test_a_catastrophic_cmdline_regex_matches_in_linear_time():
    """Any user picks a command line: `(a+)+$` against 40 a's and a "!" takes hours with a
    backtracking engine (12 s at 26 a's, x2 per a), microseconds with RE2."""
    r = subprocess.run([sys.executable, "-c", _REDOS], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0"  # ends in "!": no match


_REDOS_BOUNDED = r"""
import subprocess, sys
import tierd.policy
# The Debian package's engine: no Python RE2 binding in Debian 12, python3-regex instead.
tierd.policy.Regex.compile = tierd.policy.Regex._compile_bounded
from tierd.engine.targets import PsutilResolver
from tierd.policy import parse_policy
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "a" * 60 + "!"])
try:
    pol = parse_policy("targets:\n  - name: t\n    pids: [%d]\n    cmdline: '(a|aa)+$'\n" % child.pid)
    assert pol.targets[0].cmdline.bounded
    r = PsutilResolver(self_pid=-1)
    first = r.resolve(pol.targets)
    tries = []
    search = type(pol.targets[0].cmdline).search
    type(pol.targets[0].cmdline).search = lambda self, text: tries.append(text) or search(self, text)
    second = r.resolve(pol.targets)
    print(len(first), len(second), len(tries))
finally:
    child.kill()
"""


def test_a_catastrophic_regex_is_bounded_without_re2(caplog):
    """Without RE2 (the Debian package) a match gives up after a time bound, counts as no
    match, and the process is not tried again: one bound per hostile process, not per
    interval.  Unbounded, `(a|aa)+$` against 60 a's and a "!" backtracks for centuries."""
    r = subprocess.run([sys.executable, "-c", _REDOS_BOUNDED], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "0", "0"]  # no match, and no second try
    assert "not tried again" in r.stderr


def test_undecodable_command_line_bytes_are_searched_not_raised():
    from tierd.policy import Regex

    assert Regex.compile("x.y").search("x\udcffy")
    assert not Regex.compile("^a$").search("b\udcff")
