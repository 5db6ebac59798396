"""The server's modules import each other without cycles, so any one imports on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import llmgateway_server

PACKAGE = Path(llmgateway_server.__file__).parent
NAME = "llmgateway_server"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path, module: str) -> set[str]:
    """Modules of the package that ``path`` imports when it is loaded (module level,
    outside ``if TYPE_CHECKING:``), with each package's ``__init__`` on the way."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If):
                test = node.test
                if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
                    visit(node.orelse)
                    continue
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith(NAME))
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if node.level:
                    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}"
                if base.startswith(NAME):
                    found.add(base)
                    found.update(f"{base}.{a.name}" for a in node.names)

    visit(tree.body)
    expanded: set[str] = set()
    for name in found:
        parts = name.split(".")
        expanded.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    return expanded


def _ancestors(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _graph() -> dict[str, set[str]]:
    # A module's own packages are being imported already when it runs (their __init__
    # imported it, or Python imports them first): an import of them is no edge.
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {
            m
            for m in _runtime_imports(path, name)
            if m in modules and m != name and m not in _ancestors(name)
        }
        for name, path in modules.items()
    }


def test_no_import_cycles_among_the_servers_modules() -> None:
    graph = _graph()
    assert len(graph) > 20  # the walk found the package
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    assert cycles == []


def test_the_router_imports_on_its_own() -> None:
    # The cycle the issue found: routing -> pipeline -> routing.
    done = subprocess.run(
        [sys.executable, "-c", "import llmgateway_server.routing"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
