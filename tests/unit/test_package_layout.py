"""The package's structure: import direction, no cycles, module sizes, and how checkpoints are read."""

from __future__ import annotations

import ast

import pytest

from tests.helpers.paths import REPO
from tests.helpers.runs import toy_trainer

PACKAGE = REPO / "cifarbench"


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


# ------------------------------------------------------------------------------------ package-level direction
# Cross-cutting modules every package may use; they import no other part of cifarbench (fileio: errors only).
SHARED = {"errors", "device", "distributed", "fileio", "compat"}


def _unit(module: str) -> str | None:
    """The package (or top-level module) a dotted cifarbench module belongs to, e.g. 'engine' or 'config'."""
    parts = module.split(".")
    return parts[1] if parts[0] == "cifarbench" and len(parts) > 1 else None


def package_level_imports() -> dict[str, set[str]]:
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
    graph = package_level_imports()
    assert find_cycle(graph) is None, (find_cycle(graph), {k: sorted(v) for k, v in sorted(graph.items())})


def test_the_shared_helpers_import_no_other_part_of_cifarbench():
    graph = package_level_imports()
    assert {unit: sorted(graph.get(unit, set()) - {"errors"}) for unit in SHARED} == {unit: [] for unit in SHARED}


def test_data_and_models_import_neither_config_nor_the_engine():
    graph = package_level_imports()
    for low in ("data", "models"):
        assert not graph.get(low, set()) & {"config", "engine", "checkpoint", "callbacks", "cli", "optim"}, low


def test_the_trainer_offers_every_member_of_the_view_callbacks_are_given(tmp_path, toy_conf):
    """TrainerView documents the whole callback API; a Trainer must have all of it (an attribute renamed in the
    loop would otherwise break third-party callbacks silently)."""
    import inspect

    from cifarbench.engine.hooks import TrainerView

    trainer = toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=1", "+callbacks=[ema,tta]"])
    members = set(TrainerView.__annotations__) | {
        name for name, _ in inspect.getmembers(TrainerView) if not name.startswith("_")}
    assert {"cfg", "model", "state", "hooks", "evaluate_split", "device"} <= members
    assert [name for name in sorted(members) if not hasattr(trainer, name)] == []
    # The hooks, in the order the docs give: built-in ones around the config's callbacks.
    assert list(trainer.hooks) == ["lr_schedule", "evaluation", "best_checkpoint", "time_to_target",
                                   "tensorboard_extras", "ema", "tta", "training_windows", "progress",
                                   "last_checkpoint", "metrics_file"]
    assert trainer.hooks["evaluation"].test_views == "flip"  # TTA told the evaluation hook how to test


def test_a_config_callback_may_not_take_a_built_in_hooks_name(tmp_path, toy_conf):
    import pytest

    from cifarbench.errors import ConfigError

    with pytest.raises(ConfigError, match="callbacks.progress is built in"):
        toy_trainer(toy_conf, tmp_path / "run",
                    ["+callbacks.progress._target_=tests.helpers.toy_callbacks.StepCounter"])
