"""Imports point one way: no import cycle in src/, and no layer imports one above it.

An AST walk over every module of `dashboard_api`, function-local imports included (an
import hidden in a function is still a dependency; it only hides a cycle from Python).
Each module belongs to the layer of its longest matching prefix in `LAYERS`; a layer may
import only the layers listed for it in `MAY_IMPORT`. A new top-level module or package
must be given a layer here before the test passes.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import dashboard_api

PACKAGE = "dashboard_api"
SRC = Path(dashboard_api.__file__).parent

# module prefix (under dashboard_api) -> layer
LAYERS: dict[str, str] = {
    # Entry points: they call services; nothing below imports them.
    "api": "entry",
    "ingress": "entry",
    "otlp": "entry",
    "web": "entry",
    "jobs": "entry",
    "cli": "entry",
    "cli_errors": "entry",
    "cli_guards": "entry",
    "__main__": "entry",
    "demo": "entry",
    "app": "entry",
    "background": "entry",
    # The features, and the per-app bundle of resources they are handed.
    "services": "services",
    "context": "services",
    # Delivery of committed events: broker, hub, /ws sessions, SSE streams.
    "realtime": "realtime",
    # Request and response models.
    "schemas": "schemas",
    # Tables, engine, dialects, migrations.
    "db": "db",
    # Leaves every layer may use: no feature, no I/O of their own but their own concern.
    "": "base",  # the package's __init__ (version)
    "aiotasks": "base",
    "bounded": "base",
    "auth": "base",
    "client": "base",
    "errors": "base",
    "gc_tuning": "base",
    "ids": "base",
    "money": "base",
    "observability": "base",
    "security": "base",
    "settings": "base",
    "task_statuses": "base",
    "timeutil": "base",
}

# layer -> the layers its modules may import (its own included)
MAY_IMPORT: dict[str, frozenset[str]] = {
    "entry": frozenset({"entry", "services", "realtime", "schemas", "db", "base"}),
    "services": frozenset({"services", "realtime", "schemas", "db", "base"}),
    "realtime": frozenset({"realtime", "db", "base"}),
    "schemas": frozenset({"schemas", "db", "base"}),
    "db": frozenset({"db", "base"}),
    "base": frozenset({"base"}),
}

# Cycles known today, each with the reason it is tolerated and until when. Empty is the goal.
KNOWN_CYCLES: list[frozenset[str]] = []


def module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(SRC).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules(src: Path = SRC) -> dict[str, Path]:
    return {module_name(p): p for p in sorted(src.rglob("*.py"))}


def imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, int]]:
    """Every name an import statement anywhere in the tree refers to, resolved to absolute
    form: the module itself and, for `from m import x`, also `m.x` (x may be a submodule)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                if not is_package:
                    anchor.pop()
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, node.lineno
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported module of the package: line of the first such import}."""
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        tree = ast.parse(path.read_text(), str(path))
        for name, line in imported_names(tree, module, path.name == "__init__.py"):
            while name not in modules and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in modules and name != module and name.startswith(PACKAGE):
                edges.setdefault(name, line)
        graph[module] = edges
    return graph


def layer_of(module: str) -> str | None:
    rest = module[len(PACKAGE) :].lstrip(".")
    parts = rest.split(".") if rest else [""]
    for n in range(len(parts), 0, -1):
        layer = LAYERS.get(".".join(parts[:n]))
        if layer is not None:
            return layer
    return None


def cycles(graph: dict[str, dict[str, int]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, {}):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward_imports(graph: dict[str, dict[str, int]], modules: dict[str, Path]) -> list[str]:
    wrong = []
    for module, edges in sorted(graph.items()):
        layer = layer_of(module)
        for target, line in sorted(edges.items()):
            target_layer = layer_of(target)
            if layer is None or target_layer is None:
                continue  # reported by test_every_module_has_a_layer
            if target_layer not in MAY_IMPORT[layer]:
                where = modules[module]
                if where.is_relative_to(SRC.parent):
                    where = where.relative_to(SRC.parent)
                wrong.append(f"{where}:{line}: {layer} {module} imports {target_layer} {target}")
    return wrong


@pytest.fixture(scope="module")
def modules() -> dict[str, Path]:
    return all_modules()


@pytest.fixture(scope="module")
def graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    return import_graph(modules)


def test_every_module_has_a_layer(modules: dict[str, Path]) -> None:
    missing = sorted(m for m in modules if layer_of(m) is None)
    assert not missing, f"give these a layer in LAYERS (tests/test_architecture.py): {missing}"


def test_no_upward_import(graph: dict[str, dict[str, int]], modules: dict[str, Path]) -> None:
    wrong = upward_imports(graph, modules)
    assert not wrong, "imports that point up:\n" + "\n".join(wrong)


def test_no_import_cycle(graph: dict[str, dict[str, int]]) -> None:
    found = [sorted(c) for c in cycles(graph) if c not in KNOWN_CYCLES]
    assert not found, f"import cycles: {found}"


def test_known_cycles_still_exist(graph: dict[str, dict[str, int]]) -> None:
    """A known cycle that is gone must leave KNOWN_CYCLES, so it cannot come back unseen."""
    present = set(cycles(graph))
    gone = [sorted(c) for c in KNOWN_CYCLES if c not in present]
    assert not gone, f"remove from KNOWN_CYCLES, they are fixed: {gone}"


# The checks themselves, on a small package written for them: they must catch a cycle
# (also one through a function-local import) and an upward import.


def _write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        path = root / PACKAGE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return {module_name_in(root, p): p for p in sorted((root / PACKAGE).rglob("*.py"))}


def module_name_in(root: Path, path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(root / PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_the_checks_catch_a_hidden_cycle_and_an_upward_import(tmp_path: Path) -> None:
    modules = _write(
        tmp_path,
        {
            "__init__.py": "",
            "db/__init__.py": "",
            "db/engine.py": "from dashboard_api.services import tasks\n",  # upward
            "services/__init__.py": "",
            "services/tasks.py": "from . import search\n",
            "services/search.py": (
                "def plan():\n    from dashboard_api.services.tasks import x\n    return x\n"
            ),
            "realtime/__init__.py": "",
            "realtime/hub.py": "import dashboard_api.realtime.events\n",
            "realtime/events.py": "",
        },
    )
    graph = import_graph(modules)
    assert cycles(graph) == [frozenset({f"{PACKAGE}.services.tasks", f"{PACKAGE}.services.search"})]
    wrong = upward_imports(graph, modules)
    assert wrong  # the package and its module: `from services import tasks` runs both
    assert all(f"db {PACKAGE}.db.engine imports services {PACKAGE}.services" in w for w in wrong)
    assert any(w.endswith(f"{PACKAGE}.services.tasks") for w in wrong)
