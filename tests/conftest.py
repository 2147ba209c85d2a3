"""Suite-wide rules.

In CI (CI=true) a skipped test is a failure: every tier must really run there, so a missing
prerequisite (not root, no QEMU, no kernel) must break the build rather than pass silently.
Locally a skip names the missing prerequisite.  One exception: a test marked ``rig`` needs
what only the QEMU rig has (two memory tiers, idle_bitmap, page_idle); on the host it may
skip, because tests/vm runs tests/host again inside the rig and fails on any skip there.
"""

import os

import pytest


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    covered_by_rig = item.get_closest_marker("rig") and not os.environ.get("TIERD_IN_VM")
    if _in_ci() and report.skipped and not hasattr(report, "wasxfail") and not covered_by_rig:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {reason}"
