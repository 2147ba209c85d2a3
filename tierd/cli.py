"""tierd's command line: the only module that prints for the user or decides the exit code.

Commands:
  tierd check-config FILE     validate a policy file, print the effective values
  tierd topology              NUMA nodes, memory tiers, fast/slow classes, kernel interfaces
  tierd scan --pid N          sample a process's page accesses K times, per mapping and node
  tierd run / simulate        the daemon and the policy simulator (tierd.engine; present only
                              when the engine modules are installed; one that is installed but
                              fails to import says why when used, exit 1)

Exit codes (also in ``tierd --help``):
  0  success
  1  runtime failure: the kernel lacks an interface (the message says which and how to get
     it), the process exited, permission denied, an I/O error
  2  usage or configuration error: bad arguments, an invalid policy file (FILE:LINE: KEY)
  69 (tierd run) this host cannot tier: one class of memory only, or no access-tracking
     interface (BSD EX_UNAVAILABLE; permanent: tierd.service does not restart on it, nor on 2)
  130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from tierd import __version__

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69  # tierd run: the host cannot tier (tierd.service: RestartPreventExitStatus)
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """exit codes:
  0    success
  1    runtime failure (missing kernel interface, process gone, permission, I/O)
  2    usage or configuration error (bad arguments, invalid policy file)
  69   tierd run: this host cannot tier (one class of memory, no access tracking)
  130  interrupted"""

# Engine subcommands, registered only when their module imports (owned by tierd.engine).
ENGINE_COMMANDS = (
    ("run", "tierd.service", "add_run_arguments",
     "run the tiering daemon with a policy file"),
    ("simulate", "tierd.sim.simulate", "add_simulate_arguments",
     "run the policy simulator on a simulated machine and workload"),
)


class UsageError(Exception):
    """A bad argument value (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is raised (main prints it as one line on ``err``, exit
    2) instead of printed with the usage to sys.stderr and sys.exit."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


# ---------------------------------------------------------------------------------------------
# argument parsing


def _duration_arg(text: str) -> float:
    from tierd.units import UnitError, parse_duration

    try:
        v = parse_duration(text)
    except UnitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if v <= 0:
        raise argparse.ArgumentTypeError("must be longer than 0s")
    return v


def _positive_int(text: str, hi: int | None = None) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    if hi is not None and v > hi:
        raise argparse.ArgumentTypeError(f"must be at most {hi}")
    return v


MAX_SAMPLES = 65535  # scan's per-page access counter is uint16
MAX_PID = 1 << 22  # PID_MAX_LIMIT


def _samples_arg(text: str) -> int:
    return _positive_int(text, MAX_SAMPLES)


def _pid_arg(text: str) -> int:
    return _positive_int(text, MAX_PID)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tierd",
        description="Keeps each process's hot pages on fast memory (DRAM) and its cold pages "
        "on the slow memory tier (CXL, PMEM), using per-page access bits and move_pages(2).",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tierd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("check-config", help="validate a policy file (exit 2 if invalid)",
                       epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="policy file, e.g. /etc/tierd.yaml")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("topology", help="show NUMA nodes, memory tiers and kernel interfaces",
                       epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE",
                   help="apply this policy's nodes.fast / nodes.slow overrides")
    p.set_defaults(func=cmd_topology)

    p = sub.add_parser(
        "scan", help="sample a process's page accesses and print where they are",
        description="Samples the process K times, S apart, with the best access-tracking "
        "interface, and prints per mapping and per NUMA node how many resident pages were "
        "accessed in how many of the K samples.  Without an access-tracking interface it "
        "prints the resident pages per mapping and node, says why, and exits 1; so it does "
        "when move_pages cannot tell the pages' nodes.",
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--pid", type=_pid_arg, required=True, help="process id")
    p.add_argument("--samples", type=_samples_arg, default=5, metavar="K",
                   help=f"number of samples (default 5, at most {MAX_SAMPLES})")
    p.add_argument("--interval", type=_duration_arg, default=1.0, metavar="S",
                   help='time between samples: "1s", "500ms", 2 (default 1s)')
    p.add_argument("--reader", choices=("auto", "idle_bitmap", "page_idle"), default="auto",
                   help="access-tracking interface (default: the best available)")
    p.add_argument("--top", type=_positive_int, default=20, metavar="N",
                   help="mappings to list before aggregating the rest (default 20)")
    p.add_argument("--heatmap", metavar="FILE.png",
                   help="also draw the access heatmap (address x sample, with the node of "
                   "each address range beside it) into this PNG (or .svg, .pdf) file")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser(
        "status", help="what the running daemon is doing (from its metrics endpoint)",
        description="Reads the running daemon's metrics endpoint (the policy's metrics.listen) "
        "and prints its targets, pages per node by hot/warm/cold, migrations, errors and the "
        "policy in force.  Exits 1 when no daemon answers.",
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="/etc/tierd.yaml", metavar="FILE",
                   help="policy whose metrics.listen to ask (default /etc/tierd.yaml; "
                   "127.0.0.1:9464 if it does not exist)")
    p.add_argument("--url", help="the metrics URL instead, e.g. http://127.0.0.1:9464/metrics")
    p.set_defaults(func=cmd_status)

    unavailable = []
    for name, modname, adder, help_text in ENGINE_COMMANDS:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name != modname:  # the module exists but something it imports does not
                _add_broken(sub, name, help_text, f"{modname}: {e}")
                unavailable.append(f"{name} ({modname}: {e})")
            continue
        except Exception as e:  # a broken engine must not take check-config/topology down
            _add_broken(sub, name, help_text, f"{modname}: {type(e).__name__}: {e}")
            unavailable.append(f"{name} ({modname}: {type(e).__name__}: {e})")
            continue
        p = sub.add_parser(name, help=help_text, epilog=EXIT_CODES_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add = getattr(mod, adder, None)
        if add is not None:
            add(p)
        p.set_defaults(func=_engine_main(mod))
    if unavailable:
        parser.epilog = EXIT_CODES_HELP + "\n\nunavailable commands: " + "; ".join(unavailable)
    return parser


def _add_broken(sub, name: str, help_text: str, why: str) -> None:
    """``name`` is installed but does not import: keep the command, so that using it says why
    (exit 1) instead of argparse's "invalid choice"; it takes any arguments."""
    p = sub.add_parser(name, help=f"{help_text} (UNAVAILABLE: {why})", add_help=False,
                       prefix_chars="\0")
    p.add_argument("args", nargs="*")

    def broken(args, kernel, out, err) -> int:
        print(f"tierd: {name} is unavailable: cannot import {why}", file=err)
        return EXIT_FAILURE

    p.set_defaults(func=broken)


def _engine_main(mod):
    def run(args, kernel, out, err) -> int:
        rc = mod.main(args)
        return EXIT_OK if rc is None else int(rc)

    return run


def main(argv: list[str] | None = None, *, kernel=None, out=None, err=None) -> int:
    """Entry point (console script ``tierd``).  ``kernel`` (a tierd.linux.Kernel or a fake),
    ``out`` and ``err`` are injectable for tests.  Returns the exit code."""
    from tierd.linux import FeatureMissing, ParseError, ProcessGone
    from tierd.policy import PolicyError

    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(e if str(e).startswith("tierd") else f"tierd: {e}", file=err)
        return EXIT_USAGE
    except SystemExit as e:  # argparse: --help/--version (0)
        return int(e.code or 0) if isinstance(e.code, int) else EXIT_USAGE
    try:
        return args.func(args, kernel, out, err)
    except PolicyError as e:
        print(f"tierd: {e}", file=err)
        return EXIT_USAGE
    except UsageError as e:
        print(f"tierd: {e}", file=err)
        return EXIT_USAGE
    except FeatureMissing as e:
        print(f"tierd: {e}", file=err)
        return EXIT_FAILURE
    except ProcessGone as e:
        print(f"tierd: {e}", file=err)
        return EXIT_FAILURE
    except ParseError as e:  # /proc or /sys text not as the kernel writes it
        print(f"tierd: cannot understand {e}", file=err)
        return EXIT_FAILURE
    except PermissionError as e:
        where = f" ({e.filename})" if e.filename else ""
        print(f"tierd: permission denied{where}: {e.strerror or e}; run tierd as root", file=err)
        return EXIT_FAILURE
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        print(f"tierd: {e.strerror or e}{where}", file=err)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("tierd: interrupted", file=err)
        return EXIT_INTERRUPTED


def _kernel(kernel):
    if kernel is not None:
        return kernel
    from tierd.linux import Kernel

    return Kernel()


# ---------------------------------------------------------------------------------------------
# check-config


def cmd_check_config(args, kernel, out, err) -> int:
    from tierd.policy import load_policy

    policy = load_policy(args.file)
    print(f"{args.file}: OK ({len(policy.targets)} target(s))", file=out)
    for k, v in policy.summary().items():
        print(f"  {k}: {v}", file=out)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# status


def cmd_status(args, kernel, out, err) -> int:
    import os

    from tierd.policy import Policy, load_policy
    from tierd.status import BadURL, NoDaemon, fetch, format_status, parse

    url = args.url
    if url is None:
        listen = Policy().metrics_listen
        if os.path.exists(args.config):
            listen = load_policy(args.config).metrics_listen  # PolicyError: exit 2
            if not listen:
                raise UsageError(f"{args.config}: metrics.listen is \"\": the daemon serves no "
                                 "metrics, so there is nothing to ask (give --url, or set it)")
        host, _, port = listen.rpartition(":")
        url = f"http://{'localhost' if host in ('0.0.0.0', '[::]') else host}:{port}/metrics"
    try:
        st = parse(fetch(url), url)
    except BadURL as e:
        raise UsageError(str(e)) from None
    except NoDaemon as e:
        print(f"tierd: {e}", file=err)
        return EXIT_FAILURE
    for line in format_status(st):
        print(line, file=out)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# topology


def cmd_topology(args, kernel, out, err) -> int:
    from tierd.linux import format_nodelist
    from tierd.units import format_size

    k = _kernel(kernel)
    fast_cfg = slow_cfg = "auto"
    if args.config:
        from tierd.policy import load_policy

        pol = load_policy(args.config)
        fast_cfg = pol.fast_nodes or "auto"
        slow_cfg = pol.slow_nodes or "auto"
    topo = k.topology()
    feats = k.features()
    try:
        fast, slow = topo.classify(fast_cfg, slow_cfg)
    except ValueError as e:
        raise UsageError(f"{args.config}: nodes: {e}") from None

    tiers = k.sysfs.memory_tiers()
    tier_text = ", ".join(f"memory_tier{t} = node(s) {format_nodelist(n)}" for t, n in tiers.items())
    numa = "NUMA" if feats.numa.available else "no NUMA support in this kernel: one node"
    print(f"NUMA nodes: {len(topo.nodes)} online ({format_nodelist(topo.ids)}; {numa})", file=out)
    print(f"memory tiers: {tier_text or 'none (kernel before 6.1, or no NUMA)'}", file=out)
    rows = [("node", "cpus", "MemTotal", "MemFree", "tier", "class", "distances")]
    for n in topo.nodes:
        cls = "fast" if n.id in fast else "slow" if n.id in slow else "no memory"
        rows.append((str(n.id), format_nodelist(n.cpus) if n.cpus else "-",
                     format_size(n.mem_total), format_size(n.mem_free),
                     "-" if n.tier is None else str(n.tier), cls,
                     " ".join(map(str, n.distances)) or "-"))
    _table(rows, out, right=(0, 2, 3, 4))
    mem_tiers = {n.tier for n in topo.nodes if n.has_memory and n.tier is not None}
    how = ("the policy's nodes.fast/nodes.slow" if args.config and (pol.fast_nodes or pol.slow_nodes)
           else "one memory node" if len(fast) + len(slow) <= 1
           else "memory tiers" if len(mem_tiers) >= 2
           else "CPUs: memory-only nodes are slow")
    print(f"fast tier: node(s) {format_nodelist(fast)}; slow tier: node(s) {format_nodelist(slow)}"
          f" (by {how})", file=out)
    if not slow:
        print("  only one class of memory: tierd has nothing to move on this machine", file=out)

    print("\nkernel interfaces:", file=out)
    for f in feats.all():
        mark = "yes" if f.available else "NO "
        print(f"  [{mark}] {f.name:<13} {f.since}", file=out)
        print(f"        {f.detail}", file=out)
        if not f.available:
            print(f"        fix: {f.how_to_fix}", file=out)
    readers = feats.readers
    if readers:
        print(f"\naccess tracking: {readers[0]} (usable: {', '.join(readers)})", file=out)
    else:
        print("\naccess tracking: NONE usable: tierd can report placement but cannot tell hot "
              "from cold pages on this kernel (see idle_bitmap and page_idle above)", file=out)
    return EXIT_OK


def _table(rows, out, right=()) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        print("  " + "  ".join(cells).rstrip(), file=out)


# ---------------------------------------------------------------------------------------------
# scan


@dataclass
class ScanRow:
    label: str
    vmas: int
    size: int  # bytes mapped
    rss: int  # bytes resident (smaps Rss), -1 if unknown
    present: int  # resident pages seen by the scan
    hist: np.ndarray | None  # int64[K+1]: present pages accessed in exactly c samples
    start: int | None = None  # lowest address of the mapping (group), for the heatmap


@dataclass
class ScanResult:
    pid: int
    comm: str
    vm_rss: int
    nvmas: int
    samples: int
    interval: float
    reader: str | None
    reader_error: object | None  # FeatureMissing when no reader
    rows: list[ScanRow] = field(default_factory=list)
    nodes: list[ScanRow] = field(default_factory=list)
    node_error: str | None = None
    present_source: str = ""
    grid: object | None = None  # tierd.heatmap.AccessGrid when asked for
    edge_pages: int = 0  # pages not read: their word is shared with a special mapping


def _vma_label(v) -> str:
    if v.path:
        return v.path + (" (deleted)" if v.deleted else "")
    return f"anon {v.start:#x}-{v.end:#x}"


def scan(kernel, pid: int, samples: int, interval: float, reader_name: str = "auto",
         top: int = 20, sleep=time.sleep, heat_rows: int | None = None) -> ScanResult:
    """Sample ``pid`` and aggregate; raises ProcessGone etc.  Pure apart from the kernel.
    ``heat_rows``: also aggregate the samples into a heatmap grid of that many rows."""
    from tierd.linux import FeatureMissing, tracked_extents, unpack_words
    from tierd.pages import PAGE_SHIFT, PAGES_PER_WORD

    procfs = kernel.procfs
    comm = procfs.comm(pid)
    status = procfs.status(pid)
    vm_rss = status.get("VmRSS", 0)
    try:
        smaps = procfs.smaps(pid)
        vmas = [v for v, _ in smaps]
        rss = np.array([c.get("Rss", 0) for _, c in smaps], dtype=np.int64)
    except (FileNotFoundError, PermissionError):
        vmas = list(procfs.maps(pid))
        rss = np.full(len(vmas), -1, dtype=np.int64)
    res = ScanResult(pid, comm, vm_rss if isinstance(vm_rss, int) else 0, len(vmas), samples,
                     interval, None, None)
    try:
        reader = kernel.reader(reader_name)
        res.reader = reader.name
    except FeatureMissing as e:
        reader = None
        res.reader_error = e

    # VMAs worth reading: not kernel-special, and resident memory (or unknown).  Words shared
    # with a special mapping are not read: a clearing read would clear its pages' bits too.
    special = np.array([v.special for v in vmas], dtype=bool)
    keep = ~special & (rss != 0)
    idx = np.flatnonzero(keep)
    starts = np.array([vmas[i].start for i in idx], dtype=np.uint64)
    ends = np.array([vmas[i].end for i in idx], dtype=np.uint64)
    ws, nw, res.edge_pages = tracked_extents(
        starts, ends, [v.start for v in vmas if v.special], [v.end for v in vmas if v.special])

    counts_parts, vpn_parts = [], []
    grid = None
    if heat_rows and reader is not None:
        from tierd.heatmap import AccessGrid

        grid = res.grid = AccessGrid(ws, nw, samples, heat_rows)
    if reader is not None:
        res.present_source = reader.name
        try:
            # A first sample resets the accessed state; the K that follow are counted.
            for w, n in zip(ws.tolist(), nw.tolist()):
                reader.sample(pid, w, n)
            cnt = [np.zeros(PAGES_PER_WORD * n, dtype=np.uint16) for n in nw.tolist()]  # K <= MAX_SAMPLES
            pres = [np.zeros(PAGES_PER_WORD * n, dtype=bool) for n in nw.tolist()]
            deadline = time.monotonic()
            for k in range(samples):
                deadline += interval
                sleep(max(0.0, deadline - time.monotonic()))
                for j, (w, n) in enumerate(zip(ws.tolist(), nw.tolist())):
                    p, a = reader.sample(pid, w, n)
                    if grid is not None:
                        grid.add(k, j, p, a)
                    pres[j] |= unpack_words(p)
                    cnt[j] += unpack_words(a)
        finally:
            reader.close(pid)
        if grid is not None:
            grid.finish()
        for j, w in enumerate(ws.tolist()):
            sel = np.flatnonzero(pres[j])
            vpn_parts.append(np.uint64(PAGES_PER_WORD * w) + sel.astype(np.uint64))
            counts_parts.append(cnt[j][sel])
    else:
        try:
            from tierd.linux import decode_pagemap

            for w, n in zip(ws.tolist(), nw.tolist()):
                present, _ = decode_pagemap(procfs.pagemap(pid, PAGES_PER_WORD * w, PAGES_PER_WORD * n))
                vpn_parts.append(np.uint64(PAGES_PER_WORD * w) + np.flatnonzero(present).astype(np.uint64))
            res.present_source = "pagemap"
        except (FileNotFoundError, PermissionError) as e:
            vpn_parts = []
            res.present_source = f"unknown (pagemap: {e.strerror})"

    vpn = np.concatenate(vpn_parts) if vpn_parts else np.zeros(0, np.uint64)
    counts = np.concatenate(counts_parts) if counts_parts else np.zeros(vpn.size, np.uint16)
    K1 = samples + 1

    # Page -> VMA (maps are sorted by address and do not overlap).
    all_start = np.array([v.start >> PAGE_SHIFT for v in vmas], dtype=np.uint64)
    all_end = np.array([v.end >> PAGE_SHIFT for v in vmas], dtype=np.uint64)
    vi = np.searchsorted(all_start, vpn, side="right") - 1
    ok = (vi >= 0) & (vpn < all_end[np.maximum(vi, 0)])
    vpn, counts, vi = vpn[ok], counts[ok], vi[ok]

    # VMA -> group: one per file/pseudo path, one per unnamed anonymous VMA.
    labels: dict[str, int] = {}
    group = np.empty(len(vmas), dtype=np.int64)
    for i, v in enumerate(vmas):
        group[i] = labels.setdefault(_vma_label(v), len(labels))
    G = len(labels)
    gsize = np.bincount(group, weights=[v.size for v in vmas], minlength=G) if vmas else np.zeros(0)
    gvmas = np.bincount(group, minlength=G)
    grss = np.bincount(group, weights=np.maximum(rss, 0), minlength=G) if vmas else np.zeros(0)
    pg = group[vi]
    gpresent = np.bincount(pg, minlength=G)
    ghist = np.bincount(pg * K1 + counts, minlength=G * K1).reshape(G, K1) if G else np.zeros((0, K1))
    has_hist = reader is not None
    order = sorted(range(G), key=lambda g: (-gpresent[g], -grss[g], -gsize[g]))
    names = list(labels)
    # List the biggest mappings; fold the rest, and any holding < 0.5% of the pages, into one.
    small = max(1, int(gpresent.sum()) // 200) if G else 1
    shown = [g for g in order if gpresent[g] >= small or (vpn.size == 0 and grss[g] > 0)][:top]
    gstart = {}
    for i, v in enumerate(vmas):
        gstart.setdefault(int(group[i]), v.start)
    for g in shown:
        res.rows.append(ScanRow(names[g], int(gvmas[g]), int(gsize[g]),
                                int(grss[g]) if (rss >= 0).all() else -1, int(gpresent[g]),
                                ghist[g].astype(np.int64) if has_hist else None,
                                gstart.get(g)))
    shown_set = set(shown)
    rest = [g for g in order if g not in shown_set and (gpresent[g] > 0 or grss[g] > 0)]
    if rest:
        r = np.array(rest)
        res.rows.append(ScanRow(f"({len(rest)} other mappings)", int(gvmas[r].sum()),
                                int(gsize[r].sum()), int(grss[r].sum()) if (rss >= 0).all() else -1,
                                int(gpresent[r].sum()),
                                ghist[r].sum(axis=0).astype(np.int64) if has_hist else None))

    # Page -> node (move_pages query of the present pages).
    if vpn.size:
        try:
            status_ = kernel.move_pages(pid, vpn << np.uint64(PAGE_SHIFT))
        except (FeatureMissing, PermissionError, OSError) as e:
            res.node_error = str(e)
        else:
            if grid is not None:
                grid.place(vpn, status_)
            node_ids = sorted(set(np.unique(status_[status_ >= 0]).tolist()))
            for nid in node_ids:
                m = status_ == nid
                res.nodes.append(ScanRow(f"node {nid}", 0, 0, -1, int(m.sum()),
                                         np.bincount(counts[m], minlength=K1).astype(np.int64)
                                         if has_hist else None))
            for e_ in sorted(set(np.unique(status_[status_ < 0]).tolist())):
                m = status_ == e_
                name = errno.errorcode.get(-e_, str(-e_))
                res.nodes.append(ScanRow(f"no node ({name})", 0, 0, -1, int(m.sum()),
                                         np.bincount(counts[m], minlength=K1).astype(np.int64)
                                         if has_hist else None))
    return res


def cmd_scan(args, kernel, out, err) -> int:
    from tierd.units import format_duration, format_size

    heat = getattr(args, "heatmap", None)
    if heat is not None:
        _check_heatmap_path(heat)  # before sampling: a bad name must not cost the whole scan
    k = _kernel(kernel)
    res = scan(k, args.pid, args.samples, args.interval, args.reader, args.top,
               heat_rows=512 if heat else None)
    print(f"pid {res.pid} ({res.comm}): VmRSS {format_size(res.vm_rss)}, {res.nvmas} mappings",
          file=out)
    if res.reader:
        print(f"access tracking: {res.reader}, {res.samples} sample(s) "
              f"{format_duration(res.interval)} apart", file=out)
        print(f"resident 4KiB pages accessed in exactly c of the {res.samples} samples:", file=out)
    else:
        print("access tracking: NOT AVAILABLE on this kernel, so no access counts:", file=out)
        e = res.reader_error
        print(f"  {getattr(e, 'what', e)}", file=out)
        if getattr(e, "how_to_fix", None):
            print(f"  fix: {e.how_to_fix}", file=out)
        print(f"resident 4KiB pages (from {res.present_source}):", file=out)

    def rows_table(first: str, rows: list[ScanRow], with_map: bool) -> None:
        hdr = [first] + (["VMAs", "size", "Rss"] if with_map else []) + ["pages"]
        if res.reader:
            hdr += [f"c={c}" for c in range(res.samples + 1)]
        table = [tuple(hdr)]
        for r in rows:
            cells = [r.label if len(r.label) <= 48 else "..." + r.label[-45:]]
            if with_map:
                cells += [str(r.vmas), format_size(r.size), "?" if r.rss < 0 else format_size(r.rss)]
            cells += [str(r.present)]
            if r.hist is not None:
                cells += [str(int(x)) for x in r.hist]
            table.append(tuple(cells))
        _table(table, out, right=tuple(range(1, len(hdr))))

    if res.rows:
        rows_table("mapping", res.rows, True)
    else:
        print("  (no resident pages found)", file=out)
    if res.edge_pages:
        print(f"  ({res.edge_pages} pages not read: their 64-page word is shared with a special "
              "mapping, whose Accessed bits a read would clear)", file=out)
    print("per NUMA node:", file=out)
    if res.node_error:
        print(f"  unknown: {res.node_error}", file=out)
    elif res.nodes:
        rows_table("node", res.nodes, False)
    else:
        print("  (no resident pages)", file=out)
    rc = EXIT_OK
    if not res.reader:
        print("tierd: scan incomplete: no access-tracking interface (see above)", file=err)
        rc = EXIT_FAILURE
    if res.node_error:
        print(f"tierd: scan incomplete: the pages' nodes are unknown: {res.node_error}", file=err)
        rc = EXIT_FAILURE
    if res.grid is not None:
        _write_heatmap(k, res, heat, out)
    return rc


HEATMAP_FORMATS = (".png", ".svg", ".pdf")


def _check_heatmap_path(path: str) -> None:
    """UsageError unless ``path`` names a file of a supported format in an existing directory."""
    import os

    ext = os.path.splitext(path)[1].lower()
    if os.path.isdir(path) or path.endswith("/"):
        raise UsageError(f"--heatmap {path}: is a directory; give a file name such as heat.png")
    if ext not in HEATMAP_FORMATS:
        raise UsageError(f"--heatmap {path}: unsupported format {ext or '(no extension)'!r}; "
                         f"use {', '.join(HEATMAP_FORMATS)}")
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise UsageError(f"--heatmap {path}: directory {parent} does not exist")


def _write_heatmap(kernel, res: ScanResult, path: str, out) -> None:
    from tierd.heatmap import render
    from tierd.pages import PAGE_SIZE
    from tierd.units import format_duration, format_size

    try:
        fast, _ = kernel.topology().classify(None, None)
    except (OSError, ValueError):  # the picture still shows the node numbers
        fast = ()
    labels = [(r.start, r.label) for r in res.rows if r.start is not None]
    title = (f"pid {res.pid} ({res.comm}), VmRSS {format_size(res.vm_rss)}: "
             f"{res.samples} samples {format_duration(res.interval)} apart ({res.reader})")
    try:
        render(res.grid, path, title, labels, tuple(fast), res.interval)
    except ModuleNotFoundError as e:
        raise UsageError(str(e)) from None
    print(f"heatmap: {path} ({res.grid.rows} rows of "
          f"{format_size(int(res.grid.pages_per_row * PAGE_SIZE))}, {res.samples} samples)", file=out)
