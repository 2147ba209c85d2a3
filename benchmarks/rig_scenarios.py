#!/usr/bin/env python3
"""Issue 12's scenarios in the rig, tierd only, shipped policy plus one target per process.

Run on the host: it boots the rig (tierd.vmrig) and runs itself in the guest with --guest.
A 768 MiB process whose 96 MiB hot set (random scattered 4 KiB pages) starts on the slow
node 1; every --step seconds the guest prints the share of the hot pages and of the cold
pages on the fast node 0 (move_pages queries), THP left, and tierd's CPU seconds so far.

  s2   4 KiB pages; node 0 first filled by a second target holding cold data (down to about
       20 MiB free).  Target: 90% of the hot set on node 0 within 10 s.
  s3   4 KiB pages, node 0 with room; at --switch seconds the hot set moves to other pages
       (SIGUSR1 to the workload).  Target: the new set 90% on node 0 within 10 s.
  s4   THP (MADV_HUGEPAGE), node 0 with room.  Targets: >= 90% of the hot set on node 0,
       <= 10% of the cold pages dragged along.  Baseline in the same boot:
       `s4-nosplit` (huge_pages.split: off, i.e. tierd before issue 12).

    .venv/bin/python benchmarks/rig_scenarios.py [--scenarios s2,s4,s4-nosplit] [--seconds 60]

Also printed: the longest move time of one interval against that interval (the time budget).
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tierd.pages import PAGE_SIZE  # noqa: E402

MIB = 1 << 20

CHILD = r"""
import ctypes, mmap, signal, sys, time
import numpy as np
size, hot, huge, node, seed = (int(x) for x in sys.argv[1:6])
mask = ctypes.c_ulong(1 << node)
libc = ctypes.CDLL(None, use_errno=True)
# set_mempolicy: MPOL_BIND to node 1; MPOL_PREFERRED for node 0 (it may not hold it all)
assert libc.syscall(238, 2 if node else 1, ctypes.byref(mask), 64) == 0
m = mmap.mmap(-1, size + (2 << 20), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
a = np.frombuffer(m, dtype=np.uint8)
start = (-a.ctypes.data) % (2 << 20)
m.madvise(14 if huge else 15, start, size)                 # MADV_(NO)HUGEPAGE
r = a[start: start + size]
r[::4096] = 1
idx = np.sort(np.random.default_rng(seed).choice(size // 4096, hot // 4096, replace=False))
libc.syscall(238, 0, None, 0)                               # back to the default policy
print(r.ctypes.data, flush=True)
sys.stdout.write(" ".join(map(str, idx.tolist())) + "\n"); sys.stdout.flush()
sys.stdin.readline()
off = idx * 4096
def switch(*_):
    global off
    off = np.sort(np.random.default_rng(seed + 1).choice(size // 4096, hot // 4096,
                                                         replace=False)) * 4096
signal.signal(signal.SIGUSR1, switch)
while True:
    if hot:
        r[off] += 1
    time.sleep(0.05)
"""


def spawn(size, hot, huge, node, seed=1):
    import numpy as np

    c = subprocess.Popen([sys.executable, "-c", CHILD, str(size), str(hot), str(int(huge)),
                          str(node), str(seed)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    base = int(c.stdout.readline())
    idx = np.array([int(x) for x in c.stdout.readline().split()], dtype=np.int64)
    return c, base, idx


def thp_kib(pid):
    m = re.search(r"AnonHugePages:\s+(\d+)", Path(f"/proc/{pid}/smaps_rollup").read_text())
    return int(m[1]) if m else 0


def cpu_seconds(pid):
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def scenario(name, seconds, step, switch_at, size_mib=768, hot_mib=96):
    import numpy as np

    from tierd.linux import Kernel

    kernel = Kernel()
    huge = name.startswith("s4")
    size, hot = size_mib * MIB, hot_mib * MIB
    kids = []
    targets = []
    if name == "s2":
        free = kernel.topology().node(0).mem_free
        filler, _, _ = spawn(max(0, free - 20 * MIB), 0, False, 0)
        kids.append(filler)
        targets.append(("filler", filler.pid))
    child, base, idx = spawn(size, hot, huge, 1)
    kids.append(child)
    targets.append(("app", child.pid))
    pages = size // PAGE_SIZE
    addrs = base + np.arange(pages, dtype=np.uint64) * PAGE_SIZE
    hotmask = np.zeros(pages, bool)
    hotmask[idx] = True
    pol = Path(tempfile.gettempdir()) / f"tierd-{name}.yaml"
    text = (REPO / "etc/tierd.yaml").read_text()
    text = re.sub(r"(?ms)^targets:.*?(?=^nodes:)", "targets:\n" + "".join(
        f"  - name: {n}\n    pids: [{p}]\n" for n, p in targets), text)
    text = text.replace('listen: "127.0.0.1:9464"', 'listen: ""')
    if name.endswith("nosplit"):
        text = text.replace("  split: auto", "  split: off")
    pol.write_text(text)
    for c in kids:
        c.stdin.write("go\n")
        c.stdin.flush()
    logpath = Path(tempfile.gettempdir()) / f"tierd-{name}.log"
    log = open(logpath, "w")
    t0 = time.monotonic()
    d = subprocess.Popen([sys.executable, "-m", "tierd", "run", "--config", str(pol)],
                         stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    print(f"\n== {name}: {size_mib} MiB {'THP' if huge else '4 KiB'}, {hot_mib} MiB hot on node 1"
          f"{', node 0 filled by a cold target' if name == 's2' else ''}; load "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'t(s)':>5} {'hot@fast':>9} {'cold@fast':>10} {'THP MiB':>8} {'node0 free':>10} "
          f"{'tierd cpu':>9}")
    first90 = None
    switched = False
    try:
        while True:
            t = time.monotonic() - t0
            if name == "s3" and not switched and t >= switch_at:
                child.send_signal(signal.SIGUSR1)
                idx = np.sort(np.random.default_rng(2).choice(pages, hot // PAGE_SIZE, replace=False))
                hotmask = np.zeros(pages, bool)
                hotmask[idx] = True
                switched, first90, t_switch = True, None, t
                print(f"{t:5.0f} hot set moved (now measured: the new set)")
            where = kernel.move_pages(child.pid, addrs)
            hf, cf = (where[hotmask] == 0).mean(), (where[~hotmask] == 0).mean()
            if first90 is None and hf >= 0.9:
                first90 = t - (t_switch if switched else 0.0)
            free = kernel.topology().node(0).mem_free // MIB
            print(f"{t:5.0f} {hf:9.1%} {cf:10.1%} {thp_kib(child.pid) >> 10:8d} {free:10d} "
                  f"{cpu_seconds(d.pid):9.1f}", flush=True)
            if t >= seconds:
                break
            time.sleep(max(0.0, step - (time.monotonic() - t0 - t)))
    finally:
        cpu = cpu_seconds(d.pid)
        d.send_signal(signal.SIGTERM)
        d.wait(60)
        log.close()
        for c in kids:
            c.kill()
            c.wait()
    over = []
    for m in re.finditer(r"move (\d+)ms of ([\d.]+)s", logpath.read_text()):
        over.append((int(m[1]) / 1e3, float(m[2])))
    worst = max(over, key=lambda x: x[0] - x[1], default=(0, 0))
    print(f"{name}: 90% of the {'new ' if switched else ''}hot set on node 0 "
          f"{'after the switch ' if switched else ''}at "
          f"{'never' if first90 is None else f'{first90:.0f} s'}; tierd CPU {cpu:.1f} s; "
          f"longest interval move {worst[0]:.2f} s against a {worst[1]:g} s budget; "
          f"{len(over)} intervals")
    lines = logpath.read_text().splitlines(True)
    print("".join([x for x in lines if "huge page" in x][:12] + lines[-4:]))


def guest(args):
    for name in args.scenarios.split(","):
        scenario(name, args.seconds, args.step, args.switch, args.size, args.hot)
    return 0


def host(args) -> int:
    from tierd import vmrig

    cmd = [sys.executable, str(Path(__file__).resolve()), "--guest",
           "--scenarios", args.scenarios, "--seconds", str(args.seconds), "--step", str(args.step),
           "--switch", str(args.switch), "--size", str(args.size), "--hot", str(args.hot)]
    kernel = Path(args.kernel) if args.kernel else None
    result = vmrig.run(cmd, kernel=kernel, timeout=3600, echo=args.echo)
    sys.stdout.write(result.output)
    print(f"(VM run {result.seconds:.0f} s, QEMU TCG; host load {os.getloadavg()[0]:.2f})")
    return result.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="s4,s4-nosplit,s2")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--step", type=float, default=5)
    parser.add_argument("--switch", type=float, default=40, help="s3: when the hot set moves")
    parser.add_argument("--size", type=int, default=768, help="MiB of the workload")
    parser.add_argument("--hot", type=int, default=96, help="MiB of it hot")
    parser.add_argument("--echo", action="store_true", help="copy the guest console to stderr")
    parser.add_argument("--kernel", help="directory with bzImage (default: kernel/build.sh's)")
    parser.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    return guest(args) if args.guest else host(args)


if __name__ == "__main__":
    raise SystemExit(main())
