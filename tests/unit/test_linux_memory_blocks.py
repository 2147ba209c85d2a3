"""PFN -> node from the memory blocks in sysfs (parser takes text; roots injected)."""

from __future__ import annotations

import numpy as np
import pytest

from tierd.linux.errors import ParseError
from tierd.linux.sysfs import SysFS, parse_block_size, parse_memory_blocks


def test_block_size_is_hex_bytes():
    assert parse_block_size("8000000\n") == 128 << 20
    for bad in ("", "zz", "0", "800"):
        with pytest.raises(ParseError):
            parse_block_size(bad)


def test_pfns_map_to_the_node_of_their_block():
    # 128 MiB blocks = 32768 pages; node 0: blocks 0-1 and 4, node 1: blocks 2-3, 5 missing
    m = parse_memory_blocks("8000000", {0: ["memory0", "memory1", "memory4", "cpu0", "meminfo"],
                                        1: ["memory3", "memory2"]})
    assert m.start.tolist() == [0, 65536, 131072] and m.end.tolist() == [65536, 131072, 163840]
    pfns = np.array([0, 65535, 65536, 131071, 131072, 163839, 163840, 10**9])
    assert m.node_of(pfns).tolist() == [0, 0, 1, 1, 0, 0, -1, -1]
    assert parse_memory_blocks("8000000", {}).node_of(np.array([5])).tolist() == [-1]
    with pytest.raises(ParseError):
        parse_memory_blocks("8000000", {0: ["memory1"], 1: ["memory1"]})


def test_sysfs_reads_blocks_below_its_root(tmp_path):
    node = tmp_path / "devices/system/node"
    (tmp_path / "devices/system/memory").mkdir(parents=True)
    (tmp_path / "devices/system/memory/block_size_bytes").write_text("8000000\n")
    node.mkdir(parents=True)
    (node / "online").write_text("0-1\n")
    for nid, blocks in ((0, (0, 1)), (1, (7,))):
        d = node / f"node{nid}"
        d.mkdir()
        for b in blocks:
            (d / f"memory{b}").mkdir()
    m = SysFS(str(tmp_path)).memory_map()
    assert m.node_of(np.array([1, 65535, 7 * 32768, 8 * 32768])).tolist() == [0, 0, 1, -1]
    assert SysFS(str(tmp_path / "nothing")).memory_map().start.size == 0
