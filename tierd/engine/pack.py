"""Small processes packed into shared page state, so hundreds of them cost what one does.

With one ``PageState`` per process, every interval costs a fixed number of numpy calls per
process (a commit, a histogram, a selection and a fold of move_pages results each), and for
a process of a few thousand pages those calls, not the pages, are the time: 200 processes of
50 MiB took 9-11x the engine time of one 10 GiB process.  Here small processes share one
``PageState``: member i's address space is laid at word ``slot << SLOT_SHIFT`` of a synthetic
address space (48-bit user space ends at 2**30 words), so the packed state is an ordinary
state of one "process" whose extents are the members' extents side by side.  Commits,
selections and move results are then one pass per pack; the only per-member work left is
the kernel's (maps, access bits, move_pages) and a few scalars.  Per-member histograms (what
placement shares by) come from the state's segments: one segment per member, counted with
one reduceat per chunk (``PageState.set_segments``, ``select_segments``).

Which processes are packed: at least ``PACK_MIN`` processes are tracked and the process's
tracked address space is at most ``PACK_WORDS`` words (1 GiB); a member that grows past
twice that leaves its pack and starts over in a state of its own (its history is lost once).
A pack holds at most ``PACK_MAX_WORDS`` words (a change of any member's mappings copies the
pack's planes).  Huge pages of packed processes are not split (tierd/engine/huge.py works on
per-process states; a packed process has at most 512 huge pages).

``MemberView`` is what the rest of the engine sees as such a unit's ``state``: its
histograms, sample count and sizes; everything else happens on the pack.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from tierd.engine.hotness import LEVELS
from tierd.engine.state import CHUNK_WORDS, PAGES_PER_WORD, Extents, PageState

PACK_WORDS = 4096  # 262144 pages: 1 GiB of tracked address space at most
PACK_MIN = 16  # processes tracked before small ones are packed
PACK_MAX_WORDS = 4 * CHUNK_WORDS
SLOT_SHIFT = 31  # words: a member's synthetic address space starts at slot << 31
SLOT_MAX = 1 << 26  # slots per pack (synthetic vpns stay below 2**63); then a new pack
REAL_VPN_MASK = (1 << (SLOT_SHIFT + 6)) - 1  # a member's own vpn: the bits below its slot


class Member:
    __slots__ = ("key", "pid", "slot", "ext", "samples", "seg", "off", "staged")

    def __init__(self, key: Hashable, pid: int, slot: int) -> None:
        self.key = key
        self.pid = pid
        self.slot = slot
        self.ext: Extents | None = None  # the real extents of the last maps read
        self.samples = 0
        self.seg: int | None = None  # segment index in the pack's state (None: no words)
        self.off = 0  # flat word offset in the pack's state
        self.staged = False  # maps read this interval

    @property
    def base_words(self) -> int:
        return self.slot << SLOT_SHIFT


class MemberView:
    """A packed process's ``unit.state`` as the engine and its observers read it."""

    packed = True

    def __init__(self, pack: Pack, member: Member) -> None:
        self.pack = pack
        self.member = member

    @property
    def samples(self) -> int:
        return self.member.samples

    @property
    def node_ids(self) -> tuple[int, ...]:
        return self.pack.state.node_ids

    @property
    def window(self) -> int:
        return self.pack.state.window

    @property
    def words(self) -> int:
        return self.member.ext.words if self.member.ext is not None else 0

    @property
    def pages(self) -> int:
        return self.words * PAGES_PER_WORD

    @property
    def nbytes(self) -> int:
        st = self.pack.state
        return st.nbytes * self.words // max(1, st.words)

    @property
    def est(self) -> np.ndarray:  # counted once per pack (Engine._gain)
        return np.zeros_like(self.pack.state.est)

    @property
    def present(self) -> np.ndarray:
        return self.pack.state.present[self.member.off: self.member.off + self.words]

    def histograms(self) -> np.ndarray:
        st = self.pack.state
        if self.member.seg is None or st.seg_hist is None:
            return np.zeros((st.nclasses, LEVELS), dtype=np.int64)
        return st.seg_hist[self.member.seg]

    def backoff_histograms(self) -> np.ndarray:
        h = self.pack.backoff_histograms()
        if self.member.seg is None or h is None:
            return np.zeros((self.pack.state.nclasses, LEVELS), dtype=np.int64)
        return h[self.member.seg]

    def hotness(self, pages: np.ndarray) -> np.ndarray:
        return self.pack.state.hotness(np.asarray(pages, dtype=np.int64) + self.member.off * 64)

    def expire(self, now: int, retry_after: int) -> None:  # the pack's, once (Engine.step)
        pass

    def set_window(self, window: int) -> None:  # the pack's (Engine.set_policy)
        pass


class Pack:
    """Up to PACK_MAX_WORDS words of small processes in one PageState."""

    def __init__(self, window: int, node_ids, chunk_words: int) -> None:
        self.members: dict[Hashable, Member] = {}
        self.state = PageState(Extents([], []), window, node_ids, chunk_words)
        self._backoff: np.ndarray | None = None
        self._backoff_version = -1
        self.version = 0  # bumped whenever backoff may change (moves folded in, commits)
        self._next_slot = 0
        # the members' words as they joined, recounted at each layout: whether a newcomer
        # still fits, without summing every member per newcomer
        self.joined_words = 0

    @property
    def words(self) -> int:
        return sum(m.ext.words for m in self.members.values() if m.ext is not None)

    def add(self, key: Hashable, pid: int) -> Member:
        # never a slot used before: until the next layout the state still holds a departed
        # member's words there, and a newcomer must not inherit their history or nodes
        m = self.members[key] = Member(key, pid, self._next_slot)
        self._next_slot += 1
        return m

    def remove(self, key: Hashable) -> None:
        """The member leaves; its words go at the next ``layout``."""
        self.members.pop(key, None)

    def layout(self, node_ids) -> None:
        """The members' current extents side by side (by slot): remap the shared state
        (kept words keep their history) and set one segment per member with words."""
        st = self.state
        st.set_node_ids(node_ids)
        ws, nw, segs = [], [], []
        order = sorted(self.members.values(), key=lambda m: m.slot)
        for m in order:
            m.seg = None
            if m.ext is None or not m.ext.words:
                continue
            ws.append(m.ext.word_start + m.base_words)
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

    def real_addresses(self, pages: np.ndarray) -> np.ndarray:
        """Flat pages of the pack -> their addresses in their own process (the slot sits
        above the highest user address bit, so masking it off is enough)."""
        vpn = self.state.extents.vpn_of(pages) & np.uint64(REAL_VPN_MASK)
        return vpn << np.uint64(12)


class Packs:
    """The engine's packs: which units are packed, and where."""

    def __init__(self) -> None:
        self.packs: list[Pack] = []
        self.where: dict[Hashable, Pack] = {}

    def __iter__(self):
        return iter(self.packs)

    def __len__(self) -> int:
        return len(self.packs)

    def member(self, key: Hashable) -> Member | None:
        pk = self.where.get(key)
        return None if pk is None else pk.members.get(key)

    def wants(self, unit, ext: Extents, units: int) -> bool:
        """Whether ``unit`` is (or now becomes) packed, given its extents and how many
        processes are tracked."""
        if len(ext) and int(ext.word_start[-1] + ext.nwords[-1]) > 1 << SLOT_SHIFT:
            return False  # above 512 TiB (5-level page tables): a state of its own
        if unit.ref.key in self.where:
            return ext.words <= 2 * PACK_WORDS
        return unit.state is None and 0 < ext.words <= PACK_WORDS and units >= PACK_MIN

    def stage(self, unit, ext: Extents, window: int, node_ids, chunk_words: int) -> None:
        """Record this interval's extents of a packed unit (joining a pack if new)."""
        key = unit.ref.key
        pk = self.where.get(key)
        if pk is None:
            pk = next((p for p in self.packs if p.joined_words + ext.words <= PACK_MAX_WORDS
                       and p._next_slot < SLOT_MAX), None)
            if pk is None:
                pk = Pack(window, node_ids, chunk_words)
                self.packs.append(pk)
            self.where[key] = pk
            pk.joined_words += ext.words
            m = pk.add(key, unit.ref.pid)
            unit.state = MemberView(pk, m)
        m = pk.members[key]
        m.pid = unit.ref.pid
        m.ext = ext
        m.staged = True

    def leave(self, unit) -> None:
        """``unit`` grew too big: out of its pack, a state of its own from its next sample."""
        self.remove(unit.ref.key)
        unit.state = None

    def remove(self, key: Hashable) -> None:
        pk = self.where.pop(key, None)
        if pk is not None:
            pk.remove(key)
            if not pk.members:
                self.packs.remove(pk)
