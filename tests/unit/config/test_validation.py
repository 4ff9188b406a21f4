"""cifarbench.config.validation: unknown keys, bad values and impossible settings get one clear message."""

from __future__ import annotations

import re

import pytest

from cifarbench.engine.trainer import Trainer
from tests.helpers.config import compose_config, tiny_cifar_overrides
from tests.helpers.config_options import GROUPS, options
from tests.helpers.runs import build_error

# ------------------------------------------------------------------------------------------- unknown keys
TYPOS = [  # override, the key the message names, the key it suggests
    ("+trainer.epoch=3", "trainer.epoch", "trainer.epochs"),
    ("+optimiser=sgd", "optimiser", "optimizer"),
    ("+scheduler.min_lrr=0", "scheduler.min_lrr", "scheduler.min_lr"),
    ("+dataset.val_sise=5", "dataset.val_sise", "dataset.val_size"),
    ("+dataset.source.downlaod=false", "dataset.source.downlaod", "dataset.source.download"),
    ("+paths.data_diir=/tmp", "paths.data_diir", "paths.data_dir"),
    ("+optimizer.weight_dacay=0.1", "optimizer.weight_dacay", "optimizer.weight_decay"),
]


@pytest.mark.parametrize(("override", "key", "suggestion"), TYPOS, ids=[t[0] for t in TYPOS])
def test_an_unknown_key_is_refused_with_the_nearest_valid_one(override, key, suggestion):
    from cifarbench.config import validate
    from cifarbench.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        validate(compose_config([override]))
    message = str(caught.value)
    assert f"unknown config key {key}:" in message and f"did you mean {suggestion}?" in message, message
    assert "\n" not in message


@pytest.mark.parametrize("extra", [["+optimizer.dampening=0.1"], ["optimizer=adamw", "+optimizer.betas=[0.9,0.99]"],
                                   ["+callbacks=[ema,swa]"], ["loss=distillation", "loss.teacher=x"]])
def test_keys_that_something_reads_are_accepted(extra):
    """A real argument of the optimizer (SGD's dampening, AdamW's betas) may be added with `+`."""
    from cifarbench.config import check_known_keys

    check_known_keys(compose_config(extra))


@pytest.mark.parametrize("group", [g for g in GROUPS if g != "experiment"])
def test_every_shipped_option_passes_the_key_check(group):
    from cifarbench.config import check_known_keys

    for option in options(group):
        check_known_keys(compose_config([f"{group}={option}"] + (["dataset.num_classes=3"] if option == "imagefolder"
                                                                 else [])))


@pytest.mark.parametrize("value, refused", [(0.0, False), (0.99, False), (1.0, True), (-0.1, True)])
def test_label_smoothing_of_1_or_more_is_refused_before_training(value, refused):
    """label_smoothing=1 would train on uniform targets only: the check must refuse the boundary too."""
    from cifarbench.config import validate
    from cifarbench.errors import ConfigError

    cfg = compose_config([f"loss.label_smoothing={value}"])
    if refused:
        with pytest.raises(ConfigError, match=r"loss.label_smoothing=.* must be in \[0, 1\)"):
            validate(cfg)
    else:
        validate(cfg)


BAD_CONFIGS = [  # overrides, and what the message must say (regular expressions)
    (["model=wrn_28_10", "model.depth=27"], [r"WideResNet depth", r"6n\+4", r"\b27\b", r"\b28\b"]),
    (["model=pyramidnet110", "model.depth=100"], [r"PyramidNet depth", r"6N\+2", r"\b100\b", r"110"]),
    (["model=pyramidnet200", "model.depth=111"], [r"PyramidNet depth", r"9N\+2", r"\b111\b"]),
    (["model=resnext29_8x64d", "model.width=500"], [r"ResNeXt width", r"width=500", r"cardinality=8"]),
    (["model=densenet100", "model.compression=0"], [r"DenseNet compression", r"\(0, 1\]", r"got 0\b"]),
    (["model=densenet100", "model.compression=1.5"], [r"DenseNet compression", r"\(0, 1\]", r"1\.5"]),
    (["optimizer.lr=0"], [r"optimizer\.lr=0\b", r"positive"]),
    (["optimizer=adamw", "optimizer.lr=-0.001"], [r"optimizer\.lr=-0\.001", r"positive"]),
    (["trainer.batch_size=0"], [r"trainer\.batch_size=0\b", r"positive"]),
    (["trainer.batch_size=-16"], [r"trainer\.batch_size=-16", r"positive"]),
    (["trainer.eval_batch_size=0"], [r"trainer\.eval_batch_size=0\b", r"positive"]),
    (["trainer.epochs=0"], [r"trainer\.epochs=0\b", r"positive"]),
    (["trainer.epochs=-3"], [r"trainer\.epochs=-3", r"positive"]),
    (["trainer.batch_size=64"], [r"trainer\.batch_size=64", r"40 training images"]),
    (["dataset.val_size=1000"], [r"dataset\.val_size=1000", r"only 40", r"fraction"]),
    (["dataset.val_size=40"], [r"dataset\.val_size=40", r"only 40"]),
    (["trainer.precision=fp8"], [r"trainer\.precision='fp8'", r"32, bf16, 16"]),
    (["trainer.precision=64"], [r"trainer\.precision='64'", r"32, bf16, 16"]),
    (["+callbacks=tta", "callbacks.tta.mode=mirror"], [r"callbacks\.tta\.mode='mirror' is not supported",
                                                        r"none, flip, flip_translate"]),
    (["+trainer.tta=flip"], [r"trainer\.tta moved: use \+callbacks=tta callbacks\.tta\.mode="]),
    (["+trainer.label_smoothing=0.1"], [r"trainer\.label_smoothing moved: use loss\.label_smoothing="]),
    (["trainer.device=tpu"], [r"trainer\.device='tpu'", r"auto, cpu, cuda"]),
    (["trainer.device=npu:0"], [r"trainer\.device='npu:0'", r"auto, cpu, cuda"]),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD_CONFIGS, ids=[" ".join(o) for o, _ in BAD_CONFIGS])
def test_bad_config_values_get_one_clear_message(overrides, expected, tmp_path):
    message = build_error(overrides, tmp_path)
    for pattern in expected:
        assert re.search(pattern, message), f"{pattern!r} not in: {message}"


def test_half_precision_on_the_cpu_is_refused_with_the_alternative(tmp_path):
    message = build_error(["trainer.precision=16"], tmp_path, fit=True)
    assert "precision=16" in message and "trainer.precision=auto" in message


def test_train_size_smaller_than_a_batch_is_refused(tmp_path, cifar_root):
    from cifarbench.errors import ConfigError

    cfg = compose_config(tiny_cifar_overrides(cifar_root) + ["trainer.batch_size=1000"])
    with pytest.raises(ConfigError, match="trainer.batch_size=1000.*200 training images"):
        Trainer(cfg, tmp_path / "run", {})


@pytest.mark.parametrize(("typed", "meant"), [("fp16", "16"), ("16-mixed", "16"), ("bf16-mixed", "bf16"),
                                              ("fp32", "32"), ("32-true", "32"), ("bf16", "bf16"), ("auto", "auto")])
def test_precision_accepts_the_spellings_users_type(typed, meant):
    from cifarbench.device import check_precision

    assert check_precision(typed) == meant


def test_an_unknown_precision_lists_the_choices_and_the_spellings():
    from cifarbench.device import check_precision
    from cifarbench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'half' is not supported; use one of auto, 32, bf16, 16 \(or fp32,"):
        check_precision("half")
