"""Engine cost per sample on a synthetic address space (default 1 TiB = 268M pages of 4 KiB).

Measures ``PageState.commit``: taking in one sample (present + accessed bitmaps), shifting the
history, computing every page's hotness and the per-node/per-target 16-bin histograms.  That
is the work done on every page every interval; placement and selection touch only the pages
that move (see simulate_*.py for whole intervals).  Reports ns per page (min and median over
the timed samples) and bytes of state per page, measured from the arrays.

Access patterns (the kernel's side is pre-generated, not timed):
- dense: 25% of all pages accessed per sample, uniformly scattered, pages spread randomly
  over two nodes: every 64-page word and every chunk is busy.  The worst case.
- cold75: the same inside 25% of the engine's chunks (4 GiB each); the other 75% of the space is
  not touched during the window (typical of big memory: most of it is cold).

With ``--pack-of-one`` each pattern is timed again on a state with one segment, as the engine
holds a large process (tierd/engine/pack.py: every process is a segment of a pack).

Baseline, measured in the same run on a slice of the same data: the obvious per-page byte
path (unpack the accessed bits to bytes, shift a uint8 history register per page, hotness by
table lookup, histograms by bincount over hotness + 16 * node from an int8 node array).

    .venv/bin/python benchmarks/engine_cost.py [--size 1TiB] [--samples 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tierd.engine.hotness import LEVELS, weights  # noqa: E402
from tierd.engine.state import CHUNK_WORDS, Extents, PageState  # noqa: E402
from tierd.pages import PAGE_SIZE, PAGES_PER_WORD  # noqa: E402
from tierd.units import format_size, parse_size  # noqa: E402

ALL = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def random_words(rng, n, density_quarters=1) -> np.ndarray:
    """Random bits with density 1/4 (AND of two uniform words)."""
    a = rng.integers(0, 1 << 64, n, dtype=np.uint64, endpoint=False)
    b = rng.integers(0, 1 << 64, n, dtype=np.uint64, endpoint=False)
    return a & b


def make_patterns(rng, words, chunk, kind, count):
    pats = []
    if kind == "dense":
        for _ in range(count):
            pats.append(random_words(rng, words))
        return pats
    nchunks = -(-words // chunk)
    active = np.zeros(nchunks, bool)
    active[rng.choice(nchunks, max(1, nchunks // 4), replace=False)] = True
    mask = np.repeat(active, chunk)[:words]
    for _ in range(count):
        p = random_words(rng, words)
        p[~mask] = 0
        pats.append(p)
    return pats


def bench_state(words, window, nodes, chunk, pattern, samples, seed, segmented=False):
    rng = np.random.default_rng(seed)
    st = PageState(Extents([0], [words]), window, tuple(range(nodes)), chunk_words=chunk)
    if segmented:  # how the engine holds a large process: a pack of one (tierd/engine/pack.py)
        st.set_segments([0])
    pats = make_patterns(rng, words, chunk, pattern, 4)
    on0 = random_words(rng, words)  # 25% of the pages on node 0 (fast), the rest on node 1
    p, a = st.sample_buffers()
    p.fill(ALL)
    a.fill(0)
    st.commit()
    st.nodes[0] = on0
    st.nodes[1] = ~on0
    times = []
    for i in range(window + samples):
        p, a = st.sample_buffers()
        p.fill(ALL)
        np.copyto(a, pats[i % len(pats)])
        t0 = time.perf_counter()
        st.commit()
        dt = time.perf_counter() - t0
        if i >= window:  # history full: steady state
            times.append(dt)
    h = st.histograms()
    assert h.sum() == st.pages
    return st, times


def bench_naive(pages, window, nodes, pattern_words, samples, seed):
    """The per-page byte path on ``pages`` pages (chunked: no 8-byte temporaries)."""
    rng = np.random.default_rng(seed)
    hist = np.zeros(pages, np.uint8)  # bit k = accessed k samples ago (window <= 8)
    node = rng.integers(0, nodes, pages).astype(np.int8)
    w = np.array(weights(window), dtype=np.int64)
    lut = np.array([min(LEVELS - 1, int(sum(w[k] for k in range(window) if v >> k & 1)))
                    for v in range(256)], dtype=np.uint8)
    keep = np.uint8((1 << window) - 1)
    times = []
    step = 1 << 22
    for i in range(window + samples):
        acc_words = pattern_words[i % len(pattern_words)]
        t0 = time.perf_counter()
        counts = np.zeros((nodes, LEVELS), np.int64)
        for lo in range(0, pages, step):
            hi = min(pages, lo + step)
            words = acc_words[lo // PAGES_PER_WORD: hi // PAGES_PER_WORD]
            bits = np.unpackbits(words.view(np.uint8), bitorder="little")
            h = hist[lo:hi]
            np.left_shift(h, 1, out=h)
            np.bitwise_or(h, bits, out=h)
            np.bitwise_and(h, keep, out=h)
            hot = lut[h]
            key = hot.astype(np.int16) + np.int16(LEVELS) * node[lo:hi]
            counts += np.bincount(key, minlength=nodes * LEVELS).reshape(nodes, LEVELS)
        dt = time.perf_counter() - t0
        if i >= window:
            times.append(dt)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1TiB", help="address space (default 1TiB)")
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--samples", type=int, default=5, help="timed samples per pattern")
    ap.add_argument("--chunk-words", type=int, default=CHUNK_WORDS)
    ap.add_argument("--patterns", default="dense,cold75")
    ap.add_argument("--baseline-fraction", type=float, default=1 / 16,
                    help="share of the address space the naive baseline runs on")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pack-of-one", action="store_true",
                    help="also time the state as the engine holds a large process (one segment "
                    "of a pack, tierd/engine/pack.py), right after the plain one")
    args = ap.parse_args()

    size = parse_size(args.size)
    words = size // PAGE_SIZE // PAGES_PER_WORD
    pages = words * PAGES_PER_WORD
    print(f"# engine_cost: {format_size(size)} = {pages} pages ({words} words), window "
          f"{args.window}, {args.nodes} nodes, chunk {args.chunk_words} words")
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {cpu_model()}, {os.cpu_count()} CPUs, "
          f"numpy {np.__version__}, python {platform.python_version()}")
    results = {}
    for pattern in args.patterns.split(","):
        for segmented in (False, True) if args.pack_of_one else (False,):
            st, times = bench_state(words, args.window, args.nodes, args.chunk_words, pattern,
                                    args.samples, args.seed, segmented)
            ns = [t / pages * 1e9 for t in times]
            if not segmented:
                results[pattern] = ns
            name = "pack of one" if segmented else "bitsliced"
            print(f"{name} {pattern:7s}: min {min(ns):.3f} ns/page, median "
                  f"{statistics.median(ns):.3f} ns/page ({min(times) * 1e3:.0f} ms/sample); state "
                  f"{st.nbytes / 2**20:.0f} MiB = {st.bytes_per_page:.3f} bytes/page")
            del st
    bpages = int(pages * args.baseline_fraction) // PAGES_PER_WORD * PAGES_PER_WORD
    rng = np.random.default_rng(args.seed)
    pats = [random_words(rng, bpages // PAGES_PER_WORD) for _ in range(4)]
    times = bench_naive(bpages, min(args.window, 8), args.nodes, pats, args.samples, args.seed)
    naive = [t / bpages * 1e9 for t in times]
    print(f"naive     dense  : min {min(naive):.3f} ns/page, median {statistics.median(naive):.3f} "
          f"ns/page (on {format_size(bpages * PAGE_SIZE)}); state 2 bytes/page (uint8 history + int8 node)")
    d = results.get("dense")
    if d:
        print(f"ratio naive/bitsliced (dense, medians): {statistics.median(naive) / statistics.median(d):.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
