"""Fast guards on the engine's arithmetic, each written for a mutation that the rest of the suite let through:
short accumulation groups, the optimizer-step count, best-model selection, the end-of-run test on best.pt, the
logged learning rate, the metrics.json payload, and what the loop itself does with them (epoch means, the last
checkpoint, callbacks per optimizer step)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cifarbench.engine.state import TrainState
from cifarbench.engine.step import TrainStep, optimizer_steps
from cifarbench.losses.cross_entropy import CrossEntropy


def _linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(4, 3, bias=False)


def _train_step(model: nn.Module, accumulate_steps: int, lr: float = 1.0) -> TrainStep:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return TrainStep(model=model, train_model=model, ddp=None, optimizer=optimizer,
                     scaler=torch.amp.GradScaler("cpu", enabled=False), loss=CrossEntropy(), mixer=None,
                     mix_generator=None, device=torch.device("cpu"), precision="32",
                     accumulate_steps=accumulate_steps, grad_clip_norm=None, nonfinite="stop", max_skipped_steps=0)


def test_a_short_last_accumulation_group_steps_with_the_mean_gradient_of_its_own_micro_batches():
    """3 micro-batches in groups of 2: the first step takes the mean gradient of micro-batches 1 and 2, the second
    the whole gradient of micro-batch 3 alone (divided by its group's size, 1, not by accumulate_steps)."""
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(3)]
    model, reference = _linear(), _linear()
    step, state = _train_step(model, accumulate_steps=2), TrainState()
    stepped = []
    for index, (images, labels) in enumerate(batches, start=1):
        state.step_in_epoch = index
        stepped.append(step(images, labels, state, steps_in_epoch=3)[3])
    assert stepped == [False, True, True] and state.global_step == 2

    sgd = torch.optim.SGD(reference.parameters(), lr=1.0)
    for images, labels in ((torch.cat([batches[0][0], batches[1][0]]), torch.cat([batches[0][1], batches[1][1]])),
                           batches[2]):
        sgd.zero_grad()
        nn.functional.cross_entropy(reference(images), labels).backward()
        sgd.step()
    torch.testing.assert_close(model.weight, reference.weight, rtol=0, atol=1e-6)


def test_optimizer_steps_counts_a_fractional_last_epochs_short_group_as_the_loop_steps_it():
    """optimizer_steps (Lookahead's total) must equal the steps the loop's group rule takes, fractional epochs too."""
    def loop_steps(micro_batches: int, per_epoch: int, accumulate: int) -> int:
        step, taken = _train_step(_linear(), accumulate), 0
        for start in range(0, micro_batches, per_epoch):
            in_epoch = min(per_epoch, micro_batches - start)
            taken += sum(step.at_group_end(i, in_epoch) for i in range(1, in_epoch + 1))
        return taken

    assert optimizer_steps(7, 5, 2) == 4  # epoch 1: 2 + 2 + 1; the 2 micro-batches of epoch 2: one step
    assert optimizer_steps(6, 5, 2) == 4  # the single micro-batch of epoch 2 steps too
    for micro_batches, per_epoch, accumulate in ((7, 5, 2), (6, 5, 2), (10, 5, 2), (11, 4, 3), (9, 9, 4), (3, 5, 2)):
        assert optimizer_steps(micro_batches, per_epoch, accumulate) == loop_steps(micro_batches, per_epoch,
                                                                                    accumulate)


# ------------------------------------------------------------------------------------- best model, test on best.pt
class _Checkpoints:
    enabled = True

    def __init__(self):
        self.saved = []

    def save_best(self, model, epoch, record):
        self.saved.append(epoch)


def test_a_later_epoch_that_only_ties_the_best_does_not_replace_best_pt():
    from types import SimpleNamespace

    from cifarbench.engine.hooks.evaluation import BestCheckpoint

    trainer = SimpleNamespace(state=TrainState(), monitor="val/acc", checkpoints=_Checkpoints())
    for epoch, acc in ((1, 0.5), (2, 0.5), (3, 0.4), (4, float("nan")), (5, 0.75), (6, 0.75)):
        trainer.state.epoch = epoch
        BestCheckpoint().update(trainer, {"epoch": epoch, "val/acc": acc}, None)
    assert trainer.checkpoints.saved == [1, 5]
    assert trainer.state.best == {"epoch": 5, "val/acc": 0.75}


def test_the_last_epoch_is_evaluated_whatever_eval_every_n_epochs_says():
    from types import SimpleNamespace

    from cifarbench.engine.hooks.evaluation import EpochEvaluation

    for every, expected in ((2, [False, True, False, True, True]), (0, [False] * 4 + [True]),
                            (1, [True] * 5), (3, [False, False, True, False, True])):
        hook = EpochEvaluation(every)
        assert [hook.is_due(epoch, 5) for epoch in range(1, 6)] == expected, every
        # ... and the hook acts on it: a record gets metrics exactly in the epochs that are due.
        records = []
        for epoch in range(1, 6):
            trainer = SimpleNamespace(state=TrainState(epoch=epoch), epochs=5)
            hook.evaluate = lambda trainer: {"val/acc": 0.5}
            record = {"epoch": epoch}
            hook.on_epoch_end(trainer, record)
            records.append("val/acc" in record)
        assert records == expected, every


def test_the_final_test_runs_on_the_weights_of_best_pt_not_on_the_last_ones(tmp_path):
    from types import SimpleNamespace

    from cifarbench import checkpoint
    from cifarbench.engine.hooks.evaluation import EpochEvaluation
    from cifarbench.engine.metrics import evaluate

    g = torch.Generator().manual_seed(3)
    batch = (torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g))
    best, last = _linear(0), _linear(1)
    checkpoint.save_checkpoint(tmp_path / "checkpoints" / "best.pt", {"kind": "best", "model": best.state_dict()})
    trainer = SimpleNamespace(runtime=SimpleNamespace(dist=SimpleNamespace(is_main=True)), run_dir=tmp_path,
                              model=last, checkpoints=_Checkpoints(), monitor="test/acc", state=TrainState())
    trainer.evaluate_split = lambda split, model=None, predict=None: evaluate(
        model or trainer.model, [batch], num_classes=3, device=torch.device("cpu"))
    expected = evaluate(best, [batch], num_classes=3, device=torch.device("cpu"))
    assert expected["loss"] != evaluate(last, [batch], num_classes=3, device=torch.device("cpu"))["loss"]
    test = EpochEvaluation().test(trainer)
    assert test["loss"] == expected["loss"] and test["acc"] == expected["acc"]
    assert torch.equal(trainer.model.weight, best.weight)


# ------------------------------------------------------------------------------------------ optimizers and lr logs
def _two_param_optimizer():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    return torch.optim.SGD([{"params": [a], "lr": 0.1, "name": "a"}, {"params": [b], "lr": 0.3, "name": "b"}]), a, b


def test_the_logged_lr_is_the_first_param_groups_and_each_group_is_named():
    from cifarbench.optim.optimizer_sets import learning_rates

    optimizer, _, _ = _two_param_optimizer()
    assert learning_rates(optimizer) == {"lr": 0.1, "lr/a": 0.1, "lr/b": 0.3}
    single = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.2)
    assert learning_rates(single) == {"lr": 0.2}


def test_an_optimizer_set_zeroes_and_steps_every_member():
    from cifarbench.optim.optimizer_sets import OptimizerSet

    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    optimizers = OptimizerSet({"optimizer": torch.optim.SGD([a], lr=0.5), "muon": torch.optim.SGD([b], lr=0.25)})
    for param in (a, b):
        param.grad = torch.ones_like(param)
    optimizers.step()
    assert torch.equal(a.detach(), torch.full((2,), 0.5)) and torch.equal(b.detach(), torch.full((3,), 0.75))
    optimizers.zero_grad()
    assert a.grad is None and b.grad is None


# ---------------------------------------------------------------------------------------------------- metrics.json
def test_metrics_json_names_each_class_accuracy_and_the_throughput_of_all_sessions():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from cifarbench.engine.hooks.metrics_file import metrics_payload

    state = TrainState(epoch=2, train_time=4.0, train_samples=1000, history=[{"epoch": 1}, {"epoch": 2}])
    trainer = SimpleNamespace(
        state=state, cfg=OmegaConf.create({"dataset": {"name": "toy"}, "trainer": {"epochs": 2}}), run_info={},
        model_name="tiny", params=10, gflops=0.5, monitor="test/acc", data=SimpleNamespace(classes=["a", "b", "c"]),
        wall_time_before=100.0, device=torch.device("cpu"), callbacks={}, runtime=SimpleNamespace(precision="bf16"),
        session_time=lambda: 5.0)
    test = {"loss": 1.0, "acc": 0.5, "top5": 1.0, "per_class_acc": [0.1, 0.2, 0.9]}
    payload = metrics_payload(trainer, status="completed", test=test)
    assert payload["per_class_acc"] == {"a": 0.1, "b": 0.2, "c": 0.9}
    assert payload["img_per_s"] == 250.0
    assert payload["wall_time_s"] == 105.0 and payload["session_wall_time_s"] == 5.0
    assert payload["epochs"] == 2 and payload["final"] == {"epoch": 2}
    assert payload["test"] == {"loss": 1.0, "acc": 0.5, "top5": 1.0}
    assert payload["precision"] == "bf16"  # what ran (trainer.precision=auto resolves per device)


# ------------------------------------------------------------------------------------------------ the loop itself
def test_an_epochs_train_loss_and_acc_are_the_per_image_means_of_its_micro_batches(tmp_path, toy_conf, monkeypatch):
    from conftest import toy_trainer

    seen = []
    original = TrainStep.__call__

    def recording(self, images, labels, state, steps_in_epoch, **kwargs):
        out = original(self, images, labels, state, steps_in_epoch, **kwargs)
        loss, logits, targets, _ = out
        seen.append((float(loss.detach()) * len(labels), int((logits.argmax(1) == targets).sum()), len(labels)))
        return out

    monkeypatch.setattr(TrainStep, "__call__", recording)
    trainer = toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=1", "dataset.source.train_size=96"])
    trainer.fit()
    record = trainer.state.history[0]
    images = sum(n for _, _, n in seen)
    assert len(seen) == 6 and images == 96
    assert abs(record["train/loss"] - sum(loss for loss, _, _ in seen) / images) < 1e-5
    assert record["train/acc"] == sum(correct for _, correct, _ in seen) / images


def test_the_last_epoch_is_saved_even_off_the_checkpoint_interval(tmp_path, toy_conf):
    from conftest import toy_trainer

    from cifarbench import checkpoint

    toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=1", "trainer.checkpoint_every_n_epochs=2",
                                             "dataset.source.train_size=32"]).fit()
    last = checkpoint.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["epoch"] == 1 and last["state"]["global_step"] == 2


def test_callbacks_see_optimizer_steps_not_micro_batches_and_ema_keeps_its_interval(tmp_path, toy_conf):
    """accumulate_steps=2: 8 micro-batches make 4 optimizer steps; the loop calls on_optimizer_step 4 times, and EMA
    with update_every=2 folds in the weights after steps 2 and 4 only."""
    from conftest import toy_trainer

    trainer = toy_trainer(toy_conf, tmp_path / "run", [
        "trainer.epochs=1", "dataset.source.train_size=128", "trainer.accumulate_steps=2", "+callbacks=ema",
        "callbacks.ema.update_every=2", "+callbacks.counter._target_=toy_callbacks.StepCounter"])
    trainer.fit()
    assert trainer.state.global_step == 4 == trainer.callbacks["counter"].steps
    assert trainer.callbacks["ema"].ema.num_updates == 2


def test_each_callback_model_is_evaluated_with_its_own_weights():
    from types import SimpleNamespace

    from cifarbench.engine.hooks.evaluation import EpochEvaluation

    def score(model: nn.Module) -> float:
        return float(model.weight.detach().sum())

    trained, averaged = _linear(0), _linear(1)
    trainer = SimpleNamespace(
        monitor_split="val", model=trained, runtime=SimpleNamespace(dist=SimpleNamespace(is_main=True)),
        evaluate_split=lambda split, model=None: {"loss": score(model or trained), "acc": 0.5, "top5": 1.0})
    evaluation = EpochEvaluation()
    evaluation.add_model("ema", averaged)
    record = evaluation.evaluate(trainer)
    assert score(trained) != score(averaged)
    assert record == {"val/loss": score(trained), "val/acc": 0.5, "val/top5": 1.0,
                      "val_ema/loss": score(averaged), "val_ema/acc": 0.5, "val_ema/top5": 1.0}


def test_a_layout_1_last_pt_is_upgraded_with_both_ema_and_swa_under_callbacks():
    from pathlib import Path

    from cifarbench.compat import LAST_LAYOUT, LAYOUT1_STATE_FIELDS, upgrade_last

    state = TrainState(epoch=2, global_step=8).state_dict()
    old = {"kind": "last", "model": {"w": torch.ones(1)}, "ema": {"num_updates": 8}, "swa": {"scheduler": None},
           **{name: state[name] for name in LAYOUT1_STATE_FIELDS}}
    upgraded = upgrade_last(old, Path("last.pt"))
    assert upgraded["layout"] == LAST_LAYOUT
    assert upgraded["callbacks"] == {"ema": {"num_updates": 8}, "swa": {"scheduler": None}}
    # The fields added since layout 1 get the values that describe a run saved before them.
    assert upgraded["state"] == {**{name: state[name] for name in LAYOUT1_STATE_FIELDS}, "wall_time_s": 0.0,
                                 "sessions": []}
    assert set(upgraded) == {"kind", "model", "callbacks", "state", "layout"}
    no_swa = upgrade_last({**old, "swa": None}, Path("last.pt"))
    assert no_swa["callbacks"] == {"ema": {"num_updates": 8}}


# ------------------------------------------------------------------------------------------ the LR schedule hook
def test_the_lr_schedule_is_a_hook_stepped_once_per_optimizer_step_and_held_by_swa(tmp_path, toy_conf):
    """Built in and first: without SWA the schedule takes every optimizer step (3 epochs x 16); with SWA from the
    end of epoch 2 it stops there (2 x 16) and SWALR sets the lr of epoch 3."""
    from conftest import toy_trainer

    plain = toy_trainer(toy_conf, tmp_path / "plain", ["trainer.epochs=3"])
    assert list(plain.hooks)[:3] == ["lr_schedule", "evaluation", "best_checkpoint"]  # then the callbacks
    assert plain.hooks["lr_schedule"].scheduler is plain.scheduler
    plain.fit()
    assert plain.scheduler.last_epoch == plain.state.global_step == 48
    swa = toy_trainer(toy_conf, tmp_path / "swa", ["trainer.epochs=3", "+callbacks=swa",
                                                   "callbacks.swa.start_epoch=2", "callbacks.swa.lr=0.0123",
                                                   "callbacks.swa.anneal_epochs=0"])
    swa.fit()
    assert swa.state.global_step == 48 and swa.scheduler.last_epoch == 32
    assert swa.state.history[-1]["lr"] == pytest.approx(0.0123)


def test_a_callback_cannot_take_the_name_of_a_built_in_hook():
    from cifarbench.engine.hooks import build_callbacks
    from cifarbench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"callbacks.lr_schedule is built in"):
        build_callbacks({"lr_schedule": {"_target_": "cifarbench.callbacks.lookahead.Lookahead"}})


def test_ddp_is_rebuilt_when_the_set_of_trainable_parameters_changes():
    """Whoever freezes a parameter (a training window, a callback's on_epoch_start), the step sees the change."""
    model = _linear()
    step = _train_step(model, accumulate_steps=1)
    assert not step.trainable_changed()  # no DDP: nothing to rebuild
    step.ddp = "a DDP wrapper"
    assert not step.trainable_changed()
    model.weight.requires_grad_(False)
    assert step.trainable_changed()
    step.rewrap("a new DDP wrapper", model)
    assert not step.trainable_changed() and step.ddp == "a new DDP wrapper"
