"""Issue 16 on the simulator: the real-host conditions, one line each, on the shipped policy.

Cases: a fast node kept full of page cache (cache=...), hot sets bigger than the fast tier
(zipf 0.7 and 1.1, 16x-128x, and huge pages), pages the kernel moves behind tierd's back
(NUMA balancing), hot sets moving every 1, 2, 3, 20 intervals (effective access time against
not moving at the same fast capacity: the engine holding keep_free without promoting), and
the miss-ratio curve against the true one.

Before/after in one run: run this file from two trees (a checkout of the old engine with
this tree's tierd/sim copied in, and this tree); it loads the engine of the tree it lives in.
The "still" baseline needs the new engine (GainModel.promotion_budget); on the old one that
column repeats tierd's own run and is printed as "-".

    .venv/bin/python benchmarks/simulate_real_hosts.py [--only cache,zipf07-16x,...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from tierd.engine import gain as gain_mod  # noqa: E402
from tierd.pages import PAGE_SIZE  # noqa: E402
from tierd.policy import load_policy  # noqa: E402
from tierd.sim import simulate as sim  # noqa: E402

# name: (spec, intervals, kind)
CASES = {
    "cache": ("size=16GiB,fast=4GiB,dist=hotset:10%,init=slow,cache=4GiB", 12, "hit"),
    "zipf07-16x-12": ("size=16GiB,fast=1GiB,dist=zipf:0.7,seed=7", 12, "hit"),
    "zipf07-16x": ("size=16GiB,fast=1GiB,dist=zipf:0.7,seed=7", 30, "hit"),
    "zipf11-16x": ("size=16GiB,fast=1GiB,dist=zipf:1.1,seed=7", 30, "hit"),
    "zipf07-8x-64g": ("size=64GiB,fast=8GiB,dist=zipf:0.7,seed=7", 40, "hit"),
    "zipf11-8x-64g": ("size=64GiB,fast=8GiB,dist=zipf:1.1,seed=7", 30, "hit"),
    "zipf11-64x": ("size=2GiB,fast=32MiB,dist=zipf:1.1,seed=7", 40, "hit"),
    "zipf11-128x-tib": ("size=1TiB,fast=8GiB,dist=zipf:1.1,seed=7", 16, "hit"),
    "zipf07-64x": ("size=2GiB,fast=32MiB,dist=zipf:0.7,seed=7", 40, "hit"),
    "thp-zipf11-4x": ("size=16GiB,fast=4GiB,dist=zipf:1.1,thp=1,seed=7", 30, "hit"),
    "thp-zipf07-4x": ("size=16GiB,fast=4GiB,dist=zipf:0.7,thp=1,seed=7", 30, "hit"),
    "thp-zipf11-16x": ("size=16GiB,fast=1GiB,dist=zipf:1.1,thp=1,seed=7", 30, "hit"),
    "numa-balancing": ("size=1GiB,fast=256MiB,dist=zipf:1.1,numa_balancing=on", 16, "nodes"),
    "thrash-1": ("size=16GiB,fast=4GiB,dist=hotset:5%,phase=every:1", 30, "eat"),
    "thrash-2": ("size=16GiB,fast=4GiB,dist=hotset:5%,phase=every:2", 30, "eat"),
    "thrash-3": ("size=16GiB,fast=4GiB,dist=hotset:5%,phase=every:3", 30, "eat"),
    "thrash-20": ("size=16GiB,fast=4GiB,dist=hotset:5%,phase=every:20", 40, "eat"),
    "mrc-uniform": ("size=1GiB,fast=256MiB,dist=uniform", 16, "need"),
    "mrc-hotset": ("size=1GiB,fast=256MiB,dist=hotset:10%,accesses=0.2", 16, "need"),
    "mrc-zipf07": ("size=1GiB,fast=256MiB,dist=zipf:0.7,accesses=0.1", 16, "need"),
    "mrc-zipf11": ("size=16GiB,fast=4GiB,dist=zipf:1.1", 16, "need"),
}


def nodes_wrong(engine, machine, out: dict) -> None:
    proc = next(iter(machine.procs.values()))
    st = next(iter(engine.units.values())).state
    known = st.node_of(st.extents.flat_of(proc.base_vpn + np.arange(proc.npages)))
    ok = (known >= 0) & (proc.node >= 0)
    out["wrong"] = int((known[ok] != proc.node[ok]).sum())


def run(name: str, policy, tail: int) -> str:
    spec_text, intervals, kind = CASES[name]
    spec = sim.parse_workload(spec_text + f",intervals={intervals}")
    t0 = time.monotonic()
    extra: dict = {}
    rows, machine = sim.simulate(policy, spec, on_end=(lambda e, m: nodes_wrong(e, m, extra))
                                 if kind == "nodes" else None)
    s = sim.summarize(rows, tail=tail)
    steady = rows[-tail:]
    moves = statistics.mean(r.moves for r in steady) / (spec.processes[0].size // PAGE_SIZE) * 100
    eat = statistics.mean(r.eat_ns for r in rows[5:])
    cols = [name, spec_text, f"{s.steady_ratio:.3f}", f"{moves:.3f}", f"{eat:.0f}"]
    if kind == "eat":
        if hasattr(gain_mod.GainModel, "promotion_budget"):
            still = statistics.mean(r.eat_ns for r in sim.simulate(policy, spec, still=True)[0][5:])
            cols.append(f"still {still:.0f} ({eat / still:.4f})")
        else:
            cols.append("still -")
    elif kind == "nodes":
        cols.append(f"wrong nodes at the end {extra['wrong']}")
    elif kind == "need":
        proc = next(iter(machine.procs.values()))
        true = [proc.dist.need(f) for f in (0.9, 0.95, 0.99)]
        est = rows[-1].need
        cols.append("need est/true " + (" ".join(f"{e / t:.3f}" for e, t in zip(est, true))
                                        if est else "-"))
    elif name == "cache":
        cols.append(f"page cache left {machine.cache[0] * PAGE_SIZE >> 20} MiB")
    cols.append(f"{time.monotonic() - t0:.0f}s")
    return " | ".join(cols)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=os.path.join(ROOT, "etc/tierd.yaml"))
    ap.add_argument("--only", default="")
    ap.add_argument("--tail", type=int, default=5)
    args = ap.parse_args()
    policy = load_policy(args.config)
    names = [n for n in args.only.split(",") if n] or list(CASES)
    print(f"# simulate_real_hosts: tree {os.path.abspath(ROOT)}, {time.strftime('%H:%M:%S', time.gmtime())} "
          f"UTC, load {os.getloadavg()[0]:.1f}")
    print("# case | spec | steady hit/oracle | steady moves %/interval | EAT ns (intervals 5..) | extra | wall")
    for n in names:
        print(run(n, policy, args.tail), flush=True)


if __name__ == "__main__":
    import logging

    logging.disable(logging.WARNING)  # the WAITING warnings of every run
    main()
