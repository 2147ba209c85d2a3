"""tierd/vmrig.py's QEMU command line: the two-tier rig and the one-node machine (issue 19:
the host that cannot tier, booted by tests/vm/test_vm_systemd.py)."""

from pathlib import Path

from tierd import vmrig


def numa_args(argv):
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-numa"]


def test_two_tier_rig_has_two_nodes_with_hmat():
    argv = vmrig.qemu_command(Path("/k"), vmrig.Machine(), "/init", Path("/o"))
    numa = numa_args(argv)
    assert [a for a in numa if a.startswith("node,")] == [
        "node,nodeid=0,cpus=0-1,memdev=m0,initiator=0", "node,nodeid=1,memdev=m1,initiator=0"]
    assert sum(a.startswith("hmat-lb") for a in numa) == 4 and "q35,hmat=on" in argv


def test_one_node_machine_has_one_memory_node_and_no_hmat():
    argv = vmrig.qemu_command(Path("/k"), vmrig.Machine(fast="1G", slow="0"), "/init", Path("/o"))
    assert numa_args(argv) == ["node,nodeid=0,cpus=0-1,memdev=m0"]
    assert "q35" in argv and "1024M" in argv and not any("id=m1" in a for a in argv)
