"""Every tracked process is a segment of a shared page state: one state model for all.

A ``Pack`` is one ``PageState`` holding several processes side by side: process i's address
space is laid at word ``slot << SLOT_SHIFT`` of a synthetic address space (48-bit user space
ends at 2**31 words), so the pack's state is an ordinary state of one "process" whose
extents are its members' extents side by side, with one segment per member.  Commits,
selections and the folding of move_pages results are one pass per pack; the only
per-process work left is the kernel's (maps, access bits, move_pages) and a few scalars.
With one state per process, 200 processes of 50 MiB took 9-11x the engine time of one
10 GiB process; packed, 1.4-1.8x (benchmarks/README.md, issue 7).

A lone large process is a pack of one: a process of more than ``PACK_WORDS`` words of
tracked address space (1 GiB), or one mapped above 2**31 words (5-level page tables), gets
a pack of its own at slot 0 (synthetic addresses are its real ones).  Smaller processes
share packs of up to ``PACK_MAX_WORDS`` words (a change of any member's mappings copies the
pack's planes: a pack stays small enough for that to be cheap).  A member of a shared pack
that grows past twice ``PACK_WORDS``, or grows its pack past twice ``PACK_MAX_WORDS``, moves
to a pack of its own, and takes its history, nodes, backoff and retry table with it
(``PageState.carve``).

``Tracked`` is the one object per process: its identity (the ``ProcessRef``), its place in a
pack, and what it holds outside the pack (the reader's file descriptors and caches for its
pid, the huge-page tracker's holds); ``close()`` releases all of it.

Shared memory (MAP_SHARED mappings: shm, memfd, shared files; PostgreSQL's shared_buffers)
is tracked once: each shared object (maps' dev and inode) is a ``Tracked`` of its own whose
"address space" is the object's page offsets (``mappers``: which tracked process maps which
part where).  Its sample is the OR of every mapper's accessed bits for those pages; it is
moved once, through one live mapper's addresses, with MPOL_MF_MOVE_ALL (the kernel refuses
MPOL_MF_MOVE for a page mapped more than once: EACCES).  The mapping processes' own segments
leave their shared mappings out, so a target's pages count shared memory once.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from tierd.engine.hotness import LEVELS
from tierd.engine.state import CHUNK_WORDS, PAGES_PER_WORD, Extents, PageState
from tierd.pages import PAGE_SHIFT

log = logging.getLogger("tierd")

PACK_WORDS = 4096  # 262144 pages: 1 GiB of tracked address space at most, to share a pack
PACK_MAX_WORDS = 4 * CHUNK_WORDS
SLOT_SHIFT = 31  # words: a member's synthetic address space starts at slot << 31
SLOT_MAX = 1 << 26  # slots per pack (synthetic vpns stay below 2**63); then a new pack


@dataclass(frozen=True)
class SharedRef:
    """The identity of a shared object: (dev, inode) from maps; ``pid`` a live mapper (its
    node queries and moves go through that process's addresses), ``target`` its first
    mapper's target (where its pages count)."""

    dev: str
    inode: int
    pid: int
    target: str
    name: str = ""

    @property
    def key(self) -> tuple:
        return ("shared", self.dev, self.inode)


class Tracked:
    """One tracked process: identity, its segment of a pack, what it holds (see the module
    docstring).  ``reader`` and ``huge`` are the engine's access-bit reader and huge-page
    splitter as of this process's last sample: ``close`` releases what they hold for it."""

    __slots__ = ("ref", "pack", "slot", "ext", "samples", "seg", "off", "reader", "huge", "spans",
                 "mappers", "via", "mapped")

    def __init__(self, ref) -> None:
        self.ref = ref
        self.pack: Pack | None = None
        self.slot = 0
        self.ext: Extents | None = None  # the real extents of the last maps read
        self.samples = 0  # samples committed since it joined
        self.seg: int | None = None  # segment index in the pack's state (None: no words)
        self.off = 0  # flat word offset of its segment
        self.reader = None
        self.huge = None
        # a process: its shared mappings, [(object key, first vpn, end vpn, first page offset)]
        self.spans: list = []
        # a shared object: who maps which pages, [(pid, first vpn, end vpn, first page offset)]
        self.mappers: list | None = None
        # a shared object: per page of its extents, the index in ``mappers`` of one that had
        # it present at the last sample (-1: none); int16, 2 bytes per shared page
        self.via: np.ndarray | None = None
        # a process: (maps as last read, page-granular reader?, their extents), so that
        # unchanged mappings are not turned into extents again every interval
        self.mapped: tuple | None = None

    @property
    def key(self) -> Hashable:
        return self.ref.key

    @property
    def pid(self) -> int:
        return self.ref.pid

    @property
    def base_vpn(self) -> int:
        """Synthetic vpn of real vpn 0: real = synthetic - base_vpn."""
        return (self.slot << SLOT_SHIFT) * PAGES_PER_WORD

    @property
    def shared(self) -> bool:
        """A shared object rather than a process."""
        return self.mappers is not None

    def address_jobs(self, vpns: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Its (real) vpns -> [(pid, indices into vpns, addresses)]: one job for a process;
        for a shared object (vpns are page offsets) each page through a mapper that had it
        present at the last sample, else the first mapper that maps it (pages no tracked
        process maps any more are left out)."""
        v = np.asarray(vpns, dtype=np.int64)
        if self.mappers is None:
            return [(self.pid, np.arange(v.size), v.astype(np.uint64) << np.uint64(PAGE_SHIFT))]
        out = []

        def job(pid, lo, hi, pg, idx):
            """The pages idx that this mapping maps go through it; returns the others."""
            inside = (v[idx] >= pg) & (v[idx] < pg + hi - lo)
            mine = idx[inside]
            if mine.size:
                out.append((pid, mine, (v[mine] - pg + lo).astype(np.uint64) << np.uint64(PAGE_SHIFT)))
            return idx[~inside]

        k = np.full(v.size, -1, dtype=np.int64)
        if self.via is not None and self.via.size == self.pages:
            f = self.ext.flat_of(v)
            k[f >= 0] = self.via[f[f >= 0]]
            k[k >= len(self.mappers)] = -1
        # pages a mapper had present, grouped by that mapper with one sort (not one pass over
        # every page per mapper: hundreds of database backends map one buffer pool)
        has = np.flatnonzero(k >= 0)
        order = has[np.argsort(k[has], kind="stable")]
        spill = [np.flatnonzero(k < 0)]
        for grp in np.split(order, np.flatnonzero(np.diff(k[order])) + 1) if order.size else ():
            spill.append(job(*self.mappers[int(k[grp[0]])], grp))
        left = np.sort(np.concatenate(spill))
        for pid, lo, hi, pg in self.mappers:  # the others: the first mapper that maps them
            if not left.size:
                break
            left = job(pid, lo, hi, pg, left)
        return out

    @property
    def words(self) -> int:
        return self.ext.words if self.ext is not None else 0

    @property
    def pages(self) -> int:
        return self.words * PAGES_PER_WORD

    @property
    def state(self) -> PageState | None:
        return None if self.pack is None else self.pack.state

    def histograms(self) -> np.ndarray:
        """[nclasses, 16]: this process's pages by class and hotness (its segment's)."""
        st = self.pack.state
        if self.seg is None or st.seg_hist is None:
            return np.zeros((st.nclasses, LEVELS), dtype=np.int64)
        return st.seg_hist[self.seg]

    def backoff_histograms(self) -> np.ndarray:
        h = self.pack.backoff_histograms()
        if self.seg is None or h is None:
            return np.zeros((self.pack.state.nclasses, LEVELS), dtype=np.int64)
        return h[self.seg]

    def top_histograms(self) -> np.ndarray:
        return self.pack.state.top_histograms(self.seg)

    def flat_of(self, vpns) -> np.ndarray:
        """Real vpns -> flat pages of the pack's state (-1: not tracked)."""
        return self.pack.state.extents.flat_of(np.asarray(vpns, dtype=np.int64) + self.base_vpn)

    def vpn_of(self, pages) -> np.ndarray:
        """Flat pages of its segment -> real vpns (uint64)."""
        return self.pack.state.extents.vpn_of(pages) - np.uint64(self.base_vpn)

    def close(self) -> None:
        """Release everything held for this process: its segment (history, nodes, backoff
        and retry entries leave the pack at its next layout), the reader's descriptors and
        caches for its pid, the huge-page holds and verdicts, and the identity's handle
        (a ProcessRef that holds one has ``close``)."""
        if self.pack is not None:
            self.pack.remove(self.key)
            self.pack = None
        if self.huge is not None:
            self.huge.forget(self.key)
            self.huge = None
        if self.mappers is not None:  # a shared object: no pid of its own to release
            self.reader = None
            return
        try:
            if self.reader is not None:
                self.reader.close(self.pid)
        except OSError as e:  # close(2) released the descriptor whatever it reports
            log.debug("pid %d: closing its tracking files: %s", self.pid, e)
        finally:  # the identity's handle goes whatever the reader did
            self.reader = None
            closer = getattr(self.ref, "close", None)  # a dirfd identity (issue 17, #2)
            if closer is not None:
                closer()


class Pack:
    """Processes side by side in one PageState (a pack of one for a large process)."""

    def __init__(self, window: int, node_ids, chunk_words: int, solo: bool = False) -> None:
        self.members: dict[Hashable, Tracked] = {}
        self.state = PageState(Extents([], []), window, node_ids, chunk_words)
        self.solo = solo  # a large process's own: nobody joins
        self._backoff: np.ndarray | None = None
        self._backoff_version = -1
        self.version = 0  # bumped whenever backoff may change (moves folded in, commits)
        self._next_slot = 0
        # the members' words as they joined, recounted at each layout: whether a newcomer
        # still fits, without summing every member per newcomer
        self.joined_words = 0

    def add(self, proc: Tracked) -> None:
        # never a slot used before: until the next layout the state still holds a departed
        # member's words there, and a newcomer must not inherit their history or nodes
        proc.pack, proc.slot, proc.seg = self, self._next_slot, None
        self.members[proc.key] = proc
        self._next_slot += 1
        self.joined_words += proc.words

    def remove(self, key: Hashable) -> None:
        """The member leaves; its words go at the next ``layout``."""
        self.members.pop(key, None)

    def layout(self, node_ids) -> None:
        """The members' current extents side by side (by slot): remap the shared state
        (kept words keep their history) and set one segment per member with words."""
        st = self.state
        st.set_node_ids(node_ids)
        ws, nw, segs = [], [], []
        for m in sorted(self.members.values(), key=lambda m: m.slot):
            m.seg = None
            if m.ext is None or not m.ext.words:
                continue
            ws.append(m.ext.word_start + (m.slot << SLOT_SHIFT))
            nw.append(m.ext.nwords)
            segs.append(m)
        ext = Extents(np.concatenate(ws) if ws else [], np.concatenate(nw) if nw else [])
        changed = ext != st.extents
        if changed:
            st.remap(ext)
        self.joined_words = sum(m.ext.words for m in segs)
        off = 0
        starts = []
        for i, m in enumerate(segs):
            m.seg, m.off = i, off
            starts.append(off)
            off += m.ext.words
        if starts and (changed or st.seg_start is None or st.seg_start.size != len(starts)):
            st.set_segments(starts)
        elif not starts:
            st.seg_start = st.seg_hist = None

    def backoff_histograms(self) -> np.ndarray | None:
        if self.state.seg_start is None:
            return None
        if self._backoff_version != self.version:
            self._backoff = self.state.backoff_histograms(by_segment=True)
            self._backoff_version = self.version
        return self._backoff

    def members_of(self, pages: np.ndarray) -> list[tuple[Tracked, int, int]]:
        """Sorted flat pages -> [(member, a, b)]: pages[a:b] are that member's."""
        st = self.state
        if st.seg_start is None or not pages.size:
            return []
        bounds = np.searchsorted(pages // PAGES_PER_WORD, np.append(st.seg_start, st.words))
        by_seg = {m.seg: m for m in self.members.values() if m.seg is not None}
        return [(by_seg[s], int(bounds[s]), int(bounds[s + 1]))
                for s in np.flatnonzero(np.diff(bounds)).tolist() if s in by_seg]


class Packs:
    """The engine's packs: which pack each process is in."""

    def __init__(self) -> None:
        self.packs: list[Pack] = []

    def __iter__(self):
        return iter(list(self.packs))

    def __len__(self) -> int:
        return len(self.packs)

    def stage(self, proc: Tracked, ext: Extents, window: int, node_ids, chunk_words: int) -> None:
        """Record this interval's extents of ``proc``: it joins a pack if new, and moves to
        a pack of its own (with its history) once too big to share one."""
        top = int(ext.word_start[-1] + ext.nwords[-1]) if len(ext) else 0
        big = top > 1 << SLOT_SHIFT
        pk = proc.pack
        grown = ext.words - proc.words
        # a member grown past twice the packing size goes to a pack of its own; so does one
        # that grows a pack past twice its size limit (members that joined small and all
        # grew would make every layout copy a pack many times PACK_MAX_WORDS)
        if pk is not None and not pk.solo and (big or ext.words > 2 * PACK_WORDS or (
                grown > 0 and pk.joined_words + grown > 2 * PACK_MAX_WORDS)):
            self._alone(proc, window, node_ids, chunk_words)
        elif pk is not None and not pk.solo:
            pk.joined_words += grown  # recounted at the next layout
        elif pk is None:
            proc.ext = ext
            if big or ext.words > PACK_WORDS:
                pk = Pack(window, node_ids, chunk_words, solo=True)
                self.packs.append(pk)
            else:
                pk = next((p for p in self.packs if not p.solo and p._next_slot < SLOT_MAX
                           and p.joined_words + ext.words <= PACK_MAX_WORDS), None)
                if pk is None:
                    pk = Pack(window, node_ids, chunk_words)
                    self.packs.append(pk)
            pk.add(proc)
        proc.ext = ext

    def _alone(self, proc: Tracked, window: int, node_ids, chunk_words: int) -> None:
        """Move ``proc`` from its shared pack to one of its own, keeping its words' state
        (as last laid out: the next layout remaps it to its new extents)."""
        old = proc.pack
        pk = Pack(window, node_ids, chunk_words, solo=True)
        if proc.seg is not None:
            pk.state.carve(old.state, proc.off, proc.ext, proc.base_vpn)
        old.remove(proc.key)
        samples = proc.samples
        pk.add(proc)
        proc.samples = samples
        self.packs.append(pk)

    def prune(self) -> None:
        """Packs without members go."""
        self.packs = [pk for pk in self.packs if pk.members]
