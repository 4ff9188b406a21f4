"""cifarbench.engine.step: gradient accumulation, non-finite losses, fp16 loss scaling and DDP rebuilds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cifarbench import checkpoint
from cifarbench.engine.state import TrainState
from cifarbench.engine.step import TrainStep, optimizer_steps
from cifarbench.engine.trainer import Trainer
from cifarbench.errors import CifarbenchError
from cifarbench.losses.cross_entropy import CrossEntropy
from tests.helpers.compare import assert_same_weights, same_weights
from tests.helpers.config import compose_config, toy_overrides
from tests.helpers.faulty import FAULTY
from tests.helpers.runs import SMALL, toy_trainer, train_in_process
from tests.helpers.toy_models import _linear


class NanOnCalls(torch.nn.Module):
    """Wraps the training model: NaN logits on the chosen training forward passes (1-based)."""

    def __init__(self, model: torch.nn.Module, calls: set[int]):
        super().__init__()
        self.model, self.calls, self.count = model, calls, 0

    def forward(self, x):
        out = self.model(x)
        self.count += 1
        return out * float("nan") if self.count in self.calls else out


@pytest.mark.parametrize("bad_micro_batch", [1, 2])
def test_skip_mode_skips_a_whole_accumulation_group(bad_micro_batch, tmp_path, toy_conf):
    """A non-finite loss on either micro-batch of a group skips that group's optimizer step and nothing else: the
    run ends with the weights of a run whose first group was never taken."""
    extra = ["trainer.epochs=1", "trainer.accumulate_steps=2", "trainer.nonfinite=skip"]
    poisoned = toy_trainer(toy_conf, tmp_path / "poisoned", extra)
    poisoned.step.train_model = NanOnCalls(poisoned.step.train_model, {bad_micro_batch})
    result = poisoned.fit()
    assert result["skipped_steps"] == 1 and poisoned.state.global_step == 256 // 32 - 1
    assert all(torch.isfinite(w).all() for w in poisoned.model.state_dict().values())

    # The same run with the first group's two micro-batches both poisoned: the reference for "group skipped".
    reference = toy_trainer(toy_conf, tmp_path / "reference", extra)
    reference.step.train_model = NanOnCalls(reference.step.train_model, {1, 2})
    reference.fit()
    assert same_weights(poisoned.model.state_dict(), reference.model.state_dict())


# ------------------------------------------------------------------------------------------------ fp16 step
@pytest.fixture
def fp16_on_cpu(monkeypatch):
    """Let precision 16 run on the CPU (refused for users: it is slow there), so the GradScaler path runs."""
    monkeypatch.setattr("cifarbench.engine.runtime.check_device_precision", lambda device, precision: None)


def test_fp16_overflow_step_is_skipped_and_the_scale_backs_off(tmp_path, toy_conf, fp16_on_cpu):
    trainer = toy_trainer(toy_conf, tmp_path / "run", ["trainer.precision=16", "trainer.epochs=1"])
    assert trainer.scaler.is_enabled()
    initial_scale = trainer.scaler.get_scale()
    weight = trainer.model.fc.weight
    overflow_once = [True]

    def inf_on_first_backward(grad):
        if overflow_once.pop() if overflow_once else False:
            return grad * float("inf")
        return grad

    weight.register_hook(inf_on_first_backward)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    images, labels = next(iter(trainer.loaders.train))
    trainer.state.step_in_epoch = 1
    trainer.train_step(images, labels, len(trainer.loaders.train))
    assert same_weights(trainer.model.state_dict(), before), "an overflowing fp16 step changed the weights"
    assert trainer.scaler.get_scale() == initial_scale * trainer.scaler.get_backoff_factor()

    trainer.state.step_in_epoch = 2
    trainer.train_step(images, labels, len(trainer.loaders.train))
    assert not same_weights(trainer.model.state_dict(), before), "the next, finite step did not update"


def test_fp16_gradient_clipping_sees_unscaled_gradients(tmp_path, toy_conf, fp16_on_cpu, monkeypatch):
    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters]))))
        return clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    trainer = toy_trainer(toy_conf, tmp_path / "run", ["trainer.precision=16", "trainer.epochs=1",
                                                       "trainer.grad_clip_norm=1.0"])
    result = trainer.fit()
    assert len(norms) == trainer.state.global_step == 256 // 16
    # Scaled gradients would be ~65536x the unscaled ones; a cross-entropy gradient of this net is O(1).
    assert 0 < max(norms) < 100, norms
    assert result["status"] == "completed" and math.isfinite(result["final"]["train/loss"])


def test_gradient_accumulation_matches_the_larger_batch(tmp_path, toy_conf):
    results = {}
    for name, batch, steps in (("accumulated", 32, 2), ("plain", 64, 1)):
        cfg = compose_config(toy_overrides(toy_conf, batch) + ["trainer.epochs=1", f"trainer.accumulate_steps={steps}"])
        trainer = Trainer(cfg, tmp_path / name, {})
        assert trainer.global_batch == 64
        trainer.fit()
        results[name] = trainer
    assert results["accumulated"].state.global_step == results["plain"].state.global_step == 4
    assert_same_weights(results["accumulated"].model.state_dict(), results["plain"].model.state_dict())


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


def test_a_huge_learning_rate_is_caught_as_a_non_finite_loss(tmp_path):
    """A config-only NaN: lr=1e30 without clipping."""
    with pytest.raises(Exception, match=r"NaN or infinite in epoch 1 at step \d+") as caught:
        train_in_process(SMALL + ["dataset.loader=device", "trainer.epochs=1", "optimizer.lr=1e30"], tmp_path / "run")
    assert isinstance(caught.value, CifarbenchError), (
        f"{type(caught.value).__name__} is not a CifarbenchError, so the CLI prints a traceback instead of the message"
    )
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()


def test_skip_mode_skips_non_finite_steps_up_to_the_limit(tmp_path, fault_models):
    skip = SMALL + FAULTY + ["trainer.epochs=1", "trainer.nonfinite=skip"]
    result = train_in_process(skip + ["+model.nan_steps=[2,4]", "trainer.max_skipped_steps=2"], tmp_path / "ok")
    assert result["status"] == "completed" and result["skipped_steps"] == 2
    assert math.isfinite(result["final"]["train/loss"])
    weights = checkpoint.load_checkpoint(tmp_path / "ok" / "checkpoints" / "last.pt")["model"]
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())

    with pytest.raises(Exception, match=r"trainer.max_skipped_steps=2.*epoch 1, step 5") as caught:
        train_in_process(skip + ["+model.nan_steps=[1,3,5]", "trainer.max_skipped_steps=2"], tmp_path / "over")
    assert isinstance(caught.value, CifarbenchError), "the CLI would print a traceback, not the message"
