"""Host side of the systemd boot: the rig boots systemd as PID 1 once (vmrig systemd=True)
and runs tests/vm/systemd_guest there, under pytest, as a service; the assertions here read
what the guest recorded in the out share (JUnit XML, journal, heatmap, security report)."""

import os
import shutil
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


@pytest.fixture(scope="module")
def systemd_guest(tmp_path_factory, rig_kernel):
    kernel = rig_kernel
    out = tmp_path_factory.mktemp("vm-systemd")
    script = GUEST_SCRIPT.format(repo=REPO, python=sys.executable, tests=" ".join(GUEST_TESTS))
    result = vmrig.run(script, kernel=kernel, out=out, timeout=1200, systemd=True)
    keep = os.environ.get("TIERD_VM_KEEP")  # a directory to copy the artefacts to
    if keep:
        shutil.copytree(out, keep, dirs_exist_ok=True)
    return out, result


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
