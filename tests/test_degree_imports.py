"""The modules of equilib.degree import each other without a cycle (also inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import equilib.degree

PACKAGE = Path(equilib.degree.__file__).resolve().parent


def module_imports(folder: Path, package: str) -> dict[str, set[str]]:
    """For every module ``package.name`` in ``folder`` (not ``__init__``): the modules of the same
    folder it imports anywhere in its code, by absolute or relative import."""
    names = {f.stem for f in folder.glob("*.py") if f.stem != "__init__"}
    graph = {}
    for name in names:
        deps = set()
        for node in ast.walk(ast.parse((folder / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level == 1:
                    base = f"{package}.{base}" if base else package
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                if t.startswith(package + ".") and t[len(package) + 1 :] in names:
                    deps.add(t[len(package) + 1 :])
        graph[name] = deps - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes (first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return path[path.index(w) :] + [w]
            if w not in state and (cycle := visit(w)) is not None:
                return cycle
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (cycle := visit(v)) is not None:
            return cycle
    return None


def test_find_cycle_sees_a_cycle_through_a_function_level_import(tmp_path):
    (tmp_path / "a.py").write_text("from pkg.b import f\n")
    (tmp_path / "b.py").write_text("def f():\n    from pkg.a import g\n")
    (tmp_path / "c.py").write_text("from . import a\n")
    graph = module_imports(tmp_path, "pkg")
    assert graph == {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert find_cycle(graph) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_degree_modules_have_no_import_cycle():
    graph = module_imports(PACKAGE, "equilib.degree")
    assert {"density", "layers", "model"} <= set(graph)
    assert "density" in graph["layers"]
    cycle = find_cycle(graph)
    assert cycle is None, f"equilib.degree imports in a cycle: {' -> '.join(cycle)}"


def test_group_coordinates_live_with_the_densities():
    from equilib.degree import density, layers

    assert layers.group_angles_flips is density.group_angles_flips
