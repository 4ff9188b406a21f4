"""cifarbench.engine.metrics: per-class accuracy, epoch means, metrics.json and no float64 accumulators."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from cifarbench.engine.metrics import evaluate
from cifarbench.engine.state import TrainState
from cifarbench.engine.step import TrainStep
from tests.helpers.runs import toy_trainer


class Float64Watch(TorchDispatchMode):
    """Records every op that makes a float64 tensor (MPS has none)."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in tree_flatten(out)[0]):
            self.ops.add(str(func))
        return out


def test_training_and_evaluation_keep_no_float64_accumulators(tmp_path, toy_conf):
    trainer = toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=1"])
    with Float64Watch() as watch:
        record = trainer.train_epoch()
        metrics = trainer.evaluate_split("test")
    assert not watch.ops, sorted(watch.ops)
    assert 0 < record["train/loss"] < 10 and metrics["count"] == 64


# ---------------------------------------------------------------------------------------------------- metrics.json
def test_metrics_json_names_each_class_accuracy_and_the_throughput_of_all_sessions():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from cifarbench.engine.hooks.evaluation import EpochEvaluation
    from cifarbench.engine.hooks.metrics_file import metrics_payload

    state = TrainState(epoch=2, train_time=4.0, train_samples=1000, history=[{"epoch": 1}, {"epoch": 2}],
                       best={"epoch": 1, "test/acc": 0.55})
    evaluation = EpochEvaluation()
    evaluation.final_test = {"loss": 1.5, "acc": 0.45, "top5": 0.9}
    trainer = SimpleNamespace(
        state=state, cfg=OmegaConf.create({"dataset": {"name": "toy"}, "trainer": {"epochs": 2}}), run_info={},
        model_name="tiny", params=10, gflops=0.5, monitor="test/acc", data=SimpleNamespace(classes=["a", "b", "c"]),
        wall_time_before=100.0, device=torch.device("cpu"), callbacks={}, runtime=SimpleNamespace(precision="bf16"),
        session_time=lambda: 5.0, monitor_split="test", hooks={"evaluation": evaluation},
        stop_reason=None)
    test = {"loss": 1.0, "acc": 0.5, "top5": 1.0, "per_class_acc": [0.1, 0.2, 0.9], "count": 40, "partial": True}
    payload = metrics_payload(trainer, status="completed", test=test)
    assert payload["per_class_acc"] == {"a": 0.1, "b": 0.2, "c": 0.9}
    assert payload["img_per_s"] == 250.0
    assert payload["wall_time_s"] == 105.0 and payload["session_wall_time_s"] == 5.0
    assert payload["epochs"] == 2 and payload["final"] == {"epoch": 2}
    # A test cut short by trainer.limit_eval_batches says so in metrics.json itself.
    assert payload["test"] == {"loss": 1.0, "acc": 0.5, "top5": 1.0, "images": 40, "partial": True}
    # "test" is the selected checkpoint's, picked on the test set here, which the payload says; the final weights'
    # test is kept apart.
    assert payload["selected"] == {"epoch": 1, "monitor": "test/acc", "on_test_set": True, "test_views": "none"}
    assert payload["final_test"] == {"loss": 1.5, "acc": 0.45, "top5": 0.9}
    assert payload["precision"] == "bf16"  # what ran (trainer.precision=auto resolves per device)


# ------------------------------------------------------------------------------------------------ the loop itself
def test_an_epochs_train_loss_and_acc_are_the_per_image_means_of_its_micro_batches(tmp_path, toy_conf, monkeypatch):
    from tests.helpers.runs import toy_trainer

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


def test_per_class_accuracy_is_the_recall_of_each_true_class_and_top5_counts_the_fifth_guess():
    # nn.Identity: the "images" are the logits. Classes 0..9 score 9..0, so the k-th guess is class k - 1.
    ranked = torch.arange(9.0, -1.0, -1.0)
    top5_logits = ranked.repeat(3, 1)
    top5_labels = torch.tensor([0, 4, 5])  # first guess, fifth guess, sixth guess
    # 3-class rows: true classes [0, 0, 0, 1, 1, 2], predicted [0, 0, 1, 1, 2, 2].
    eye = torch.eye(3) * 5
    confusion_logits = eye[torch.tensor([0, 0, 1, 1, 2, 2])]
    confusion_labels = torch.tensor([0, 0, 0, 1, 1, 2])

    top5 = evaluate(nn.Identity(), [(top5_logits, top5_labels)], num_classes=10, device=torch.device("cpu"))
    assert top5["acc"] == pytest.approx(1 / 3) and top5["top5"] == pytest.approx(2 / 3)
    assert top5["loss"] == pytest.approx(float(F.cross_entropy(top5_logits, top5_labels)), rel=1e-6)

    result = evaluate(nn.Identity(), [(confusion_logits[:4], confusion_labels[:4]),
                                      (confusion_logits[4:], confusion_labels[4:])],
                      num_classes=3, device=torch.device("cpu"))
    assert result["count"] == 6 and result["acc"] == pytest.approx(4 / 6)
    assert result["per_class_acc"] == pytest.approx([2 / 3, 1 / 2, 1.0])  # recall, not precision [1, 1/2, 1/2]
    assert result["confusion"].tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
