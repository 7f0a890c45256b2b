"""The package's shape: every module says what it exports, and its imports form no circle."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fusiond"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if not name.endswith("__main__"):
            out[name] = path
    return out


def _imports(tree: ast.Module, lazy: bool) -> list[ast.ImportFrom | ast.Import]:
    """Top-level imports (with ``lazy``, those inside functions too), TYPE_CHECKING left out."""
    out: list[ast.ImportFrom | ast.Import] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.append(node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if lazy:
                    visit(node.body)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit([n for n in getattr(node, field, []) if isinstance(n, ast.AST)])

    visit(tree.body)
    return out


def test_every_module_lists_its_exports_and_exports_what_others_import():
    modules = _modules()
    wanted: dict[str, set[str]] = {}
    for path in modules.values():
        for node in _imports(ast.parse(path.read_text()), lazy=True):
            if isinstance(node, ast.ImportFrom) and node.module in modules and node.level == 0:
                wanted.setdefault(node.module, set()).update(a.name for a in node.names)
    problems = []
    for name in modules:
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        if exported is None:
            problems.append(f"{name}: no __all__")
            continue
        problems += [
            f"{name}.__all__ names {x!r}, which it lacks" for x in exported if not hasattr(module, x)
        ]
        lacking = {x for x in wanted.get(name, ()) if x not in exported and f"{name}.{x}" not in modules}
        lacking = {x for x in lacking if not x.startswith("__")}  # __version__ and the like
        problems += [f"{name}.__all__ lacks {x!r}, which another module imports" for x in sorted(lacking)]
    assert not problems, "\n".join(problems)


def test_no_module_imports_itself_through_a_circle():
    """Import-time and call-time imports alike (TYPE_CHECKING ones aside): a circle means
    two modules that cannot be read, tested or changed apart."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in _imports(ast.parse(path.read_text()), lazy=True):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                candidates = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            # A package's own modules importing its __init__ is how a package is read, not a circle.
            targets |= {c for c in candidates if c in modules and c != name and not name.startswith(c + ".")}
        graph[name] = targets
    circles = []
    seen: set[str] = set()
    for start in graph:  # a path from one of a module's imports back to it is a circle
        for first in graph[start]:
            stack, visited = [(first, [start, first])], set()
            while stack:
                node, path = stack.pop()
                if node == start:
                    key = frozenset(path)
                    if key not in seen:
                        seen.add(key)
                        circles.append(" -> ".join(path))
                    break
                if node in visited:
                    continue
                visited.add(node)
                stack += [(n, [*path, n]) for n in graph[node]]
    assert not circles, "\n".join(circles)
