"""cifarbench.optim.param_groups: no-decay groups, group rules and per-group learning rates."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from cifarbench.models.airbench import Airbench94
from tests.helpers.config import compose_config


# ----------------------------------------------------------------------------- param groups of the recipes
def test_no_decay_param_groups_exempt_norms_and_biases():
    from cifarbench.config import build
    from cifarbench.optim.param_groups import build_param_groups

    cfg = compose_config(["+param_groups=no_decay", "model=resnet20"])
    model = build(cfg.model)
    groups = {g["name"]: g for g in build_param_groups(model, dict(cfg.param_groups), lr=0.1, weight_decay=5e-4)}
    assert set(groups) == {"no_decay_norms", "no_decay_biases", "default"}
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(groups["no_decay_norms"]["params"]) == 2 * len(norms)
    assert groups["no_decay_norms"]["weight_decay"] == 0
    assert groups["no_decay_biases"]["params"] == [model.head.fc.bias]
    assert groups["no_decay_biases"]["weight_decay"] == 0
    assert all(p.dim() > 1 for p in groups["default"]["params"]) and groups["default"]["weight_decay"] == 5e-4
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(model.parameters()))


def test_a_param_group_rule_that_matches_nothing_is_a_clear_error():
    from cifarbench.errors import ConfigError
    from cifarbench.optim.param_groups import build_param_groups

    with pytest.raises(ConfigError, match=r"param_groups.typo matches no trainable parameter"):
        build_param_groups(Airbench94(), {"typo": {"params": ["whitten.bias"]}}, lr=0.1, weight_decay=0.0)
    with pytest.raises(ConfigError, match=r"param_groups.x has unknown key\(s\) learning_rate"):
        build_param_groups(Airbench94(), {"x": {"learning_rate": 1}}, lr=0.1, weight_decay=0.0)
    with pytest.raises(ConfigError, match=r"param_groups.x gives both lr and lr_scale"):
        build_param_groups(Airbench94(), {"x": {"lr": 1, "lr_scale": 2}}, lr=0.1, weight_decay=0.0)
    with pytest.raises(ConfigError, match=r"param_groups.x.optimizer='muon' names no optimizer"):
        build_param_groups(Airbench94(), {"x": {"ndim": 4, "optimizer": "muon"}}, lr=0.1, weight_decay=0.0)


def test_the_airbench94_groups_scale_lr_and_decay_as_published():
    from cifarbench.optim.param_groups import apply_training_windows, build_param_groups

    cfg = compose_config(["experiment=airbench94"])
    model = Airbench94()
    groups = build_param_groups(model, dict(cfg.param_groups), lr=cfg.optimizer.lr,
                                weight_decay=cfg.optimizer.weight_decay)
    by_name = {g["name"]: g for g in groups}
    kilostep = 1024 * (1 + 1 / (1 - 0.85))
    lr, decay_per_step = 11.5 / kilostep, 0.0153 * 1024 / kilostep  # the reference's lr and lr x weight decay
    assert by_name["default"]["lr"] == pytest.approx(lr)
    assert by_name["default"]["lr"] * by_name["default"]["weight_decay"] == pytest.approx(decay_per_step)
    norm = by_name["norm_biases"]
    assert norm["lr"] == pytest.approx(64 * lr) and norm["lr"] * norm["weight_decay"] == pytest.approx(decay_per_step)
    assert by_name["whitening_bias"]["params"] == [model.whiten.bias]
    # Frozen tensors (the whitening filters, the BatchNorm scales) are in no group.
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters()) == 14
    optimizer = torch.optim.SGD(groups, lr=lr)
    apply_training_windows(optimizer, epochs_done=2)
    assert model.whiten.bias.requires_grad
    apply_training_windows(optimizer, epochs_done=3)
    assert not model.whiten.bias.requires_grad and model.head.weight.requires_grad


@pytest.mark.parametrize("experiment", ["airbench94", "airbench94_muon"])
def test_norm_rules_match_the_synced_batchnorm_of_trainer_sync_batchnorm(experiment):
    """trainer.sync_batchnorm=true swaps every BatchNorm2d for torch.nn.SyncBatchNorm (not a BatchNorm2d): the
    recipes' `modules: [torch.nn.BatchNorm2d]` rule must give the same groups to the synced model."""
    from cifarbench.optim.param_groups import build_param_groups

    cfg = compose_config([f"experiment={experiment}"])
    rules = {name: dict(rule) for name, rule in cfg.param_groups.items()}
    muon = {"muon": (0.24, 0.0)} if experiment == "airbench94_muon" else None
    plain = Airbench94()
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in synced.modules())
    names = {}
    for tag, model in (("plain", plain), ("synced", synced)):
        lookup = {id(p): n for n, p in model.named_parameters()}
        groups = build_param_groups(model, rules, lr=0.1, weight_decay=0.0, optimizers=muon)
        names[tag] = {g["name"]: sorted(lookup[id(p)] for p in g["params"]) for g in groups}
    assert names["synced"] == names["plain"]
    assert len(names["synced"]["norm_biases"]) == 6  # the six BatchNorm biases of the three conv groups


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


# ------------------------------------------------------------------------------------------- fine-tuning rules
def test_layer_decay_gives_the_classifier_the_full_lr_and_each_layer_below_a_factor_less():
    from hydra.utils import instantiate

    from cifarbench.optim.param_groups import build_param_groups, layer_ids

    cfg = compose_config(["+param_groups=layer_decay", "param_groups.layers.layer_decay=0.5", "model=resnet20"])
    model = instantiate(cfg.model)
    groups = build_param_groups(model, dict(cfg.param_groups), lr=0.1, weight_decay=5e-4)
    depth = layer_ids(model)
    # resnet20: the stem's conv and BN (stem.0, stem.1), 9 blocks (stages.0.0 ... stages.2.2), the classifier.
    assert depth["stem.0.weight"] == 0 and depth["stages.0.0.conv1.weight"] == 2
    assert depth["stages.2.2.bn2.bias"] == 10 and depth["head.fc.weight"] == 11
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["layers/layer11"] == pytest.approx(0.1) and lrs["layers/layer0"] == pytest.approx(0.1 * 0.5**11)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    fc = {id(p) for p in model.head.fc.parameters()}
    assert {id(p) for p in next(g for g in groups if g["name"] == "layers/layer11")["params"]} == fc


def test_layer_decay_follows_a_timm_models_own_layers():
    timm = pytest.importorskip("timm")
    from cifarbench.optim.param_groups import build_param_groups

    model = timm.create_model("test_vit", num_classes=10)
    groups = build_param_groups(model, {"layers": {"params": ["*"], "layer_decay": 0.5}}, lr=1.0, weight_decay=0.0)
    lrs = {g["name"]: g["lr"] for g in groups}
    # timm's group_matcher: the embeddings 0, its 6 blocks 1-6, the head 7.
    assert lrs == {f"layers/layer{k}": pytest.approx(0.5 ** (7 - k)) for k in range(8)}
    with pytest.raises(Exception, match=r"layer_decay=1.5 must be in \(0, 1\]"):
        build_param_groups(model, {"layers": {"params": ["*"], "layer_decay": 1.5}}, lr=1.0, weight_decay=0.0)


def test_a_frozen_backbone_warmup_trains_only_the_head_then_everything(tmp_path, toy_conf):
    from tests.helpers.runs import toy_trainer

    trainer = toy_trainer(toy_conf, tmp_path / "run", ["+param_groups=frozen_backbone",
                                                       "param_groups.backbone.frozen_epochs=1", "trainer.epochs=2"])
    start = copy.deepcopy(trainer.model.state_dict())
    after_epoch = []
    original = trainer.train_epoch

    def record(*args, **kwargs):
        out = original(*args, **kwargs)
        after_epoch.append(copy.deepcopy(trainer.model.state_dict()))
        return out

    trainer.train_epoch = record
    trainer.fit()
    first, second = after_epoch
    assert torch.equal(first["features.0.weight"], start["features.0.weight"])  # the backbone was frozen
    assert not torch.equal(first["fc.weight"], start["fc.weight"])  # the head trained
    assert not torch.equal(second["features.0.weight"], first["features.0.weight"])  # then everything did
    assert trainer.model.features[0].weight.requires_grad
