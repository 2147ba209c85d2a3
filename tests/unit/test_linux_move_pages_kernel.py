"""move_pages results read exactly, against a fake libc that behaves like the kernel.

``KernelLibc`` follows mm/migrate.c (Linux 6.x) ``do_pages_move``: pages are queued in runs
with one destination; a run is migrated (``migrate_pages``) when the destination changes, when
a page cannot be queued (its -errno, or its node if it is already there, is stored at once),
and at the end; a run's statuses are stored only after it migrated.  ``migrate_pages``
returning a positive count of pages left behind makes the call return that count plus the
pages not reached and stop, with the run's statuses unwritten; a negative return (ENOMEM
when the destination has no room) is a whole-call error with the pages migrated before it
moved.  ``do_pages_stat`` (nodes == NULL) writes every status.
"""

from __future__ import annotations

import ctypes
import errno

import numpy as np
import pytest

from tierd.engine.executor import NOT_TRIED, Executor, outcome_masks
from tierd.linux import MovePagesError, Syscalls
from tierd.linux.syscalls import UNREPORTED


class KernelLibc:
    """A process's pages ({address: node}); ``pinned`` pages fail to migrate (counted in
    migrate_pages' positive return), ``busy`` ones fail to isolate (-EBUSY stored);
    ``room`` (node -> pages) makes migrate_pages fail with -ENOMEM once a node is full."""

    def __init__(self, pages: dict[int, int], pinned=(), busy=(), room=None, online=(0, 1)):
        self.pages = dict(pages)
        self.pinned = set(pinned)
        self.busy = set(busy)
        self.room = dict(room or {})
        self.online = online
        self.calls: list[tuple[int, bool, int]] = []  # (count, query, return)

        def syscall(nr, pid, count, pages_p, nodes_p, status_p, flags):
            ret = self._call(count, pages_p, nodes_p, status_p)
            self.calls.append((count, nodes_p is None, ret))
            if ret < 0:
                ctypes.set_errno(-ret)
                return -1
            return ret

        self.syscall = syscall

    def _call(self, count, pages_p, nodes_p, status_p) -> int:
        addrs = np.ctypeslib.as_array((ctypes.c_uint64 * count).from_address(pages_p)).tolist()
        status = np.ctypeslib.as_array((ctypes.c_int32 * count).from_address(status_p))
        if nodes_p is None:  # do_pages_stat
            for i, a in enumerate(addrs):
                status[i] = self.pages.get(a, -errno.ENOENT)
            return 0
        nodes = np.ctypeslib.as_array((ctypes.c_int32 * count).from_address(nodes_p)).tolist()
        run: list[int] = []
        current, start = None, 0

        def flush(node, i):  # move_pages_and_store_status
            if not run:
                return 0
            err = self._migrate(run, node)
            run.clear()
            if err > 0:
                return err + count - i
            if err < 0:
                return err
            status[start:i] = node
            return 0

        err = 0
        i = 0
        while i < count:
            a, node = addrs[i], nodes[i]
            if node not in self.online:
                err = -errno.ENODEV
                break
            if current is None:
                current, start = node, i
            elif node != current:
                err = flush(current, i)
                if err:
                    return err
                current, start = node, i
            # add_page_for_migration
            if a not in self.pages:
                r = -errno.ENOENT
            elif a in self.busy:
                r = -errno.EBUSY
            elif self.pages[a] == current:
                r = 0
            else:
                run.append(a)
                i += 1
                continue
            status[i] = r if r else current
            err = flush(current, i)
            if err:
                return err - 1 if err > 0 else err
            current = None
            i += 1
        err1 = flush(current, i)
        return err if err < 0 else err1

    def _migrate(self, run: list[int], node: int) -> int:
        """migrate_pages: >0 pages left behind, -ENOMEM when the node fills up."""
        failed = 0
        for a in run:
            if a in self.pinned:
                failed += 1
                continue
            if node in self.room:
                if self.room[node] <= 0:
                    return -errno.ENOMEM
                self.room[node] -= 1
            self.pages[a] = node
        return failed


def addrs(n, base=0x7F0000000000):
    return base + 4096 * np.arange(n, dtype=np.uint64)


def test_fake_returns_positive_count_and_leaves_the_run_unwritten():
    """The fake itself: what the kernel reports when one page of a run stays behind."""
    a = addrs(6)
    libc = KernelLibc({int(x): 1 for x in a}, pinned=[int(a[1])])
    status = np.full(6, 777, np.int32)
    nodes = np.zeros(6, np.int32)
    ret = libc.syscall(279, 1, 6, a.ctypes.data, nodes.ctypes.data, status.ctypes.data, 2)
    assert ret == 1 and (status == 777).all()
    assert sum(v == 0 for v in libc.pages.values()) == 5


def test_positive_return_no_moved_page_read_as_absent():
    a = addrs(8)
    libc = KernelLibc({int(x): 1 for x in a}, pinned=[int(a[2])])
    st = Syscalls(libc=libc, machine="x86_64").move_pages(1, a, np.zeros(8, np.int32))
    # every status as the kernel knows it now: 7 moved, the pinned page still on node 1
    assert st.tolist() == [0, 0, 1, 0, 0, 0, 0, 0]
    assert [c[1] for c in libc.calls] == [False, True]  # one move, one query of the unwritten


def test_positive_return_after_earlier_runs_and_per_page_errors():
    a = addrs(10)
    pages = {int(x): 1 for x in a[:9]}  # a[9] not present
    libc = KernelLibc(pages, pinned=[int(a[6])], busy=[int(a[3])])
    dest = np.array([0, 0, 0, 0, 1, 0, 0, 0, 0, 0], np.int32)
    st = Syscalls(libc=libc, machine="x86_64").move_pages(1, a, dest)
    assert st.tolist() == [0, 0, 0, -errno.EBUSY, 1, 0, 1, 0, 0, -errno.ENOENT]
    assert (st >= 0).sum() == 8 and (st == -errno.ENOENT).sum() == 1


def test_whole_call_enomem_part_way_keeps_earlier_batches_and_reads_the_failing_one():
    a = addrs(10)
    libc = KernelLibc({int(x): 1 for x in a}, room={0: 6})
    with pytest.raises(MovePagesError) as ei:
        Syscalls(libc=libc, machine="x86_64").move_pages(1, a, np.zeros(10, np.int32), batch=4)
    e = ei.value
    assert e.errno == errno.ENOMEM and e.done == 8
    # batch 1 moved and reported; batch 2 moved 2 pages before ENOMEM (queried); batch 3 not
    assert e.status[:8].tolist() == [0, 0, 0, 0, 0, 0, 1, 1]
    assert (e.status[8:] == UNREPORTED).all()


def test_unreported_stays_unreported_if_the_query_fails_too():
    a = addrs(4)
    libc = KernelLibc({int(x): 1 for x in a}, pinned=[int(a[0])])
    sc = Syscalls(libc=libc, machine="x86_64")
    real = libc.syscall

    def syscall(nr, pid, count, pages_p, nodes_p, status_p, flags):
        if nodes_p is None:
            ctypes.set_errno(errno.EFAULT)
            return -1
        return real(nr, pid, count, pages_p, nodes_p, status_p, flags)

    sc._syscall = syscall
    st = sc.move_pages(1, a, np.zeros(4, np.int32))
    assert (st == UNREPORTED).all()
    m = outcome_masks(st, np.zeros(4, np.int32))
    assert not m["absent"].any() and m["unreported"].all()


class _Kernel:
    def __init__(self, libc):
        self.sc = Syscalls(libc=libc, machine="x86_64")

    def move_pages(self, pid, addrs, nodes=None, flags=2, batch=4096):
        return self.sc.move_pages(pid, addrs, nodes, flags, batch)


def test_executor_keeps_partial_status_of_a_whole_call_error():
    a = addrs(64)
    libc = KernelLibc({int(x): 1 for x in a}, room={0: 40})
    ex = Executor(_Kernel(libc), 16)
    with pytest.raises(MovePagesError) as ei:
        ex.move(1, a, np.zeros(64, np.int32))
    st = ei.value.status
    assert st.size == 64
    assert (st[:40] == 0).all() and (st[40:48] == 1).all() and (st[48:] == NOT_TRIED).all()
    assert ei.value.counts.moved == 40


def test_engine_keeps_history_and_node_of_pages_that_moved_in_a_partial_call():
    """End to end: the engine's promotions go through Syscalls and the kernel-like libc; one
    pinned page per run makes every call return a positive count.  The pages that moved are
    known on the fast node with their history (old code: the unwritten statuses read as
    ENOENT, 'absent', and the moved pages lost their history and node)."""
    from engine_fakes import PAGE, FakeKernel, FakeProc
    from test_engine_daemon import PID, make_engine

    k = FakeKernel()
    proc = k.add(FakeProc(PID, 256, node=1))
    hot = list(range(64))
    pinned = {proc.addr(i) for i in (5, 40)}

    def move_pages(pid, addrs, nodes=None, flags=2, batch=4096):
        p = k.proc(pid)
        libc = KernelLibc({v * PAGE: n for v, n in p.node.items()}, pinned=pinned)
        st = Syscalls(libc=libc, machine="x86_64").move_pages(pid, addrs, nodes, flags, batch)
        for a, n in libc.pages.items():
            p.node[a // PAGE] = n
        return st

    k.move_pages = move_pages
    eng = make_engine(k)
    for _ in range(4):
        proc.next_access |= {proc.vpn(i) for i in hot}
        eng.step()
    unit = next(iter(eng.units.values()))
    st = unit.state
    flat = st.extents.flat_of(np.array([proc.vpn(i) for i in hot], np.int64))
    moved = np.array([proc.node[proc.vpn(i)] == 0 for i in hot])
    assert moved.sum() == 62  # all but the pinned two
    assert (st.node_of(flat[moved]) == 0).all()
    assert (st.hotness(flat[moved]) > 0).all()
    assert (st.node_of(flat[~moved]) == 1).all()
