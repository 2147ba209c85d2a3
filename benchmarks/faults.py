#!/usr/bin/env python3
"""Faults in the rig (issue 20): tierd SIGKILLed N times at random points of its migrations,
targets killed while sampled and moved, 100 SIGHUPs in one second, the metrics port taken at
start, 300 clients that never finish a request.

Run on the host (boots the rig once; only one VM at a time on a shared machine):

    flock /tmp/tierd-vm.lock .venv/bin/python benchmarks/faults.py [--kills 100] [-k EXPR]

It runs tests/vm/guest/test_guest_faults.py in the guest with TIERD_FAULT_KILLS=N (the VM
test tier runs the same file with 10 kills) and prints what each fault did (the lines the
tests record), then the pytest result.  Recorded in benchmarks/README.md, RELIABILITY.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tierd import vmrig  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=100, help="SIGKILLs of tierd (default 100)")
    ap.add_argument("-k", default="", help="pytest -k expression (default: every fault)")
    args = ap.parse_args()
    import workloads

    workloads.build()
    out = Path(tempfile.mkdtemp(prefix="tierd-faults-"))
    sel = f"-k '{args.k}'" if args.k else ""
    script = (f"cd {REPO} && {sys.executable} -m pytest -p no:cacheprovider -q -rA {sel} "
              "tests/vm/guest/test_guest_faults.py")
    t0 = time.monotonic()
    result = vmrig.run(script, env={"TIERD_FAULT_KILLS": str(args.kills)}, out=out,
                       timeout=60 * 60)
    faults = out / "faults.txt"
    print(faults.read_text() if faults.exists() else "(no fault recorded)")
    print(result.output[-3000:])
    print(f"guest exit {result.returncode}, {time.monotonic() - t0:.0f}s with the boot")
    return 0 if result.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
