#!/usr/bin/env python3
"""tierd against the kernel's NUMA-balancing tiering and DAMON, on the same workloads.

Run on the host (as root); one QEMU boot of the rig per contender and scenario, one VM at a
time.  In each boot the scenario's workloads (workloads/, SCENARIOS S1-S5) start with their
memory on the slow node 1, the contender is switched on, and every --period seconds the
ground truth is recorded: the workloads' hot pages on the fast node 0 (their own list,
placed by move_pages queries), cold pages there, node 0's free memory, the workloads' own
access rate (hot-page reads per second) and the mechanism's CPU time.

Contenders:
  tierd-idle_bitmap   tierd run, shipped etc/tierd.yaml + one comm selector per process,
                      tracking idle_bitmap (our kernel patch)
  tierd-page_idle     the same with tracking page_idle (stock kernels)
  kernel              kernel.numa_balancing=2 (memory tiering mode) + demotion_enabled=1;
                      CPU: hint faults are taken in the workloads' own context, so the
                      figure is numa_hint_faults plus kswapd's CPU
  damon               DAMON via `damo` (PyPI): paddr, node 1 migrate_hot -> node 0 and node 0
                      migrate_cold -> node 1 (damo defaults otherwise); CPU of kdamond threads
  damon-young         the same with a `young` page filter (only pages found accessed move up,
                      none found accessed moves down) and a 1 s apply interval

    .venv/bin/python benchmarks/side_by_side.py --scenarios S1,S2 --contenders all \\
        [--duration 180] [--period 5] [--json results.json]

Prints one table per scenario, with the load average of the host before each boot; the raw
time series go to --json.  Emulation slows everything 10-20x: compare contenders within one
table, not with real hardware.
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

CONTENDERS = ("tierd-idle_bitmap", "tierd-page_idle", "kernel", "damon", "damon-young")
MIB = 1 << 20
PAGE = 4096


# -- guest side: one contender on one scenario ----------------------------------------------------


def vmstat() -> dict[str, int]:
    out = {}
    for line in Path("/proc/vmstat").read_text().splitlines():
        k, v = line.split()
        out[k] = int(v)
    return out


def write(path: str, value: str) -> None:
    Path(path).write_text(value)


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

    def start(self) -> None:
        import workloads
        from workloads.harness import Tierd

        if self.name.startswith("tierd-"):
            policy = workloads.policy_yaml(self.base, self.sc, tracking=self.name.split("-", 1)[1])
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

    def stop(self) -> None:
        if self.tierd is not None:
            rc = self.tierd.stop()
            self.log = self.tierd.text()
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
        # "5% max" would overflow in damo's percent -> nr_accesses conversion: say 100%
        hot = ["--damos_action", "migrate_hot", "0", "--damos_access_rate", "5%", "100%"]
        cold = ["--damos_action", "migrate_cold", "1", "--damos_access_rate", "0%", "0%",
                "--damos_age", "10s", "max"]
        if young:
            hot += ["--damos_filter", "reject", "none", "young", "--damos_apply_interval", "1s"]
            cold += ["--damos_filter", "reject", "young", "--damos_apply_interval", "1s"]
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

    sc = workloads.scenarios(args.scale)[args.scenario]
    if sc.phase_at and args.phase_at:
        sc = dataclasses.replace(sc, phase_at=args.phase_at)
    bindir = workloads.build()
    outdir = Path(os.environ.get("TMPDIR", "/tmp")) / "bench"
    outdir.mkdir(parents=True, exist_ok=True)
    procs = workloads.start_scenario(sc, bindir, outdir, pause_us=args.pause_us)
    measured = [p for p, s in zip(procs, sc.specs) if s.measured]
    mech = Mechanism(args.contender, sc, (REPO / "etc" / "tierd.yaml").read_text(), outdir)
    v0 = vmstat()
    result = {"scenario": sc.name, "title": sc.title, "contender": args.contender,
              "scale": args.scale, "duration": args.duration, "period": args.period,
              "samples": [], "error": None}
    try:
        with Watcher(measured, period=args.period, cpu=mech.cpu) as watch:
            start = watch.sample()
            result["start"] = _row(start)
            mech.start()
            phased = False
            t0 = time.monotonic()
            while time.monotonic() - t0 < args.duration:
                if sc.phase_at and not phased and time.monotonic() - t0 >= sc.phase_at:
                    for p in measured:
                        p.next_phase()
                    result["phase_t"] = time.monotonic() - watch.t0
                    phased = True
                time.sleep(0.5)
        result["samples"] = [_row(s) for s in watch.samples]
        result["mech_start_t"] = t0 - watch.t0
        mech.stop()
        result["intact"] = all(p.verify() for p in procs)
    except BaseException as e:
        result["error"] = repr(e)
        raise
    finally:
        v1 = vmstat()
        result["vmstat"] = {k: v1[k] - v0.get(k, 0) for k in v1
                            if k.startswith(("pgpromote", "pgdemote", "numa_", "pgmigrate"))}
        result["log_tail"] = mech.log[-3000:]
        result["intervals"] = mech.intervals
        for p in procs:
            p.stop()
        Path(args.json).write_text(json.dumps(result))
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
    return {
        "t50": reach(0.5), "t90": reach(0.9),
        "hot_end": 100 * last["hot_fast"] / last["hot"] if last and last["hot"] else None,
        "cold_max": max((100 * s["cold_fast"] / s["cold"] for s in samples if s["cold"]),
                        default=0),
        "cold_end": 100 * last["cold_fast"] / last["cold"] if last and last["cold"] else 0,
        "free_min": min((s["fast_free"] for s in samples if s["t"] >= t_start),
                        default=0) // MIB,
        "rate": (samples[-1]["touches"] - samples[0]["touches"]) / span / 1e6 if span else 0,
        "cpu": last["cpu"] if last else 0,
        "intact": r.get("intact"),
    }


def host_main(args) -> int:
    import workloads
    from tierd import vmrig

    kernel = vmrig.kernel_dir()
    workloads.build()
    contenders = CONTENDERS if args.contenders == "all" else tuple(args.contenders.split(","))
    results = []
    jpath = Path(args.json)
    if jpath.exists():
        results = json.loads(jpath.read_text())
    for scn in args.scenarios.split(","):
        for c in contenders:
            if any(r["scenario"] == scn and r["contender"] == c and not r.get("error")
                   for r in results):
                continue  # already measured (--json accumulates; delete it to re-run)
            results = [r for r in results if (r["scenario"], r["contender"]) != (scn, c)]
            load = os.getloadavg()
            out = Path(args.workdir) / f"{scn}-{c}"
            out.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--guest", "--scenario", scn,
                   "--contender", c, "--duration", str(args.duration), "--period",
                   str(args.period), "--scale", str(args.scale), "--pause-us",
                   str(args.pause_us), "--phase-at", str(args.phase_at),
                   "--json", "/mnt/out/result.json"]
            started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            print(f"[{started}] {scn} {c}: booting (host load {load[0]:.1f})", flush=True)
            try:
                res = vmrig.run(f"cd {REPO} && " + " ".join(cmd), kernel=kernel, out=out,
                                timeout=args.duration * 4 + 900)
            except vmrig.VMError as e:
                print(f"  VM failed: {e}", flush=True)
                continue
            rfile = out / "result.json"
            if not rfile.exists():
                print(f"  no result (exit {res.returncode}):\n{res.output[-2000:]}", flush=True)
                continue
            r = json.loads(rfile.read_text())
            r["host_load"] = load
            r["started"] = started
            r["summary"] = summarize(r)
            results.append(r)
            jpath.write_text(json.dumps(results))
            print("  " + json.dumps(r["summary"]), flush=True)
    print_tables(results)
    return 0


def print_tables(results) -> None:
    by_scn: dict[str, list] = {}
    for r in results:
        by_scn.setdefault(r["scenario"], []).append(r)
    for scn, rs in by_scn.items():
        print(f"\n{scn}: {rs[0]['title']} (scale {rs[0]['scale']}, {rs[0]['duration']} s, "
              f"sampled every {rs[0]['period']} s)")
        print("| contender | to 50% | to 90% | hot on fast at end | cold on fast max/end | "
              "fast free min | workload reads/s | mechanism CPU | data intact | host load |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rs:
            if r.get("error"):
                print(f"| {r['contender']} | failed: {r['error'][:200]} |")
                continue
            s = r.get("summary") or summarize(r)
            f = (lambda v: "never" if v is None else f"{v:.0f} s")
            cpu = f"{s['cpu']:.0f} s"
            if r["contender"] == "kernel":
                cpu += f" kswapd, {r['vmstat'].get('numa_hint_faults', 0)} hint faults"
            print(f"| {r['contender']} | {f(s['t50'])} | {f(s['t90'])} | "
                  f"{'-' if s['hot_end'] is None else format(s['hot_end'], '.0f')}% | "
                  f"{s['cold_max']:.0f}% / {s['cold_end']:.0f}% | "
                  f"{s['free_min']} MiB | {s['rate']:.2f} M | {cpu} | {s['intact']} | "
                  f"{r['host_load'][0]:.1f} |")
        print("\n% hot on fast over time (s: %):")
        for r in rs:
            t0 = r.get("mech_start_t", 0)
            pts = [f"{s['t'] - t0:.0f}:{100 * s['hot_fast'] / max(1, s['hot']):.0f}"
                   for s in r["samples"][::max(1, len(r["samples"]) // 12)]]
            print(f"  {r['contender']:18} " + " ".join(pts))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", default="S1,S2,S3,S4,S5")
    ap.add_argument("--contenders", default="all", help=f"comma list of {CONTENDERS} or all")
    ap.add_argument("--duration", type=float, default=180)
    ap.add_argument("--period", type=float, default=5)
    ap.add_argument("--scale", type=float, default=1.0, help="workload size (1.0: 768 MiB)")
    ap.add_argument("--pause-us", type=int, default=20000, help="workload pause per pass")
    ap.add_argument("--phase-at", type=float, default=0,
                    help="S3: seconds after the start when the hot set moves (default 90)")
    ap.add_argument("--json", default="side_by_side.json")
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
