"""contrib/grafana/tierd.json: a well-formed dashboard whose every query (panels and
template variables) names only metrics tierd exports, as found in a real scrape.
(tests/integration/test_prometheus.py runs the same queries on a real Prometheus.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

from metrics_scenario import start
from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parents[2] / "contrib" / "grafana" / "tierd.json"

PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "rate", "irate", "increase",
    "label_values", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "topk", "bottomk", "histogram_quantile", "delta", "deriv", "offset", "bool", "abs",
}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries(d: dict) -> list[str]:
    out = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            out.append(v["query"]["query"] if isinstance(v["query"], dict) else v["query"])
    return out


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside label matchers, durations,
    strings and grouping clauses that are not functions or keywords."""
    e = re.sub(r'"[^"]*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", e)
    e = re.sub(r"label_values\(([^,()]+),[^)]*\)", r"\1", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group()
        after = e[m.end():].lstrip()
        if word in PROMQL_WORDS or after.startswith("("):
            continue
        names.add(word)
    return names


def test_metric_names_parser_can_fail():
    assert metric_names('sum by (node) (rate(tierd_x_total{a="b"}[5m])) * 4096') == {"tierd_x_total"}
    assert metric_names('label_values(tierd_build_info{job=~"$job"}, instance)') == {"tierd_build_info"}


def test_dashboard_is_well_formed():
    d = dashboard()
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        assert set(p["gridPos"]) == {"x", "y", "w", "h"} and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        assert p["targets"], p["title"]
        assert all(t["refId"] and t["expr"] for t in p["targets"])
    variables = {v["name"] for v in d["templating"]["list"]}
    # "All" must be a non-empty matcher: Prometheus refuses {job=~".*"} alone
    assert all(v.get("allValue") == ".+" for v in d["templating"]["list"] if v.get("includeAll"))
    for q in queries(d):
        for var in re.findall(r"\$(\w+)", q):
            assert var in variables or var.startswith("__"), (var, q)
    # what the issue asks to see
    titles = " ".join(p["title"].lower() for p in d["panels"])
    for word in ("hot set on fast vs slow", "migrations", "cpu", "free memory"):
        assert word in titles


def test_every_query_names_an_exported_metric():
    s = start(intervals=2)
    try:
        text = s.scrape()
    finally:
        s.close()
    exported = {smp.name for f in text_string_to_metric_families(text) for smp in f.samples}
    used = set()
    for q in queries(dashboard()):
        names = metric_names(q)
        assert names, q
        assert names <= exported, (q, names - exported)
        used |= names
    assert {"tierd_target_hot_pages", "tierd_migrated_bytes_total", "process_cpu_seconds_total",
            "tierd_node_memory_free_bytes"} <= used
