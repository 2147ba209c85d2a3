"""Target resolution when psutil cannot read a process: the process does not match, and the
operator is told once per target and reason (a selector that can never be checked must not
silently match nothing)."""

from __future__ import annotations

import logging
import os
import re

import psutil

from tierd.engine.targets import PsutilResolver
from tierd.policy import TargetSpec

ME = os.getpid()


def denied(self, *a, **kw):
    raise psutil.AccessDenied(self.pid)


def warnings_(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_unreadable_selector_warns_once_per_target_and_attribute(monkeypatch, caplog):
    monkeypatch.setattr(psutil.Process, "exe", denied)
    r = PsutilResolver(self_pid=-1)
    specs = [TargetSpec("by-exe", pids=(ME,), exe=re.compile("python")),
             TargetSpec("other-exe", pids=(ME,), exe=re.compile("."))]
    with caplog.at_level(logging.DEBUG, logger="tierd"):
        for _ in range(3):
            assert r.resolve(specs) == []  # exe cannot be checked: no match, no crash
    w = warnings_(caplog)
    assert len(w) == 2, w  # one per target, not one per interval
    assert w[0].startswith(f"target by-exe: pid {ME}: cannot read exe (")
    assert w[1].startswith(f"target other-exe: pid {ME}: cannot read exe (")
    assert all("run tierd as root" in m for m in w)


def test_another_unreadable_attribute_is_another_reason(monkeypatch, caplog):
    monkeypatch.setattr(psutil.Process, "exe", denied)
    monkeypatch.setattr(psutil.Process, "cmdline", denied)
    r = PsutilResolver(self_pid=-1)
    with caplog.at_level(logging.WARNING, logger="tierd"):
        r.resolve([TargetSpec("t", pids=(ME,), exe=re.compile("."))])
        r.resolve([TargetSpec("t", pids=(ME,), cmdline=re.compile("."))])
        r.resolve([TargetSpec("t", pids=(ME,), exe=re.compile("."))])
    assert [m.split(": ", 2)[2] for m in warnings_(caplog)] == [
        f"cannot read exe (AccessDenied: (pid={ME})), so it does not match this target; run tierd "
        "as root (further cases logged at DEBUG)",
        f"cannot read cmdline (AccessDenied: (pid={ME})), so it does not match this target; run "
        "tierd as root (further cases logged at DEBUG)",
    ]


def test_readable_selectors_of_other_targets_still_match(monkeypatch, caplog):
    monkeypatch.setattr(psutil.Process, "exe", denied)
    r = PsutilResolver(self_pid=-1)
    specs = [TargetSpec("by-exe", pids=(ME,), exe=re.compile(".")),
             TargetSpec("by-pid", pids=(ME,))]
    with caplog.at_level(logging.WARNING, logger="tierd"):
        assert [(x.pid, x.target) for x in r.resolve(specs)] == [(ME, "by-pid")]
    assert len(warnings_(caplog)) == 1


def test_unexpected_psutil_error_skips_the_process_and_warns_once(monkeypatch, caplog):
    def broken(self):
        raise psutil.Error("odd /proc entry")

    monkeypatch.setattr(psutil.Process, "memory_info", broken)
    r = PsutilResolver(self_pid=-1)
    with caplog.at_level(logging.WARNING, logger="tierd"):
        for _ in range(2):
            assert r.resolve([TargetSpec("app", pids=(ME,))]) == []
    assert warnings_(caplog) == [
        f"target app: pid {ME}: skipped, cannot be checked against this target: Error: odd /proc entry "
        "(further cases logged at DEBUG)"]


def test_process_exiting_is_still_quiet(monkeypatch, caplog):
    def gone(self):
        raise psutil.NoSuchProcess(self.pid)

    monkeypatch.setattr(psutil.Process, "memory_info", gone)
    with caplog.at_level(logging.DEBUG, logger="tierd"):
        assert PsutilResolver(self_pid=-1).resolve([TargetSpec("app", pids=(ME,))]) == []
    assert warnings_(caplog) == []
