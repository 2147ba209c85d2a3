"""Hostile and broken input through the CLI entry points (tierd.cli.main, and tierd run's
tierd.service.main): whatever a careless operator or a local user gives, tierd answers with
one sentence on stderr and the documented exit code (0 ok, 1 runtime failure, 2 usage error
or invalid policy), never a traceback, a hang or a silently absurd value.  Property-based
(hypothesis) where the input is a class, fixed cases where it is one shape."""

from __future__ import annotations

import argparse
import io
import logging
import os
import pathlib
import re
import signal
import socket
import tempfile
import threading
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierd import cli
from tierd import status as status_mod
from tierd.integrations.metrics import METRICS
from tierd.policy import load_policy

ETC = os.path.join(os.path.dirname(__file__), "..", "..", "etc", "tierd.yaml")
# TIERD_HYPOTHESIS_EXAMPLES=500: a deeper run by hand
SETTINGS = settings(max_examples=int(os.environ.get("TIERD_HYPOTHESIS_EXAMPLES", "60")),
                    deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                          HealthCheck.too_slow])


def run(argv, kernel=None):
    out, err = io.StringIO(), io.StringIO()
    rc = cli.main(argv, kernel=kernel, out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def assert_sentence(err: str, start: str = "tierd") -> None:
    """One line on stderr, no traceback."""
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(start), err


# ---------------------------------------------------------------------------------------------
# policy: numbers at the extremes of every key

DURATION_KEYS = ["interval", "auto_interval.min", "auto_interval.max"]
PERCENT_KEYS = ["auto_interval.cpu", "hotness.min_gain", "huge_pages.dense"]
AMOUNT_KEYS = ["fast_tier.keep_free", "fast_tier.demote_below", "targets.fast_share",
               "targets.fast_cap"]
SIZE_KEYS = ["migration.batch", "targets.min_rss"]
RATE_KEYS = ["migration.rate", "migration.query_rate"]
INT_KEYS = ["hotness.window", "hotness.min_hot", "migration.retry_after", "targets.pids",
            "nodes.fast", "nodes.slow"]
ALL_KEYS = DURATION_KEYS + PERCENT_KEYS + AMOUNT_KEYS + SIZE_KEYS + RATE_KEYS + INT_KEYS

number_text = st.one_of(
    st.integers(0, 10 ** 30).map(str),
    st.floats(0, 1e30, allow_nan=False).map(lambda f: f"{f:f}".rstrip("0").rstrip(".") or "0"),
    st.sampled_from(["0", "0.0000001", "0.001", "0.01", "0.5", "1", "99.99", "100", "100.001",
                     "4095", "4096", "65536", "86400", "86400.001", "1152921504606846976",
                     "1152921504606846977"]),
)
unit = st.sampled_from(["", "B", "KiB", "MiB", "GiB", "TiB", "PiB", "ms", "s", "m", "h", "%",
                        "/s", "B/s", "KiB/s", "PiB/s", "PiB/ms", "B/h", "x", "MB", "e-7"])
extreme = st.one_of(
    st.builds(lambda sign, n, u: f"{sign}{n}{u}", st.sampled_from(["", "", "-"]), number_text, unit),
    st.integers(-(2 ** 70), 2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 2 ** 63, 2 ** 64, 1e-300, 5e-324, 1e300, True, None, [], {}]),
)


def policy_doc(key: str, value) -> dict:
    doc: dict = {"targets": [{"name": "t", "comm": "x"}]}
    if key.startswith("auto_interval"):
        doc["interval"] = "auto"
    section, _, leaf = key.partition(".")
    if section == "targets":
        doc["targets"][0][leaf] = value
    elif leaf:
        doc.setdefault(section, {})[leaf] = value
    else:
        doc[section] = value
    return doc


ODD_NUMBER = re.compile(r"\d[eE][+-]?\d|\binf\b|\bnan\b", re.IGNORECASE)


@SETTINGS
@given(key=st.sampled_from(ALL_KEYS), value=extreme)
def test_policy_values_at_the_extremes_are_refused_in_a_sentence_or_printed_plainly(key, value):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "p.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(policy_doc(key, value), f)
        rc, out, err = run(["check-config", path])
        policy = load_policy(path) if rc == 0 else None
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        assert_sentence(err, f"tierd: {path}:")
        assert key.replace("targets.", "targets[0].") in err
        assert out == ""
    else:
        assert err == ""
        for line in out.splitlines()[1:]:
            assert not ODD_NUMBER.search(line.split(":", 1)[1]), line
        if not key.startswith("nodes."):  # node ids are checked against the machine at start
            run_intervals(policy)


def run_intervals(policy, n: int = 3) -> None:
    """An accepted policy works: intervals on the fake kernel complete (none fails)."""
    from engine_fakes import FakeKernel, FakeProc

    from tierd.engine.daemon import Daemon, Engine
    from tierd.engine.targets import ProcessRef, StaticResolver

    k = FakeKernel()
    proc = k.add(FakeProc(4242, 64, node=1))
    d = Daemon(Engine(k, policy, resolver=StaticResolver([ProcessRef(4242, 0.0, "t")])))
    try:
        for _ in range(n):
            proc.next_access |= {proc.vpn(i) for i in range(8)}
            stats = d.tick()
            assert stats is not None, "an accepted policy failed an interval"
            d.next_interval(stats)
    finally:
        d.engine.close()


@pytest.mark.parametrize("key, value, message", [
    ("interval", "0.0000001", "must be at least 1ms"),
    ("interval", 0.0105, "whole number of milliseconds"),
    ("huge_pages.dense", "0.0000001%", "0% or 0.01% .. 100%"),
    ("auto_interval.cpu", "0.00001%", "0% or 0.01% .. 100%"),
    ("fast_tier.keep_free", 2 ** 100, "is more than 1024PiB"),
    ("migration.rate", "1000000PiB/ms", "is more than 1024PiB/s"),
    ("migration.batch", "1PiB", "must be at most 1GiB"),
    ("targets.min_rss", "1000000PiB", "is more than 1024PiB"),
])
def test_values_that_cannot_work_are_refused(tmp_path, key, value, message):
    """These were accepted and printed as "1e-07%", "1e+06PiB" or worked with as given."""
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(policy_doc(key, value)))
    rc, out, err = run(["check-config", str(path)])
    assert rc == 2 and message in err, err
    assert_sentence(err)


# ---------------------------------------------------------------------------------------------
# metrics.listen: values that validate but cannot bind


@pytest.fixture
def service_env():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for s, h in saved.items():
        signal.signal(s, h)
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def run_service(cfg):
    from engine_fakes import FakeKernel

    from tierd import service

    args = argparse.Namespace(config=str(cfg), intervals=1, log_level="INFO")
    return service.main(args, kernel=FakeKernel(), env={})


LISTEN_POLICY = "targets:\n  - name: t\n    pids: [4242]\nmetrics:\n  listen: {listen}\n"


def check_listen(tmp_path, capsys, listen: str) -> None:
    cfg = tmp_path / "p.yaml"
    cfg.write_text(LISTEN_POLICY.format(listen=yaml.safe_dump(listen).splitlines()[0]))
    rc, _, err = run(["check-config", str(cfg)])
    if rc == 2:
        assert_sentence(err, f"tierd: {cfg}:5: metrics.listen: ")
        return
    assert rc == 0, err
    rc = run_service(cfg)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert rc in (0, 2), err
    if rc == 2:
        assert f"{cfg}:5: metrics.listen: cannot listen on " in err


@pytest.mark.parametrize("listen", [
    "192.0.2.1:9464", "[2001:db8::1]:9464", "999.999.999.999:9464", "nosuchhost.invalid:9464",
    "a" * 64 + ":9464", "[fe80::1]:9464", "255.255.255.255:9464", "[::ffff:999.1.1.1]:1",
    "host\x00name:80", "h\u00e9st:80", "[]:80", "[::1:80", "[zz]:80", "-a:80", "a..b:80",
])
def test_listen_values_that_cannot_bind_are_a_sentence(tmp_path, capsys, service_env, listen):
    check_listen(tmp_path, capsys, listen)


@SETTINGS
@given(host=st.one_of(st.ip_addresses().map(lambda a: f"[{a}]" if a.version == 6 else str(a)),
                      st.text(st.characters(codec="utf-8"), max_size=12)),
       port=st.integers(0, 70000))
def test_listen_property(tmp_path, capsys, service_env, host, port):
    check_listen(tmp_path, capsys, f"{host}:{port}")


# ---------------------------------------------------------------------------------------------
# tierd status against servers that are not tierd, or not well


class RawServer:
    """Accepts connections and answers each with ``self.behave(conn)``."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d/metrics" % self.sock.getsockname()[1]
        self.behave = lambda c: None
        self.stop = threading.Event()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        try:
            conn.recv(65536)
            self.behave(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.stop.set()
        self.sock.close()


@pytest.fixture(scope="module")
def raw_server():
    s = RawServer()
    yield s
    s.close()


def http_200(body: bytes) -> bytes:
    return (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: %d\r\n"
            b"\r\n" % len(body)) + body


LABELS = ["target", "node", "hotness", "tier", "status", "direction", "result", "version",
          "kernel", "tracking", "file", "x"]
sample_value = st.one_of(st.sampled_from(["NaN", "+Inf", "-Inf", "1e300", "-1e300", "-5", "0",
                                          "3", "1.5", "9e18", "1e400"]),
                         st.floats(allow_nan=False, allow_infinity=False).map(repr))
label_value = st.one_of(st.sampled_from(["0", "1", "15", "16", "-1", "unknown", "fast", "",
                                         "99999999999999999999", "\u00b2", "a b"]),
                        st.text(max_size=5))


@st.composite
def exposition(draw) -> bytes:
    lines = []
    names = sorted(METRICS) + ["tierd_pages", "other_metric"]
    for _ in range(draw(st.integers(0, 25))):
        name = draw(st.sampled_from(names))
        labels = draw(st.dictionaries(st.sampled_from(LABELS), label_value, max_size=4))
        lab = ",".join(f'{k}="{v.replace(chr(92), "").replace(chr(34), "")}"'
                       for k, v in labels.items())
        lines.append(f"{name}{{{lab}}} {draw(sample_value)}" if lab else
                     f"{name} {draw(sample_value)}")
    if draw(st.booleans()):
        lines.insert(0, 'tierd_build_info{version="0.1.0",kernel="6.12",tracking="x"} 1.0')
    return ("\n".join(lines) + "\n").encode()


@SETTINGS
@given(body=st.one_of(exposition(), st.binary(max_size=300)))
def test_status_against_any_answer_is_a_report_or_a_sentence(raw_server, body):
    raw_server.behave = lambda c: c.sendall(http_200(body))
    rc, out, err = run(["status", "--url", raw_server.url])
    assert rc in (0, 1), err
    if rc == 1:
        assert_sentence(err, "tierd: ")
        assert out == ""
    else:
        assert err == "" and out.startswith("tierd ")


ODD = b"""# TYPE tierd_build info
tierd_build_info{version="0.1.0",kernel="6.12",tracking="idle_bitmap"} 1.0
tierd_intervals_total NaN
tierd_last_interval_timestamp_seconds 1e300
tierd_policy_last_reload_timestamp_seconds +Inf
tierd_policy_reloads_total{result="success"} 1
tierd_pages{target="a",node="0",hotness="99"} 5
tierd_pages{target="a",node="0",hotness="\xc2\xb2"} 5
tierd_pages{target="a",node="0",hotness="3"} 7
tierd_pages{foo="x"} 1
tierd_target_hot_threshold{target="a"} -Inf
tierd_node_memory_free_bytes{node="0"} 1
tierd_move_pages_failures_total{status="busy",extra="y"} 2
"""


def test_status_reads_legal_but_odd_text_as_a_report(raw_server):
    """NaN, Inf, 1e300, unknown, missing and odd labels: ignored sample by sample (these were
    ValueError, OverflowError and KeyError tracebacks)."""
    raw_server.behave = lambda c: c.sendall(http_200(ODD))
    rc, out, err = run(["status", "--url", raw_server.url])
    assert rc == 0 and err == "", err
    assert "no interval completed yet" in out
    assert "a " in out and "busy 2" in out


def trickle(c):
    c.sendall(b"HTTP/1.0 200 OK\r\n")
    while True:
        c.sendall(b"X")
        time.sleep(0.05)


def endless(c):
    c.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n")
    chunk = b"# HELP x y\n" * 10000
    while True:
        c.sendall(chunk)


@pytest.mark.parametrize("behave, message", [
    (lambda c: time.sleep(30), "did not answer within 1s"),  # accepts, never answers
    (trickle, "did not answer within 1s"),
    (endless, "sent more than 1MiB"),
    (lambda c: c.sendall(b"HTTP/1.0 404 Not Found\r\n\r\nno"), "answers HTTP 404"),
    (lambda c: c.sendall(b"garbage\r\n\r\n"), "no tierd answers at"),
    (lambda c: c.sendall(http_200(b"up 1\n")), "it is not tierd"),
])
def test_status_is_bounded_in_time_and_size(raw_server, monkeypatch, behave, message):
    monkeypatch.setattr(status_mod, "TIMEOUT", 1.0)
    monkeypatch.setattr(status_mod, "MAX_RESPONSE", 1 << 20)
    raw_server.behave = behave
    t0 = time.monotonic()
    rc, out, err = run(["status", "--url", raw_server.url])
    assert time.monotonic() - t0 < 5
    assert rc == 1 and message in err, err
    assert_sentence(err)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/metrics", "http://[::1/metrics",
                                 "http://127.0.0.1:99999/metrics", "127.0.0.1:9464", "http://"])
def test_status_bad_url_is_a_usage_error(url):
    rc, _, err = run(["status", "--url", url])
    assert rc == 2, err
    assert_sentence(err)


# ---------------------------------------------------------------------------------------------
# tierd simulate: specs and workload files

SMALL = ["1MiB", "4MiB", "16MiB", 4194304]
ABSURD = ["1PiB", "99999PiB", "5TiB", 2 ** 100, -1, "-4MiB", "abc", 2.5, [], {}, None, True, "1e9"]
sim_value = st.one_of(st.sampled_from(SMALL + ABSURD),
                      st.sampled_from(["zipf:1.1", "zipf:0", "zipf:nan", "hotset:10%",
                                       "uniform", "every:3", "every:0", "every:x", "2x", "infx",
                                       "1e9x", "nanx", "on", "off", "50%", "100%", "2+2", "9+9",
                                       "1+0", "scatter", "contig", "first", "slow", "0.5"]),
                      st.integers(-(2 ** 70), 2 ** 70), st.text(max_size=6))
PROC_KEYS = ["size", "dist", "phase", "accesses", "layout", "init", "busy", "target", "churn", "thp"]
MACHINE_KEYS = ["fast", "slow", "other", "kswapd", "nodes"]


@st.composite
def workload_doc(draw):
    doc: dict = {}
    if draw(st.booleans()):
        doc["machine"] = draw(st.one_of(
            st.dictionaries(st.sampled_from(MACHINE_KEYS), sim_value, max_size=4),
            sim_value))
    procs = st.dictionaries(st.sampled_from(PROC_KEYS), sim_value, max_size=5)
    doc["processes"] = draw(st.one_of(st.lists(procs, max_size=2), sim_value))
    for key in ("intervals", "seed"):
        if draw(st.booleans()):
            doc[key] = draw(sim_value)
    return doc


def simulate(capsys, workload, *extra):
    rc = cli.main(["simulate", "--config", ETC, "--workload", workload, "--intervals", "1",
                   "--quiet", *extra])
    out, err = capsys.readouterr()
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        assert_sentence(err, "tierd")
    else:
        assert "steady state" in out
    return rc, err


@SETTINGS
@given(doc=workload_doc())
def test_simulate_workload_files_of_any_shape(tmp_path, capsys, doc):
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(doc))
    simulate(capsys, str(path))


@SETTINGS
@given(pairs=st.lists(st.tuples(st.sampled_from(PROC_KEYS + MACHINE_KEYS + ["intervals", "seed"]),
                                sim_value.map(str)), max_size=5))
def test_simulate_specs_of_any_shape(capsys, pairs):
    simulate(capsys, ",".join(f"{k}={v}" for k, v in pairs))


@pytest.mark.parametrize("extra, message", [
    (["--seed", "-1"], "seed: -1 is out of range"),
    (["--seed", str(2 ** 70)], "is out of range"),
    (["--intervals", "0"], "intervals: 0 is out of range"),
    (["--intervals", "1000000000"], "is out of range"),
])
def test_simulate_bad_seed_or_intervals(capsys, extra, message):
    rc = cli.main(["simulate", "--config", ETC, "--workload", "size=4MiB,fast=2MiB",
                   "--quiet", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert_sentence(err)


@pytest.mark.parametrize("make", ["fifo", "dir", "zero", "big", "missing"])
def test_simulate_workload_file_that_is_not_a_file(tmp_path, capsys, make):
    path = tmp_path / "w.yaml"
    if make == "fifo":
        os.mkfifo(path)
    elif make == "dir":
        path.mkdir()
    elif make == "big":
        path.write_text("#" * (2 << 20))
    elif make == "zero":
        path.symlink_to("/dev/zero")
    box = []
    t = threading.Thread(target=lambda: box.append(simulate(capsys, str(path))), daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive()
    rc, err = box[0]
    assert rc == 2, err


def test_simulate_absurd_sizes_are_refused_before_allocating(capsys):
    rc, err = simulate(capsys, "size=4PiB,fast=1GiB")
    assert rc == 2 and "at most 4TiB" in err


# ---------------------------------------------------------------------------------------------
# malformed /proc and /sys reach the CLI as a sentence


def _tree():
    from linux_fakes import make_tree

    return make_tree(pathlib.Path(tempfile.mkdtemp()))


@SETTINGS
@given(data=st.data(), content=st.one_of(st.binary(max_size=40),
                                         st.sampled_from([b"", b"\n", b"x", b"-1\n", b"0-\n",
                                                          b"99999999999999999999\n",
                                                          b"0-4294967296\n", b"1,,2\n",
                                                          b"Node 0 MemTotal: x kB\n"])))
def test_topology_on_a_malformed_sys_tree_is_a_table_or_a_sentence(data, content):
    from linux_fakes import FakeSyscalls

    from tierd.linux import Kernel

    proc, sys_ = _tree()
    files = sorted(os.path.join(r, f) for root in (sys_, proc)
                   for r, _, fs in os.walk(root) for f in fs)
    victim = data.draw(st.sampled_from(files))
    with open(victim, "wb") as f:
        f.write(content)
    rc, out, err = run(["topology"], Kernel(proc=proc, sys=sys_, syscalls=FakeSyscalls()))
    assert rc in (0, 1), err
    if rc == 1:
        assert_sentence(err, "tierd: ")


@SETTINGS
@given(name=st.sampled_from(["maps", "smaps", "status", "comm"]),
       content=st.one_of(st.binary(max_size=80),
                         st.sampled_from([b"1000-0 rw-p 0 00:00 0\n", b"zz-yy rw-p\n",
                                          b"1000-2000 rw-p 00000000 00:00 0\nRss: x kB\n",
                                          b"VmRSS: -5 kB\n", b"\xff\xfe\n"])))
def test_scan_on_malformed_proc_files_is_a_report_or_a_sentence(name, content):
    from test_cli import FakeKernel, FakeReader, scan_proc

    proc = scan_proc(pathlib.Path(tempfile.mkdtemp()))
    with open(os.path.join(proc, "500", name), "wb") as f:
        f.write(content)
    rc, out, err = run(["scan", "--pid", "500", "--samples", "1", "--interval", "1ms"],
                       FakeKernel(proc, FakeReader()))
    assert rc in (0, 1), err
    if rc == 1:
        assert "Traceback" not in err and err.startswith("tierd: "), err


# ---------------------------------------------------------------------------------------------
# scan --heatmap paths


@pytest.mark.parametrize("path, message", [
    ("{tmp}", "is a directory"), ("{tmp}/", "is a directory"), ("{tmp}/x.txt", "unsupported format"),
    ("{tmp}/x", "unsupported format"), ("{tmp}/none/x.png", "does not exist"),
])
def test_heatmap_path_is_checked_before_the_scan(tmp_path, path, message):
    from test_cli import FakeKernel, FakeReader, scan_proc

    reader = FakeReader()
    k = FakeKernel(scan_proc(tmp_path), reader)
    rc, out, err = run(["scan", "--pid", "500", "--samples", "1", "--interval", "1ms",
                        "--heatmap", path.format(tmp=tmp_path)], k)
    assert rc == 2 and message in err, err
    assert_sentence(err)
    assert reader.calls == {}  # nothing sampled


# ---------------------------------------------------------------------------------------------
# usage errors exit 2


@pytest.mark.parametrize("argv", [
    [], ["bogus"], ["scan"], ["scan", "--pid", "-1"], ["scan", "--pid", "x"],
    ["scan", "--pid", str(2 ** 40)], ["scan", "--pid", "1", "--samples", "0"],
    ["scan", "--pid", "1", "--samples", "1e3"], ["scan", "--pid", "1", "--interval", "-1s"],
    ["scan", "--pid", "1", "--interval", "0"], ["scan", "--pid", "1", "--top", "0"],
    ["scan", "--pid", "1", "--reader", "x"], ["check-config"], ["check-config", "a", "b"],
    ["status", "--url"], ["topology", "--bogus"], ["simulate"], ["simulate", "--seed", "x"],
    ["run", "--intervals", "x"], ["run", "--intervals", "0"], ["run", "--intervals", "-3"],
    ["run", "--log-level", "LOUD"], ["--bogus"],
])
def test_usage_errors_exit_2_with_one_sentence(argv):
    rc, out, err = run(argv)
    assert rc == 2 and out == ""
    assert_sentence(err, "tierd")
