"""tierd.linux.nodes: numa_maps parsed from text and read from the fixture tree, pagemap PFNs
through the memory blocks, and the engine using either instead of move_pages queries."""

from __future__ import annotations

import os

import numpy as np
import pytest
from engine_fakes import FakeKernel, FakeProc
from test_engine_daemon import PID, make_engine

from tierd.linux.errors import ParseError
from tierd.linux.nodes import NumaMapsNodes, PagemapNodes, parse_numa_maps
from tierd.linux.procfs import PM_PRESENT, ProcFS
from tierd.linux.sysfs import parse_memory_blocks
from tierd.linux.tracking import IdleBitmapReader, PageIdleReader

PROC = os.path.join(os.path.dirname(__file__), "fixtures", "proc")


def test_parse_numa_maps():
    text = open(os.path.join(PROC, "4242", "numa_maps")).read()
    m = parse_numa_maps(text)
    assert len(m) == 11
    assert (m[0].start, m[0].policy, m[0].nodes, m[0].only_node) == (0x55D4C8A00000, "default", {0: 42}, 0)
    assert m[1].nodes == {0: 150, 1: 50} and m[1].only_node is None  # spread: stays unknown
    assert m[2].only_node == 1 and m[6].policy == "bind:1" and m[6].only_node == 1
    assert m[5].nodes == {} and m[5].only_node is None  # nothing present
    assert parse_numa_maps("7f00 default anon=1 N0=0 N1=1\n")[0].only_node == 1


@pytest.mark.parametrize("bad, line", [
    ("55d4 default N0=1\nzz default N0=1\n", 2),
    ("55d4\n", 1),
    ("55d4 default N0=x\n", 1),
])
def test_bad_numa_maps_name_the_line(bad, line):
    with pytest.raises(ParseError) as e:
        parse_numa_maps(bad, "/proc/7/numa_maps")
    assert e.value.line == line and str(e.value).startswith(f"/proc/7/numa_maps:{line}:")


def test_numa_maps_nodes_from_the_fixture_tree():
    """Whole mappings on one node give every page of the range that node; a mapping spread
    over two nodes (the text segment, the stack) stays unknown."""
    src = NumaMapsNodes(ProcFS(PROC))
    heap = 0x55D4C9E3E000 >> 12
    lo = heap // 64 - 1  # from the word before the heap (text segment: spread)
    out = src.nodes(4242, lo, 4)
    assert out.shape == (256,)
    assert (out[: heap - lo * 64] == -1).all() and (out[heap - lo * 64:] == 1).all()
    anon = 0x7F1C2A000000 >> 12
    out = src.nodes(4242, anon // 64, 1)
    assert (out[:33] == 0).all() and (out[33:] == -1).all()
    assert (IdleBitmapReader(PROC).nodes(4242, anon // 64, 1) == out).all()


def test_pagemap_nodes_map_pfns_through_the_memory_blocks(tmp_path, monkeypatch):
    """One pread of pagemap; absent pages -1; a PFN outside every block reloads the blocks
    (memory hotplug; at most every RELOAD_SECONDS, here 0)."""
    from tierd.linux import nodes as nodes_mod

    monkeypatch.setattr(nodes_mod, "RELOAD_SECONDS", 0.0)
    pid = 77
    (tmp_path / str(pid)).mkdir()
    entries = np.zeros(128, np.uint64)
    pfns = {0: 5, 1: 32768 + 3, 2: 40 * 32768, 64: 32767}
    for i, pfn in pfns.items():
        entries[i] = PM_PRESENT | np.uint64(pfn)
    (tmp_path / str(pid) / "pagemap").write_bytes(b"\0" * (8 * 64 * 10) + entries.tobytes())
    maps = [parse_memory_blocks("8000000", {0: ["memory0"], 1: ["memory1"]}),
            parse_memory_blocks("8000000", {0: ["memory0"], 1: ["memory1", "memory40"]})]
    loads = []

    def load():
        loads.append(1)
        return maps[min(len(loads), 2) - 1]

    src = PagemapNodes(ProcFS(str(tmp_path)), load)
    out = src.nodes(pid, 10, 2)
    assert out[[0, 1, 2, 64]].tolist() == [0, 1, 1, 0] and len(loads) == 2
    assert (np.delete(out, [0, 1, 2, 64]) == -1).all()
    reader = PageIdleReader(str(tmp_path), str(tmp_path / "sys"))
    reader._pfn_nodes = src
    assert (reader.nodes(pid, 10, 2) == out).all()


def test_process_wide_node_source_is_used_only_while_many_pages_are_unknown():
    """A numa_maps-like source (``nodes_scope = "process"``) is asked on the first sample
    (every page unknown), not for a handful of new pages later: those are queried."""
    k = FakeKernel()
    proc = k.add(FakeProc(PID, 1024, node=1))
    asked = []

    def nodes(pid, word_start, nwords):
        asked.append((word_start, nwords))
        out = np.full(nwords * 64, -1, np.int16)
        for v, n in k.proc(pid).node.items():
            if word_start * 64 <= v < (word_start + nwords) * 64 and v % 64:
                out[v - word_start * 64] = n
        return out

    k._reader.nodes = nodes
    k._reader.nodes_scope = "process"
    late = [proc.vpn(i) for i in range(1000, 1024)]
    for v in late:  # not there yet
        del proc.node[v]
    eng = make_engine(k)
    stats = eng.step()
    assert asked and stats.nodes[-1].sum() == 0  # learned: 985 from the source, 15 queried
    assert sum(1 for c in k.calls if c[0] == "query") == 1
    asked.clear()
    for v in late:  # 24 new pages: fewer than 1/8 unknown
        proc.node[v] = 0
    stats = eng.step()
    assert asked == [] and stats.queries.learned == 24
    for i in range(200):  # 200 more pages in a new mapping: now over 1/8, the source again
        proc.node[0x7F20_0000_0000 // 4096 + i] = 1
    proc.vmas.append(type(proc.vmas[0])(0x7F20_0000_0000, 0x7F20_0000_0000 + 200 * 4096,
                                        "rw-p", 0, "00:00", 0, ""))
    eng.step()
    assert asked


def test_pagemap_nodes_without_memory_blocks_read_nothing(tmp_path):
    """No memory block sysfs (CONFIG_MEMORY_HOTPLUG=n): every node -1 (queried instead),
    without reading pagemap (the process here has none) or the blocks again each call."""
    loads = []

    def load():
        loads.append(1)
        return parse_memory_blocks("8000000", {})

    src = PagemapNodes(ProcFS(str(tmp_path)), load)
    for _ in range(3):
        assert (src.nodes(12345, 0, 2) == -1).all()
    assert len(loads) == 1


def test_a_failing_node_source_leaves_pages_to_the_queries():
    """numa_maps unreadable (or the process gone meanwhile): the pages stay unknown and are
    queried; the interval does not fail."""
    k = FakeKernel()
    k.add(FakeProc(PID, 128, node=1))

    def nodes(pid, word_start, nwords):
        raise FileNotFoundError(2, "no numa_maps")

    k._reader.nodes = nodes
    eng = make_engine(k)
    stats = eng.step()
    assert stats.nodes[-1].sum() == 0 and stats.queries.learned == 128
