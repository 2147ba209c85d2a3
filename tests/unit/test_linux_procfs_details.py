"""procfs details the main procfs tests leave open (found by mutation testing): error line
numbers and texts, blank lines, the self/gone distinction, O_CLOEXEC, short reads."""

from __future__ import annotations

import errno
import fcntl
import os

import pytest

from tierd.linux import ParseError, ProcessGone, ProcFS
from tierd.linux.procfs import parse_meminfo, parse_smaps, pread_full, read_pagemap

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "proc")
HEADER = "7f0000000000-7f0000001000 rw-p 00000000 00:00 0"


def test_smaps_counter_before_mapping_names_its_line():
    with pytest.raises(ParseError) as ei:
        parse_smaps("\nRss:  4 kB\n" + HEADER + "\n")
    assert str(ei.value) == "smaps:2: counter before the first mapping"


def test_smaps_blank_lines_between_mappings():
    text = (f"{HEADER}\nRss:  4 kB\n\n"
            "7f0000002000-7f0000003000 r--p 00000000 00:00 0\nRss:  8 kB\nVmFlags: rd mr\n")
    (v1, c1), (v2, c2) = parse_smaps(text)
    assert (v1.start, dict(c1)) == (0x7F0000000000, {"Rss": 4096})
    assert (v2.perms, dict(c2)) == ("r--p", {"Rss": 8192})


def test_smaps_bad_header_names_its_line():
    with pytest.raises(ParseError) as ei:
        parse_smaps(f"{HEADER}\nRss:  4 kB\nzzzz rw-p\n")
    assert ei.value.what == "smaps" and ei.value.line == 3


def test_meminfo_errors_name_line_and_key():
    with pytest.raises(ParseError) as ei:
        parse_meminfo("MemTotal:  8 kB\nMem Total:  8 kB\n")
    assert str(ei.value) == "meminfo:2: bad key 'Mem Total'"
    with pytest.raises(ParseError) as ei:
        parse_meminfo("\nMemTotal:  8 kB\nMemFree:  lots\n")
    assert str(ei.value) == "meminfo:3: bad quantity 'lots'"


def test_procfs_meminfo_reads_its_root():
    m = ProcFS(FIXTURES).meminfo()
    assert m["MemTotal"] == 7038752 * 1024 and m["MemFree"] == 4592544 * 1024


def test_missing_file_of_self_is_not_process_gone(tmp_path):
    # "self" never names an exited process: a missing file there is a plain error
    with pytest.raises(FileNotFoundError):
        ProcFS(str(tmp_path)).comm("self")
    with pytest.raises(ProcessGone) as ei:
        ProcFS(str(tmp_path)).comm(31337)
    assert ei.value.pid == 31337
    assert str(ei.value) == "process 31337 has exited (No such file or directory)"


def test_open_is_close_on_exec_with_the_flags_given(tmp_path):
    (tmp_path / "5").mkdir()
    (tmp_path / "5" / "idle").write_bytes(b"\0" * 8)
    fd = ProcFS(str(tmp_path)).open(5, "idle", os.O_RDWR)
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert os.pwrite(fd, b"\1", 0) == 1
    finally:
        os.close(fd)


def test_pread_full_stops_at_length_with_chunks(tmp_path):
    f = tmp_path / "data"
    f.write_bytes(bytes(range(10)))
    fd = os.open(f, os.O_RDONLY)
    try:
        assert pread_full(fd, 7, 0, chunk=4) == bytes(range(7))
        assert pread_full(fd, 7, 6, chunk=3) == bytes(range(6, 10))  # short: end of file
    finally:
        os.close(fd)


def test_empty_pagemap_is_process_gone_with_its_pid(tmp_path):
    f = tmp_path / "pagemap"
    f.write_bytes(b"")
    fd = os.open(f, os.O_RDONLY)
    try:
        with pytest.raises(ProcessGone) as ei:
            read_pagemap(fd, "42", 16, 4)
    finally:
        os.close(fd)
    assert ei.value.pid == 42 and ei.value.errno == errno.ESRCH
    assert str(ei.value) == "process 42 has exited (its address space is gone)"  # said once


@pytest.mark.parametrize("line, message", [
    ("1000 rw-p 0 00:00 0", "maps:2: bad number: no '-' in the address range"),
    ("zz-2000 rw-p 0 00:00 0", "maps:2: bad number: invalid literal for int() with base 16: 'zz'"),
    ("1000-2000 rw-p 0 00:00 x", "maps:2: bad number: invalid literal for int() with base 10: 'x'"),
    ("1000--2000 rw-p 0 00:00 0", "maps:2: negative number"),
    ("1000-2000 rw-p 0 00:00 -1", "maps:2: negative number"),
])
def test_maps_errors_word_for_word(line, message):
    from tierd.linux.procfs import parse_maps

    with pytest.raises(ParseError) as ei:
        parse_maps("1000-2000 r--p 0 00:00 0\n" + line + "\n")
    assert str(ei.value) == message


def test_meminfo_bad_quantity_names_meminfo():
    with pytest.raises(ParseError) as ei:
        parse_meminfo("MemFree: 12 MB\n")
    assert (ei.value.what, ei.value.line) == ("meminfo", 1)
