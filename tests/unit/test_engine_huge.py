"""Huge page splitting (tierd/engine/huge.py): the pure decision, the block scan, and the
engine end to end on a fake kernel with THP semantics (one Accessed bit and one node per
2 MiB block until it is split)."""

from __future__ import annotations

import numpy as np
import pytest
from engine_fakes import FakeKernel, FakeProc, FakeReader

from tierd.engine.daemon import Engine
from tierd.engine.huge import HPAGE_PAGES, SplitTracker, density, uniform_hot_blocks
from tierd.engine.state import Extents, PageState
from tierd.engine.targets import ProcessRef, StaticResolver
from tierd.linux.features import Feature
from tierd.policy import Policy, TargetSpec

PID = 4242
MIB = 1 << 20


# -- the decision --------------------------------------------------------------------------------


def blocks(n, start=0):
    return np.arange(start, start + n, dtype=np.int64) * HPAGE_PAGES


def test_no_split_while_everything_hot_fits():
    t = SplitTracker(dense=0.5)
    for now in range(1, 10):
        assert t.decide("p", now, blocks(32), True, lambda b: np.ones(b.size)).size == 0
    assert t.verdict("p") is None


def test_sparse_probes_then_the_rest_is_split():
    t = SplitTracker(dense=0.5, watch=2, max_split=10)
    cand = blocks(32)
    probes = t.decide("p", 1, cand, False, None)
    assert probes.tolist() == cand[:4].tolist()  # 1/8 of the candidates, hottest first
    rest = cand[4:]
    assert t.decide("p", 2, rest, False, None).size == 0  # watching
    out = t.decide("p", 3, rest, False, lambda b: np.full(b.size, 0.06))
    assert t.verdict("p") == "sparse" and out.tolist() == rest[:10].tolist()
    # the splits made room: the rest would fit whole now, and is split all the same
    assert t.decide("p", 4, rest[10:], True, None).tolist() == rest[10:20].tolist()


def test_dense_probes_keep_the_rest_whole_until_recheck():
    t = SplitTracker(dense=0.5, watch=2, recheck=50)
    cand = blocks(16)
    assert t.decide("p", 1, cand, False, None).size == 2
    assert t.decide("p", 3, cand[2:], False, lambda b: np.full(b.size, 0.9)).size == 0
    assert t.verdict("p") == "dense"
    for now in range(4, 53):
        assert t.decide("p", now, cand[2:], False, None).size == 0
    assert t.decide("p", 53, cand[2:], False, None).tolist() == cand[2:3].tolist()  # re-probe


# -- the block scan --------------------------------------------------------------------------------


def state_with(history: list[np.ndarray], npages=4 * HPAGE_PAGES, base_vpn=0x7F0000000):
    """A PageState of one extent, every page present, with the given accessed bool arrays
    (oldest first) committed as samples after a priming one."""
    ext = Extents([base_vpn // 64], [npages // 64])
    st = PageState(ext, 8, (0, 1))
    from tierd.linux.tracking import pack_bits

    for acc in [np.ones(npages, bool)] + history:
        present, accessed = st.sample_buffers()
        present[:] = pack_bits(np.ones(npages, bool))
        accessed[:] = pack_bits(acc)
    # (each iteration must commit: done below)
        st.commit()
    return st


def test_uniform_hot_blocks_are_the_thp_like_ones():
    n = 4 * HPAGE_PAGES
    acc = np.zeros(n, bool)
    acc[0:512] = True  # block 0: all accessed (THP-like), hot
    acc[512:1024:2] = True  # block 1: half accessed: not uniform
    # block 2: never accessed: not hot; block 3: all accessed in the first sample only
    first = acc.copy()
    first[1536:] = True
    st = state_with([first, acc])
    vpns, hot = uniform_hot_blocks(st)
    base = 0x7F0000000
    assert sorted(vpns.tolist()) == [base, base + 3 * 512]
    assert vpns[0] == base and hot[0] > hot[1]  # hottest first
    assert density(st, np.array([base, base + 512]), 1).tolist() == [1.0, 0.5]


# -- end to end on a fake THP kernel -----------------------------------------------------------------


class ThpProc(FakeProc):
    """A FakeProc whose mapping is ``nhuge`` THPs: one node and one Accessed bit per block."""

    def __init__(self, pid, nhuge, node=1):
        super().__init__(pid, nhuge * HPAGE_PAGES, node=node)
        self.huge = set(range(self.vpn(0), self.vpn(0) + nhuge * HPAGE_PAGES, HPAGE_PAGES))

    def block(self, vpn):
        b = vpn - vpn % HPAGE_PAGES
        return b if b in self.huge else None


class ThpReader(FakeReader):
    def sample(self, pid, word_start, nwords):
        proc = self.kernel.proc(pid)
        for b in {proc.block(v) for v in proc.next_access} - {None}:
            proc.next_access |= set(range(b, b + HPAGE_PAGES))  # the PMD's one bit
        return super().sample(pid, word_start, nwords)


class FakeSplitter:
    def __init__(self, kernel, available=True):
        self.kernel = kernel
        self.available = available
        self.splits: list[list[int]] = []

    def feature(self):
        return Feature("thp_split", self.available, "test", "fake", "" if self.available else "fix")

    def is_thp(self, pid, vpns):
        return np.array([int(v) in self.kernel.proc(pid).huge for v in vpns], bool)

    def split(self, pid, vpns):
        proc = self.kernel.proc(pid)
        self.splits.append([int(v) for v in vpns])
        for v in vpns:
            if int(v) in proc.huge:
                proc.huge.discard(int(v))
                proc.next_access |= set(range(int(v), int(v) + HPAGE_PAGES))  # young PMD copied


class ThpKernel(FakeKernel):
    def __init__(self, **kw):
        super().__init__(**kw)
        self._reader = ThpReader(self)
        self.splitter = FakeSplitter(self)

    def thp(self):
        return self.splitter

    def move_pages(self, pid, addrs, nodes=None, flags=0, batch=4096):
        proc = self.proc(pid)
        if nodes is not None:  # a huge page moves whole: every subpage goes with the first
            for a, n in zip(np.asarray(addrs).tolist(), np.asarray(nodes).tolist()):
                b = proc.block(a // 4096)
                if b is not None and proc.node[b] != n:
                    for v in range(b, b + HPAGE_PAGES):
                        if proc.node[v] != n:
                            self.mem[proc.node[v]][1] += 4096
                            self.mem[n][1] -= 4096
                            proc.node[v] = n
        return super().move_pages(pid, addrs, nodes, flags, batch)


def run(kernel, proc, hot_pages, steps, **pol):
    policy = Policy(source="<t>", interval=1.0, interval_auto=False,
                    targets=(TargetSpec(name="app", pids=(PID,)),), metrics_listen="", **pol)
    eng = Engine(kernel, policy, resolver=StaticResolver([ProcessRef(PID, 0.0, "app")]),
                 clock=lambda: 0.0)
    splits = 0
    for _ in range(steps):
        proc.next_access |= {proc.vpn(i) for i in hot_pages}
        splits += eng.step().split
    where = np.array([proc.node[proc.vpn(i)] for i in range(len(proc.node))])
    hot = np.zeros(where.size, bool)
    hot[list(hot_pages)] = True
    cold = where[~hot]
    return eng, splits, (where[hot] == 0).mean(), (cold == 0).mean() if cold.size else 0.0


NHUGE = 16
SPARSE = [b * HPAGE_PAGES + j for b in range(NHUGE) for j in range(0, HPAGE_PAGES, 16)]  # 6%


def small_fast():
    """Fast node room (above keep_free) 12 MiB: the 32 MiB of hot huge pages do not fit,
    their 2 MiB of hot subpages do."""
    return ThpKernel(fast_total=100 * MIB, fast_free=22 * MIB)


def test_sparse_hot_huge_pages_are_split_and_only_hot_subpages_promoted():
    k = small_fast()
    proc = k.add(ThpProc(PID, NHUGE))
    eng, splits, hot_fast, cold_fast = run(k, proc, SPARSE, 14)
    assert splits == NHUGE and not proc.huge
    assert eng.huge.tracker.verdict((PID, 0.0)) == "sparse"
    assert hot_fast >= 0.9, hot_fast
    assert cold_fast <= 0.10, cold_fast


def test_without_splitting_sparse_huge_pages_drag_cold_data():
    """The same workload with huge_pages.split off: what the split avoids."""
    k = small_fast()
    proc = k.add(ThpProc(PID, NHUGE))
    _, splits, hot_fast, cold_fast = run(k, proc, SPARSE, 14, huge_split=False)
    assert splits == 0 and hot_fast < 0.5 and cold_fast > 0.2


def test_dense_hot_huge_pages_are_kept_whole():
    k = small_fast()
    proc = k.add(ThpProc(PID, NHUGE))
    eng, splits, _, _ = run(k, proc, range(NHUGE * HPAGE_PAGES), 14)
    assert eng.huge.tracker.verdict((PID, 0.0)) == "dense"
    assert splits == 2 and len(proc.huge) == NHUGE - 2  # only the probes were split


def test_no_split_when_the_fast_tier_holds_all_hot_huge_pages():
    k = ThpKernel(fast_total=1024 * MIB, fast_free=900 * MIB)
    proc = k.add(ThpProc(PID, NHUGE))
    _, splits, hot_fast, _ = run(k, proc, SPARSE, 8)
    assert splits == 0 and len(proc.huge) == NHUGE and hot_fast == 1.0


def test_splitting_unavailable_is_reported_once_and_skipped(caplog):
    k = small_fast()
    k.splitter.available = False
    proc = k.add(ThpProc(PID, NHUGE))
    with caplog.at_level("WARNING", logger="tierd"):
        _, splits, _, _ = run(k, proc, SPARSE, 6)
    assert splits == 0 and caplog.text.count("will not be split") == 1 and "fix" in caplog.text


@pytest.mark.parametrize("text, value", [("huge_pages:\n  split: off\n", False),
                                         ("huge_pages:\n  split: auto\n", True)])
def test_policy_huge_pages_split(text, value):
    from tierd.policy import parse_policy

    assert parse_policy(text).huge_split is value


def test_a_probe_the_kernel_left_whole_is_not_judged():
    """split_huge_pages skips folios it cannot lock: such a probe still has one Accessed bit
    (it would read as densely hot), so it is dropped and another probe is taken."""
    k = small_fast()
    proc = k.add(ThpProc(PID, NHUGE))
    real_split = k.splitter.split
    busy = {proc.vpn(0), proc.vpn(512)}  # both first probes are locked the first time

    def split(pid, vpns):
        real_split(pid, [v for v in vpns if int(v) not in busy])
        busy.clear()

    k.splitter.split = split
    eng, splits, hot_fast, cold_fast = run(k, proc, SPARSE, 14)
    assert eng.huge.tracker.verdict((PID, 0.0)) == "sparse"
    assert not proc.huge and hot_fast >= 0.9 and cold_fast <= 0.1


def test_undecided_huge_pages_are_held_then_released():
    k = small_fast()
    proc = k.add(ThpProc(PID, NHUGE))
    eng, _, _, _ = run(k, proc, range(NHUGE * HPAGE_PAGES), 2)  # dense; the probe is out
    st = eng.units[(PID, 0.0)].state
    assert st.backoff_pages == (NHUGE - 2) * HPAGE_PAGES  # all but the probes, not moved
    assert all(proc.node[proc.vpn(i)] == 1 for i in range(2 * HPAGE_PAGES, NHUGE * HPAGE_PAGES))
    for _ in range(4):  # the verdict (dense) releases them
        proc.next_access |= {proc.vpn(i) for i in range(NHUGE * HPAGE_PAGES)}
        eng.step()
    assert eng.huge.tracker.verdict((PID, 0.0)) == "dense" and st.backoff_pages == 0


def test_once_sparse_the_rest_is_split_even_when_it_would_now_fit():
    """Room for 11 of the 16 huge pages, 4 splits per interval: after a few splits the rest
    would fit whole; moved whole they would drag their cold pages (rig S4 at 512 MiB)."""
    k = ThpKernel(fast_total=100 * MIB, fast_free=32 * MIB)
    proc = k.add(ThpProc(PID, NHUGE))
    policy = Policy(source="<t>", interval=1.0, interval_auto=False,
                    targets=(TargetSpec(name="app", pids=(PID,)),), metrics_listen="")
    eng = Engine(k, policy, resolver=StaticResolver([ProcessRef(PID, 0.0, "app")]),
                 clock=lambda: 0.0)
    eng.huge.tracker.max_split = 4
    for _ in range(16):
        proc.next_access |= {proc.vpn(i) for i in SPARSE}
        eng.step()
    where = np.array([proc.node[proc.vpn(i)] for i in range(NHUGE * HPAGE_PAGES)])
    hot = np.zeros(where.size, bool)
    hot[SPARSE] = True
    assert not proc.huge
    assert (where[hot] == 0).mean() >= 0.9 and (where[~hot] == 0).mean() <= 0.1


def test_a_recollapsed_block_is_a_candidate_at_its_first_uniform_sample():
    """khugepaged collapsed a split range back: its history is still per-subpage, but the
    newest sample is one Accessed bit again."""
    n = 4 * HPAGE_PAGES
    split_era = np.zeros(n, bool)
    split_era[0:512:16] = True  # block 0 split: a few hot subpages
    now = split_era.copy()
    now[0:512] = True  # collapsed: the PMD's bit covers all 512
    st = state_with([split_era, split_era, now])
    vpns, _ = uniform_hot_blocks(st)
    assert vpns.tolist() == [0x7F0000000]
    st2 = state_with([split_era, split_era, split_era])
    assert uniform_hot_blocks(st2)[0].size == 0


def test_a_range_khugepaged_collapses_back_is_split_and_its_hot_pages_return():
    """khugepaged collapses a split range back onto the slow node (where most of it is),
    without telling tierd: tierd splits it again and asks where its pages are."""
    k = small_fast()
    proc = k.add(ThpProc(PID, NHUGE))
    policy = Policy(source="<t>", interval=1.0, interval_auto=False,
                    targets=(TargetSpec(name="app", pids=(PID,)),), metrics_listen="")
    eng = Engine(k, policy, resolver=StaticResolver([ProcessRef(PID, 0.0, "app")]),
                 clock=lambda: 0.0)

    def steps(n):
        for _ in range(n):
            proc.next_access |= {proc.vpn(i) for i in SPARSE}
            eng.step()

    steps(10)
    b = proc.vpn(0)
    assert not proc.huge and proc.node[b] == 0  # split, its hot page 0 promoted
    proc.huge.add(b)  # khugepaged: one huge page again, on node 1
    for v in range(b, b + HPAGE_PAGES):
        if proc.node[v] != 1:
            k.mem[0][1] += 4096
            k.mem[1][1] -= 4096
        proc.node[v] = 1
    steps(6)
    assert b not in proc.huge
    hot0 = [i for i in SPARSE if i < HPAGE_PAGES]
    assert all(proc.node[proc.vpn(i)] == 0 for i in hot0)
    assert sum(proc.node[proc.vpn(i)] == 0 for i in range(HPAGE_PAGES)) == len(hot0)


def test_splitting_is_bounded_by_the_interval_time_and_resumes_next_interval():
    """Splitting a huge page costs time (75 ms each under emulation): it may use
    SPLIT_SHARE of the interval, in SPLIT_BATCH batches, the rest waits for the next
    interval; the moves still get their share, and everything is split in the end."""
    from tierd.engine.huge import SPLIT_BATCH, SPLIT_SHARE

    nhuge = 64
    k = ThpKernel(fast_total=200 * MIB, fast_free=30 * MIB)
    proc = k.add(ThpProc(PID, nhuge))
    now = [0.0]
    real_split = k.splitter.split
    per_block = 0.1  # 1 s interval: at most ~5 blocks fit in the split share

    def split(pid, vpns):
        now[0] += per_block * len(vpns)
        real_split(pid, vpns)

    k.splitter.split = split
    policy = Policy(source="<t>", interval=1.0, interval_auto=False,
                    targets=(TargetSpec(name="app", pids=(PID,)),), metrics_listen="")
    eng = Engine(k, policy, resolver=StaticResolver([ProcessRef(PID, 0.0, "app")]),
                 clock=lambda: now[0])
    hot = [b * HPAGE_PAGES + j for b in range(nhuge) for j in range(0, HPAGE_PAGES, 16)]
    per_interval = []
    for _ in range(40):
        proc.next_access |= {proc.vpn(i) for i in hot}
        t0 = now[0]
        calls = len(k.splitter.splits)
        per_interval.append(eng.step().split)
        spent = per_block * sum(len(s) for s in k.splitter.splits[calls:])
        assert spent <= SPLIT_SHARE * 1.0 + per_block * SPLIT_BATCH  # one batch over, at most
        assert all(len(s) <= SPLIT_BATCH for s in k.splitter.splits[calls:])
        now[0] = max(now[0], t0 + 1.0)  # the daemon waits out the interval
    assert max(per_interval) <= SPLIT_BATCH * 2  # no interval split everything at once
    assert not proc.huge  # ... but all of it was split over the intervals
    assert eng.huge.tracker.verdict((PID, 0.0)) == "sparse"


def test_probes_collapsed_back_before_judgement_are_not_judged():
    """khugepaged may collapse a split probe back within seconds (its scan walks adjacent
    blocks, and the probes are adjacent): such a probe has one Accessed bit again and would
    read as 100% dense, turning a sparse process's verdict to "dense"."""
    k = small_fast()
    proc = k.add(ThpProc(PID, NHUGE))
    real_split, real_sample = k.splitter.split, k._reader.sample
    pending, collapsed, samples = [], [], [0]

    def split(pid, vpns):
        real_split(pid, vpns)
        if not collapsed and not pending:
            pending.extend(int(v) for v in vpns)
            samples[0] = 0

    def sample(pid, word_start, nwords):
        samples[0] += 1
        if pending and samples[0] == 3:  # after the priming sample and one real one,
            proc.huge.update(pending)    # khugepaged takes every probe back
            collapsed.extend(pending)
            pending.clear()
        return real_sample(pid, word_start, nwords)

    k.splitter.split = split
    k._reader.sample = sample
    eng, _, hot_fast, cold_fast = run(k, proc, SPARSE, 16)
    assert len(collapsed) >= 1  # the scenario happened
    assert eng.huge.tracker.verdict((PID, 0.0)) == "sparse"
    assert hot_fast >= 0.9 and cold_fast <= 0.10, (hot_fast, cold_fast)


class NoCapSyscalls:
    """process_madvise as the kernel answers without CAP_SYS_NICE (or a seccomp filter that
    denies it, SystemCallErrorNumber=EPERM)."""

    def __init__(self):
        self.calls = 0

    def process_madvise(self, pidfd, ranges, advice):
        import errno

        self.calls += 1
        raise PermissionError(errno.EPERM, "process_madvise needs CAP_SYS_NICE")


def test_a_missing_capability_is_one_warning_naming_the_drop_in_then_silence(tmp_path, caplog):
    """Issue 19: under a unit without CAP_SYS_NICE, every other interval logged a split
    warning per target.  Now: one WARNING that names the drop-in, then nothing."""
    import os

    from tierd.linux.thp import ThpSplitter

    k = small_fast()
    me = os.getpid()  # the real ThpSplitter opens a pidfd of the target: a live process
    proc = k.add(ThpProc(me, NHUGE))
    syscalls = NoCapSyscalls()
    splitter = ThpSplitter(str(tmp_path / "proc"), str(tmp_path / "no-debugfs"), syscalls)
    splitter.is_thp = k.splitter.is_thp  # THPs as the fake kernel has them
    k.splitter = splitter
    policy = Policy(source="<t>", interval=1.0, interval_auto=False, metrics_listen="",
                    targets=(TargetSpec(name="app", pids=(me,)),))
    eng = Engine(k, policy, resolver=StaticResolver([ProcessRef(me, 0.0, "app")]),
                 clock=lambda: 0.0)
    with caplog.at_level("DEBUG", logger="tierd"):
        for _ in range(20):
            proc.next_access |= {proc.vpn(i) for i in SPARSE}
            eng.step()
    warnings = [r.getMessage() for r in caplog.records
                if r.levelname == "WARNING" and "wait on slow memory" not in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "CAP_SYS_NICE" in warnings[0] and "systemctl edit tierd" in warnings[0]
    assert "CapabilityBoundingSet=CAP_SYS_NICE" in warnings[0]
    assert "SystemCallFilter=process_madvise pidfd_open" in warnings[0]
    assert syscalls.calls == 1 and len(proc.huge) == NHUGE  # not tried again, nothing split
