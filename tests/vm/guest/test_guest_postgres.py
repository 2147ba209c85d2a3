"""Inside the rig: a real PostgreSQL (Debian's package) as the shipped policy's target (issue 17).

The shipped etc/tierd.yaml's example target is database servers.  A cluster of our own
(workloads/postgres.py: PGDATA on a tmpfs bound to the slow node 1, shared_buffers 160MB, a
third of node 0, filled by pg_prewarm with a pgbench database of scale 8 and moved to node 1
with migrate_pages) serves a skewed read-only load: 4 pgbench clients selecting accounts by
a zipfian key (s=1.1), scattered over the table.  `tierd run` with the shipped policy AS
SHIPPED (its `databases` target and min_rss; only the metrics listener is off) must bring the
hot buffers to node 0: ground truth from the database (pg_buffercache usage counts: buffers
the load pinned at least 4 times, BM_MAX_USAGE_COUNT) and move_pages queries of those
buffers' pages through the pgbench backends.  Refused moves (the interval lines' "failed":
EACCES for pages mapped by several processes when moved with MPOL_MF_MOVE) must stay near 0,
and pgbench must finish without errors.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
from workloads import Scenario, node_meminfo, policy_yaml  # noqa: E402
from workloads import postgres as pgw  # noqa: E402
from workloads.harness import Tierd  # noqa: E402

SCALE = 8  # 800k accounts: ~120 MiB of table and index, all in shared_buffers
SHARED_BUFFERS_MIB = 160
SECONDS = 100  # pgbench -T: the load tierd has to act on (its hot set grows all along)
HOT_USAGE = 5  # BM_MAX_USAGE_COUNT: pinned by the load at least 4 times since the prewarm
FAILED = re.compile(r"failed (\d+) \(busy (\d+) absent (\d+) nomem (\d+) denied (\d+) other (\d+)\)")
# etc/tierd.yaml as shipped, targets included; only the metrics listener is off (other tests
# of this guest run tierd too)
SHIPPED = policy_yaml((REPO / "etc" / "tierd.yaml").read_text(), Scenario("PG", "", ()),
                      keep_targets=True)
INTERVAL = re.compile(r"#(\d+): (\d+) proc .*?promoted (\d+) demoted (\d+)")


def moves(log: str) -> dict[str, int]:
    """Totals over tierd's interval lines: promoted, demoted, failed by reason, and the most
    processes it managed in one interval."""
    out = dict.fromkeys(("promoted", "demoted", "failed", "busy", "absent", "nomem", "denied",
                         "other", "processes"), 0)
    for line in log.splitlines():
        m = INTERVAL.search(line)
        if not m:
            continue
        out["processes"] = max(out["processes"], int(m[2]))
        out["promoted"] += int(m[3])
        out["demoted"] += int(m[4])
        f = FAILED.search(line)
        if f:
            for k, v in zip(("failed", "busy", "absent", "nomem", "denied", "other"), f.groups()):
                out[k] += int(v)
    return out


def vm_rss(pid: int) -> int:
    """VmRSS in bytes, -1 once the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return -1
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)[1]) * 1024


@pytest.fixture
def cluster(tmp_path):
    why = pgw.missing()
    if why:
        pytest.fail(why)
    pg = pgw.Postgres(Path("/mnt/pg"), shared_buffers_mib=SHARED_BUFFERS_MIB, tmpfs_mib=512,
                      node=1)
    try:
        pg.start()
        t = pg.load(SCALE)
        left = pg.prewarm_to(1)
        print(f"postgres: pgbench -i -s {SCALE} and restart {t:.0f} s; prewarmed and moved "
              f"to node 1 ({sum(left.values())} pages left behind)")
        yield pg
    finally:
        pg.stop()


def test_postgres_hot_buffers_reach_the_fast_node(cluster, tmp_path):
    pg = cluster
    shmem0 = node_meminfo(0, "Shmem")
    bench = pgw.Pgbench(pg, tmp_path, seconds=SECONDS, scale=SCALE).start()
    try:
        bench.backends()  # all clients connected
        pool = pgw.BufferPool(pg)
        time.sleep(3)
        first = pool.sample(HOT_USAGE)  # before tierd starts
        with Tierd(SHIPPED, tmp_path) as tierd:
            t0 = time.monotonic()
            trace = []
            while time.monotonic() - t0 < SECONDS - 30:  # the last sample while pgbench runs
                time.sleep(8)
                trace.append((round(time.monotonic() - t0), pool.sample(HOT_USAGE)))
            shmem_fast = node_meminfo(0, "Shmem") - shmem0
            rss = {pid: vm_rss(pid) >> 20 for pid in [pg.postmaster(), *trace[-1][1]["backends"]]}
        log = tierd.text()
        result = bench.wait(timeout=SECONDS + 120)
    finally:
        bench.stop()
    m = moves(log)
    share = [(t, s["hot_fast"] / max(1, s["hot"])) for t, s in trace]
    end, last = share[-1][1], trace[-1][1]
    # every buffer page the backends map, before tierd started
    start = (first["hot_fast"] + first["cold_fast"]) / max(1, first["hot"] + first["cold"])
    tried = m["promoted"] + m["demoted"] + m["failed"]
    print(f"postgres: before tierd {first['hot_fast'] + first['cold_fast']} of "
          f"{first['hot'] + first['cold']} buffer pages on node 0; hot buffers' pages on node 0 "
          "(s after tierd's launch: share, pages located; usage counts 0-5 of the pgbench "
          "buffers): "
          + "; ".join(f"{t}: {s['hot_fast'] / max(1, s['hot']):.0%} of {s['hot']}, "
                      f"usage {s['usage']}, backends {s['backends']}" for t, s in trace)
          + f"; query errors {pool.errors[-3:]}; VmRSS MiB (postmaster, backends) {rss}"
          + f"; shared memory on node 0 +{shmem_fast >> 20} MiB; tierd managed at most "
          f"{m['processes']} processes, promoted {m['promoted']} demoted {m['demoted']} "
          f"failed {m['failed']} (denied {m['denied']} busy {m['busy']}); pgbench {result}")
    assert result["returncode"] == 0 and result["failed"] == 0 and not result["errors"], \
        bench.text()[-3000:]
    assert "Traceback" not in log, log[-3000:]
    # the setup put the buffer pool on the slow node: a check of the check
    assert start < 0.2 and first["hot"] + first["cold"] > 1000, trace
    assert last["hot"] > 500, trace  # the load really had a hot set, located at the end
    assert m["processes"] > 0, ("the shipped `databases` target matched no postgres process "
                                "(min_rss?):\n" + log[-3000:])
    assert m["failed"] <= max(100, tried // 100), (m, log[-3000:])
    assert end >= 0.8, (share, m, log[-3000:])
