"""What a tracked process holds is released (issue 17, deliverable 6): the reader's numa_maps
cache on close, the old reader's descriptors on a tracking switch, huge-page holds on a
reload to ``split: off`` and when the split interface is lost; and state for a process is
bounded by its resident pages, not its mapped address space."""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import numpy as np
from engine_fakes import PAGE, FakeKernel, FakeProc, FakeReader
from test_engine_daemon import PID, make_engine, make_policy
from test_engine_huge import NHUGE, ThpProc, small_fast

from tierd.engine import daemon
from tierd.linux.errors import FeatureMissing
from tierd.linux.procfs import Vma
from tierd.linux.tracking import IdleBitmapReader

PROC = os.path.join(os.path.dirname(__file__), "fixtures", "proc")


def test_closing_a_pid_drops_its_numa_maps_spans():
    """1,000 processes come and go under one pid: nothing of them stays (and a new process
    with that pid reads its own numa_maps, not the old one's)."""
    r = IdleBitmapReader(PROC, scan=False)
    anon = 0x7F1C2A000000 >> 12
    for _ in range(1000):
        r.nodes(4242, anon // 64, 1)
        r.close(4242)
    assert r._numa._spans == {}
    r.nodes(4242, anon // 64, 1)
    r.close_all()
    assert r._numa._spans == {}


class Reader(FakeReader):
    def __init__(self, kernel, name):
        super().__init__(kernel)
        self.name = name
        self.closed_all = 0

    def close_all(self):
        self.closed_all += 1


class TwoReaders(FakeKernel):
    def __init__(self):
        super().__init__()
        self.readers = {n: Reader(self, n) for n in ("auto", "idle_bitmap", "page_idle")}

    def reader(self, name="auto"):
        return self.readers[name]


def test_a_tracking_switch_closes_the_old_reader():
    """Switching tracking on reload closes everything the old reader holds (the page_idle
    bitmap and kpageflags descriptors are the reader's own, not per pid); the processes
    then release their pids with the new one."""
    k = TwoReaders()
    k.add(FakeProc(PID, 64))
    eng = make_engine(k, replace(make_policy(), tracking="page_idle"))
    eng.step()
    eng.set_policy(replace(eng.policy, tracking="idle_bitmap"))
    old, new = k.readers["page_idle"], k.readers["idle_bitmap"]
    assert old.closed_all == 1 and eng.reader is new
    eng.step()
    k.procs.pop(PID)
    eng.step()
    assert new.closed == [PID] and eng.units == {}


def held(unit) -> int:
    """Pages of this process in backoff (held huge pages included)."""
    words = unit.state.backoff[unit.off: unit.off + unit.words]
    return int(np.bitwise_count(words).sum())


def held_engine(nprocs=1):
    """An engine holding undecided huge pages of ``nprocs`` processes back from the moves
    (tierd/engine/huge.py; test_engine_huge)."""
    from tierd.engine.daemon import Engine
    from tierd.engine.targets import ProcessRef, StaticResolver
    from tierd.policy import Policy, TargetSpec

    k = small_fast()
    procs = []
    for i in range(nprocs):
        p = k.add(ThpProc(PID + i, NHUGE))
        base = (0x7F00_0000_0000 - (i << 36)) // PAGE
        if i:  # its own addresses
            p.vmas = [Vma(base * PAGE, (base + NHUGE * 512) * PAGE, "rw-p", 0, "00:00", 0, "")]
            p.node = {base + j: 1 for j in range(NHUGE * 512)}
            p.huge = set(range(base, base + NHUGE * 512, 512))
        procs.append(p)
    pids = tuple(p.pid for p in procs)
    policy = Policy(source="<t>", interval=1.0, interval_auto=False,
                    targets=(TargetSpec(name="app", pids=pids),), metrics_listen="")
    eng = Engine(k, policy, resolver=StaticResolver([ProcessRef(pid, 0.0, "app") for pid in pids]),
                 clock=lambda: 0.0)
    for _ in range(2):
        for p in procs:
            p.next_access |= set(p.node)
        eng.step()
    for u in eng.units.values():
        assert held(u) == (NHUGE - 2) * 512  # held: all but the probes
    return k, eng


def test_holds_are_lifted_on_a_reload_to_split_off():
    k, eng = held_engine()
    eng.set_policy(replace(eng.policy, huge_split=False))
    assert eng.huge is None and [held(u) for u in eng.units.values()] == [0]


def test_holds_are_lifted_when_the_split_interface_is_lost():
    """The split interface goes away while the first process is looked at: every process's
    holds go, not only those lifted before the failure (7,168 pages stayed in backoff for
    ever)."""
    k, eng = held_engine(2)
    is_thp = k.splitter.is_thp
    calls = {"n": 0}

    def lost(pid, vpns):
        calls["n"] += 1
        if calls["n"] > 1:
            raise FeatureMissing("thp_split", "fix", what="debugfs split_huge_pages is gone")
        return is_thp(pid, vpns)

    k.splitter.is_thp = lost
    for p in k.procs.values():
        p.next_access |= set(p.node)
    eng.step()
    assert eng.huge.disabled and not eng.huge.held and calls["n"] == 2
    assert [held(u) for u in eng.units.values()] == [0, 0]


def test_a_sparse_mapping_costs_what_the_process_holds(caplog):
    """A process with 128 resident pages and a 256 GiB mapping with nothing present (an
    ASan-style shadow): tracked by address space that is ~100 MiB of state; bounded to
    TRACK_RSS_FACTOR x resident (at least TRACK_FLOOR_PAGES), it is what the small mapping
    costs, and a warning names the process."""
    k = FakeKernel()
    proc = k.add(FakeProc(PID, 128))
    shadow = 0x1000_0000_0000
    proc.vmas.insert(0, Vma(shadow, shadow + (256 << 30), "rw-p", 0, "00:00", 0, ""))
    eng = make_engine(k)
    with caplog.at_level(logging.WARNING, logger="tierd"):
        stats = eng.step()
    assert stats.state_bytes < 1 << 20, stats.state_bytes
    assert eng.units[(PID, 0.0)].pages == 128 and stats.tracked_pages == 128
    assert any(f"pid {PID}" in r.getMessage() and "not tracked" in r.getMessage()
               for r in caplog.records)


def test_the_bound_follows_the_resident_set(monkeypatch):
    """Past the floor, TRACK_RSS_FACTOR x resident is tracked: the smallest ranges first, so
    the resident data stays tracked and only the big sparse range goes."""
    monkeypatch.setattr(daemon, "TRACK_FLOOR_PAGES", 64)
    k = FakeKernel()
    proc = k.add(FakeProc(PID, 128))  # 2 words, 128 resident: bound 512 pages
    proc.vmas.insert(0, Vma(0x1000_0000_0000, 0x1000_0000_0000 + 320 * PAGE, "rw-p", 0, "00:00", 0, ""))
    proc.vmas.insert(0, Vma(0x0800_0000_0000, 0x0800_0000_0000 + 1024 * PAGE, "rw-p", 0, "00:00", 0, ""))
    eng = make_engine(k)
    eng.step()
    assert eng.units[(PID, 0.0)].pages == 128 + 320


def test_a_process_that_exits_leaves_nothing_behind():
    """Tracked.close: the reader's pid, the huge-page verdicts and holds, its words (history,
    nodes, backoff) and retry entries in the shared pack all go."""
    k, eng = held_engine(2)
    gone = (PID + 1, 0.0)
    pk = eng.units[gone].pack
    base = eng.units[gone].base_vpn
    pk.state.fail(np.arange(eng.units[gone].off * 64, eng.units[gone].off * 64 + 5), eng.seq, 4)
    assert gone in eng.huge.tracker.procs and gone in eng.huge.held
    k.procs.pop(PID + 1)
    eng.step()
    assert gone not in eng.units and PID + 1 in k._reader.closed
    assert gone not in eng.huge.tracker.procs and gone not in eng.huge.held
    assert pk.state.words == eng.units[(PID, 0.0)].words
    assert not ((pk.state.retry_vpn >= base) & (pk.state.retry_vpn < base + (1 << 37))).any()
