"""The house by concern: each folder imports only the ones below it, and no module
imports itself back through a circle (Celery's own workers.app <-> workers.tasks aside).

Imports are read from the source with `ast`, lazy ones inside functions included, so an
import that would run back up a level cannot hide in a function body.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A module may import its own layer's modules and any layer below it.
LAYERS: list[tuple[str, ...]] = [
    ("digest", "digest.errors", "digest.config", "digest.models", "digest.db"),
    ("digest.store",),
    ("digest.mail", "digest.feeds"),
    ("digest.editions",),
    ("digest.readers",),
    ("digest.operations",),
    ("digest.web", "digest.cli", "digest.gunicorn_conf", "digest.migrations", "workers"),
]
# The one circle Celery itself asks for: the app names its tasks, the tasks need the app.
ALLOWED_CYCLES = [{"workers.app", "workers.tasks"}]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, Path]:
    found = {}
    for top in ("digest", "workers"):
        for path in sorted((ROOT / top).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports, resolved to modules (not names in them)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def layer_of(name: str) -> int:
    best, level = -1, -1
    for index, members in enumerate(LAYERS):
        for member in members:
            if (name == member or name.startswith(member + ".")) and len(member) > best:
                best, level = len(member), index
    assert level >= 0, f"{name} belongs to no layer: add its folder to LAYERS"
    return level


GRAPH = {name: imports_of(name, path, set(sources())) for name, path in sources().items()}


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_no_import_runs_up_a_layer(name: str) -> None:
    upward = sorted(t for t in GRAPH[name] if layer_of(t) > layer_of(name))
    assert not upward, f"{name} (layer {layer_of(name)}) imports a higher layer: {upward}"


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm: every set of modules that import each other round a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    # A package's __init__ that re-exports its modules is not a circle of code.
    graph = {
        name: {t for t in targets if not name.startswith(t + ".")}
        for name, targets in GRAPH.items()
    }
    cycles = [c for c in strongly_connected(graph) if c not in ALLOWED_CYCLES]
    assert not cycles, f"import cycles: {[sorted(c) for c in cycles]}"


def test_cycle_finder_finds_a_circle() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_top_level_stays_small() -> None:
    modules = sorted(p.name for p in (ROOT / "digest").glob("*.py"))
    assert len(modules) <= 8, modules


def test_every_subpackage_says_what_it_may_import() -> None:
    for init in sorted((ROOT / "digest").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert doc, f"{init.parent.name}/__init__.py has no docstring"


def test_the_wheel_ships_every_package() -> None:
    """The image installs digest as a wheel: a subpackage missing from it is an app that
    cannot start (it happened when web/console became a package)."""
    import tomllib

    from setuptools import find_namespace_packages

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = config["packages"]
    assert isinstance(found, dict), "list packages with packages.find, not by hand"
    shipped = set(find_namespace_packages(str(ROOT), **found["find"]))
    wanted = {
        module_name(init.parent / "x.py").rpartition(".")[0]
        for top in ("digest", "workers")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert wanted <= shipped, sorted(wanted - shipped)
