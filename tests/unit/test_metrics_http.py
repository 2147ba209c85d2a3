"""The metrics endpoint under hostile clients: bounded descriptors, time and size
(tierd/integrations/http.py)."""

from __future__ import annotations

import os
import resource
import socket
import time
import urllib.error
import urllib.request

import pytest
from fds import opened_since, snapshot
from metrics_scenario import start

from tierd.integrations.http import MAX_CONNS, BoundedHTTPServer


@pytest.fixture
def many_fds():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 4096)
    if want < 2500:
        pytest.fail(f"RLIMIT_NOFILE hard limit {hard} is too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_1100_half_sent_requests_hold_a_bounded_number_of_descriptors(many_fds):
    s = start(intervals=1)
    host, port = s.server.address
    before = snapshot()
    clients = []
    try:
        for _ in range(1100):
            c = socket.create_connection((host, port), timeout=5)
            c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x")  # and never the rest
            clients.append(c)
        time.sleep(1.0)  # the server has accepted what it will
        held = opened_since(before) - len(clients)
        assert held <= MAX_CONNS + 4, f"the server holds {held} descriptors for 1100 clients"
        # the daemon goes on, and a real scrape is served among the idle connections
        s.interval()
        assert "tierd_intervals_total 2.0" in s.scrape()
    finally:
        for c in clients:
            c.close()
        s.close()


def _server(**kw) -> BoundedHTTPServer:
    return BoundedHTTPServer("127.0.0.1", 0, lambda: ("text/plain", b"x 1\n"), **kw)


def test_a_client_that_never_sends_is_closed_at_the_deadline():
    srv = _server(timeout=0.3)
    try:
        with socket.create_connection(srv.server_address, timeout=5) as c:
            t0 = time.monotonic()
            assert c.recv(100) == b""  # closed by the server, no answer
            assert time.monotonic() - t0 < 3
        deadline = time.monotonic() + 3
        while srv.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.connections == 0
    finally:
        srv.close()


def test_an_endless_request_is_refused_at_the_size_cap():
    srv = _server(max_request=1000)
    try:
        with socket.create_connection(srv.server_address, timeout=5) as c:
            c.sendall(b"GET /metrics HTTP/1.0\r\n" + b"X: " + b"a" * 5000)
            assert c.recv(100).startswith(b"HTTP/1.0 431 ")
    finally:
        srv.close()


@pytest.mark.parametrize("request_line, status", [
    (b"GET /metrics HTTP/1.0", b"200"), (b"GET / HTTP/1.1", b"200"),
    (b"GET /metrics?name[]=x HTTP/1.1", b"200"), (b"HEAD /metrics HTTP/1.0", b"200"),
    (b"GET /other HTTP/1.0", b"404"), (b"POST /metrics HTTP/1.0", b"405"), (b"\x00", b"400"),
])
def test_answers(request_line, status):
    srv = _server()
    try:
        with socket.create_connection(srv.server_address, timeout=5) as c:
            c.sendall(request_line + b"\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := c.recv(4096):
                data += chunk
        assert data.split(b" ")[1] == status
        if status == b"200" and not request_line.startswith(b"HEAD"):
            assert data.endswith(b"\r\n\r\nx 1\n")
    finally:
        srv.close()


def test_a_failing_collector_is_a_500_and_the_server_goes_on():
    calls = []

    def render():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return "text/plain", b"ok\n"

    srv = BoundedHTTPServer("127.0.0.1", 0, render)
    url = "http://%s:%d/metrics" % srv.server_address
    try:
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(url, timeout=5)
        assert urllib.request.urlopen(url, timeout=5).read() == b"ok\n"
    finally:
        srv.close()


def test_close_releases_every_descriptor():
    before = snapshot()
    srv = _server()
    c = socket.create_connection(srv.server_address, timeout=5)
    # the server holds the connection before it is closed (a fixed sleep may end before the
    # server thread ran on a busy host, and the test would then check nothing it accepted)
    deadline = time.monotonic() + 10
    while srv.connections < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.connections == 1
    srv.close()
    c.close()
    assert opened_since(before) == 0


def test_the_unit_sets_a_descriptor_budget_above_the_connection_cap():
    unit = os.path.join(os.path.dirname(__file__), "..", "..", "systemd", "tierd.service")
    with open(unit, encoding="utf-8") as f:
        values = [line.split("=", 1)[1].strip() for line in f if line.startswith("LimitNOFILE=")]
    assert len(values) == 1 and values[0].isdigit(), values
    assert int(values[0]) >= 16 * MAX_CONNS
