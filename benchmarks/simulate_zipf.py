"""Simulator benchmark, steady state: fast-tier hit ratio against the oracle on a zipf workload.

Runs the real engine (tierd.sim.simulate) on a simulated two-node machine: by default a
1 TiB process (268M pages) with zipf(1.1) page popularity scattered over its address space,
a 256 GiB fast node, pages first-touch placed (the fast node full of the first 255 GiB).
Policy: etc/tierd.yaml's values, with the migration rate raised (--rate, default 8GiB/s) so
that convergence takes a few intervals rather than hundreds (at 128MiB/s x 5s the engine
moves 640 MiB per interval; the placement is the same, it just gets there later).

Prints every interval, then: steady-state hit/oracle (mean of the last --tail intervals;
target >= 0.95), and the engine's own time per interval (hotness, histograms, placement,
selection, bookkeeping of the moves; not the simulated kernel's work).

    .venv/bin/python benchmarks/simulate_zipf.py [--size 1TiB --fast 256GiB --intervals 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tierd.sim.simulate import parse_workload, simulate, summarize  # noqa: E402
from tierd.pages import PAGE_SIZE  # noqa: E402
from tierd.policy import parse_policy  # noqa: E402
from tierd.units import parse_size  # noqa: E402

POLICY = """
interval: 5s
targets:
  - name: app
    comm: "."
fast_tier: {{keep_free: 10%, demote_below: 5%}}
hotness: {{window: {window}, min_hot: 1}}
migration: {{rate: {rate}, batch: 4MiB, retry_after: 4}}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1TiB")
    ap.add_argument("--fast", default="256GiB")
    ap.add_argument("--dist", default="zipf:1.1")
    ap.add_argument("--rate", default="8GiB/s")
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--intervals", type=int, default=20)
    ap.add_argument("--tail", type=int, default=5, help="steady-state intervals at the end")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    policy = parse_policy(POLICY.format(rate=args.rate, window=args.window), "simulate_zipf.py")
    spec = parse_workload(f"size={args.size},fast={args.fast},dist={args.dist},seed={args.seed}")
    pages = parse_size(args.size) // PAGE_SIZE
    print(f"# simulate_zipf: {args.size} {args.dist}, fast {args.fast}, rate {args.rate}, "
          f"window {args.window}, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"{'int':>4} {'hit':>6} {'oracle':>6} {'ratio':>6} {'promoted':>9} {'demoted':>9} "
          f"{'queried':>9} {'engine_ms':>9} {'ns/page':>7}")

    def show(r):
        print(f"{r.interval:>4} {r.hit:6.3f} {r.oracle:6.3f} {r.ratio:6.3f} {r.promoted:>9} "
              f"{r.demoted:>9} {r.queried:>9} {r.engine_ms:9.0f} {r.engine_ms * 1e6 / pages:7.3f}",
              flush=True)

    t0 = time.monotonic()
    rows, _ = simulate(policy, spec, args.intervals, on_row=show)
    s = summarize(rows, tail=args.tail, pages=pages)
    steady = rows[-args.tail:]
    ms = statistics.median(r.engine_ms for r in steady)
    moved = statistics.median(r.promoted + r.demoted for r in steady)
    print(f"steady state (last {args.tail}): hit/oracle {s.steady_ratio:.3f} (target >= 0.95); "
          f"engine median {ms:.0f} ms/interval = {ms * 1e6 / pages:.3f} ns/page with "
          f"{moved:.0f} pages moved per interval; first interval >= 0.95: "
          f"{next((r.interval for r in rows if r.ratio >= 0.95), None)}; wall {time.monotonic() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
