"""Hotness from packed access history, and hotness histograms, with bit-sliced arithmetic.

History is kept as bit-planes: plane k is a uint64 array with one bit per page (64 pages per
word, docs/design.md "Page addressing"), bit set = the page was accessed in the sample k
samples ago.  Hotness is a recency-weighted count of those bits:

    hotness = sum(w[k] * accessed[k] for k in range(window))

with integer weights ``weights(window)`` that decrease with age and sum to exactly 15, so a
page accessed in every sample of the window has hotness 15 and one never accessed has 0 (a
window of 16 samples cannot give every sample a positive integer weight within 15: there
every weight is 1 and the sum saturates at 15).  The default window of 8 gives
(4, 3, 2, 2, 1, 1, 1, 1): a page that turns hot overtakes one that turned cold after three
samples, which bounds how fast placement can follow a phase change.

Nothing here unpacks bits to bytes.  The weighted sum is computed 64 pages at a time by a
network of full adders over whole planes (``AdderNetwork``, compiled once per window), giving
four hotness bit-planes h0..h3.  Histograms are computed by Moebius inversion: for every
subset S of {h0..h3} the popcount of AND(h in S) restricted to a class of pages (a NUMA node,
or all present pages) is one popcount per word; the 16 subset counts of a class determine its
16-bin histogram exactly (``MOEBIUS``).  That is 16 popcounts per class and word, versus 64
byte operations per word for unpacking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tierd.policy import HOTNESS_MAX as HOT_MAX
from tierd.policy import WINDOW_MAX

LEVELS = HOT_MAX + 1  # hotness 0..15
_DECAY = 0.75  # weight of each older sample relative to the next newer one (before rounding)


def weights(window: int) -> tuple[int, ...]:
    """Integer weight of each sample in the window, newest first.

    Every weight is >= 1 (each sample counts), they never increase with age, and for
    window <= 15 they sum to 15.  They approximate a geometric decay (0.75 per sample) by
    handing out the units above 1 to the largest shortfall, newest first on ties.
    """
    if not 1 <= window <= WINDOW_MAX:
        raise ValueError(f"window must be 1..{WINDOW_MAX}, got {window}")
    if window >= LEVELS:
        return (1,) * window
    ideal = [HOT_MAX * _DECAY**k for k in range(window)]
    total = sum(ideal)
    ideal = [HOT_MAX * x / total for x in ideal]
    w = [1] * window
    for _ in range(HOT_MAX - window):
        k = max(range(window), key=lambda i: (ideal[i] - w[i], -i))
        w[k] += 1
    return tuple(sorted(w, reverse=True))


def hotness_reference(history: np.ndarray, window: int) -> np.ndarray:
    """Straightforward per-page hotness: ``history`` is bool/uint8 [window, npages], row k =
    accessed k samples ago.  Used on small sets of pages (and by the tests as the oracle for
    the bit-sliced path)."""
    w = np.asarray(weights(window), dtype=np.int64)
    s = (np.asarray(history, dtype=np.int64) * w[:, None]).sum(axis=0)
    return np.minimum(s, HOT_MAX).astype(np.uint8)


def _moebius() -> np.ndarray:
    """M with hist = M @ subset_counts: subset_counts[S] = #pages whose hotness has all bits of
    S set; hist[T] = #pages whose hotness is exactly T = sum over S >= T of (-1)^|S-T| c[S]."""
    m = np.zeros((LEVELS, LEVELS), dtype=np.int64)
    for t in range(LEVELS):
        for s in range(LEVELS):
            if s & t == t:
                m[t, s] = -1 if bin(s ^ t).count("1") & 1 else 1
    return m


MOEBIUS = _moebius()


def subsets_to_hist(subset_counts: np.ndarray) -> np.ndarray:
    """[..., 16] subset counts -> [..., 16] histogram (exact integer arithmetic)."""
    return np.asarray(subset_counts, dtype=np.int64) @ MOEBIUS.T


# ---------------------------------------------------------------------------------------------
# The adder network


@dataclass(frozen=True)
class _Op:
    kind: str  # "fa" full adder, "ha" half adder, "xor3"/"xor2" sum only, "copy", "or"
    args: tuple[int, ...]  # value ids read
    outs: tuple[int, ...]  # value ids written


class AdderNetwork:
    """Bit-sliced weighted sum of ``window`` planes, compiled once.

    Values are numbered: 0..window-1 are the input planes (by age), the rest intermediate
    results.  ``run(inputs, outputs, scratch)`` evaluates the network on equally long uint64
    arrays, writing hotness planes h0..h3 into ``outputs`` (4 rows).  Scratch rows are reused
    once a value is dead, so a window of 8 needs a handful of rows.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self.weights = weights(window)
        nbits = 5 if sum(self.weights) > HOT_MAX else 4
        self._next = window
        ops: list[_Op] = []
        columns: list[list[int]] = [[] for _ in range(nbits + 4)]
        for age, w in enumerate(self.weights):
            for b in range(w.bit_length()):
                if w >> b & 1:
                    columns[b].append(age)
        results: list[int | None] = [None] * nbits
        for b in range(nbits):
            col = columns[b]
            while len(col) >= 2:
                if len(col) >= 3:
                    a, c, d = col.pop(0), col.pop(0), col.pop(0)
                    s = self._new()
                    if b + 1 < nbits:
                        carry = self._new()
                        ops.append(_Op("fa", (a, c, d), (s, carry)))
                        columns[b + 1].append(carry)
                    else:  # the carry out of the top bit is always 0: compute the sum only
                        ops.append(_Op("xor3", (a, c, d), (s,)))
                else:
                    a, c = col.pop(0), col.pop(0)
                    s = self._new()
                    if b + 1 < nbits:
                        carry = self._new()
                        ops.append(_Op("ha", (a, c), (s, carry)))
                        columns[b + 1].append(carry)
                    else:
                        ops.append(_Op("xor2", (a, c), (s,)))
                col.append(s)
            results[b] = col[0] if col else None
        self.ops = ops
        self.results = results  # value id of sum bit b (None: always zero)
        self.nbits = nbits
        self._plan()

    def _new(self) -> int:
        self._next += 1
        return self._next - 1

    def _plan(self) -> None:
        """Assign scratch rows to intermediate values (linear scan over the op list).

        Results are written straight into their output row when possible; an op never writes
        a row that one of its own inputs occupies (full adder outputs are computed in an
        order that would corrupt an aliased input)."""
        last_use: dict[int, int] = {}
        for i, op in enumerate(self.ops):
            for v in op.args:
                last_use[v] = i
        pinned = {v: ("out", b) for b, v in enumerate(self.results[:4])
                  if v is not None and v >= self.window}
        if self.nbits == 5 and self.results[4] is not None:
            last_use[self.results[4]] = len(self.ops)  # read by the saturation step
        for v in pinned:
            last_use[v] = len(self.ops)
        free: list[int] = []
        nrows = 0
        loc: dict[int, tuple[str, int]] = {v: ("in", v) for v in range(self.window)}
        for i, op in enumerate(self.ops):
            busy = {loc[v] for v in op.args}
            for v in op.outs:
                if v in pinned and pinned[v] not in busy:
                    loc[v] = pinned[v]
                    continue
                row = None
                for r in free:
                    if ("tmp", r) not in busy:
                        row = r
                        break
                if row is None:
                    row = nrows
                    nrows += 1
                else:
                    free.remove(row)
                loc[v] = ("tmp", row)
                busy.add(loc[v])
            for v in set(op.args):
                if v >= self.window and last_use.get(v) == i and loc[v][0] == "tmp":
                    free.append(loc[v][1])
        self.loc = loc
        self.scratch_rows = nrows + 1  # + the full adder's own temporary

    def run(self, inputs, outputs: np.ndarray, scratch: np.ndarray) -> None:
        """inputs: sequence of ``window`` arrays (age 0 = newest); outputs: [4, n] uint64;
        scratch: [scratch_rows, n] uint64."""
        xor, band, bor = np.bitwise_xor, np.bitwise_and, np.bitwise_or
        tmp = scratch[-1]
        # value id -> array, resolved once per call (the ops then only index a list)
        vals = [None] * (max(self.loc) + 1)
        for v, (kind, i) in self.loc.items():
            vals[v] = inputs[i] if kind == "in" else outputs[i] if kind == "out" else scratch[i]
        for op in self.ops:
            if op.kind == "fa":
                a, b, c = vals[op.args[0]], vals[op.args[1]], vals[op.args[2]]
                s, carry = vals[op.outs[0]], vals[op.outs[1]]
                xor(a, b, tmp)
                band(a, b, carry)
                xor(tmp, c, s)
                band(tmp, c, tmp)
                bor(carry, tmp, carry)
            elif op.kind == "ha":
                a, b = vals[op.args[0]], vals[op.args[1]]
                s, carry = vals[op.outs[0]], vals[op.outs[1]]
                band(a, b, carry)
                xor(a, b, s)
            elif op.kind == "xor3":
                xor(vals[op.args[0]], vals[op.args[1]], tmp)
                xor(tmp, vals[op.args[2]], vals[op.outs[0]])
            else:  # xor2
                xor(vals[op.args[0]], vals[op.args[1]], vals[op.outs[0]])
        for b in range(4):
            v = self.results[b]
            if v is None:
                outputs[b].fill(0)
            elif self.loc[v] != ("out", b):
                np.copyto(outputs[b], vals[v])
        if self.nbits == 5 and self.results[4] is not None:
            # window 16: a sum of 16 (bit 4 set, bits 0-3 clear) saturates to 15
            top = vals[self.results[4]]
            for b in range(4):
                bor(outputs[b], top, outputs[b])


# ---------------------------------------------------------------------------------------------
# Per-chunk histogram kernel


class HistogramKernel:
    """Computes hotness planes and subset counts for chunks of up to ``chunk_words`` words.

    One instance per window size; it owns the scratch buffers (reused for every chunk, so the
    working set stays in cache and nothing is allocated per chunk).
    """

    def __init__(self, window: int, chunk_words: int, max_classes: int = 1) -> None:
        self.window = window
        self.chunk_words = chunk_words
        self.net = AdderNetwork(window)
        self.scratch = np.empty((self.net.scratch_rows, chunk_words), dtype=np.uint64)
        self._alloc_classes(max_classes)

    def _alloc_classes(self, n: int) -> None:
        self.max_classes = n
        # rows 0..15: subset products of the hotness planes (row S = AND of h_i, i in S; row 0
        # = the present mask); then 16 rows per class mask computed directly.
        self.prod = np.empty((LEVELS * (1 + n), self.chunk_words), dtype=np.uint64)
        self.pc = np.empty((LEVELS * (1 + n), self.chunk_words), dtype=np.uint8)
        self.mask = np.empty(self.chunk_words, dtype=np.uint64)

    def hot_planes(self, rows, n: int) -> np.ndarray:
        """Hotness bit-planes [4, n] (views into the product buffer, rows 1, 2, 4, 8) from the
        history rows (newest first), each an array of ``n`` words."""
        p = self.prod[:LEVELS, :n]
        self.net.run(rows, _RowsView(p, (1, 2, 4, 8)), self.scratch[:, :n])
        return p

    def subset_counts(self, rows, masks) -> np.ndarray:
        """Subset counts [1 + len(masks), 16] for one chunk, without column 0.

        ``rows``: history planes newest first (n words each); ``masks``: class masks (subsets
        of the present pages), e.g. the pages on one NUMA node.  Row 0 of the result counts
        over all pages, row 1+i within masks[i]; column S (1..15) is the number of those pages
        whose hotness has every bit of S set.  Column 0 (the page count of the class) is left
        0: the caller knows it (a popcount of the class mask), and pages that are not present
        have no history, so they never reach the other columns.
        """
        n = rows[0].shape[0]
        if len(masks) > self.max_classes:
            self._alloc_classes(len(masks))
        return self._counts(self.hot_planes(rows, n), masks, n)

    def level_counts(self, planes: np.ndarray, masks) -> np.ndarray:
        """Histograms [len(masks), 16] of saved hotness planes (``planes``: [4, n], h0..h3)
        within each mask: the pages of each mask at each hotness level.  Used on the small
        slice of words the access-rate estimates are counted on (state.py)."""
        n = planes.shape[1]
        if len(masks) > self.max_classes:
            self._alloc_classes(len(masks))
        p = self.prod[:LEVELS, :n]
        for b in range(4):
            np.copyto(p[1 << b], planes[b])
        counts = self._counts(p, masks, n)[1:]
        counts[:, 0] = [int(np.bitwise_count(m).sum(dtype=np.int64)) for m in masks]
        return counts @ MOEBIUS.T

    def _counts(self, p: np.ndarray, masks, n: int) -> np.ndarray:
        """subset_counts from the hotness planes in rows 1, 2, 4, 8 of ``p``."""
        band = np.bitwise_and
        band(p[1], p[2], p[3])
        band(p[1:4], p[4], p[5:8])
        band(p[1:8], p[8], p[9:16])
        k = 1 + len(masks)
        for i, m in enumerate(masks):
            band(p[1:], m, self.prod[LEVELS * (i + 1) + 1: LEVELS * (i + 2), :n])
        prod = self.prod[: LEVELS * k, :n].reshape(k, LEVELS, n)[:, 1:]
        pc = self.pc[: LEVELS * k, :n].reshape(k, LEVELS, n)[:, 1:]
        np.bitwise_count(prod, out=pc)
        counts = np.zeros((k, LEVELS), dtype=np.int64)
        counts[:, 1:] = np.add.reduce(pc, axis=2, dtype=np.uint32)
        return counts

    def segment_counts(self, rows, present: np.ndarray, masks, starts: np.ndarray) -> np.ndarray:
        """Subset counts per segment of one chunk: [len(starts), 1 + len(masks), 16], row 0
        over all present pages, row 1+i within masks[i], column 0 the pages of the class.
        Segments are word ranges beginning at ``starts`` (ascending, the first 0, none
        empty): the processes packed into one state (tierd/engine/pack.py), counted with the
        same popcounts as ``subset_counts`` and one reduceat instead of one sum."""
        n = rows[0].shape[0]
        if len(masks) > self.max_classes:
            self._alloc_classes(len(masks))
        p = self.hot_planes(rows, n)
        band = np.bitwise_and
        band(p[1], p[2], p[3])
        band(p[1:4], p[4], p[5:8])
        band(p[1:8], p[8], p[9:16])
        np.copyto(p[0], present)
        k = 1 + len(masks)
        for i, m in enumerate(masks):
            band(p, m, self.prod[LEVELS * (i + 1): LEVELS * (i + 2), :n])
        prod = self.prod[: LEVELS * k, :n]
        pc = self.pc[: LEVELS * k, :n]
        np.bitwise_count(prod, out=pc)
        # uint32 holds a chunk's pages (2**20 at most) and sums 6x faster than int64
        counts = np.add.reduceat(pc, starts, axis=1, dtype=np.uint32)  # [k * 16, segments]
        return counts.reshape(k, LEVELS, -1).transpose(2, 0, 1).astype(np.int64)

    def level_masks(self, planes: np.ndarray, levels, base: np.ndarray) -> dict[int, np.ndarray]:
        """{level: base & (hotness == level)} for several levels at once: a tree over the
        hotness bits from the top, pruned to the branches that lead to a wanted level (all 16
        levels cost 30 operations instead of 16 x 8)."""
        want = sorted(set(int(v) for v in levels))
        if len(want) <= 2:
            return {v: self.level_mask(planes, v, base, np.empty_like(base)) for v in want}
        nodes = {0: base}  # prefix of the level's bits (from bit 3 down) -> mask
        for b in (3, 2, 1, 0):
            plane = planes[1 << b]
            nxt = {}
            for prefix, m in nodes.items():
                lo_bits = prefix << 1
                hi_bits = lo_bits | 1
                need_hi = any(v >> b == hi_bits for v in want)
                need_lo = any(v >> b == lo_bits for v in want)
                if need_hi and need_lo:
                    hi = np.bitwise_and(m, plane)
                    nxt[hi_bits] = hi
                    nxt[lo_bits] = np.bitwise_xor(m, hi)
                elif need_hi:
                    nxt[hi_bits] = np.bitwise_and(m, plane)
                elif need_lo:
                    nxt[lo_bits] = np.bitwise_xor(m, np.bitwise_and(m, plane))
            nodes = nxt
        return {v: nodes[v] for v in want}

    def level_mask(self, planes: np.ndarray, level: int, base: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out = base & (hotness == level), from hot_planes' result (rows 1, 2, 4, 8)."""
        np.copyto(out, base)
        for b, r in enumerate((1, 2, 4, 8)):
            if level >> b & 1:
                np.bitwise_and(out, planes[r], out)
            else:
                np.bitwise_and(out, np.bitwise_not(planes[r], self.mask[: out.shape[0]]), out)
        return out


class _RowsView:
    """Index b -> row rows[b] of a 2-D array (views, so the adders write in place)."""

    def __init__(self, arr: np.ndarray, rows: tuple[int, ...]) -> None:
        self.arr = arr
        self.rows = rows

    def __getitem__(self, b: int) -> np.ndarray:
        return self.arr[self.rows[b]]
