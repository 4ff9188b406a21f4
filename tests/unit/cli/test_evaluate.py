"""cifarbench.cli.evaluate in-process: the logged accuracy reproduced, no training loader, fp16 checkpoints on the
CPU, other datasets."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from cifarbench import checkpoint
from cifarbench.cli.evaluate import evaluate_checkpoint
from cifarbench.errors import CheckpointError
from tests.helpers.config import compose_config, tiny_cifar_overrides
from tests.helpers.data import write_cifar100
from tests.helpers.runs import toy_trainer, train_in_process


# ------------------------------------------------------------------------------------------------ smaller ones
def test_evaluate_builds_no_training_loader(tmp_path, toy_conf, monkeypatch):
    toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=1"]).fit()
    from cifarbench.data import loaders

    built = []
    original = loaders.DeviceLoader

    class Recording(original):
        def __init__(self, split, *args, **kwargs):
            built.append(len(split))
            super().__init__(split, *args, **kwargs)

    monkeypatch.setattr(loaders, "DeviceLoader", Recording)
    result = evaluate_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", device="cpu")
    assert built == [64] and result["count"] == 64


def test_an_fp16_checkpoint_is_evaluated_in_fp32_on_the_cpu_with_a_note(tmp_path, toy_conf, capsys):
    toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=1"]).fit()
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    reference = evaluate_checkpoint(best, device="cpu")
    payload = checkpoint.load_checkpoint(best)
    config = OmegaConf.create(payload["config"])
    config.trainer.precision = "16"
    payload["config"] = OmegaConf.to_yaml(config)
    checkpoint.save_checkpoint(tmp_path / "fp16.pt", payload)
    capsys.readouterr()
    result = evaluate_checkpoint(tmp_path / "fp16.pt", device="cpu")
    note = capsys.readouterr().err
    assert "precision 16" in note and "fp32" in note and "trainer.precision" not in note
    assert (result["acc"], result["loss"]) == (reference["acc"], reference["loss"])


def test_evaluate_on_a_dataset_with_other_classes(tmp_path, trained):
    root = write_cifar100(tmp_path / "c100")
    dataset = compose_config(["dataset=cifar100", f"paths.data_dir={root}"], config_name="eval").dataset
    with pytest.raises(CheckpointError) as caught:
        evaluate_checkpoint(trained / "best.pt", device="cpu", dataset_cfg=dataset, data_root=str(root))
    message = str(caught.value)
    assert "10 classes" in message and "100" in message and "airplane" in message and "same classes" in message


def test_evaluate_reproduces_the_logged_test_accuracy(tmp_path, cifar_root):
    run_dir = tmp_path / "run"
    result = train_in_process(tiny_cifar_overrides(cifar_root), run_dir)
    evaluated = evaluate_checkpoint(run_dir / "checkpoints" / "best.pt", device="cpu")
    assert evaluated["acc"] == result["test"]["acc"]
    assert evaluated["count"] == 60
    assert evaluated["loss"] == pytest.approx(result["test"]["loss"], rel=1e-6)
    assert len(evaluated["per_class_acc"]) == 10


def test_evaluate_reproduces_a_runs_selective_tta_and_reports_its_cost(tmp_path, cifar_root):
    """The run's final test (flip TTA for the images below 0.99 confidence) and cifarbench.evaluate with the same
    options agree on the accuracy and on what the TTA cost; without the bar, every image takes both views."""
    from cifarbench.errors import ConfigError

    run_dir = tmp_path / "run"
    result = train_in_process(tiny_cifar_overrides(cifar_root) + [
        "+callbacks=tta", "callbacks.tta.mode=flip", "callbacks.tta.below_confidence=0.99"], run_dir)
    best = run_dir / "checkpoints" / "best.pt"
    selective = evaluate_checkpoint(best, device="cpu", tta="flip", tta_below_confidence=0.99)
    assert selective["acc"] == result["test"]["acc"]
    assert selective["tta"] == result["tta"] and 0 < selective["tta"]["augmented_fraction"] < 1
    full = evaluate_checkpoint(best, device="cpu", tta="flip")
    assert full["tta"] == {"mode": "flip", "below_confidence": None, "forward_passes_per_image": 2.0,
                           "augmented_fraction": 1.0}
    assert "tta" not in evaluate_checkpoint(best, device="cpu")
    with pytest.raises(ConfigError, match=r"^tta_below_confidence=0 must be a probability in \(0, 1\]"):
        evaluate_checkpoint(best, device="cpu", tta="flip", tta_below_confidence=0)
