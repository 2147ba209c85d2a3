"""tierd.linux.features and the Kernel facade on fixture trees with a fake move_pages."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from tierd.linux import (
    Feature,
    FeatureMissing,
    IdleBitmapReader,
    Kernel,
    PageIdleReader,
    probe,
)
from tierd.linux.features import _probe_idle_bitmap, _probe_pagemap
from tierd.linux.procfs import ProcFS

from linux_fakes import FakeSyscalls, all_available, make_tree


def test_probe_on_fixture_tree(tmp_path):
    proc, sys = make_tree(tmp_path)
    fake = FakeSyscalls(result=7)  # a node the fixture tree does not have: the answer is news
    f = probe(proc, sys, fake)
    # the probe asks (nodes=None) where one page-aligned page of its own (pid 0) is
    ((pid, addrs, nodes),) = fake.calls
    assert pid == 0 and nodes is None and len(addrs) == 1 and addrs[0] % 4096 == 0
    assert f.move_pages.available and f.move_pages.detail == "a page of ours reports node 7"
    assert f.page_idle.available and f.kpageflags.available
    assert not f.idle_bitmap.available and "kernel/patches" in f.idle_bitmap.how_to_fix
    assert not f.pagemap_pfn.available  # the fixture has no pagemap for us
    assert f.numa.available and f.nodes == (0, 1)
    assert f.memory_tiers.available and "memory_tier67: nodes 1" in f.memory_tiers.detail
    assert f.privileges.available and f.cap_sys_admin and not f.cap_sys_nice
    # Every feature names the kernel version (or patch) that brought it.
    assert all(x.since for x in f.all()) and len(f.all()) == 9
    assert "4.3" in f.page_idle.since and "2.6.18" in f.move_pages.since
    assert "6.1" in f.memory_tiers.since and "4.2" in f.pagemap_pfn.since


def test_probe_missing_everything(tmp_path):
    proc, sys = make_tree(tmp_path, topo="no_numa", caps=0, page_idle=False, kpageflags=False)
    f = probe(proc, sys, FakeSyscalls(exc=FeatureMissing("move_pages", "CONFIG_NUMA", what="ENOSYS")))
    assert not f.move_pages.available and f.move_pages.how_to_fix == "CONFIG_NUMA"
    assert not f.page_idle.available and "CONFIG_IDLE_PAGE_TRACKING" in f.page_idle.detail
    assert not f.kpageflags.available
    assert not f.numa.available and f.nodes == (0,)
    assert not f.memory_tiers.available
    assert not f.privileges.available and "CAP_SYS_ADMIN and CAP_SYS_PTRACE" in f.privileges.detail
    assert f.readers == ()
    with pytest.raises(FeatureMissing) as ei:
        f.best_reader()
    msg = str(ei.value)
    assert "idle_bitmap" in msg and "page_idle" in msg and "Fix:" in msg


def test_probe_move_pages_page_error_is_unavailable(tmp_path):
    proc, sys = make_tree(tmp_path)
    f = probe(proc, sys, FakeSyscalls(result=-errno.EFAULT))
    assert not f.move_pages.available and "EFAULT" in f.move_pages.detail


def test_probe_queries_one_own_page(tmp_path):
    proc, sys = make_tree(tmp_path)
    fake = FakeSyscalls()
    probe(proc, sys, fake)
    assert len(fake.calls) == 1
    pid, addrs, nodes = fake.calls[0]
    assert pid == 0 and len(addrs) == 1 and addrs[0] % 4096 == 0 and nodes is None


def test_probe_pagemap_pfn_visible_or_hidden(tmp_path):
    pid_dir = tmp_path / "55"
    pid_dir.mkdir()
    (tmp_path / "kpageflags").write_bytes(b"\0" * 8)
    entries = np.zeros(8, "<u8")
    entries[5] = (1 << 63) | 777
    entries[6] = 1 << 63  # present, PFN zeroed: no CAP_SYS_ADMIN
    (pid_dir / "pagemap").write_bytes(entries.tobytes())
    procfs = ProcFS(str(tmp_path))
    f, k = _probe_pagemap(procfs, str(tmp_path), 55, 5, True)
    assert f.available and k.available
    f, _ = _probe_pagemap(procfs, str(tmp_path), 55, 6, False)
    assert not f.available and "CAP_SYS_ADMIN" in f.detail
    f, _ = _probe_pagemap(procfs, str(tmp_path), 55, 7, True)
    assert not f.available and "present" in f.detail


def test_probe_idle_bitmap_checks_our_page(tmp_path):
    (tmp_path / "56").mkdir()
    rec = np.zeros((2, 2), "<u8")
    rec[1] = (1 << 3, 0)  # vpn 64+3 present
    (tmp_path / "56" / "idle_bitmap").write_bytes(rec.tobytes())
    procfs = ProcFS(str(tmp_path))
    found, scan = _probe_idle_bitmap(procfs, 56, 67)
    assert found.available
    # A regular file answers the ioctl with ENOTTY, as a v2 kernel does: the v2 fallback.
    assert not scan.available and "ENOTTY" in scan.detail and "v2" in scan.detail
    assert "v3" in scan.since and "whole 64-page words" in scan.how_to_fix
    missing, scan = _probe_idle_bitmap(procfs, 56, 68)
    assert not missing.available and "did not report" in missing.detail
    assert not scan.available and "no idle_bitmap" in scan.detail
    # O_RDONLY probe: the file was not modified.
    assert (tmp_path / "56" / "idle_bitmap").read_bytes() == rec.tobytes()


def test_feature_require():
    Feature("x", True, "v1", "ok").require()
    with pytest.raises(FeatureMissing) as ei:
        Feature("x", False, "v1", "gone", "install it").require()
    assert ei.value.feature == "x" and str(ei.value) == "x: gone. Fix: install it"
    two = FeatureMissing("page_idle", "boot a kernel with CONFIG_IDLE_PAGE_TRACKING=y")
    assert two.how_to_fix.startswith("boot") and str(two).startswith("page_idle: not available.")


def test_reader_preference_and_requirements():
    f = all_available()
    assert f.readers == ("idle_bitmap", "page_idle") and f.best_reader() == "idle_bitmap"
    f = all_available(idle_bitmap=Feature("idle_bitmap", False, "patch", "absent", "build"))
    assert f.best_reader() == "page_idle"
    f = all_available(pagemap_pfn=Feature("pagemap_pfn", False, "4.2", "hidden", "root"))
    assert f.readers == ("idle_bitmap",)
    assert f.reader_missing("page_idle").feature == "pagemap_pfn"
    with pytest.raises(ValueError):
        f.reader_missing("damon")


def test_kernel_reader_selection(tmp_path):
    proc, sys = make_tree(tmp_path)
    k = Kernel(proc=proc, sys=sys, syscalls=FakeSyscalls())
    k._features = all_available()
    assert isinstance(k.reader(), IdleBitmapReader)
    assert isinstance(k.reader("page_idle"), PageIdleReader)
    k._features = all_available(idle_bitmap=Feature("idle_bitmap", False, "p", "absent", "build it"))
    assert isinstance(k.reader("auto"), PageIdleReader)
    with pytest.raises(FeatureMissing, match="build it"):
        k.reader("idle_bitmap")


def test_kernel_features_cached_and_topology_fresh(tmp_path):
    proc, sys = make_tree(tmp_path)
    fake = FakeSyscalls()
    k = Kernel(proc=proc, sys=sys, syscalls=fake)
    assert k.features() is k.features()
    assert len(fake.calls) == 1
    assert k.topology().ids == (0, 1)
    assert k.topology() is not k.topology()


def test_kernel_move_pages_delegates(tmp_path):
    proc, sys = make_tree(tmp_path)
    fake = FakeSyscalls(result=1)
    k = Kernel(proc=proc, sys=sys, syscalls=fake)
    st = k.move_pages(42, np.array([0x1000, 0x2000], np.uint64), np.array([1, 1], np.int32))
    assert st.tolist() == [1, 1] and fake.calls[-1][0] == 42
