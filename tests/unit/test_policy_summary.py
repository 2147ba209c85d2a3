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
  min_gain: 7%
migration:
  rate: 64MiB/s
  batch: 2MiB
  retry_after: 7
metrics:
  listen: ''
log_level: warning
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
        "hotness.min_gain": "7%",
        "migration.rate": "64MiB/s",
        "migration.query_rate": "64GiB/s",
        "migration.batch": "2MiB",
        "migration.retry_after": "7 intervals",
        "metrics.listen": "(disabled)",
        "huge_pages.split": "auto",
        "huge_pages.dense": "90%",
        "log_level": "WARNING",
        "targets[0]": "db: pids=[10, 11] comm=/^postgres$/ exe=/bin/postgres/ cmdline=/-D /var/lib/ "
                      "cgroup=/system.slice/db.service min_rss=64MiB fast_share=25% fast_cap=2GiB",
        "targets[1]": "batch: comm=/^job/",
    }


def test_summary_of_defaults():
    s = parse_policy("", "empty.yaml").summary()
    assert (s["nodes.fast"], s["nodes.slow"], s["tracking"]) == ("auto", "auto", "auto")
    assert s["metrics.listen"] == "127.0.0.1:9464" and s["interval"] == "auto"
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


# The whole message, word for word: what `tierd check-config` and a failed reload print.
EXACT = [
    ("tracking: 5.5\n", "p.yaml:1: tracking: expected a string, got a number (quote it)"),
    ("tracking: yes\n", "p.yaml:1: tracking: expected a string, got true/false (quote it)"),
    ("hotness:\n  window: abc\n", "p.yaml:2: hotness.window: expected a whole number, got a string"),
    ("hotness:\n  window: 1.5\n", "p.yaml:2: hotness.window: expected a whole number, got a number"),
    ("hotness:\n  window:\n", "p.yaml:2: hotness.window: expected a whole number, got nothing"),
    ("targets:\n  - name: a\n    comm: {x: 1}\n",
     "p.yaml:3: targets[0].comm: expected a single value, got a mapping"),
    ("interval: 25h\n", "p.yaml:1: interval: must be at most a day (24h)"),
    ("targets:\n  - name: a\n    pids: []\n", "p.yaml:3: targets[0].pids: empty list"),
    ("targets:\n  - name: a\n    pids: [4194305]\n",
     "p.yaml:3: targets[0].pids[0]: 4194305 is out of range (1..4194304)"),
    ("targets:\n  - name: a\n    pids: 0\n", "p.yaml:3: targets[0].pids: 0 is out of range (1..4194304)"),
    ("targets:\n  - name: a\n    cgroup: 5\n",
     "p.yaml:3: targets[0].cgroup: expected a string, got a number (quote it)"),
    ("targets:\n  - name: a\n    min_rss: 1MiB\n",
     "p.yaml:2: targets[0]: needs at least one selector: pids, comm, exe, cmdline or cgroup"),
    ("targets:\n  - name: a\n    comm: x\n    min_rss: big\n",
     "p.yaml:4: targets[0].min_rss: 'big' is not a size (e.g. \"256MiB\", \"4KiB\", \"1GiB\")"),
    ("targets:\n  - name: a\n    comm: x\n    fast_share: lots\n",
     "p.yaml:4: targets[0].fast_share: 'lots' is not a size (e.g. \"256MiB\", \"4KiB\", \"1GiB\")"),
    ("targets:\n  - name: a\n    comm: x\n    fast_cap:\n",
     "p.yaml:4: targets[0].fast_cap: needs a size or percentage"),
    ("targets: 5\n", "p.yaml:1: targets: expected a list"),
    ("fast_tier:\n  keep_free:\n", "p.yaml:2: fast_tier.keep_free: needs a size or percentage"),
    ("fast_tier:\n  keep_free: 100%\n", "p.yaml:2: fast_tier.keep_free: must be below 100%"),
    ("fast_tier:\n  demote_below: 50%\n",
     "p.yaml:2: fast_tier.demote_below: demote_below (50%) must not exceed keep_free (10%): "
     "demotion starts below demote_below and stops once keep_free is free again"),
    ("fast_tier:\n  keep_free: 1%\n",
     "p.yaml:2: fast_tier.keep_free: demote_below (5%) must not exceed keep_free (1%): "
     "demotion starts below demote_below and stops once keep_free is free again"),
    ("migration:\n  rate: fast\n", "p.yaml:2: migration.rate: 'fast' is not a rate (e.g. \"128MiB/s\")"),
    ("migration:\n  rate: 1KiB/s\n", "p.yaml:2: migration.rate: must be at least 4KiB/s"),
    ("migration:\n  batch:\n", "p.yaml:2: migration.batch: needs a size"),
    ("migration:\n  retry_after: 1048577\n",
     "p.yaml:2: migration.retry_after: 1048577 is out of range (1..1048576)"),
    ("migration: [1]\n", "p.yaml:1: migration: expected a mapping of keys (rate, query_rate, batch, retry_after)"),
    ("migration:\n  speed: 1\n", "p.yaml:2: migration.speed: unknown key (known: rate, query_rate, batch, retry_after)"),
    ("nodes:\n  slow: [1, 1]\n", "p.yaml:2: nodes.slow: a node is listed twice"),
    ("nodes:\n  slow: x\n", "p.yaml:2: nodes.slow: expected auto or a list of node ids, got 'x'"),
    ("metrics:\n  listen: {a: 1}\n", "p.yaml:2: metrics.listen: expected a single value, got a mapping"),
    ("a: *x\n", "p.yaml:1: yaml: found undefined alias 'x'"),
    ("interval: 5s\n\ntracking: \x00\n", "p.yaml:3: yaml: special characters are not allowed"),
    ("? [a]\n: b\n", "p.yaml:1: <key>: expected a single value, got a list"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "p.yaml: yaml: nested too deeply"),
    ("hotness:\n  min_gain: 150%\n", "p.yaml:2: hotness.min_gain: '150%' is more than 100%"),
    ("nodes:\n  fast: [-1]\n", "p.yaml:2: nodes.fast[0]: -1 is out of range (0..4095)"),
    ("nodes:\n  fast: 4096\n", "p.yaml:2: nodes.fast: 4096 is out of range (0..4095)"),
    ("targets:\n  - name: a\n    cgroup: x\n",
     "p.yaml:3: targets[0].cgroup: a cgroup v2 path starts with / (e.g. /system.slice/db.service)"),
    ("targets:\n  - {comm: x}\n", "p.yaml:2: targets[0].name: every target needs a name"),
    ("targets:\n  - name: a\n    pids: [1]\n    fast_share: 1\n    fast_cap: 0\n",
     "p.yaml:5: targets[0].fast_cap: fast_cap (0B) is below fast_share (1B)"),
    ("5\n", "p.yaml:1: policy: expected a mapping of keys (interval, auto_interval, tracking, "
     "targets, nodes, fast_tier, hotness, migration, metrics, huge_pages, log_level)"),
    ("migration:\n  rate:\n", "p.yaml:2: migration.rate: needs a rate"),
    ("targets:\n  - name: a\n    comm: x\n    min_rss:\n", "p.yaml:4: targets[0].min_rss: needs a size"),
    ("nodes:\n  fast: [0, 2]\n  slow: [2, 0, 1]\n",
     "p.yaml:3: nodes.slow: node(s) [0, 2] are also listed as fast"),
]


def test_a_cgroup_alone_is_a_selector():
    p = parse_policy("targets:\n  - name: a\n    cgroup: /x.slice\n", "p.yaml")
    assert p.targets[0].cgroup == "/x.slice"


@pytest.mark.parametrize("text, message", EXACT, ids=range(len(EXACT)))
def test_error_messages_word_for_word(text, message):
    assert str(error(text)) == message


def test_policy_error_fields():
    e = error("interval: 0s\n")
    assert e.args == ("p.yaml", 1, "interval", "must be longer than 0s")
    assert (e.source, e.line, e.key, e.message) == e.args
