"""The house: the core imports nothing of the application or the benchmarks, and no module imports itself
back through others. Read from the source (ast), so a lazy import inside a function counts too."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
FOLDERS = {"fastig": ROOT / "engine", "fastig.benchmarks": ROOT / "benchmarks"}     # as setup.py maps them


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        assert (folder / "__init__.py").exists(), f"{package}: no package at {folder} (moved? update FOLDERS)"
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The fastig modules `name` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rsplit(".", 1)[0]
            base = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        imported |= {t for t in targets if t in MODULES and t != name}
    return imported


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(name: str) -> str:
    if name.startswith("fastig.app"):
        return "application"
    if name.startswith("fastig.benchmarks"):
        return "benchmarks"
    return "core"


def test_the_core_imports_neither_the_application_nor_the_benchmarks():
    wrong = {name: sorted(m for m in imports if _layer(m) != "core")
             for name, imports in GRAPH.items() if _layer(name) == "core"}
    assert not {name: found for name, found in wrong.items() if found and name != "fastig.__main__"}


def test_the_benchmarks_import_no_application_module():
    assert not {name: sorted(m for m in imports if _layer(m) == "application")
                for name, imports in GRAPH.items() if _layer(name) == "benchmarks"
                if any(_layer(m) == "application" for m in imports)}


def test_no_import_cycle():
    # A package imports what its __init__ re-exports: the edge from a package to its own modules is not a cycle.
    def edges(name):
        return {m for m in GRAPH[name] if not (name in ("fastig", "fastig.kernels") and m.startswith(name + "."))}

    state, cycle = {}, []

    def visit(name, path):
        state[name] = "open"
        for target in sorted(edges(name)):
            if state.get(target) == "open":
                cycle.append(path + [target])
            elif target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycle, " -> ".join(cycle[0])


@pytest.mark.parametrize("unwanted", ["matplotlib", "pandas", "datasets", "fastig.benchmarks", "fastig.app"])
def test_importing_the_engine_loads_no_application_library(unwanted):
    code = f"import sys, fastig; fastig.Engine; print(any(m == {unwanted!r} or m.startswith({unwanted + '.'!r}) " \
           "for m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr
