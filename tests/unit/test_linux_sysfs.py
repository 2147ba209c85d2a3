"""tierd.linux.sysfs: list/meminfo parsers and topologies of the fixture trees
(tests/unit/fixtures/topology/{two_tiers,memory_only_no_tiers,no_numa})."""

from __future__ import annotations

import os
import shutil

import pytest

from tierd.linux import Node, ParseError, SysFS, Topology
from tierd.linux.sysfs import format_nodelist, parse_distance, parse_node_meminfo, parse_nodelist

TOPO = os.path.join(os.path.dirname(__file__), "fixtures", "topology")


def sysfs(name: str) -> SysFS:
    return SysFS(os.path.join(TOPO, name, "sys"), os.path.join(TOPO, name, "proc"))


@pytest.mark.parametrize(
    "text, ids",
    [("0-3,5,7-8\n", (0, 1, 2, 3, 5, 7, 8)), ("\n", ()), ("", ()), ("4", (4,)), ("1,0,1", (0, 1))],
)
def test_parse_nodelist(text, ids):
    assert parse_nodelist(text) == ids


@pytest.mark.parametrize("text", ["a", "3-1", "1-", "-1", "0-99999999", "1--2"])
def test_parse_nodelist_rejects(text):
    with pytest.raises(ParseError):
        parse_nodelist(text)


def test_format_nodelist_inverts_parse():
    for ids in [(0,), (0, 1, 2, 5), (1, 3, 4, 5, 9)]:
        assert parse_nodelist(format_nodelist(ids)) == ids
    assert format_nodelist([]) == "none"
    assert format_nodelist([0, 1, 2, 5]) == "0-2,5"


def test_parse_node_meminfo_and_distance():
    mi = parse_node_meminfo("Node 0 MemTotal:  7038752 kB\nNode 0 MemFree:  4592544 kB\n"
                            "Node 0 HugePages_Total:     0\n")
    assert mi == {"MemTotal": 7038752 * 1024, "MemFree": 4592544 * 1024, "HugePages_Total": 0}
    assert parse_distance("10 21\n") == (10, 21)
    with pytest.raises(ParseError):
        parse_distance("10 x")


def test_two_node_topology_with_memory_tiers():
    s = sysfs("two_tiers")
    assert s.has_numa() and s.has_memory_tiers()
    assert s.memory_tiers() == {4: (0,), 67: (1,)}
    topo = s.topology()
    assert topo.ids == (0, 1)
    n0, n1 = topo.nodes
    assert n0 == Node(0, (0, 1), 524288 * 1024, 131072 * 1024, (10, 20), 4)
    assert n1.cpus == () and n1.tier == 67 and n1.mem_free == 1048576 * 1024
    assert topo.node(1) is n1
    assert topo.classify() == ((0,), (1,))


def test_tiers_decide_even_against_cpus(tmp_path):
    """With two tiers, a CPU node in the slower tier is slow (tiers come first)."""
    root = tmp_path / "t"
    shutil.copytree(os.path.join(TOPO, "two_tiers"), root)
    (root / "sys/devices/system/node/node1/cpulist").write_text("2-3\n")
    os.rename(root / "sys/devices/virtual/memory_tiering/memory_tier4",
              root / "sys/devices/virtual/memory_tiering/memory_tier100")
    topo = SysFS(str(root / "sys"), str(root / "proc")).topology()
    # tier 67 (node 1) is now the best tier
    assert topo.classify() == ((1,), (0,))


def test_one_tier_for_all_falls_back_to_cpus(tmp_path):
    """QEMU without HMAT puts both nodes in memory_tier4: tiers carry no information."""
    root = tmp_path / "t"
    shutil.copytree(os.path.join(TOPO, "two_tiers"), root)
    tiering = root / "sys/devices/virtual/memory_tiering"
    shutil.rmtree(tiering / "memory_tier67")
    (tiering / "memory_tier4/nodelist").write_text("0-1\n")
    topo = SysFS(str(root / "sys"), str(root / "proc")).topology()
    assert [n.tier for n in topo.nodes] == [4, 4]
    assert topo.classify() == ((0,), (1,))


def test_memory_only_node_without_tiers():
    s = sysfs("memory_only_no_tiers")
    assert not s.has_memory_tiers() and s.memory_tiers() == {}
    topo = s.topology()
    assert topo.ids == (0, 1, 2, 3)
    assert all(n.tier is None for n in topo.nodes)
    assert topo.node(2).cpus == () and topo.node(2).mem_total == 33554432 * 1024
    assert topo.node(3).mem_total == 0 and not topo.node(3).has_memory
    assert topo.node(0).distances == (10, 21, 30, 21)
    # CPU nodes with memory are fast, the memory-only node slow, the CPU-only node in neither.
    assert topo.classify() == ((0, 1), (2,))


def test_host_without_numa_is_one_node_with_meminfo_totals():
    s = sysfs("no_numa")
    assert not s.has_numa()
    topo = s.topology()
    assert topo == Topology((Node(0, (0, 1, 2, 3), 7038752 * 1024, 4592544 * 1024, (10,), None),))
    assert topo.classify() == ((0,), ())


def test_classify_policy_overrides():
    topo = sysfs("memory_only_no_tiers").topology()
    assert topo.classify(fast=[0]) == ((0,), (1, 2))
    assert topo.classify(slow=[1, 2]) == ((0,), (1, 2))
    assert topo.classify(fast=[1], slow=[2]) == ((1,), (2,))
    assert topo.classify(fast=None, slow="auto") == ((0, 1), (2,))


@pytest.mark.parametrize(
    "fast, slow, msg",
    [([0], [0], "both fast and slow"), ([7], "auto", "not online"), ("auto", [3], "not online")],
)
def test_classify_rejects_bad_overrides(fast, slow, msg):
    topo = sysfs("memory_only_no_tiers").topology()
    with pytest.raises(ValueError, match=msg):
        topo.classify(fast, slow)


def test_node_lookup_error_names_online_nodes():
    with pytest.raises(KeyError, match="0-1"):
        sysfs("two_tiers").topology().node(5)


def test_online_falls_back_to_node_directories(tmp_path):
    root = tmp_path / "t"
    shutil.copytree(os.path.join(TOPO, "two_tiers"), root)
    os.remove(root / "sys/devices/system/node/online")
    os.remove(root / "sys/devices/system/node/has_memory")
    assert SysFS(str(root / "sys")).online_nodes() == (0, 1)


def test_topology_is_reread_each_call(tmp_path):
    root = tmp_path / "t"
    shutil.copytree(os.path.join(TOPO, "two_tiers"), root)
    s = SysFS(str(root / "sys"), str(root / "proc"))
    assert s.topology().node(0).mem_free == 131072 * 1024
    (root / "sys/devices/system/node/node0/meminfo").write_text(
        "Node 0 MemTotal: 524288 kB\nNode 0 MemFree: 1024 kB\n")
    assert s.topology().node(0).mem_free == 1024 * 1024
