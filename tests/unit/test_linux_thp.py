"""tierd/linux/thp.py on fixture trees: THP blocks from pagemap + kpageflags, debugfs split."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tierd.linux.errors import FeatureMissing, ProcessGone
from tierd.linux.thp import ThpSplitter, block_runs
from tierd.pages import KPF_COMPOUND_HEAD, KPF_THP

PID = 4242
PRESENT = 1 << 63


def tree(tmp_path, entries: dict[int, int], flags: dict[int, int], debugfs=True, pid=PID):
    """/proc/PID/pagemap with ``entries`` {vpn: pfn}, /proc/kpageflags with ``flags``
    {pfn: flags}, and (optionally) a debugfs split_huge_pages file."""
    proc, dbg = tmp_path / "proc", tmp_path / "debug"
    (proc / str(pid)).mkdir(parents=True)
    dbg.mkdir()
    with open(proc / str(pid) / "pagemap", "wb") as f:
        for vpn, pfn in entries.items():
            f.seek(8 * vpn)
            f.write((PRESENT | pfn).to_bytes(8, "little"))
    with open(proc / "kpageflags", "wb") as f:
        for pfn, fl in flags.items():
            f.seek(8 * pfn)
            f.write(fl.to_bytes(8, "little"))
    if debugfs:
        (dbg / "split_huge_pages").write_text("")
    return ThpSplitter(str(proc), str(dbg)), dbg / "split_huge_pages"


THP_HEAD = 1 << KPF_THP | 1 << KPF_COMPOUND_HEAD


def test_is_thp_needs_a_thp_head_at_the_block_start(tmp_path):
    # block 512: THP head; block 1024: a normal page; block 1536: THP tail (not a head);
    # block 2048: not present
    sp, _ = tree(tmp_path, {512: 100, 1024: 200, 1536: 301},
                 {100: THP_HEAD, 200: 1 << 5, 301: 1 << KPF_THP | 1 << 16})
    got = sp.is_thp(PID, np.array([512, 1024, 1536, 2048]))
    assert got.tolist() == [True, False, False, False]


def test_is_thp_without_pfns_names_the_missing_privilege(tmp_path):
    sp, _ = tree(tmp_path, {512: 0}, {})
    with pytest.raises(FeatureMissing, match="pagemap_pfn"):
        sp.is_thp(PID, np.array([512]))


def test_split_writes_one_range_per_run_of_adjacent_blocks(tmp_path):
    sp, f = tree(tmp_path, {}, {})
    assert sp.feature().available
    assert sp.split(PID, np.array([1536, 512, 1024, 4096])) == 2
    assert f.read_text() == f"{PID},0x200000,0x800000{PID},0x1000000,0x1200000"
    assert block_runs([]) == []


def test_missing_debugfs_is_a_feature_naming_version_and_fix(tmp_path):
    sp, _ = tree(tmp_path, {}, {}, debugfs=False)
    feat = sp.feature()
    assert not feat.available and "5.13" in feat.since and "CONFIG_DEBUG_FS" in feat.how_to_fix
    assert "mount -t debugfs" in feat.how_to_fix
    with pytest.raises(FeatureMissing):
        sp.split(PID, np.array([512]))


def test_gone_process(tmp_path):
    sp, _ = tree(tmp_path, {}, {})
    with pytest.raises(ProcessGone):
        sp.is_thp(PID + 1, np.array([512]))



class FakeMadvise:
    """process_madvise that 'splits' by clearing KPF_THP of the blocks' PFNs (or does not)."""

    def __init__(self, kpageflags, pfn_of, splits=True):
        self.kpageflags, self.pfn_of, self.splits = kpageflags, pfn_of, splits
        self.calls = []

    def process_madvise(self, pidfd, ranges, advice):
        self.calls.append((ranges.tolist(), advice))
        if self.splits:
            with open(self.kpageflags, "r+b") as f:
                for start, _ in ranges.tolist():
                    f.seek(8 * self.pfn_of[start >> 12])
                    f.write((1 << 5).to_bytes(8, "little"))
        return int(ranges[:, 1].sum())


def madvise_tree(tmp_path, splits):
    me = os.getpid()  # pidfd_open needs a live process
    entries = {512: 100, 1024: 200}
    sp, f = tree(tmp_path, entries, {100: THP_HEAD, 200: THP_HEAD}, pid=me)
    fake = FakeMadvise(tmp_path / "proc" / "kpageflags", entries, splits)
    return ThpSplitter(str(tmp_path / "proc"), str(tmp_path / "debug"), fake), fake, f, me


def test_split_by_process_madvise_cold_on_one_page_of_each_block(tmp_path):
    sp, fake, f, me = madvise_tree(tmp_path, splits=True)
    assert sp.feature().available and "5.10" in sp.feature().since
    sp.split(me, np.array([512, 1024]))
    assert fake.calls == [([[512 << 12, 4096], [1024 << 12, 4096]], 20)]  # MADV_COLD
    assert sp.last_method == "madvise" and f.read_text() == ""
    assert not sp.is_thp(me, np.array([512, 1024])).any()


def test_a_kernel_that_does_not_split_on_madvise_falls_back_to_debugfs(tmp_path):
    sp, fake, f, me = madvise_tree(tmp_path, splits=False)
    sp.split(me, np.array([512, 1024]))
    assert sp.last_method == "debugfs" and f.read_text() == f"{me},0x200000,0x600000"
    sp.split(me, np.array([512]))
    assert len(fake.calls) == 1  # not tried again
    assert "5.13" in sp.feature().since


class DeniedMadvise:
    def __init__(self):
        self.calls = 0

    def process_madvise(self, pidfd, ranges, advice):
        import errno

        self.calls += 1
        raise PermissionError(errno.EPERM, "process_madvise needs CAP_SYS_NICE")


def test_process_madvise_refused_without_debugfs_is_a_missing_feature_naming_the_fix(tmp_path):
    me = os.getpid()
    entries = {512: 100}
    tree(tmp_path, entries, {100: THP_HEAD}, debugfs=False, pid=me)
    fake = DeniedMadvise()
    sp = ThpSplitter(str(tmp_path / "proc"), str(tmp_path / "debug"), fake)
    with pytest.raises(FeatureMissing, match="CAP_SYS_NICE") as e:
        sp.split(me, np.array([512]))
    assert "systemctl edit tierd" in e.value.how_to_fix and "refused" in e.value.what
    with pytest.raises(FeatureMissing):
        sp.split(me, np.array([512]))
    assert fake.calls == 1  # EPERM is for good: not asked again


def test_process_madvise_refused_falls_back_to_debugfs_where_it_exists(tmp_path):
    me = os.getpid()
    _, f = tree(tmp_path, {512: 100}, {100: THP_HEAD}, pid=me)
    sp = ThpSplitter(str(tmp_path / "proc"), str(tmp_path / "debug"), DeniedMadvise())
    sp.split(me, np.array([512]))
    assert sp.last_method == "debugfs" and f.read_text() == f"{me},0x200000,0x400000"
