"""cifarbench.compat: configs and checkpoints written with the names of cifarbench 0.1 (before the package was laid
out by folder, TTA became a callback, label smoothing moved to the loss and the per-depth model factories became a
depth argument) still resume, evaluate and rebuild their model; the old override names are refused by name."""

from __future__ import annotations

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from cifarbench import checkpoint
from cifarbench.checkpoint.resume import check_resume_config
from cifarbench.compat import upgrade_config
from cifarbench.errors import ConfigError, ResumeRefusedError
from tests.helpers.config import compose_config
from tests.helpers.runs import stopped_then_resumed

OLD_TARGETS = {
    "cifarbench.losses.cross_entropy.CrossEntropy": "cifarbench.losses.CrossEntropy",
    "cifarbench.optim.schedules.cosine": "cifarbench.optim.cosine",
    "cifarbench.callbacks.ema.EmaCallback": "cifarbench.tricks.ema.EmaCallback",
    "cifarbench.callbacks.swa.SwaCallback": "cifarbench.tricks.swa.SwaCallback",
    "cifarbench.callbacks.tensorboard_extras.TensorBoardExtras": "cifarbench.tensorboard_logging.TensorBoardExtras",
}


def with_old_names(config_yaml: str) -> str:
    """A run config as cifarbench 0.1 stored it: old targets, trainer.label_smoothing and trainer.tta."""
    config = yaml.safe_load(config_yaml)

    def walk(node):
        if isinstance(node, dict):
            if node.get("_target_") in OLD_TARGETS:
                node["_target_"] = OLD_TARGETS[node["_target_"]]
            for value in node.values():
                walk(value)

    walk(config)
    config["trainer"]["label_smoothing"] = config["loss"]["label_smoothing"]
    config["trainer"]["tta"] = "none"
    return yaml.safe_dump(config)


def test_a_stored_config_in_old_names_reads_as_todays():
    old = {"model": {"_target_": "cifarbench.models.resnet.resnet110", "num_classes": 10},
           "scheduler": {"_target_": "cifarbench.optim.onecycle", "_partial_": True},
           "optimizers": {"muon": {"optimizer": {"_target_": "cifarbench.muon.Muon", "lr": 0.2}}},
           "loss": {"_target_": "cifarbench.tricks.distill.DistillationLoss", "label_smoothing": 0.1},
           "callbacks": {"lookahead": {"_target_": "cifarbench.tricks.lookahead.Lookahead"}},
           "trainer": {"epochs": 3, "label_smoothing": 0.1, "tta": "flip_translate"}}
    assert upgrade_config(old) == {
        "model": {"_target_": "cifarbench.models.resnet.cifar_resnet", "depth": 110, "num_classes": 10},
        "scheduler": {"_target_": "cifarbench.optim.schedules.onecycle", "_partial_": True},
        "optimizers": {"muon": {"optimizer": {"_target_": "cifarbench.optim.muon.Muon", "lr": 0.2}}},
        "loss": {"_target_": "cifarbench.losses.distillation.DistillationLoss", "label_smoothing": 0.1},
        "callbacks": {"lookahead": {"_target_": "cifarbench.callbacks.lookahead.Lookahead"},
                      "tta": {"_target_": "cifarbench.callbacks.tta.TestTimeAugmentation", "mode": "flip_translate",
                              "translate_px": 1}},
        "trainer": {"epochs": 3}}
    assert old["trainer"]["tta"] == "flip_translate"  # the caller's dict is left as it was


@pytest.mark.parametrize("experiment", ["airbench94", "airbench94_muon", "seed_resnext", "paper_pyramidnet110"])
def test_a_config_in_todays_names_is_left_as_it_is(experiment):
    """Every target of today's configs (Muon's and the schedules' below cifarbench.optim included) stays put."""
    config = OmegaConf.to_container(compose_config([f"experiment={experiment}", "+callbacks=[ema,swa]"]),
                                    resolve=False)
    assert upgrade_config(config) == config


def test_a_best_pt_naming_a_per_depth_factory_rebuilds_its_model(tmp_path):
    from cifarbench.models.resnet import cifar_resnet

    model = cifar_resnet(20, num_classes=10)
    config = {"model": {"_target_": "cifarbench.models.resnet.resnet20", "num_classes": 10, "in_channels": 3}}
    checkpoint.save_checkpoint(tmp_path / "best.pt", {"kind": "best", "config": OmegaConf.to_yaml(config),
                                                       "model": model.state_dict(), "model_name": "resnet20"})
    rebuilt = checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(tmp_path / "best.pt"))
    assert sum(p.numel() for p in rebuilt.parameters()) == 269722  # ResNet-20 for 10 classes (He et al. 2015)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values()))


def test_the_old_names_in_a_stored_config_are_no_difference_to_a_resume(monkeypatch):
    cfg = compose_config(["+callbacks=[ema,swa]", "loss.label_smoothing=0.1"])
    old_yaml = with_old_names(OmegaConf.to_yaml(cfg, resolve=True))
    assert "cifarbench.tricks.ema.EmaCallback" in old_yaml and "label_smoothing: 0.1" in old_yaml
    assert check_resume_config(old_yaml, cfg, "last.pt") is None
    # Anchor: without the upgrade, the same files differ (so the check above is the upgrade's doing).
    monkeypatch.setattr("cifarbench.checkpoint.resume.upgrade_config", lambda config: config)
    with pytest.raises(ResumeRefusedError, match="trainer.label_smoothing"):
        check_resume_config(old_yaml, cfg, "last.pt")


@pytest.mark.parametrize(("override", "new"), [("+trainer.tta=flip", "+callbacks=tta callbacks.tta.mode="),
                                               ("+trainer.label_smoothing=0.1", "loss.label_smoothing=")])
def test_an_old_override_name_is_refused_with_the_new_one(override, new):
    from cifarbench.config import validate

    with pytest.raises(ConfigError, match=rf"^{override[1:].split('=')[0]} moved: use {new.replace('+', '[+]')}"):
        validate(compose_config([override]))


@pytest.mark.slow
def test_a_last_pt_stored_with_old_names_resumes_exactly(tmp_path, toy_conf, monkeypatch):
    def old_names(payload: dict) -> dict:
        return {**payload, "config": with_old_names(payload["config"])}

    extra = ["trainer.epochs=3", "trainer.resume=auto", "+callbacks=[ema,swa]", "callbacks.ema.decay=0.9",
             "callbacks.swa.start_epoch=2", "callbacks.swa.anneal_epochs=1", "callbacks.swa.lr=0.02",
             "loss.label_smoothing=0.1"]
    straight, resumed = stopped_then_resumed(toy_conf, tmp_path, monkeypatch, extra, rewrite=old_names)
    assert resumed.state.global_step == straight.state.global_step == 3 * 256 // 16
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(),
                                                  straight.model.state_dict().values()))
    assert resumed.state.sessions[-1]["start_epoch"] == 1  # it did resume mid-run, not start again


@pytest.mark.parametrize(("val_size", "seed", "resumes"), [("null", 3, True), ("0.1", 0, True), ("0.1", 3, False)])
def test_a_config_from_before_split_seed_and_seeds_resumes_where_it_splits_the_same(val_size, seed, resumes):
    """Before dataset.split_seed the validation split followed trainer.seed, and before trainer.seeds one seed drove
    everything. A stored config without them resumes under today's defaults exactly where it would split (and seed)
    alike: without a split always, with one only if its seed was the default split seed 0."""
    cfg = compose_config([f"dataset.val_size={val_size}", f"trainer.seed={seed}"])
    stored = OmegaConf.to_container(cfg, resolve=True)
    for node, key in ((stored["dataset"], "split_seed"), (stored["dataset"], "folds"), (stored["dataset"], "fold"),
                      (stored["trainer"], "seeds"), (stored["trainer"], "target_acc"),
                      (stored["trainer"], "stop_at_target"), (stored["trainer"], "repeats")):
        node.pop(key)
    old_yaml = OmegaConf.to_yaml(OmegaConf.create(stored))
    if resumes:
        assert check_resume_config(old_yaml, cfg, "last.pt") is None
    else:
        with pytest.raises(ResumeRefusedError, match=r"dataset.split_seed: 3 -> 0"):
            check_resume_config(old_yaml, cfg, "last.pt")
