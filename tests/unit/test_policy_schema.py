"""The policy schema is declared once (the key() fields of tierd/policy.py): etc/tierd.yaml,
the operator's manual, sets and documents exactly the declared keys, and docs/design.md points
there instead of restating them."""

from __future__ import annotations

import os
import re

import pytest
import yaml

from tierd.policy import Policy, TargetSpec, declared, parse_policy

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
ETC = os.path.join(ROOT, "etc", "tierd.yaml")
DESIGN = os.path.join(ROOT, "docs", "design.md")

POLICY_KEYS = [k.path for _, k in declared(Policy)]
TARGET_KEYS = [f"targets.{k.path}" for _, k in declared(TargetSpec)]
SECTIONS = {p.rpartition(".")[0] for p in POLICY_KEYS + TARGET_KEYS} - {""}


def yaml_keys(node: yaml.Node, prefix: str = ""):
    """(path, key node) of every key in a composed YAML tree; a list entry's keys count as
    keys of the list ("targets.name")."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            path = f"{prefix}.{k.value}" if prefix else k.value
            yield path, k
            yield from yaml_keys(v, path)
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            yield from yaml_keys(v, prefix)


def documented(text: str) -> dict[str, str]:
    """{top-level key: its block of the file}: the comment paragraph just above it (lines
    starting with # at column 0) and everything down to the next such paragraph."""
    lines = text.splitlines()
    keys = yaml.compose(text, Loader=yaml.SafeLoader).value
    starts = []
    for k, _ in keys:
        j = k.start_mark.line
        while j > 0 and (lines[j - 1].startswith("#") or not lines[j - 1].strip()):
            j -= 1
        starts.append(j)
    ends = starts[1:] + [len(lines)]
    return {k.value: "\n".join(lines[a:b]) for (k, _), a, b in zip(keys, starts, ends)}


def test_every_declaration_is_complete():
    for f, k in declared(Policy) + declared(TargetSpec):
        assert k.path and k.doc.strip() and "\n" not in k.doc, f
    assert len(set(POLICY_KEYS)) == len(POLICY_KEYS)


def check_manual(text: str) -> None:
    keys = dict(yaml_keys(yaml.compose(text, Loader=yaml.SafeLoader)))
    assert set(keys) <= set(POLICY_KEYS) | set(TARGET_KEYS) | SECTIONS, "undeclared keys in etc/tierd.yaml"
    # "Every key below shows its default value": each key outside targets is set in the file
    assert set(POLICY_KEYS) - {"targets"} <= set(keys)
    blocks = documented(text)
    for path in POLICY_KEYS + TARGET_KEYS + sorted(SECTIONS):
        leaf = path.rpartition(".")[2]
        block = blocks.get(path.partition(".")[0], "")
        comments = "\n".join(line for line in block.splitlines() if line.lstrip().startswith("#"))
        # introduced by a comment that starts with its name ("# window: ..."), in its section;
        # a target's keys in a list ("#   min_rss     size: ...")
        intro = rf"^\s*#\s+{leaf}\s\s" if path in TARGET_KEYS else rf"^\s*#\s+{leaf}:"
        assert re.search(intro, comments, re.M), (
            f"{path} is not documented in its section of etc/tierd.yaml")


def test_the_manual_documents_every_declared_key_and_no_other():
    check_manual(open(ETC).read())


@pytest.mark.parametrize("edit", [
    lambda t: re.sub(r"^\s*# min_hot:.*$", "", t, count=1, flags=re.M),  # undocumented
    lambda t: t.replace("  window: 8\n", "  window: 8\n  windows: 8\n"),  # undeclared
    lambda t: t.replace("  retry_after: 4\n", ""),  # declared, not shown with its default
    lambda t: t.replace("#   cgroup ", "#   cgroups "),  # a target key undocumented
])
def test_the_manual_check_can_fail(edit):
    broken = edit(open(ETC).read())
    with pytest.raises(AssertionError):
        check_manual(broken)


def test_the_design_page_points_to_the_declaration_instead_of_restating_it():
    text = open(DESIGN).read()
    names = {f for f, _ in declared(Policy) + declared(TargetSpec)}
    restated = [line for line in text.splitlines()
                if (m := re.match(r"\s*(\w+)\s*:[^=\n]*=", line)) and m.group(1) in names]
    assert not restated, restated  # dataclass-style "window: int = 8"
    layouts = re.findall(r"`(\w+): \{", text)
    assert not set(layouts) & SECTIONS, layouts  # "`hotness: {window, ...}`"
    assert "etc/tierd.yaml" in text and "tierd/policy.py" in text


def test_summary_shows_every_declared_key():
    """check-config prints each key's effective value (auto_interval's only with interval: auto)."""
    s = parse_policy("targets:\n  - name: a\n    pids: [1]\n", "p.yaml").summary()
    assert set(s) == (set(POLICY_KEYS) - {"targets"}) | {"targets[0]"}
    fixed = parse_policy("interval: 2s\n", "p.yaml").summary()
    assert fixed["interval"] == "2s" and not [k for k in fixed if k.startswith("auto_interval")]
