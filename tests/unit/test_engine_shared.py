"""Shared memory (issue 17, deliverable 3): pages mapped by several tracked processes (shm,
memfd, a database's shared buffers) are tracked once, their accesses merged from every
mapper, moved once with MPOL_MF_MOVE_ALL; without CAP_SYS_NICE never attempted (the kernel
refuses MPOL_MF_MOVE for a page mapped more than once: EACCES), with one warning, counted.

The scenario of the issue: 20 processes map one shared region; one of them also has a
private hot set.  On the engine before this change every process counted the shared pages
(20x), every move of them was refused (EACCES) and retried, and the private hot set waited
for its turn behind them."""

from __future__ import annotations

import errno
import logging
from types import SimpleNamespace

import numpy as np
from engine_fakes import PAGE, FakeKernel, FakeProc, FakeShared
from test_engine_daemon import PID, make_engine, make_policy

from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.engine.state import Extents, carry_words
from tierd.linux.syscalls import MPOL_MF_MOVE_ALL
from tierd.policy import TargetSpec

NPROC = 20
SHARED = 4096  # pages (16 MiB), all on the slow node
HOT_SHARED = range(0, 1024)  # accessed by every mapper in every interval
PRIVATE = 512  # pages of process 0's own, all hot
SHM_AT = 0x7F10_0000_0000


class Kernel(FakeKernel):
    def __init__(self, cap_sys_nice: bool):
        super().__init__()
        self.cap = cap_sys_nice

    def features(self):
        return SimpleNamespace(cap_sys_nice=self.cap)


def scenario(cap_sys_nice: bool, intervals: int = 8, untouched_first: bool = False):
    """``untouched_first``: the first mapper maps the region but never touches it (as
    PostgreSQL's postmaster its buffer pool): no PTEs, its queries and moves get -ENOENT."""
    k = Kernel(cap_sys_nice)
    shm = FakeShared(SHARED, node=1)
    procs = []
    for i in range(NPROC):
        p = k.add(FakeProc(PID + i, PRIVATE if i == 0 else 64, base=0x7F00_0000_0000 - (i << 32), node=1))
        p.map_shared(shm, SHM_AT, touched=not (untouched_first and i == 0))  # same address in each
        procs.append(p)
    pids = tuple(p.pid for p in procs)
    eng = make_engine(k, make_policy(targets=(TargetSpec(name="app", pids=pids),)), pids=pids)
    rows = []
    for n in range(1, intervals + 1):
        for p in procs[1 if untouched_first else 0:]:
            p.next_access |= {SHM_AT // PAGE + i for i in HOT_SHARED}
        procs[0].next_access |= {procs[0].vpn(i) for i in range(PRIVATE)}
        stats = eng.step()
        private_fast = sum(procs[0].node[procs[0].vpn(i)] == 0 for i in range(PRIVATE))
        rows.append((n, stats, private_fast))
    return k, eng, shm, procs, rows


def shared_moves(k):
    """Move requests for shared pages: (pid, addresses)."""
    return [(pid, [a for a in addrs if SHM_AT <= a < SHM_AT + SHARED * PAGE])
            for kind, pid, addrs, dest in k.calls if kind == "move"]


def test_shared_pages_are_tracked_once_and_moved_once_with_move_all():
    k, eng, shm, procs, rows = scenario(cap_sys_nice=True)
    assert sum(r[1].moves.denied for r in rows) == 0  # was 857,700 refusals in 20 intervals
    hot_fast = sum(shm.node[i] == 0 for i in HOT_SHARED)
    assert hot_fast == len(HOT_SHARED), hot_fast
    # each page moved once, through one mapper
    moved = [a for _, addrs in shared_moves(k) for a in addrs]
    assert len(moved) == len(set(moved)) == len(HOT_SHARED)
    assert {pid for pid, addrs in shared_moves(k) if addrs} == {PID}
    # the private hot set is not held up behind the shared pages
    first = next(n for n, _, fast in rows if fast == PRIVATE)
    assert first <= 3, first
    # resident: the shared pages once, plus every process's own
    stats = rows[-1][1]
    ts = stats.targets["app"]
    assert ts.pages == SHARED + PRIVATE + 64 * (NPROC - 1), ts.pages
    assert ts.processes == NPROC and stats.shared_pages == SHARED and stats.shared_unmovable == 0


def test_without_cap_sys_nice_shared_pages_are_never_attempted(caplog):
    with caplog.at_level(logging.WARNING, logger="tierd"):
        k, eng, shm, procs, rows = scenario(cap_sys_nice=False)
    assert all(not addrs for _, addrs in shared_moves(k))  # not one refused attempt
    assert sum(r[1].moves.denied for r in rows) == 0
    assert all(r[1].shared_unmovable == SHARED for r in rows[1:])
    warned = [r for r in caplog.records if "CAP_SYS_NICE" in r.getMessage()]
    assert len(warned) == 1 and "app" in warned[0].getMessage()
    first = next(n for n, _, fast in rows if fast == PRIVATE)
    assert first <= 3, first
    assert rows[-1][1].targets["app"].pages == SHARED + PRIVATE + 64 * (NPROC - 1)
    # and the metrics say so
    from prometheus_client import generate_latest
    from test_integrations import samples

    from tierd.integrations.metrics import MetricsObserver, make_registry

    obs = MetricsObserver(eng, kernel_release="test")
    obs.on_interval(rows[-1][1])
    text = generate_latest(make_registry(lambda: obs.snapshot)).decode()
    assert samples(text, "tierd_shared_pages") == {(("state", "tracked"),): SHARED,
                                                   (("state", "unmovable"),): SHARED}


def test_the_fake_kernel_refuses_a_page_mapped_twice_without_move_all():
    """mm/migrate.c: page_mapcount > 1 and no MPOL_MF_MOVE_ALL -> -EACCES; one mapper: moves."""
    k = Kernel(True)
    shm = FakeShared(4)
    a, b = k.add(FakeProc(PID, 64)), k.add(FakeProc(PID + 1, 64, base=0x7E00_0000_0000))
    a.map_shared(shm, SHM_AT)
    b.map_shared(shm, SHM_AT)
    assert k.move_pages(PID, [SHM_AT], [0], flags=2).tolist() == [-errno.EACCES]
    assert k.move_pages(PID, [SHM_AT], [0], flags=4).tolist() == [0]
    b.gone = True
    assert k.move_pages(PID, [SHM_AT + PAGE], [0], flags=2).tolist() == [0]


def test_a_shared_mapping_sharing_a_word_leaves_the_neighbours_bits_to_their_owner():
    """A page-granular reader (idle_bitmap v3): the shared mapping's read skips the private
    pages in its edge word, so their accesses reach the process's own segment."""
    from test_linux_tracking_scan import PageGranularReader

    k = Kernel(True)
    k._reader = PageGranularReader(k)
    proc = k.add(FakeProc(PID, 100))  # pages 0-99: word 1 is shared with the mapping
    shm = FakeShared(128)
    proc.map_shared(shm, proc.addr(100))
    eng = make_engine(k)
    for _ in range(3):
        proc.next_access |= {proc.vpn(i) for i in range(64, 100)}
        eng.step()
    u = eng.units[(PID, 0.0)]
    hot = u.state.hotness(u.flat_of([proc.vpn(i) for i in range(64, 100)]))
    assert (hot > 0).all(), hot
    assert [(lo, hi) for s in k._reader.skips for lo, hi in s if lo == proc.vpn(64)] != []


def test_without_cap_sys_nice_a_region_one_tracked_process_maps_is_moved():
    """MPOL_MF_MOVE moves a page mapped once: a shared mapping only one tracked process maps
    (a memfd of its own) is moved without CAP_SYS_NICE."""
    k = Kernel(False)
    shm = FakeShared(256)
    proc = k.add(FakeProc(PID, 64))
    proc.map_shared(shm, SHM_AT)
    eng = make_engine(k)
    for _ in range(4):
        proc.next_access |= {SHM_AT // PAGE + i for i in range(100)}
        stats = eng.step()
    assert sum(shm.node[i] == 0 for i in range(100)) == 100
    assert stats.shared_unmovable == 0 and stats.moves.denied == 0


def test_shared_pages_move_through_a_mapper_that_has_them_present():
    """The first mapper has no PTEs in the region (PostgreSQL's postmaster never touches the
    buffer pool): moves and node queries through it would get -ENOENT and nothing would move;
    they go through a mapper whose sample had the page present."""
    k, eng, shm, procs, rows = scenario(cap_sys_nice=True, untouched_first=True)
    hot_fast = sum(shm.node[i] == 0 for i in HOT_SHARED)
    assert hot_fast == len(HOT_SHARED), hot_fast
    assert PID not in {pid for pid, addrs in shared_moves(k) if addrs}
    assert sum(r[1].moves.denied for r in rows) == 0


def test_hot_private_pages_other_processes_map_are_promoted_with_move_all_not_demoted():
    """Program text and libraries: private file pages other processes map too.  MPOL_MF_MOVE
    refuses them (EACCES); with CAP_SYS_NICE promotions use MPOL_MF_MOVE_ALL (on fast
    memory they serve the other processes too), demotions do not (a page cold here may be
    hot in a process tierd does not sample)."""
    k = Kernel(cap_sys_nice=True)
    p = k.add(FakeProc(PID, 1024, node=1))
    p.elsewhere = {p.vpn(i) for i in range(1024)}
    eng = make_engine(k, make_policy(targets=(TargetSpec(name="app", pids=(PID,)),)), pids=(PID,))
    for _ in range(6):
        p.next_access |= {p.vpn(i) for i in range(256)}
        stats = eng.step()
        assert stats.moves.denied == 0
    assert sum(p.node[p.vpn(i)] == 0 for i in range(256)) == 256
    moves = [(dest, f) for (kind, _, _, dest), f in zip(k.calls, k.flags) if kind == "move"]
    assert any(f & MPOL_MF_MOVE_ALL for _, f in moves)
    assert all(set(dest) == {0} for dest, f in moves if f & MPOL_MF_MOVE_ALL)


def test_address_jobs_go_through_the_mapper_that_had_the_page_else_the_first_that_maps_it():
    """Tracked.address_jobs for a shared object: grouped by the mapper that had each page
    present (``via``), in mapper order; the rest (no such mapper, or one that no longer maps
    the page) through the first mapper that maps it; pages nobody maps are left out."""
    import numpy as np

    from tierd.engine.pack import SharedRef, Tracked
    from tierd.engine.state import Extents

    obj = Tracked(SharedRef("00:01", 9, 1, "app"))
    obj.ext = Extents([0], [2])  # page offsets 0..127
    # (pid, first vpn, end vpn, first page offset): 1 maps 0..63, 2 maps 0..127, 3 maps 64..127
    obj.mappers = [(1, 1000, 1064, 0), (2, 5000, 5128, 0), (3, 9000, 9064, 64)]
    obj.via = np.full(128, -1, np.int16)
    obj.via[[10, 70, 71]] = 2  # present at mapper 3 (index 2) last time: 10 it does not map
    obj.via[20] = 1
    obj.via[30] = 7  # a mapper index past the list (it shrank): as if none
    jobs = obj.address_jobs(np.array([10, 20, 30, 70, 71, 200]))
    got = [(pid, idx.tolist(), (addrs >> np.uint64(12)).tolist()) for pid, idx, addrs in jobs]
    assert got == [(2, [1], [5020]), (3, [3, 4], [9006, 9007]), (1, [0, 2], [1010, 1030])]


def _carry_by_pages(plane, ws, lo, hi, pg, ext):
    """The reference: every bit unpacked, its page offset found, set in the object's words
    (what the engine did per mapper and plane before carry_words)."""
    out = np.zeros(ext.words, np.uint64)
    bits = np.flatnonzero(np.unpackbits(np.asarray(plane, "<u8").view(np.uint8), bitorder="little"))
    vpn = bits + ws * 64
    vpn = vpn[(vpn >= lo) & (vpn < hi)]
    flat = ext.flat_of(vpn - lo + pg)
    flat = flat[flat >= 0]
    np.bitwise_or.at(out, flat // 64, np.left_shift(np.uint64(1), (flat % 64).astype(np.uint64)))
    return out


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 400), st.integers(0, 300), st.integers(0, 2**32 - 1),
       st.lists(st.tuples(st.integers(0, 8), st.integers(1, 5)), min_size=1, max_size=3))
def test_carry_words_sets_the_bits_a_page_by_page_carry_sets(lo, npages, pg, seed, extents):
    """Mappings at any alignment in the object, planes wider than the mapping, objects with
    several extents (gaps): the shifted words equal the page-by-page result."""
    rng = np.random.default_rng(seed)
    hi = lo + npages
    ws, we = lo // 64 - int(rng.integers(0, 2)), -(-hi // 64) + int(rng.integers(0, 2))
    ws = max(ws, 0)
    plane = rng.integers(0, 2**63, we - ws, dtype=np.uint64) * np.uint64(2) + \
        rng.integers(0, 2, we - ws, dtype=np.uint64)
    starts, words = [], []
    at = 0
    for gap, nw in extents:
        at += gap
        starts.append(at)
        words.append(nw)
        at += nw
    ext = Extents(starts, words)
    got = np.zeros(ext.words, np.uint64)
    for start, w in carry_words(plane, ws, lo, hi, pg, ext):
        got[start: start + w.size] |= w
    assert np.array_equal(got, _carry_by_pages(plane, ws, lo, hi, pg, ext))


def test_a_mapper_that_cannot_be_read_leaves_the_shared_pages_as_they_were(caplog):
    """Mappers' reads failing with EIO (not gone) used to make the object's pages read absent
    (their history forgotten) with a debug line only: now its last sample stands, and the
    ranges are counted as unsampled and warned about."""
    k = FakeKernel()
    shm = FakeShared(SHARED)
    procs = []
    for i in range(2):
        p = k.add(FakeProc(PID + i, 64, base=0x7F00_0000_0000 - (i << 32), node=1))
        p.map_shared(shm, SHM_AT)
        procs.append(p)
    pids = tuple(p.pid for p in procs)
    eng = make_engine(k, make_policy(targets=(TargetSpec(name="app", pids=pids),)), pids=pids)
    for _ in range(4):
        for p in procs:
            p.next_access |= {SHM_AT // PAGE + j for j in HOT_SHARED}
        good = eng.step()
    reader = k.reader()
    sample = reader.sample

    def eio(pid, ws, nw, **kw):
        raise OSError(errno.EIO, "idle_bitmap: EIO")

    reader.sample = eio
    with caplog.at_level(logging.WARNING, logger="tierd"):
        stats = eng.step()
    reader.sample = sample
    assert good.targets["app"].pages == SHARED + 2 * 64 == stats.targets["app"].pages
    assert stats.targets["app"].hist[1:].sum() == good.targets["app"].hist[1:].sum()
    assert stats.unsampled_ranges >= 4  # each process's own range and its shared mapping
    assert any("not sampled" in r.getMessage() for r in caplog.records)



def test_node_sources_are_asked_about_the_mappers_own_addresses_only():
    """A shared object's extents are page offsets in the object: they were passed to the
    node source as addresses of its first mapper (words 0..64 here: addresses 0-16 MiB),
    so a mapper's unrelated pages there gave the object's pages their nodes."""
    k = FakeKernel()
    shm = FakeShared(SHARED)
    p = k.add(FakeProc(PID, 64, node=1))
    p.map_shared(shm, SHM_AT)
    asked = []

    def nodes(pid, word_start, nwords):
        asked.append((pid, word_start, nwords))
        return np.full(nwords * 64, -1, dtype=np.int16)

    k._reader.nodes = nodes
    eng = make_engine(k)
    for _ in range(2):
        eng.step()
    mapped = [(v.start >> 18, -(-v.end >> 18)) for v in p.vmas]  # in words of 64 pages
    assert asked and all(any(a <= ws and ws + nw <= b for a, b in mapped) for _, ws, nw in asked), asked
    assert eng.step().nodes[-1].sum() == 0  # the queries found every page's node


def test_the_number_of_shared_objects_is_bounded_largest_first(monkeypatch, caplog):
    """A process may map tens of thousands of memfds: each object cost a read per mapper
    and interval, without bound.  Beyond SHARED_MAX the largest are tracked, with a warning."""
    from tierd.engine import daemon

    monkeypatch.setattr(daemon, "SHARED_MAX", 4)
    k = FakeKernel()
    p = k.add(FakeProc(PID, 64, node=1))
    for i in range(10):
        p.map_shared(FakeShared(64 * (i + 1), inode=100 + i), SHM_AT + (i << 24))
    eng = make_engine(k)
    with caplog.at_level(logging.WARNING, logger="tierd"):
        for _ in range(3):
            stats = eng.step()
    assert sorted(key[2] for key in eng.shared) == [106, 107, 108, 109]
    assert stats.shared_pages == 64 * (7 + 8 + 9 + 10)
    assert [r.getMessage() for r in caplog.records].count(
        "10 shared memory objects are mapped by targets: the 4 largest are tracked, the others "
        "(1.5MiB each or less) are not") == 1
