"""Layers import only downward: no import cycle anywhere in the package.

Every import counts, including those under ``if TYPE_CHECKING:`` and those inside
functions: a cycle hidden behind a lazy import is still two modules that need each other.
The package's own ``__init__`` modules are facades (re-exports) and count like any module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import conveyor

ROOT = Path(conveyor.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The package modules ``path`` imports (``from a import b`` counts ``a.b`` if a module)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> list[str] | None:
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt in on_stack:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in done:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        on_stack.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            found = visit(start)
            if found:
                return found
    return None


def test_the_walker_finds_the_package_and_its_edges() -> None:
    graph = _graph()
    assert "conveyor.broker.core" in graph and "conveyor.lifecycle" in graph
    assert "conveyor.lifecycle" in graph["conveyor.broker.core"]
    assert "conveyor.stores.base" in graph["conveyor.stores.memory"]
    # and it sees a cycle when there is one
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_lower_layers_know_nothing_of_the_higher_ones() -> None:
    """The sans-IO protocol, the lifecycle and the stores never reach up into the broker,
    the clients, the worker, the HTTP API or the CLI."""
    graph = _graph()
    upper = (
        "conveyor.broker",
        "conveyor.client",
        "conveyor.worker",
        "conveyor.cli",
        "conveyor.http",
    )
    lower = [m for m in graph if m.startswith(("conveyor.protocol", "conveyor.stores"))]
    lower += ["conveyor.lifecycle", "conveyor.job", "conveyor.validation", "conveyor.limits"]
    for module in lower:
        reach = {m for m in graph[module] if m.startswith(upper)}
        assert not reach, f"{module} imports {sorted(reach)}"


def test_the_workforce_sits_below_the_core() -> None:
    """The core composes its workforce; the workforce reaches back only through its narrow
    ``Core`` protocol, never by importing the core or anything above it."""
    graph = _graph()
    assert "conveyor.broker.workforce" in graph["conveyor.broker.core"]
    above = ("conveyor.broker.core", "conveyor.broker.routes", "conveyor.broker.session")
    assert not {m for m in graph["conveyor.broker.workforce"] if m.startswith(above)}
