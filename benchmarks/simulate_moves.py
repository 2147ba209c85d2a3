"""What placement's moves buy: the issue-7 workloads on the simulator, one line each.

For each workload: steady-state hit/oracle and moves per interval (mean of the last --tail
intervals, as % of the workload's pages), wasted moves (% of steady moves: moved back within
8 intervals, or swaps whose promoted page was not the more accessed; tierd.sim.simulate),
effective access time (ns per access, migrations included), the intervals in which the fast
tier got fuller and ended above 100% - keep_free ("crossed": tierd broke keep_free; the
first-touch start above it is not tierd's doing, and swaps do not add to it), the
first interval at >= 0.95 of the oracle, the first interval with every page's node known,
and the engine's median time per interval.  For many processes also the spread of the fast
pages between identical processes, and how many processes hold hotness-0 pages on the fast
node while another's pages at hotness >= 4 are on the slow node.

Before/after in one run: run this file from two trees (e.g. a checkout of the old engine
with this tree's tierd/sim copied in, and this tree); it loads the policy and the engine of
the tree it lives in.

    .venv/bin/python benchmarks/simulate_moves.py [--only demo,fits] [--tail 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from tierd.policy import load_policy  # noqa: E402
from tierd.sim import simulate as sim  # noqa: E402
from tierd.units import parse_rate  # noqa: E402

WORKLOADS = {
    # name: (spec, intervals, migration rate or None for the policy's)
    "demo": ("size=16GiB,fast=4GiB,dist=zipf:1.1", 30, None),
    "fits": ("size=16GiB,fast=4GiB,dist=hotset:10%", 30, None),
    "larger": ("size=16GiB,fast=4GiB,dist=hotset:40%:90%", 30, None),
    "busy": ("size=16GiB,fast=4GiB,dist=zipf:1.1,busy=0.3", 30, None),
    "phase": ("size=16GiB,fast=4GiB,dist=zipf:1.1,phase=every:20", 40, None),
    "churn": ("size=16GiB,fast=4GiB,dist=zipf:1.1,churn=1%,kswapd=on", 30, None),
    "2+2": ("size=16GiB,fast=4GiB,dist=zipf:1.1,nodes=2+2", 30, None),
    "zipf64": ("size=64GiB,fast=16GiB,dist=zipf:1.1", 30, None),
    "many": ("many:200x50MiB,fast=4GiB,dist=zipf:1.1", 12, None),
    "one10g": ("size=10000MiB,fast=4GiB,dist=zipf:1.1", 12, None),
    "tib": ("size=1TiB,fast=256GiB,dist=zipf:1.1", 14, "8GiB/s"),
}


def workload(text: str, intervals: int):
    if text.startswith("many:"):
        head, _, rest = text.partition(",")
        n, _, size = head[5:].partition("x")
        kv = dict(p.split("=") for p in rest.split(","))
        procs = [{"size": size, "dist": kv.get("dist", "zipf:1.1")} for _ in range(int(n))]
        return sim._from_mapping({"machine": {"fast": kv["fast"]}, "processes": procs,
                                  "intervals": intervals}, text)
    return sim.parse_workload(f"{text},intervals={intervals}")


def fairness(engine, machine):
    """(min, max fast pages of a process, processes with hotness-0 fast pages while another
    process has pages at >= 4 on the slow node, the true mean access probability per sample
    of those fast hotness-0 pages and of those slow pages at >= 4 (the simulator's rates))."""
    fast = [int((p.node == sim.FAST).sum()) for p in machine.procs.values()]
    cold_fast, hot_slow = [], []
    q_cold, q_hot = [], []
    for u in engine.units.values():
        h = u.histograms()
        ids = u.state.node_ids
        cold_fast.append(int(h[ids.index(sim.FAST), 0]) if sim.FAST in ids else 0)
        hot_slow.append(int(h[ids.index(sim.SLOW), 4:].sum()) if sim.SLOW in ids else 0)
        proc = machine.procs[u.ref.pid]
        flat = u.flat_of(proc.base_vpn + np.arange(proc.npages))
        hot = u.state.hotness(flat).astype(np.int64)
        q = -np.expm1(-proc.rate * proc.weight_of_pages(np.arange(proc.npages)))
        q_cold.append(q[(proc.node == sim.FAST) & (hot == 0)])
        q_hot.append(q[(proc.node == sim.SLOW) & (hot >= 4)])
    bad = sum(1 for i, c in enumerate(cold_fast)
              if c and any(s for j, s in enumerate(hot_slow) if j != i))
    qc, qh = np.concatenate(q_cold), np.concatenate(q_hot)
    return (min(fast), max(fast), bad, float(qc.mean()) if qc.size else 0.0,
            float(qh.mean()) if qh.size else 0.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=os.path.join(ROOT, "etc/tierd.yaml"))
    ap.add_argument("--only", default=",".join(WORKLOADS))
    ap.add_argument("--tail", type=int, default=5)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="engine time as wall-clock (default) or the process's CPU time "
                         "(steadier when other jobs load the host)")
    args = ap.parse_args()
    base = load_policy(args.config)
    print(f"# simulate_moves: tree {os.path.abspath(ROOT)}, policy {args.config}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load {os.getloadavg()[0]:.1f}, "
          f"engine clock {args.clock}")
    print(f"{'workload':>8} {'hit/orc':>7} {'moves%':>7} {'wasted%':>7} {'eat_ns':>7} "
          f"{'crossed':>7} {'>=0.95':>6} {'known':>5} {'eng_ms':>7} {'recover':>7} fairness")
    for name in args.only.split(","):
        text, intervals, rate = WORKLOADS[name]
        spec = workload(text, intervals)
        pol = base if rate is None else replace(base, rate=parse_rate(rate))
        seen = {}
        many = len(spec.processes) > 1  # (per-page work: not for one TiB process)
        rows, machine = sim.simulate(pol, spec, intervals,
                                     on_end=lambda e, m: many and seen.update(f=fairness(e, m)),
                                     clock=time.process_time if args.clock == "cpu" else None)
        pages = sum(p.npages for p in machine.procs.values())
        s = sim.summarize(rows, tail=args.tail)
        steady = rows[-args.tail:]
        moves = statistics.mean(r.moves for r in steady)
        wasted = sum(r.wasted for r in steady) / max(1, sum(r.moves for r in steady))
        first = next((r.interval for r in rows if r.ratio >= 0.95), None)
        known = next((r.interval for r in rows if r.unknown == 0), None)
        eng = statistics.median(r.engine_ms for r in rows[1:])
        limit = 1 - pol.keep_free.resolve(spec.fast) / spec.fast
        crossed = sum(1 for a, b in zip(rows, rows[1:])
                      if b.fast_used > limit + 1e-9 and b.fast_used > a.fast_used + 1e-9)
        rec = ",".join("-" if x is None else str(x) for x in s.recoveries) or "-"
        f = seen.get("f")
        fair = "" if f is None or len(machine.procs) < 2 else \
            f"fast pages per process {f[0]}..{f[1]}, hot0-vs-slow4 {f[2]}/{len(machine.procs)} " \
            f"(true access probability per sample: fast hot0 {f[3]:.3f}, slow >=4 {f[4]:.3f})"
        print(f"{name:>8} {s.steady_ratio:7.3f} {100 * moves / pages:7.3f} {100 * wasted:7.1f} "
              f"{statistics.mean(r.eat_ns for r in steady):7.0f} "
              f"{crossed:7d} {str(first):>6} {str(known):>5} "
              f"{eng:7.1f} {rec:>7} {fair}", flush=True)
        del rows, machine
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
