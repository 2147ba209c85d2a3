"""Edge words: a clearing read never covers pages of a mapping tierd does not track.

idle_bitmap clears whole 64-page records and page_idle marks whole PFN words, so a range that
is rounded out to words would clear the Accessed bits of an untracked neighbour in the same
word (issue 9, item 9).  tracked_extents() leaves such words out; these tests check it on its
own (against a brute-force model) and through the engine with the fake kernel, whose reader
clears every page of the words it reads, as the kernel does.
"""

from __future__ import annotations

from engine_fakes import PAGE, FakeKernel, FakeProc
from hypothesis import given
from hypothesis import strategies as st

from tierd.engine.daemon import Engine
from tierd.engine.state import Extents
from tierd.engine.targets import ProcessRef, StaticResolver
from tierd.linux import tracked_extents
from tierd.linux.procfs import Vma
from tierd.policy import Policy, TargetSpec

PID = 4242
BASE = 0x7F00_0000_0000  # 64-page aligned


def vma(first_page: int, pages: int, perms: str = "rw-p", path: str = "") -> Vma:
    return Vma(BASE + first_page * PAGE, BASE + (first_page + pages) * PAGE, perms, 0, "00:00", 0,
               path)


def test_a_word_shared_with_an_untracked_mapping_is_left_out_and_counted():
    # tracked [0, 100) pages, PROT_NONE [100, 164), tracked [164, 300): words 1 and 2 are shared
    ext = Extents.from_vmas([vma(0, 100), vma(100, 64, "---p"), vma(164, 136)])
    w0 = BASE // PAGE // 64
    assert ext.word_start.tolist() == [w0, w0 + 3]
    assert ext.nwords.tolist() == [1, 2]  # pages 0..63 and 192..319 (300..319: unmapped)
    assert ext.edge_pages == (100 - 64) + (192 - 164)


def test_rounding_out_into_unmapped_space_is_kept():
    ext = Extents.from_vmas([vma(10, 20), vma(200, 10, path="[vdso]")])
    assert ext.word_start.tolist() == [BASE // PAGE // 64] and ext.nwords.tolist() == [1]
    assert ext.edge_pages == 0


def test_a_small_mapping_between_two_untracked_ones_is_not_tracked_at_all():
    ext = Extents.from_vmas([vma(0, 10, "---p"), vma(10, 20), vma(30, 5, "---p")])
    assert len(ext) == 0 and ext.edge_pages == 20


@st.composite
def layouts(draw):
    """Disjoint VMAs in address order: (first page, pages, tracked)."""
    out, page = [], draw(st.integers(0, 200))
    for _ in range(draw(st.integers(0, 12))):
        page += draw(st.sampled_from([0, 0, 1, 63, 64, 65, 200]))  # often adjacent
        n = draw(st.integers(1, 300))
        out.append((page, n, draw(st.booleans())))
        page += n
    return out


@given(layouts())
def test_tracked_extents_against_a_page_by_page_model(layout):
    t = [(p, n) for p, n, tracked in layout if tracked]
    s = [(p, n) for p, n, tracked in layout if not tracked]
    ws, nw, edge = tracked_extents([p * PAGE for p, _ in t], [(p + n) * PAGE for p, n in t],
                                   [p * PAGE for p, _ in s], [(p + n) * PAGE for p, n in s])
    tracked_pages = {q for p, n in t for q in range(p, p + n)}
    skipped_words = {q // 64 for p, n in s for q in range(p, p + n)}
    want = {q // 64 for q in tracked_pages} - skipped_words
    got = {w for a, n in zip(ws.tolist(), nw.tolist()) for w in range(a, a + n)}
    assert got == want  # every word of a tracked page, except those an untracked page shares
    assert (nw > 0).all() and (ws[1:] > ws[:-1] + nw[:-1]).all()  # ascending, not touching
    assert edge == sum(1 for q in tracked_pages if q // 64 in skipped_words)


def two_samples_beside_a_prot_none_neighbour(k: FakeKernel):
    """A 100-page tracked mapping and a 40-page PROT_NONE (untracked) neighbour whose pages
    have their Accessed bits set, sampled twice by the engine: (proc, neighbour pages, engine)."""
    proc = k.add(FakeProc(PID, 100, base=BASE))
    neighbour = vma(100, 40, "---p")
    proc.vmas.append(neighbour)
    nb = set(range(neighbour.start // PAGE, neighbour.end // PAGE))
    for v in nb:
        proc.node[v] = 1
    policy = Policy(source="<test>", interval=1.0, targets=(TargetSpec(name="app", pids=(PID,)),),
                    rate=1 << 30, batch=4 << 20, retry_after=4)
    eng = Engine(k, policy, resolver=StaticResolver([ProcessRef(PID, 0.0, "app")]),
                 clock=lambda: 0.0)
    proc.next_access |= nb | {proc.vpn(i) for i in range(0, 100, 7)}
    eng.step()
    eng.step()
    return proc, nb, eng


def test_engine_reads_do_not_clear_an_untracked_neighbours_accessed_pages():
    """Two adjacent mappings, the second PROT_NONE (not tracked) with pages whose Accessed
    bits are set.  The engine's samples must leave them set: the fake reader clears every
    page of the words it reads, so rounding the tracked mapping out to whole words (the old
    extents()) clears them."""
    proc, nb, eng = two_samples_beside_a_prot_none_neighbour(FakeKernel())
    assert nb <= proc.next_access, f"{len(nb - proc.next_access)} untracked pages cleared"
    # the tracked pages that share word 1 with the neighbour are not tracked, and counted
    assert not {proc.vpn(i) for i in range(64)} & proc.next_access  # word 0 was read
    (unit,) = eng.units.values()
    assert unit.ext.edge_pages == 100 - 64
    assert unit.ext.nwords.tolist() == [1]
