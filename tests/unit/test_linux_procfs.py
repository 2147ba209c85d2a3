"""tierd.linux.procfs: parsers on strings, ProcFS on the fixture tree tests/unit/fixtures/proc."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.linux import ParseError, ProcessGone, ProcFS, Vma
from tierd.linux.procfs import (
    PM_PRESENT,
    decode_pagemap,
    parse_cgroup,
    parse_cmdline,
    parse_maps,
    parse_meminfo,
    parse_smaps,
    parse_status,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
PROC = os.path.join(FIXTURES, "proc")


@pytest.fixture
def procfs() -> ProcFS:
    return ProcFS(PROC)


# -- maps ----------------------------------------------------------------------------------------


def test_maps_fixture_fields(procfs):
    vmas = procfs.maps(4242)
    assert len(vmas) == 12
    exe = vmas[1]
    assert exe == Vma(0x55D4C8A2A000, 0x55D4C8C3F000, "r-xp", 0x2A000, "fe:00", 260811,
                      "/usr/bin/python3.11", False)
    assert exe.size == 0x215000 and exe.pages == 0x215
    assert not exe.anonymous


def test_maps_heap_stack_and_pseudo_paths(procfs):
    by_path = {v.path: v for v in procfs.maps(4242)}
    assert by_path["[heap]"].anonymous and by_path["[heap]"].perms == "rw-p"
    assert by_path["[stack]"].start == 0x7FFC1A5E0000
    assert by_path["[anon:python arena]"].anonymous
    assert by_path["[vdso]"].special and by_path["[vsyscall]"].special
    assert not by_path["[heap]"].special
    assert by_path["[vsyscall]"].end == 0xFFFFFFFFFF601000


def test_maps_anonymous_line_with_trailing_space(procfs):
    anon = procfs.maps(4242)[3]
    assert anon.path == "" and anon.inode == 0 and anon.anonymous and not anon.deleted


def test_maps_deleted_and_spaces(procfs):
    vmas = procfs.maps(4242)
    memfd = vmas[4]
    assert memfd.path == "/memfd:shared buffer" and memfd.deleted and memfd.perms == "rw-s"
    assert memfd.inode == 1234 and not memfd.anonymous
    spaced = vmas[5]
    # Spaces inside the path survive, including a double space.
    assert spaced.path == "/home/user/my data/file with  spaces.bin"
    assert spaced.offset == 0x1000 and not spaced.deleted


def test_maps_escaped_newline_in_path(procfs):
    assert procfs.maps(4242)[7].path == "/tmp/line\nbreak"


def test_maps_empty_text():
    assert parse_maps("") == ()
    assert parse_maps("\n\n") == ()


@pytest.mark.parametrize(
    "line",
    [
        "garbage",
        "1000-2000 rw-p 00000000 00:00",  # too few fields
        "zzzz-2000 rw-p 00000000 00:00 0",
        "3000-2000 rw-p 00000000 00:00 0",  # end before start
        "1000 rw-p 00000000 00:00 0 x",  # no range
        "1000-2000 rw-p 0000000g 00:00 0",
        "1000-2000 rwxpq 00000000 00:00 0",  # bad perms
        "1000-2000 rw-p 00000000 00:00 -1",
        "1000-10000000000000000 rw-p 00000000 00:00 0",  # beyond 64 bits
    ],
)
def test_maps_malformed_lines_raise_parse_error(line):
    with pytest.raises(ParseError) as ei:
        parse_maps("1000-2000 r--p 00000000 00:00 0\n" + line + "\n")
    assert ei.value.line == 2


@pytest.mark.parametrize(
    "line",
    [
        "+1000-2000 rw-p 00000000 00:00 0",  # int() takes a sign the kernel never writes
        "1000-2000 rw-p -0000010 00:00 0",
        "1000-2000 rw-p 00000000 00:00 -1",
    ],
)
def test_maps_signed_numbers_are_rejected_as_negative(line):
    with pytest.raises(ParseError) as ei:
        parse_maps(line + "\n")
    assert ei.value.line == 1 and "negative number" in str(ei.value)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_maps_parser_never_crashes(text):
    try:
        vmas = parse_maps(text)
    except ParseError:
        return
    for v in vmas:
        assert 0 <= v.start <= v.end < 1 << 64 and len(v.perms) == 4


_vma = st.builds(
    lambda s, n, perms, off, ino, path: (s << 12, (s + n) << 12, perms, off, ino, path),
    st.integers(0, (1 << 47) - 1),
    st.integers(0, 1 << 20),
    st.sampled_from(["r--p", "rw-p", "r-xp", "---p", "rw-s"]),
    st.integers(0, 1 << 40),
    st.integers(0, 1 << 40),
    st.one_of(
        st.just(""),
        st.sampled_from(["[heap]", "[stack]", "[anon:x y]"]),
        st.text(alphabet=st.characters(blacklist_characters="\\\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029",
                                       blacklist_categories=("Cs",)), min_size=1).map(
            lambda t: "/" + t.strip()
        ),
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_vma, max_size=20))
def test_maps_round_trip(rows):
    """Lines formatted like the kernel's show_map_vma() parse back to the same values."""
    lines = []
    for s, e, perms, off, ino, path in rows:
        head = f"{s:08x}-{e:08x} {perms} {off:08x} fd:01 {ino} "
        lines.append(head + (" " * max(0, 73 - len(head)) + path if path else ""))
    vmas = parse_maps("\n".join(lines) + "\n")
    assert len(vmas) == len(rows)
    for v, (s, e, perms, off, ino, path) in zip(vmas, rows):
        want = path[: -len(" (deleted)")] if path.endswith(" (deleted)") else path
        assert (v.start, v.end, v.perms, v.offset, v.inode, v.dev) == (s, e, perms, off, ino, "fd:01")
        assert v.path == want


# -- smaps, status, meminfo, cgroup, cmdline ----------------------------------------------------------


def test_smaps_counters_in_bytes(procfs):
    entries = procfs.smaps(4242)
    assert [v.path for v, _ in entries] == ["[heap]", ""]
    heap = entries[0][1]
    assert heap["Rss"] == 764 * 1024 and heap["Size"] == 1400 * 1024
    assert heap["THPeligible"] == 0
    assert "VmFlags" not in heap
    assert entries[1][1]["Rss"] == 0


def test_smaps_counter_before_mapping_is_an_error():
    with pytest.raises(ParseError):
        parse_smaps("Rss: 4 kB\n")


def test_status_units(procfs):
    st_ = procfs.status(4242)
    assert st_["VmRSS"] == 29588 * 1024
    assert st_["RssAnon"] == 18000 * 1024
    assert st_["Threads"] == 3
    assert st_["Name"] == "python3"
    assert st_["Uid"] == "1000\t1000\t1000\t1000"
    assert st_["CapEff"] == "0000000000000000"


def test_status_ignores_junk_lines():
    assert parse_status("no colon here\n:\nVmRSS:\t 4 kB\n") == {"VmRSS": 4096}


def test_meminfo_plain_and_node_prefixed():
    assert parse_meminfo("MemTotal:  100 kB\nHugePages_Total:   3\n") == {
        "MemTotal": 102400, "HugePages_Total": 3}
    assert parse_meminfo("Node 1 MemFree:   8 kB\n") == {"MemFree": 8192}
    with pytest.raises(ParseError):
        parse_meminfo("MemTotal 100 kB\n")
    with pytest.raises(ParseError):
        parse_meminfo("MemTotal: lots\n")


def test_cgroup_v2_line(procfs):
    assert procfs.cgroup(4242) == "/system.slice/web.service"
    assert procfs.cgroup(2) == "/"
    assert parse_cgroup("4:memory:/user.slice\n") is None  # v1 only
    assert parse_cgroup("0::/a:b\n") == "/a:b"  # colons inside the path


def test_cmdline_and_comm(procfs):
    assert procfs.cmdline(4242) == ("python3", "-m", "http.server", "--bind", "127.0.0.1")
    assert procfs.cmdline(2) == ()
    assert procfs.comm(4242) == "python3"
    assert parse_cmdline(b"a\0b") == ("a", "b")  # no trailing NUL (setproctitle)
    assert parse_cmdline(b"\xff\0") == ("\udcff",)  # undecodable bytes survive


def test_exe_strips_deleted_and_kernel_thread_has_none(procfs):
    assert procfs.exe(4242) == "/usr/bin/python3.11"
    assert procfs.exe(2) is None


def test_pids_lists_numeric_directories(procfs):
    assert procfs.pids() == (2, 4242)


def test_missing_process_raises_process_gone(procfs):
    with pytest.raises(ProcessGone) as ei:
        procfs.maps(99999)
    assert ei.value.pid == 99999
    assert isinstance(ei.value, ProcessLookupError)
    with pytest.raises(ProcessGone):
        procfs.exe(99999)


def test_missing_file_of_live_process_is_not_process_gone(procfs):
    with pytest.raises(FileNotFoundError) as ei:
        procfs.read_text(4242, "idle_bitmap")
    assert not isinstance(ei.value, ProcessGone)


# -- pagemap -------------------------------------------------------------------------------------


def _write_pagemap(path, entries: dict[int, int]) -> None:
    size = (max(entries) + 1) * 8 if entries else 0
    buf = np.zeros(size // 8, dtype="<u8")
    for vpn, e in entries.items():
        buf[vpn] = e
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(buf.tobytes())


def test_pagemap_reads_range_and_pads(tmp_path):
    pres = int(PM_PRESENT)
    _write_pagemap(tmp_path / "7" / "pagemap", {0: 0, 10: pres | 1234, 12: pres | 99, 13: 1 << 62})
    e = ProcFS(str(tmp_path)).pagemap(7, 10, 8)  # runs past the end of the file: zeros
    present, pfn = decode_pagemap(e)
    assert present.tolist() == [True, False, True, False, False, False, False, False]
    assert pfn.tolist() == [1234, 0, 99, 0, 0, 0, 0, 0]


def test_pagemap_eof_means_process_gone(tmp_path):
    # pagemap_read() returns 0 bytes once the task's mm is gone (exited or zombie).
    _write_pagemap(tmp_path / "8" / "pagemap", {})
    with pytest.raises(ProcessGone):
        ProcFS(str(tmp_path)).pagemap(8, 100, 4)
