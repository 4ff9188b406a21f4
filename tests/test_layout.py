"""The package's shape: sizes of modules, and which package may import which (no cycles)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cifarbench"
# Cross-cutting modules every package may use; they import no other part of cifarbench (fileio: errors only).
SHARED = {"errors", "device", "distributed", "fileio"}


def _unit(module: str) -> str | None:
    """The package (or top-level module) a dotted cifarbench module belongs to, e.g. 'engine' or 'config'."""
    parts = module.split(".")
    return parts[1] if parts[0] == "cifarbench" and len(parts) > 1 else None


def package_imports() -> dict[str, set[str]]:
    """package -> the other packages its modules import, function-level imports included."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(relative.parts).removesuffix(".__init__")
        unit = _unit(module)
        if unit is None or unit in ("train", "evaluate", "report", "__main__"):
            continue  # the package root and the `python -m` shims
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                other = _unit(name)
                if other and other != unit and (PACKAGE / other).exists() or other in SHARED:
                    if other != unit:
                        graph.setdefault(unit, set()).add(other)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        for nxt in sorted(graph.get(node, ())):
            found = visit(nxt, path + [node])
            if found:
                return found
        return None

    for start in sorted(graph):
        found = visit(start, [])
        if found:
            return found
    return None


def test_no_two_packages_import_each_other_even_through_others():
    graph = package_imports()
    assert find_cycle(graph) is None, (find_cycle(graph), {k: sorted(v) for k, v in sorted(graph.items())})


def test_the_shared_helpers_import_no_other_part_of_cifarbench():
    graph = package_imports()
    assert {unit: sorted(graph.get(unit, set()) - {"errors"}) for unit in SHARED} == {unit: [] for unit in SHARED}


def test_data_and_models_import_neither_config_nor_the_engine():
    graph = package_imports()
    for low in ("data", "models"):
        assert not graph.get(low, set()) & {"config", "engine", "checkpoint", "callbacks", "cli", "optim"}, low
