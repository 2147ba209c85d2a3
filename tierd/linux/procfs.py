"""/proc: parsers (text or bytes in, values out) and ProcFS, the reader rooted at a directory.

The parsers never touch the file system, so they are tested on strings; ``ProcFS(root)`` opens
the files under ``root`` (``/proc`` on a real machine, a fixture tree in unit tests) and maps
the ways a process can vanish under us (ENOENT on open, ESRCH on read, end-of-file where data
was due) to ``ProcessGone``.

Process identity (``ProcHandle``, from ``ProcFS.open_process``): a pid names whoever holds it
now, so a process tierd tracks is held from the moment it is found by a descriptor of its
/proc/PID directory, and every file of it is opened relative to that descriptor.  When the
process is reaped its directory empties for good, so opening through the descriptor fails
(ENOENT: ProcessGone) instead of opening the files of a process that got the pid later.  Its
identity is (pid, start time in clock ticks since boot, from stat): neither a wall-clock
step nor anything else changes it while the process lives.  execve() keeps pid, start time
and directory, so it is seen by the address space changing: files such as pagemap bind the
mm at open (proc_mem_open) and read nothing once that mm is gone, while the process lives
on (``ProcHandle.watch_mm``, ``ProcHandle.execed``).  Everything that takes a pid here also
takes a ProcHandle, which is an int (the pid) so that pid-taking code elsewhere (move_pages,
fakes, log formats) takes it unchanged.

Formats, as printed by Linux (fs/proc/task_mmu.c, fs/proc/array.c, kernel/cgroup/cgroup.c):
- maps: ``start-end perms offset major:minor inode   path``; the path is padded to a column
  and may contain spaces; ``seq_path`` escapes only ``\\n`` (as ``\\012``); a file unlinked
  while mapped gets the suffix `` (deleted)``; pseudo paths are ``[heap]``, ``[stack]``,
  ``[vdso]``, ``[vvar]``, ``[vsyscall]``, ``[anon:NAME]`` (5.17, PR_SET_VMA_ANON_NAME) ...
- stat: ``pid (comm) state ppid ...`` (fs/proc/array.c, do_task_stat); comm is up to 15
  bytes of anything, spaces and ``)`` included, so it ends at the last ``)``; field 22 is
  the start time in clock ticks since boot.
- status: ``Key:\\tvalue``; memory values carry `` kB`` (which means KiB).
- cgroup: ``hierarchy-ID:controllers:path``; the cgroup v2 line is ``0::/path``.
- pagemap: one u64 per virtual page (bit 63 present, 62 swapped, 61 file/shared-anon,
  56 exclusively mapped, 55 soft-dirty, bits 0-54 PFN) in native byte order; since Linux 4.2
  the PFN reads as 0 without CAP_SYS_ADMIN (4.0 and 4.1 refused unprivileged readers).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from tierd.linux.errors import ParseError, ProcessGone
from tierd.pages import PAGE_SHIFT

# /proc/PID/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
PM_PFN_MASK = np.uint64((1 << 55) - 1)
PM_SOFT_DIRTY = np.uint64(1 << 55)
PM_MMAP_EXCLUSIVE = np.uint64(1 << 56)
PM_FILE = np.uint64(1 << 61)
PM_SWAP = np.uint64(1 << 62)
PM_PRESENT = np.uint64(1 << 63)
PM_ENTRY_BYTES = 8

# Suffix d_path() appends to an unlinked file (fs/d_path.c).
DELETED_SUFFIX = " (deleted)"


@dataclass(frozen=True, slots=True)
class Vma:
    """One line of /proc/PID/maps.

    ``path`` is "" for an anonymous mapping and has the `` (deleted)`` suffix removed (then
    ``deleted`` is True); pseudo paths such as ``[heap]`` are kept as printed.
    """

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str = ""
    deleted: bool = False

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def pages(self) -> int:
        return (self.end - self.start) >> PAGE_SHIFT

    @property
    def anonymous(self) -> bool:
        """No file behind it: plain anonymous memory, [heap], [stack] or [anon:NAME]."""
        return self.inode == 0 and (not self.path or self.path[0] == "[")

    @property
    def special(self) -> bool:
        """Kernel-provided mappings tierd never touches ([vdso], [vvar], [vsyscall] ...)."""
        return self.path in ("[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", "[uprobes]")


def _parse_maps_header(line: str, lineno: int, what: str) -> Vma:
    fields = line.split(None, 5)
    if len(fields) < 5:
        raise ParseError(what, lineno, f"expected at least 5 fields, got {len(fields)}")
    rng, perms, offset, dev, inode = fields[:5]
    path = fields[5] if len(fields) > 5 else ""
    start_s, sep, end_s = rng.partition("-")
    try:
        if not sep:
            raise ValueError("no '-' in the address range")
        start, end = int(start_s, 16), int(end_s, 16)
        off = int(offset, 16)
        ino = int(inode, 10)
    except ValueError as e:
        raise ParseError(what, lineno, f"bad number: {e}") from None
    if start < 0 or end < 0 or off < 0 or ino < 0 or start_s.startswith(("+", "-")):
        raise ParseError(what, lineno, "negative number")
    if end < start or end >= 1 << 64:
        raise ParseError(what, lineno, f"bad address range {rng}")
    if len(perms) != 4:
        raise ParseError(what, lineno, f"bad permissions {perms!r}")
    deleted = path.endswith(DELETED_SUFFIX)
    if deleted:
        path = path[: -len(DELETED_SUFFIX)]
    # seq_path() escapes newlines in file names as \012; undo it so names round-trip.
    if "\\012" in path:
        path = path.replace("\\012", "\n")
    return Vma(start, end, perms, off, dev, ino, path, deleted)


def parse_maps(text: str) -> tuple[Vma, ...]:
    """Parse /proc/PID/maps text.  Raises ParseError on a malformed line."""
    vmas = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.strip():
            vmas.append(_parse_maps_header(line, lineno, "maps"))
    return tuple(vmas)


def parse_smaps(text: str) -> tuple[tuple[Vma, Mapping[str, int]], ...]:
    """Parse /proc/PID/smaps: each VMA with its counters in bytes (``Rss``, ``Anonymous``...).

    Non-numeric fields (``VmFlags``) are left out.  Raises ParseError on malformed text.
    """
    out: list[tuple[Vma, dict[str, int]]] = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        head = line.split(None, 1)[0]
        if head.endswith(":"):
            if not out:
                raise ParseError("smaps", lineno, "counter before the first mapping")
            value = _parse_quantity(line[len(head):], lineno, "smaps", strict=False)
            if value is not None:
                out[-1][1][head[:-1]] = value
        else:
            out.append((_parse_maps_header(line, lineno, "smaps"), {}))
    return tuple(out)


def _parse_quantity(value: str, lineno: int, what: str, strict: bool = True) -> int | None:
    """'  1234 kB' -> 1263616; '  7' -> 7; anything else -> None (or ParseError if strict)."""
    parts = value.split()
    if len(parts) == 2 and parts[1] == "kB" and parts[0].isascii() and parts[0].isdigit():
        return int(parts[0]) * 1024  # /proc's "kB" is KiB (show_val_kb)
    if len(parts) == 1 and parts[0].isascii() and parts[0].isdigit():
        return int(parts[0])
    if strict:
        raise ParseError(what, lineno, f"bad quantity {value.strip()!r}")
    return None


# status fields printed in hex or octal (fs/proc/array.c): kept as strings.
STATUS_NOT_DECIMAL = frozenset({
    "Umask", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt", "CapInh", "CapPrm", "CapEff",
    "CapBnd", "CapAmb", "Cpus_allowed", "Mems_allowed",
})


def parse_status(text: str) -> dict[str, int | str]:
    """Parse /proc/PID/status: ``kB`` values become bytes, decimal integers ints, the rest
    (hex masks such as CapEff, octal Umask, lists) str."""
    out: dict[str, int | str] = {}
    for line in text.split("\n"):
        key, sep, value = line.partition(":")
        if not sep or not key:
            continue
        if key in STATUS_NOT_DECIMAL:
            out[key] = value.strip()
            continue
        q = _parse_quantity(value, 0, "status", strict=False)
        out[key] = q if q is not None else value.strip()
    return out


def parse_meminfo(text: str) -> dict[str, int]:
    """Parse /proc/meminfo (or a nodeN/meminfo with its "Node N " prefix): values in bytes."""
    out: dict[str, int] = {}
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise ParseError("meminfo", lineno, f"no ':' in {line!r}")
        words = key.split()
        if len(words) == 3 and words[0] == "Node":  # "Node 0 MemTotal" (drivers/base/node.c)
            words = words[2:]
        if len(words) != 1:
            raise ParseError("meminfo", lineno, f"bad key {key!r}")
        out[words[0]] = _parse_quantity(value, lineno, "meminfo")  # type: ignore[assignment]
    return out


def parse_cgroup(text: str) -> str | None:
    """The cgroup v2 path from /proc/PID/cgroup (the ``0::/path`` line), or None without v2."""
    for line in text.split("\n"):
        hid, sep1, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if sep1 and sep2 and hid == "0" and controllers == "":
            return path
    return None


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of /proc/PID/stat tierd uses."""

    pid: int
    comm: str
    state: str  # R, S, D, Z (zombie), X (dead), ...
    ppid: int
    starttime: int  # clock ticks after boot (field 22): a process's birth, never stepped


def parse_stat(data: bytes) -> ProcStat:
    """Parse /proc/PID/stat bytes.  comm may hold spaces and parentheses: it runs from the
    first " (" to the last ")".  Raises ParseError on anything else."""
    head, sep, rest = data.rpartition(b")")
    pid_s, sep2, comm = head.partition(b" (")
    fields = rest.split()
    if not sep or not sep2 or len(fields) < 20:
        raise ParseError("stat", 1, f"expected 'pid (comm) state ... starttime', got {data[:80]!r}")
    try:
        pid, ppid, start = int(pid_s), int(fields[1]), int(fields[19])
    except ValueError as e:
        raise ParseError("stat", 1, f"bad number: {e}") from None
    if pid < 0 or start < 0:
        raise ParseError("stat", 1, "negative pid or start time")
    return ProcStat(pid, comm.decode("utf-8", "surrogateescape"),
                    fields[0].decode("ascii", "replace"), ppid, start)


def parse_cmdline(data: bytes) -> tuple[str, ...]:
    """argv from /proc/PID/cmdline (NUL-separated, NUL-terminated; empty for kernel threads)."""
    if not data:
        return ()
    if data.endswith(b"\0"):
        data = data[:-1]
    return tuple(a.decode("utf-8", "surrogateescape") for a in data.split(b"\0"))


def decode_pagemap(entries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(present bool[n], pfn uint64[n]) from raw pagemap entries; pfn is 0 where not present
    (or where the reader lacks CAP_SYS_ADMIN)."""
    entries = np.asarray(entries, dtype=np.uint64)
    present = (entries & PM_PRESENT) != 0
    pfn = np.where(present, entries & PM_PFN_MASK, np.uint64(0))
    return present, pfn


def pread_full(fd: int, length: int, offset: int, chunk: int = 0) -> bytes:
    """pread until ``length`` bytes or end of file (short result then).

    ``chunk`` > 0 caps each call: sysfs binary attributes move at most PAGE_SIZE per read(2)
    (fs/kernfs/file.c, kernfs_file_read_iter), so asking for more only returns less.
    """
    parts = []
    done = 0
    while done < length:
        want = length - done if chunk <= 0 else min(chunk, length - done)
        data = os.pread(fd, want, offset + done)
        if not data:
            break
        parts.append(data)
        done += len(data)
    return b"".join(parts)


def _read_fd(fd: int) -> bytes:
    """Everything from ``fd`` (closed afterwards)."""
    parts = []
    try:
        while data := os.read(fd, 1 << 16):
            parts.append(data)
    finally:
        os.close(fd)
    return b"".join(parts)


def _no_entry(e: OSError) -> bool:
    return e.errno in (errno.ENOENT, errno.ESRCH, errno.ENOTDIR)


class ProcHandle(int):
    """One process, held: its /proc/PID directory descriptor and its identity (see the
    module docstring).  An int equal to the pid; ``key`` (pid, start time, generation) is the
    identity to store things under (``proc_key``): two handles of the same pid compare equal
    as ints.  ``generation`` counts the execve() calls tierd has seen (set by whoever
    replaces a handle after ``execed``).  ``close()`` releases the descriptors, idempotent.
    """

    dirfd: int | None
    mm_fd: int | None

    def __new__(cls, pid: int, dirfd: int, starttime: int, generation: int = 0) -> ProcHandle:
        self = super().__new__(cls, pid)
        self.dirfd = dirfd
        self.starttime = starttime
        self.generation = generation
        self.mm_fd = None
        # (maps text, its parse) of the last read (ProcFS.maps): most processes' mappings
        # do not change between two intervals, and parsing is most of a maps read's cost
        self.maps_memo: tuple[str, tuple] | None = None
        return self

    @property
    def pid(self) -> int:
        return int(self)

    @property
    def key(self) -> tuple[int, int, int]:
        return (int(self), self.starttime, self.generation)

    @property
    def closed(self) -> bool:
        return self.dirfd is None

    def __str__(self) -> str:  # the pid, as for an int (paths, messages)
        return int.__repr__(self)

    def __repr__(self) -> str:
        return f"ProcHandle(pid={int(self)}, start={self.starttime}, gen={self.generation}" + (
            ", closed)" if self.closed else ")")

    def open(self, name: str, flags: int = os.O_RDONLY) -> int:
        """os.open of NAME in the process's directory; OSError as the kernel gives it
        (ENOENT once the process is reaped), ProcessGone once closed."""
        if self.dirfd is None:
            raise ProcessGone(int(self), "its handle was closed")
        return os.open(name, flags | os.O_CLOEXEC, dir_fd=self.dirfd)

    def stat(self) -> ProcStat:
        """Its stat, read through the held directory; ProcessGone once reaped or closed."""
        try:
            return parse_stat(_read_fd(self.open("stat")))
        except OSError as e:
            if _no_entry(e):
                raise ProcessGone(int(self), "its /proc directory is gone") from None
            raise

    def alive(self) -> bool:
        """Still this process, and not a zombie (a zombie has no memory left)."""
        try:
            st = self.stat()
        except (ProcessGone, ParseError):  # an unreadable stat cannot vouch for it either
            return False
        return st.starttime == self.starttime and st.state not in ("Z", "X")

    def watch_mm(self) -> None:
        """Open the address-space witness (pagemap, bound to the mm at open) for ``execed``.
        Without it (no permission, a fixture without pagemap) exec is not detected here;
        readers still see their own descriptors fail (ProcessGone)."""
        if self.mm_fd is None and self.dirfd is not None:
            try:
                self.mm_fd = self.open("pagemap")
            except OSError:
                pass

    def execed(self) -> bool:
        """True if the address space watched since ``watch_mm`` is gone while the process
        lives on: it called execve().  One 8-byte read (pagemap entry 0, below every task's
        end: it reads empty only once the mm has no users)."""
        if self.mm_fd is None:
            return False
        try:
            gone = not os.pread(self.mm_fd, 8, 0)
        except OSError as e:
            gone = e.errno == errno.ESRCH
        return gone and self.alive()

    def pidfd(self) -> int:
        """A pidfd of this process (pidfd_open, Linux 5.3), for process_madvise: opened by
        pid, then checked: if this process still lives after the open, the pid was not
        reused in between, so the pidfd is this process's.  The caller closes it."""
        try:
            fd = os.pidfd_open(int(self))
        except ProcessLookupError:
            raise ProcessGone(int(self), "pidfd_open: no such process") from None
        if not self.alive():
            os.close(fd)
            raise ProcessGone(int(self), "exited before its pidfd was checked")
        return fd

    def close(self) -> None:
        self.maps_memo = None
        for attr in ("mm_fd", "dirfd"):
            fd = getattr(self, attr)
            setattr(self, attr, None)
            if fd is not None:
                os.close(fd)


def proc_key(pid):
    """What to key per-process data on: a ProcHandle's identity, or a plain pid."""
    return pid.key if isinstance(pid, ProcHandle) else pid


class ProcFS:
    """Reads /proc below ``root``.  Stateless apart from the root; safe to share."""

    def __init__(self, root: str = "/proc") -> None:
        self.root = root

    def path(self, pid: int | str, name: str = "") -> str:
        return os.path.join(self.root, str(pid), name) if name else os.path.join(self.root, str(pid))

    def exists(self, pid: int) -> bool:
        """The process is there: for a ProcHandle, that very process (not a zombie)."""
        if isinstance(pid, ProcHandle):
            return pid.alive()
        return os.path.isdir(self.path(pid))

    def open_process(self, pid: int) -> ProcHandle:
        """Hold process ``pid``: its /proc/PID directory descriptor (O_PATH) and start time.
        ProcessGone if there is no such process, or only a zombie."""
        try:
            dirfd = os.open(self.path(pid), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            if _no_entry(e):
                raise ProcessGone(pid, "no /proc entry") from None
            raise
        h = ProcHandle(pid, dirfd, 0)
        try:
            st = h.stat()
            if st.state in ("Z", "X"):
                raise ProcessGone(pid, "a zombie")
        except BaseException:
            h.close()
            raise
        h.starttime = st.starttime
        return h

    def _gone_or_raise(self, pid: int | str, e: OSError) -> None:
        """Re-raise ``e`` as ProcessGone if the process is gone, else unchanged."""
        if e.errno == errno.ESRCH or (
            e.errno == errno.ENOENT and pid != "self" and not self.exists(pid)
        ):
            raise ProcessGone(os.getpid() if pid == "self" else int(pid), e.strerror or "") from None
        raise e

    def read_bytes(self, pid: int | str, name: str) -> bytes:
        fd = self.open(pid, name)
        try:
            return _read_fd(fd)
        except OSError as e:
            self._gone_or_raise(pid, e)
            raise  # unreachable: keeps type checkers happy

    def read_text(self, pid: int | str, name: str) -> str:
        return self.read_bytes(pid, name).decode("utf-8", "surrogateescape")

    def open(self, pid: int | str, name: str, flags: int = os.O_RDONLY) -> int:
        """os.open of /proc/PID/NAME with O_CLOEXEC (through the held directory for a
        ProcHandle); ProcessGone if the process is gone."""
        try:
            if isinstance(pid, ProcHandle):
                return pid.open(name, flags)
            return os.open(self.path(pid, name), flags | os.O_CLOEXEC)
        except OSError as e:
            self._gone_or_raise(pid, e)
            raise

    def pids(self) -> tuple[int, ...]:
        """All process ids (thread-group leaders), ascending."""
        return tuple(sorted(int(n) for n in os.listdir(self.root) if n.isascii() and n.isdigit()))

    def stat(self, pid: int | str) -> ProcStat:
        return parse_stat(self.read_bytes(pid, "stat"))

    def maps(self, pid: int | str) -> tuple[Vma, ...]:
        """The process's mappings; for a held process the same tuple as at the last read
        when the text has not changed (its parse is kept on the handle)."""
        text = self.read_text(pid, "maps")
        if isinstance(pid, ProcHandle):
            memo = pid.maps_memo
            if memo is not None and memo[0] == text:
                return memo[1]
            vmas = parse_maps(text)
            pid.maps_memo = (text, vmas)
            return vmas
        return parse_maps(text)

    def smaps(self, pid: int | str) -> tuple[tuple[Vma, Mapping[str, int]], ...]:
        return parse_smaps(self.read_text(pid, "smaps"))

    def status(self, pid: int | str) -> dict[str, int | str]:
        return parse_status(self.read_text(pid, "status"))

    def comm(self, pid: int | str) -> str:
        return self.read_text(pid, "comm").rstrip("\n")

    def cmdline(self, pid: int | str) -> tuple[str, ...]:
        return parse_cmdline(self.read_bytes(pid, "cmdline"))

    def cgroup(self, pid: int | str) -> str | None:
        return parse_cgroup(self.read_text(pid, "cgroup"))

    def exe_id(self, h: ProcHandle) -> tuple[int, int] | None:
        """(st_dev, st_ino) of the binary a held process runs: changes when it execs
        another; None when it cannot be read (a kernel thread, permissions)."""
        try:
            st = os.stat("exe", dir_fd=h.dirfd)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def exe(self, pid: int | str) -> str | None:
        """Resolved /proc/PID/exe, without a " (deleted)" suffix (binary replaced by an
        upgrade); None for kernel threads, which have no exe.  PermissionError if not allowed."""
        try:
            if isinstance(pid, ProcHandle):
                if pid.dirfd is None:
                    raise ProcessGone(int(pid), "its handle was closed")
                target = os.readlink("exe", dir_fd=pid.dirfd)
            else:
                target = os.readlink(self.path(pid, "exe"))
        except OSError as e:
            if e.errno == errno.ENOENT and self.exists(pid):
                return None  # kernel thread: the link exists but does not resolve
            self._gone_or_raise(pid, e)
            raise
        return target[: -len(DELETED_SUFFIX)] if target.endswith(DELETED_SUFFIX) else target

    def meminfo(self) -> dict[str, int]:
        with open(os.path.join(self.root, "meminfo"), encoding="utf-8", errors="surrogateescape") as f:
            return parse_meminfo(f.read())

    def pagemap(self, pid: int | str, vpn: int, npages: int) -> np.ndarray:
        """Raw pagemap entries (uint64[npages]) for virtual pages vpn .. vpn+npages-1.

        Opens and closes the file each call; readers that sample repeatedly keep their own
        descriptor (tracking.py).  Pages beyond the task's address space read as 0.
        """
        fd = self.open(pid, "pagemap")
        try:
            return read_pagemap(fd, pid, vpn, npages)
        finally:
            os.close(fd)


def read_pagemap(fd: int, pid: int | str, vpn: int, npages: int) -> np.ndarray:
    """One pread of ``npages`` pagemap entries from an open pagemap ``fd``.

    pagemap_read() returns 0 bytes once the task's mm is gone (exited, or a zombie), but also
    for offsets beyond the task size; entry 0 (vpn 0, always inside the task) tells them apart.
    """
    out = np.zeros(npages, dtype=np.uint64)
    if npages <= 0:
        return out
    try:
        data = pread_full(fd, npages * PM_ENTRY_BYTES, vpn * PM_ENTRY_BYTES)
        gone = not data and not os.pread(fd, PM_ENTRY_BYTES, 0)
    except OSError as e:
        if e.errno == errno.ESRCH:
            raise ProcessGone(int(pid), e.strerror or "") from None
        raise
    if gone:  # raised here, not in the try: ProcessGone is an ESRCH OSError itself
        raise ProcessGone(int(pid), "its address space is gone")
    n = len(data) // PM_ENTRY_BYTES
    out[:n] = np.frombuffer(data, dtype=np.uint64, count=n)  # native byte order
    return out
