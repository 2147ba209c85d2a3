"""tierd.policy: the schema, every kind of error with FILE:LINE: KEY, the shipped manual file."""

from __future__ import annotations

import dataclasses
import os
import textwrap

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierd.policy import Amount, Policy, PolicyError, Regex, TargetSpec, load_policy, parse_policy

ETC = os.path.join(os.path.dirname(__file__), "..", "..", "etc", "tierd.yaml")


def parse(text: str) -> Policy:
    return parse_policy(textwrap.dedent(text), "p.yaml")


def error(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as ei:
        parse(text)
    return ei.value


FULL = """\
interval: 500ms
tracking: page_idle
targets:
  - name: db
    comm: "^postgres$"
    min_rss: 1GiB
    fast_share: 25%
    fast_cap: 50%
  - name: web
    pids: [100, 200]
    exe: /usr/bin/nginx
    cmdline: "--port 80"
    cgroup: /system.slice/web.service/
    fast_cap: 2GiB
nodes:
  fast: [0]
  slow: "1-2"
fast_tier:
  keep_free: 1GiB
  demote_below: 512MiB
hotness:
  window: 16
  min_hot: 0
  min_gain: 5%
migration:
  rate: 64MiB/s
  query_rate: 1GiB/s
  batch: 8MiB
  retry_after: 2
metrics:
  listen: "[::1]:9000"
"""


def test_full_policy_values():
    p = parse(FULL)
    assert p.source == "p.yaml"
    assert p.interval == 0.5 and p.tracking == "page_idle"
    db, web = p.targets
    assert db == TargetSpec("db", comm=Regex.compile("^postgres$"), min_rss=1 << 30,
                            fast_share=Amount(fraction=0.25), fast_cap=Amount(fraction=0.5))
    assert web.pids == (100, 200) and web.exe.pattern == "/usr/bin/nginx"
    assert web.cmdline.search("nginx --port 80") and web.cgroup == "/system.slice/web.service"
    assert web.fast_cap == Amount(bytes=2 << 30) and web.fast_share is None
    assert p.fast_nodes == (0,) and p.slow_nodes == (1, 2)
    assert p.keep_free == Amount(bytes=1 << 30) and p.demote_below == Amount(bytes=512 << 20)
    assert (p.window, p.min_hot, p.min_gain) == (16, 0, 0.05)
    assert (p.rate, p.batch, p.retry_after, p.query_rate) == (64 << 20, 8 << 20, 2, 1 << 30)
    assert p.metrics_listen == "[::1]:9000"
    assert p.target("web") is web


def test_policy_is_frozen():
    p = parse(FULL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.interval = 1.0  # type: ignore[misc]
    assert isinstance(p.targets, tuple) and isinstance(p.targets[1].pids, tuple)


def test_empty_file_is_all_defaults():
    p = parse("")
    assert p == Policy(source="p.yaml")
    assert p.keep_free == Amount(fraction=0.10) and p.demote_below == Amount(fraction=0.05)
    assert p.rate == 128 << 20 and p.batch == 4 << 20 and p.window == 8
    assert p.metrics_listen == "127.0.0.1:9464" and p.targets == ()


def test_shipped_policy_loads_and_documents_the_defaults():
    p = load_policy(ETC)
    # The manual shows every default: apart from its example target, it IS the defaults.
    assert dataclasses.replace(p, source="x", targets=()) == Policy(source="x")
    assert [t.name for t in p.targets] == ["databases"]
    assert p.targets[0].comm.search("postgres") and not p.targets[0].comm.search("postgresql")


@pytest.mark.parametrize(
    "text, line, key, msg",
    [
        ("intervall: 5s\n", 1, "intervall", "did you mean 'interval'"),
        ("interval: 5s\ninterval: 6s\n", 2, "interval", "given twice"),
        ("interval: -5s\n", 1, "interval", "negative"),
        ("interval: 0s\n", 1, "interval", "longer than 0s"),
        ("interval: 86401s\n", 1, "interval", "at most a day (24h)"),
        ("interval: [5]\n", 1, "interval", "got a list"),
        ("tracking: damon\n", 1, "tracking", "not one of"),
        ("tracking: 5\n", 1, "tracking", "expected a string"),
        ("targets: {name: x}\n", 1, "targets", "expected a list"),
        ("targets:\n  - comm: x\n", 2, "targets[0].name", "needs a name"),
        ("targets:\n  - name: a\n", 2, "targets[0]", "at least one selector"),
        ("targets:\n  - name: a\n    pids: 1\n  - name: a\n    pids: 2\n", 4, "targets[1].name",
         "already the name of targets[0]"),
        ("targets:\n  - name: a\n    comm: x\n  - name: b\n    comm: y\n    min_rss: -1MiB\n", 6,
         "targets[1].min_rss", "negative"),
        ("targets:\n  - name: a\n    comm: '(unclosed'\n", 3, "targets[0].comm",
         "bad regular expression"),
        ("targets:\n  - name: a\n    pids: [1, -2]\n", 3, "targets[0].pids[1]", "out of range"),
        ("targets:\n  - name: a\n    pids: [1, yes]\n", 3, "targets[0].pids[1]", "whole number"),
        ("targets:\n  - name: a\n    cgroup: system.slice\n", 3, "targets[0].cgroup", "starts with /"),
        ("targets:\n  - name: a\n    comm: x\n    fast_share: 2GiB\n    fast_cap: 1GiB\n", 5,
         "targets[0].fast_cap", "below fast_share"),
        ("targets:\n  - name: a\n    comm: x\n    colour: red\n", 4, "targets[0].colour", "unknown key"),
        ("targets:\n  - name: ''\n    comm: x\n", 2, "targets[0].name", "must not be empty"),
        ("nodes:\n  fast: [0]\n  slow: [0, 1]\n", 3, "nodes.slow", "also listed as fast"),
        ("nodes:\n  fast: [-1]\n", 2, "nodes.fast[0]", "out of range"),
        ("nodes:\n  fast: []\n", 2, "nodes.fast", "empty list"),
        ("nodes:\n  fast: lots\n", 2, "nodes.fast", "expected auto"),
        ("nodes: [0]\n", 1, "nodes", "expected a mapping"),
        ("fast_tier:\n  keep_free: 5%\n  demote_below: 10%\n", 3, "fast_tier.demote_below",
         "must not exceed keep_free"),
        ("fast_tier:\n  demote_below: 20%\n", 2, "fast_tier.demote_below", "must not exceed"),
        ("fast_tier:\n  keep_free: 100%\n", 2, "fast_tier.keep_free", "below 100%"),
        ("fast_tier:\n  keep_free: 150%\n", 2, "fast_tier.keep_free", "more than 100%"),
        ("fast_tier:\n  keep_free: ten\n", 2, "fast_tier.keep_free", "not a size"),
        ("hotness:\n  window: 0\n", 2, "hotness.window", "out of range (1..16)"),
        ("hotness:\n  window: 17\n", 2, "hotness.window", "out of range"),
        ("hotness:\n  window: 8.5\n", 2, "hotness.window", "whole number"),
        ("hotness:\n  min_hot: 16\n", 2, "hotness.min_hot", "out of range (0..15)"),
        ("hotness:\n  hysteresis: 2\n", 2, "hotness.hysteresis", "replaced by hotness.min_gain"),
        ("hotness:\n  min_gain: 0.02\n", 2, "hotness.min_gain", "percentage"),
        ("hotness:\n  min_gain: 101%\n", 2, "hotness.min_gain", "more than 100%"),
        ("migration:\n  rate: 128MiB\n", 2, "migration.rate", "not a rate"),
        ("migration:\n  rate: 0MiB/s\n", 2, "migration.rate", "at least"),
        ("migration:\n  query_rate: 1GiB\n", 2, "migration.query_rate", "not a rate"),
        ("migration:\n  batch: 100\n", 2, "migration.batch", "at least one page"),
        ("migration:\n  batch: 256MB\n", 2, "migration.batch", "ambiguous"),
        ("migration:\n  retry_after: 0\n", 2, "migration.retry_after", "out of range"),
        ("metrics:\n  listen: 9464\n", 2, "metrics.listen", "HOST:PORT"),
        ("metrics:\n  listen: 'localhost:99999'\n", 2, "metrics.listen", "1..65535"),
        ("metrics:\n  listen: '::1:9464'\n", 2, "metrics.listen", "brackets"),
        ("metrics:\n  port: 1\n", 2, "metrics.port", "unknown key"),
        ("- 1\n- 2\n", 1, "policy", "expected a mapping"),
        ("interval: 5s\n  bad: indent\n", 2, "yaml", "mapping values are not allowed here"),
        ("a: b\n---\nc: d\n", 2, "yaml", "another document"),
        ("interval: !!python/object:os.system x\n", 1, "interval", "unreadable"),
        ("interval: !!int abc\n", 1, "interval", "unreadable"),
        ("1: x\n", 1, "1", "keys must be names"),
        ("interval: 2s\nauto_interval:\n  min: 1s\n", 2, "auto_interval", "applies only with"),
        ("auto_interval:\n  min: 6s\n", 2, "auto_interval.min", "must not exceed max"),
        ("auto_interval:\n  cpu: 0%\n", 2, "auto_interval.cpu", "above 0%"),
        ("auto_interval:\n  cpu: 0.1\n", 2, "auto_interval.cpu", "percentage"),
        ("auto_interval:\n  mn: 1s\n", 2, "auto_interval.mn", "did you mean 'min'"),
        ("interval: autox\n", 1, "interval", "not a duration"),
        ("huge_pages:\n  split: yes\n", 2, "huge_pages.split", "not one of auto, off"),
        ("huge_pages:\n  dense: 0%\n", 2, "huge_pages.dense", "above 0%"),
    ],
)
def test_errors_name_file_line_and_key(text, line, key, msg):
    e = error(text)
    assert (e.source, e.line, e.key) == ("p.yaml", line, key), str(e)
    assert msg in e.message
    assert str(e).startswith(f"p.yaml:{line}: {key}: ")


def test_interval_limits_are_inclusive():
    assert parse("interval: 24h\n").interval == 86400  # a day is allowed, a second more is not
    assert parse("interval: 1ms\n").interval == 0.001


def test_null_where_value_needed():
    assert error("interval:\n").message == "needs a duration"
    assert parse("targets:\n").targets == ()
    assert parse("nodes:\n  fast:\n  slow: auto\n").fast_nodes is None
    assert parse("metrics:\n  listen: ''\n").metrics_listen == ""


def test_fast_share_cap_mixed_kinds_are_not_compared():
    p = parse("targets:\n  - name: a\n    comm: x\n    fast_share: 50%\n    fast_cap: 1GiB\n")
    assert p.targets[0].fast_share == Amount(fraction=0.5)


def test_nodes_single_id_and_kernel_list():
    assert parse("nodes:\n  slow: 2\n").slow_nodes == (2,)
    assert parse("nodes:\n  slow: '1,3-4'\n").slow_nodes == (1, 3, 4)


def test_load_policy_file_errors(tmp_path):
    with pytest.raises(PolicyError) as ei:
        load_policy(str(tmp_path / "missing.yaml"))
    assert ei.value.line is None and "cannot read" in str(ei.value)
    assert str(ei.value).startswith(str(tmp_path / "missing.yaml") + ": ")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"interval: 5s # caf\xe9\n")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(str(bad))
    good = tmp_path / "good.yaml"
    good.write_text("interval: 2s\n")
    assert load_policy(str(good)).source == str(good)


def test_error_line_is_that_of_the_bad_value_deep_in_the_file():
    text = open(ETC).read().replace("min_hot: 1", "min_hot: 99")
    with pytest.raises(PolicyError) as ei:
        parse_policy(text, "etc/tierd.yaml")
    lineno = next(i for i, l in enumerate(text.splitlines(), 1) if "min_hot: 99" in l)
    assert ei.value.line == lineno and ei.value.key == "hotness.min_hot"


def test_deep_nesting_is_a_clean_error():
    with pytest.raises(PolicyError):
        parse_policy("interval: " + "[" * 5000 + "]" * 5000 + "\n", "deep.yaml")


def test_recursive_alias_is_a_clean_error():
    with pytest.raises(PolicyError):
        parse_policy("targets: &a [*a]\n", "alias.yaml")


# -- never crash ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_policy_parser_never_crashes_on_any_text(text):
    try:
        p = parse_policy(text, "fuzz.yaml")
    except PolicyError as e:
        assert str(e).startswith("fuzz.yaml")
    else:
        assert isinstance(p, Policy)


_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["5s", "10%", "256MiB", "128MiB/s", "auto", "^x$", "/a", "0-1", "[",
                     "127.0.0.1:1", "0%", "100%", "page_idle", "-1", "1e9"]),
)
_keys = st.sampled_from([
    "interval", "tracking", "targets", "nodes", "fast_tier", "hotness", "migration", "metrics",
    "name", "pids", "comm", "exe", "cmdline", "cgroup", "min_rss", "fast_share", "fast_cap",
    "fast", "slow", "keep_free", "demote_below", "window", "min_hot", "min_gain", "hysteresis", "rate", "query_rate",
    "batch", "retry_after", "listen", "bogus",
])
_tree = st.recursive(
    _scalar,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(_keys, children, max_size=5)),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _tree, max_size=8))
def test_policy_parser_never_crashes_on_schema_shaped_yaml(doc):
    text = yaml.safe_dump(doc)
    try:
        p = parse_policy(text, "fuzz.yaml")
    except PolicyError as e:
        assert e.line is None or 1 <= e.line <= text.count("\n") + 1
    else:
        assert isinstance(p, Policy)
        assert 1 <= p.window <= 16 and p.interval > 0
