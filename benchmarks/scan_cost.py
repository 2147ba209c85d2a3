#!/usr/bin/env python3
"""Cost of one access sample: /proc/PID/idle_bitmap against the stock pagemap + page_idle path.

Run on the host: it boots the rig kernel in QEMU (tierd.vmrig) and runs itself in the guest
with --guest.  In the guest it maps SIZE of anonymous memory, once with 4 KiB pages
(MADV_NOHUGEPAGE) and once with THP (MADV_HUGEPAGE), touches every page, and times tierd's
two readers sampling the whole region, touching every page again between samples so both
paths have every Accessed bit to clear.  Each figure is the median of --reps samples after
one warm-up sample; the ratio is stock / idle_bitmap within the same boot.

    .venv/bin/python benchmarks/scan_cost.py [--size 1GiB] [--reps 5] [--untouched]
                                             [--kernel DIR]

--untouched also times samples with no page accessed since the previous one (every present
page found idle: the case where idle_bitmap v2's PG_idle look per page is not hidden behind
clearing Accessed bits).  --kernel boots another build (e.g. the v1 series) for comparisons
across series; ratios within one boot stay the figure of merit.

Emulation (TCG) inflates absolute times several-fold; the ratio is the figure of merit.
"""

import argparse
import fcntl
import mmap
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tierd.pages import PAGE_SIZE, PAGES_PER_WORD  # noqa: E402

MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
HUGE = 2 << 20


def parse_size(text: str) -> int:
    from tierd.units import parse_size as parse
    return parse(text)


def region(size: int, huge: bool):
    """An anonymous mapping of ``size`` bytes, 2 MiB aligned, every page touched."""
    import numpy as np

    mm = mmap.mmap(-1, size + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf = np.frombuffer(mm, dtype=np.uint8)
    base = buf.ctypes.data
    skip = (-base) % HUGE
    mm.madvise(MADV_HUGEPAGE if huge else MADV_NOHUGEPAGE, skip, size)
    view = buf[skip:skip + size]
    view[::PAGE_SIZE] = 1
    return mm, view, base + skip


def regions(size: int):
    """(kind, view, start) of a 4 KiB-page region, then of a THP one, each freed after (the
    caller's loop variable still holds the view, so the memory is dropped, not unmapped)."""
    for huge in (False, True):
        mm, view, start = region(size, huge)
        if huge and anon_huge_kib() < (size >> 10) // 2:
            print(f"warning: only {anon_huge_kib()} KiB of THP backs the region")
        yield ("THP" if huge else "4KiB"), view, start
        mm.madvise(mmap.MADV_DONTNEED)


def anon_huge_kib() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


class SyscallClock:
    """Time spent inside os.pread/os.pwrite/fcntl.ioctl, i.e. in the kernel's handlers of the
    files the readers use (v3's idle_bitmap samples with the IDLE_BITMAP_SCAN ioctl), separated
    from the readers' user-space (numpy) work."""

    def __init__(self):
        self.seconds = 0.0
        self._saved = {}

    def _wrap(self, fn):
        def timed(*args):
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.seconds += time.perf_counter() - t0
        return timed

    def __enter__(self):
        for mod, name in ((os, "pread"), (os, "pwrite"), (fcntl, "ioctl")):
            self._saved[mod, name] = getattr(mod, name)
            setattr(mod, name, self._wrap(self._saved[mod, name]))
        return self

    def __exit__(self, *exc):
        for (mod, name), fn in self._saved.items():
            setattr(mod, name, fn)


def time_reader(reader, pid, start, size, view, reps, touch=True):
    """Median (total seconds, seconds in syscalls) per sample, and pages reported accessed.
    ``touch``: access every page before each sample (else none)."""
    import numpy as np

    word_start = (start // PAGE_SIZE) // PAGES_PER_WORD
    nwords = size // PAGE_SIZE // PAGES_PER_WORD
    reader.sample(pid, word_start, nwords)          # warm-up; page_idle: marks idle
    totals, kernel = [], []
    accessed_pages = 0
    for _ in range(reps):
        if touch:
            view[::PAGE_SIZE] += 1                        # every page accessed again
        with SyscallClock() as clock:
            t0 = time.perf_counter()
            present, accessed = reader.sample(pid, word_start, nwords)
            totals.append(time.perf_counter() - t0)
        kernel.append(clock.seconds)
        accessed_pages = int(np.bitwise_count(accessed).sum())
    return statistics.median(totals), statistics.median(kernel), accessed_pages


def guest(args) -> int:
    from tierd.linux import Kernel

    kernel = Kernel()
    size = parse_size(args.size)
    pages = size // PAGE_SIZE
    pid = os.getpid()
    print(f"scan_cost: {size >> 20} MiB = {pages} pages of 4 KiB, median of {args.reps}")
    print("total = tierd's reader end to end; syscalls = time inside its pread/pwrite/ioctl calls")
    print(f"{'pages':>6} {'reader':>12} {'total s':>9} {'ns/page':>9} {'syscall s':>9} "
          f"{'ns/page':>9} {'accessed':>9}")
    rows = {}
    for kind, view, start in regions(size):
        for touch in (True, False) if args.untouched else (True,):
            for name in ("idle_bitmap", "page_idle"):
                total, sys_s, accessed = time_reader(kernel.reader(name), pid, start, size,
                                                     view, args.reps, touch)
                label = kind if touch else kind + ",idle"
                rows[label, name] = total, sys_s
                print(f"{label:>6} {name:>12} {total:9.4f} {total / pages * 1e9:9.1f} "
                      f"{sys_s:9.4f} {sys_s / pages * 1e9:9.1f} {accessed:9d}")
    for kind in sorted({k for k, _ in rows}, key=lambda k: (k.startswith("THP"), k)):
        (st, ss), (it, is_) = rows[kind, "page_idle"], rows[kind, "idle_bitmap"]
        print(f"ratio {kind}: page_idle / idle_bitmap = {st / it:.1f}x end to end, "
              f"{ss / is_:.1f}x in syscalls")
    return 0


def host(args, script: str = __file__, extra: tuple = ()) -> int:
    """Boot the rig and run ``script --guest`` there with the common options and ``extra``."""
    from tierd import vmrig

    cmd = [sys.executable, str(Path(script).resolve()), "--guest",
           "--size", args.size, "--reps", str(args.reps), *extra]
    result = vmrig.run(cmd, kernel=Path(args.kernel) if args.kernel else None,
                       machine=vmrig.Machine(fast=args.fast, slow=args.slow), timeout=3600)
    sys.stdout.write(result.output)
    print(f"(VM run {result.seconds:.0f} s, QEMU TCG, guest node 0 {args.fast} + "
          f"node 1 {args.slow})")
    return result.returncode


def parser_for(doc: str, size: str, reps: int) -> argparse.ArgumentParser:
    """The options every rig benchmark of the readers takes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--size", default=size)
    parser.add_argument("--reps", type=int, default=reps)
    parser.add_argument("--fast", default="1G")
    parser.add_argument("--slow", default="3G")
    parser.add_argument("--kernel", help="kernel directory (default: kernel/build.sh's)")
    parser.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    return parser


def main() -> int:
    parser = parser_for(__doc__, "1GiB", 5)
    parser.add_argument("--untouched", action="store_true",
                        help="also time samples with no page accessed in between")
    args = parser.parse_args()
    return guest(args) if args.guest else host(args, extra=("--untouched",) * args.untouched)


if __name__ == "__main__":
    raise SystemExit(main())
