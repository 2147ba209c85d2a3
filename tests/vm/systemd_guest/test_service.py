"""Inside the rig booted with systemd as PID 1 (tests/vm/test_vm_systemd.py): tierd.service,
installed by scripts/install-service.sh, under the real service manager.

One scenario, in file order (each test builds on the state the previous ones left):
install -> verify -> start (READY=1) -> hot pages of another user's process move under the
hardened unit -> metrics pass promtool, `tierd status` -> reload with a changed policy ->
reload with a broken one (refused, FILE:LINE in the journal, old policy kept) -> a steady
state logs one INFO line per interval -> a hung loop is killed by the watchdog and restarted
-> a transient failure (exit 1) is restarted, its traceback logged once -> a clean, fast stop
-> the heatmap of the workload.  A drop-in adds only the test hooks (TIERD_DEBUG_HANG_FILE,
TIERD_DEBUG_FAIL_FILE) and a shorter WatchdogSec; the sandbox is the shipped one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tierd.linux import Kernel

# the hot-set child of the init-mode daemon test: 64 MiB of 4 KiB pages, the first 8 MiB hot
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "guest"))
import hot_child  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from units import sh, show  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
VENV = Path(sys.executable).parent.parent
OUT = Path(os.environ.get("TIERD_VM_OUT", "/tmp"))
POLICY = Path("/etc/tierd.yaml")
HANG = Path("/run/tierd-hang")
FAIL = Path("/run/tierd-fail")
METRICS = "http://127.0.0.1:9464/metrics"
WATCHDOG = 10  # WatchdogSec of the test drop-in
NOBODY = 65534

pytestmark = pytest.mark.skipif(not Path("/run/systemd/system").is_dir(),
                                reason="needs systemd as PID 1 (tests/vm/test_vm_systemd.py)")


GOOD = """# test policy (tests/vm/systemd_guest)
interval: {interval}
targets:
  - name: workload
    cmdline: "tierd-hot-workload"
migration:
  rate: 1GiB/s
"""
BROKEN = GOOD.replace("migration:", "hotness:\n  window: 99\nmigration:")  # line 7


def wait_for(pred, timeout: float, what: str, step: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(step)


def journal(since_cursor: str | None = None) -> list[dict]:
    args = ["journalctl", "-u", "tierd.service", "-o", "json", "--no-pager"]
    if since_cursor:
        args.append(f"--after-cursor={since_cursor}")
    return [json.loads(line) for line in sh(*args).stdout.splitlines() if line.strip()]


def scrape() -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(METRICS, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(m: dict, name: str, **labels) -> float | None:
    want = set(labels.items())
    vals = [v for (n, lv), v in m.items() if n == name and want <= set(lv)]
    return sum(vals) if vals else None


def log(msg: str) -> None:
    print(f"[systemd-guest {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def let_others_reach(path: Path) -> None:
    """o+x on ``path`` and its parents, so that another user can run this checkout's Python.
    The checkout may sit under a 0700 directory (CI's mktemp, /root); the guest's root is a
    writable overlay of the host's, so this changes nothing on the host."""
    for p in (path, *path.parents):
        mode = p.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(p, stat.S_IMODE(mode) | stat.S_IXOTH)


@pytest.fixture(scope="module")
def workload():
    """Another user's process: 64 MiB on the slow node, its first 8 MiB hot."""
    let_others_reach(VENV)
    let_others_reach(REPO)
    kernel = Kernel()
    child, addrs = hot_child.start(kernel, "tierd-hot-workload", user=NOBODY, group=NOBODY,
                                   extra_groups=[], cwd="/")
    yield child, kernel, addrs
    child.kill()
    child.wait()


@pytest.fixture(scope="module")
def installed():
    r = sh(str(REPO / "scripts" / "install-service.sh"), "--venv", str(VENV))
    log(r.stdout.strip())
    POLICY.write_text(GOOD.format(interval="1s"))
    dropin = Path("/etc/systemd/system/tierd.service.d")
    dropin.mkdir(parents=True, exist_ok=True)
    conf = (f"[Service]\nEnvironment=TIERD_DEBUG_HANG_FILE={HANG}\n"
            f"Environment=TIERD_DEBUG_FAIL_FILE={FAIL}\nWatchdogSec={WATCHDOG}s\n")
    # A checkout under /tmp (CI clones there) is hidden by the unit's PrivateTmp: bind it into
    # the service's namespace, read-only, as an installation in /opt would be visible.
    for path in (REPO,) if REPO in VENV.parents else (REPO, VENV):
        if Path("/tmp") in path.parents:
            conf += f"BindReadOnlyPaths={path}\n"
    (dropin / "test.conf").write_text(conf)
    sh("systemctl", "daemon-reload")
    yield
    sh("systemctl", "stop", "tierd.service", check=False)


def test_installed_unit_verifies_clean(installed):
    r = sh("systemd-analyze", "verify", "/etc/systemd/system/tierd.service", check=False)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
    sec = sh("systemd-analyze", "security", "--no-pager", "tierd.service", check=False).stdout
    if "Overall exposure" not in sec:  # the live query needs D-Bus; the file says the same
        sec = sh("systemd-analyze", "security", "--no-pager", "--offline=true",
                 "/etc/systemd/system/tierd.service", check=False).stdout
    (OUT / "security.txt").write_text(sec)
    m = re.search(r"Overall exposure level for tierd\.service: (\d+\.\d+)", sec)
    assert m, sec[-2000:]
    log(f"systemd-analyze security (live): {m.group(1)}")


def test_start_reaches_active_only_through_ready(installed, workload):
    t0 = time.monotonic()
    sh("systemctl", "start", "tierd.service", timeout=300)  # returns once READY=1 came
    log(f"systemctl start took {time.monotonic() - t0:.1f}s")
    p = show("Type", "ActiveState", "SubState", "StatusText", "NRestarts", "MainPID")
    assert p["Type"] == "notify"
    assert (p["ActiveState"], p["SubState"]) == ("active", "running"), p
    # STATUS= came from tierd's notifier with READY=1, after the endpoint was bound
    assert p["StatusText"].startswith(("running, tracking idle_bitmap", "#")), p
    assert metric(scrape(), "tierd_build_info", tracking="idle_bitmap") == 1


def test_the_sandbox_is_really_in_force(installed):
    """Every hardening directive took effect (none ignored for lack of kernel support), and
    the daemon runs with a seccomp filter, no new privileges and just its capabilities."""
    ignored = [e["MESSAGE"] for e in journal() if "ignoring" in e.get("MESSAGE", "")
               or "not supported" in e.get("MESSAGE", "")]
    assert not ignored, ignored
    pid = show("MainPID")["MainPID"]
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    # CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_DAC_OVERRIDE, CAP_SYS_NICE
    caps = (1 << 21) | (1 << 19) | (1 << 1) | (1 << 23)
    assert int(status["CapBnd"], 16) == caps and int(status["CapEff"], 16) == caps, status
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2", status["Seccomp"]  # filter mode
    mounts = Path(f"/proc/{pid}/mountinfo").read_text()
    assert re.search(r" / / ro[, ]", mounts) or " / ro," in mounts, mounts[:2000]  # strict


def test_hot_pages_move_under_the_hardened_unit(installed, workload):
    child, kernel, addrs = workload

    def placed():
        hot, cold = hot_child.placement(kernel, child, addrs)
        return (hot, cold) if hot >= 0.95 else None

    hot, cold = wait_for(placed, 240, "the workload's hot pages on node 0", step=2)
    log(f"hot on fast {hot:.3f}, cold on slow {cold:.3f}")
    assert cold >= 0.95
    # the metrics are published at the end of an interval: the pages may be in place (moved
    # by move_pages inside the interval) a little before the counters say so
    def promoted():
        m = scrape()
        return m if metric(m, "tierd_pages_promoted_total") >= 0.95 * hot_child.HOT else None

    m = wait_for(promoted, 30, "tierd_pages_promoted_total to count the moves")
    assert metric(m, "tierd_target_processes", target="workload") == 1
    fails = metric(m, "tierd_move_pages_failures_total", status="denied")
    assert fails == 0  # the sandbox does not refuse move_pages


def test_metrics_pass_promtool_and_status_reads_them(installed):
    with urllib.request.urlopen(METRICS, timeout=10) as r:
        text = r.read().decode()
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing (Debian package prometheus, scripts/install-deps.sh --kernel)"
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
    st = sh(str(VENV / "bin" / "tierd"), "status").stdout
    (OUT / "status.txt").write_text(st)
    assert "tracking idle_bitmap" in st and "policy /etc/tierd.yaml" in st
    assert re.search(r"^\s+workload\s+1\s+\d+\s+0\s", st, re.M), st


def test_reload_with_a_changed_policy_takes_effect(installed):
    pid = show("MainPID")["MainPID"]
    POLICY.write_text(GOOD.format(interval="2s"))
    sh("systemctl", "reload", "tierd.service")
    wait_for(lambda: "interval 2s" in show("StatusText")["StatusText"], 60,
             "STATUS= to show the new interval")
    m = scrape()
    assert metric(m, "tierd_policy_info", interval="2s") == 1
    assert metric(m, "tierd_policy_reloads_total", result="success") == 1
    assert metric(m, "tierd_interval_target_seconds") == 2
    assert show("MainPID")["MainPID"] == pid  # the same process: a reload, not a restart


def test_a_broken_policy_is_refused_and_the_old_one_kept(installed):
    cursor = journal()[-1]["__CURSOR"]
    POLICY.write_text(BROKEN.format(interval="3s"))
    try:
        sh("systemctl", "reload", "tierd.service")

        def refused():
            return [e for e in journal(cursor) if "reload of" in e.get("MESSAGE", "")]

        (entry,) = wait_for(refused, 60, "the refusal in the journal")
        assert "/etc/tierd.yaml:7: hotness.window" in entry["MESSAGE"], entry["MESSAGE"]
        assert entry["PRIORITY"] == "3" and entry["TIERD_POLICY"] == "/etc/tierd.yaml"
        p = show("ActiveState", "StatusText")
        assert p["ActiveState"] == "active"
        assert "last reload refused: /etc/tierd.yaml:7: hotness.window" in p["StatusText"]
        assert "interval 2s" in p["StatusText"]  # still the previous policy
        # the metrics are published at the end of an interval, which may come after the
        # refusal: wait for the count
        def counted():
            m = scrape()
            return m if metric(m, "tierd_policy_reloads_total", result="failure") == 1 else None

        m = wait_for(counted, 30, "the refused reload in the metrics")
        assert metric(m, "tierd_policy_last_reload_success") == 0
        assert metric(m, "tierd_interval_target_seconds") == 2
        # the journal fields of the per-interval lines (the next one may follow the refusal)
        lines = wait_for(lambda: [e for e in journal(cursor) if "TIERD_INTERVAL" in e], 30,
                         "an interval line after the refusal")
        assert lines[-1]["TIERD_TARGETS"] == "workload"
    finally:
        POLICY.write_text(GOOD.format(interval="2s"))  # a good file for the restarts to come


def test_a_steady_state_logs_one_info_line_per_interval(installed):
    def intervals():
        return metric(scrape(), "tierd_intervals_total") or 0

    cursor = journal()[-1]["__CURSOR"]
    first = intervals()
    wait_for(lambda: intervals() >= first + 5, 120, "5 more intervals", step=2)
    mine = [e for e in journal(cursor) if e.get("SYSLOG_IDENTIFIER") == "tierd"]
    info = [e for e in mine if e.get("PRIORITY") == "6"]
    assert all("TIERD_INTERVAL" in e for e in info), [e["MESSAGE"] for e in info]
    assert len(info) <= intervals() - first + 1
    louder = [e["MESSAGE"] for e in mine if int(e.get("PRIORITY", 6)) < 6]
    assert not louder, louder


def restarted(before: dict):
    """A predicate for wait_for: the service runs again, as a new process, restarted once
    more than ``before`` (MainPID, NRestarts) says."""
    def check():
        p = show("MainPID", "NRestarts", "ActiveState", "SubState")
        ok = (p["NRestarts"] != before["NRestarts"] and p["MainPID"] not in ("0", before["MainPID"])
              and (p["ActiveState"], p["SubState"]) == ("active", "running"))
        return p if ok else None

    return check


def test_a_hung_daemon_is_killed_by_the_watchdog_and_restarted(installed):
    before = show("MainPID", "NRestarts")
    cursor = journal()[-1]["__CURSOR"]
    HANG.write_text("")  # TIERD_DEBUG_HANG_FILE: the loop blocks at its next interval
    t0 = time.monotonic()
    p = wait_for(restarted(before), WATCHDOG + 180, "a watchdog restart")
    log(f"watchdog restart after {time.monotonic() - t0:.1f}s: {before} -> {p}")
    assert int(p["NRestarts"]) == int(before["NRestarts"]) + 1
    msgs = [e.get("MESSAGE", "") for e in journal(cursor)]
    assert any("hanging the main loop on purpose" in m for m in msgs)
    assert any("Watchdog timeout" in m for m in msgs), msgs[-20:]
    HANG.unlink()


def test_a_transient_failure_exits_1_and_is_restarted(installed):
    """TIERD_DEBUG_FAIL_FILE: every interval fails; after 10 in a row tierd exits 1, which
    is not in RestartPreventExitStatus=: systemd restarts it.  One traceback in the log."""
    before = show("MainPID", "NRestarts")
    cursor = journal()[-1]["__CURSOR"]
    FAIL.write_text("")
    t0 = time.monotonic()
    p = wait_for(restarted(before), 240, "a restart after exit 1")
    FAIL.unlink()
    log(f"restart after a transient failure: {time.monotonic() - t0:.1f}s, {p}")
    assert int(p["NRestarts"]) == int(before["NRestarts"]) + 1
    entries = journal(cursor)
    msgs = [e.get("MESSAGE", "") for e in entries]
    assert any("status=1/FAILURE" in m for m in msgs), msgs[-20:]
    mine = [e["MESSAGE"] for e in entries if e.get("SYSLOG_IDENTIFIER") == "tierd"]
    failed = [m for m in mine if m.startswith("interval ") and " failed" in m]
    assert len(failed) == 10, failed
    assert sum("Traceback" in m for m in mine) == 1, failed
    assert any("10 intervals in a row failed" in m for m in mine)


def test_stop_is_clean_and_fast(installed):
    # a little load first: the stop lands in a running daemon, after at least one interval
    wait_for(lambda: (metric(scrape(), "tierd_intervals_total") or 0) >= 1, 120, "an interval")
    cursor = journal()[-1]["__CURSOR"]
    t0 = time.monotonic()
    sh("systemctl", "stop", "tierd.service", timeout=120)
    took = time.monotonic() - t0
    log(f"systemctl stop took {took:.1f}s")
    p = show("ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    assert p["ActiveState"] == "inactive" and p["Result"] == "success", p
    assert p["ExecMainStatus"] == "0", p  # exited by itself, not killed
    msgs = [e.get("MESSAGE", "") for e in journal(cursor)]
    assert any("tierd stopped" in m for m in msgs), msgs
    assert not any("SIGKILL" in m or "Killing" in m for m in msgs), msgs
    (OUT / "stop_seconds.txt").write_text(f"{took:.2f}\n")


def test_heatmap_of_the_workload(workload):
    child, _, _ = workload
    png = OUT / "heatmap.png"
    r = sh(str(VENV / "bin" / "tierd"), "scan", "--pid", str(child.pid), "--samples", "12",
           "--interval", "500ms", "--heatmap", str(png))
    assert f"heatmap: {png}" in r.stdout, r.stdout + r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
