"""tierd.linux.syscalls: move_pages through a fake libc (no root, no NUMA needed).

The fake's ``syscall`` receives exactly what ctypes would pass to libc: integers for the
numbers and raw addresses of the numpy buffers, so these tests check the pointer arithmetic
of the batching as well as the errno mapping.
"""

from __future__ import annotations

import ctypes
import errno

import numpy as np
import pytest

from tierd.linux import FeatureMissing, MovePagesError, ProcessGone, Syscalls
from tierd.linux.syscalls import MPOL_MF_MOVE, MPOL_MF_MOVE_ALL


class FakeLibc:
    """A process whose pages live on nodes: {address: node}; missing addresses are ENOENT."""

    def __init__(self, pages: dict[int, int], fail: int = 0, online=(0, 1)):
        self.pages = dict(pages)
        self.fail = fail
        self.online = online
        self.calls: list[tuple] = []

        def syscall(*args):  # a plain function: Syscalls sets argtypes/restype on it
            return self._syscall(*args)

        self.syscall = syscall

    def _syscall(self, nr, pid, count, pages_p, nodes_p, status_p, flags):
        self.calls.append((nr, pid, count, nodes_p is None, flags))
        if self.fail:
            ctypes.set_errno(self.fail)
            return -1
        addrs = np.ctypeslib.as_array((ctypes.c_uint64 * count).from_address(pages_p))
        status = np.ctypeslib.as_array((ctypes.c_int32 * count).from_address(status_p))
        nodes = None
        if nodes_p is not None:
            nodes = np.ctypeslib.as_array((ctypes.c_int32 * count).from_address(nodes_p))
            if any(int(n) not in self.online for n in nodes):
                ctypes.set_errno(errno.ENODEV)
                return -1
        for i, a in enumerate(addrs.tolist()):
            if a not in self.pages:
                status[i] = -errno.ENOENT
            elif a == 0xBAD000:
                status[i] = -errno.EBUSY
            else:
                if nodes is not None:
                    self.pages[a] = int(nodes[i])
                status[i] = self.pages[a]
        return 0


def addrs(n, base=0x7F0000000000):
    return base + 4096 * np.arange(n, dtype=np.uint64)


def test_query_returns_node_per_page_and_enoent():
    a = addrs(10)
    libc = FakeLibc({int(x): i % 2 for i, x in enumerate(a[:8])})
    st = Syscalls(libc=libc, machine="x86_64").move_pages(1234, a)
    assert st.dtype == np.int32
    assert st.tolist() == [0, 1, 0, 1, 0, 1, 0, 1, -errno.ENOENT, -errno.ENOENT]
    assert libc.calls == [(279, 1234, 10, True, MPOL_MF_MOVE)]  # query: nodes is NULL


def test_move_in_batches_with_right_offsets():
    a = addrs(10)
    libc = FakeLibc({int(x): 1 for x in a})
    nodes = np.array([0, 1] * 5, dtype=np.int32)
    st = Syscalls(libc=libc, machine="x86_64").move_pages(0, a, nodes, batch=4)
    assert [c[2] for c in libc.calls] == [4, 4, 2]
    assert all(not c[3] for c in libc.calls)
    assert st.tolist() == nodes.tolist()
    assert [libc.pages[int(x)] for x in a] == nodes.tolist()


def test_per_page_errors_are_negative_errno():
    a = np.array([0xBAD000, 0x1000], dtype=np.uint64)
    libc = FakeLibc({0xBAD000: 0, 0x1000: 0})
    st = Syscalls(libc=libc, machine="x86_64").move_pages(1, a, np.array([1, 1], np.int32))
    assert st.tolist() == [-errno.EBUSY, 1]


def test_accepts_lists_and_other_dtypes():
    libc = FakeLibc({0x2000: 1})
    st = Syscalls(libc=libc, machine="x86_64").move_pages(1, [0x2000], [0])
    assert st.tolist() == [0] and libc.pages[0x2000] == 0


def test_empty_request_makes_no_call():
    libc = FakeLibc({})
    assert Syscalls(libc=libc, machine="x86_64").move_pages(1, np.zeros(0, np.uint64)).size == 0
    assert libc.calls == []


@pytest.mark.parametrize(
    "err, exc",
    [
        (errno.ESRCH, ProcessGone),
        (errno.EPERM, PermissionError),
        (errno.EACCES, PermissionError),
        (errno.ENODEV, MovePagesError),
        (errno.EINVAL, MovePagesError),
        (errno.E2BIG, MovePagesError),
        (errno.ENOSYS, FeatureMissing),
    ],
)
def test_whole_call_errors_are_typed(err, exc):
    with pytest.raises(exc) as ei:
        Syscalls(libc=FakeLibc({}, fail=err), machine="x86_64").move_pages(77, addrs(3))
    if isinstance(ei.value, OSError):
        assert ei.value.errno == err
    if exc is ProcessGone:
        assert ei.value.pid == 77


def test_enodev_for_offline_target_node():
    libc = FakeLibc({0x3000: 0}, online=(0,))
    with pytest.raises(MovePagesError, match="not online"):
        Syscalls(libc=libc, machine="x86_64").move_pages(1, [0x3000], [5])


def test_syscall_number_per_architecture():
    libc = FakeLibc({0x1000: 0})
    Syscalls(libc=libc, machine="aarch64").move_pages(1, [0x1000], flags=MPOL_MF_MOVE_ALL)
    assert libc.calls[-1][0] == 239 and libc.calls[-1][4] == MPOL_MF_MOVE_ALL
    with pytest.raises(FeatureMissing, match="riscv64"):
        Syscalls(libc=libc, machine="riscv64").move_pages(1, [0x1000])


def test_argtypes_declared_on_the_libc_function():
    libc = FakeLibc({})
    Syscalls(libc=libc, machine="x86_64")
    assert libc.syscall.restype is ctypes.c_long
    real = Syscalls(machine="x86_64")
    assert real._syscall.restype is ctypes.c_long
    assert len(real._syscall.argtypes) == 7


def test_bad_shapes_rejected():
    s = Syscalls(libc=FakeLibc({}), machine="x86_64")
    with pytest.raises(ValueError):
        s.move_pages(1, addrs(3), np.zeros(2, np.int32))
    with pytest.raises(ValueError):
        s.move_pages(1, addrs(3), batch=0)


class MadviseLibc:
    """process_madvise(pidfd, iov, vlen, advice, flags): records the iovecs it is given."""

    def __init__(self, fail: int = 0):
        self.fail = fail
        self.calls: list[tuple] = []

        def syscall(nr, pidfd, iov_p, vlen, advice, flags, _):
            iov = np.ctypeslib.as_array((ctypes.c_uint64 * (2 * vlen)).from_address(iov_p))
            self.calls.append((nr, pidfd, iov.reshape(-1, 2).tolist(), advice, flags or 0))
            if self.fail:
                ctypes.set_errno(self.fail)
                return -1
            return int(iov.reshape(-1, 2)[:, 1].sum())

        self.syscall = syscall


def test_process_madvise_passes_iovecs_in_batches_of_uio_maxiov():
    from tierd.linux.syscalls import MADV_COLD, UIO_MAXIOV

    libc = MadviseLibc()
    ranges = np.stack([addrs(UIO_MAXIOV + 3, base=0x40000000) * 512 // 4096 * 4096,
                       np.full(UIO_MAXIOV + 3, 4096, np.uint64)], axis=1)
    done = Syscalls(libc, "x86_64").process_madvise(7, ranges, MADV_COLD)
    assert done == 4096 * (UIO_MAXIOV + 3)
    assert [(c[0], c[1], len(c[2]), c[3]) for c in libc.calls] == [
        (440, 7, UIO_MAXIOV, 20), (440, 7, 3, 20)]
    assert libc.calls[1][2] == ranges[UIO_MAXIOV:].tolist()


@pytest.mark.parametrize("err, exc", [(errno.ESRCH, ProcessGone), (errno.EPERM, PermissionError),
                                      (errno.EINVAL, FeatureMissing), (errno.ENOMEM, OSError)])
def test_process_madvise_errors(err, exc):
    with pytest.raises(exc):
        Syscalls(MadviseLibc(fail=err), "x86_64").process_madvise(7, np.zeros((1, 2)), 20)
