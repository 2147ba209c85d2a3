"""tierd.cli: commands, output and exit codes, on fixture trees and fake kernels."""

from __future__ import annotations

import io
import os
import sys
import types

import numpy as np
import pytest

from tierd import cli
from tierd.linux import FeatureMissing, Kernel, ProcFS, pack_bits
from tierd.linux.procfs import PM_PRESENT

from linux_fakes import FakeSyscalls, make_tree

HEAP = 0x1000000  # vpn 0x1000 = word 64
ANON = 0x2000000  # vpn 0x2000 = word 128


def run(argv, kernel=None):
    out, err = io.StringIO(), io.StringIO()
    rc = cli.main(argv, kernel=kernel, out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


# -- usage, check-config ---------------------------------------------------------------------------


def test_usage_errors_exit_2():
    assert run([])[0] == 2
    assert run(["scan"])[0] == 2  # --pid is required
    assert run(["scan", "--pid", "0"])[0] == 2
    assert run(["scan", "--pid", "1", "--interval", "soon"])[0] == 2
    assert run(["frobnicate"])[0] == 2


def test_help_and_version_exit_0(capsys):
    assert run(["--version"])[0] == 0
    assert run(["--help"])[0] == 0
    assert "exit codes" in capsys.readouterr().out


def test_check_config_ok_and_broken(tmp_path):
    etc = os.path.join(os.path.dirname(__file__), "..", "..", "etc", "tierd.yaml")
    rc, out, _ = run(["check-config", etc])
    assert rc == 0 and "OK (1 target(s))" in out and "hotness.window: 8" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("interval: 5s\nhotness:\n  window: 99\n")
    rc, out, err = run(["check-config", str(bad)])
    assert rc == 2 and out == ""
    assert f"{bad}:3: hotness.window: 99 is out of range (1..16)" in err
    rc, _, err = run(["check-config", str(tmp_path / "none.yaml")])
    assert rc == 2 and "cannot read" in err


# -- topology ------------------------------------------------------------------------------------


def test_topology_two_tiers(tmp_path):
    proc, sys_ = make_tree(tmp_path)
    rc, out, err = run(["topology"], Kernel(proc=proc, sys=sys_, syscalls=FakeSyscalls()))
    assert rc == 0, err
    lines = out.splitlines()
    assert "NUMA nodes: 2 online (0-1; NUMA)" in out
    assert "memory_tier4 = node(s) 0, memory_tier67 = node(s) 1" in out
    row0 = next(l for l in lines if l.split()[:2] == ["0", "0-1"])
    row1 = next(l for l in lines if l.split()[:2] == ["1", "-"])
    assert "512MiB" in row0 and "fast" in row0 and " 4 " in row0
    assert "1.5GiB" in row1 and "slow" in row1 and "67" in row1
    assert "fast tier: node(s) 0; slow tier: node(s) 1 (by memory tiers)" in out
    # Missing interfaces: reason and fix; the fixture has page_idle but no pagemap for us.
    assert "[NO ] idle_bitmap" in out and "fix: build and boot tierd's patched kernel" in out
    assert "[yes] page_idle" in out and "[NO ] pagemap_pfn" in out
    assert "access tracking: NONE usable" in out


def test_topology_one_node_says_nothing_to_do(tmp_path):
    proc, sys_ = make_tree(tmp_path, topo="no_numa")
    rc, out, _ = run(["topology"], Kernel(proc=proc, sys=sys_, syscalls=FakeSyscalls()))
    assert rc == 0
    assert "no NUMA support in this kernel" in out
    assert "slow tier: node(s) none (by one memory node)" in out
    assert "tierd has nothing to move" in out


def test_topology_policy_override_and_bad_override(tmp_path):
    proc, sys_ = make_tree(tmp_path, topo="memory_only_no_tiers")
    k = Kernel(proc=proc, sys=sys_, syscalls=FakeSyscalls())
    pol = tmp_path / "p.yaml"
    pol.write_text("nodes:\n  fast: [0]\n")
    rc, out, _ = run(["topology", "--config", str(pol)], k)
    assert rc == 0 and "fast tier: node(s) 0; slow tier: node(s) 1-2 (by the policy's" in out
    assert "no memory" in next(l for l in out.splitlines() if l.split()[:2] == ["3", "8-9"])
    pol.write_text("nodes:\n  slow: [7]\n")
    rc, out, err = run(["topology", "--config", str(pol)], k)
    assert rc == 2 and "not online nodes with memory" in err


# -- scan ----------------------------------------------------------------------------------------


def scan_proc(tmp_path, pid=500):
    d = tmp_path / "proc" / str(pid)
    d.mkdir(parents=True)
    (d / "comm").write_text("worker\n")
    (d / "status").write_text("Name:\tworker\nVmRSS:\t  320 kB\n")
    maps = (f"{HEAP:x}-{HEAP + 64 * 4096:x} rw-p 00000000 00:00 0    [heap]\n"
            f"{ANON:x}-{ANON + 16 * 4096:x} rw-p 00000000 00:00 0 \n"
            f"{0x3000000:x}-{0x3001000:x} r--p 00000000 fe:00 12   /usr/lib/libx.so\n")
    (d / "maps").write_text(maps)
    smaps = "".join(f"{line}\nRss:  {rss} kB\n" for line, rss in
                    zip(maps.splitlines(), (256, 64, 0)))
    (d / "smaps").write_text(smaps)
    pm = np.zeros(0x2000 + 64, dtype="<u8")
    pm[0x1000:0x1040] = PM_PRESENT | np.uint64(5)
    pm[0x2000:0x2010] = PM_PRESENT | np.uint64(6)
    (d / "pagemap").write_bytes(pm.tobytes())
    return str(tmp_path / "proc")


class FakeReader:
    name = "idle_bitmap"

    def __init__(self):
        self.calls = {}
        self.closed = []

    def sample(self, pid, word_start, nwords):
        n = self.calls[word_start] = self.calls.get(word_start, 0) + 1
        bits_p = np.zeros(64 * nwords, bool)
        bits_a = np.zeros(64 * nwords, bool)
        if word_start <= 64 < word_start + nwords:  # heap: all 64 pages present
            o = 64 * (64 - word_start)
            bits_p[o : o + 64] = True
            bits_a[o : o + 8] = True  # pages 0-7 every time
            if n == 2:
                bits_a[o + 8 : o + 16] = True  # pages 8-15 in the first counted sample only
        if word_start <= 128 < word_start + nwords:  # anon: 16 pages, never accessed
            o = 64 * (128 - word_start)
            bits_p[o : o + 16] = True
        return pack_bits(bits_p), pack_bits(bits_a)

    def close(self, pid):
        self.closed.append(pid)


class FakeKernel:
    def __init__(self, proc, reader=None):
        self.procfs = ProcFS(proc)
        self._reader = reader
        self.moves = []

    def reader(self, name="auto"):
        if self._reader is None:
            raise FeatureMissing("access tracking", "boot it", what="no interface is usable (test)")
        return self._reader

    def move_pages(self, pid, addrs, nodes=None, flags=2, batch=4096):
        self.moves.append((pid, np.asarray(addrs).copy(), nodes))
        vpn = np.asarray(addrs, np.uint64) >> np.uint64(12)
        return (vpn % np.uint64(2)).astype(np.int32)  # even pages node 0, odd node 1


def table_row(out, label):
    return next(l.split() for l in out.splitlines() if l.strip().startswith(label))


def test_scan_histograms_per_mapping_and_node(tmp_path):
    reader = FakeReader()
    k = FakeKernel(scan_proc(tmp_path), reader)
    rc, out, err = run(["scan", "--pid", "500", "--samples", "3", "--interval", "1ms"], k)
    assert rc == 0, err
    assert "pid 500 (worker): VmRSS 320KiB, 3 mappings" in out
    assert "access tracking: idle_bitmap, 3 sample(s) 1ms apart" in out
    # columns: label VMAs size Rss pages c=0 c=1 c=2 c=3
    assert table_row(out, "[heap]") == ["[heap]", "1", "256KiB", "256KiB", "64", "48", "8", "0", "8"]
    assert table_row(out, "anon")[-5:] == ["16", "16", "0", "0", "0"]
    assert not any("libx" in l for l in out.splitlines())  # no resident pages: not read
    # Per node: heap pages 0-7 always, 8-15 once; anon never; even vpns node 0, odd node 1.
    assert table_row(out, "node 0") == ["node", "0", "40", "32", "4", "0", "4"]
    assert table_row(out, "node 1") == ["node", "1", "40", "32", "4", "0", "4"]
    # 1 baseline + 3 counted samples per extent, and the reader released the pid.
    assert set(reader.calls.values()) == {4} and reader.closed == [500]
    pid, addrs, nodes = k.moves[0]
    assert pid == 500 and nodes is None and addrs.size == 80


def test_scan_without_reader_reports_what_it_can_and_exits_1(tmp_path):
    k = FakeKernel(scan_proc(tmp_path), None)
    rc, out, err = run(["scan", "--pid", "500", "--samples", "2", "--interval", "1ms"], k)
    assert rc == 1
    assert "access tracking: NOT AVAILABLE" in out and "no interface is usable (test)" in out
    assert "fix: boot it" in out
    assert "resident 4KiB pages (from pagemap)" in out
    assert table_row(out, "[heap]") == ["[heap]", "1", "256KiB", "256KiB", "64"]
    assert table_row(out, "node 0") == ["node", "0", "40"]
    assert "scan incomplete" in err and "Traceback" not in err


def test_scan_that_cannot_place_pages_exits_1(tmp_path):
    k = FakeKernel(scan_proc(tmp_path), FakeReader())

    def denied(*a, **kw):
        raise PermissionError(1, "Operation not permitted")

    k.move_pages = denied
    rc, out, err = run(["scan", "--pid", "500", "--samples", "1", "--interval", "1ms"], k)
    assert rc == 1
    assert table_row(out, "[heap]")[:5] == ["[heap]", "1", "256KiB", "256KiB", "64"]
    assert "  unknown: [Errno 1] Operation not permitted" in out
    assert err == ("tierd: scan incomplete: the pages' nodes are unknown: "
                   "[Errno 1] Operation not permitted\n")


def test_scan_of_missing_process_exits_1(tmp_path):
    rc, out, err = run(["scan", "--pid", "999", "--samples", "1"], FakeKernel(scan_proc(tmp_path)))
    assert rc == 1 and "process 999 has exited" in err and out == ""


def test_scan_aggregates_small_mappings(tmp_path):
    proc = scan_proc(tmp_path)
    k = FakeKernel(proc, FakeReader())
    rc, out, _ = run(["scan", "--pid", "500", "--samples", "1", "--interval", "1ms", "--top", "1"], k)
    assert rc == 0
    assert table_row(out, "[heap]")[4] == "64"
    assert table_row(out, "(1 other mappings)")[3:6] == ["1", "64KiB", "64KiB"]


# -- engine subcommands ------------------------------------------------------------------------------


def test_engine_commands_registered_when_importable(monkeypatch):
    seen = {}
    mod = types.ModuleType("fake_engine_daemon")
    mod.add_run_arguments = lambda p: p.add_argument("--policy")
    mod.main = lambda args: seen.setdefault("policy", args.policy) and 3
    monkeypatch.setitem(sys.modules, "fake_engine_daemon", mod)
    monkeypatch.setattr(cli, "ENGINE_COMMANDS", (
        ("run", "fake_engine_daemon", "add_run_arguments", "run"),
        ("simulate", "no_such_module_for_tierd_tests", "add_simulate_arguments", "sim"),
    ))
    rc, _, _ = run(["run", "--policy", "x.yaml"])
    assert rc == 3 and seen["policy"] == "x.yaml"
    assert run(["simulate"])[0] == 2  # absent: argparse says invalid choice
    assert "unavailable" not in cli.build_parser().epilog  # not written yet: silently absent


def test_broken_engine_module_is_reported_not_fatal(monkeypatch, tmp_path):
    (tmp_path / "broken_engine_for_tierd_tests.py").write_text("raise RuntimeError('half-done')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "ENGINE_COMMANDS", (
        ("run", "broken_engine_for_tierd_tests", "add_run_arguments", "run"),))
    assert "unavailable commands: run (broken_engine_for_tierd_tests: RuntimeError: half-done)" in (
        cli.build_parser().epilog)
    # `run` is still a command: using it says why it cannot run (not "invalid choice")
    for argv in (["run"], ["run", "--config", "x.yaml", "--intervals", "3"]):
        rc, out, err = run(argv)
        assert rc == 1 and out == ""
        assert err == ("tierd: run is unavailable: cannot import broken_engine_for_tierd_tests: "
                       "RuntimeError: half-done\n")
    assert run(["check-config", "/nonexistent"])[0] == 2  # the rest still works


def test_engine_module_with_a_missing_dependency_is_reported_when_used(monkeypatch, tmp_path):
    (tmp_path / "engine_needing_x_for_tierd_tests.py").write_text("import no_such_dep_for_tierd\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "ENGINE_COMMANDS", (
        ("run", "engine_needing_x_for_tierd_tests", "add_run_arguments", "run"),))
    rc, _, err = run(["run", "--config", "x.yaml"])
    assert rc == 1 and "No module named 'no_such_dep_for_tierd'" in err


def test_engine_exceptions_map_to_exit_codes(monkeypatch):
    from tierd.policy import PolicyError

    mod = types.ModuleType("fake_engine_daemon2")
    mod.main = lambda args: (_ for _ in ()).throw(PolicyError("f.yaml", 3, "interval", "bad"))
    monkeypatch.setitem(sys.modules, "fake_engine_daemon2", mod)
    monkeypatch.setattr(cli, "ENGINE_COMMANDS", (("run", "fake_engine_daemon2", "x", "run"),))
    rc, _, err = run(["run"])
    assert rc == 2 and "f.yaml:3: interval: bad" in err


@pytest.mark.parametrize("exc, code", [(FeatureMissing("a", "c", what="b"), 1),
                                       (PermissionError(1, "nope"), 1),
                                       (KeyboardInterrupt(), 130)])
def test_runtime_failures_exit_codes(monkeypatch, exc, code):
    mod = types.ModuleType("fake_engine_daemon3")

    def boom(args):
        raise exc

    mod.main = boom
    monkeypatch.setitem(sys.modules, "fake_engine_daemon3", mod)
    monkeypatch.setattr(cli, "ENGINE_COMMANDS", (("run", "fake_engine_daemon3", "x", "run"),))
    assert run(["run"])[0] == code


def test_scan_does_not_read_a_word_shared_with_a_special_mapping(tmp_path):
    """[vdso] right after the 16-page anonymous mapping shares its word: a clearing read of
    that word would clear the vdso's Accessed bits, so the word is not read, and counted."""
    proc = scan_proc(tmp_path)
    d = tmp_path / "proc" / "500"
    vdso = f"{ANON + 16 * 4096:x}-{ANON + 18 * 4096:x} r-xp 00000000 00:00 0    [vdso]"
    (d / "maps").write_text((d / "maps").read_text() + vdso + "\n")
    (d / "smaps").write_text((d / "smaps").read_text() + vdso + "\nRss:  8 kB\n")
    reader = FakeReader()
    rc, out, err = run(["scan", "--pid", "500", "--samples", "2", "--interval", "1ms"],
                       FakeKernel(proc, reader))
    assert rc == 0, err
    assert set(reader.calls) == {HEAP // 4096 // 64}  # the heap's word only
    assert "(16 pages not read: their 64-page word is shared with a special mapping" in out


def test_scan_counts_past_255_samples(tmp_path):
    """The per-page counter once was uint8: 300 accesses in 300 samples read as 44."""
    k = FakeKernel(scan_proc(tmp_path), FakeReader())
    rc, out, err = run(["scan", "--pid", "500", "--samples", "300", "--interval", "1ms"], k)
    assert rc == 0, err
    row = table_row(out, "[heap]")
    hist = [int(x) for x in row[5:]]
    assert len(hist) == 301 and hist[300] == 8 and hist[1] == 8 and hist[0] == 48
    assert sum(hist) == 64


def test_scan_samples_beyond_the_counter_are_a_usage_error():
    rc, out, err = run(["scan", "--pid", "1", "--samples", "70000"])
    assert rc == 2 and out == "" and "--samples" in err and "Traceback" not in err
