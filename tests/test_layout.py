"""The house keeps its plan: no import cycle between edgediff's packages, core imports none of them.

The graph counts every import of an edgediff module, at the top of a file or inside a
function: a deferred import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "edgediff"


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "edgediff" else None


def package_graph() -> dict[str, dict[str, list[str]]]:
    """{package: {imported package: [file:line, ...]}} over src/edgediff."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if len(rel.parts) == 1:  # edgediff/__init__.py, __main__.py: the front door may name anything
            continue
        here = rel.parts[0]
        graph.setdefault(here, {})
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = (
                    [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                    if node.module == "edgediff"
                    else [node.module]
                )
            else:
                continue
            for name in names:
                pkg = _package(name)
                if pkg and pkg != here and (SRC / pkg).is_dir():
                    graph[here].setdefault(pkg, []).append(f"{rel}:{node.lineno}")
    return graph


def find_cycle(graph: dict[str, dict]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, {})):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_the_graph_is_read():
    g = package_graph()
    assert {"core", "compiler", "runtimes", "quantize", "prune", "distill", "lower", "targets"} <= set(g)
    assert "core" in g["compiler"] and "runtimes" in g["compiler"]


def test_no_import_cycle_between_packages():
    g = package_graph()
    cycle = find_cycle(g)
    if cycle:
        where = [f"{a} -> {b} ({', '.join(g[a][b][:3])})" for a, b in zip(cycle, cycle[1:])]
        pytest.fail("import cycle between packages:\n  " + "\n  ".join(where))


def test_core_imports_no_other_package():
    assert package_graph()["core"] == {}


def test_a_cycle_is_found():
    assert find_cycle({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": []}, "b": {}}) is None
