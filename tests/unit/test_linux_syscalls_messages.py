"""What move_pages failures tell the operator, word for word (the CLI and the daemon log print
these as they are), and the argument checks.  Fake libc from test_linux_syscalls."""

from __future__ import annotations

import errno

import numpy as np
import pytest
from test_linux_syscalls import FakeLibc, addrs

from tierd.linux import FeatureMissing, MovePagesError, ProcessGone, Syscalls


def failing(err, nodes=None):
    with pytest.raises(Exception) as ei:
        Syscalls(libc=FakeLibc({}, fail=err), machine="x86_64").move_pages(77, addrs(3), nodes)
    return ei.value


def test_esrch_is_process_gone():
    e = failing(errno.ESRCH)
    assert isinstance(e, ProcessGone) and e.pid == 77
    assert str(e) == "process 77 has exited (move_pages: ESRCH)"


def test_eperm_says_what_permission_is_missing():
    e = failing(errno.EPERM)
    assert type(e) is PermissionError and e.errno == errno.EPERM
    assert e.strerror == (
        "move_pages of pid 77 refused: moving another process's pages needs ptrace access to it "
        "(same user, or CAP_SYS_PTRACE); MPOL_MF_MOVE_ALL also needs CAP_SYS_NICE")


def test_eacces_names_the_cpuset():
    e = failing(errno.EACCES)
    assert type(e) is PermissionError and e.errno == errno.EACCES
    assert e.strerror == ("move_pages of pid 77 refused: a target node is not allowed by the "
                          "caller's cpuset")


def test_enosys_is_a_missing_feature_with_the_fix():
    e = failing(errno.ENOSYS)
    assert isinstance(e, FeatureMissing)
    assert e.feature == "move_pages"
    assert e.how_to_fix == "boot a kernel with CONFIG_NUMA=y and CONFIG_MIGRATION=y (Linux >= 2.6.18)"
    assert e.what == "the kernel has no move_pages(2) (built without CONFIG_NUMA/CONFIG_MIGRATION)"


def test_enodev_detail_only_when_moving():
    moving = failing(errno.ENODEV, np.zeros(3, np.int32))
    assert type(moving) is MovePagesError
    assert str(moving).endswith("(a target node is not online)")
    query = failing(errno.ENODEV)
    assert type(query) is MovePagesError and "not online" not in str(query)
    assert str(query).startswith("move_pages failed: ENODEV: ")
    einval = failing(errno.EINVAL, np.zeros(3, np.int32))
    assert "(" not in str(einval)  # no detail for other errors


def test_batch_must_be_positive_and_one_is_enough():
    s = Syscalls(libc=FakeLibc({int(a): 0 for a in addrs(3)}), machine="x86_64")
    with pytest.raises(ValueError, match="^batch must be positive$"):
        s.move_pages(1, addrs(3), batch=0)
    assert s.move_pages(1, addrs(3), batch=1).tolist() == [0, 0, 0]


def test_real_libc_errno_reaches_the_mapping():
    # Syscalls() must load libc with use_errno: an exited process is ESRCH (ENOSYS without
    # CONFIG_NUMA), never a MovePagesError with errno 0
    import subprocess
    import sys

    from tierd.linux.syscalls import touched_page

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with touched_page() as addr:
        with pytest.raises((ProcessGone, FeatureMissing)):
            Syscalls().move_pages(child.pid, np.array([addr], np.uint64))


def test_module_function_queries_own_page():
    from tierd.linux.syscalls import move_pages, touched_page

    with touched_page() as addr:
        try:
            st = move_pages(0, np.array([addr, addr + (1 << 40)], np.uint64))
        except FeatureMissing:  # a kernel without CONFIG_NUMA: still the right answer
            return
    assert st.dtype == np.int32 and st[0] >= 0 and st[1] in (-errno.ENOENT, -errno.EFAULT)
