"""Host side of the systemd boots: the rig boots systemd as PID 1 (vmrig systemd=True) and
runs tests/vm/systemd_guest there, under pytest, as a service; the assertions here read what
the guest recorded in the out share (JUnit XML, journal, heatmap, security report).

Two boots: the two-tier rig (the Debian package, built here first by scripts/build-deb.sh
into the out share, then tierd.service installed by the script), and a short one on a
one-node machine (vmrig Machine(slow="0")), where tierd.service must fail once with exit
status 69 and not restart (issue 19)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from guest_results import check_guest_run
from tierd import vmrig

REPO = Path(__file__).resolve().parents[2]

GUEST_SCRIPT = """
set -u
cd {repo}
{python} -m pytest -p no:cacheprovider -p no:hypothesispytest -q -s \\
    --junitxml=/mnt/out/systemd.xml {tests}
"""
GUEST_TESTS = ["tests/vm/systemd_guest"]
ONE_NODE_TESTS = ["tests/vm/systemd_guest/one_node_cannot_tier.py"]


def build_deb(out: Path) -> Path:
    """The .deb, built on the host into the out share (the guest installs it with apt)."""
    r = subprocess.run([str(REPO / "scripts" / "build-deb.sh"), str(out)], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return Path(r.stdout.strip().splitlines()[-1])


def boot(out: Path, kernel, tests, **kw):
    script = GUEST_SCRIPT.format(repo=REPO, python=sys.executable, tests=" ".join(tests))
    result = vmrig.run(script, kernel=kernel, out=out, systemd=True, **kw)
    keep = os.environ.get("TIERD_VM_KEEP")  # a directory to copy the artefacts to
    if keep:
        shutil.copytree(out, Path(keep) / out.name, dirs_exist_ok=True)
    return out, result


@pytest.fixture(scope="module")
def systemd_guest(tmp_path_factory, rig_kernel):
    out = tmp_path_factory.mktemp("vm-systemd")
    build_deb(out)
    return boot(out, rig_kernel, GUEST_TESTS, timeout=1200)


@pytest.fixture(scope="module")
def one_node_guest(tmp_path_factory, rig_kernel):
    out = tmp_path_factory.mktemp("vm-one-node")
    return boot(out, rig_kernel, ONE_NODE_TESTS, timeout=600,
                machine=vmrig.Machine(fast="1G", slow="0"))


def test_systemd_was_pid_1(systemd_guest):
    out, result = systemd_guest
    journal = (out / "journal.txt").read_text(errors="replace")
    assert "systemd 252" in journal or "systemd[1]" in journal, journal[:3000]
    assert "tierd-vm: running" in result.console


def test_service_tests_pass_under_systemd(systemd_guest):
    out, result = systemd_guest
    assert result.returncode == 0, result.output[-6000:]
    check_guest_run(out / "systemd.xml", GUEST_TESTS, result.output)


def test_heatmap_and_reports_came_back(systemd_guest):
    out, _ = systemd_guest
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Overall exposure level for tierd.service" in (out / "security.txt").read_text()
    assert "workload" in (out / "status.txt").read_text()


def test_a_host_that_cannot_tier_fails_once_with_69(one_node_guest):
    out, result = one_node_guest
    assert result.returncode == 0, result.output[-6000:]
    check_guest_run(out / "systemd.xml", ONE_NODE_TESTS, result.output)
    assert "status=69/UNAVAILABLE" in result.output
