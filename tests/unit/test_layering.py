"""The engine depends on neither its users (the simulator, the CLI) nor the integrations,
which the composition root wires to it as observers (docs/design.md)."""

from __future__ import annotations

import ast
import pathlib

import tierd.engine

ENGINE = pathlib.Path(tierd.engine.__file__).parent
FORBIDDEN = ("tierd.sim", "tierd.integrations", "tierd.cli", "tierd.service")


def imports(path: pathlib.Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-level imports too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_the_engine_imports_none_of_its_users():
    bad = {f"{p.name}: {m}" for p in ENGINE.glob("*.py") for m in imports(p)
           if m.startswith(FORBIDDEN)}
    assert not bad, sorted(bad)


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from tierd.sim.simulate import simulate\n")
    assert "tierd.sim.simulate" in imports(f)
