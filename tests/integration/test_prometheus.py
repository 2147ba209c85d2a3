"""The /metrics endpoint against the real Prometheus tools: `promtool check metrics` on a
scrape, and a Prometheus server (started here, on loopback, with a temporary config) that
scrapes tierd and answers queries for its series."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from metrics_scenario import HOT, start
from test_grafana import dashboard, queries


def dashboard_queries() -> list[str]:
    return queries(dashboard())


def grafana_vars(expr: str) -> str:
    """What Grafana would send with every variable at "All" (the variables' allValue)."""
    return (expr.replace("$__rate_interval", "30s").replace('=~"$job"', '=~".+"')
            .replace('=~"$instance"', '=~".+"').replace('=~"$target"', '=~".+"'))


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} missing: run scripts/install-deps.sh --kernel (Debian package prometheus)")
    return path


@pytest.fixture(scope="module")
def scenario():
    s = start(intervals=3)
    yield s
    s.close()


def test_promtool_accepts_a_real_scrape(scenario):
    promtool = need("promtool")
    text = scenario.scrape()
    assert "tierd_pages_promoted_total" in text
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60)
    # promtool prints lint problems (naming, units, help) and exits 1 if there are any
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


def test_promtool_catches_a_bad_name():
    """The check above can fail: promtool does complain about a convention breach."""
    promtool = need("promtool")
    bad = "# HELP tierd_moved_pages_count pages\n# TYPE tierd_moved_pages_count counter\n" \
          "tierd_moved_pages_count 3\n"
    r = subprocess.run([promtool, "check", "metrics"], input=bad, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(base: str, q: str) -> list:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:  # 400: Prometheus says what is wrong with the query
        raise AssertionError(f"{q}: {e.read().decode(errors='replace')}") from None
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_server_scrapes_tierd(scenario, tmp_path):
    prometheus = need("prometheus")
    host, port = scenario.server.address
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: tierd\n    static_configs:\n"
        f"      - targets: ['{host}:{port}']\n")
    web = _free_port()
    base = f"http://127.0.0.1:{web}"
    log = open(tmp_path / "prometheus.log", "w")
    proc = subprocess.Popen([prometheus, f"--config.file={config}",
                             f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{web}"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120  # a loaded 2-core machine starts it slowly
        promoted = []
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            try:
                promoted = _query(base, 'tierd_pages_promoted_total{job="tierd"}')
            except OSError:
                promoted = []
            if promoted:
                break
            time.sleep(1)
        assert promoted, (tmp_path / "prometheus.log").read_text()[-3000:]
        assert float(promoted[0]["value"][1]) == HOT
        up = _query(base, 'up{job="tierd"}')
        assert [float(r["value"][1]) for r in up] == [1.0]
        pages = _query(base, 'sum by (node) (tierd_pages{target="app"})')
        by_node = {r["metric"]["node"]: float(r["value"][1]) for r in pages}
        assert by_node == {"0": HOT, "1": 128 - HOT, "unknown": 0.0}
        info = _query(base, "tierd_build_info")
        assert info and info[0]["metric"]["kernel"] == "6.12.0-test"
        # every query of the Grafana dashboard is valid PromQL and finds data
        empty = []
        deadline = time.monotonic() + 60  # rates need a few scrapes
        for q in dashboard_queries():
            while True:
                expr = grafana_vars(q)
                if expr.startswith("label_values("):
                    metric = expr[len("label_values("):].rpartition(",")[0]
                    result = _query(base, metric)
                else:
                    result = _query(base, expr)
                if result or time.monotonic() > deadline:
                    break
                time.sleep(1)
            if not result:
                empty.append(q)
        assert not empty, empty
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
