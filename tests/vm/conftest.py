"""tests/vm: boots the patched kernel in QEMU once per session and runs the guest tiers there.

tests/vm/guest/ holds tests that only make sense inside the rig (two NUMA nodes, our kernel);
they are collected only in the guest, where TIERD_IN_VM=1, and run by test_vm.py's single boot.
"""

import os

import pytest

from tierd import vmrig

collect_ignore = [] if os.environ.get("TIERD_IN_VM") else ["guest", "systemd_guest"]


@pytest.fixture(scope="session")
def rig_kernel():
    """The rig kernel's directory (built or reused), or a skip naming what is missing."""
    why = vmrig.missing_prerequisite()
    if why:
        pytest.skip(why)
    return vmrig.kernel_dir()
