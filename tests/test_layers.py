"""The house's floors, read from the source: `mixer_core` ← `sweeps` ← `dashboards` ← `mixer_cli`. Imports only go
down (function-level imports included), no module imports itself back through others, and no string import hides
an arrow."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ["mixer_core", "sweeps", "dashboards", "mixer_cli"]  # lowest first


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_modules() -> dict[str, ast.Module]:
    return {
        _module_name(path): ast.parse(path.read_text(), str(path))
        for floor in FLOORS
        for path in sorted((ROOT / floor).rglob("*.py"))
    }


def imported_modules(module: str, tree: ast.Module, known: set[str], is_package: bool = False) -> set[str]:
    """The modules of `known` that `module` imports anywhere in its body; `from a import b` counts `a.b` when that
    is a module, else `a`."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known and name != module)
    return found


def import_graph() -> dict[str, set[str]]:
    """Every package module -> the package modules it imports."""
    modules = _package_modules()
    known = set(modules)
    return {
        module: imported_modules(module, tree, known, (ROOT / module.replace(".", "/") / "__init__.py").is_file())
        for module, tree in modules.items()
    }


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """`a -> b` for every import of a module on a higher floor than the importer's."""
    floor = lambda module: FLOORS.index(module.split(".")[0])  # noqa: E731
    return [f"{a} -> {b}" for a, targets in sorted(graph.items()) for b in sorted(targets) if floor(b) > floor(a)]


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Each import cycle found by a depth-first walk, as `a -> b -> a`."""
    found, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                found.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_imports_only_go_down():
    assert upward_imports(import_graph()) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_no_string_imports_in_package_code():
    offenders = [
        f"{module}:{node.lineno}"
        for module, tree in _package_modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", ""))
        in {"import_module", "__import__"}
    ]
    assert offenders == []


def test_the_checks_find_a_planted_upward_import_and_cycle():
    known = {"mixer_core.a", "sweeps.b", "sweeps.c"}
    inside_a_function = ast.parse("def f():\n    from sweeps.b import thing\n")
    assert imported_modules("mixer_core.a", inside_a_function, known) == {"sweeps.b"}
    assert imported_modules("sweeps.c", ast.parse("from .b import thing\n"), known) == {"sweeps.b"}
    assert imported_modules("sweeps.c", ast.parse("from sweeps import b\n"), known) == {"sweeps.b"}
    graph = {"mixer_core.a": {"sweeps.b"}, "sweeps.b": {"sweeps.c"}, "sweeps.c": {"sweeps.b"}}
    assert upward_imports(graph) == ["mixer_core.a -> sweeps.b"]
    assert cycles(graph) == ["sweeps.b -> sweeps.c -> sweeps.b"]


def test_no_package_function_is_longer_than_80_lines():
    long_functions = [
        f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for module, tree in _package_modules().items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80
    ]
    assert long_functions == []
