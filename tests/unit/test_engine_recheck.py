"""Node bits stay true (issue 16, case 3): pages the kernel moved behind tierd's back (kswapd
demotion, NUMA balancing) are found by the rotating recheck within a few intervals."""

from __future__ import annotations

from engine_fakes import PAGE, FakeKernel, FakeProc
from test_engine_daemon import PID, make_engine

from tierd.engine.daemon import RECHECK_EVERY


def test_pages_demoted_behind_tierds_back_are_found_and_promoted_when_hot():
    """The issue's case: 1,024 cold pages on fast, demoted by the kernel, then made hot.
    Old code: tierd believed them on fast and never promoted them (30 intervals)."""
    k = FakeKernel()
    proc = k.add(FakeProc(PID, 4096, node=1))
    moved = range(1024)
    for i in moved:
        proc.node[proc.vpn(i)] = 0
    eng = make_engine(k)
    for _ in range(3):
        eng.step()
    st = next(iter(eng.units.values())).state
    for i in moved:  # kswapd demotes them; tierd does not see it
        proc.node[proc.vpn(i)] = 1
    k.mem[0][1] += 1024 * PAGE
    k.mem[1][1] -= 1024 * PAGE
    stale = 0
    for n in range(RECHECK_EVERY + 3):
        proc.next_access |= {proc.vpn(i) for i in moved}
        stats = eng.step()
        stale += stats.stale
    assert sum(proc.node[proc.vpn(i)] == 0 for i in moved) == 1024
    assert stale == 1024
    flat = st.extents.flat_of(__import__("numpy").array([proc.vpn(i) for i in moved]))
    assert (st.node_of(flat) == 0).all()


def test_pages_promoted_behind_tierds_back_are_known_on_fast():
    k = FakeKernel()
    proc = k.add(FakeProc(PID, 2048, node=1))
    eng = make_engine(k)
    eng.step()
    for i in range(512):  # NUMA balancing promotes them
        proc.node[proc.vpn(i)] = 0
    stats = [eng.step() for _ in range(RECHECK_EVERY)]
    assert sum(s.stale for s in stats) == 512
    assert stats[-1].targets["app"].fast_pages == 512
