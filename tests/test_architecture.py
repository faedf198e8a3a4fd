"""docs/architecture.md says how imports between the parts of the package point;
these tests read every module's imports and hold the code (and the page) to it.

The known exceptions are listed here and on that page; removing one is
welcome (the tests only refuse new ones).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import kachery_tasks

ROOT = Path(kachery_tasks.__file__).parent

# Layers from the top; a module may import from its own layer or any below.
LAYERS = {
    "cli": 11, "__main__": 11, "testing": 11,  # testing: contract test suites for backends
    "daemon": 10,  # the long-running node: HTTP API, hub page, channel services
    "__init__": 9,  # the public face: re-exports
    "network": 8,
    "runtime": 7,
    "files": 6, "feed_functions": 6, "zarr_arrays": 6,  # public functions on the current node
    "nodes": 5,
    "remotes": 4,
    "feeds": 3,
    "storage": 1,
    "errors": 0, "config": 0, "sizes": 0, "uris": 0, "canonical": 0, "fsutil": 0, "db": 0,
    "keys": 0, "processes": 0, "progress": 0, "envelopes": 0, "listeners": 0,
}

# Imports that point up today (inside functions), documented in docs/architecture.md.
KNOWN_UPWARD: set[tuple[str, str]] = set()

# Cycles that exist today, each closed by an import inside a function.
KNOWN_CYCLES = [
]


def _modules() -> dict[str, Path]:
    mods = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        mods[".".join(parts).removesuffix(".__init__")] = f
    return mods


def import_graph() -> dict[str, dict[str, bool]]:
    """module -> {imported module: whether the import is at module level}."""
    mods = _modules()
    graph: dict[str, dict[str, bool]] = defaultdict(dict)
    for mod, f in mods.items():
        package = mod if f.name == "__init__.py" else mod.rsplit(".", 1)[0]
        tree = ast.parse(f.read_text())
        in_function = {
            id(inner) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            for inner in ast.walk(node) if inner is not node
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                candidates = [f"{target}.{a.name}" for a in node.names] + [target]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            found = set()
            for name in candidates:  # every imported name (``from . import a, b``: a and b)
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    found.add(name)
            if len(found) > 1 and isinstance(node, ast.ImportFrom):
                found.discard(target)  # the package named by ``from . import a``: only a
            top = id(node) not in in_function
            for name in found:
                graph[mod][name] = graph[mod].get(name, False) or top
    return graph


def _layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _cycles(graph: dict[str, dict[str, bool]], module_level_only: bool) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w, top in graph.get(v, {}).items():
            if module_level_only and not top:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_every_part_has_a_layer():
    assert {_layer(m) for m in _modules()} <= set(LAYERS), "add the new part to LAYERS"


def test_imports_point_down_except_the_known_ones():
    upward = {
        (src, dst) for src, targets in import_graph().items() for dst in targets
        if LAYERS.get(_layer(dst), -1) > LAYERS.get(_layer(src), 99)
    }
    assert upward <= KNOWN_UPWARD, f"new upward imports: {sorted(upward - KNOWN_UPWARD)}"


def test_no_import_cycles_except_the_known_ones():
    graph = import_graph()
    assert _cycles(graph, module_level_only=True) == []
    for cycle in _cycles(graph, module_level_only=False):
        assert any(cycle <= known for known in KNOWN_CYCLES), f"new import cycle: {sorted(cycle)}"


def test_tasks_find_their_executor_without_importing_executors():
    graph = import_graph()
    assert "kachery_tasks.runtime.executors" not in graph["kachery_tasks.runtime.tasks"]
    assert graph["kachery_tasks.runtime.executors"]["kachery_tasks.runtime.tasks"] is True
    assert graph["kachery_tasks.runtime.tasks"]["kachery_tasks.runtime.context"] is True


def test_the_checks_see_what_is_there():
    graph = import_graph()
    assert graph["kachery_tasks.cli.files"]["kachery_tasks.files"] is True
    assert graph["kachery_tasks.runtime.wire"]["kachery_tasks.runtime.file_args"] is False
    made_up = {"a": {"b": True}, "b": {"c": False}, "c": {"a": True}, "d": {"a": True}}
    assert _cycles(made_up, module_level_only=False) == [{"a", "b", "c"}]
    assert _cycles(made_up, module_level_only=True) == []
