"""systemd/tierd.service and scripts/install-service.sh on this machine, without root and
without touching it: `systemd-analyze verify` and `security` on the unit, the install script
into a temporary root.  (tests/vm runs the installed unit under a real systemd.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "tierd.service"
INSTALL = REPO / "scripts" / "install-service.sh"
VENV = Path(sys.executable).parent.parent
# systemd-analyze security's exposure for the unit (0 best .. 10), recorded in README.md;
# a change that loosens the sandbox must update both.
EXPOSURE = 2.6


def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze missing (Debian package systemd)")
    return path


def test_unit_verifies_clean(tmp_path):
    # the one thing verify cannot see here is the installed binary: point it at this venv's
    unit = tmp_path / "tierd.service"
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/tierd run --config /etc/tierd.yaml" in text
    unit.write_text(text.replace("/usr/local/bin/tierd", str(VENV / "bin" / "tierd")))
    r = subprocess.run([analyze(), "verify", str(unit)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


def test_verify_does_complain_about_a_bad_unit(tmp_path):
    unit = tmp_path / "tierd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/tierd", str(VENV / "bin" / "tierd"))
                    .replace("ProtectHome=yes", "ProtectHome=sometimes"))
    r = subprocess.run([analyze(), "verify", str(unit)], capture_output=True, text=True,
                       timeout=120)
    assert "protect home value" in (r.stdout + r.stderr).lower()


def test_security_exposure_is_as_recorded():
    r = subprocess.run([analyze(), "security", "--offline=true", str(UNIT)],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for tierd\.service: (\d+\.\d+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    assert float(m.group(1)) <= EXPOSURE, r.stdout
    readme = (REPO / "README.md").read_text()
    assert f"exposure {m.group(1)}" in readme, "record the score in README.md"


def sh(*args, root):
    return subprocess.run(["bash", str(INSTALL), "--root", str(root), *args],
                          capture_output=True, text=True, timeout=120)


def test_install_keeps_an_edited_policy_and_uninstall_removes_the_rest(tmp_path):
    root = tmp_path / "root"
    r = sh("--venv", str(VENV), root=root)
    assert r.returncode == 0, r.stderr
    unit = root / "etc/systemd/system/tierd.service"
    link = root / "usr/local/bin/tierd"
    policy = root / "etc/tierd.yaml"
    assert unit.read_text() == UNIT.read_text()
    assert link.resolve() == (VENV / "bin" / "tierd").resolve()
    assert policy.read_text() == (REPO / "etc/tierd.yaml").read_text()
    assert "installed the default policy" in r.stdout

    policy.write_text(policy.read_text() + "# mine\n")
    r = sh("--venv", str(VENV), root=root)
    assert r.returncode == 0 and "kept your" in r.stdout
    assert policy.read_text().endswith("# mine\n")

    r = sh("--uninstall", root=root)
    assert r.returncode == 0, r.stderr
    assert not unit.exists() and not link.is_symlink() and not (root / "usr/local/share/tierd").exists()
    assert policy.read_text().endswith("# mine\n") and "kept" in r.stdout
    assert VENV.exists()  # a --venv environment is never removed


def test_uninstall_removes_an_unedited_policy(tmp_path):
    root = tmp_path / "root"
    assert sh("--venv", str(VENV), root=root).returncode == 0
    assert sh("--uninstall", root=root).returncode == 0
    assert not (root / "etc/tierd.yaml").exists()
