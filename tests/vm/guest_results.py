"""What a guest's pytest run reported, read back on the host: shared by the VM tier's boots.

A boot passes only if every test the guest was given ran and none failed, errored or skipped:
a test file the guest lost (not shared, failing to import into an empty collection ...) must
not pass unnoticed, so the JUnit ids are compared with the host's own collection of the same
paths under the guest's environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def check_guest_run(xml: Path, paths: list[str], output: str) -> dict[str, int]:
    """Assert that the run recorded in ``xml`` ran exactly the tests ``paths`` collect, with
    no failure, error or skip; ``output`` is the guest console, shown on failure."""
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    assert counts["failures"] == counts["errors"] == 0, output[-6000:]
    # Everything in the guest must really run: it is the machine the tests were written for.
    assert counts["skipped"] == 0, output[-6000:]
    ran = {(c.get("classname"), c.get("name")) for c in suite.iter("testcase")}
    expected = collected(paths)
    assert ran == expected, (counts, sorted(expected - ran), sorted(ran - expected))
    return counts


def collected(paths: list[str]) -> set[tuple[str, str]]:
    """(classname, name) of every test pytest collects from ``paths``, as JUnit names them,
    collected here with the guest's TIERD_IN_VM=1."""
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only",
                        "-q", *paths], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TIERD_IN_VM": "1"})
    assert p.returncode == 0, p.stdout + p.stderr
    out = set()
    for nodeid in (line for line in p.stdout.splitlines() if "::" in line):
        path, *classes, name = nodeid.split("::")
        out.add((".".join([path.removesuffix(".py").replace("/", "."), *classes]), name))
    assert len(out) >= 5, p.stdout
    return out
