#!/usr/bin/env python3
"""tierd against the kernel's NUMA-balancing tiering and DAMON, on the same workloads.

Run on the host (as root); one QEMU boot of the rig per contender and scenario, one VM at a
time.  In each boot the scenario's workloads (workloads/, SCENARIOS S1-S7) start with their
memory on the slow node 1, the contender is switched on, and every --period seconds the
ground truth is recorded: the workloads' hot pages on the fast node 0 (their own list,
placed by move_pages queries), cold pages there, node 0's free memory, the workloads' own
access rate (hot-page reads per second) and the mechanism's CPU time.

S6 and S7 are issue 16's real-host conditions (workloads.real_hosts, also
tests/vm/guest/test_guest_real_hosts.py): S6 a reader keeps node 0 full of clean page cache
(it is no target); S7 a skewed (zipf 1.1) process twice node 0, whose "hot set" is the hottest
pages that fit in its pages on node 0 at the start, and whose score over time (weight on
the fast node against the best possible for as many pages) is printed under its table.

Contenders:
  tierd-idle_bitmap   tierd run, shipped etc/tierd.yaml + one comm selector per process,
                      tracking idle_bitmap (our kernel patch), started when the workloads
                      are running (its interpreter start-up and first sample count)
  tierd-page_idle     the same with tracking page_idle (stock kernels)
  tierd-TRACKER-running  tierd started first, as the systemd service would be; the workloads
                      start once it has run its first interval (time 0: their hot loops begin)
  tierd-TRACKER-5s    the shipped policy with a fixed `interval: 5s` instead of `auto`
  tierd-service       the product as installed: the rig boots systemd as PID 1 and
                      tierd runs as tierd.service, the shipped unit (its sandbox,
                      capabilities and system call filter) installed by
                      scripts/install-service.sh, /etc/tierd.yaml the shipped policy with
                      the scenario's target selectors (the same policy as tierd-idle_bitmap),
                      a drop-in only for what the rig needs (the checkout under /tmp bound
                      into the unit's PrivateTmp); started when the workloads are running
  kernel              kernel.numa_balancing=2 (memory tiering mode) + demotion_enabled=1;
                      CPU: hint faults are taken in the workloads' own context, so the
                      figure is numa_hint_faults plus kswapd's CPU
  damon               DAMON via `damo` (PyPI): paddr, node 1 migrate_hot -> node 0 and node 0
                      migrate_cold -> node 1 (damo defaults otherwise); CPU of kdamond threads
  damon-young         the same with a `young` page filter (only pages found accessed move up,
                      none found accessed moves down) and a 1 s apply interval
  tierd-TRACKER-anyrss  scenario PG: the shipped targets with min_rss 0

Scenario PG (workloads/postgres.py) is a real PostgreSQL instead of the hotset workloads:
pgbench -i -s 16 (x --scale), shared_buffers 256MB (x --scale) prewarmed and moved to node 1,
4 pgbench clients of zipfian selects for --duration + 30 s; tierd runs the shipped policy
with its own targets (the example target is database servers).  "hot" is the pages of the
buffers the load pinned 4+ times (pg_buffercache), "cold" the other buffers' pages the
backends map; "workload reads/s" is transactions per second / 1e6.

    .venv/bin/python benchmarks/side_by_side.py --scenarios S1,S2 --contenders all \\
        [--duration 180] [--period 5] [--json results.json]

Prints one table per scenario, with the load average of the host before each boot; the raw
time series go to --json.  Emulation slows everything 10-20x: compare contenders within one
table, not with real hardware.

Ground truth is sampled every --fine-period (1 s) for the first --fine seconds after the
mechanism starts (and after S3's phase change), every --period after that.  Times are from
the mechanism being switched on; for tierd the time to its first interval (interpreter start
plus first sample: "start-up") is a column of its own, and "to 90% after start-up" subtracts
it.  The steady-state CPU is CPU seconds per minute from --steady-from to the end.
Each boot holds --lock (flock) for its duration: one VM at a time on the host.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONTENDERS = ("tierd-idle_bitmap", "tierd-page_idle", "kernel", "damon", "damon-young",
              "tierd-service")
DAMON_SYSFS = Path("/sys/kernel/mm/damon/admin/kdamonds")
STATS = ("nr_tried", "sz_tried", "nr_applied", "sz_applied", "qt_exceeds")
MIB = 1 << 20


# -- guest side: one contender on one scenario ----------------------------------------------------


def vmstat() -> dict[str, int]:
    out = {}
    for line in Path("/proc/vmstat").read_text().splitlines():
        k, v = line.split()
        out[k] = int(v)
    return out


def write(path: str, value: str) -> None:
    Path(path).write_text(value)


class Service:
    """tierd as tierd.service (the tierd-service contender), with the interface of
    workloads.harness.Tierd: start, intervals (from the journal), cpu, text, stop."""

    def __init__(self, policy_text: str) -> None:
        self.policy_text = policy_text
        self._text = ""
        self._pid = 0  # MainPID, asked again only once that process is gone

    @staticmethod
    def _sh(*args, check=True, timeout=300):
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode:
            raise RuntimeError(f"{' '.join(args)}: exit {r.returncode}: {r.stdout}{r.stderr}")
        return r

    def start(self):
        venv = Path(sys.executable).parent.parent
        self._sh(str(REPO / "scripts" / "install-service.sh"), "--venv", str(venv))
        Path("/etc/tierd.yaml").write_text(self.policy_text)
        dropin = Path("/etc/systemd/system/tierd.service.d")
        dropin.mkdir(parents=True, exist_ok=True)
        binds = "".join(f"BindReadOnlyPaths={p}\n" for p in sorted({REPO, venv})
                        if Path("/tmp") in p.parents)
        (dropin / "rig.conf").write_text("[Service]\n" + binds)
        self._sh("systemctl", "daemon-reload")
        # --no-block: the clock runs from here, as for `tierd run` (start-up is measured)
        self._sh("systemctl", "start", "--no-block", "tierd.service")
        return self

    def pid(self) -> int:
        if not self._pid or not Path(f"/proc/{self._pid}").exists():
            r = self._sh("systemctl", "show", "-P", "MainPID", "tierd.service", check=False)
            self._pid = int(r.stdout.strip() or 0)
        return self._pid

    def text(self) -> str:
        r = self._sh("journalctl", "-u", "tierd.service", "-o", "cat", "--no-pager", check=False)
        return r.stdout

    def intervals(self):
        from workloads.harness import parse_intervals

        return parse_intervals(self.text())

    def first_interval(self) -> bool:
        """tierd has finished an interval, by its metrics (in-process: a journalctl per
        poll, as the first version did, slows the emulated start-up being measured)."""
        import re
        import urllib.request

        try:
            with urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return False
        m = re.search(r"^tierd_intervals_total (\S+)", text, re.M)
        return bool(m and float(m[1]) >= 1)

    def cpu(self) -> float:
        from workloads.harness import cpu_seconds

        pid = self.pid()
        return cpu_seconds(pid) if pid else 0.0

    def stop(self) -> int:
        self._sh("systemctl", "stop", "tierd.service", check=False, timeout=120)
        r = self._sh("systemctl", "show", "-P", "ExecMainStatus", "tierd.service", check=False)
        status = self._sh("systemctl", "status", "--no-pager", "tierd.service", check=False)
        self._text = self.text() + "\n" + status.stdout
        return int(r.stdout.strip() or 0)


class Mechanism:
    """Switch a contender on and off; ``cpu()`` is its CPU seconds so far."""

    def __init__(self, name: str, sc, policy_base: str, outdir: Path) -> None:
        self.name = name
        self.sc = sc
        self.base = policy_base
        self.outdir = outdir
        self.tierd = None
        self.log = ""
        self.intervals: list[dict] = []  # tierd's interval lines (moves, engine/sample cost)
        parts = name.split("-")
        self.tracking = parts[1] if parts[0] == "tierd" else None
        self.service = name == "tierd-service"
        if self.service:
            self.tracking = "idle_bitmap"
        self.running = "running" in parts[2:]  # started before the workloads
        # PG: the shipped targets (database servers) as shipped; -anyrss: their min_rss 0
        self.anyrss = "anyrss" in parts[2:]
        self.fixed = next((p for p in parts[2:] if p.endswith("s") and p[:-1].isdigit()), None)

    def start(self) -> None:
        import workloads
        from workloads.harness import Tierd

        keep = {"keep_targets": self.sc.name == "PG",
                "min_rss": "0" if self.anyrss else None}
        if self.service:  # the shipped policy as tierd-idle_bitmap's, the metrics on
            policy = workloads.policy_yaml(self.base, self.sc, tracking=self.tracking,
                                           metrics=True, **keep)
            self.tierd = Service(policy).start()
        elif self.tracking:
            policy = workloads.policy_yaml(self.base, self.sc, tracking=self.tracking,
                                           interval=self.fixed, **keep)
            self.tierd = Tierd(policy, self.outdir).start()
        elif self.name == "kernel":
            write("/sys/kernel/mm/numa/demotion_enabled", "1")
            write("/proc/sys/kernel/numa_balancing", "2")
        else:
            self._damo_start(young=self.name == "damon-young")

    def cpu(self) -> float:
        from workloads.harness import kthread_cpu

        if self.tierd is not None:
            return self.tierd.cpu()
        if self.name == "kernel":
            return kthread_cpu("kswapd")
        return kthread_cpu("kdamond")

    def started(self) -> bool:
        """tierd has finished its first interval (always True for the kernel's mechanisms)."""
        if self.service:
            return self.tierd.first_interval()
        return self.tierd is None or bool(self.tierd.intervals())

    def damon_stats(self) -> list[dict]:
        """Every DAMOS scheme's counters (nr_tried, sz_tried, nr_applied, sz_applied,
        qt_exceeds) and access pattern, from DAMON's sysfs after an update_schemes_stats."""
        out = []
        for kd in sorted(DAMON_SYSFS.glob("[0-9]*")):
            try:
                (kd / "state").write_text("update_schemes_stats")
            except OSError:
                continue
            for sch in sorted(kd.glob("contexts/*/schemes/[0-9]*")):
                row = {"kdamond": kd.name, "action": (sch / "action").read_text().strip()}
                for k in STATS:
                    row[k] = int((sch / "stats" / k).read_text())
                ap = sch / "access_pattern"
                row["pattern"] = {f"{a}_{b}": int((ap / a / b).read_text())
                                  for a in ("nr_accesses", "age") for b in ("min", "max")}
                out.append(row)
        return out

    def stop(self) -> None:
        if self.tierd is not None:
            rc = self.tierd.stop()
            self.log = self.tierd._text if self.service else self.tierd.text()
            self.intervals = [dataclasses.asdict(i) for i in self.tierd.intervals()]
            if rc:
                self.log += f"\n(tierd exited {rc})"
        elif self.name == "kernel":
            write("/proc/sys/kernel/numa_balancing", "0")
            write("/sys/kernel/mm/numa/demotion_enabled", "0")
        else:
            proc = subprocess.run(self._damo() + ["stop"], capture_output=True, text=True)
            self.log += proc.stdout + proc.stderr

    # DAMON through damo.  The rig kernel has no tracefs, which damo's feature probe wants:
    # the probe's result (the "sysinfo" cache in $HOME/.damo.sysinfo) is seeded once with
    # the tracepoint features left out; everything else damo probes itself.
    def _damo(self) -> list[str]:
        exe = Path(sys.executable).parent / "damo"
        if not exe.exists():
            raise SystemExit("damo is not installed: .venv/bin/pip install -e '.[bench]'")
        return [str(exe)]

    def _seed_damo_sysinfo(self) -> None:
        import damo

        sys.path.insert(0, str(Path(damo.__file__).parent))  # damo's flat module layout
        import _damo_sysinfo

        _damo_sysinfo.get_avail_damon_trace_features = lambda: ([], None)
        info, err = _damo_sysinfo.get_sysinfo_from_scratch()
        if err:
            raise SystemExit(f"damo sysinfo: {err}")
        Path(_damo_sysinfo.sysinfo_file_path).write_text(json.dumps(info.to_kvpairs()))

    def _damo_start(self, young: bool) -> None:
        self._seed_damo_sysinfo()
        # damo collects each --damos_* option into one list over all schemes of the command
        # line and hands them out in order: an option given for the second scheme only lands
        # on the first.  (The previous run passed --damos_age 10s only for migrate_cold: the
        # hot scheme got "age >= 10 s", which scattered-hot regions never reach, and the cold
        # scheme none; nothing hot moved in 90 s.)  So every scheme gets every option.
        hot = ["--damos_action", "migrate_hot", "0", "--damos_access_rate", "5%", "100%",
               "--damos_age", "0", "max"]
        cold = ["--damos_action", "migrate_cold", "1", "--damos_access_rate", "0%", "0%",
                "--damos_age", "10s", "max"]
        if young:
            hot += ["--damos_filter", "reject", "none", "young"]
            cold += ["--damos_filter", "reject", "young"]
        interval = "1s" if young else "0"  # 0: every aggregation interval (DAMON's default)
        hot += ["--damos_apply_interval", interval]
        cold += ["--damos_apply_interval", interval]
        argv = self._damo() + ["start",
                               "--kdamond", "--damon_ctx", "--ops", "paddr",
                               "--damon_target", "--numa_node", "1", "--damos_scheme", *hot,
                               "--kdamond", "--damon_ctx", "--ops", "paddr",
                               "--damon_target", "--numa_node", "0", "--damos_scheme", *cold]
        proc = subprocess.run(argv, capture_output=True, text=True)
        self.log += " ".join(argv) + "\n" + proc.stdout + proc.stderr
        if proc.returncode:
            raise SystemExit(f"damo start failed ({proc.returncode}):\n{self.log}")


def guest_main(args) -> int:
    import workloads
    from workloads.harness import Watcher

    if args.scenario == "PG":
        return pg_guest_main(args)
    sc = workloads.scenarios(args.scale)[args.scenario]
    if sc.phase_at and args.phase_at:
        sc = dataclasses.replace(sc, phase_at=args.phase_at)
    bindir = workloads.build()
    outdir = Path(os.environ.get("TMPDIR", "/tmp")) / "bench"
    outdir.mkdir(parents=True, exist_ok=True)
    mech = Mechanism(args.contender, sc, (REPO / "etc" / "tierd.yaml").read_text(), outdir)
    result = {"scenario": sc.name, "title": sc.title, "contender": args.contender,
              "scale": args.scale, "duration": args.duration, "period": args.period,
              "fine": args.fine, "fine_period": args.fine_period, "samples": [],
              "damon": [], "error": None, "uptime_guest": Path("/proc/loadavg").read_text()}
    procs = []
    t_launch = time.monotonic()
    if mech.running:  # the service is up first: workloads start after its first interval
        mech.start()
        while not mech.started() and time.monotonic() - t_launch < 300:
            time.sleep(0.2)
        result["startup_s"] = time.monotonic() - t_launch
    procs = workloads.start_scenario(sc, bindir, outdir, pause_us=args.pause_us)
    measured = [p for p, s in zip(procs, sc.specs) if s.measured]
    thp = any(s.thp for s in sc.specs)
    v0 = vmstat()
    try:
        # hot pages every sample, the 7x more cold pages only every --period (guest CPU)
        with Watcher(measured, period=args.fine_period, cpu=mech.cpu,
                     cold_every=args.period) as watch:
            start = watch.sample()
            result["start"] = _row(start)
            if not mech.running:
                mech.start()
            t0 = time.monotonic()
            fine_until = args.fine
            phased = False
            damon_next = 0.0
            while (now := time.monotonic() - t0) < args.duration:
                watch.period = args.fine_period if now < fine_until else args.period
                if "startup_s" not in result and mech.started():
                    result["startup_s"] = now
                if sc.phase_at and not phased and now >= sc.phase_at:
                    for p in measured:
                        p.next_phase()
                    result["phase_t"] = time.monotonic() - watch.t0
                    fine_until = now + args.fine
                    phased = True
                if mech.name.startswith("damon") and now >= damon_next:
                    result["damon"].append({"t": round(time.monotonic() - watch.t0, 1),
                                            "schemes": mech.damon_stats()})
                    damon_next = now + 10
                if thp and (not result.get("thp") or now - result["thp"][-1][0] >= 10):
                    result.setdefault("thp", []).append(
                        (round(now, 1), sum(thp_kib(p.pid) for p in measured) // 1024))
                time.sleep(0.25)
        result["samples"] = [_row(s) for s in watch.samples]
        result["mech_start_t"] = t0 - watch.t0
        if mech.name.startswith("damon"):
            result["damon"].append({"t": round(time.monotonic() - watch.t0, 1),
                                    "schemes": mech.damon_stats()})
        if thp:
            result.setdefault("thp", []).append(
                (round(time.monotonic() - t0, 1), sum(thp_kib(p.pid) for p in measured) // 1024))
        skew = [p for p in measured if hasattr(p, "scores")]
        if skew:  # S7: weight on fast / best possible, from the full placements
            result["skew"] = [(round(t - t0, 1), round(r, 4), k) for t, r, k in skew[0].scores]
        mech.stop()
        # None: a workload with no data to check (workloads.real_hosts)
        result["intact"] = all(v for v in (p.verify() for p in procs) if v is not None)
    except BaseException as e:
        result["error"] = repr(e)
        raise
    finally:
        record_end(result, mech, v0)
        for p in procs:
            p.stop()
        Path(args.json).write_text(json.dumps(result))
    return 0


PG = "PG"
PG_SCALE = 16  # pgbench scale at --scale 1: 1.6M accounts, ~240 MiB of table and index
PG_BUFFERS_MIB = 256  # shared_buffers at --scale 1: half of node 0, the database fits
PG_HOT_USAGE = 5  # a hot buffer: pinned by the load 4 times or more (BM_MAX_USAGE_COUNT)


def pg_guest_main(args) -> int:
    """Scenario PG: a PostgreSQL buffer pool on the slow node under a zipfian select load
    (workloads/postgres.py).  Ground truth per sample: pages of the buffers the load pinned
    4+ times (pg_buffercache usage count 5) on node 0 ("hot"), pages of the other buffers
    the backends map ("cold": pinned 1-3 times), node 0's shared memory (the buffer pool:
    the database files are on a tmpfs bound to node 1); "touches" counts transactions."""
    import workloads
    from workloads import node_meminfo
    from workloads import postgres as pgw

    sc = workloads.Scenario(PG, "PostgreSQL: zipfian selects, buffer pool on the slow node", ())
    outdir = Path(os.environ.get("TMPDIR", "/tmp")) / "bench"
    outdir.mkdir(parents=True, exist_ok=True)
    mech = Mechanism(args.contender, sc, (REPO / "etc" / "tierd.yaml").read_text(), outdir)
    scale = max(1, round(PG_SCALE * args.scale))
    result = {"scenario": PG, "title": sc.title, "contender": args.contender,
              "scale": args.scale, "duration": args.duration, "period": args.period,
              "fine": 0, "fine_period": args.period, "samples": [], "damon": [],
              "error": None, "uptime_guest": Path("/proc/loadavg").read_text(),
              "pg": {"pgbench_scale": scale, "shared_buffers_mib": round(PG_BUFFERS_MIB * args.scale)}}
    pg = pgw.Postgres(Path("/mnt/pg"), shared_buffers_mib=result["pg"]["shared_buffers_mib"],
                      tmpfs_mib=1024, node=1)
    bench = None
    v0 = vmstat()
    try:
        pg.start()
        result["pg"]["load_s"] = pg.load(scale)
        result["pg"]["left_on_fast"] = sum(pg.prewarm_to(1).values())
        shmem0 = node_meminfo(0, "Shmem")
        t_launch = time.monotonic()
        if mech.running:
            mech.start()
            while not mech.started() and time.monotonic() - t_launch < 300:
                time.sleep(0.2)
            result["startup_s"] = time.monotonic() - t_launch
        # pgbench runs on after the last sample (which takes a few seconds)
        bench = pgw.Pgbench(pg, outdir, seconds=args.duration + 30, scale=scale,
                            progress=int(args.period)).start()
        bench.backends()  # all clients connected
        pool = pgw.BufferPool(pg)
        cpu0 = mech.cpu()
        t_w = time.monotonic()

        def sample():
            return {"t": round(time.monotonic() - t_w, 2), **pool.sample(PG_HOT_USAGE),
                    "fast_free": node_meminfo(0), "cpu": round(mech.cpu() - cpu0, 2),
                    "touches": bench.transactions(),
                    "shmem_fast": node_meminfo(0, "Shmem") - shmem0, "per": {}}

        result["start"] = sample()
        result["samples"].append(result["start"])
        if not mech.running:
            mech.start()
        t0 = time.monotonic()
        result["mech_start_t"] = t0 - t_w
        while time.monotonic() - t0 < args.duration:
            time.sleep(args.period)
            if "startup_s" not in result and mech.started():
                result["startup_s"] = time.monotonic() - t0
            if mech.name.startswith("damon"):
                result["damon"].append({"t": round(time.monotonic() - t_w, 1),
                                        "schemes": mech.damon_stats()})
            result["samples"].append(sample())
        mech.stop()
        result["pgbench"] = bench.wait(timeout=300)
        result["intact"] = result["pgbench"]["returncode"] == 0 and not result["pgbench"]["failed"]
    except BaseException as e:
        result["error"] = repr(e)
        raise
    finally:
        record_end(result, mech, v0)
        if bench is not None:
            bench.stop()
            result["pgbench_log"] = bench.text()[-3000:]
        pg.stop()
        Path(args.json).write_text(json.dumps(result))
    return 0


def tierd_failures(log: str) -> dict[str, int]:
    """Pages move_pages refused, by reason, summed over tierd's interval lines."""
    import re

    out = dict.fromkeys(("busy", "absent", "nomem", "denied", "other"), 0)
    for m in re.finditer(r"failed \d+ \(busy (\d+) absent (\d+) nomem (\d+) denied (\d+) "
                         r"other (\d+)\)", log):
        for k, v in zip(out, m.groups()):
            out[k] += int(v)
    return out


def record_end(result: dict, mech: Mechanism, v0: dict) -> None:
    """What every run records at its end: migration counters, the mechanism's log and
    tierd's interval lines."""
    v1 = vmstat()
    result["vmstat"] = {k: v1[k] - v0.get(k, 0) for k in v1
                        if k.startswith(("pgpromote", "pgdemote", "numa_", "pgmigrate"))}
    result["log_tail"] = mech.log[-3000:]
    result["log"] = mech.log[-400000:] if mech.tierd is not None else ""
    result["intervals"] = mech.intervals


def thp_kib(pid: int) -> int:
    """AnonHugePages of a process (smaps_rollup), KiB."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


def _row(s) -> dict:
    return {"t": round(s.t, 2), "hot": s.placement.hot, "hot_fast": s.placement.hot_fast,
            "cold": s.placement.cold, "cold_fast": s.placement.cold_fast,
            "fast_free": s.fast_free, "cpu": round(s.cpu, 2), "touches": s.touches,
            "per": {k: [p.hot, p.hot_fast, p.cold, p.cold_fast] for k, p in s.per.items()}}


# -- host side ------------------------------------------------------------------------------------


def summarize(r: dict) -> dict:
    """Figures of one run: time to 50%/90% of the hot set on the fast node (after the
    mechanism started, or after the phase change for S3), the most cold pages ever on the
    fast node, the workloads' access rate, the mechanism's CPU."""
    samples = r["samples"]
    t_start = r.get("mech_start_t", 0.0)
    t_from = r.get("phase_t", t_start)
    after = [s for s in samples if s["t"] >= t_from]

    def reach(frac):
        for s in after:
            if s["hot"] and s["hot_fast"] >= frac * s["hot"]:
                return round(s["t"] - t_from, 1)
        return None

    last = samples[-1] if samples else None
    span = (samples[-1]["t"] - samples[0]["t"]) if len(samples) > 1 else 0
    startup = None  # tierd's interpreter start and first interval, from its launch
    if r["contender"].startswith("tierd"):
        startup = 0.0 if r["contender"].endswith("-running") else r.get("startup_s")
    t90 = reach(0.9)
    steady_from = t_start + r.get("steady_from", 60)
    steady = [s for s in samples if s["t"] >= steady_from]
    cpu_min = None
    if len(steady) > 1 and steady[-1]["t"] > steady[0]["t"]:
        cpu_min = 60 * (steady[-1]["cpu"] - steady[0]["cpu"]) / (steady[-1]["t"] - steady[0]["t"])
    return {
        "t50": reach(0.5), "t90": t90, "startup": startup,
        "t90_ready": (None if t90 is None or startup is None or "phase_t" in r
                      else round(t90 - startup, 1)),
        "cpu_min_steady": cpu_min,
        "hot_end": 100 * last["hot_fast"] / last["hot"] if last and last["hot"] else None,
        "cold_max": max((100 * s["cold_fast"] / s["cold"] for s in samples if s["cold"]),
                        default=0),
        "cold_end": 100 * last["cold_fast"] / last["cold"] if last and last["cold"] else 0,
        "free_min": min((s["fast_free"] for s in samples if s["t"] >= t_start),
                        default=0) // MIB,
        "rate": (samples[-1]["touches"] - samples[0]["touches"]) / span / 1e6 if span else 0,
        "cpu": last["cpu"] if last else 0,
        "overrun": _overrun(r.get("log") or r.get("log_tail", "")),
        "intact": r.get("intact"),
    }


def _overrun(log: str):
    """(move seconds, budget seconds) of the interval whose move_pages time exceeded its
    budget the most, from tierd's interval lines ("move 1234ms of 5s"); None without a log."""
    import re

    pairs = [(int(m[1]) / 1e3, float(m[2])) for m in re.finditer(r"move (\d+)ms of ([\d.]+)s", log)]
    return max(pairs, key=lambda x: x[0] - x[1], default=None)


def host_main(args) -> int:
    import workloads
    from tierd import vmrig

    import fcntl

    kernel = Path(args.kernel) if args.kernel else vmrig.kernel_dir()
    workloads.build()
    contenders = CONTENDERS if args.contenders == "all" else tuple(args.contenders.split(","))
    results = []
    jpath = Path(args.json)
    if jpath.exists():
        results = json.loads(jpath.read_text())
    for scn in args.scenarios.split(","):
        todo = []
        for c in contenders:
            if any(r["scenario"] == scn and r["contender"] == c and not r.get("error")
                   for r in results):
                continue  # already measured (--json accumulates; delete it to re-run)
            results = [r for r in results if (r["scenario"], r["contender"]) != (scn, c)]
            todo.append(c)
        # one boot per contender; --one-boot: the contenders one after the other in one boot
        # (not tierd-service, which boots systemd)
        boots = ([[c for c in todo if c != "tierd-service"]] + [["tierd-service"]] * (
            "tierd-service" in todo) if args.one_boot else [[c] for c in todo])
        for boot in (b for b in boots if b):
            out = Path(args.workdir) / f"{scn}-{'+'.join(boot)}"
            out.mkdir(parents=True, exist_ok=True)
            cmds = []
            for c in boot:
                (out / f"result-{c}.json").unlink(missing_ok=True)
                cmds.append(" ".join([
                    sys.executable, str(Path(__file__).resolve()), "--guest", "--scenario", scn,
                    "--contender", c, "--duration", str(args.duration), "--period",
                    str(args.period), "--scale", str(args.scale), "--pause-us",
                    str(args.pause_us), "--phase-at", str(args.phase_at),
                    "--fine", str(args.fine), "--fine-period", str(args.fine_period),
                    "--json", f"/mnt/out/result-{c}.json"]))
            lock = open(args.lock, "a") if args.lock else None
            try:
                if lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)  # one VM at a time, by anyone
                load = os.getloadavg()
                started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
                print(f"[{started}] {scn} {' '.join(boot)}: booting (host load {load[0]:.2f} "
                      f"{load[1]:.2f} {load[2]:.2f})", flush=True)
                res = vmrig.run(f"cd {REPO} && " + "; ".join(cmds), kernel=kernel, out=out,
                                timeout=(args.duration * 4 + 900) * len(boot),
                                systemd=boot == ["tierd-service"])
                load_end = os.getloadavg()
            except vmrig.VMError as e:
                print(f"  VM failed: {e}", flush=True)
                continue
            finally:
                if lock:
                    lock.close()
            for c in boot:
                rfile = out / f"result-{c}.json"
                if not rfile.exists():
                    print(f"  {c}: no result (exit {res.returncode}):\n{res.output[-2000:]}",
                          flush=True)
                    continue
                r = json.loads(rfile.read_text())
                r["host_load"] = load
                r["host_load_end"] = load_end
                r["started"] = started
                r["kernel"] = kernel.name
                r["steady_from"] = args.steady_from
                r["one_boot"] = len(boot) > 1
                r["summary"] = summarize(r)
                results.append(r)
                jpath.write_text(json.dumps(results))
                print(f"  {c}: " + json.dumps(r["summary"]), flush=True)
    print_tables(results)
    return 0


def print_tables(results) -> None:
    by_scn: dict[str, list] = {}
    for r in results:
        by_scn.setdefault(r["scenario"], []).append(r)
    for scn, rs in by_scn.items():
        print(f"\n{scn}: {rs[0]['title']} (scale {rs[0]['scale']}, {rs[0]['duration']} s, "
              f"sampled every {rs[0]['period']} s)")
        print("| contender | to 50% | to 90% | start-up | to 90% after start-up | "
              "hot on fast at end | cold on fast max/end | fast free min | "
              "workload reads/s | mechanism CPU | CPU/min steady | worst interval move | "
              "data intact | host load start/end |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rs:
            if r.get("error"):
                print(f"| {r['contender']} | failed: {r['error'][:200]} |")
                continue
            s = summarize(r)
            f = (lambda v, d=0: "-" if v is None else f"{v:.{d}f} s")
            cpu = f"{s['cpu']:.1f} s"
            if r["contender"] == "kernel":
                cpu += f" kswapd, {r['vmstat'].get('numa_hint_faults', 0)} hint faults"
            never = (lambda v: "never" if v is None else f"{v:.1f} s")
            end = r.get("host_load_end", r["host_load"])
            o = s["overrun"]
            over = "-" if not o else f"{o[0]:.2f} s of {o[1]:g} s"
            print(f"| {r['contender']} | {never(s['t50'])} | {never(s['t90'])} | "
                  f"{f(s['startup'], 1)} | {f(s['t90_ready'], 1)} | "
                  f"{'-' if s['hot_end'] is None else format(s['hot_end'], '.0f')}% | "
                  f"{s['cold_max']:.0f}% / {s['cold_end']:.0f}% | "
                  f"{s['free_min']} MiB | {s['rate']:.2f} M | {cpu} | "
                  f"{f(s['cpu_min_steady'], 1)} | {over} | {s['intact']} | "
                  f"{r['host_load'][0]:.2f} / {end[0]:.2f} |")
        print("\n% hot on fast over time (s: %):")
        for r in rs:
            t0 = r.get("mech_start_t", 0)
            pts = [f"{s['t'] - t0:.0f}:{100 * s['hot_fast'] / max(1, s['hot']):.0f}"
                   for s in r["samples"][::max(1, len(r["samples"]) // 12)]]
            print(f"  {r['contender']:18} " + " ".join(pts))
            if r.get("skew"):
                print(f"  {'':18} weight on fast / best possible for as many pages (s: ratio "
                      "pages): " + " ".join(f"{t:.0f}:{x:.3f} {k}" for t, x, k in
                                            r["skew"][::max(1, len(r["skew"]) // 8)]
                                            + r["skew"][-1:]))
            if r.get("thp"):
                print(f"  {'':18} THP MiB (s: MiB): "
                      + " ".join(f"{t:.0f}:{m}" for t, m in r["thp"][::max(1, len(r['thp']) // 8)]))
            for snap in r.get("damon", [])[-1:]:
                print(f"  {'':18} DAMOS at {snap['t']:.0f} s: " + "; ".join(
                    f"{x['action']} tried {x['nr_tried']} ({x['sz_tried'] >> 20} MiB) "
                    f"applied {x['nr_applied']} ({x['sz_applied'] >> 20} MiB) "
                    f"qt_exceeds {x['qt_exceeds']} {x['pattern']}" for x in snap["schemes"]))
            if r["scenario"] == PG:
                pb, last = r.get("pgbench") or {}, r["samples"][-1] if r["samples"] else {}
                iv = r.get("intervals") or []
                print(f"  {'':18} pgbench {pb.get('transactions')} transactions, "
                      f"{pb.get('tps') or 0:.0f} tps, failed {pb.get('failed')}; node 0 shared "
                      f"memory +{last.get('shmem_fast', 0) >> 20} MiB at the end; "
                      + (f"tierd promoted {sum(i['promoted'] for i in iv)} demoted "
                         f"{sum(i['demoted'] for i in iv)}, refused {tierd_failures(r.get('log') or '')}"
                         if r["contender"].startswith("tierd") else
                         f"pgpromote_success {r['vmstat'].get('pgpromote_success', 0)}, "
                         f"pgmigrate_success {r['vmstat'].get('pgmigrate_success', 0)}"))
            per = r["samples"][-1]["per"] if r["samples"] else {}
            if len(per) > 1:
                print(f"  {'':18} per target at end (hot on fast / hot, cold on fast / cold): "
                      + ", ".join(f"{k} {v[1]}/{v[0]}, {v[3]}/{v[2]}" for k, v in per.items()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", default="S1,S2,S3,S4,S5,S6,S7")
    ap.add_argument("--contenders", default="all", help=f"comma list of {CONTENDERS} or all")
    ap.add_argument("--duration", type=float, default=180)
    ap.add_argument("--period", type=float, default=5)
    ap.add_argument("--scale", type=float, default=1.0, help="workload size (1.0: 768 MiB)")
    ap.add_argument("--pause-us", type=int, default=20000, help="workload pause per pass")
    ap.add_argument("--phase-at", type=float, default=0,
                    help="S3: seconds after the start when the hot set moves (default 90)")
    ap.add_argument("--fine", type=float, default=30,
                    help="sample every --fine-period for this long after the start/phase change")
    ap.add_argument("--fine-period", type=float, default=1.0)
    ap.add_argument("--steady-from", type=float, default=60,
                    help="CPU/min steady: from this many seconds after the start to the end")
    ap.add_argument("--kernel", help="kernel dir with bzImage (default: kernel/build.sh's)")
    ap.add_argument("--lock", default=os.environ.get("TIERD_RIG_LOCK", ""),
                    help="flock this file for each boot ('' for none)")
    ap.add_argument("--json", default="side_by_side.json")
    ap.add_argument("--one-boot", action="store_true",
                    help="run a scenario's contenders one after the other in one boot (host "
                    "load and boot time shared; the default is one boot per contender)")
    ap.add_argument("--workdir", default="/tmp/tierd-side-by-side")
    ap.add_argument("--print", action="store_true", help="print the tables of --json only")
    ap.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scenario", help=argparse.SUPPRESS)
    ap.add_argument("--contender", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.guest:
        return guest_main(args)
    if args.print:
        print_tables(json.loads(Path(args.json).read_text()))
        return 0
    return host_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
