"""tierd's main job, live: hot memory moving to the fast node of an emulated two-tier machine.

Run by ``scripts/demo.sh`` (as root, on the host)::

    python -m workloads.demo [--intervals N] [--tracking auto|idle_bitmap|page_idle]

On the host: builds (first time, with a progress line) or reuses the rig kernel, builds the C
workloads, and boots the QEMU rig (node 0 = 2 CPUs + 512 MiB fast memory, node 1 = 1536 MiB
slow memory-only node).  In the guest (``--guest``): starts two programs whose memory (1 GiB
together) is larger than the fast node and starts on the slow node, each keeping a known
part of its memory hot; starts ``tierd run`` with the shipped etc/tierd.yaml plus a target
selector; prints one line per tierd interval with the ground truth (the programs' own list
of hot pages, placed by move_pages queries, not tierd's report), and ends with a summary.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20
PAGE = 4096
# The demo's programs: (name, size MiB, hot MiB).  1 GiB in all, twice the fast node.
PROGRAMS = (("db", 640, 80), ("cache", 384, 48))
# Objects compiled by a full rig kernel build (counted once from build.log); the progress
# line divides by this, so an estimate, never a promise.
KERNEL_OBJECTS = 1800
KERNEL_MINUTES = 5  # a full build on 2 cores (README)


# -- host side ----------------------------------------------------------------------------------


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(os.environ.get("TIERD_CACHE", Path(base) / "tierd"))


def kernel_with_progress() -> Path:
    """The rig kernel: reused if cached, else built by kernel/build.sh while a progress line
    counts the compiled objects in its log."""
    from tierd import vmrig

    cached = vmrig.kernel_dir(build=False)
    if (cached / "bzImage").is_file():
        print(f"rig kernel: reusing {cached}", flush=True)
        return cached
    print(f"rig kernel: first build (about {KERNEL_MINUTES} minutes on 2 cores; cached for "
          "later runs in ~/.cache/tierd)", flush=True)
    log = cache_dir() / "build.log"
    done = threading.Event()
    start = time.monotonic()

    def progress():
        while not done.wait(5):
            try:
                n = sum(1 for line in log.read_text(errors="replace").splitlines()
                        if line.startswith(("  CC ", "  AS ", "  LD ", "  AR ")))
            except OSError:
                n = 0
            el = time.monotonic() - start
            frac = min(0.99, n / KERNEL_OBJECTS)
            left = (el / frac - el) if frac > 0.05 else KERNEL_MINUTES * 60 - el
            print(f"\r  building: {n}/~{KERNEL_OBJECTS} objects, {el / 60:.1f} min elapsed, "
                  f"about {max(0, left) / 60:.0f} min left   ", end="", flush=True)

    t = threading.Thread(target=progress, daemon=True)
    t.start()
    try:
        kernel = vmrig.kernel_dir(build=True)
    finally:
        done.set()
        t.join()
    print(f"\nrig kernel: built in {(time.monotonic() - start) / 60:.1f} min: {kernel}", flush=True)
    return kernel


def host_main(args) -> int:
    from tierd import vmrig

    import workloads

    kernel = kernel_with_progress()
    workloads.build()
    print("booting the rig (QEMU, software emulation: everything runs 10-20x slower than "
          "on real hardware) ...", flush=True)
    cmd = [sys.executable, "-m", "workloads.demo", "--guest", "--intervals", str(args.intervals),
           "--tracking", args.tracking]
    script = f"cd {REPO} && " + " ".join(cmd)
    try:
        result = vmrig.run(script, kernel=kernel, timeout=args.timeout, on_line=_show)
    except vmrig.VMError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    return result.returncode


def _show(line: str) -> None:
    """Console lines from the guest: the demo's own output, and kernel warnings."""
    if line.startswith(("tierd-vm:", "[")) and "demo" not in line:
        return  # boot chatter
    print(line, flush=True)


# -- guest side ---------------------------------------------------------------------------------


def guest_main(args) -> int:
    import workloads
    from workloads import Hotset, Placement, Scenario, Spec, node_meminfo
    from workloads.harness import Tierd

    bindir = workloads.build()
    out = Path(os.environ.get("TMPDIR", "/tmp")) / "demo"
    out.mkdir(parents=True, exist_ok=True)
    fast_total = node_meminfo(0, "MemTotal")
    print(f"\nThe machine: node 0 = fast memory, {fast_total // MIB} MiB "
          f"({node_meminfo(0) // MIB} MiB free); node 1 = slow memory, "
          f"{node_meminfo(1, 'MemTotal') // MIB} MiB.")
    specs = tuple(Spec(n, size, hot) for n, size, hot in PROGRAMS)
    print("Starting " + " and ".join(f"'{s.name}' ({s.size_mib} MiB, {s.hot_mib} MiB of it hot)"
                                     for s in specs)
          + ": all their memory starts on the slow node ...", flush=True)
    procs = []
    try:
        for i, s in enumerate(specs):
            procs.append(Hotset(bindir, out, size_mib=s.size_mib, hot_mib=s.hot_mib,
                                start_node=1, name=s.name, seed=i + 1).start(timeout=600))
        base = (REPO / "etc" / "tierd.yaml").read_text()
        sc = Scenario("demo", "demo", specs)
        policy = workloads.policy_yaml(base, sc, tracking=None if args.tracking == "auto"
                                       else args.tracking, metrics=True)
        hot_total = sum(len(p.layout().hot) for p in procs)
        first = _truth(procs, Placement)
        print(f"Before tierd: {_pct(first.hot_fast, first.hot)} of the hot pages on the fast "
              f"node.  Starting `tierd run` with etc/tierd.yaml (interval: auto, 1-5 s) and one target "
              f"per program (comm ^db$, ^cache$).\n", flush=True)
        hdr = (f"{'time':>6} {'tierd':>5} | {'hot pages on fast':>22} | {'cold on fast':>12} | "
               f"{'promoted':>9} {'demoted':>8} | {'fast free':>9} | {'tierd CPU':>9}")
        print(hdr)
        print("-" * len(hdr), flush=True)
        rows = []
        with Tierd(policy, out) as tierd:
            t0 = time.monotonic()
            seen = 0
            deadline = t0 + args.intervals * 5 * 6 + 300
            while seen < args.intervals and time.monotonic() < deadline:
                iv = tierd.intervals()
                if len(iv) == seen:
                    if tierd.proc.poll() is not None:
                        print(tierd.text()[-2000:])
                        return 1
                    time.sleep(0.2)
                    continue
                for i in iv[seen:]:
                    p = _truth(procs, Placement)
                    row = (time.monotonic() - t0, i, p, node_meminfo(0), tierd.cpu())
                    rows.append(row)
                    print(f"{row[0]:5.0f}s {'#' + str(i.seq):>5} | "
                          f"{_pct(p.hot_fast, p.hot):>6} ({p.hot_fast * PAGE // MIB:>4} of "
                          f"{p.hot * PAGE // MIB:>4} MiB) | {p.cold_fast * PAGE // MIB:>8} MiB | "
                          f"{i.promoted * PAGE // MIB:>5} MiB {i.demoted * PAGE // MIB:>4} MiB | "
                          f"{row[3] // MIB:>5} MiB | {row[4]:>7.1f} s", flush=True)
                seen = len(iv)
            cpu = tierd.cpu()
        intact = all(p.verify() for p in procs)
        _summary(rows, first, hot_total, fast_total, cpu, intact, tierd)
        return 0 if rows and intact else 1
    finally:
        for p in procs:
            p.stop()


def _truth(procs, Placement):
    total = Placement(0, 0, 0, 0, 0)
    for p in procs:
        total = total + p.placement()
    return total


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.0f}%" if b else "-"


def _summary(rows, first, hot_total, fast_total, cpu, intact, tierd) -> None:
    if not rows:
        print("\ntierd produced no interval:\n" + tierd.text()[-3000:])
        return
    last = rows[-1]
    p = last[2]
    elapsed = last[0]
    at90 = next((r for r in rows if r[2].hot_fast >= 0.9 * r[2].hot), None)
    moved_up = sum(r[1].promoted for r in rows) * PAGE // MIB
    moved_down = sum(r[1].demoted for r in rows) * PAGE // MIB
    min_free = min(r[3] for r in rows) // MIB
    print("\nWhat happened:")
    print(f"- Hot memory on the fast node: {_pct(first.hot_fast, first.hot)} at the start, "
          f"{_pct(p.hot_fast, p.hot)} after {elapsed:.0f} s"
          + (f" (90% reached after {at90[0]:.0f} s, interval #{at90[1].seq})." if at90 else "."))
    print(f"- tierd moved {moved_up} MiB to the fast node and {moved_down} MiB back to the slow "
          f"node; {p.cold_fast * PAGE // MIB} MiB of cold memory is on the fast node "
          f"(the programs' cold memory stays on the slow node, where it costs least).")
    print(f"- The fast node never had less than {min_free} MiB free (the policy keeps 10% of "
          f"{fast_total // MIB} MiB free for everything else on the machine).")
    print(f"- tierd used {cpu:.1f} s of CPU in {elapsed:.0f} s "
          f"({100 * cpu / max(elapsed, 1):.0f}% of one emulated CPU).")
    print(f"- Memory contents after all the moves: "
          f"{'intact (every page checked)' if intact else 'CHANGED - this is a bug'}.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workloads.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--intervals", type=int, default=14, help="tierd intervals to show")
    ap.add_argument("--tracking", default="auto", choices=("auto", "idle_bitmap", "page_idle"))
    ap.add_argument("--timeout", type=float, default=1800, help="seconds for the whole VM run")
    ap.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    return guest_main(args) if args.guest else host_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
