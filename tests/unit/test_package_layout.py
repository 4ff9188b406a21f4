"""The package's structure: import direction, no cycles, module sizes, and how checkpoints are read."""

from __future__ import annotations

import ast

import pytest

from tests.helpers.paths import REPO


# ----------------------------------------------------------------------------------------------- import graph
def package_imports() -> dict[str, set[str]]:
    """Module -> the cifarbench modules it imports at module level (imports inside functions are deferred)."""
    graph = {}
    package = REPO / "cifarbench"
    for path in package.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        targets = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cifarbench"):
                targets.add(node.module)
                targets.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("cifarbench"))
        graph[name] = targets
    return {name: {t for t in targets if t in graph and t != name} for name, targets in graph.items()}


def test_callbacks_and_tricks_never_import_the_loop():
    graph = package_imports()
    for name in graph:
        if name.startswith(("cifarbench.engine", "cifarbench.callbacks")) or name == "cifarbench.loggers.tensorboard":
            assert "cifarbench.engine.trainer" not in graph[name], name


def test_the_package_has_no_import_cycles():
    graph, state = package_imports(), {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                pytest.fail("import cycle: " + " -> ".join([*path, name, target]))
            if target not in state:
                visit(target, [*path, name])
        state[name] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_no_module_of_the_package_is_over_400_lines_and_the_loop_is_at_most_300():
    long = {str(p.relative_to(REPO)): n for p in (REPO / "cifarbench").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    loop = len((REPO / "cifarbench" / "engine" / "trainer.py").read_text().splitlines())
    assert not long and loop <= 300, (long, loop)


def test_source_loads_checkpoints_only_with_weights_only_and_evaluates_no_strings():
    """Checkpoints are read with torch.load(weights_only=True); no eval/exec/pickle.load anywhere in the package."""
    offenders = []
    for source in (REPO / "cifarbench").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name in ("eval", "exec", "pickle.load", "pickle.loads", "marshal.loads"):
                offenders.append(f"{source.name}:{node.lineno} {name}")
            if name == "torch.load":
                flags = {k.arg: k.value for k in node.keywords}
                if not (isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True):
                    offenders.append(f"{source.name}:{node.lineno} torch.load without weights_only=True")
    assert not offenders
