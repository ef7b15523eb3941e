"""The decision core imports nothing that does I/O or reads a clock (checked on the source)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "dbfence" / "agent"
CORE_MARKERS = ("decide", "core", "state", "observ", "action", "gtid", "rejoin", "failsafe")

#: Standard-library modules the pure core may use: data structures and arithmetic only.
ALLOWED_STDLIB = {"__future__", "dataclasses", "enum", "math", "typing", "collections.abc",
                  "functools", "itertools"}
#: Named explicitly so a future allow-list edit cannot slip them in unnoticed.
FORBIDDEN = {"time", "os", "logging", "asyncio", "socket", "random", "threading", "psutil",
             "pymysql", "consul", "pyetcd", "subprocess", "sys", "io", "pathlib", "datetime",
             "select", "signal", "multiprocessing", "concurrent", "urllib", "http", "requests",
             "uvloop", "importlib", "secrets", "uuid"}
FORBIDDEN_CALLS = {"open", "print", "input", "exec", "eval", "compile", "__import__", "breakpoint"}


def core_modules() -> list[str]:
    names = sorted(
        f"dbfence.agent.{path.stem}" for path in AGENT.glob("*.py")
        if any(marker in path.stem for marker in CORE_MARKERS)
    )
    return names


def module_path(module: str) -> Path:
    parts = module.split(".")
    package = ROOT.joinpath(*parts, "__init__.py")
    return package if package.exists() else ROOT.joinpath(*parts[:-1], parts[-1] + ".py")


def imports_of(module: str) -> tuple[set[str], set[str]]:
    """(dbfence modules, other modules) imported anywhere in a module, plus its packages."""
    tree = ast.parse(module_path(module).read_text(), filename=str(module_path(module)))
    internal: set[str] = set()
    external: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}: relative imports are not used in dbfence"
            assert node.module is not None
            names = [node.module]
            # "from dbfence.agent import x" may import a submodule x
            names += [f"{node.module}.{alias.name}" for alias in node.names
                      if module_path(f"{node.module}.{alias.name}").exists()]
        for name in names:
            (internal if name.split(".")[0] == "dbfence" else external).add(name)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in FORBIDDEN_CALLS, f"{module} calls {node.func.id}()"
    # Importing a module runs its packages' __init__ too.
    parts = module.split(".")
    internal |= {".".join(parts[:i]) for i in range(1, len(parts))}
    return internal, external


def transitive_imports(start: list[str]) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    todo = list(start)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        internal, external = imports_of(module)
        seen[module] = external
        todo.extend(internal - seen.keys())
    return seen


def test_core_module_list_is_what_we_expect() -> None:
    assert {"dbfence.agent.decide", "dbfence.agent.state", "dbfence.agent.observation",
            "dbfence.agent.actions", "dbfence.agent.gtid", "dbfence.agent.core_config",
            "dbfence.agent.core"} <= set(core_modules())


@pytest.mark.parametrize("module", core_modules())
def test_core_imports_nothing_impure(module: str) -> None:
    reached = transitive_imports([module])
    for name, external in reached.items():
        for imported in external:
            top = imported.split(".")[0]
            assert top not in FORBIDDEN, f"{module} reaches {name}, which imports {imported}"
            assert imported in ALLOWED_STDLIB, f"{module} reaches {name}, which imports {imported}"


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """Guard against a checker that silently finds nothing."""
    # A small command module that imports click (the whole CLI reaches code that opens files,
    # which the walk's call check, meant for the core, would flag).
    reached = transitive_imports(["dbfence.config_cli"])
    assert "click" in reached["dbfence.config_cli"]
