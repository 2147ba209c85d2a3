"""Inside the rig booted with systemd as PID 1 (tests/vm/test_vm_systemd.py): the Debian
package, as an operator uses it.  The host built it (scripts/build-deb.sh) into the out share;
its dependencies are Debian 12's packages, already installed on the host whose root this
guest runs on (scripts/install-deps.sh --kernel), so apt needs no network.

In file order: apt installs it (enabled, not started; /etc/tierd.yaml a conffile; the README)
-> `systemctl start tierd` reaches active through READY=1 with Debian's python3 and
libraries, under the shipped unit -> apt removes it (stopped; the edited conffile kept) ->
apt purges it (nothing left).  Runs before test_service.py, which installs with the script.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from units import sh, show  # noqa: E402

OUT = Path(os.environ.get("TIERD_VM_OUT", "/tmp"))
POLICY = Path("/etc/tierd.yaml")

pytestmark = pytest.mark.skipif(not Path("/run/systemd/system").is_dir(),
                                reason="needs systemd as PID 1 (tests/vm/test_vm_systemd.py)")


def apt(*args, timeout=600):
    return sh("apt-get", *args, timeout=timeout, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def deb() -> str:
    (path,) = glob.glob(str(OUT / "tierd_*_all.deb"))
    return path


def test_apt_installs_the_package_enabled_not_started():
    # man-db's trigger would re-index every manual page over 9p for minutes under emulation;
    # the guest's root is an overlay, so this changes nothing on the host
    Path("/var/lib/man-db/auto-update").unlink(missing_ok=True)
    t0 = time.monotonic()
    r = apt("install", "-y", "--no-install-recommends", deb())
    print(f"[deb] apt-get install took {time.monotonic() - t0:.1f}s", flush=True)
    assert "tierd" in r.stdout
    assert sh("systemctl", "is-enabled", "tierd.service", check=False).stdout.strip() == "enabled"
    p = show("ActiveState", "FragmentPath")
    assert p["ActiveState"] == "inactive", p  # enabled, not started (debian/rules says why)
    assert p["FragmentPath"] == "/lib/systemd/system/tierd.service", p
    conffiles = sh("dpkg-query", "-W", "-f=${Conffiles}", "tierd").stdout
    assert "/etc/tierd.yaml" in conffiles, conffiles
    assert Path("/usr/share/doc/tierd/README.md").is_file()
    assert os.access("/usr/bin/tierd", os.X_OK)
    assert sh("/usr/bin/tierd", "check-config", str(POLICY)).returncode == 0


def test_systemctl_start_runs_the_packaged_tierd():
    sh("systemctl", "start", "tierd.service", timeout=300)  # returns once READY=1 came
    p = show("ActiveState", "SubState", "MainPID", "StatusText", "ExecMainStartTimestamp")
    assert (p["ActiveState"], p["SubState"]) == ("active", "running"), p
    cmd = Path(f"/proc/{p['MainPID']}/cmdline").read_bytes().split(b"\0")
    assert cmd[:2] == [b"/usr/bin/python3", b"/usr/bin/tierd"], cmd  # Debian's python3
    maps = Path(f"/proc/{p['MainPID']}/maps").read_text()
    assert "/usr/lib/python3/dist-packages/numpy" in maps  # Debian's numpy, not the venv's
    st = sh("/usr/bin/tierd", "status").stdout
    assert "tracking idle_bitmap" in st and "policy /etc/tierd.yaml" in st, st


def test_apt_remove_stops_it_and_keeps_the_edited_policy():
    POLICY.write_text(POLICY.read_text() + "# edited by the operator\n")
    apt("remove", "-y", "tierd")
    assert show("ActiveState")["ActiveState"] in ("inactive", "failed")
    assert not Path("/usr/bin/tierd").exists()
    assert POLICY.read_text().endswith("# edited by the operator\n")  # a conffile stays


def test_apt_purge_removes_everything():
    apt("purge", "-y", "tierd")
    assert not POLICY.exists()
    assert sh("dpkg-query", "-W", "tierd", check=False).returncode != 0 or \
        "not-installed" in sh("dpkg-query", "-W", "-f=${db:Status-Status}", "tierd", check=False).stdout
    assert not Path("/lib/systemd/system/tierd.service").exists()
    assert not list(Path("/etc/systemd/system").glob("*.wants/tierd.service"))
    sh("systemctl", "daemon-reload")
    assert show("LoadState")["LoadState"] == "not-found"
