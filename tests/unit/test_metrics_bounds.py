"""Issue 19: the metrics' cardinality is bounded.  With 1,000 targets a scrape was 53k series
and 2.9 MB (48k of them tierd_pages), and tierd_policy_info carried a 5.3 KB label."""

from __future__ import annotations

import numpy as np
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tierd.engine.daemon import NO_MATCH_INTERVALS, IntervalStats, TargetStats
from tierd.engine.hotness import LEVELS
from tierd.integrations.metrics import (
    LABEL_MAX,
    OTHER,
    MetricsObserver,
    cap_label,
    make_registry,
    name_list,
)
from tierd.policy import Policy, TargetSpec
from tierd.status import format_status, parse


class FakeEngine:
    def __init__(self, policy):
        self.policy = policy
        self.reader = type("R", (), {"name": "idle_bitmap"})()


def scrape_with(ntargets: int, nodes=(0, 1), name=lambda i: f"target-{i:04d}", unmatched=0):
    pol = Policy(source="/etc/tierd.yaml", targets=tuple(TargetSpec(name=name(i), pids=(i + 1,))
                                                         for i in range(ntargets)))
    obs = MetricsObserver(FakeEngine(pol), kernel_release="6.12.0")
    st = IntervalStats(seq=1, started=0.0, fast=(nodes[0],), slow=tuple(nodes[1:]),
                       memory={n: (1 << 30, 1 << 29) for n in nodes})
    for n in (*nodes, -1):
        st.nodes[n] = np.zeros(LEVELS, np.int64)
    for i in range(ntargets):
        ts = TargetStats(processes=1, pages=1000 + i, hot=8, cold=2)
        ts.by_node = {n: np.full(LEVELS, i + 1, np.int64) for n in (*nodes, -1)}
        ts.unmatched_intervals = NO_MATCH_INTERVALS if i < unmatched else 0
        st.targets[name(i)] = ts
    st.processes = ntargets
    obs.on_interval(st)
    text = generate_latest(make_registry(lambda: obs.snapshot)).decode()
    return text, list(text_string_to_metric_families(text))


def series(fams):
    return [s for f in fams for s in f.samples]


def test_a_scrape_with_1000_targets_stays_under_2000_series_and_small():
    text, fams = scrape_with(1000)
    samples = series(fams)
    assert len(samples) < 2000, len(samples)
    assert len(text) < 200_000, len(text)
    pages = [s for s in samples if s.name == "tierd_pages"]
    assert len(pages) <= 1024
    targets = {s.labels["target"] for s in pages}
    assert OTHER in targets and len(targets) == 21
    assert "target-0999" in targets  # the biggest (most resident pages) keep their own series
    # nothing is lost in the sum: the pages of all 1,000 targets are there
    total = sum(s.value for s in pages)
    assert total == sum((i + 1) * LEVELS * 3 for i in range(1000))
    procs = {s.labels["target"]: s.value for s in samples if s.name == "tierd_target_processes"}
    assert procs[OTHER] == 980 and sum(procs.values()) == 1000


def test_more_nodes_fewer_detailed_targets_same_bound():
    _, fams = scrape_with(1000, nodes=(0, 1, 2, 3, 4, 5, 6, 7))
    samples = series(fams)
    assert len([s for s in samples if s.name == "tierd_pages"]) <= 1024
    assert len(samples) < 2000


def test_no_label_over_200_bytes():
    _, fams = scrape_with(1000, name=lambda i: f"t{i:04d}-" + "x" * 300)
    for s in series(fams):
        for k, v in s.labels.items():
            assert len(v.encode()) <= LABEL_MAX, (s.name, k, len(v.encode()))
    info = [s for s in series(fams) if s.name == "tierd_policy_info"][0]
    assert info.labels["targets"].endswith("more)")
    # long names cut to the same prefix stay distinct series
    names = {s.labels["target"] for s in series(fams) if s.name == "tierd_target_processes"}
    assert len(names) == 21


def test_few_targets_are_all_shown_under_their_names():
    _, fams = scrape_with(3)
    names = {s.labels["target"] for s in series(fams) if s.name == "tierd_target_processes"}
    assert names == {"target-0000", "target-0001", "target-0002"}
    info = [s for s in series(fams) if s.name == "tierd_policy_info"][0]
    assert info.labels["targets"] == "target-0000,target-0001,target-0002"


def test_cap_label_and_name_list():
    assert cap_label("short") == "short"
    a, b = cap_label("é" * 300 + "a"), cap_label("é" * 300 + "b")
    assert a != b and len(a.encode()) <= LABEL_MAX and len(b.encode()) <= LABEL_MAX
    listed = name_list([f"name{i}" for i in range(100)])
    assert len(listed) <= LABEL_MAX and listed.startswith("name0,name1,") and "more)" in listed
    kept = listed.count(",")
    assert listed.endswith(f"(+{100 - kept} more)")


def test_unmatched_targets_are_counted_and_status_says_so():
    text, fams = scrape_with(4, unmatched=4)
    (s,) = [s for s in series(fams) if s.name == "tierd_targets_unmatched"]
    assert s.value == 4
    lines = format_status(parse(text, "http://x/metrics"), now=0.0)
    assert any(line.startswith("WARNING: the policy matches no process: 4 target(s)")
               for line in lines), lines
    text, _ = scrape_with(4, unmatched=1)
    lines = format_status(parse(text, "http://x/metrics"), now=0.0)
    assert any(line.startswith("WARNING: 1 target(s) matched no process") for line in lines)
