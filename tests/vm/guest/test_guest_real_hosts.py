"""Inside the rig: issue 16's real-host conditions on real page tables (the workloads are
workloads.real_hosts'; benchmarks/side_by_side.py runs them as S6 and S7 next to the kernel's
tiering and DAMON).

A fast node kept full of page cache: a reader loops over a 1 GiB /dev/zram0 (clean page cache
on node 0, refilled as fast as reclaim takes it).  A workload's hot set starts on the slow
node; `tierd run` with the shipped policy must bring it to node 0 (the page cache gives way),
and demote none of it.  A skewed hot set twice node 0: the pages on node 0 against the hottest
that fit.  Ground truth: move_pages node queries of our own (workloads.node_of), node 0's
meminfo, and the workload's own weights.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
import workloads  # noqa: E402
from workloads import Hotset, Scenario, Spec, node_meminfo  # noqa: E402
from workloads.harness import Tierd  # noqa: E402
from workloads.real_hosts import PageCacheReader, Skewed  # noqa: E402

MIB = 1 << 20
SHIPPED = (REPO / "etc" / "tierd.yaml").read_text()


@pytest.fixture(scope="module")
def bindir():
    return workloads.build()


@pytest.fixture
def page_cache_on_node0():
    """node 0 kept full of clean page cache (below demote_below, 5% free)."""
    with PageCacheReader() as reader:
        yield reader


def file_pages(node: int) -> int:
    return node_meminfo(node, "Active(file)") + node_meminfo(node, "Inactive(file)")


def test_hot_set_reaches_a_fast_node_full_of_page_cache(bindir, tmp_path, page_cache_on_node0):
    total = node_meminfo(0, "MemTotal")
    cache_before = file_pages(0)
    # the reader brought MemFree under 5%; kswapd then frees up to its (boosted) high
    # watermark and the reader refills, so a second look may find more: under keep_free
    # (10%) MemFree alone leaves no room, which is the condition this test is about
    assert node_meminfo(0, "MemFree") < total // 10 and cache_before > total // 2
    spec = Spec("pc", 64, 16)
    pol = workloads.policy_yaml(SHIPPED, Scenario("t", "t", (spec,)), interval="1s")
    with Tierd(pol, tmp_path) as tierd:
        tierd.wait_intervals(2, 240)  # tierd is running (no target yet) when the hot loop starts
        t0 = time.monotonic()
        with Hotset(bindir, tmp_path, size_mib=spec.size_mib, hot_mib=spec.hot_mib, start_node=1,
                    name=spec.name).start() as w:
            reached = None
            seen = []
            while time.monotonic() - t0 < 120:
                p = w.placement()
                seen.append(p.hot_fraction)
                if reached is None and p.hot_fraction >= 0.9:
                    reached = time.monotonic() - t0
                if reached is not None and time.monotonic() - t0 > reached + 10:
                    break
                time.sleep(0.5)
            assert reached is not None, (f"{max(seen):.1%} of the hot set on node 0 after 120 s; "
                                         f"node 0 free {node_meminfo(0, 'MemFree') >> 20} MiB:\n"
                                         + tierd.text()[-3000:])
            # once there, none of it is demoted again (10 s with the reader going on)
            after = seen[next(i for i, x in enumerate(seen) if x >= 0.9):]
            assert min(after) >= 0.9, after
            end = w.placement()
            # bounded generously for a loaded CI host; the measured time is printed and
            # recorded in benchmarks/README.md (the kernel's own tiering needs ~22 s)
            assert reached <= 40, reached
            # the page cache gave way to the hot set: node 0 holds less of it than before
            assert file_pages(0) < cache_before
        text = tierd.text()
    assert tierd.returncode == 0, text[-3000:]
    assert "Traceback" not in text and "ERROR" not in text, text[-3000:]
    demoted_hot = end.hot - end.hot_fast
    print(f"page cache on node 0: 90% of the hot set on node 0 {reached:.1f} s after its hot "
          f"loop started (tierd running); {demoted_hot} hot pages off node 0 at the end; min "
          f"after reaching 90%: {min(after):.1%}")


# -- a skewed hot set bigger than node 0 ---------------------------------------------------------

SKEW_MIB = 1024  # 2x node 0
def test_skewed_hot_set_bigger_than_node0_fills_it_with_the_hottest(tmp_path):
    """A 1 GiB process (2x node 0) touching its pages with zipf 1.1 frequencies; first touch
    put half a GiB of it on node 0 at random.  With the shipped policy, the weight of the
    pages on node 0 against the best possible for the same number of pages there (the
    hottest ones), from the workload's own weights (ground truth)."""
    spec = Spec("skew", SKEW_MIB, 0, start_node=None, kind="skew")
    with Skewed(tmp_path, SKEW_MIB, name=spec.name) as child:
        start, k = child.score()
        t0 = time.monotonic()
        ratio = start
        with Tierd(workloads.policy_yaml(SHIPPED, Scenario("t", "t", (spec,)), interval="1s"),
                   tmp_path) as tierd:
            while time.monotonic() - t0 < 150 and ratio < 0.9:
                time.sleep(5)
                ratio, k = child.score()
            text = tierd.text()
        print(f"skewed 2x node 0: hot-on-fast / best possible {start:.3f} at the start, "
              f"{ratio:.3f} after {time.monotonic() - t0:.0f} s ({k} pages on node 0)")
        assert "Traceback" not in text, text[-3000:]
        assert ratio >= 0.8, (start, ratio, text[-3000:])
