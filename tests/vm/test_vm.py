"""Host side of the VM tier: one boot of the rig runs the kernel selftest and, under pytest,
tests/vm/guest plus tests/host (the host tier again, now on a two-node machine with our
kernel).  The assertions here read what the guest recorded in the out share.
"""

import re
import sys
from pathlib import Path

import pytest

from guest_results import check_guest_run
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
    --junitxml=/mnt/out/guest.xml {tests}
"""
GUEST_TESTS = ["tests/vm/guest", "tests/host"]


@pytest.fixture(scope="session")
def guest(tmp_path_factory, rig_kernel):
    kernel = rig_kernel
    sys.path.insert(0, str(REPO))
    import workloads  # the C workloads of tests/vm/guest: built here, the guest's root is read-only

    workloads.build()
    out = tmp_path_factory.mktemp("vm")
    script = GUEST_SCRIPT.format(selftests=kernel / "selftests", repo=REPO,
                                 python=sys.executable, tests=" ".join(GUEST_TESTS))
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
    check_guest_run(out / "guest.xml", GUEST_TESTS, result.output)
