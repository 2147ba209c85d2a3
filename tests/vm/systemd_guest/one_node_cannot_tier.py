"""Inside the one-node rig booted with systemd as PID 1 (tests/vm/test_vm_systemd.py,
vmrig Machine(slow="0")): a host that cannot tier.  tierd.service, installed by the script
with the shipped unit and policy, must fail once, with exit status 69 (EX_UNAVAILABLE, which
the unit lists in RestartPreventExitStatus=), one journal line saying what is missing and the
fix, and no restart loop.  (Not named test_*.py: the two-node boot must not collect it.)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from units import sh, show  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
VENV = Path(sys.executable).parent.parent
RESTART_SEC = 2  # tierd.service's RestartSec=


def tierd_journal() -> list[dict]:
    out = sh("journalctl", "-u", "tierd.service", "-o", "json", "--no-pager").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_the_rig_has_one_memory_node():
    nodes = [p for p in Path("/sys/devices/system/node").glob("node[0-9]*")]
    assert [p.name for p in nodes] == ["node0"], nodes
    topo = sh(str(VENV / "bin" / "tierd"), "topology").stdout
    assert "only one class of memory" in topo, topo


def test_start_fails_with_exit_69(tmp_path):
    sh(str(REPO / "scripts" / "install-service.sh"), "--venv", str(VENV))
    # a checkout under /tmp (CI clones there) is hidden by PrivateTmp: bind it, read-only
    conf = "[Service]\n" + "".join(f"BindReadOnlyPaths={p}\n" for p in {REPO, VENV}
                                   if Path("/tmp") in p.parents)
    dropin = Path("/etc/systemd/system/tierd.service.d")
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "test.conf").write_text(conf)
    sh("systemctl", "daemon-reload")
    r = sh("systemctl", "start", "tierd.service", check=False, timeout=300)
    assert r.returncode != 0, r.stdout + r.stderr
    p = show("ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    assert p["ExecMainStatus"] == "69" and p["ExecMainCode"] == "1", p  # exited, status 69
    assert p["Result"] == "exit-code", p


def test_no_restart_loop():
    time.sleep(4 * RESTART_SEC)  # a restart would have come by now (RestartSec=2s)
    p = show("ActiveState", "NRestarts", "SubState")
    assert (p["ActiveState"], p["NRestarts"]) == ("failed", "0"), p
    assert "69" in show("RestartPreventExitStatus")["RestartPreventExitStatus"]


def test_status_shows_one_clear_failed_state():
    st = sh("systemctl", "status", "--no-pager", "tierd.service", check=False).stdout
    print(st, flush=True)
    assert "status=69/UNAVAILABLE" in st, st
    assert "failed (Result: exit-code)" in st, st


def test_the_journal_says_what_is_missing_and_the_fix_once():
    msgs = [e for e in tierd_journal() if e.get("SYSLOG_IDENTIFIER") == "tierd"]
    errors = [e["MESSAGE"] for e in msgs if e.get("PRIORITY") == "3"]
    assert len(errors) == 1, errors
    (msg,) = errors
    assert msg.startswith("this host cannot tier: only one class of memory"), msg
    assert "fix: give the machine a second, slower memory node" in msg and "\n" not in msg
    starts = [e for e in tierd_journal() if "Starting tierd" in e.get("MESSAGE", "")]
    assert len(starts) == 1, [e["MESSAGE"] for e in starts]  # started once, never again
