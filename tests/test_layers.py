"""The layers hold: src/embedloop (the pure library) imports neither Prefect nor the
pipeline built on it (tasks/, flows/); its modules import one another without circles;
tasks never import other tasks. ruff's banned-api rule says so for every import
statement; the other tests read every import (in functions and TYPE_CHECKING blocks too)
and check what importing the library really loads."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "src" / "embedloop"


def test_ruff_passes_with_the_import_ban_on() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "src", "flows", "tasks",
                             "tests", "bench"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_importing_every_library_module_loads_no_prefect() -> None:
    probe = ("import importlib, pkgutil, sys, embedloop\n"
             "layers = ('embedloop.flows', 'embedloop.tasks')\n"
             "for m in pkgutil.walk_packages(embedloop.__path__, 'embedloop.'):\n"
             "    if not m.name.startswith(layers):\n"
             "        importlib.import_module(m.name)\n"
             "print(sorted(n for n in sys.modules if n.split('.')[0] in ('prefect', "
             "'prefect_dask') or n.startswith(layers)))\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO / "tests",
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def module_name(path: Path, root: Path, package: str) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join((package, *parts[: -1 if parts[-1] == "__init__" else None]))


def imports(path: Path, known: set[str], package: str) -> set[str]:
    """The modules of `known` that `path` imports anywhere in its text: `from a.b import c`
    counts as a.b.c when that is a module, else as a.b."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known
                      else node.module for a in node.names}
    return {m for m in found if m in known and m.startswith(f"{package}.")}


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    paths = {module_name(p, root, package): p for p in root.rglob("*.py")}
    modules = {m for m, p in paths.items() if p.name != "__init__.py"}
    return {m: imports(paths[m], set(paths), package) - {m} for m in modules}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, once each (its strongly connected components, Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_library_has_no_import_circles() -> None:
    graph = import_graph(LIBRARY, "embedloop")
    assert len(graph) > 30 and graph["embedloop.config"]  # the graph was read
    assert cycles(graph) == []


def test_tasks_do_not_import_tasks() -> None:
    """Each task module wraps the library on its own; what they share (the stage
    decorator, the chunked encoding) is plumbing in underscore modules."""
    graph = import_graph(REPO / "tasks", "embedloop.tasks")
    plumbing = {m for m in graph if m.rsplit(".", 1)[1].startswith("_")}
    assert len(graph) - len(plumbing) >= 6 and plumbing  # the graph was read
    tasks_importing_tasks = {m: sorted(deps - plumbing) for m, deps in graph.items()
                             if deps - plumbing}
    assert tasks_importing_tasks == {}


def test_no_library_module_imports_prefect() -> None:
    prefect = {p.relative_to(REPO).as_posix() for p in LIBRARY.rglob("*.py")
               if any(name.split(".")[0] in {"prefect", "prefect_dask"}
                      for name in _imported_names(p))}
    assert prefect == set()


def _imported_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names
