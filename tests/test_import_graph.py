"""The project's import graph, read from the source: no cycles, and no project import hidden in a function.

Every import counts, wherever it is written: an import moved into a function still makes the
cycle, it only defers it. Imports inside functions are kept for heavy third-party libraries
(torch, transformers, ...), so that ``--help`` stays instant; a project module never needs it.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("script", "refine_scripts", "phase5_subject_training")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((REPO_ROOT / package).rglob("*.py"))}


def imported_modules(node: ast.AST, modules: dict[str, Path], package: str) -> list[str]:
    """Project modules an ``import`` / ``from ... import`` node loads (``from pkg import mod`` names mod)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in modules]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*anchor, base] if base else anchor)
    found = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
    return found or ([base] if base in modules else [])


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """(module -> modules it imports, ``path:line: module`` of each project import inside a function)."""
    modules = project_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    inside_functions: list[str] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        in_function: set[int] = set()
        for function in ast.walk(tree):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                in_function.update(id(n) for n in ast.walk(function) if n is not function)
        for node in ast.walk(tree):
            targets = imported_modules(node, modules, package)
            graph[name].update(t for t in targets if t != name)
            if targets and id(node) in in_function:
                inside_functions.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {', '.join(targets)}")
    return graph, inside_functions


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_sees_a_cycle_and_a_chain_apart():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_reads_every_kind_of_import(tmp_path):
    modules = {"script.a": Path("a.py"), "script.b": Path("b.py"), "script": Path("__init__.py")}
    read = {src: imported_modules(ast.parse(src).body[0], modules, "script")
            for src in ("from script import b", "from script.b import thing", "import script.a", "from . import a",
                        "from .b import thing", "import os")}
    assert read == {"from script import b": ["script.b"], "from script.b import thing": ["script.b"],
                    "import script.a": ["script.a"], "from . import a": ["script.a"],
                    "from .b import thing": ["script.b"], "import os": []}


def test_the_project_has_no_import_cycle():
    graph, _ = import_graph()
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100  # the graph was read, not empty
    assert cycles(graph) == []


def test_no_project_module_is_imported_inside_a_function():
    _, inside_functions = import_graph()
    assert inside_functions == [], "move these imports to the top of their module:\n" + "\n".join(inside_functions)
