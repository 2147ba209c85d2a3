"""workloads/: the C programs that know their hot pages, and their driver, on this machine.

These run unprivileged (move_pages queries on one's own child need no capability); the rig's
tests (tests/vm/guest/test_guest_ground_truth.py) use them on two NUMA nodes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import workloads  # noqa: E402


@pytest.fixture(scope="module")
def bindir():
    return workloads.build()


def test_hotset_reports_its_hot_pages_phases_and_checksums(bindir, tmp_path):
    with workloads.Hotset(bindir, tmp_path, size_mib=8, hot_mib=1, seed=5, pause_us=1000) as w:
        lay = w.layout()
        assert lay.pid == w.pid and lay.pages == 2048 and not lay.thp and lay.phase == 0
        assert lay.hot.size == 256 and np.unique(lay.hot).size == 256
        assert lay.base % (2 << 20) == 0
        where = w.nodes()
        assert (where >= 0).all()  # every page present (filled with its pattern)
        p = w.placement(fast=(int(where[0]),))
        assert (p.hot, p.cold, p.absent) == (256, 1792, 0)
        assert p.hot_fraction == 1.0
        new = w.next_phase()
        assert new.phase == 1 and not np.intersect1d(new.hot, lay.hot).size
        assert w.verify()
        t0, _ = w.touches()
        workloads._wait(lambda: w.touches()[0] > t0, 30, "touches")


def test_dense_hot_set_is_whole_2mib_blocks(bindir, tmp_path):
    with workloads.Hotset(bindir, tmp_path, size_mib=16, hot_mib=4, dense=True, thp=True) as w:
        hot = np.sort(w.layout().hot)
        assert hot.size == 1024
        blocks = np.unique(hot // 512)
        assert blocks.size == 2 and (np.bincount(hot // 512)[blocks] == 512).all()
        assert w.layout().thp


def test_churn_runs_and_checks_its_data(bindir):
    proc = workloads.churn(bindir, duration=1, pause_us=10000)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "0 bad words" in out and "forks" in out


def test_policy_yaml_is_the_shipped_policy_plus_selectors():
    import yaml

    base = (Path(workloads.SRC).parent / "etc" / "tierd.yaml").read_text()
    sc = workloads.scenarios(scale=0.25)["S5"]
    doc = yaml.safe_load(workloads.policy_yaml(base, sc, interval="1s"))
    shipped = yaml.safe_load(base)
    assert [t["comm"] for t in doc["targets"]] == ["^hs-a$", "^hs-b$"]
    assert doc["targets"][0]["fast_share"] == "30%" and doc["targets"][1]["fast_cap"] == "15%"
    assert doc["interval"] == "1s" and doc["fast_tier"] == shipped["fast_tier"]
    assert doc["migration"] == shipped["migration"] and doc["hotness"] == shipped["hotness"]


def test_policy_yaml_can_keep_the_shipped_targets():
    import yaml

    base = (Path(workloads.SRC).parent / "etc" / "tierd.yaml").read_text()
    shipped = yaml.safe_load(base)["targets"]
    sc = workloads.Scenario("PG", "", ())
    doc = yaml.safe_load(workloads.policy_yaml(base, sc, keep_targets=True))
    assert doc["targets"] == shipped and doc["metrics"]["listen"] == ""
    doc = yaml.safe_load(workloads.policy_yaml(base, sc, keep_targets=True, min_rss="0"))
    assert [t["min_rss"] for t in doc["targets"]] == ["0"] * len(shipped)
    assert [t["comm"] for t in doc["targets"]] == [t["comm"] for t in shipped]


def test_shortlived_maps_separate_regions_and_exits(bindir):
    import subprocess
    import time

    # Polled, not a fixed sleep: on a busy CI host the child may not have mapped its regions
    # 0.5 s after the fork, or may already have exited when the test process runs again.
    proc = subprocess.Popen([str(bindir / "shortlived"), "--maps", "8", "--pages", "2",
                             "--ms", "3000"])
    try:
        deadline = time.monotonic() + 30
        guards = 0
        while guards < 8 and proc.poll() is None and time.monotonic() < deadline:
            try:
                maps = Path(f"/proc/{proc.pid}/maps").read_text().splitlines()
            except (FileNotFoundError, ProcessLookupError):  # exited meanwhile: poll() says
                continue
            guards = sum(" ---p " in line for line in maps)
            time.sleep(0.01)
        assert guards >= 8, guards  # a guard VMA after each region, seen while it ran
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    assert subprocess.run([str(bindir / "shortlived"), "--maps", "0"]).returncode == 2


def test_pgbench_progress_and_summary_are_parsed():
    from workloads import postgres

    text = ("progress: 5.0 s, 100.0 tps, lat 1.0 ms stddev 0.1, 0 failed\n"
            "progress: 10.0 s, 300.0 tps, lat 1.0 ms stddev 0.1, 0 failed\n"
            "number of transactions actually processed: 2000\n"
            "number of failed transactions: 0 (0.000%)\n"
            "tps = 199.5 (without initial connection time)\n")
    assert postgres.progress_transactions(text) == 2000
    assert postgres.summary(text) == {"transactions": 2000, "failed": 0, "tps": 199.5,
                                      "errors": 0}
    assert postgres.summary("pgbench: error: connection lost\n")["errors"] == 1


def test_parse_report_rejects_a_truncated_list():
    with pytest.raises(workloads.WorkloadError):
        workloads.parse_report("pid 1\nbase 0x1000\npages 4\nthp 0\nphase 0\nhot 2\n3\n")


def test_skewed_scores_its_pages_against_the_hottest_that_fit(tmp_path):
    from workloads.real_hosts import Skewed

    with Skewed(tmp_path, 4, name="skew-unit") as w:
        assert Path(f"/proc/{w.pid}/comm").read_text().strip() == "skew-unit"
        node = int(w.nodes()[0])
        p = w.placement(fast=(node,))  # one node here: every page is "fast"
        assert (p.hot, p.hot_fast, p.cold, p.absent) == (1024, 1024, 0, 0)
        assert w.score(fast=(node,)) == (pytest.approx(1.0), 1024)
        order = np.argsort(w.weight)  # coldest first
        where = np.full(1024, node + 1)
        where[order[-100:]] = node  # the 100 hottest on "fast": the best for 100 pages
        assert w.score(fast=(node,), where=where) == (pytest.approx(1.0), 100)
        where[:] = node + 1
        where[order[:100]] = node  # the 100 coldest: far below the best
        ratio, k = w.score(fast=(node,), where=where)
        assert k == 100 and ratio < 0.2
        workloads._wait(lambda: w.touches()[0] > 0, 60, "touches")


def test_real_host_scenarios_target_the_workload_not_the_page_cache_reader():
    import yaml

    base = (Path(workloads.SRC).parent / "etc" / "tierd.yaml").read_text()
    sc = workloads.scenarios()
    doc = yaml.safe_load(workloads.policy_yaml(base, sc["S6"]))
    assert [t["comm"] for t in doc["targets"]] == ["^hs-s6$"]
    doc = yaml.safe_load(workloads.policy_yaml(base, sc["S7"]))
    assert [t["comm"] for t in doc["targets"]] == ["^skew$"] and sc["S7"].specs[0].size_mib == 1024
