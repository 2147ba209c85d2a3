"""Simulator benchmark, phase changes: how fast placement follows a moving hot set.

The workload's rank -> page mapping is replaced every --every intervals (the hot set moves
to other pages, scattered over the address space).  For each change the benchmark reports
the intervals until the fast-tier hit ratio is back at >= 0.95 of the oracle (target: within
3), counting the interval of the change itself (it is served by the old placement).  A page
that turns hot needs 3 samples to overtake one that turned cold by more than the level rule's
margin (placement.FALLBACK_HYSTERESIS, used while the measured access rates mispredict, as
they do right after a change) with the default window (weights 4,3,2,2,1,1,1,1), so 3 is also
the floor for this engine;
the migration rate decides whether the hot part of the new set can be moved in that time
(each promotion into a full fast tier costs a demotion too).

Two workloads by default, both 1 TiB with a 256 GiB fast node:
- zipf:1.1, the whole popularity curve moves;
- hotset:5%:90%, 51 GiB get 90% of the accesses, the rest uniform.

    .venv/bin/python benchmarks/simulate_phase.py [--size 1TiB --fast 256GiB --rate 8GiB/s]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from simulate_zipf import POLICY  # noqa: E402

from tierd.sim.simulate import parse_workload, simulate, summarize  # noqa: E402
from tierd.pages import PAGE_SIZE  # noqa: E402
from tierd.policy import parse_policy  # noqa: E402
from tierd.units import parse_size  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1TiB")
    ap.add_argument("--fast", default="256GiB")
    ap.add_argument("--dists", default="zipf:1.1,hotset:5%:90%")
    ap.add_argument("--rate", default="8GiB/s")
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--every", type=int, default=12, help="intervals between phase changes")
    ap.add_argument("--changes", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    policy = parse_policy(POLICY.format(rate=args.rate, window=args.window), "simulate_phase.py")
    pages = parse_size(args.size) // PAGE_SIZE
    intervals = args.every * (args.changes + 1)
    print(f"# simulate_phase: {args.size}, fast {args.fast}, rate {args.rate}, window "
          f"{args.window}, hot set moves every {args.every} intervals, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    for dist in args.dists.split(","):
        spec = parse_workload(f"size={args.size},fast={args.fast},dist={dist},"
                              f"phase=every:{args.every},seed={args.seed}")
        t0 = time.monotonic()

        def show(r, dist=dist):
            if not args.quiet:
                mark = " <- hot set moved" if r.phase_change else ""
                print(f"  {dist} {r.interval:>3} hit {r.hit:.3f} oracle {r.oracle:.3f} ratio "
                      f"{r.ratio:.3f} promoted {r.promoted} demoted {r.demoted} engine "
                      f"{r.engine_ms:.0f} ms{mark}", flush=True)

        rows, _ = simulate(policy, spec, intervals, on_row=show)
        s = summarize(rows, pages=pages)
        rec = ", ".join("never" if r is None else str(r) for r in s.recoveries)
        print(f"{dist}: steady hit/oracle {s.steady_ratio:.3f} (target >= 0.95); intervals to "
              f"recover after each change: {rec} (target <= 3); engine mean "
              f"{s.engine_ms_mean:.0f} ms/interval ({s.engine_ns_per_page:.3f} ns/page); wall "
              f"{time.monotonic() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
