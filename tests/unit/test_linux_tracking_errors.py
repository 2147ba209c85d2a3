"""What the readers say when an interface is missing or the process is gone, and how they open
the files (found by mutation testing).  Trees as in test_linux_tracking."""

from __future__ import annotations

import errno
import fcntl
import os

import pytest
from test_linux_tracking import PageIdleTree, write_idle_bitmap

from tierd.linux import FeatureMissing, IdleBitmapReader, ProcessGone
from tierd.linux import tracking
from tierd.linux.tracking import pack_bits


def test_pack_bits_says_why():
    with pytest.raises(ValueError, match="^bit count must be a multiple of 64$"):
        pack_bits([True] * 65)


def test_idle_bitmap_default_root_and_rdwr_descriptor(tmp_path):
    assert IdleBitmapReader().procfs.root == "/proc"
    write_idle_bitmap(tmp_path / "10/idle_bitmap", {0: (1, 0)})
    with IdleBitmapReader(str(tmp_path)) as r:
        r.sample(10, 0, 1)
        # O_RDWR: the patch clears the Accessed bits it reports only for writable opens
        (fd,) = r._fds.values()
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC


def test_idle_bitmap_missing_names_the_patch(tmp_path):
    (tmp_path / "14").mkdir()
    with pytest.raises(FeatureMissing) as ei:
        IdleBitmapReader(str(tmp_path)).sample(14, 0, 1)
    assert ei.value.feature == "idle_bitmap"
    assert ei.value.what == "/proc/PID/idle_bitmap does not exist (tierd kernel patch, not upstream)"
    assert ei.value.how_to_fix.startswith("build and boot the patched kernel")


def test_idle_bitmap_gone_names_the_pid_and_why(tmp_path, monkeypatch):
    write_idle_bitmap(tmp_path / "13/idle_bitmap", {}, nrec=0)
    with pytest.raises(ProcessGone) as ei:
        IdleBitmapReader(str(tmp_path)).sample(13, 100, 2)
    assert ei.value.pid == 13 and str(ei.value) == "process 13 has exited (idle_bitmap: end of file)"

    def esrch(*a, **kw):
        raise OSError(errno.ESRCH, "No such process")

    write_idle_bitmap(tmp_path / "15/idle_bitmap", {0: (1, 0)})
    monkeypatch.setattr(tracking, "pread_full", esrch)
    with pytest.raises(ProcessGone) as ei:
        IdleBitmapReader(str(tmp_path)).sample(15, 0, 1)
    assert ei.value.pid == 15 and str(ei.value) == (
        "process 15 has exited (idle_bitmap: ESRCH; or it called execve(): a new process to tierd)")


def test_page_idle_missing_files_name_feature_and_fix(tmp_path):
    t = PageIdleTree(tmp_path)
    t.map(0, 10)
    os.remove(t.sys / "kernel/mm/page_idle/bitmap")
    with pytest.raises(FeatureMissing) as ei:
        t.reader().sample(t.pid, 0, 1)
    assert ei.value.feature == "page_idle"
    assert ei.value.how_to_fix == ("boot a kernel with CONFIG_IDLE_PAGE_TRACKING=y, or tierd's "
                                   "patched kernel")
    assert ei.value.what.startswith(f"{t.sys}/kernel/mm/page_idle/bitmap does not exist (")
    t = PageIdleTree(tmp_path / "b")
    t.map(0, 10)
    os.remove(t.proc / "kpageflags")
    with pytest.raises(FeatureMissing) as ei:
        t.reader().sample(t.pid, 0, 1)
    assert ei.value.feature == "kpageflags"
    assert ei.value.how_to_fix == "boot a kernel with CONFIG_PROC_PAGE_MONITOR=y"
    assert ei.value.what == f"{t.proc}/kpageflags does not exist (CONFIG_PROC_PAGE_MONITOR)"



def test_page_idle_without_pfns_says_since_when(tmp_path):
    t = PageIdleTree(tmp_path)
    t.pagemap[5] = 1 << 63  # present, PFN hidden (unprivileged reader since Linux 4.2)
    t.flush()
    with pytest.raises(FeatureMissing) as ei:
        t.reader().sample(t.pid, 0, 1)
    assert (ei.value.feature, ei.value.how_to_fix) == (
        "pagemap_pfn", "run tierd as root (it needs CAP_SYS_ADMIN)")
    assert ei.value.what == ("/proc/PID/pagemap shows no page frame numbers (hidden without "
                             "CAP_SYS_ADMIN since Linux 4.2)")
