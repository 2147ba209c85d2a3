"""Cost of folding a shared object's mappers' samples into the object (issue 17 review).

A database's buffer pool is one MAP_SHARED object that every backend maps; each interval the
engine reads every mapper's present and accessed bits of it and ORs them into the object's
words (tierd/engine/daemon.py ``_read_shared``).  This times that carry per interval, for
MAPPERS mappers of a POOL-sized object, half its pages accessed, each mapping at a
different alignment in the object:

- baseline: the page-by-page carry the engine used before (unpack every bit to a page index,
  look its page offset up, scatter it back into words): the reference in
  tests/unit/test_engine_shared.py;
- now: ``tierd.engine.state.carry_words`` (whole words, shifted when not 64-page aligned).

    .venv/bin/python benchmarks/shared_carry.py [--pool 1GiB] [--mappers 100]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "unit"))
from test_engine_shared import _carry_by_pages  # noqa: E402

from tierd.engine.state import Extents, carry_words  # noqa: E402
from tierd.units import parse_size  # noqa: E402


def interval(carry, planes, mappers, ext) -> float:
    t = time.perf_counter()
    for plane, (ws, lo, hi) in zip(planes, mappers):
        for _ in range(2):  # present and accessed
            carry(plane, ws, lo, hi, 0, ext)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", default="1GiB")
    ap.add_argument("--mappers", type=int, default=100)
    args = ap.parse_args()
    pages = parse_size(args.pool) // 4096
    rng = np.random.default_rng(7)
    ext = Extents([0], [pages // 64])
    mappers, planes = [], []
    for i in range(args.mappers):
        lo = (1 << 28) + i * (pages + 4096) + i % 64  # misaligned by i % 64 pages
        hi = lo + pages
        ws, we = lo // 64, -(-hi // 64)
        mappers.append((ws, lo, hi))
        planes.append(rng.integers(0, 2**64 - 1, we - ws, dtype=np.uint64, endpoint=True))
    print(f"{args.pool} pool, {args.mappers} mappers; load {os.getloadavg()[0]:.1f}")
    base = min(interval(_carry_by_pages, planes, mappers, ext) for _ in range(2))
    now = min(interval(lambda *a: carry_words(*a), planes, mappers, ext) for _ in range(3))
    print(f"  page by page (before): {base * 1e3:8.1f} ms per interval")
    print(f"  whole words (now):     {now * 1e3:8.1f} ms per interval  ({base / now:.0f}x less)")


if __name__ == "__main__":
    main()
