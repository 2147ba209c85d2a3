"""Host side of the VM tier: one boot of the rig runs the kernel selftest and, under pytest,
tests/vm/guest plus tests/host (the host tier again, now on a two-node machine with our
kernel).  The assertions here read what the guest recorded in the out share.
"""

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tierd import vmrig

REPO = Path(__file__).resolve().parents[2]

GUEST_SCRIPT = """
set -u
st={selftests}
# KUnit reports at KERN_INFO, below the console loglevel: keep the whole kernel log.
dmesg > /mnt/out/dmesg.txt 2>&1
# The selftest's hugetlb case needs reserved huge pages (as run_vmtests.sh would set up).
echo 16 > /proc/sys/vm/nr_hugepages
# Its swapped-out cases need swap: 64 MiB on zram (CONFIG_ZRAM), only while it runs, so that
# the guest tests below place pages without swap.  A failure shows as that case's skip reason.
echo 64M > /sys/block/zram0/disksize && mkswap /dev/zram0 > /dev/null && swapon /dev/zram0 ||
    echo "zram swap setup failed" >&2
if [ -x "$st/idle_bitmap" ]; then
    "$st/idle_bitmap" > /mnt/out/kselftest.tap 2>&1; echo $? > /mnt/out/kselftest.rc
else
    echo "no selftest binary in $st" > /mnt/out/kselftest.tap; echo 127 > /mnt/out/kselftest.rc
fi
swapoff /dev/zram0 2> /dev/null; echo 1 > /sys/block/zram0/reset 2> /dev/null
cat /mnt/out/kselftest.tap
cd {repo}
{python} -m pytest -p no:cacheprovider -q \\
    --junitxml=/mnt/out/guest.xml tests/vm/guest tests/host
"""


@pytest.fixture(scope="session")
def guest(tmp_path_factory):
    why = vmrig.missing_prerequisite()
    if why:
        pytest.skip(why)
    kernel = vmrig.kernel_dir()
    sys.path.insert(0, str(REPO))
    import workloads  # the C workloads of tests/vm/guest: built here, the guest's root is read-only

    workloads.build()
    out = tmp_path_factory.mktemp("vm")
    script = GUEST_SCRIPT.format(selftests=kernel / "selftests", repo=REPO,
                                 python=sys.executable)
    result = vmrig.run(script, kernel=kernel, out=out, timeout=1500)
    return out, result


def test_kselftest_passes(guest):
    out, result = guest
    tap = (out / "kselftest.tap").read_text()
    rc = int((out / "kselftest.rc").read_text())
    assert rc == 0, f"idle_bitmap kselftest exited {rc}:\n{tap}"
    assert "not ok" not in tap, tap
    assert "# Totals: pass:" in tap, tap
    assert " skip:0 " in tap, f"a selftest case was skipped in the rig:\n{tap}"


def test_kunit_suite_passes_at_boot(guest):
    """CONFIG_PROC_IDLE_BITMAP_KUNIT_TEST=y runs the suite during boot (KTAP in the log)."""
    out, result = guest
    log = (out / "dmesg.txt").read_text(errors="replace")
    results = re.findall(r"\b((?:not )?ok) \d+ proc_idle_bitmap\s*$", log, re.M)
    assert results == ["ok"], "\n".join(line for line in log.splitlines()
                                        if "idle_bitmap" in line or "kunit" in line.lower())


def test_guest_tests_pass(guest):
    out, result = guest
    assert result.returncode == 0, result.output[-6000:]
    suite = ET.parse(out / "guest.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    assert counts["failures"] == counts["errors"] == 0, result.output[-6000:]
    # Everything in the guest must really run: it is the machine the tests were written for.
    assert counts["skipped"] == 0, result.output[-6000:]
    # and every test the guest was given ran: a test file the guest lost (not shared, failing
    # to import into an empty collection ...) must not pass unnoticed
    ran = {(c.get("classname"), c.get("name")) for c in suite.iter("testcase")}
    assert ran == expected_guest_tests(), counts


def expected_guest_tests() -> set[tuple[str, str]]:
    """(classname, name) of every test the guest command collects, as junit names them,
    from the same collection run here with the guest's TIERD_IN_VM=1."""
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only",
                        "-q", "tests/vm/guest", "tests/host"], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "TIERD_IN_VM": "1"})
    assert p.returncode == 0, p.stdout + p.stderr
    out = set()
    for nodeid in (line for line in p.stdout.splitlines() if "::" in line):
        path, *classes, name = nodeid.split("::")
        out.add((".".join([path.removesuffix(".py").replace("/", "."), *classes]), name))
    assert len(out) >= 5, p.stdout
    return out
