"""Small processes packed into shared page state (tierd/engine/pack.py): per-segment
histograms and selection against per-page references, and the engine end to end: packed
or not, the same placement."""

from __future__ import annotations

import numpy as np
import pytest
from engine_fakes import PAGE, FakeKernel, FakeProc
from test_engine_daemon import PID, make_engine, make_policy

from tierd.engine import pack
from tierd.engine.hotness import LEVELS
from tierd.engine.state import Extents, PageState
from tierd.policy import Policy, TargetSpec
from tierd.sim import simulate as sim


def random_state(rng, seg_words, nodes=(0, 1), chunk_words=64, samples=6):
    """A segmented state with random presence, history, nodes (some unknown) and backoff."""
    words = int(sum(seg_words))
    st = PageState(Extents([0], [words]), 8, nodes, chunk_words)
    st.set_segments(np.concatenate(([0], np.cumsum(seg_words)[:-1])))
    present = rng.integers(0, 1 << 63, words, dtype=np.uint64) | rng.integers(0, 1 << 63, words, dtype=np.uint64)
    for s in range(samples):
        p, a = st.sample_buffers()
        p[:] = present
        a[:] = rng.integers(0, 1 << 63, words, dtype=np.uint64) & rng.integers(0, 1 << 63, words, dtype=np.uint64)
        st.commit()
        if s == 1:
            pages = np.flatnonzero(np.unpackbits(present.view(np.uint8), bitorder="little"))
            node = rng.choice([-1, *nodes], pages.size, p=[0.1] + [0.9 / len(nodes)] * len(nodes))
            known = node >= 0
            st.set_node(pages[known], st.hotness(pages[known]), st.unknown, node[known])
    back = rng.choice(np.flatnonzero(np.unpackbits(present.view(np.uint8), bitorder="little")), 50,
                      replace=False)
    st.fail(np.sort(back), 1, 3)
    return st


def reference_hist(st: PageState, lo_word: int, hi_word: int) -> np.ndarray:
    pages = np.arange(lo_word * 64, hi_word * 64)
    pres = ((st.present[pages >> 6] >> (pages & 63).astype(np.uint64)) & np.uint64(1)).astype(bool)
    pages = pages[pres]
    node = st.node_of(pages)
    cls = np.array([st.class_of(int(n)) for n in node], dtype=np.int64)
    h = np.zeros((st.nclasses, LEVELS), np.int64)
    np.add.at(h, (cls, st.hotness(pages).astype(np.int64)), 1)
    return h


@pytest.mark.parametrize("seg_words", [[5, 70, 1, 30, 100], [64, 64], [200]])
def test_segment_histograms_match_per_page_counts(seg_words):
    """Segments straddling chunk boundaries (64-word chunks) included."""
    st = random_state(np.random.default_rng(len(seg_words)), seg_words)
    bounds = np.concatenate(([0], np.cumsum(seg_words)))
    for s in range(len(seg_words)):
        assert np.array_equal(st.segment_histograms()[s], reference_hist(st, bounds[s], bounds[s + 1])), s
    assert np.array_equal(st.segment_histograms().sum(axis=0), st.histograms())
    # kept current by moves, like the per-chunk histograms
    pages = np.flatnonzero(np.unpackbits(st.nodes[1].view(np.uint8), bitorder="little"))[:300]
    st.set_node(pages, st.hotness(pages), 1, 0)
    for s in range(len(seg_words)):
        assert np.array_equal(st.segment_histograms()[s], reference_hist(st, bounds[s], bounds[s + 1])), s
    # backoff by segment sums to the plain one
    assert np.array_equal(st.backoff_histograms(by_segment=True).sum(axis=0), st.backoff_histograms())


def test_select_segments_takes_the_lowest_pages_of_each_segment():
    rng = np.random.default_rng(3)
    seg_words = [5, 70, 1, 30, 100]
    st = random_state(rng, seg_words)
    bounds = np.concatenate(([0], np.cumsum(seg_words))) * 64
    reqs = [(s, c, v, int(rng.integers(0, 40))) for s in range(5) for c in (0, 1, 2) for v in (0, 3, 5)]
    reqs += [(1, 0, 0, 7), (1, 0, 0, 9)]  # the same cell twice: disjoint pages, in order
    seg, cls, lvl, cnt = (np.array(x) for x in zip(*reqs))
    pages, sizes = st.select_segments(seg, cls, lvl, cnt)
    assert sizes.sum() == pages.size
    got = np.split(pages, np.cumsum(sizes)[:-1])
    allp = np.arange(st.pages)
    pres = ((st.present[allp >> 6] >> (allp & 63).astype(np.uint64)) & np.uint64(1)).astype(bool)
    back = ((st.backoff[allp >> 6] >> (allp & 63).astype(np.uint64)) & np.uint64(1)).astype(bool)
    used: dict = {}
    for (s, c, v, n), g in zip(reqs, got):
        cand = allp[pres & ~back & (allp >= bounds[s]) & (allp < bounds[s + 1])]
        cand = cand[(st.hotness(cand) == v) & (np.array([st.class_of(int(x)) for x in st.node_of(cand)]) == c)]
        k = used.get((s, c, v), 0)
        assert np.array_equal(g, cand[k: k + n]), (s, c, v, n)
        used[(s, c, v)] = k + g.size


def test_select_segments_limit():
    st = random_state(np.random.default_rng(5), [40, 40])
    pages, sizes = st.select_segments([0, 1], [1, 1], [0, 0], [500, 500], limit=100)
    assert pages.size == 100 and sizes.sum() == 100


def run(spec_text, intervals, monkeypatch, packed: bool):
    if not packed:  # every process in a pack of its own
        monkeypatch.setattr(pack, "PACK_WORDS", -1)
    text, _, rest = spec_text.partition(",")
    n, _, size = text[5:].partition("x")
    kv = dict(p.split("=") for p in rest.split(","))
    spec = sim._from_mapping({"machine": {"fast": kv["fast"]}, "intervals": intervals,
                              "processes": [{"size": size, "dist": "zipf:1.1"} for _ in range(int(n))]},
                             spec_text)
    pol = Policy(source="<test>", interval=5.0, targets=(TargetSpec("sim"),), rate=64 << 20)
    seen = {}
    rows, machine = sim.simulate(pol, spec, intervals,
                                 on_end=lambda e, m: seen.update(packs=len(e.packs),
                                                                 solo={u.pack.solo for u in e.units.values()}))
    return rows, seen


def test_packed_processes_are_placed_exactly_as_unpacked(monkeypatch):
    """20 small processes: sharing one pack or each in a pack of one changes the cost, not
    one move."""
    packed, seen = run("many:20x2MiB,fast=24MiB", 8, monkeypatch, packed=True)
    assert seen == {"packs": 1, "solo": {False}}
    with monkeypatch.context() as m:
        plain, seen = run("many:20x2MiB,fast=24MiB", 8, m, packed=False)
    assert seen == {"packs": 20, "solo": {True}}
    key = [(r.hit, r.promoted, r.demoted, r.queried, r.fast_used) for r in packed]
    assert key == [(r.hit, r.promoted, r.demoted, r.queried, r.fast_used) for r in plain]
    assert sum(r.promoted for r in packed) > 0


def test_packed_process_exits_grows_and_joins(monkeypatch):
    """A packed process that exits is dropped (its pages leave the shared state); one that
    grows past twice the packing size moves to a pack of its own with its history;
    newcomers join the pack."""
    k = FakeKernel(fast_total=1 << 30, fast_free=1 << 29)
    procs = [k.add(FakeProc(PID + i, 128, base=0x7F00_0000_0000 + (i << 32), node=1)) for i in range(4)]
    pol = make_policy(targets=(TargetSpec(name="app", pids=tuple(p.pid for p in procs)),))
    eng = make_engine(k, pol, pids=tuple(p.pid for p in procs))
    for p in procs:
        p.next_access |= {p.vpn(i) for i in range(10)}
    eng.step()
    eng.step()
    assert len(eng.packs) == 1 and len(eng.packs.packs[0].members) == 4
    u = eng.units[(PID, 0.0)]
    assert not u.pack.solo and u.histograms().sum() == 128 and u.samples == 2
    k.procs.pop(PID + 3)  # exits
    stats = eng.step()
    assert stats.dropped == 1 and len(eng.packs.packs[0].members) == 3
    eng.step()
    assert eng.packs.packs[0].state.pages == 3 * 128
    big = procs[0]  # grows past 2 * PACK_WORDS words
    big.vmas.append(type(big.vmas[0])(0x1000_0000_0000, 0x1000_0000_0000 + (2 * pack.PACK_WORDS + 1) * 64 * PAGE,
                                      "rw-p", 0, "00:00", 0, ""))
    big.next_access |= {big.vpn(i) for i in range(10)}
    eng.step()
    u = eng.units[(PID, 0.0)]
    assert u.pack.solo and u.samples == 5 and len(eng.packs.packs[0].members) == 2
    # its history came along: the 10 pages accessed in every sample are hot (a fresh
    # state would show nothing: a page's first sample carries no recency)
    h = u.histograms()
    assert h[:, 1:].sum() == 10 and h.sum() == 128


def test_members_that_grow_do_not_grow_their_pack_past_twice_its_limit(monkeypatch):
    """The size limit was checked only when a member joined: members that joined small and
    grew (each still under 2 * PACK_WORDS) made a pack many times PACK_MAX_WORDS."""
    monkeypatch.setattr(pack, "PACK_WORDS", 8)
    monkeypatch.setattr(pack, "PACK_MAX_WORDS", 8)
    k = FakeKernel(fast_total=1 << 30, fast_free=1 << 29)
    procs = [k.add(FakeProc(PID + i, 128, base=0x7F00_0000_0000 + (i << 32), node=1)) for i in range(4)]
    pids = tuple(p.pid for p in procs)
    eng = make_engine(k, make_policy(targets=(TargetSpec(name="app", pids=pids),)), pids=pids)
    eng.step()
    eng.step()
    assert len(eng.packs) == 1 and eng.packs.packs[0].state.words == 8  # 4 x 2 words
    for p in procs:  # each grows to 10 words, under 2 * PACK_WORDS
        p.vmas.append(type(p.vmas[0])(p.vmas[0].end + (1 << 20), p.vmas[0].end + (1 << 20) + 8 * 64 * PAGE,
                                      "rw-p", 0, "00:00", 0, ""))
    eng.step()
    assert max(pk.state.words for pk in eng.packs) <= 2 * pack.PACK_MAX_WORDS
    assert sum(pk.state.words for pk in eng.packs) == 4 * 10  # every member still tracked
    assert all(u.samples == 3 for u in eng.units.values())  # with its history


def test_a_newcomer_never_inherits_a_departed_members_words(monkeypatch):
    """One process leaves and another with the same mappings joins in the same interval:
    the newcomer starts fresh (its pages' node unknown, then queried; no history)."""
    from tierd.engine.targets import ProcessRef

    k = FakeKernel(fast_total=1 << 30, fast_free=1 << 29)
    a = k.add(FakeProc(PID, 128, node=0))
    k.add(FakeProc(PID + 1, 128, base=0x7F10_0000_0000, node=1))
    eng = make_engine(k, make_policy(targets=(TargetSpec(name="app"),)), pids=(PID, PID + 1))
    for _ in range(3):
        a.next_access |= {a.vpn(i) for i in range(128)}
        eng.step()
    assert eng.units[(PID, 0.0)].histograms()[0, 1:].sum() == 128  # on node 0, accessed
    k.procs.pop(PID)
    k.add(FakeProc(PID + 2, 128, node=1))  # same addresses as a, on node 1
    eng.resolver.refs = [ProcessRef(PID + 1, 0.0, "app"), ProcessRef(PID + 2, 0.0, "app")]
    eng.step()
    h = eng.units[(PID + 2, 0.0)].histograms()
    assert h[:, 1:].sum() == 0  # no history
    assert h[1, 0] == 128 and h[0].sum() == 0  # learned (queried) on node 1, not a's node 0
