"""The import graph of the three packages: no cycles (imports inside functions included), the
layers point one way (app -> analysis -> idlora_core), and analysis/ holds no job server or figure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "analysis", "idlora_core")
LAYER = {"idlora_core": 0, "analysis": 1, "app": 2}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            found[_module_name(path)] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every in-repo module `path` imports, at any depth of the file (functions included)."""
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            while name and name not in modules:  # `from pkg import mod` names a module or a symbol
                name = name.rpartition(".")[0]
            if name and name != this:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    # a package's __init__ runs before its submodules, but a submodule depends on it only when
    # it imports a name defined there (an explicit edge), so implicit parent edges are not added
    return {name: _imports(path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_parser_sees_imports_inside_functions(tmp_path):
    modules = _modules()
    assert "analysis.sweep_cli" in _imports(ROOT / "analysis" / "sweep" / "__main__.py", modules)
    graph = _graph()
    assert "idlora_core.jobs.slots" in graph["idlora_core.jobs.run_queue"]
    assert "analysis.sweep" in graph["analysis.sweep_cli"]


def test_no_import_cycles_anywhere():
    assert _cycles(_graph()) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_layers_point_one_way(package):
    graph = _graph()
    upward = sorted((name, dep) for name, deps in graph.items() if name.split(".")[0] == package
                    for dep in deps if LAYER[dep.split(".")[0]] > LAYER[package])
    assert upward == []


def test_analysis_holds_no_jobs_and_no_figures():
    banned = {"subprocess", "signal", "fcntl", "plotly", "streamlit"}
    found = []
    for path in (ROOT / "analysis").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [(path.name, n) for n in names if n.split(".")[0] in banned]
    assert found == []
