"""Process identity (issue 17 #2): (pid, start ticks), held through the /proc/PID directory.

Fixture /proc trees stand for the kernel: a process that exits and is reaped loses its
directory (rmtree), and the next process with that pid gets a new one, as in /proc.  psutil
is faked where the resolver reads attributes by pid.  Each case failed on the code before
(identity from psutil's create_time, files opened by path, idle_bitmap re-opened on ESRCH).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import time
import types

import numpy as np
import psutil
import pytest
from fds import opened_since, snapshot

from tierd.engine import targets
from tierd.engine.daemon import Engine
from tierd.engine.targets import ProcessRef, PsutilResolver, StaticResolver
from tierd.linux import tracking
from tierd.linux.errors import ParseError, ProcessGone
from tierd.linux.procfs import ProcFS, parse_stat, proc_key
from tierd.linux.tracking import IdleBitmapReader
from tierd.policy import TargetSpec

ME = os.getpid()


def stat_line(pid: int, start: int, comm: str = "app", state: str = "S") -> bytes:
    # fields 3 (state), 4 (ppid), 5..21 (17 of them), 22 (starttime), then 30 more
    rest = [state, "1"] + ["0"] * 17 + [str(start)] + ["0"] * 30
    return f"{pid} ({comm}) {' '.join(rest)}\n".encode()


def mkproc(root, pid: int, start: int, maps: str = "", idle=((1, 0),), comm: str = "app"):
    """A fixture /proc/PID: stat, comm, cgroup, maps, pagemap, idle_bitmap records."""
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "stat").write_bytes(stat_line(pid, start, comm))
    (d / "comm").write_text(comm + "\n")
    (d / "cgroup").write_text("0::/app.slice\n")
    (d / "maps").write_text(maps)
    (d / "pagemap").write_bytes(bytes(8 * 64))
    (d / "idle_bitmap").write_bytes(np.asarray(idle, dtype="<u8").tobytes())
    return d


MAPS_A = "7f0000000000-7f0000040000 rw-p 00000000 00:00 0\n"
MAPS_B = "5500000000-5500001000 r-xp 00000000 08:01 42    /usr/bin/other\n"


class FakePsutil:
    """psutil.Process / process_iter over a fixture /proc.  create_time() is psutil >= 7.0.1's:
    the boot time as computed now from the wall clock (``btime``) plus the start ticks."""

    def __init__(self, root) -> None:
        self.root = root
        self.btime = 1_700_000_000.0
        self.create_time_calls = 0

    def process(self, pid: int):
        if not (self.root / str(pid)).is_dir():
            raise psutil.NoSuchProcess(pid)
        fake = self

        class P:
            def __init__(self) -> None:
                self.pid = pid

            def exe(self):
                return "/usr/bin/app"

            def cmdline(self):
                return ["app"]

            def memory_info(self):
                return types.SimpleNamespace(rss=1 << 30)

            def create_time(self):
                fake.create_time_calls += 1
                start = parse_stat((fake.root / str(pid) / "stat").read_bytes()).starttime
                return fake.btime + start / 100

        return P()

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(targets.psutil, "Process", self.process)
        monkeypatch.setattr(targets.psutil, "process_iter", lambda: [
            self.process(int(n)) for n in sorted(os.listdir(self.root)) if n.isdigit()])


def resolver(root, monkeypatch) -> tuple[PsutilResolver, FakePsutil]:
    ps = FakePsutil(root)
    ps.install(monkeypatch)
    return PsutilResolver(types.SimpleNamespace(procfs=ProcFS(str(root))), self_pid=-1), ps


SPECS = [TargetSpec("app", comm=re.compile("app"))]


# -- /proc/PID/stat ------------------------------------------------------------------------------


def test_parse_stat_comm_with_spaces_and_parentheses():
    st = parse_stat(stat_line(77, 123456, comm="a) (b ) c"))
    assert (st.pid, st.comm, st.state, st.ppid, st.starttime) == (77, "a) (b ) c", "S", 1, 123456)
    st = parse_stat(stat_line(78, 9, comm="x\xff y".encode("latin-1").decode("utf-8", "replace")))
    assert st.starttime == 9
    # the real one: our own start time in ticks, the same as psutil's ticks-based field
    mine = ProcFS().stat(ME)
    assert mine.pid == ME and mine.starttime > 0


@pytest.mark.parametrize("data", [b"", b"12 (app S 1", b"12 (app) S 1 2 3", b"x (app) " + b"0 " * 30,
                                  b"12 app) " + b"0 " * 30])
def test_parse_stat_refuses_garbage(data):
    with pytest.raises(ParseError):
        parse_stat(data)


# -- a reused pid --------------------------------------------------------------------------------


def test_a_reused_pid_is_a_new_process_whose_files_are_never_read_as_the_old_ones(tmp_path, monkeypatch):
    mkproc(tmp_path, 50, start=1000, maps=MAPS_A, idle=[(0b11, 0b01)])
    r, _ = resolver(tmp_path, monkeypatch)
    [a] = r.resolve(SPECS)
    procfs = ProcFS(str(tmp_path))
    assert procfs.maps(a.pid)[0].start == 0x7F0000000000
    # A exits and is reaped; B gets pid 50.
    shutil.rmtree(tmp_path / "50")
    mkproc(tmp_path, 50, start=2000, maps=MAPS_B, idle=[(0xFF, 0)])
    with pytest.raises(ProcessGone):
        procfs.maps(a.pid)  # was: B's maps, read as A's
    with IdleBitmapReader(str(tmp_path), scan=False) as reader, pytest.raises(ProcessGone):
        reader.sample(a.pid, 0, 1)  # was: B's access bits
    [b] = r.resolve(SPECS)
    assert b.key != a.key and b.key[:2] == (50, 2000)
    assert procfs.maps(b.pid)[0].path == "/usr/bin/other"
    assert a.pid.closed  # the resolver let go of A
    r.close()


def test_idle_bitmap_esrch_after_pid_reuse_does_not_open_the_new_process(tmp_path, monkeypatch):
    """The reader's descriptor is A's: ESRCH on it, with /proc/50 now B's, used to re-open
    /proc/50/idle_bitmap by path and report B's accesses as A's."""
    mkproc(tmp_path, 50, start=1000, idle=[(0b11, 0b11)])
    h = ProcFS(str(tmp_path)).open_process(50)
    reader = IdleBitmapReader(str(tmp_path), scan=False)
    assert reader.sample(h, 0, 1)[1].tolist() == [0]  # A: nothing accessed
    shutil.rmtree(tmp_path / "50")
    mkproc(tmp_path, 50, start=2000, idle=[(0xFF, 0)])  # B: everything accessed
    real = tracking.pread_full

    def esrch_on_a(fd, *a, **kw):  # A's idle_bitmap descriptor reads ESRCH (its mm is gone)
        if fd in reader._fds.values():
            raise OSError(errno.ESRCH, "No such process")
        return real(fd, *a, **kw)

    monkeypatch.setattr(tracking, "pread_full", esrch_on_a)
    with pytest.raises(ProcessGone):
        reader.sample(h, 0, 1)
    assert reader._fds == {}
    h.close()


def test_handle_files_are_opened_through_the_held_directory(tmp_path):
    mkproc(tmp_path, 51, start=5, comm="x y)")
    procfs = ProcFS(str(tmp_path))
    h = procfs.open_process(51)
    assert isinstance(h, int) and h == 51 and str(h) == "51" and f"{h:d}" == "51"
    assert proc_key(h) == (51, 5, 0) and proc_key(51) == 51
    assert procfs.comm(h) == "x y)" and procfs.exists(h)
    os.rename(tmp_path / "51", tmp_path / "51.old")  # the directory we hold, under another name
    assert procfs.comm(h) == "x y)"
    assert not procfs.exists(51)
    h.close()
    h.close()  # idempotent
    with pytest.raises(ProcessGone):
        procfs.comm(h)


def test_a_zombie_is_not_held(tmp_path):
    d = mkproc(tmp_path, 52, start=5)
    (d / "stat").write_bytes(stat_line(52, 5, state="Z"))
    before = snapshot()
    with pytest.raises(ProcessGone, match="zombie"):
        ProcFS(str(tmp_path)).open_process(52)
    with pytest.raises(ProcessGone):
        ProcFS(str(tmp_path)).open_process(53)
    assert opened_since(before) == 0


def test_a_process_with_an_unparsable_stat_is_skipped_not_an_error(tmp_path, monkeypatch):
    mkproc(tmp_path, 54, start=5)
    d = mkproc(tmp_path, 55, start=6)
    r, _ = resolver(tmp_path, monkeypatch)
    assert [x.pid for x in r.resolve(SPECS)] == [54, 55]
    (d / "stat").write_bytes(b"55 (app")  # held, then garbled: not vouched for any more
    assert [x.pid for x in r.resolve(SPECS)] == [54]
    assert [x.pid for x in r.resolve(SPECS)] == [54]  # and not held again while garbled
    r.close()


# -- exec ----------------------------------------------------------------------------------------


def test_exec_is_a_new_process_fixture(tmp_path, monkeypatch):
    """execve() keeps pid, start time and /proc/PID; the pagemap descriptor opened before it
    reads nothing after it (its mm is gone): a new generation, a new key."""
    d = mkproc(tmp_path, 60, start=7)
    r, _ = resolver(tmp_path, monkeypatch)
    [a] = r.resolve(SPECS)
    assert r.resolve(SPECS)[0].pid is a.pid  # same process: the same handle, the same key
    os.truncate(d / "pagemap", 0)  # what the old mm's pagemap reads like
    [b] = r.resolve(SPECS)
    assert b.key == (60, 7, 1) and a.key == (60, 7) and a.pid.closed
    r.close()


_EXEC_CHILD = ("import os, sys; sys.stdin.readline(); "
               "os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(30)', 'after'])")


def test_exec_is_a_new_process_real_kernel():
    child = subprocess.Popen([sys.executable, "-c", _EXEC_CHILD, "before"], stdin=subprocess.PIPE)
    try:
        r = PsutilResolver(self_pid=-1)
        spec = [TargetSpec("t", pids=(child.pid,))]
        deadline = time.monotonic() + 10

        def last_arg() -> bytes:  # the program text holds both words: look at argv's end
            with open(f"/proc/{child.pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            return args[-2] if len(args) > 1 else b""

        while last_arg() != b"before":  # the child's own exec (fork, then python) is done
            assert time.monotonic() < deadline
            time.sleep(0.01)
        [a] = r.resolve(spec)
        assert r.resolve(spec)[0].key == a.key
        child.stdin.write(b"go\n")
        child.stdin.flush()
        while last_arg() != b"after":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        [b] = r.resolve(spec)
        assert b.pid == a.pid and b.start == a.start  # the same pid and start time ...
        assert b.key != a.key  # ... but a new process to tierd
        r.close()
    finally:
        child.kill()
        child.wait()


# -- a wall-clock step ---------------------------------------------------------------------------


def test_a_clock_step_changes_nothing(tmp_path, monkeypatch):
    mkproc(tmp_path, 70, start=500)
    r, ps = resolver(tmp_path, monkeypatch)
    [a] = r.resolve(SPECS)
    ps.btime += 3600.0  # date --set: psutil >= 7.0.1's create_time() moves with it
    [b] = r.resolve(SPECS)
    assert b.key == a.key and b.pid is a.pid and not a.pid.closed
    r.close()


def test_a_clock_step_changes_nothing_real_process(monkeypatch):
    r = PsutilResolver(self_pid=-1)
    spec = [TargetSpec("me", pids=(ME,))]
    [a] = r.resolve(spec)
    real = psutil.Process.create_time
    monkeypatch.setattr(psutil.Process, "create_time", lambda self: real(self) + 3600.0)
    [b] = r.resolve(spec)
    assert b.key == a.key and b.pid is a.pid
    r.close()


def test_slow_match_skip_is_keyed_by_start_ticks(tmp_path, monkeypatch):
    from tierd.policy import RegexTimeout

    mkproc(tmp_path, 71, start=500)
    r, ps = resolver(tmp_path, monkeypatch)

    tries = []

    class Slow:  # a bounded match that always gives up (policy.Regex without RE2)
        def search(self, text):
            tries.append(text)
            raise RegexTimeout("cmdline: gave up after 20 ms")

    spec = [TargetSpec("app", cmdline=Slow())]
    assert r.resolve(spec) == []
    ps.btime -= 7200.0
    assert r.resolve(spec) == []
    assert len(tries) == 1  # not tried again after the clock step
    shutil.rmtree(tmp_path / "71")
    mkproc(tmp_path, 71, start=900)  # a new process with that pid: tried
    assert r.resolve(spec) == []
    assert len(tries) == 2
    assert ps.create_time_calls == 0  # identity never asks the wall clock


def test_a_slow_match_is_tried_again_after_exec_of_another_binary(tmp_path, monkeypatch):
    """A wrapper with a hostile command line that execs the real server: the skip was keyed
    on (pid, start ticks), which exec keeps, so the server was never tiered."""
    from tierd.policy import RegexTimeout

    d = mkproc(tmp_path, 72, start=500)
    for name in ("wrapper", "server"):
        (tmp_path / name).write_text(name)
    (d / "exe").symlink_to(tmp_path / "wrapper")
    r, _ = resolver(tmp_path, monkeypatch)
    tries = []

    class Slow:  # gives up on the wrapper's command line, matches the server's
        def search(self, text):
            tries.append(text)
            if (d / "exe").resolve().name == "wrapper":
                raise RegexTimeout("cmdline: gave up after 20 ms")
            return True

    spec = [TargetSpec("app", cmdline=Slow())]
    assert r.resolve(spec) == [] and r.resolve(spec) == []
    assert len(tries) == 1  # the same binary: not tried again
    (d / "exe").unlink()
    (d / "exe").symlink_to(tmp_path / "server")  # execve() of the server
    [ref] = r.resolve(spec)
    assert ref.pid == 72 and len(tries) == 2
    r.close()


# -- descriptors are bounded ---------------------------------------------------------------------


def test_handles_are_closed_when_processes_go_away(tmp_path, monkeypatch):
    for pid in range(100, 120):
        mkproc(tmp_path, pid, start=pid)
    r, _ = resolver(tmp_path, monkeypatch)
    before = snapshot()
    refs = r.resolve(SPECS)
    assert len(refs) == 20
    per = opened_since(before) / 20
    assert per == 2  # the /proc/PID directory and the pagemap exec witness
    for _ in range(3):  # steady state: nothing more
        r.resolve(SPECS)
    assert opened_since(before) == 40
    for pid in range(100, 110):
        shutil.rmtree(tmp_path / str(pid))
    assert len(r.resolve(SPECS)) == 10
    assert opened_since(before) == 20
    assert r.resolve([TargetSpec("other", comm=re.compile("^nothing$"))]) == []  # no longer match
    assert opened_since(before) == 0
    r.resolve(SPECS)
    r.close()
    assert opened_since(before) == 0


def test_the_engine_closes_a_process_it_drops(tmp_path):
    from engine_fakes import FakeKernel, FakeProc
    from test_engine_daemon import make_policy

    mkproc(tmp_path, 4242, start=1)
    h = ProcFS(str(tmp_path)).open_process(4242)
    h.watch_mm()
    k = FakeKernel()
    k.add(FakeProc(4242, 128))
    eng = Engine(k, make_policy(), resolver=StaticResolver([ProcessRef(h, h.starttime, "app")]),
                 clock=lambda: 0.0)
    eng.step()
    assert not h.closed and h.mm_fd is not None
    k.gone_on_sample = 4242
    eng.step()
    assert h.closed and eng.units == {}
    assert k.reader().closed == [4242]


def test_engine_close_releases_the_resolver(tmp_path, monkeypatch):
    from engine_fakes import FakeKernel
    from test_engine_daemon import make_policy

    mkproc(tmp_path, 4242, start=1)
    r, _ = resolver(tmp_path, monkeypatch)
    eng = Engine(FakeKernel(), make_policy(), resolver=r, clock=lambda: 0.0)
    before = snapshot()
    [ref] = r.resolve(SPECS)
    assert opened_since(before) == 2
    eng.close()
    assert ref.pid.closed and opened_since(before) == 0


def test_handle_pidfd_is_checked_against_reuse():
    h = ProcFS().open_process(ME)
    fd = h.pidfd()
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[pidfd]"
    finally:
        os.close(fd)
    h.close()
    with pytest.raises(ProcessGone):
        h.pidfd()  # closed: not this process any more as far as tierd knows


def test_maps_of_a_held_process_are_parsed_again_only_when_they_change(tmp_path, monkeypatch):
    """Parsing maps was most of a maps read's cost (a profile in the rig): a held process's
    parse is kept on its handle and reused while the text is the same."""
    from tierd.linux import procfs as procfs_mod

    d = mkproc(tmp_path, 81, start=5, maps=MAPS_A)
    parsed = []
    real = procfs_mod.parse_maps
    monkeypatch.setattr(procfs_mod, "parse_maps", lambda text: parsed.append(1) or real(text))
    fs = ProcFS(str(tmp_path))
    h = fs.open_process(81)
    first = fs.maps(h)
    assert fs.maps(h) is first and len(parsed) == 1
    (d / "maps").write_text(MAPS_A + MAPS_B)
    second = fs.maps(h)
    assert len(second) == 2 and len(parsed) == 2
    assert len(fs.maps(81)) == 2 and len(parsed) == 3  # a plain pid: nothing kept
    h.close()
    assert h.maps_memo is None


def test_the_engine_turns_unchanged_maps_into_extents_once(monkeypatch):
    from engine_fakes import FakeKernel, FakeProc
    from test_engine_daemon import make_engine

    from tierd.engine import daemon

    k = FakeKernel()
    k.add(FakeProc(4242, 128))
    same = k.procfs.maps(4242)
    monkeypatch.setattr(k.procfs, "maps", lambda pid: same)
    built = []
    real = daemon.Extents.from_vmas
    monkeypatch.setattr(daemon.Extents, "from_vmas",
                        staticmethod(lambda *a, **kw: built.append(1) or real(*a, **kw)))
    eng = make_engine(k)
    for _ in range(4):
        eng.step()
    assert len(built) == 1
    assert eng.units[(4242, 0.0)].ext.pages == 128
