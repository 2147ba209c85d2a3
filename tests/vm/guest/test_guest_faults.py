"""Inside the rig: faults during tierd's work, with workloads that checksum their pages.

- tierd killed with SIGKILL at random points of its migrations, again and again (each
  restart converging again): no byte of the workload changes (hotset.c's verify), no page
  is lost (every page of the region still resident), and a last run converges.
  TIERD_FAULT_KILLS sets the number of kills (10 here; benchmarks/faults.py runs 100).
- targets killed while tierd samples and moves them: no error, tierd goes on.
- 100 SIGHUPs in one second: exactly one reload applied, the daemon healthy.
- the metrics port taken at start: a clear error, exit 2.
- clients that open the metrics port and never send: the intervals go on at their pace.

Each result is also written to $TIERD_VM_OUT/faults.txt (the benchmark prints it).
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tierd.linux import Kernel

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
import workloads  # noqa: E402
from workloads import Hotset, Scenario, Spec  # noqa: E402
from workloads.harness import Tierd  # noqa: E402

SHIPPED = (REPO / "etc" / "tierd.yaml").read_text()
KILLS = int(os.environ.get("TIERD_FAULT_KILLS", "10"))


@pytest.fixture(scope="module")
def bindir():
    return workloads.build()


def record(line: str) -> None:
    out = os.environ.get("TIERD_VM_OUT")
    if out:
        with open(os.path.join(out, "faults.txt"), "a") as f:
            f.write(line + "\n")
    print(line)


def policy(names, interval="200ms", metrics=None, **extra) -> str:
    text = workloads.policy_yaml(SHIPPED, Scenario("f", "f", tuple(Spec(n, 0, 0) for n in names)),
                                 interval=interval)
    text = text.replace("rate: 128MiB/s", "rate: 1GiB/s")
    if metrics:
        text = text.replace("listen: ''", f"listen: '{metrics}'")
    return text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    assert m, f"{name}{labels} not in the scrape"
    return float(m[1])


def resident(h: Hotset) -> int:
    return int((h.nodes() >= 0).sum())


def clean(tierd: Tierd) -> None:
    for bad in ("Traceback", "ERROR"):
        assert bad not in tierd.text(), tierd.text()[-4000:]


# -- SIGKILL during migrations ---------------------------------------------------------------


def test_sigkill_during_migrations_loses_no_byte_and_no_page(bindir, tmp_path):
    rnd = random.Random(20)
    with Hotset(bindir, tmp_path, size_mib=64, hot_mib=24, start_node=1, name="hs-kill") as h:
        pages = len(h.layout().addrs())
        assert resident(h) == pages
        killed_moving = 0
        t0 = time.monotonic()
        kernel = Kernel()
        addrs = h.layout().addrs()
        for i in range(KILLS):
            # every page back to the slow node: each run has the whole hot set to promote
            kernel.move_pages(h.pid, addrs, np.full(addrs.size, 1, dtype=np.int32))
            tierd = Tierd(policy(["hs-kill"]), tmp_path / f"run{i}").start()
            try:
                tierd.wait_intervals(1, 240)
                time.sleep(rnd.uniform(0.2, 1.2))  # somewhere in the intervals that move
                moving = any(iv.promoted or iv.demoted for iv in tierd.intervals())
                tierd.proc.send_signal(signal.SIGKILL)
                tierd.proc.wait(30)
                killed_moving += moving
            finally:
                tierd.stop()
            assert tierd.returncode == -signal.SIGKILL
        kill_seconds = time.monotonic() - t0
        assert h.verify(), "a word of the workload's data changed"
        lost = pages - resident(h)
        # a last run converges again, from the slow node
        kernel.move_pages(h.pid, addrs, np.full(addrs.size, 1, dtype=np.int32))
        assert h.placement().hot_fast == 0
        tierd = Tierd(policy(["hs-kill"]), tmp_path / "final").start()
        try:
            end = time.monotonic() + 240
            while (p := h.placement()).hot_fraction < 0.95:
                assert time.monotonic() < end, (p, tierd.text()[-3000:])
                time.sleep(0.5)
            converged = len(tierd.intervals())
        finally:
            tierd.stop()
        clean(tierd)
        assert h.verify(), "a word of the workload's data changed"
    record(f"sigkill: {KILLS} kills in {kill_seconds:.0f}s ({killed_moving} in an interval that "
           f"had moved pages), 0 corrupted bytes (verify ok), {lost} of {pages} pages lost, "
           f"then from the slow node 95% of the hot set on node 0 after {converged} "
           "interval(s)")
    assert converged >= 2  # it had to sample twice and move: the check is not vacuous
    assert lost == 0
    assert killed_moving >= KILLS // 2, "the kills did not hit migrations"


# -- targets killed while sampled and moved --------------------------------------------------


def test_targets_killed_while_sampled_or_moved_cause_no_error(bindir, tmp_path):
    rnd = random.Random(21)
    names = [f"hs-victim{i}" for i in range(6)]
    with Tierd(policy(names, interval="100ms"), tmp_path / "tierd") as tierd:
        tierd.wait_intervals(1, 240)
        for i, name in enumerate(names):
            h = Hotset(bindir, tmp_path, size_mib=32, hot_mib=16, start_node=1, name=name,
                       seed=i + 1).start()
            # first sampled, then being promoted: kill it somewhere in there
            time.sleep(rnd.uniform(0.05, 1.5))
            h.proc.send_signal(signal.SIGKILL)
            h.proc.wait(30)
        n = len(tierd.intervals())
        tierd.wait_intervals(n + 5, 240)  # the daemon goes on
        assert tierd.proc.poll() is None
    assert tierd.returncode == 0, tierd.text()[-3000:]
    clean(tierd)
    assert "not sampled" not in tierd.text()  # an exit is quiet
    record(f"targets killed: {len(names)} targets SIGKILLed 0.05-1.5 s into being tracked, "
           "0 errors, daemon went on")


# -- SIGHUP storm ----------------------------------------------------------------------------


def test_100_sighups_in_one_second_apply_exactly_one_reload(bindir, tmp_path):
    port = free_port()
    with Tierd(policy(["hs-x"], interval="5s", metrics=f"127.0.0.1:{port}"), tmp_path) as tierd:
        tierd.wait_intervals(1, 240)
        tierd.policy.write_text(tierd.policy.read_text().replace("window: 8", "window: 6"))
        assert "window: 6" in tierd.policy.read_text()
        n = len(tierd.intervals())
        tierd.wait_intervals(n + 1, 240)  # just after an interval: 5 s until the next
        t0 = time.monotonic()
        for _ in range(100):
            tierd.proc.send_signal(signal.SIGHUP)
            time.sleep(0.008)
        burst = time.monotonic() - t0
        tierd.wait_intervals(n + 3, 240)
        text = scrape(port)
        ok = metric(text, "tierd_policy_reloads_total", '{result="success"}')
        bad = metric(text, "tierd_policy_reloads_total", '{result="failure"}')
        assert 'hotness_window="6"' in text
        assert tierd.proc.poll() is None
    clean(tierd)
    record(f"sighup: 100 SIGHUPs in {burst:.2f}s: {ok:g} reload applied, {bad:g} refused, "
           "daemon healthy")
    assert burst <= 1.5
    assert (ok, bad) == (1, 0)
    assert tierd.returncode == 0


# -- the metrics port --------------------------------------------------------------------------


def test_metrics_port_taken_at_start_is_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        policy_file = tmp_path / "p.yaml"
        policy_file.write_text(policy(["hs-x"], metrics=f"127.0.0.1:{port}"))
        out = subprocess.run([sys.executable, "-m", "tierd", "run", "--config", str(policy_file)],
                             capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 2, out.stderr
    assert (f"metrics.listen: cannot listen on 127.0.0.1:{port}: Address already in use\n"
            in out.stderr)
    assert "Traceback" not in out.stderr
    record(f"port taken: exit {out.returncode}, "
           f"\"{[line for line in out.stderr.splitlines() if 'metrics.listen' in line][0][-90:]}\"")


def test_clients_that_never_send_do_not_stall_the_intervals(bindir, tmp_path):
    port = free_port()
    clients = []
    with Hotset(bindir, tmp_path, size_mib=16, hot_mib=4, start_node=1, name="hs-idle"), \
            Tierd(policy(["hs-idle"], interval="200ms", metrics=f"127.0.0.1:{port}"),
                  tmp_path) as tierd:
        tierd.wait_intervals(3, 240)
        t0, n0 = time.monotonic(), len(tierd.intervals())
        time.sleep(3)
        before = (len(tierd.intervals()) - n0) / (time.monotonic() - t0)
        try:
            for i in range(300):  # idle, and half-sent requests
                c = socket.create_connection(("127.0.0.1", port), timeout=10)
                if i % 2:
                    c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x")
                clients.append(c)
            t0, n0 = time.monotonic(), len(tierd.intervals())
            time.sleep(3)
            during = (len(tierd.intervals()) - n0) / (time.monotonic() - t0)
            fds = len(os.listdir(f"/proc/{tierd.pid}/fd"))
            assert "tierd_intervals_total" in scrape(port)  # a real scrape still gets through
        finally:
            for c in clients:
                c.close()
        assert tierd.proc.poll() is None
    clean(tierd)
    record(f"idle clients: 300 connections that never finish a request: {during:.1f} "
           f"intervals/s (before: {before:.1f}), tierd holds {fds} descriptors, scrape served")
    assert during >= 0.5 * before
    assert fds < 150
