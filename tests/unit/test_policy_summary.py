"""The effective values `tierd check-config` prints (every key, against the YAML given), and
the validation edges the table in test_policy.py does not pin (found by mutation testing)."""

from __future__ import annotations

import pytest

from tierd.policy import PolicyError, parse_policy

FULL = """
interval: 2500ms
tracking: page_idle
targets:
  - name: db
    pids: [10, 11]
    comm: '^postgres$'
    exe: 'bin/postgres'
    cmdline: '-D /var/lib'
    cgroup: /system.slice/db.service
    min_rss: 64MiB
    fast_share: 25%
    fast_cap: 2GiB
  - name: batch
    comm: '^job'
nodes:
  fast: [2, 0]
  slow: '1,3'
fast_tier:
  keep_free: 512MiB
  demote_below: 5%
hotness:
  window: 6
  min_hot: 3
  hysteresis: 1
migration:
  rate: 64MiB/s
  batch: 2MiB
  retry_after: 7
metrics:
  listen: ''
"""


def test_summary_of_every_key():
    assert parse_policy(FULL, "p.yaml").summary() == {
        "interval": "2.5s",
        "tracking": "page_idle",
        "nodes.fast": "0,2",
        "nodes.slow": "1,3",
        "fast_tier.keep_free": "512MiB",
        "fast_tier.demote_below": "5%",
        "hotness.window": "6",
        "hotness.min_hot": "3",
        "hotness.hysteresis": "1",
        "migration.rate": "64MiB/s",
        "migration.batch": "2MiB",
        "migration.retry_after": "7 intervals",
        "metrics.listen": "(disabled)",
        "targets[0]": "db: pids=[10, 11] comm=/^postgres$/ exe=/bin/postgres/ cmdline=/-D /var/lib/ "
                      "cgroup=/system.slice/db.service min_rss=64MiB fast_share=25% fast_cap=2GiB",
        "targets[1]": "batch: comm=/^job/",
    }


def test_summary_of_defaults():
    s = parse_policy("", "empty.yaml").summary()
    assert (s["nodes.fast"], s["nodes.slow"], s["tracking"]) == ("auto", "auto", "auto")
    assert s["metrics.listen"] == "127.0.0.1:9464" and s["interval"] == "5s"
    assert not [k for k in s if k.startswith("targets")]


def test_summary_target_with_only_some_extras():
    p = parse_policy("targets:\n  - name: a\n    exe: x\n    fast_cap: 10%\n", "p.yaml")
    assert p.summary()["targets[0]"] == "a: exe=/x/ fast_cap=10%"


def error(text):
    with pytest.raises(PolicyError) as ei:
        parse_policy(text, "p.yaml")
    return ei.value


def test_node_list_errors_name_the_key():
    e = error("nodes:\n  fast: [1, 1]\n")
    assert (e.line, e.key, e.message) == (2, "nodes.fast", "a node is listed twice")
    e = error("nodes:\n  fast: [4096]\n")
    assert e.key == "nodes.fast[0]" and "out of range" in e.message
    assert parse_policy("nodes:\n  fast: [4095]\n", "p.yaml").fast_nodes == (4095,)
    e = error("nodes:\n  slow: '0-4096'\n")
    assert e.key == "nodes.slow" and e.message == "expected auto or a list of node ids, got '0-4096'"


def test_regex_type_error_names_the_key():
    e = error("targets:\n  - name: a\n    comm: [x]\n")
    assert (e.line, e.key, e.message) == (3, "targets[0].comm", "expected a single value, got a list")
    e = error("targets:\n  - name: a\n    exe: 5\n")
    assert e.key == "targets[0].exe" and "expected a string" in e.message


@pytest.mark.parametrize("listen, ok", [
    ("127.0.0.1:1", True), ("127.0.0.1:65535", True), ("127.0.0.1:0", False),
    ("127.0.0.1:65536", False), ("127.0.0.1:９４６４", False), ("[::1]:9464", True),
])
def test_metrics_port_range(listen, ok):
    text = f"metrics:\n  listen: '{listen}'\n"
    if ok:
        assert parse_policy(text, "p.yaml").metrics_listen == listen
    else:
        assert "is not a number in 1..65535" in error(text).message
