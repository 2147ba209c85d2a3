"""tierd.heatmap: the grid arithmetic (packed words in, rows x samples out), a TiB-sized
process aggregated into a readable number of rows, and `tierd scan --heatmap` end to end on
the fake kernel of test_cli."""

from __future__ import annotations

import numpy as np
import pytest
from test_cli import FakeKernel, FakeReader, run, scan_proc

from tierd.heatmap import AccessGrid, render

ALL = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


def words(n, value=0):
    return np.full(n, np.uint64(value), np.uint64)


def test_rows_count_accessed_and_present_pages_per_sample():
    # two extents of 4 and 4 words (256 + 256 pages), 4 rows of 2 words each
    g = AccessGrid(np.array([100, 500], np.uint64), np.array([4, 4]), samples=2, rows=4)
    acc0 = words(4)
    acc0[0] = np.uint64(0b1011)  # 3 pages in row 0
    g.add(0, 0, words(4, ALL), acc0)
    g.add(0, 1, words(4, ALL), words(4))
    acc1 = words(4)
    acc1[3] = ALL  # 64 pages in row 3 (second extent, second half)
    present1 = words(4, ALL)
    present1[2] = np.uint64(0)  # row 3 has 64 present pages
    g.add(1, 1, present1, acc1)
    g.add(1, 0, words(4, ALL), words(4))
    g.finish()
    assert g.accessed.tolist() == [[3, 0], [0, 0], [0, 0], [0, 64]]
    assert g.present.tolist() == [128, 128, 128, 128]  # present in any sample
    share = g.share()
    assert share[0, 0] == pytest.approx(3 / 128) and share[3, 1] == 0.5
    assert g.pages_per_row == 128


def test_vpn_rows_and_node_placement():
    g = AccessGrid(np.array([100, 500], np.uint64), np.array([4, 4]), samples=1, rows=4)
    vpn = np.array([100 * 64, 102 * 64 + 5, 503 * 64 + 63, 99 * 64, 504 * 64], np.uint64)
    assert g.row_of_vpn(vpn).tolist() == [0, 1, 3, -1, -1]
    g.place(vpn[:3], np.array([0, 1, -14], np.int32))
    assert g.nodes[0].tolist() == [1, 0, 0, 0]
    assert g.nodes[1].tolist() == [0, 1, 0, 0]
    assert g.nodes[-14].tolist() == [0, 0, 0, 1]
    assert g.row_address(2) == 500 * 64 * 4096
    assert g.row_address(1) == 102 * 64 * 4096


def test_empty_rows_are_masked_not_black():
    g = AccessGrid(np.array([0], np.uint64), np.array([8]), samples=1, rows=8)
    p = words(8)
    p[0] = ALL
    g.add(0, 0, p, p)
    g.finish()
    s = g.share()
    assert s[0, 0] == 1.0 and s.mask[1:, 0].all() and not s.mask[0, 0]


def test_a_tebibyte_process_fits_in_the_picture(tmp_path):
    """1 TiB of address space (2^22 words = 2^28 pages) in 512 rows of 2 GiB each... of
    4 KiB pages: 2^28 / 512 = 524288 pages (2 GiB) per row; hot: the first 1%."""
    n = 1 << 22
    g = AccessGrid(np.array([1 << 30], np.uint64), np.array([n]), samples=3)
    hot_words = n // 100
    present = words(n, ALL)
    for k in range(3):
        acc = words(n)
        acc[:hot_words] = ALL
        g.add(k, 0, present, acc)
    g.finish()
    assert g.rows == 512 and g.accessed.shape == (512, 3)
    assert g.pages_per_row * 4096 == 2 << 30
    share = g.share()
    assert (share[:5] == 1.0).all() and (share[6:] == 0).all()
    path = tmp_path / "tib.png"
    render(g, str(path), "synthetic 1 TiB process", [((1 << 30) << 18, "[anon]")], fast=(0,))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def two_nodes():
    from tierd.linux.sysfs import Node, Topology

    return Topology((Node(0, (0,), 1 << 30, 1 << 29, (10, 20), None),
                     Node(1, (), 1 << 32, 1 << 31, (20, 10), None)))


def test_scan_heatmap_writes_a_png(tmp_path):
    k = FakeKernel(scan_proc(tmp_path), FakeReader())
    k.topology = two_nodes
    png = tmp_path / "heat.png"
    rc, out, err = run(["scan", "--pid", "500", "--samples", "3", "--interval", "1ms",
                        "--heatmap", str(png)], k)
    assert rc == 0, err
    assert f"heatmap: {png} (" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scan_heatmap_without_tracking_draws_nothing(tmp_path):
    k = FakeKernel(scan_proc(tmp_path), None)
    png = tmp_path / "heat.png"
    rc, out, err = run(["scan", "--pid", "500", "--samples", "1", "--interval", "1ms",
                        "--heatmap", str(png)], k)
    assert rc == 1 and not png.exists()
