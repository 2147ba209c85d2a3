"""The policy file as a careless operator leaves it: a FIFO, a device, a directory, a huge
file.  check-config and a reload refuse it at once (reload keeps the old policy)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading

import pytest
from engine_fakes import FakeKernel, FakeProc

from tierd.cli import main
from tierd.engine.daemon import Daemon, Engine
from tierd.engine.targets import ProcessRef, StaticResolver
from tierd.policy import MAX_POLICY_BYTES, load_policy

GOOD = "interval: 1s\ntargets:\n  - name: app\n    pids: [4242]\n"


def _in_thread(fn, timeout=10.0):
    """fn() in a daemon thread (a blocked open() must not hang the test run): its result."""
    box = []
    t = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"still blocked after {timeout}s"
    return box[0]


def _check_config(path):
    out, err = io.StringIO(), io.StringIO()
    rc = main(["check-config", str(path)], out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def test_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "tierd.yaml"
    os.mkfifo(fifo)
    rc, out, err = _in_thread(lambda: _check_config(fifo))
    assert (rc, out) == (2, "")
    assert err == f"tierd: {fifo}: not a regular file (a FIFO)\n"


def test_a_directory_is_refused(tmp_path):
    rc, _, err = _check_config(tmp_path)
    assert rc == 2 and err == f"tierd: {tmp_path}: not a regular file (a directory)\n"


def test_a_file_over_the_cap_is_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text(GOOD + "#" * MAX_POLICY_BYTES + "\n")
    rc, _, err = _check_config(big)
    assert rc == 2 and err == f"tierd: {big}: larger than 1MiB: not a policy file\n"
    big.write_text(GOOD + "#" * (MAX_POLICY_BYTES - len(GOOD) - 1) + "\n")  # exactly the cap
    assert _check_config(big)[0] == 0


def test_dev_zero_is_refused_without_reading_it():
    """In a child with 1 GiB of address space: reading /dev/zero whole would die of it."""
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
            "from tierd.cli import main; sys.exit(main(['check-config', '/dev/zero']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr == "tierd: /dev/zero: not a regular file (a character device)\n"


@pytest.mark.parametrize("replace", ["fifo", "dir", "big"])
def test_reload_of_a_replaced_policy_keeps_the_old_one_at_once(tmp_path, replace):
    cfg = tmp_path / "tierd.yaml"
    cfg.write_text(GOOD)
    k = FakeKernel()
    k.add(FakeProc(4242, 64, node=1))
    eng = Engine(k, load_policy(str(cfg)), resolver=StaticResolver([ProcessRef(4242, 0.0, "app")]))
    d = Daemon(eng, loader=load_policy)
    assert d.tick() is not None
    old = eng.policy
    cfg.unlink()
    if replace == "fifo":
        os.mkfifo(cfg)
    elif replace == "dir":
        cfg.mkdir()
    else:
        cfg.write_text(GOOD + "#" * (2 * MAX_POLICY_BYTES))
    assert _in_thread(d.reload) is False
    assert eng.policy is old
    assert d.tick() is not None  # the loop goes on with the old policy
    eng.close()
