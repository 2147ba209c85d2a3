"""Room on the fast node counts reclaimable page cache (issue 16, case 1).

A host that reads files keeps its fast node's MemFree near the kernel's watermarks with
clean page cache.  Room is what the node can give (free + clean page cache), so tierd keeps
the hot set on fast and brings it there, while demotion under real pressure (memory that
cannot be reclaimed) still runs coldest first."""

from __future__ import annotations

import logging

import numpy as np
from engine_fakes import GIB, PAGE, FakeKernel, FakeProc
from test_engine_daemon import PID, make_engine

from tierd.engine.daemon import summary_line
from tierd.engine.placement import NodeRoom

MIB = 1 << 20


def on_fast(proc, pages) -> int:
    return sum(proc.node[proc.vpn(i)] == 0 for i in pages)


def test_node_room_counts_reclaimable_page_cache():
    r = NodeRoom(node=0, total=1000, free=20, floor=100, low=50, reclaimable=600)
    assert r.available == 620 and r.room == 520 and r.deficit == 0
    r = NodeRoom(node=0, total=1000, free=20, floor=100, low=50, reclaimable=10)
    assert r.room == 0 and r.deficit == 70


def test_sysfs_reads_reclaimable_from_node_meminfo():
    from tierd.linux.sysfs import parse_node_meminfo, reclaimable_bytes

    mi = parse_node_meminfo("Node 0 MemFree: 1000 kB\nNode 0 Active(file): 3000 kB\n"
                            "Node 0 Inactive(file): 5000 kB\nNode 0 Dirty: 500 kB\n"
                            "Node 0 Writeback: 100 kB\nNode 0 Shmem: 7000 kB\n")
    assert reclaimable_bytes(mi) == (8000 - 600) * 1024
    # mapped file pages (libraries, program text) are in use: not room
    mapped = parse_node_meminfo("Node 0 Active(file): 3000 kB\nNode 0 Inactive(file): 5000 kB\n"
                                "Node 0 Mapped: 2500 kB\n")
    assert reclaimable_bytes(mapped) == (8000 - 2500) * 1024
    assert reclaimable_bytes({**mapped, "Mapped": 9000 * 1024}) == 0


def test_hot_set_stays_on_a_fast_node_full_of_page_cache():
    """The issue's reproduction: a 64 MiB target whose 16 MiB hot set sits on fast; page cache
    refills node 0 to 2% free every interval.  Old code: MemFree below demote_below, every
    page demoted 'whatever its hotness', none promoted back."""
    k = FakeKernel(fast_total=1 * GIB, fast_free=1 * GIB - 16 * MIB, slow_total=4 * GIB,
                   slow_free=4 * GIB - 48 * MIB)
    npages, nhot = 16384, 4096
    proc = k.add(FakeProc(PID, npages, node=1))
    hot = range(nhot)
    for i in hot:
        proc.node[proc.vpn(i)] = 0
    eng = make_engine(k)
    for _ in range(12):
        k.fill_cache(0, 0.02)
        proc.next_access |= {proc.vpn(i) for i in hot}
        eng.step()
        assert on_fast(proc, hot) == nhot
    demoted_hot = [a for pid, pages, dest in k.moves() for a, d in zip(pages, dest or []) if a < nhot and d == 1]
    assert demoted_hot == []


def test_hot_set_starting_on_slow_reaches_a_fast_node_full_of_page_cache(caplog):
    k = FakeKernel(fast_total=1 * GIB, fast_free=1 * GIB, slow_total=4 * GIB, slow_free=4 * GIB - 64 * MIB)
    npages, nhot = 16384, 4096
    proc = k.add(FakeProc(PID, npages, node=1))
    hot = range(nhot)
    eng = make_engine(k)
    for _ in range(6):
        k.fill_cache(0, 0.02)
        proc.next_access |= {proc.vpn(i) for i in hot}
        stats = eng.step()
    assert on_fast(proc, hot) == nhot
    assert k.mem[0][1] + k.cache[0] == 1 * GIB - nhot * PAGE  # page cache gave way to it
    assert "WAITING" not in summary_line(stats)


def test_real_pressure_demotes_coldest_first_and_warns_when_hot_pages_wait(caplog):
    """Node 0 is full of memory that cannot be reclaimed (other programs' anonymous pages):
    tierd demotes to get back to keep_free, coldest first - never a page hotter than the
    coldest it leaves on fast - and hot pages on slow wait, which it says."""
    rng = np.random.default_rng(3)
    k = FakeKernel(fast_total=256 * MIB, fast_free=224 * MIB, slow_total=4 * GIB,
                   slow_free=4 * GIB - 32 * MIB)
    npages = 16384
    proc = k.add(FakeProc(PID, npages, node=1))
    for i in range(8192):
        proc.node[proc.vpn(i)] = 0
    rate = np.linspace(1.0, 0.0, 8192)  # fast page i accessed with probability rate[i]
    eng = make_engine(k)
    for step in range(8):
        if step == 4:
            k.mem[0][1] = 256 * MIB // 25  # other programs took the node: 4% free, no cache
        acc = np.flatnonzero(rng.random(8192) < rate)
        proc.next_access |= {proc.vpn(int(i)) for i in acc} | {proc.vpn(i) for i in range(8192, 9216)}
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tierd"):
            stats = eng.step()
        if step == 4:
            st = next(iter(eng.units.values())).state
            flat = st.extents.flat_of(np.array([proc.vpn(i) for i in range(npages)], np.int64))
            lv = st.hotness(flat)
            assert stats.plan.count("watermark") >= 3900  # back to keep_free
            left_fast = [lv[i] for i in range(npages) if proc.node[proc.vpn(i)] == 0]
            plan_levels = [r.level for r in stats.plan.requests if r.reason == "watermark"]
            assert max(plan_levels) <= min(left_fast)
    assert stats.targets["app"].waiting > 0
    assert "WAITING" in summary_line(stats)
    assert any("wait on slow memory" in r.getMessage() for r in caplog.records) or eng.warn.suppressed(("app", "waiting")) > 0
