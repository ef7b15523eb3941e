"""The lab's modules import without circles (agents<->cluster and netns->partition->faults came back once).

Two checks: the graph of imports between ``dbfence.lab`` modules, read from their source, has no
cycle (imports under ``if TYPE_CHECKING:`` count too: they are the first to turn into real ones);
and every module imports alone in a fresh interpreter, which a circle usually breaks.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import dbfence.lab

LAB_DIR = Path(dbfence.lab.__file__).parent
LAB_PACKAGE = "dbfence.lab"


def _module_name(path: Path) -> str:
    relative = path.relative_to(LAB_DIR).with_suffix("")
    parts = [part for part in relative.parts if part != "__init__"]
    return ".".join([LAB_PACKAGE, *parts])


def lab_modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(LAB_DIR.rglob("*.py"))}


def _imported_names(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """The modules a module's source names in ``import`` / ``from ... import`` statements."""
    names: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            # ``from dbfence.lab import faults`` imports the module dbfence.lab.faults.
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def lab_import_graph() -> dict[str, set[str]]:
    modules = lab_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        imported = _imported_names(tree, name, path.name == "__init__.py")
        # A module depends on the lab modules it names, not on its own package's __init__.
        graph[name] = {m for m in imported if m in modules and m != name and not name.startswith(m + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path that starts and ends at the same module, or None."""
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return [*visiting[visiting.index(node):], node]
        if node in done:
            return None
        visiting.append(node)
        for successor in sorted(graph.get(node, ())):
            cycle = visit(successor)
            if cycle is not None:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle is not None:
            return cycle
    return None


def test_cycle_finder_finds_a_circle_and_accepts_a_tree() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_graph_sees_the_lab_imports() -> None:
    graph = lab_import_graph()
    # A known edge, so that an empty graph (a broken reader) cannot pass the cycle test.
    assert "dbfence.lab.consul_standin.model" in graph["dbfence.lab.consul_standin.state"]


def test_lab_modules_import_each_other_without_circles() -> None:
    cycle = find_cycle(lab_import_graph())
    assert cycle is None, "import circle in the lab: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("module", sorted(lab_modules()))
def test_each_lab_module_imports_alone(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
