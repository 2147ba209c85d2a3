"""Page state of a pack of processes: access history, known NUMA node, presence, retry backoff.

Everything is a numpy array indexed by page of the process's *tracked address space*: its
extents (VMAs rounded out to 64-page words and merged, docs/design.md "Page addressing")
laid end to end, so flat page p lives in word p // 64, bit p % 64 of every plane.  Per page:

==================  ========================================  ===========================
history             ``window`` bit-planes, a ring (newest at     window / 8 bytes (1 at 8)
                    ``head``); bit = accessed in that sample
node                one bit-plane per NUMA node: page is on it   nodes / 8 bytes
                    (no bit: not known yet)
present             two bit-planes (this sample, the last)       2 / 8 bytes
backoff             one bit-plane: a move failed, wait           1 / 8 bytes
top                 TOP_BITS bit-planes: samples in a row at     4 / 8 bytes (window < 16)
                    the top hotness level (saturating)
==================  ========================================  ===========================

The top counter ranks the pages of the top level, which a hot set bigger than the fast tier
overflows (every page accessed in each sample of the window is at hotness 15): a page at
level 15 for c samples in a row has counter c (1..15), any other page 0.  It is the longer
history placement needs there (tierd/engine/placement.py, "overflow"); with a window of 16
level 15 is not "accessed in every sample", so there is no counter.

With the default window of 8 and two nodes that is 1.625 bytes per page (window 16 and four
nodes: 2.875), plus per-chunk counters and a sparse retry table (vpn, failures, retry-at) for
pages whose moves failed.  One bit-plane per node rather than an int8 node array because the
histograms are computed 64 pages at a time: "pages on node n" must be a mask, and deriving it
from bytes each sample would cost a byte operation per page.

Invariants the histogram arithmetic relies on (hotness.py): history bits and node bits are
zero for pages that are not present.  A page that disappears loses its history and node; one
that (re)appears starts fresh, and the accessed bit of its first sample is ignored (it says
"accessed at some point", not "since the last sample": the page_idle reader reports every
page as accessed on its first sample).

Hot path work is done per chunk of ``chunk_words`` words: large enough that numpy's per-call
overhead is small, small enough that the temporaries stay in the caches.  A chunk without
any access in the whole window takes a shortcut (all its pages are at hotness
0).  Per chunk, the state keeps the histogram of each class (node, or unknown) so that
selecting "the N hottest pages on the slow node" visits only chunks that have some.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from tierd.engine.hotness import LEVELS, MOEBIUS, HistogramKernel, hotness_reference
from tierd.pages import PAGES_PER_WORD

CHUNK_WORDS = 16384  # 1Mi pages = 4 GiB of address space per chunk (fewer numpy calls)
BACKOFF_MAX_DOUBLINGS = 8  # retry_after * 2**8 intervals at most
# access-rate estimates (``est``) are counted on a rotating slice of each chunk: 1/EST_DIV of
# the words, but at least EST_MIN_WORDS per process (all of a small one), enough pages per
# (node, level) cell for a standard error of a few thousandths
EST_DIV = 128
EST_MIN_WORDS = 2048
# node learning from the reader (learn_nodes): runs of words with unknown pages closer than
# this are read together; a whole-process source is used while 1/8 of the pages are unknown
NODES_GAP_WORDS = 64
NODES_PROCESS_DIV = 8

TOP_BITS = 4  # the top counter saturates at 15
TOP_LEVELS = 1 << TOP_BITS

_ONE = np.uint64(1)
_MOEBIUS_T = np.ascontiguousarray(MOEBIUS.T)


class Extents:
    """A tracked address space: word ranges (word w = vpn 64w .. 64w+63), ascending, disjoint.

    ``offset[i]`` is the flat word index where extent i starts; flat page p maps to vpn
    ``64 * word_start[i] + (p - 64 * offset[i])`` for the extent i containing it.
    ``holes`` (lo, hi): vpn ranges inside the words that belong to untracked mappings, which a
    page-granular reader must leave alone (from_vmas(page_granular=True)).
    """

    __slots__ = ("word_start", "nwords", "offset", "edge_pages", "holes")

    def __init__(self, word_start, nwords, edge_pages: int = 0, holes=None) -> None:
        # pages of tracked VMAs left out because their word also holds pages of an untracked
        # mapping (from_vmas); not part of equality: it describes what is *not* tracked
        self.edge_pages = int(edge_pages)
        empty = np.zeros(0, np.int64)
        self.holes = ((empty, empty) if holes is None
                      else tuple(np.asarray(h, np.int64) for h in holes))
        self.word_start = np.asarray(word_start, dtype=np.int64).ravel()
        self.nwords = np.asarray(nwords, dtype=np.int64).ravel()
        if self.word_start.shape != self.nwords.shape:
            raise ValueError("word_start and nwords differ in length")
        if self.word_start.size and (
            np.any(self.nwords <= 0)
            or np.any(self.word_start[1:] < self.word_start[:-1] + self.nwords[:-1])
        ):
            raise ValueError("extents must be ascending, disjoint and non-empty")
        self.offset = np.zeros(self.word_start.size + 1, dtype=np.int64)
        np.cumsum(self.nwords, out=self.offset[1:])

    @classmethod
    def from_vmas(cls, vmas: Iterable, page_granular: bool = False, shared: bool = True) -> Extents:
        """Extents of the mappings tierd can track: not the kernel's special mappings
        ([vdso], [vsyscall]...) and not PROT_NONE reservations (guard pages, reserved heaps:
        never present, but possibly huge).

        For a reader that clears whole words (idle_bitmap v2, page_idle) a word shared with
        such a mapping is left out (tracked_extents(): clearing it would clear the
        neighbour's Accessed bits too); ``edge_pages`` counts the tracked pages lost that way.
        A ``page_granular`` reader (idle_bitmap v3) keeps those words and is told the
        neighbour's pages in them (``holes``): nothing is lost, ``edge_pages`` is 0.
        Without ``shared``, shared mappings (``is_shared``) are left out like those: the
        engine tracks them once, as shared objects (tierd/engine/pack.py)."""
        from tierd.linux.tracking import extents, tracked_extents, untracked_holes

        vmas = [v for v in vmas if v.end > v.start]
        tracked = [not _special(v) and v.perms[:3] != "---" and (shared or not is_shared(v))
                   for v in vmas]
        keep = [v for v, t in zip(vmas, tracked) if t]
        skip = [v for v, t in zip(vmas, tracked) if not t]
        starts, ends = [v.start for v in keep], [v.end for v in keep]
        sstarts, sends = [v.start for v in skip], [v.end for v in skip]
        if page_granular:
            ws, nw = extents(starts, ends)
            return cls(ws, nw, 0, untracked_holes(ws, nw, sstarts, sends))
        return cls(*tracked_extents(starts, ends, sstarts, sends))

    def holes_of(self, i: int) -> list[tuple[int, int]]:
        """The ``holes`` inside extent i, as (lo, hi) vpn pairs (usually none)."""
        lo, hi = self.holes
        if not lo.size:
            return []
        a = int(self.word_start[i]) * PAGES_PER_WORD
        b = a + int(self.nwords[i]) * PAGES_PER_WORD
        j, k = np.searchsorted(hi, a, side="right"), np.searchsorted(lo, b)
        return list(zip(lo[j:k].tolist(), hi[j:k].tolist()))

    @property
    def words(self) -> int:
        return int(self.offset[-1])

    @property
    def pages(self) -> int:
        return self.words * PAGES_PER_WORD

    def __len__(self) -> int:
        return int(self.word_start.size)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Extents)
            and np.array_equal(self.word_start, other.word_start)
            and np.array_equal(self.nwords, other.nwords)
        )

    def __repr__(self) -> str:
        spans = ", ".join(f"{int(s) * 64:#x}+{int(n) * 64}p" for s, n in zip(self.word_start, self.nwords))
        return f"Extents({spans})"

    def vpn_of(self, flat_pages: np.ndarray) -> np.ndarray:
        """Flat page indices -> virtual page numbers (uint64)."""
        p = np.asarray(flat_pages, dtype=np.int64)
        if self.word_start.size == 1:
            return (p + int(self.word_start[0]) * PAGES_PER_WORD).astype(np.uint64)
        if p.size > len(self) and p.ndim == 1 and (p[1:] >= p[:-1]).all():
            # ascending (the usual case: selections, rechecks): extents are runs of pages
            runs = np.diff(np.searchsorted(p, self.offset * PAGES_PER_WORD))
            shift = (self.word_start - self.offset[:-1]) * PAGES_PER_WORD
            return (p + np.repeat(shift, runs)).astype(np.uint64)
        i = np.searchsorted(self.offset, p // PAGES_PER_WORD, side="right") - 1
        return (p + (self.word_start[i] - self.offset[i]) * PAGES_PER_WORD).astype(np.uint64)

    def flat_of(self, vpns: np.ndarray) -> np.ndarray:
        """Virtual page numbers -> flat page indices (int64), -1 where not tracked."""
        v = np.asarray(vpns, dtype=np.int64)
        if not self.word_start.size:
            return np.full(v.shape, -1, dtype=np.int64)
        w = v // PAGES_PER_WORD
        i = np.maximum(np.searchsorted(self.word_start, w, side="right") - 1, 0)
        inside = (w >= self.word_start[i]) & (w < self.word_start[i] + self.nwords[i])
        flat = v + (self.offset[i] - self.word_start[i]) * PAGES_PER_WORD
        return np.where(inside, flat, -1)


def is_shared(vma) -> bool:
    """A MAP_SHARED mapping of an object with an inode (shm, memfd, a shared file): the
    ``s`` in maps' permissions.  Its pages may be mapped by other processes too."""
    return vma.perms[3:4] == "s" and vma.inode != 0


def _special(vma) -> bool:
    special = getattr(vma, "special", None)
    if special is not None:
        return bool(special)
    return getattr(vma, "path", "") in ("[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]")


def _group_bits(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted flat pages -> (distinct words, index of each word's first page, bit per page)."""
    words = p >> 6
    bits = np.left_shift(_ONE, (p & 63).astype(np.uint64))
    starts = np.flatnonzero(np.concatenate(([True], words[1:] != words[:-1])))
    return words[starts], starts, bits


def carry_words(plane: np.ndarray, word_start: int, lo: int, hi: int, pg: int,
                ext: Extents) -> list[tuple[int, np.ndarray]]:
    """A mapper's bit plane of a shared object, carried into the object's flat words.

    ``plane`` holds the mapper's bits from its page ``word_start * 64`` on; its pages
    [lo, hi) map the object's pages from ``pg`` on (other bits are its neighbours' and are
    dropped).  Returns [(first flat word, words)] per extent of ``ext`` (the object's, in
    page offsets) that the mapping reaches.  Whole words are shifted (two per word when the
    mapping is not 64-page aligned in the object): hundreds of database backends map one
    buffer pool, and unpacking every page of it per backend and interval cost ~44 ms per GiB.
    """
    w = np.array(plane, dtype="<u8")
    n = w.size
    base = word_start * PAGES_PER_WORD
    a, b = max(lo - base, 0), min(hi - base, n * PAGES_PER_WORD)  # the mapping's bits
    if a >= b:
        return []
    # the words outside [a, b) and the bits outside it in its edge words go (Python ints:
    # a few scalar operations, not array passes: this runs per mapper, plane and interval)
    ka, kb = a // PAGES_PER_WORD, -(-b // PAGES_PER_WORD)
    w[:ka] = 0
    w[kb:] = 0
    w[ka] &= np.uint64(((1 << 64) - 1) ^ ((1 << (a % 64)) - 1))
    if b % 64:
        w[kb - 1] &= np.uint64((1 << (b % 64)) - 1)
    q, r = divmod(base + pg - lo, PAGES_PER_WORD)  # the object's word and bit of plane bit 0
    if r:
        out = np.zeros(n + 1, dtype=np.uint64)
        out[:n] = w << np.uint64(r)
        out[1:] |= w >> np.uint64(64 - r)
        w = out
    res = []
    for ws, nw, off in zip(ext.word_start.tolist(), ext.nwords.tolist(), ext.offset.tolist()):
        x, y = max(q, ws), min(q + w.size, ws + nw)
        if x < y:
            res.append((x - ws + off, w[x - q: y - q]))
    return res


def page_bits(pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat page indices -> (unique word indices, OR-ed bit masks), for scattering into a
    plane without per-page Python work.  Already sorted input (the usual case: selections
    come in address order) is not sorted again."""
    p = np.asarray(pages, dtype=np.int64)
    if p.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64)
    if p.size > 1 and not (p[1:] >= p[:-1]).all():
        p = np.sort(p)
    words, starts, bits = _group_bits(p)
    # OR, not add: a page listed twice sets its bit once
    return words, np.bitwise_or.reduceat(bits, starts)


def unique_sorted(a: np.ndarray) -> np.ndarray:
    """np.unique for int64 by sorting (numpy's hash-based unique is slow on large arrays)."""
    a = np.sort(np.asarray(a, dtype=np.int64))
    if a.size < 2:
        return a
    return a[np.concatenate(([True], a[1:] != a[:-1]))]


def test_bits(plane: np.ndarray, pages: np.ndarray) -> np.ndarray:
    """bool per flat page: its bit in ``plane``."""
    p = np.asarray(pages, dtype=np.int64)
    return ((plane[p >> 6] >> (p & 63).astype(np.uint64)) & _ONE).astype(bool)


def words_to_pages(word_idx: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Set bits of ``masks`` (one uint64 per word in ``word_idx``) -> flat page indices,
    ascending if word_idx is."""
    if word_idx.size == 0:
        return np.zeros(0, np.int64)
    m = np.ascontiguousarray(masks, dtype="<u8")
    f = np.flatnonzero(np.unpackbits(m.view(np.uint8), bitorder="little").view(bool))
    return np.asarray(word_idx, dtype=np.int64)[f >> 6] * 64 + (f & 63)


def _take_per_segment(m: np.ndarray, lo: int, starts: np.ndarray, wseg: np.ndarray,
                      need: np.ndarray, i0: int, limit: int) -> np.ndarray:
    """The lowest-addressed set bits of mask ``m`` (words lo..) up to ``need[i0 + s]`` in
    each segment s of the chunk (segment s begins at word ``starts[s]``; ``wseg``: segment
    of each word), at most ``limit`` in all; ``need`` is decremented by what was taken."""
    pc = np.bitwise_count(m).astype(np.int32)  # a chunk holds < 2**31 pages
    csum = np.cumsum(pc, dtype=np.int32)
    # set bits before each segment's first word, and what each segment still wants: a
    # word is taken while the bits before it in its segment are fewer than the want
    before_seg = (csum[starts] - pc[starts]).astype(np.int64)
    upto = np.minimum(need[i0: i0 + starts.size], 1 << 30).astype(np.int64) + before_seg
    k = np.minimum(csum, upto[wseg].astype(np.int32)) - (csum - pc)
    widx = np.flatnonzero(k > 0)
    if widx.size == 0:
        return np.zeros(0, np.int64)
    kw = k[widx]
    masks = m[widx]
    cut = np.flatnonzero(kw < pc[widx])
    if cut.size:  # words cut short (one per segment at most): keep their lowest kw bits
        bits = np.unpackbits(masks[cut].astype("<u8").view(np.uint8), bitorder="little").reshape(-1, 64)
        bits &= (np.cumsum(bits, axis=1) <= kw[cut, None]).astype(np.uint8)
        masks = masks.copy()
        masks[cut] = np.packbits(bits, axis=1, bitorder="little").view("<u8").ravel()
    pages = words_to_pages(widx + lo, masks)
    if pages.size > limit:
        pages = pages[:limit]
    need[i0: i0 + starts.size] -= np.bincount(wseg[(pages >> 6) - lo], minlength=starts.size)
    return pages


_KERNELS: dict[tuple[int, int], HistogramKernel] = {}


def shared_kernel(window: int, chunk_words: int) -> HistogramKernel:
    """One histogram kernel (scratch buffers only) per window and chunk size, shared by every
    process's state: with hundreds of small processes, per-process buffers (megabytes
    each, strided rows) cost more in cache and TLB misses than the arithmetic.  The engine
    is single-threaded and a kernel's buffers hold nothing between calls, except the
    hotness planes ``commit`` reads back right after computing them."""
    key = (int(window), int(chunk_words))
    k = _KERNELS.get(key)
    if k is None:
        k = _KERNELS[key] = HistogramKernel(key[0], key[1], 4)
    return k


def _lowest_bits(x: int, k: int) -> int:
    """The k lowest set bits of the 64-bit integer x."""
    out = 0
    for _ in range(k):
        low = x & -x
        out |= low
        x ^= low
    return out


class PageState:
    """The packed page state of one pack (see the module docstring)."""

    def __init__(
        self,
        extents: Extents,
        window: int,
        node_ids: Sequence[int],
        chunk_words: int = CHUNK_WORDS,
    ) -> None:
        self.extents = extents
        self.window = int(window)
        self.node_ids = tuple(int(n) for n in node_ids)
        self.chunk_words = int(chunk_words)
        self.samples = 0  # samples committed
        self.head = 0  # ring row of the newest sample
        self._cur = 0  # which present plane is the current one
        self._kernel = shared_kernel(self.window, self.chunk_words)
        self._alloc(extents.words)
        # sparse retry table, sorted by vpn
        self.retry_vpn = np.zeros(0, np.int64)
        self.retry_fails = np.zeros(0, np.int16)
        self.retry_until = np.zeros(0, np.int64)
        # segments (tierd/engine/pack.py: several small processes in one state): flat word
        # offsets where each begins, and histograms per segment kept like chunk_hist
        self.seg_start: np.ndarray | None = None
        self.seg_hist: np.ndarray | None = None
        self._recheck_at = 0  # recheck_pages' cursor (flat words)

    # -- storage -----------------------------------------------------------------------------
    def _alloc(self, words: int) -> None:
        self.hist = np.zeros((self.window, words), dtype=np.uint64)
        self.nodes = np.zeros((len(self.node_ids), words), dtype=np.uint64)
        self.present_planes = np.zeros((2, words), dtype=np.uint64)
        self.backoff = np.zeros(words, dtype=np.uint64)
        self.top = np.zeros((TOP_BITS, words if self.has_top else 0), dtype=np.uint64)
        nchunks = -(-words // self.chunk_words)
        self.chunk_seen = np.full(nchunks, -(1 << 40), dtype=np.int64)  # sample of last access
        self.chunk_sub = np.zeros((nchunks, len(self.node_ids) + 1, LEVELS), dtype=np.int64)
        self.chunk_hist = np.zeros_like(self.chunk_sub)
        self._pop_valid = np.zeros(nchunks, dtype=bool)  # chunk_hist's class sums are current
        self._est_reset()

    def _est_reset(self) -> None:
        # per chunk: (word offset, [4 hotness planes + one plane per node, slice words]) saved
        # at the last commit, so the next sample tells which of those pages were accessed
        self._est_saved: list = [None] * self.chunk_seen.size
        self.est = np.zeros((2, len(self.node_ids) + 1, LEVELS), dtype=np.int64)
        # the same for the level-15 pages by top counter (column 0 unused)
        self.est_top = np.zeros((2, len(self.node_ids) + 1, TOP_LEVELS), dtype=np.int64)

    @property
    def has_top(self) -> bool:
        """Is there a top counter (see the module docstring)?"""
        return self.window < LEVELS

    @property
    def words(self) -> int:
        return self.hist.shape[1]

    @property
    def pages(self) -> int:
        return self.words * PAGES_PER_WORD

    @property
    def nclasses(self) -> int:
        """Node classes plus one for "node not known"."""
        return len(self.node_ids) + 1

    @property
    def unknown(self) -> int:
        """Class index of pages whose node is not known."""
        return len(self.node_ids)

    def class_of(self, node: int) -> int:
        return self.node_ids.index(node) if node >= 0 else self.unknown

    @property
    def present(self) -> np.ndarray:
        return self.present_planes[self._cur]

    @property
    def nbytes(self) -> int:
        """Bytes of state held for this process (all arrays, per-page and per-chunk)."""
        return sum(
            a.nbytes
            for a in (
                self.hist, self.nodes, self.present_planes, self.backoff, self.top, self.chunk_seen,
                self.chunk_sub, self.chunk_hist, self.retry_vpn, self.retry_fails,
                self.retry_until, self.est,
                *(s[1] for s in self._est_saved if s is not None),
            )
        )

    @property
    def bytes_per_page(self) -> float:
        return self.nbytes / max(1, self.pages)

    def _chunks(self):
        c = self.chunk_words
        for ch, lo in enumerate(range(0, self.words, c)):
            yield ch, lo, min(lo + c, self.words)

    def history_rows(self) -> list[np.ndarray]:
        """History planes newest first."""
        return [self.hist[(self.head - k) % self.window] for k in range(self.window)]

    # -- sampling ----------------------------------------------------------------------------
    def sample_buffers(self) -> tuple[np.ndarray, np.ndarray]:
        """(present, accessed) word arrays for the next sample, to be filled over every extent
        (flat word order) before ``commit``.  ``accessed`` is the oldest history plane, which
        the new sample replaces."""
        return self.present_planes[1 - self._cur], self.hist[(self.head + 1) % self.window]

    def commit(self) -> None:
        """Take in the sample written into ``sample_buffers`` and recompute the histograms.

        Also counts ``est``: est[0, c, v] pages of class c at hotness v as of the previous
        commit (on a rotating slice of the words, see EST_DIV), est[1, c, v] how many of them
        this sample found accessed: the measured access probability of each (node, level)
        cell, which placement uses to tell real gains from sampling noise."""
        nxt = 1 - self._cur
        new_p, old_p = self.present_planes[nxt], self.present_planes[self._cur]
        self.head = (self.head + 1) % self.window
        self._cur = nxt
        self.samples += 1
        acc_row = self.hist[self.head]
        rows = self.history_rows()
        band, bxor = np.bitwise_and, np.bitwise_xor
        kern = self._kernel
        nn = len(self.node_ids)
        scratch = kern.mask
        # pages per class and chunk as of the last commit, kept current by the move updates:
        # valid while a chunk's present pages do not change
        populations = self.chunk_hist.sum(axis=2)
        self.est.fill(0)
        self.est_top.fill(0)
        est_words = max(self.words // EST_DIV, min(self.words, EST_MIN_WORDS))
        seg_sub = self._seg_sub_zero()
        for ch, lo, hi in self._chunks():
            n = hi - lo
            newc, oldc, acc = new_p[lo:hi], old_p[lo:hi], acc_row[lo:hi]
            x = scratch[:n]
            bxor(oldc, newc, x)
            changed = bool(x.any())
            band(acc, newc, acc)  # accessed implies present
            if changed:
                band(acc, oldc, acc)  # a page's first sample carries no recency
                band(x, oldc, x)
                if x.any():
                    self._forget(lo, x)
            if acc.any():
                self.chunk_seen[ch] = self.samples
                if self.has_top:
                    self._count_top(lo, hi, rows)
            elif self.has_top and self.top[:, lo:hi].any():
                self.top[:, lo:hi] = 0
            if self._est_saved[ch] is not None:
                self._est_count(self._est_saved[ch], acc, newc)
            node_rows = self.nodes[:, lo:hi]
            if changed or not self._pop_valid[ch]:
                cls_pop = np.empty(nn + 1, dtype=np.int64)
                total = int(np.bitwise_count(newc).sum(dtype=np.int64))
                if nn:
                    cls_pop[:nn] = np.bitwise_count(node_rows).sum(axis=1, dtype=np.int64)
                cls_pop[nn] = total - cls_pop[:nn].sum()
                self._pop_valid[ch] = True
            else:
                cls_pop = populations[ch]
            sub = self.chunk_sub[ch]
            sub.fill(0)
            nonzero = np.flatnonzero(cls_pop)
            planes = False
            one = self._one_segment(lo, hi)
            if seg_sub is not None and one is None:  # every class counted per segment
                sub[:] = self._segment_pass(lo, hi, rows, newc, node_rows, seg_sub, cls_pop)
                planes = True
            elif self.samples - self.chunk_seen[ch] >= self.window:
                # no access in the whole window: every present page has hotness 0
                sub[:, 0] = cls_pop
            elif nonzero.size:
                # the biggest class is what is left over: one class fewer to count
                derived = int(nonzero[np.argmax(cls_pop[nonzero])])
                computed = [int(c) for c in nonzero if c != derived]
                masks = [node_rows[c] if c < nn else self._unknown_mask(lo, hi) for c in computed]
                counts = kern.subset_counts([r[lo:hi] for r in rows], masks)
                counts[0, 0] = cls_pop.sum()
                for i, c in enumerate(computed):
                    counts[1 + i, 0] = cls_pop[c]
                    sub[c] = counts[1 + i]
                sub[derived] = counts[0] - counts[1:].sum(axis=0)
                planes = True
            if seg_sub is not None and one is not None:  # the chunk lies in one segment
                seg_sub[one] += sub
            if nn and nonzero.size:
                self._est_save(ch, lo, n, -(-est_words * n // self.words), planes, node_rows)
            else:
                self._est_saved[ch] = None
        np.matmul(self.chunk_sub, _MOEBIUS_T, out=self.chunk_hist)
        if seg_sub is not None:
            np.matmul(seg_sub, _MOEBIUS_T, out=self.seg_hist)

    def _count_top(self, lo: int, hi: int, rows) -> None:
        """Advance the top counters of words lo..hi: +1 (saturating) where the page is at
        level 15 after this sample (accessed in every sample of the window), else 0."""
        band = np.bitwise_and
        t = self.top[:, lo:hi]
        at_top = rows[0][lo:hi].copy()
        for r in rows[1:]:
            band(at_top, r[lo:hi], at_top)
        carry = band(at_top, ~(t[0] & t[1] & t[2] & t[3]))
        for b in range(TOP_BITS):
            nb = np.bitwise_xor(t[b], carry)
            band(t[b], carry, carry)
            t[b] = nb
        band(t, at_top, t)

    def top_histograms(self, seg: int | None = None) -> np.ndarray:
        """[nclasses, TOP_LEVELS]: the level-15 pages of each class by top counter (column
        0 unused), of the whole state or of segment ``seg``.  A pass over the chunks that
        hold level-15 pages (placement asks only when the top level overflows the fast
        tier)."""
        out = np.zeros((self.nclasses, TOP_LEVELS), dtype=np.int64)
        if not self.has_top:
            return out
        nn = len(self.node_ids)
        a, b = 0, self.words
        if seg is not None and self.seg_start is not None:
            if not self.seg_hist[seg, :, LEVELS - 1].any():
                return out
            a = int(self.seg_start[seg])
            b = int(self.seg_start[seg + 1]) if seg + 1 < self.seg_start.size else self.words
        for ch in np.flatnonzero(self.chunk_hist[:, :, LEVELS - 1].any(axis=1)).tolist():
            lo = max(ch * self.chunk_words, a)
            hi = min(ch * self.chunk_words + self.chunk_words, self.words, b)
            if lo >= hi:
                continue
            masks = [self.nodes[c, lo:hi] for c in range(nn)] + [self._unknown_mask(lo, hi)]
            out += self._kernel.level_counts(self.top[:, lo:hi], masks)
        out[:, 0] = 0
        return out

    def top_mask(self, lo: int, hi: int, count: int, base: np.ndarray) -> np.ndarray:
        """base & (top counter == count) over words lo..hi."""
        m = base.copy()
        for b in range(TOP_BITS):
            plane = self.top[b, lo:hi]
            np.bitwise_and(m, plane if count >> b & 1 else np.bitwise_not(plane), m)
        return m

    # -- segments ----------------------------------------------------------------------------
    def set_segments(self, starts) -> None:
        """Keep histograms per segment: ``starts`` are the flat word offsets where segments
        begin (ascending, the first 0, none empty), e.g. one per process packed into this
        state.  Counted from the next ``commit`` on (or now, with ``recount``)."""
        s = np.asarray(starts, dtype=np.int64).ravel()
        if s.size == 0 or s[0] != 0 or (s.size > 1 and np.any(s[1:] <= s[:-1])) or s[-1] >= max(1, self.words):
            raise ValueError("segments must start at 0, ascend and be non-empty")
        self.seg_start = s
        self.seg_hist = np.zeros((s.size, self.nclasses, LEVELS), dtype=np.int64)

    def _seg_sub_zero(self) -> np.ndarray | None:
        if self.seg_start is None:
            return None
        if self.seg_hist.shape[1] != self.nclasses:
            self.seg_hist = np.zeros((self.seg_start.size, self.nclasses, LEVELS), dtype=np.int64)
        return np.zeros_like(self.seg_hist)

    def _one_segment(self, lo: int, hi: int) -> int | None:
        """The segment holding all of words lo..hi, if one does (a large process's chunks:
        counted by the per-chunk path, with its shortcuts); None if several do."""
        if self.seg_start is None:
            return None
        i = int(np.searchsorted(self.seg_start, lo, side="right")) - 1
        end = int(self.seg_start[i + 1]) if i + 1 < self.seg_start.size else self.words
        return i if hi <= end else None

    def _segment_pass(self, lo: int, hi: int, rows, present, node_rows, seg_sub,
                      cls_pop: np.ndarray | None = None) -> np.ndarray:
        """Subset counts of words lo..hi per segment added into ``seg_sub``; returns their
        sum (the chunk's).  With the chunk's class populations, empty classes are not
        counted and the biggest is derived from all pages minus the others (as ``commit``
        does per chunk): usually one class mask instead of three."""
        s = self.seg_start
        i0 = int(np.searchsorted(s, lo, side="right")) - 1
        i1 = int(np.searchsorted(s, hi, side="left"))
        nn = node_rows.shape[0]
        out = np.zeros((i1 - i0, nn + 1, LEVELS), dtype=np.int64)
        if cls_pop is None:
            classes = list(range(nn + 1))
        else:
            classes = np.flatnonzero(cls_pop).tolist()
        if not classes:
            return out.sum(axis=0)
        derived = classes[int(np.argmax([cls_pop[c] for c in classes]))] if cls_pop is not None else nn
        computed = [c for c in classes if c != derived]
        masks = [node_rows[c] if c < nn else self._unknown_mask(lo, hi) for c in computed]
        rel = np.maximum(s[i0:i1], lo) - lo
        cnt = self._kernel.segment_counts([r[lo:hi] for r in rows], present, masks, rel)
        out[:, computed] = cnt[:, 1:]
        out[:, derived] = cnt[:, 0] - cnt[:, 1:].sum(axis=1)
        seg_sub[i0:i1] += out
        return out.sum(axis=0)

    def segment_of(self, pages: np.ndarray) -> np.ndarray:
        """Segment index of flat pages."""
        return np.searchsorted(self.seg_start, np.asarray(pages, dtype=np.int64) >> 6, side="right") - 1

    def segment_histograms(self) -> np.ndarray:
        """[segments, nclasses, 16]: ``histograms`` per segment."""
        return self.seg_hist

    def _est_save(self, ch: int, lo: int, n: int, length: int, planes: bool, node_rows) -> None:
        """Keep this commit's hotness planes and node masks of a slice of chunk ``ch`` for
        the next commit to count against.  The slice rotates through the chunk."""
        length = min(n, max(1, length))
        off = (self.samples * length) % n
        off = min(off, n - length)
        nn = node_rows.shape[0]
        nt = TOP_BITS if self.has_top else 0
        saved = self._est_saved[ch]
        buf = saved[1] if saved is not None and saved[1].shape == (4 + nn + nt, length) else \
            np.empty((4 + nn + nt, length), dtype=np.uint64)
        if planes:  # the chunk's hotness planes are still in the kernel's product rows
            for b in range(4):
                np.copyto(buf[b], self._kernel.prod[1 << b, off: off + length])
        else:
            buf[:4] = 0
        buf[4: 4 + nn] = node_rows[:, off: off + length]
        if nt:
            lo = ch * self.chunk_words
            buf[4 + nn:] = self.top[:, lo + off: lo + off + length]
        self._est_saved[ch] = (off, buf)

    def _est_count(self, saved, acc: np.ndarray, present: np.ndarray) -> None:
        """Add the saved slice's (node, level) cells and their pages accessed in this sample
        to ``est`` (pages gone since are left out)."""
        off, buf = saved
        length = buf.shape[1]
        a = acc[off: off + length]
        pres = present[off: off + length]
        nt = TOP_BITS if self.has_top else 0
        nn = buf.shape[0] - 4 - nt
        masks = []
        for c in range(nn):
            m = buf[4 + c] & pres
            masks += [m, m & a]
        if not buf[:4].any():  # all at hotness 0 (a cold chunk): popcounts suffice
            for c in range(nn):
                self.est[0, c, 0] += int(np.bitwise_count(masks[2 * c]).sum(dtype=np.int64))
                self.est[1, c, 0] += int(np.bitwise_count(masks[2 * c + 1]).sum(dtype=np.int64))
            return
        h = self._kernel.level_counts(buf[:4], masks)
        self.est[0, :nn] += h[0::2]
        self.est[1, :nn] += h[1::2]
        if nt and buf[4 + nn:].any():
            t = self._kernel.level_counts(buf[4 + nn:], masks)
            self.est_top[0, :nn] += t[0::2]
            self.est_top[1, :nn] += t[1::2]

    def forget_words(self, words: np.ndarray) -> None:
        """The pages of these flat words start over: no history, node not known (queried
        again).  For huge pages tierd split: their shared history says nothing about the
        4 KiB pages, and khugepaged may have moved them behind tierd's back."""
        w = np.asarray(words, dtype=np.int64)
        self.hist[:, w] = 0
        if self.has_top:
            self.top[:, w] = 0
        if len(self.node_ids):
            self.nodes[:, w] = 0
        self._pop_valid[np.unique(w // self.chunk_words)] = False

    def _forget(self, lo: int, gone: np.ndarray) -> None:
        """Pages that are no longer present lose their history and node."""
        idx = np.flatnonzero(gone)
        keep = ~gone[idx]
        cols = lo + idx
        self.hist[:, cols] &= keep
        if self.has_top:
            self.top[:, cols] &= keep
        if len(self.node_ids):
            self.nodes[:, cols] &= keep

    def _unknown_mask(self, lo: int, hi: int) -> np.ndarray:
        m = np.array(self.present[lo:hi])
        if len(self.node_ids):
            known = np.bitwise_or.reduce(self.nodes[:, lo:hi], axis=0)
            m &= ~known
        return m

    def class_mask(self, cls: int, lo: int, hi: int) -> np.ndarray:
        """Pages of class ``cls`` in words lo..hi (a view for nodes, a new array for unknown)."""
        if cls < len(self.node_ids):
            return self.nodes[cls, lo:hi]
        return self._unknown_mask(lo, hi)

    # -- reading the model -------------------------------------------------------------------
    def histograms(self) -> np.ndarray:
        """[nclasses, 16] page counts by class (node_ids order, then unknown) and hotness."""
        return self.chunk_hist.sum(axis=0)

    def backoff_histograms(self, by_segment: bool = False) -> np.ndarray:
        """[nclasses, 16] like ``histograms``, of the present pages in retry backoff only
        (the ones selection skips); [segments, nclasses, 16] with ``by_segment``.  Sparse:
        from the retry table, not a pass over the planes."""
        nseg = self.seg_start.size if by_segment else 1
        out = np.zeros((nseg, self.nclasses, LEVELS), dtype=np.int64)
        if not by_segment:
            out = out[0]
        if self.retry_vpn.size == 0:
            return out
        flat = self.extents.flat_of(self.retry_vpn)
        flat = flat[flat >= 0]
        flat = flat[test_bits(self.backoff, flat) & test_bits(self.present, flat)]
        if flat.size == 0:
            return out
        node = self.node_of(flat).astype(np.int64)
        cls = np.full(flat.shape, self.unknown, dtype=np.int64)
        for i, nid in enumerate(self.node_ids):
            cls[node == nid] = i
        key = cls * LEVELS + self.hotness(flat).astype(np.int64)
        if by_segment:
            key += self.segment_of(flat) * (self.nclasses * LEVELS)
        return np.bincount(key, minlength=out.size).reshape(out.shape)

    def hotness(self, pages: np.ndarray) -> np.ndarray:
        """Hotness of individual flat pages (uint8), by the reference formula (sparse use)."""
        p = np.asarray(pages, dtype=np.int64)
        bits = np.stack([test_bits(r, p) for r in self.history_rows()])
        return hotness_reference(bits, self.window)

    def node_of(self, pages: np.ndarray) -> np.ndarray:
        """Known node per flat page (int8-like int16 array), -1 where unknown or absent."""
        p = np.asarray(pages, dtype=np.int64)
        out = np.full(p.shape, -1, dtype=np.int16)
        for i, nid in enumerate(self.node_ids):
            out[test_bits(self.nodes[i], p)] = nid
        return out

    # -- selection ---------------------------------------------------------------------------
    def select(self, requests: Sequence[tuple[int, int, int]], limit: int | None = None) -> list[np.ndarray]:
        """For each (class, level, count): up to ``count`` flat pages of that class at exactly
        that hotness, not in backoff, lowest addresses first; at most ``limit`` pages in all.
        ``select_segments`` over the whole state as one segment, as one array per request."""
        n = len(requests)
        cls, level, count = (np.array([r[i] for r in requests], dtype=np.int64).reshape(n) for i in range(3))
        pages, sizes = self.select_segments(np.zeros(n, np.int64), cls, level, count, limit, whole=True)
        return np.split(pages, np.cumsum(sizes)[:-1]) if n else []

    def select_segments(self, seg, cls, level, count, limit: int | None = None, whole: bool = False):
        """The selection: request i asks for ``count[i]`` pages of class ``cls[i]`` at
        hotness ``level[i]`` (a top sub-level 15 + c: level 15 with top counter c) from
        segment ``seg[i]``'s words only (arrays, one entry per request), not in backoff,
        lowest addresses first; at most ``limit`` pages in all (``whole``: the state is one
        segment).  One pass over the chunks serves every segment and request: the
        per-segment cut is vectorized (a cumulative popcount per word, offset by the
        segment's start), so hundreds of packed processes cost about as much as one of the
        same total size.  Requests for the same (segment, class, level) get disjoint pages,
        in request order.  Returns (the pages of every request, concatenated in request
        order; pages per request)."""
        seg_start = np.zeros(1, np.int64) if whole or self.seg_start is None else self.seg_start
        nseg = seg_start.size
        seg, cls, level, count = (np.asarray(x, dtype=np.int64) for x in (seg, cls, level, count))
        count = np.maximum(count, 0)
        stride = LEVELS + TOP_LEVELS  # room for the top sub-levels
        kid = cls * stride + level
        keys_flat, key_idx = np.unique(kid, return_inverse=True)
        key_idx = key_idx.reshape(kid.shape)
        need_all = np.bincount(key_idx * nseg + seg, weights=count,
                               minlength=keys_flat.size * nseg).astype(np.int64).reshape(-1, nseg)
        keys = [(int(k) // stride, int(k) % stride) for k in keys_flat]
        got: list[list[np.ndarray]] = [[] for _ in keys]
        limit = (1 << 62) if limit is None else int(limit)
        if keys and need_all.any() and self.words:
            avail = self.chunk_hist[:, [k[0] for k in keys], [min(k[1], LEVELS - 1) for k in keys]]
            rows = None
            for ch in np.flatnonzero((avail > 0).any(axis=1)).tolist():
                if limit <= 0:
                    break
                lo = ch * self.chunk_words
                hi = min(lo + self.chunk_words, self.words)
                i0 = int(np.searchsorted(seg_start, lo, side="right")) - 1
                i1 = int(np.searchsorted(seg_start, hi, side="left"))
                live = np.flatnonzero((avail[ch] > 0) & need_all[:, i0:i1].any(axis=1)).tolist()
                if not live:
                    continue
                if rows is None:
                    rows = self.history_rows()
                planes = self._kernel.hot_planes([r[lo:hi] for r in rows], hi - lo)
                notback = np.bitwise_not(self.backoff[lo:hi])
                by_class: dict[int, list[int]] = {}
                for j in live:
                    by_class.setdefault(keys[j][0], []).append(j)
                starts = np.maximum(seg_start[i0:i1], lo) - lo
                wseg = np.repeat(np.arange(i1 - i0), np.diff(np.append(starts, hi - lo)))
                for c, js in by_class.items():
                    base = self.class_mask(c, lo, hi) & notback
                    lv = [keys[j][1] for j in js]
                    masks = self._kernel.level_masks(planes, [min(v, LEVELS - 1) for v in lv], base)
                    for v in {v for v in lv if v >= LEVELS}:  # top sub-levels: 15 + counter
                        masks[v] = self.top_mask(lo, hi, v - (LEVELS - 1), masks[LEVELS - 1])
                    for j in js:
                        if limit <= 0:
                            break
                        pages = _take_per_segment(masks[keys[j][1]], lo, starts, wseg, need_all[j], i0, limit)
                        if pages.size:
                            got[j].append(pages)
                            limit -= pages.size
        # request i takes the next pages of its (key, segment) run: pages ascend, so each
        # segment's pages of a key are one run of that key's pool
        order = np.lexsort((np.arange(seg.size), seg, key_idx))
        prior = np.zeros(seg.size, dtype=np.int64)
        cs = np.cumsum(count[order]) - count[order]
        grp = np.concatenate(([True], (np.diff(key_idx[order]) != 0) | (np.diff(seg[order]) != 0))) \
            if seg.size else np.zeros(0, bool)
        first = np.flatnonzero(grp)
        prior[order] = cs - cs[first][np.cumsum(grp) - 1] if seg.size else cs
        ends = np.append(seg_start, self.words)
        pools, base = [], 0
        a = np.zeros(seg.size, dtype=np.int64)
        b = np.zeros(seg.size, dtype=np.int64)
        for k, parts in enumerate(got):
            pool = np.concatenate(parts) if len(parts) > 1 else parts[0] if parts else np.zeros(0, np.int64)
            bounds = np.searchsorted(pool >> 6, ends) + base
            mine = key_idx == k
            a[mine] = bounds[seg[mine]] + prior[mine]
            b[mine] = np.minimum(bounds[seg[mine] + 1], a[mine] + count[mine])
            pools.append(pool)
            base += pool.size
        sizes = np.maximum(b - a, 0)
        allp = np.concatenate(pools) if pools else np.zeros(0, np.int64)
        # gather every request's slice in request order at once
        idx = np.repeat(a - (np.cumsum(sizes) - sizes), sizes) + np.arange(int(sizes.sum()))
        return allp[idx], sizes

    # -- nodes from the reader ---------------------------------------------------------------
    def learn_nodes(self, spans, nodes_of, scope: str = "range") -> None:
        """Pages of unknown node learn it from ``nodes_of(pid, word_start, nwords)`` (int16
        per page, -1 unknown).  ``spans``: (pid, real extents, flat word offset of those
        extents here) - one for a process's own state, one per member of a pack.  A
        "range" source is asked only about runs of words holding unknown pages (gaps of
        up to NODES_GAP_WORDS merged); a "process" source (one read of the whole process,
        e.g. numa_maps) only while at least 1/NODES_PROCESS_DIV of the present pages are
        unknown - a few new pages are cheaper to query."""
        unknown = self.class_mask(self.unknown, 0, self.words)
        if not unknown.any():
            return
        if scope == "process":
            n_unknown = int(np.bitwise_count(unknown).sum(dtype=np.int64))
            if n_unknown * NODES_PROCESS_DIV < int(np.bitwise_count(self.present).sum(dtype=np.int64)):
                return
        for pid, ext, base in spans:
            for ws, nw, off in zip(ext.word_start.tolist(), ext.nwords.tolist(), ext.offset.tolist()):
                lo = base + off
                w = np.flatnonzero(unknown[lo: lo + nw])
                if w.size == 0:
                    continue
                if scope == "process":
                    runs = [(0, nw, w)]
                else:
                    cut = np.flatnonzero(np.diff(w) > NODES_GAP_WORDS) + 1
                    runs = [(int(w[i]), int(w[j - 1]) + 1 - int(w[i]), w[i:j])
                            for i, j in zip([0, *cut.tolist()], [*cut.tolist(), w.size])]
                for a, n, ww in runs:
                    pages = words_to_pages(ww + lo, unknown[lo + ww])
                    node = np.asarray(nodes_of(pid, ws + a, n), dtype=np.int64)[pages - (lo + a) * 64]
                    ok = node >= 0
                    if ok.any():
                        self.set_node(pages[ok], self.hotness(pages[ok]), self.unknown, node[ok])

    def recheck_pages(self, words: int) -> np.ndarray:
        """The next ``words`` words' pages of known node (flat, ascending), from a cursor
        that wraps around the state: the engine asks the kernel where they are now, to find
        pages the kernel moved behind tierd's back (kswapd demotion, NUMA balancing,
        compaction)."""
        n = self.words
        if n == 0 or words <= 0 or not len(self.node_ids):
            return np.zeros(0, np.int64)
        words = min(int(words), n)
        lo = self._recheck_at % n
        idx = (lo + np.arange(words)) % n
        self._recheck_at = (lo + words) % n
        known = np.bitwise_or.reduce(self.nodes[:, idx], axis=0) & self.present[idx]
        pages = words_to_pages(idx, known)
        return np.sort(pages) if lo + words > n else pages

    # -- updates from move_pages -------------------------------------------------------------
    def set_node(self, pages: np.ndarray, level, from_cls, node) -> None:
        """Record that ``pages`` (flat) are on ``node`` (one id, or one per page; -1 unknown).

        ``level`` and ``from_cls`` are the hotness and class the pages were selected with
        (scalars, or arrays per page); they keep the per-chunk histograms current without a
        recount.  One pass whatever the mix of levels, classes and nodes (the engine folds a
        whole batch of move_pages results in at once)."""
        p = np.asarray(pages, dtype=np.int64)
        if p.size == 0:
            return
        lv = np.broadcast_to(np.asarray(level, dtype=np.int64), p.shape)
        fc = np.broadcast_to(np.asarray(from_cls, dtype=np.int64), p.shape)
        nd = np.broadcast_to(np.asarray(node, dtype=np.int64), p.shape)
        if p.size > 1:
            breaks = np.flatnonzero(p[1:] < p[:-1]) + 1
            if 0 < breaks.size <= 16:  # a few sorted runs (one per request): no sort needed
                for a, b in zip([0, *breaks.tolist()], [*breaks.tolist(), p.size]):
                    self.set_node(p[a:b], lv[a:b], fc[a:b], nd[a:b])
                return
            if breaks.size:
                order = np.argsort(p, kind="stable")
                p, lv, fc, nd = p[order], lv[order], fc[order], nd[order]
        one = int(nd[0]) if (nd == nd[0]).all() else None  # the usual case: one destination
        for nid in ([one] if one is not None and one >= 0 else
                    np.flatnonzero(np.bincount(nd[nd >= 0])).tolist() if one is None else []):
            self._class_or_add(nid)  # new nodes first: classes may shift
        words, starts, bits = _group_bits(p)
        masks = np.bitwise_or.reduceat(bits, starts)
        if len(self.node_ids):
            self.nodes[:, words] &= ~masks
        lv = int(lv[0]) if (lv == lv[0]).all() else lv
        fc = int(fc[0]) if (fc == fc[0]).all() else fc
        if one is not None:
            to = self.class_of(one)
            if to < len(self.node_ids):
                self.nodes[to, words] |= masks
            self._recount(p, lv, fc, to)
            return
        to = np.full(p.shape, self.unknown, dtype=np.int64)
        zero = np.uint64(0)
        for i, nid in enumerate(self.node_ids):
            sel = nd == nid
            if sel.any():
                # the same word grouping for every node: other pages contribute 0 bits
                self.nodes[i, words] |= np.bitwise_or.reduceat(np.where(sel, bits, zero), starts)
                to[sel] = i
        self._recount(p, lv, fc, to)

    def mark_absent(self, pages: np.ndarray, level, from_cls) -> None:
        """move_pages said these pages are not there (ENOENT/EFAULT): drop them until a sample
        shows them present again (then they start fresh)."""
        p = np.asarray(pages, dtype=np.int64)
        if p.size == 0:
            return
        words, masks = page_bits(p)
        keep = ~masks
        self.present_planes[self._cur, words] &= keep
        self.hist[:, words] &= keep
        if self.has_top:
            self.top[:, words] &= keep
        if len(self.node_ids):
            self.nodes[:, words] &= keep
        self._recount(p, level, from_cls, None)

    def _recount(self, p, level, from_cls, to_cls) -> None:
        """Move ``p``'s pages from (from_cls, level) to (to_cls, level) in the per-chunk
        (and per-segment) histograms (to_cls None: they are gone); level and classes scalars
        or per page.  All scalars and ``p`` sorted (one request's pages, the usual case):
        the pages per chunk are a searchsorted of the chunk starts, not a pass over pages."""
        # an extended level (placement's top sub-levels, 15 + counter) is level 15 here
        level = min(level, LEVELS - 1) if isinstance(level, (int, np.integer)) else \
            np.minimum(level, LEVELS - 1)
        ranges = [(self.chunk_hist, self.chunk_words * PAGES_PER_WORD, None)]
        if self.seg_hist is not None:
            ranges.append((self.seg_hist, None, self.seg_start * PAGES_PER_WORD))
        scalar = all(isinstance(x, (int, np.integer)) for x in (level, from_cls)) and \
            (to_cls is None or isinstance(to_cls, (int, np.integer)))
        if scalar and p.size > 1 and not (p[1:] >= p[:-1]).all():
            scalar = False
        for hist, per, starts in ranges:
            if scalar:
                if starts is None:
                    starts = np.arange(hist.shape[0], dtype=np.int64) * per
                n = np.diff(np.searchsorted(p, starts), append=p.size)
                hist[:, from_cls, level] -= n
                if to_cls is not None:
                    hist[:, to_cls, level] += n
                continue
            size = hist.size
            cl = hist.shape[1] * LEVELS
            if starts is None:
                where = p // per
            elif p.size > 1 and (p[1:] >= p[:-1]).all():  # sorted: segments are runs
                where = np.repeat(np.arange(starts.size), np.diff(np.searchsorted(p, starts), append=p.size))
            else:
                where = self.segment_of(p)
            base = where * cl + level
            flat = hist.reshape(-1)
            flat -= np.bincount(base + np.asarray(from_cls) * LEVELS, minlength=size)
            if to_cls is not None:
                flat += np.bincount(base + np.asarray(to_cls) * LEVELS, minlength=size)

    def _class_or_add(self, node: int) -> int:
        if node < 0:
            return self.unknown
        if node not in self.node_ids:
            self.set_node_ids(self.node_ids + (node,))
        return self.node_ids.index(node)

    # -- retry backoff -----------------------------------------------------------------------
    def fail(self, pages: np.ndarray, now: int, retry_after: int) -> None:
        """Moves of ``pages`` failed at interval ``now``: no retry for retry_after intervals,
        doubling with each consecutive failure."""
        p = np.asarray(pages, dtype=np.int64)
        if p.size == 0:
            return
        vpn = unique_sorted(self.extents.vpn_of(p).astype(np.int64))
        i = np.searchsorted(self.retry_vpn, vpn)
        if self.retry_vpn.size:
            hit = self.retry_vpn[np.minimum(i, self.retry_vpn.size - 1)] == vpn
        else:
            hit = np.zeros(vpn.shape, bool)
        fails = np.ones(vpn.shape, np.int16)
        fails[hit] = self.retry_fails[i[hit]] + 1
        fails = np.minimum(fails, BACKOFF_MAX_DOUBLINGS + 1)
        until = now + retry_after * (1 << (fails.astype(np.int64) - 1))
        self.retry_fails[i[hit]] = fails[hit]
        self.retry_until[i[hit]] = until[hit]
        new = ~hit
        if new.any():
            vs = np.concatenate((self.retry_vpn, vpn[new]))
            order = np.argsort(vs, kind="stable")
            self.retry_vpn = vs[order]
            self.retry_fails = np.concatenate((self.retry_fails, fails[new]))[order]
            self.retry_until = np.concatenate((self.retry_until, until[new]))[order]
        w, m = page_bits(p)
        self.backoff[w] |= m

    def succeed(self, pages: np.ndarray) -> None:
        """Moves succeeded: forget their failure history."""
        if self.retry_vpn.size == 0:
            return
        vpn = np.sort(self.extents.vpn_of(np.asarray(pages, dtype=np.int64)).astype(np.int64))
        if vpn.size == 0:
            return
        i = np.minimum(np.searchsorted(vpn, self.retry_vpn), vpn.size - 1)
        drop = vpn[i] == self.retry_vpn
        if drop.any():
            self._drop_retry(drop)

    def expire(self, now: int, retry_after: int) -> None:
        """Lift the backoff of pages whose wait is over; forget failures that are old (quiet
        for as long as the last wait)."""
        if self.retry_vpn.size == 0:
            return
        wait = retry_after * (1 << (self.retry_fails.astype(np.int64) - 1))
        due = self.retry_until <= now
        if due.any():
            flat = self.extents.flat_of(self.retry_vpn[due])
            flat = flat[flat >= 0]
            w, m = page_bits(flat)
            self.backoff[w] &= ~m
        stale = self.retry_until + wait <= now
        if stale.any():
            self._drop_retry(stale)

    def _drop_retry(self, drop: np.ndarray) -> None:
        flat = self.extents.flat_of(self.retry_vpn[drop])
        flat = flat[flat >= 0]
        w, m = page_bits(flat)
        self.backoff[w] &= ~m
        keep = ~drop
        self.retry_vpn = self.retry_vpn[keep]
        self.retry_fails = self.retry_fails[keep]
        self.retry_until = self.retry_until[keep]

    @property
    def backoff_pages(self) -> int:
        return int(np.bitwise_count(self.backoff).sum(dtype=np.int64))

    # -- changes of shape --------------------------------------------------------------------
    def remap(self, extents: Extents) -> None:
        """The VMAs changed: keep the state of words that are still tracked, start new words
        fresh (zeros: not present, no history, node unknown).  Histograms and selection see
        the new layout after the next ``commit``."""
        if extents == self.extents:
            return
        old = self.extents
        old_hist, old_nodes, old_pres, old_back = self.hist, self.nodes, self.present_planes, self.backoff
        old_top = self.top
        self._alloc(extents.words)
        # overlapping word ranges of old and new extents: a merge over the two sorted lists
        i = j = 0
        while i < len(old) and j < len(extents):
            a0, a1 = int(old.word_start[i]), int(old.word_start[i] + old.nwords[i])
            b0, b1 = int(extents.word_start[j]), int(extents.word_start[j] + extents.nwords[j])
            lo, hi = max(a0, b0), min(a1, b1)
            if lo < hi:
                src = slice(int(old.offset[i]) + lo - a0, int(old.offset[i]) + hi - a0)
                dst = slice(int(extents.offset[j]) + lo - b0, int(extents.offset[j]) + hi - b0)
                self.hist[:, dst] = old_hist[:, src]
                self.nodes[:, dst] = old_nodes[:, src]
                self.present_planes[:, dst] = old_pres[:, src]
                self.backoff[dst] = old_back[src]
                if self.has_top:
                    self.top[:, dst] = old_top[:, src]
            if a1 <= b1:
                i += 1
            else:
                j += 1
        self.extents = extents
        if self.retry_vpn.size:
            inside = extents.flat_of(self.retry_vpn) >= 0
            self.retry_vpn = self.retry_vpn[inside]
            self.retry_fails = self.retry_fails[inside]
            self.retry_until = self.retry_until[inside]
        # chunk boundaries moved: treat every chunk as active for a window; the per-chunk
        # histograms stay empty until the next commit (the engine always commits right after
        # a remap; recomputing here would double the cost of every mmap)
        self.chunk_seen.fill(self.samples)

    def carve(self, src: PageState, off: int, extents: Extents, base_vpn: int) -> None:
        """Become the state of a part of ``src``: its flat words off.. (``extents.words`` of
        them) whose real extents are ``extents``, at synthetic vpn ``base_vpn`` in ``src``
        (a process leaving a shared pack for one of its own, tierd/engine/pack.py): history,
        nodes, presence, backoff, top counters and retry entries come along; the per-chunk
        histograms follow at the next commit."""
        if (src.window, src.node_ids) != (self.window, self.node_ids):
            self.set_window(src.window)
            self.set_node_ids(src.node_ids)
        self.extents = extents
        self._alloc(extents.words)
        part = slice(off, off + extents.words)
        self.hist[:] = src.hist[:, part]
        self.nodes[:] = src.nodes[:, part]
        self.present_planes[:] = src.present_planes[:, part]
        self.backoff[:] = src.backoff[part]
        if self.has_top:
            self.top[:] = src.top[:, part]
        self.head, self._cur, self.samples = src.head, src._cur, src.samples
        self.chunk_seen.fill(self.samples)
        mine = (src.retry_vpn >= base_vpn) & (src.retry_vpn < base_vpn + (extents.pages and
                int(extents.word_start[-1] + extents.nwords[-1]) * PAGES_PER_WORD))
        self.retry_vpn = src.retry_vpn[mine] - base_vpn
        self.retry_fails = src.retry_fails[mine]
        self.retry_until = src.retry_until[mine]

    def _recompute(self) -> None:
        """Per-chunk histograms from the current planes, without taking a new sample."""
        rows = self.history_rows()
        nn = len(self.node_ids)
        seg_sub = self._seg_sub_zero()
        for ch, lo, hi in self._chunks():
            one = self._one_segment(lo, hi)
            if seg_sub is not None and one is None:
                self.chunk_sub[ch] = self._segment_pass(lo, hi, rows, self.present[lo:hi],
                                                        self.nodes[:, lo:hi], seg_sub)
                continue
            masks = [self.nodes[c, lo:hi] for c in range(nn)] + [self._unknown_mask(lo, hi)]
            counts = self._kernel.subset_counts([r[lo:hi] for r in rows], masks)
            for c, m in enumerate(masks):
                counts[1 + c, 0] = int(np.bitwise_count(m).sum(dtype=np.int64))
            self.chunk_sub[ch] = counts[1:]
            if seg_sub is not None:
                seg_sub[one] += counts[1:]
        np.matmul(self.chunk_sub, _MOEBIUS_T, out=self.chunk_hist)
        if seg_sub is not None:
            np.matmul(seg_sub, _MOEBIUS_T, out=self.seg_hist)
        self._pop_valid[:] = True

    def set_window(self, window: int) -> None:
        """Change the history length, keeping the newest min(old, new) samples."""
        window = int(window)
        if window == self.window:
            return
        rows = self.history_rows()
        keep = min(window, self.window)
        hist = np.zeros((window, self.words), dtype=np.uint64)
        # newest at row 0 of the new ring; older samples at rows window-1, window-2 ...
        for k in range(keep):
            hist[(-k) % window] = rows[k]
        self.hist = hist
        self.head = 0
        self.window = window
        self.top = np.zeros((TOP_BITS, self.words if self.has_top else 0), dtype=np.uint64)
        self._kernel = shared_kernel(window, self.chunk_words)
        self._est_reset()
        self._recompute()

    def set_node_ids(self, node_ids: Sequence[int]) -> None:
        """Follow a topology change: nodes keep their planes, new nodes get empty ones,
        vanished nodes' pages become unknown."""
        node_ids = tuple(int(n) for n in node_ids)
        if node_ids == self.node_ids:
            return
        planes = np.zeros((len(node_ids), self.words), dtype=np.uint64)
        for i, nid in enumerate(node_ids):
            if nid in self.node_ids:
                planes[i] = self.nodes[self.node_ids.index(nid)]
        self.nodes = planes
        self.node_ids = node_ids
        self.chunk_sub = np.zeros((self.chunk_seen.size, len(node_ids) + 1, LEVELS), dtype=np.int64)
        self.chunk_hist = np.zeros_like(self.chunk_sub)
        self._est_reset()
        self._recompute()

