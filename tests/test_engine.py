"""The engine's contracts: every stateful part goes through one registry (a new callback with state resumes exactly
with no checkpoint code of its own), last.pt files of the older layout still resume, and the import graph stays
clean (callbacks never import the loop; no cycles)."""

from __future__ import annotations

import ast

import pytest
import torch
from conftest import REPO, compose_config, stopped_then_resumed, toy_trainer

from cifarbench import checkpoint
from cifarbench.engine.state import TrainState
from cifarbench.errors import CheckpointError, ConfigError, ResumeRefusedError

COUNTER = ["+callbacks.counter._target_=toy_callbacks.StepCounter"]


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


EXTRA = ["trainer.epochs=3", "trainer.resume=auto", "+callbacks=[ema,swa]", "callbacks.ema.decay=0.9",
         "callbacks.swa.start_epoch=2", "callbacks.swa.anneal_epochs=1", "callbacks.swa.lr=0.02", "mix=cutmix"]


@pytest.mark.slow
def test_a_new_stateful_callback_is_checkpointed_and_resumed_exactly(tmp_path, toy_conf, monkeypatch):
    straight, resumed = stopped_then_resumed(toy_conf, tmp_path, monkeypatch, EXTRA + COUNTER)
    counter, again = straight.callbacks["counter"], resumed.callbacks["counter"]
    assert counter.steps == straight.state.global_step == 3 * 256 // 16
    assert (again.steps, again.pixel_sum) == (counter.steps, counter.pixel_sum)
    assert checkpoint.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["callbacks"]["counter"] == {
        "steps": counter.steps, "pixel_sum": counter.pixel_sum}
    assert same_weights(resumed.model, straight.model)


def as_layout_1(payload: dict) -> dict:
    """last.pt as cifarbench wrote it before the engine: state fields and EMA/SWA at the top level."""
    old = {k: v for k, v in payload.items() if k not in ("state", "callbacks", "layout")}
    old.update(payload["state"])
    old["ema"], old["swa"] = payload["callbacks"]["ema"], payload["callbacks"]["swa"]
    return old


@pytest.mark.slow
def test_a_last_pt_of_the_older_layout_resumes_exactly(tmp_path, toy_conf, monkeypatch):
    straight, resumed = stopped_then_resumed(toy_conf, tmp_path, monkeypatch, EXTRA, rewrite=as_layout_1)
    assert resumed.state.global_step == straight.state.global_step
    assert same_weights(resumed.model, straight.model)
    assert same_weights(resumed.callbacks["ema"].ema.module, straight.callbacks["ema"].ema.module)
    assert resumed.state.history[-1]["test_ema/acc"] == straight.state.history[-1]["test_ema/acc"]


def test_an_unknown_last_pt_layout_or_other_callbacks_get_a_clear_message(tmp_path, toy_conf):
    toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=1", "+callbacks=ema"]).fit()
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    with pytest.raises(ResumeRefusedError, match=r"different config \(callbacks.ema: \{.*\} -> \(absent\)\)"):
        toy_trainer(toy_conf, tmp_path / "other", [f"trainer.resume={last}", "trainer.epochs=1"])
    payload = checkpoint.load_checkpoint(last)
    checkpoint.save_checkpoint(tmp_path / "future.pt", {**payload, "layout": 99})
    with pytest.raises(CheckpointError, match=r"future.pt has a last.pt layout \(99\)"):
        toy_trainer(toy_conf, tmp_path / "other", [f"trainer.resume={tmp_path / 'future.pt'}", "+callbacks=ema"])


def test_the_training_state_is_one_dataclass_saved_whole(tmp_path, toy_conf):
    trainer = toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=1"])
    trainer.fit()
    saved = checkpoint.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    from cifarbench.compat import LAYOUT1_STATE_FIELDS, STATE_FIELDS_ADDED

    assert set(saved["state"]) == set(TrainState().state_dict()) == set(LAYOUT1_STATE_FIELDS) | set(STATE_FIELDS_ADDED)
    assert saved["state"] == trainer.state.state_dict()


def test_callbacks_come_from_the_command_line_or_an_experiment_file(tmp_path):
    assert list(compose_config(["+callbacks=[ema,swa]", "callbacks.swa.lr=0.01"]).callbacks) == [
        "tensorboard_extras", "ema", "swa"]
    experiments = tmp_path / "conf" / "experiment"
    experiments.mkdir(parents=True)
    (experiments / "with_ema.yaml").write_text(
        "# @package _global_\ndefaults:\n  - /callbacks: ema\ncallbacks:\n  ema:\n    decay: 0.99\n"
    )
    search = [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "experiment=with_ema"]
    assert compose_config(search).callbacks.ema.decay == 0.99
    assert compose_config(search + ["callbacks.ema.decay=0.5"]).callbacks.ema.decay == 0.5  # a sweep can override it
    assert "tensorboard_extras" not in compose_config(["~callbacks.tensorboard_extras"]).callbacks


def test_distillation_without_a_teacher_is_one_clear_error(tmp_path, toy_conf):
    with pytest.raises(ConfigError, match=r"loss=distillation needs loss.teacher="):
        toy_trainer(toy_conf, tmp_path / "run", ["loss=distillation"])


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


