"""A real PostgreSQL as a tiering workload (tests/vm/guest/test_guest_postgres.py, the PG
scenario of benchmarks/side_by_side.py), with ground truth from the database itself.

``Postgres`` runs a cluster of its own (Debian's package, as the ``postgres`` user) with
PGDATA on a tmpfs whose pages are bound to one node (the "disk": node 1, slow, so the data
files take no room on the fast node), loads it with ``pgbench -i``, fills the buffer pool
with pg_prewarm and moves everything that backend touched (the whole buffer pool) to the slow
node with migrate_pages(2).  ``Pgbench`` then runs a skewed read-only load: 4 clients, one
SELECT by primary key per transaction, keys drawn with random_zipfian and scattered over the
table with permute(), so the hot rows (and their heap and index pages) are spread over the
whole buffer pool.

Ground truth (``BufferPool``): pg_buffercache's usage count per buffer (each pin by a backend
adds one, up to 5; with the whole database in shared_buffers the clock sweep never runs, so
the counts only grow) says which buffers the load uses; pg_shmem_allocations gives the
offset of the "Buffer Blocks" in the main shared memory segment, whose start is in the
postmaster's maps, so buffer N (1-based) is at segment + offset + (N - 1) * 8 KiB.  A
buffer's 4 KiB pages are located with move_pages(2) queries (``workloads.node_of``) through
the pgbench backends, which have them in their page tables (a query never faults a page in;
the postmaster never touched the buffers; the backends are looked up with every sample).
Only whole 4 KiB pages inside a buffer count.

Everything here needs root; mounting the tmpfs with a node binding needs a NUMA machine
(the rig), ``node=None`` mounts it unbound.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from workloads import WorkloadError, node_of

PAGE = 4096
BLCKSZ = 8192
USER = "postgres"
_SYS_MIGRATE_PAGES = 256  # x86_64
_libc = ctypes.CDLL(None, use_errno=True)

# The load: -S-like selects by primary key, aid zipf-distributed (s=1.1: about a fifth of the
# rows take 80% of the accesses) and permuted so that hot rows are scattered over the table.
ZIPF_SELECT = """\\set aid permute(random_zipfian(1, 100000 * :scale, {s}), 100000 * :scale, 17)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
"""


def bindir() -> Path:
    """The newest installed server's bin directory (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if not found:
        raise WorkloadError("no PostgreSQL server in /usr/lib/postgresql: "
                            "run scripts/install-deps.sh --kernel (apt package postgresql)")
    return found[-1].parent


def missing() -> str | None:
    """Why a cluster cannot run here (for a skip or a failure message), or None."""
    try:
        bindir()
    except WorkloadError as e:
        return str(e)
    if shutil.which("runuser") is None:
        return "runuser (util-linux) missing"
    try:
        import pwd

        pwd.getpwnam(USER)
    except KeyError:
        return f"no {USER} user (created by the postgresql package)"
    return None


def migrate_pages(pid: int, src: set[int], dst: set[int]) -> int:
    """migrate_pages(2): a process's pages on ``src`` nodes to ``dst`` (as root: shared pages
    too, MPOL_MF_MOVE_ALL); returns the pages that could not be moved."""
    def mask(nodes):
        return ctypes.c_ulong(sum(1 << n for n in nodes))
    old, new = mask(src), mask(dst)
    rc = _libc.syscall(ctypes.c_long(_SYS_MIGRATE_PAGES), ctypes.c_long(pid), ctypes.c_ulong(64),
                       ctypes.byref(old), ctypes.byref(new))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"migrate_pages of pid {pid}: {os.strerror(err)}")
    return rc


def children(ppid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == ppid:
                out.append(int(d.name))
    return out


class Postgres:
    """One cluster in ``root`` (a tmpfs mounted there, pages bound to ``node``)."""

    def __init__(self, root: Path, *, shared_buffers_mib: int = 256, tmpfs_mib: int = 768,
                 node: int | None = 1, port: int = 5433) -> None:
        self.root = Path(root)
        self.data = self.root / "data"
        self.shared_buffers_mib = shared_buffers_mib
        self.tmpfs_mib = tmpfs_mib
        self.node = node
        self.port = port
        self.bin = bindir()
        self.mounted = False
        self.running = False

    def _run(self, *argv, timeout: float = 900, check: bool = True, **kw):
        p = subprocess.run(["runuser", "-u", USER, "--", *map(str, argv)], capture_output=True,
                           text=True, timeout=timeout, **kw)
        if check and p.returncode:
            raise WorkloadError(f"{' '.join(map(str, argv))}: exit {p.returncode}\n"
                                f"{p.stdout[-2000:]}{p.stderr[-2000:]}")
        return p

    def start(self) -> Postgres:
        self.root.mkdir(parents=True, exist_ok=True)
        opts = f"size={self.tmpfs_mib}m,mode=0755"
        if self.node is not None:
            opts += f",mpol=bind:{self.node}"
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(self.root)], check=True)
        self.mounted = True
        shutil.chown(self.root, USER, USER)
        self._run(self.bin / "initdb", "-D", self.data, "-A", "trust", "-U", USER, "--no-sync",
                  "--locale=C", "-E", "UTF8")
        conf = {
            "shared_buffers": f"{self.shared_buffers_mib}MB",
            "huge_pages": "off",  # 4 KiB pages, as tierd's ground truth counts them
            "listen_addresses": "''", "unix_socket_directories": f"'{self.root}'",
            "port": self.port, "max_connections": 20,
            # a benchmark on a tmpfs: no durability work, nothing running on its own
            "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
            "autovacuum": "off", "jit": "off", "max_parallel_workers_per_gather": 0,
            "dynamic_shared_memory_type": "mmap",
        }
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("".join(f"{k} = {v}\n" for k, v in conf.items()))
        self.pg_ctl("start")
        return self

    def pg_ctl(self, action: str) -> None:
        self._run(self.bin / "pg_ctl", "-D", self.data, "-l", self.root / "server.log", "-w",
                  "-t", "600", "-m", "fast", action)
        self.running = action != "stop"

    def conn(self) -> list[str]:
        return ["-h", str(self.root), "-p", str(self.port), "-U", USER]

    def psql(self, sql: str, timeout: float = 600) -> list[list[str]]:
        p = self._run(self.bin / "psql", *self.conn(), "-d", "postgres", "-X", "-A", "-t", "-q",
                      "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql, timeout=timeout)
        return [line.split("\t") for line in p.stdout.splitlines() if line]

    def load(self, scale: int) -> float:
        """pgbench -i (server-side data generation, primary keys), then a restart (an empty
        buffer pool: usage counts start from the prewarm); returns the seconds it took."""
        t = time.monotonic()
        self._run(self.bin / "pgbench", *self.conn(), "-i", "-s", scale, "-I", "dtGp", "-q",
                  "postgres")
        self.pg_ctl("restart")
        self.psql("CREATE EXTENSION pg_buffercache; CREATE EXTENSION pg_prewarm;")
        return time.monotonic() - t

    def postmaster(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def pids(self) -> list[int]:
        pm = self.postmaster()
        return [pm, *children(pm)]

    def prewarm_to(self, node: int, from_nodes=(0,)) -> dict:
        """Read the pgbench tables and indexes into shared buffers in one backend and move
        every page that backend and the other server processes have (the buffer pool and
        their own memory) to ``node`` with migrate_pages: the database starts on that node."""
        sql = ("SELECT sum(pg_prewarm(c.oid::regclass)) FROM pg_class c "
               "WHERE c.relname LIKE 'pgbench_%' AND c.relkind IN ('r', 'i'); "
               "SELECT pg_sleep(600);")
        holder = subprocess.Popen(["runuser", "-u", USER, "--", str(self.bin / "psql"),
                                   *self.conn(), "-d", "postgres", "-X", "-q", "-c", sql],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        pid = None
        try:
            deadline = time.monotonic() + 600
            while pid is None:
                rows = self.psql("SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep'")
                pid = int(rows[0][0]) if rows else None
                if holder.poll() is not None:
                    raise WorkloadError(f"prewarm: psql exited {holder.returncode}: "
                                        f"{holder.stderr.read()[-2000:]}")
                if pid is None:
                    if time.monotonic() > deadline:
                        raise WorkloadError("prewarm did not finish in 600 s")
                    time.sleep(0.5)
            left = {}
            for p in self.pids():
                try:
                    left[p] = migrate_pages(p, set(from_nodes), {node})
                except ProcessLookupError:  # a short-lived child (a connection's) exited
                    pass
        finally:
            holder.kill()
            holder.wait()
        # the backend in pg_sleep would not notice its client gone: it maps the whole buffer
        # pool and would be the largest postgres process of all, idle
        self.psql(f"SELECT pg_terminate_backend({pid})" if pid else "SELECT 1")
        while pid and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        return left

    def segment(self) -> tuple[int, int]:
        """(start, end) of the main shared memory segment in the postmaster's maps: the
        largest shared writable mapping (anonymous shared memory shows as /dev/zero)."""
        best = None
        for line in Path(f"/proc/{self.postmaster()}/maps").read_text().splitlines():
            f = line.split()
            if len(f) > 5 and f[1] == "rw-s" and "/dev/zero" in line:
                lo, hi = (int(x, 16) for x in f[0].split("-"))
                if best is None or hi - lo > best[1] - best[0]:
                    best = (lo, hi)
        if best is None:
            raise WorkloadError("no shared /dev/zero mapping in the postmaster's maps")
        return best

    def buffer_blocks(self) -> int:
        """Address of buffer 1's block: segment start + offset of "Buffer Blocks"."""
        rows = self.psql("SELECT off FROM pg_shmem_allocations WHERE name = 'Buffer Blocks'")
        return self.segment()[0] + int(rows[0][0])

    def stop(self) -> None:
        if self.running:
            self._run(self.bin / "pg_ctl", "-D", self.data, "-w", "-m", "immediate", "stop",
                      check=False)
            self.running = False
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.root)], check=False)
            self.mounted = False

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Pgbench:
    """``pgbench -c CLIENTS -T SECONDS`` of the zipfian select script, progress every
    ``progress`` seconds (transactions so far are parsed from it)."""

    def __init__(self, pg: Postgres, workdir: Path, *, seconds: float, scale: int,
                 clients: int = 4, zipf: float = 1.1, progress: int = 5) -> None:
        self.pg = pg
        script = pg.root / "zipf_select.sql"  # the postgres user reads it
        script.write_text(ZIPF_SELECT.format(s=zipf))
        os.chmod(script, 0o644)
        self.log = Path(workdir) / "pgbench.log"
        self.argv = ["runuser", "-u", USER, "--", str(pg.bin / "pgbench"), *pg.conn(),
                     "-n", "-c", str(clients), "-j", "2", "-T", str(int(seconds)),
                     "-P", str(progress), "-s", str(scale), "-f", str(script), "postgres"]
        self.proc: subprocess.Popen | None = None
        self.clients = clients

    def start(self) -> Pgbench:
        self._out = open(self.log, "w")
        self.proc = subprocess.Popen(self.argv, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def backends(self, timeout: float = 120) -> list[int]:
        """Pids of the pgbench sessions' backends, once all clients are connected."""
        end = time.monotonic() + timeout
        while True:
            rows = self.pg.psql("SELECT pid FROM pg_stat_activity "
                                "WHERE application_name = 'pgbench'")
            if len(rows) >= self.clients:
                return [int(r[0]) for r in rows]
            if self.proc.poll() is not None or time.monotonic() > end:
                raise WorkloadError(f"pgbench: {len(rows)} of {self.clients} clients "
                                    f"connected:\n{self.text()[-2000:]}")
            time.sleep(0.2)

    def transactions(self) -> int:
        """Transactions so far, from the last progress line (tps x interval summed)."""
        return progress_transactions(self.text())

    def wait(self, timeout: float) -> dict:
        """Wait for the end; returns its summary (exit code, transactions, failed, tps)."""
        rc = self.proc.wait(timeout=timeout)
        self._out.close()
        return {"returncode": rc, **summary(self.text())}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def progress_transactions(text: str) -> int:
    total, prev_t = 0.0, 0.0
    for m in re.finditer(r"^progress: ([\d.]+) s, ([\d.]+) tps", text, re.M):
        t, tps = float(m[1]), float(m[2])
        total += tps * (t - prev_t)
        prev_t = t
    return int(total)


def summary(text: str) -> dict:
    """pgbench's final report: transactions processed, failed, tps."""
    def num(pattern, cast=int):
        m = re.search(pattern, text, re.M)
        return cast(m[1]) if m else None
    return {"transactions": num(r"number of transactions actually processed: (\d+)"),
            "failed": num(r"number of failed transactions: (\d+)"),
            "tps": num(r"^tps = ([\d.]+)", float),
            "errors": len(re.findall(r"(?m)^(?:pgbench: error|.*ERROR:)", text))}


class BufferPool:
    """The buffer pool's ground truth: usage counts (pg_buffercache) and where the pages of
    the buffers are (move_pages queries through processes that map them)."""

    def __init__(self, pg: Postgres) -> None:
        self.pg = pg
        self.base = pg.buffer_blocks()
        self.errors: list[str] = []

    def usage(self) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(bufferid, usagecount) of the buffers holding pgbench relations' blocks, and the
        pids of the pgbench clients' backends now (one query: the guest is slow)."""
        rows = self.pg.psql(
            "SELECT b.bufferid, b.usagecount FROM pg_buffercache b JOIN pg_class c "
            "ON b.relfilenode = c.relfilenode AND b.reldatabase = (SELECT oid FROM pg_database "
            "WHERE datname = current_database()) WHERE c.relname LIKE 'pgbench_%' "
            "UNION ALL SELECT -pid, 0 FROM pg_stat_activity WHERE application_name = 'pgbench'")
        a = np.array(rows, dtype=np.int64).reshape(-1, 2)
        buf = a[:, 0] > 0
        return a[buf, 0], a[buf, 1], (-a[~buf, 0]).tolist()

    def pages(self, bufferids: np.ndarray) -> np.ndarray:
        """Addresses of the whole 4 KiB pages inside the given buffers (1-based ids)."""
        start = self.base + (np.asarray(bufferids, dtype=np.int64) - 1) * BLCKSZ
        first = (start + PAGE - 1) // PAGE
        n = (start + BLCKSZ) // PAGE - first  # 1 or 2 (2 when the buffer is page-aligned)
        idx = np.repeat(first, n) + (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n))
        return np.unique(idx).astype(np.uint64) * np.uint64(PAGE)

    def nodes(self, pids: list[int], addrs: np.ndarray) -> np.ndarray:
        """Node of each page as seen by any of ``pids`` (-1: in none of their page tables;
        ``errors`` keeps the queries that failed, e.g. of a backend that exited)."""
        out = np.full(addrs.size, -1, dtype=np.int32)
        for pid in pids:
            try:
                n = node_of(pid, addrs)
            except OSError as e:
                self.errors.append(str(e))
                continue
            out = np.where(out >= 0, out, n)
        return np.where(out >= 0, out, -1)

    def sample(self, hot_usage: int = 5) -> dict:
        """Ground truth now: pages of the buffers with usage count >= ``hot_usage`` (hot)
        and of the others (cold), each located through the pgbench backends; the usage
        histogram and the backends."""
        ids, usage, pids = self.usage()
        hot = self.nodes(pids, self.pages(ids[usage >= hot_usage]))
        cold = self.nodes(pids, self.pages(ids[usage < hot_usage]))
        return {"hot": int((hot >= 0).sum()), "hot_fast": int((hot == 0).sum()),
                "cold": int((cold >= 0).sum()), "cold_fast": int((cold == 0).sum()),
                "usage": np.bincount(usage, minlength=6).tolist(), "backends": pids}
