"""Memory nodes coming and going while tierd runs (issue 17 #7).

A node the policy lists that goes offline, or a new node coming online, is a warning
(rate-limited) and a re-classification.  Before, Topology.classify raised ValueError in every
interval: the daemon gave up after MAX_FAILED_INTERVALS (exit 1) and the restart refused the
policy (exit 2).  Fixture /sys trees (a copy of tests/unit/fixtures/topology/two_tiers) are
changed between intervals, read by the real SysFS, both alone and under the engine's loop.
"""

from __future__ import annotations

import logging
import os
import shutil

import pytest

from engine_fakes import GIB, FakeKernel, FakeProc
from tierd.engine.daemon import Daemon, Engine
from tierd.engine.targets import ProcessRef, StaticResolver
from tierd.linux import SysFS
from tierd.policy import Policy, TargetSpec

PID = 4242
TOPO = os.path.join(os.path.dirname(__file__), "fixtures", "topology")
NODE_DIR = "devices/system/node"


class Sys:
    """A writable copy of the two_tiers /sys: node 0 (CPUs, tier 4), node 1 (memory only,
    tier 67); possible nodes 0-3."""

    def __init__(self, tmp_path) -> None:
        self.root = tmp_path / "sys"
        shutil.copytree(os.path.join(TOPO, "two_tiers", "sys"), self.root)
        self.nodes = self.root / NODE_DIR
        (self.nodes / "possible").write_text("0-3\n")
        self.template = tmp_path / "node1"  # what a memory-only node's directory holds
        shutil.copytree(self.nodes / "node1", self.template)
        self.online = [0, 1]
        self.sysfs = SysFS(str(self.root), os.path.join(TOPO, "two_tiers", "proc"))

    def set_online(self, *ids: int) -> None:
        for i in ids:
            d = self.nodes / f"node{i}"
            if not d.exists():  # a memory-only node, like node 1
                shutil.copytree(self.template, d)
                text = (d / "meminfo").read_text().replace("Node 1 ", f"Node {i} ")
                (d / "meminfo").write_text(text)
        for i in set(self.online) - set(ids):
            shutil.rmtree(self.nodes / f"node{i}")  # offlined: its directory goes
        self.online = sorted(ids)
        text = ",".join(map(str, self.online)) + "\n"
        (self.nodes / "online").write_text(text)
        (self.nodes / "has_memory").write_text(text)

    def topology(self):
        return self.sysfs.topology()


# -- the parser ----------------------------------------------------------------------------------


def test_a_listed_node_going_offline_is_left_out_not_refused(tmp_path):
    s = Sys(tmp_path)
    assert s.topology().classify([0], [1], strict=False) == ((0,), (1,))
    s.set_online(0)
    topo = s.topology()
    assert topo.possible == (0, 1, 2, 3) and [n.id for n in topo.nodes] == [0]
    assert topo.classify([0], [1], strict=False) == ((0,), ())
    assert topo.classify([0], [1]) == ((0,), ())  # possible: a policy naming it loads
    assert topo.offline([0], [1]) == (1,) and topo.offline("auto", None) == ()
    with pytest.raises(ValueError, match=r"not online nodes with memory .*can come online: 0-3"):
        topo.classify([0], [7])  # can never exist here: a policy error
    assert topo.classify([0], [7], strict=False) == ((0,), ())


def test_a_new_node_coming_online_is_classified(tmp_path):
    s = Sys(tmp_path)
    s.set_online(0, 1, 2)
    topo = s.topology()
    assert [n.id for n in topo.nodes] == [0, 1, 2]
    assert topo.classify() == ((0,), (1, 2))  # memory-only, no tier: slow
    assert topo.classify([0]) == ((0,), (1, 2))
    assert topo.classify([0], [1]) == ((0,), (1,))  # both listed: node 2 in neither


def test_a_node_vanishing_while_the_topology_is_read_is_skipped(tmp_path):
    s = Sys(tmp_path)
    shutil.rmtree(s.nodes / "node1")  # online still says 0-1
    assert [n.id for n in s.topology().nodes] == [0]


# -- the daemon loop -----------------------------------------------------------------------------


class HotplugKernel(FakeKernel):
    """engine_fakes' kernel whose topology is read from a changing fixture /sys."""

    def __init__(self, sys_: Sys) -> None:
        super().__init__()
        self.sys = sys_
        for i in range(2, 4):
            self.mem[i] = [16 * GIB, 15 * GIB]
            self.cache[i] = 0

    def topology(self):
        return self.sys.topology()


def engine(k, **kw) -> Engine:
    pol = dict(source="<test>", interval=1.0, targets=(TargetSpec("app", pids=(PID,)),),
               rate=1 << 30, batch=4 << 20, retry_after=4)
    pol.update(kw)
    return Engine(k, Policy(**pol), resolver=StaticResolver([ProcessRef(PID, 0.0, "app")]),
                  clock=lambda: 0.0)


def warnings_(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_the_loop_survives_listed_nodes_going_and_coming(tmp_path, caplog):
    s = Sys(tmp_path)
    k = HotplugKernel(s)
    k.add(FakeProc(PID, 128, node=1))
    eng = engine(k, fast_nodes=(0,), slow_nodes=(1, 2))
    d = Daemon(eng, max_failed=3)
    d.stop.wait = lambda timeout=None: False  # no sleeping between intervals
    seen = []
    eng_step = eng.step

    def step():
        st = eng_step()
        seen.append((st.fast, st.slow))
        n = len(seen)
        # intervals 1-2 as booted (node 2 listed, offline), 3-6 node 1 offline too,
        # 7-8 nodes 1 and 2 online
        s.set_online(*{2: (0,), 6: (0, 1, 2)}.get(n, s.online))
        return st

    eng.step = step
    with caplog.at_level(logging.DEBUG, logger="tierd"):
        d.run(max_intervals=8)
    assert not d.failed
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert seen == [((0,), (1,))] * 2 + [((0,), ())] * 4 + [((0,), (1, 2))] * 2
    w = warnings_(caplog)
    assert sum("node(s) 2 listed in the policy" in m for m in w) == 1  # rate-limited
    assert sum("node(s) 1-2 listed in the policy" in m for m in w) == 1
    assert any("memory nodes changed: offline 1; now fast node(s) 0, slow node(s) none" in m for m in w)
    assert any("memory nodes changed: online 1-2; now fast node(s) 0, slow node(s) 1-2" in m
               for m in w)


def test_a_new_node_is_used_by_the_next_interval(tmp_path, caplog):
    s = Sys(tmp_path)
    k = HotplugKernel(s)
    proc = k.add(FakeProc(PID, 128, node=1))
    eng = engine(k, fast_nodes=(0,))
    with caplog.at_level(logging.WARNING, logger="tierd"):
        assert eng.step().slow == (1,)
        s.set_online(0, 1, 3)
        st = eng.step()
    assert st.slow == (1, 3) and 3 in st.memory
    assert warnings_(caplog) == ["memory nodes changed: online 3; now fast node(s) 0, slow node(s) "
                                 "1,3, unused none"]
    for _ in range(3):  # and the engine keeps working with the new node in its state
        proc.next_access |= {proc.vpn(i) for i in range(8)}
        eng.step()
    assert k.moves()  # the hot pages were promoted


def test_startup_with_a_listed_node_offline_waits_for_it(tmp_path, monkeypatch):
    """service.main: a possible node listed but offline is neither exit 2 (policy error) nor
    69 (cannot tier): the daemon runs and the engine warns."""
    import argparse
    import signal

    from tierd import service
    from tierd.engine import daemon as daemon_mod

    s = Sys(tmp_path)
    s.set_online(0)
    k = HotplugKernel(s)
    k.add(FakeProc(PID, 64, node=0))
    cfg = tmp_path / "tierd.yaml"
    cfg.write_text(f"interval: 1s\nnodes:\n  fast: [0]\n  slow: [1]\nmetrics:\n  listen: ''\n"
                   f"targets:\n  - name: app\n    pids: [{PID}]\n")
    monkeypatch.setattr(daemon_mod.threading.Event, "wait", lambda self, timeout=None: self.is_set())
    from tierd.engine import targets

    monkeypatch.setattr(targets.PsutilResolver, "resolve", lambda self, specs: [
        ProcessRef(PID, 0.0, "app")])
    saved = {sg: signal.getsignal(sg) for sg in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        args = argparse.Namespace(config=str(cfg), intervals=3, log_level="INFO")
        assert service.main(args, kernel=k, env={}) == 0
        cfg.write_text(cfg.read_text().replace("slow: [1]", "slow: [9]"))  # cannot exist
        assert service.main(args, kernel=k, env={}) == 2
    finally:
        for sg, h in saved.items():
            signal.signal(sg, h)
