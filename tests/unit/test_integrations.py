"""tierd.integrations and the composition root (tierd.service) on the fake kernel: the
sd_notify conversation, the watchdog heartbeat, journald fields, the metrics snapshot and
endpoint, metrics.listen errors at start and at reload."""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import signal
import socket
import threading
import urllib.error
import urllib.request

import pytest
from engine_fakes import FakeKernel, FakeProc
from metrics_scenario import HOT, PID, policy, start
from prometheus_client.parser import text_string_to_metric_families

from tierd.engine.daemon import Daemon, Engine
from tierd.engine.targets import ProcessRef, StaticResolver
from tierd.integrations import journal
from tierd.integrations import systemd as sd
from tierd.integrations.metrics import METRICS, key_line
from tierd.policy import PolicyError, load_policy

GOOD = """interval: 1s
targets:
  - name: app
    pids: [{pid}]
metrics:
  listen: "{listen}"
"""


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str, name: str) -> dict:
    """sample name -> {labels tuple: value} for one metric family (by sample name)."""
    out = {}
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def saved_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.fixture
def root_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


# ---------------------------------------------------------------------------------------------
# sd_notify


def make_daemon(k, pol=None, observers=(), **kw):
    eng = Engine(k, pol or policy(), resolver=StaticResolver([ProcessRef(PID, 0.0, "app")]),
                 clock=lambda: 0.0)
    return Daemon(eng, observers=observers, **kw)


def test_notify_life_cycle_ready_status_reload_stopping(tmp_path):
    k = FakeKernel()
    k.add(FakeProc(PID, 64, node=1))
    sent = []
    cfg = tmp_path / "p.yaml"
    cfg.write_text(GOOD.format(pid=PID, listen=""))
    d = make_daemon(k, load_policy(str(cfg)), [sd.SystemdNotifier(sent.append)])
    d.stop.set()
    d.run(max_intervals=1)
    assert sent[0].startswith("READY=1\nWATCHDOG=1\nSTATUS=running, tracking fake; policy ")
    assert sent[1].startswith("STATUS=#1: 1 proc") and "targets app" in sent[1]
    assert sent[-1] == "STOPPING=1\nSTATUS=stopping"

    sent.clear()
    cfg.write_text(GOOD.format(pid=PID, listen="").replace("interval: 1s", "interval: 7s"))
    assert d.reload()
    assert sent[0].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert sent[1].startswith("READY=1\nSTATUS=policy reloaded; ") and "interval 7s" in sent[1]

    sent.clear()
    cfg.write_text("interval: 7s\nhotness:\n  window: 99\n")
    assert not d.reload()
    assert sent[1].startswith("READY=1\nSTATUS=running; ")
    assert f"last reload refused: {cfg}:3: hotness.window" in sent[1]
    assert "interval 7s" in sent[1]  # the old policy is still the one in force
    d.tick()
    assert "last reload refused" in sent[-1]  # sticks to later STATUS= lines


def test_heartbeat_pings_while_waiting_between_intervals():
    k = FakeKernel()
    k.add(FakeProc(PID, 64, node=1))
    sent = []
    d = make_daemon(k, policy(interval=0.3), [sd.SystemdNotifier(sent.append)], heartbeat=0.02)
    d.run(max_intervals=2)
    pings = [i for i, m in enumerate(sent) if m == "WATCHDOG=1"]
    statuses = [i for i, m in enumerate(sent) if m.startswith("STATUS=#")]
    assert len(statuses) == 2
    # several pings while waiting 0.3 s for the second interval, none lost to the wait
    between = [i for i in pings if statuses[0] < i < statuses[1]]
    assert len(between) >= 3


def test_no_heartbeat_means_plain_waits():
    k = FakeKernel()
    k.add(FakeProc(PID, 64, node=1))
    sent = []
    d = make_daemon(k, policy(interval=0.05), [sd.SystemdNotifier(sent.append)])
    d.run(max_intervals=3)
    # one ping per interval (after it), nothing in between
    assert sent.count("WATCHDOG=1") == 2


@pytest.mark.parametrize("env,expect", [
    ({}, None),
    ({"WATCHDOG_USEC": "30000000"}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
])
def test_watchdog_seconds(env, expect):
    assert sd.watchdog_seconds(env) == expect


def test_under_systemd():
    assert sd.under_systemd({"NOTIFY_SOCKET": "/run/systemd/notify"})
    assert not sd.under_systemd({})


# ---------------------------------------------------------------------------------------------
# journald


def test_journal_stream_matches_only_our_stderr(tmp_path):
    f = open(tmp_path / "x", "w")
    st = os.fstat(f.fileno())
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    assert journal.journal_stream(env, f.fileno())
    assert not journal.journal_stream(env, 0) or os.fstat(0).st_ino == st.st_ino
    assert not journal.journal_stream({}, f.fileno())
    f.close()


def test_stderr_logging_outside_systemd(root_logging):
    assert journal.setup_logging("INFO", {}) == "stderr"
    (h,) = logging.getLogger().handlers
    assert isinstance(h, logging.StreamHandler)


def test_journal_handler_gets_structured_fields(root_logging):
    from systemd.journal import JournalHandler

    sent = []
    handler = JournalHandler(sender_function=lambda MESSAGE, **kw: sent.append((MESSAGE, kw)))
    assert journal.setup_logging("INFO", {}, handler=handler) == "journal"
    k = FakeKernel()
    proc = k.add(FakeProc(PID, 64, node=1))
    d = make_daemon(k, observers=[journal.JournalLogObserver()])
    d.tick()
    proc.next_access |= {proc.vpn(i) for i in range(5)}
    d.tick()
    msg, fields = sent[-1]
    assert msg.startswith("#2: 1 proc")
    assert fields["TIERD_PAGES_PROMOTED"] == 5 and fields["TIERD_PAGES_MOVED"] == 5
    assert fields["TIERD_TARGETS"] == "app" and fields["TIERD_MOVE_FAILURES"] == 0
    assert fields["PRIORITY"] == "6"

    # an engine warning about one process carries its pid and target
    sent.clear()
    k.move_pages = lambda *a, **kw: (_ for _ in ()).throw(PermissionError(1, "denied"))
    proc.next_access |= {proc.vpn(i) for i in range(10, 20)}
    d.tick()
    proc.next_access |= {proc.vpn(i) for i in range(10, 20)}
    d.tick()
    warn = [(m, f) for m, f in sent if f["PRIORITY"] == "4"]
    assert warn and warn[0][1]["TIERD_PID"] == PID and warn[0][1]["TIERD_TARGET"] == "app"


def test_engine_messages_keep_the_formats_the_journal_fields_rely_on():
    """EngineFields recognises messages by their format string: hold the engine to them."""
    import tierd.engine.daemon as daemon_mod

    src = open(daemon_mod.__file__).read()
    # log.x("pid ...") and self.warn.warning(key, "pid ...") (rate-limited, tierd/logs.py)
    per_pid = re.findall(r'"(pid [^"]*)"', src)
    assert per_pid and all(m.startswith("pid %d") for m in per_pid), per_pid
    assert any(m.startswith("pid %d (%s)") for m in per_pid), per_pid
    assert 'log.error("reload of %s failed' in src
    assert 'log.info("reloaded policy from %s"' in src


# ---------------------------------------------------------------------------------------------
# metrics


def test_scrape_reflects_the_intervals():
    s = start(intervals=3)
    try:
        text = s.scrape()
    finally:
        s.close()
    moved = sum(len(pages) for _, pages, _ in s.kernel.moves())
    assert moved == HOT
    assert samples(text, "tierd_pages_promoted_total") == {(): HOT}
    assert samples(text, "tierd_migrated_bytes_total") == {(): HOT * 4096}
    assert samples(text, "tierd_intervals_total") == {(): 3}
    assert samples(text, "tierd_processes") == {(): 1}
    assert samples(text, "tierd_pages_queried_total") == {(): 128}
    pages = samples(text, "tierd_pages")
    assert sum(pages.values()) == 128  # every present page of the target, once
    on_fast = sum(v for k, v in pages.items() if dict(k)["node"] == "0")
    assert on_fast == HOT
    hot = samples(text, "tierd_target_hot_pages")
    assert hot[(("target", "app"), ("tier", "fast"))] == HOT
    assert hot[(("target", "app"), ("tier", "slow"))] == 0
    mem = samples(text, "tierd_node_memory_free_bytes")
    assert mem[(("node", "0"), ("tier", "fast"))] == s.kernel.mem[0][1]
    build = samples(text, "tierd_build_info")
    (labels,) = build
    assert dict(labels)["tracking"] == "fake" and dict(labels)["kernel"] == "6.12.0-test"
    info = dict(next(iter(samples(text, "tierd_policy_info"))))
    assert info["interval"] == "1s" and info["targets"] == "app"
    assert "process_cpu_seconds_total" in text


def test_every_listed_metric_is_exported_and_named_by_the_conventions(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(GOOD.format(pid=PID, listen=f"127.0.0.1:{free_port()}"))
    s = start(load_policy(str(cfg)), intervals=1)
    try:
        s.daemon.reload()
        text = s.scrape()
    finally:
        s.close()
    names = {smp.name for f in text_string_to_metric_families(text) for smp in f.samples}
    assert set(METRICS) <= names, set(METRICS) - names
    fams = families(text)
    for name, f in fams.items():
        if not name.startswith("tierd_"):
            continue
        if f.type == "counter":
            assert all(x.name.endswith(("_total", "_created")) for x in f.samples), name
        else:
            assert not any(x.name.endswith("_total") for x in f.samples), name
        assert not re.search(r"_(ms|milliseconds|kib|mib|pages_per)", name), name


def test_scrape_reads_one_published_snapshot_without_the_loop():
    """A scrape while the loop is busy gets the last whole snapshot, immediately."""
    s = start(intervals=1)
    try:
        before = s.scrape()
        gate, entered = threading.Event(), threading.Event()
        real_step = s.daemon.engine.step

        def slow_step():
            entered.set()
            gate.wait(10)
            return real_step()

        s.daemon.engine.step = slow_step
        t = threading.Thread(target=s.daemon.tick)
        t.start()
        assert entered.wait(10)
        during = s.scrape()  # would block if the loop held a lock the scrape needs
        gate.set()
        t.join(10)
        after = s.scrape()
    finally:
        s.close()
    assert samples(before, "tierd_intervals_total") == {(): 1}
    assert samples(during, "tierd_intervals_total") == {(): 1}
    assert samples(after, "tierd_intervals_total") == {(): 2}


def test_no_snapshot_no_samples():
    from tierd.integrations.metrics import TierdCollector

    assert list(TierdCollector(lambda: None).collect()) == []


def test_key_line(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(GOOD.format(pid=1, listen="127.0.0.1:1"))
    assert key_line(str(cfg), ("metrics", "listen")) == 6
    assert key_line(str(cfg), ("metrics", "nope")) is None
    assert key_line(str(tmp_path / "missing"), ("metrics",)) is None


# ---------------------------------------------------------------------------------------------
# metrics.listen at start and at reload (through the composition root)


def run_service(cfg, saved, env=None, notify=None, intervals=1, on_started=None, kernel=None):
    from tierd import service

    k = kernel or FakeKernel()
    args = argparse.Namespace(config=str(cfg), intervals=intervals, log_level="INFO")
    return service.main(args, kernel=k, env=env or {}, notify=notify, on_started=on_started)


def test_busy_listen_address_is_a_policy_error_at_start(tmp_path, saved_signals, root_logging,
                                                        capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = tmp_path / "p.yaml"
        cfg.write_text(GOOD.format(pid=PID, listen=f"127.0.0.1:{port}"))
        rc = run_service(cfg, saved_signals)
    assert rc == 2
    assert f"{cfg}:6: metrics.listen: cannot listen on 127.0.0.1:{port}: " in capsys.readouterr().err


def test_ready_only_after_the_endpoint_is_bound(tmp_path, saved_signals, root_logging):
    port = free_port()
    cfg = tmp_path / "p.yaml"
    cfg.write_text(GOOD.format(pid=PID, listen=f"127.0.0.1:{port}"))
    seen = []

    def notify(msg):
        if msg.startswith("READY=1"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                seen.append(r.status)
        seen.append(msg.split("\n")[0])

    assert run_service(cfg, saved_signals, env={"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "4000000"},
                       notify=notify, intervals=2) == 0
    assert seen[:2] == [200, "READY=1"]
    assert "WATCHDOG=1" in seen and seen[-1] == "STOPPING=1"
    with pytest.raises(urllib.error.URLError):  # closed at stop
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_reload_moves_the_endpoint_or_refuses_a_bad_address(tmp_path, saved_signals,
                                                            root_logging, capsys):
    p1, p2 = free_port(), free_port()
    cfg = tmp_path / "p.yaml"
    cfg.write_text(GOOD.format(pid=PID, listen=f"127.0.0.1:{p1}"))
    results = {}

    def on_started(daemon, server):
        url = "http://127.0.0.1:{}/metrics"
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            bad = busy.getsockname()[1]
            cfg.write_text(GOOD.format(pid=PID, listen=f"127.0.0.1:{bad}"))
            results["bad"] = daemon.reload()
        results["old_still_serves"] = urllib.request.urlopen(url.format(p1), timeout=5).status
        cfg.write_text(GOOD.format(pid=PID, listen=f"127.0.0.1:{p2}"))
        results["good"] = daemon.reload()
        text = urllib.request.urlopen(url.format(p2), timeout=5).read().decode()
        results["reloads"] = samples(text, "tierd_policy_reloads_total")
        try:
            urllib.request.urlopen(url.format(p1), timeout=2)
            results["old_closed"] = False
        except urllib.error.URLError:
            results["old_closed"] = True

    assert run_service(cfg, saved_signals, on_started=on_started) == 0
    assert results["bad"] is False and results["old_still_serves"] == 200
    assert f"{cfg}:6: metrics.listen: cannot listen on 127.0.0.1:" in capsys.readouterr().err
    assert results["good"] is True and results["old_closed"]
    assert results["reloads"] == {(("result", "failure"),): 1, (("result", "success"),): 1}


def test_policy_errors_exit_2(tmp_path, saved_signals, root_logging, capsys):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("metrics:\n  listen: nowhere\n")
    assert run_service(cfg, saved_signals) == 2
    assert f"{cfg}:2: metrics.listen" in capsys.readouterr().err


def test_hang_hook_blocks_until_the_file_goes_and_only_for_a_newer_file(tmp_path):
    from tierd.service import HangHook

    path = tmp_path / "hang"
    path.write_text("")
    old = os.stat(path).st_mtime
    slept = []
    HangHook(str(path), sleep=slept.append, started=old + 1).on_interval(None)
    assert slept == []  # created before this daemon started: a restarted daemon runs on

    def sleep(s):
        slept.append(s)
        if len(slept) == 3:
            path.unlink()

    HangHook(str(path), sleep=sleep, started=old - 1).on_interval(None)
    assert slept == [1.0, 1.0, 1.0]


def test_policy_error_from_prepare_is_a_PolicyError(tmp_path):
    from tierd.integrations.metrics import MetricsServer, make_registry

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = MetricsServer(make_registry(lambda: None))
        with pytest.raises(PolicyError) as e:
            server.prepare(policy(metrics_listen=f"127.0.0.1:{port}", source=str(tmp_path / "x")))
    assert e.value.key == "metrics.listen"
    server.close()


# ---------------------------------------------------------------------------------------------
# tierd status (a client of the endpoint)


def test_status_shows_targets_nodes_migrations_and_policy():
    from tierd.cli import main as cli_main

    s = start(intervals=3)
    out, err = io.StringIO(), io.StringIO()
    try:
        rc = cli_main(["status", "--url", s.url], out=out, err=err)
    finally:
        s.close()
    text = out.getvalue()
    assert rc == 0, err.getvalue()
    assert text.startswith("tierd 0.1.0 on Linux 6.12.0-test, tracking fake, metrics at http://")
    assert "policy <test> (targets: app):" in text and "interval=1s" in text
    assert "interval #3 started" in text
    row = next(line.split() for line in text.splitlines() if line.strip().startswith("app "))
    # target procs hot>= node hot warm cold: the HOT pages are hot on node 0
    assert row == ["app", "1", "1", "0", f"{HOT * 4}KiB", "0B", "0B"]
    row1 = next(line.split() for line in text.splitlines() if line.strip().startswith("1 "))
    assert row1 == ["1", "0B", "0B", f"{(128 - HOT) * 4}KiB"]  # never accessed: cold
    assert f"since start promoted {HOT} ({HOT * 4}KiB), demoted 0 (0B)" in text
    assert "errors: move_pages failures none" in text


def test_status_without_a_daemon_says_so():
    from tierd.cli import main as cli_main

    out, err = io.StringIO(), io.StringIO()
    rc = cli_main(["status", "--url", f"http://127.0.0.1:{free_port()}/metrics"], out=out, err=err)
    assert rc == 1 and out.getvalue() == ""
    assert "no tierd answers at http://127.0.0.1:" in err.getvalue()
    assert "is the daemon running? (systemctl status tierd)" in err.getvalue()


def test_status_uses_the_policy_listen_address(tmp_path):
    from tierd.cli import main as cli_main

    cfg = tmp_path / "p.yaml"
    port = free_port()
    cfg.write_text(GOOD.format(pid=1, listen=f"127.0.0.1:{port}"))
    err = io.StringIO()
    assert cli_main(["status", "--config", str(cfg)], out=io.StringIO(), err=err) == 1
    assert f"http://127.0.0.1:{port}/metrics" in err.getvalue()
    cfg.write_text(GOOD.format(pid=1, listen=""))
    err = io.StringIO()
    assert cli_main(["status", "--config", str(cfg)], out=io.StringIO(), err=err) == 2
    assert "metrics.listen is \"\"" in err.getvalue()


def test_sigint_stops_the_daemon_with_exit_130(tmp_path, saved_signals, root_logging):
    """README: 130 interrupted (Ctrl-C); SIGTERM (systemctl stop) is a clean 0."""
    cfg = tmp_path / "p.yaml"
    cfg.write_text(GOOD.format(pid=PID, listen=f"127.0.0.1:{free_port()}"))
    for sig, rc in ((signal.SIGINT, 130), (signal.SIGTERM, 0)):
        assert run_service(cfg, saved_signals, intervals=None,
                           on_started=lambda d, s, sig=sig: os.kill(os.getpid(), sig)) == rc
