"""The package's shape: sizes of modules, and which package may import which (no cycles)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cifarbench"
# Cross-cutting modules every package may use; they import no other part of cifarbench (fileio: errors only).
SHARED = {"errors", "device", "distributed", "fileio", "compat"}


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


def test_the_trainer_offers_every_member_of_the_view_callbacks_are_given(tmp_path, toy_conf):
    """TrainerView documents the whole callback API; a Trainer must have all of it (an attribute renamed in the
    loop would otherwise break third-party callbacks silently)."""
    import inspect

    from conftest import toy_trainer

    from cifarbench.engine.hooks import TrainerView

    trainer = toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=1", "+callbacks=[ema,tta]"])
    members = set(TrainerView.__annotations__) | {
        name for name, _ in inspect.getmembers(TrainerView) if not name.startswith("_")}
    assert {"cfg", "model", "state", "hooks", "evaluate_split", "device"} <= members
    assert [name for name in sorted(members) if not hasattr(trainer, name)] == []
    # The hooks, in the order the docs give: built-in ones around the config's callbacks.
    assert list(trainer.hooks) == ["lr_schedule", "evaluation", "best_checkpoint", "tensorboard_extras", "ema", "tta",
                                   "training_windows", "progress", "last_checkpoint", "metrics_file"]
    assert trainer.hooks["evaluation"].test_views == "flip"  # TTA told the evaluation hook how to test


def test_a_config_callback_may_not_take_a_built_in_hooks_name(tmp_path, toy_conf):
    import pytest
    from conftest import toy_trainer

    from cifarbench.errors import ConfigError

    with pytest.raises(ConfigError, match="callbacks.progress is built in"):
        toy_trainer(toy_conf, tmp_path / "run", ["+callbacks.progress._target_=toy_callbacks.StepCounter"])
