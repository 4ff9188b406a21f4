"""cifarbench.engine.hooks: callbacks from the command line or an experiment file, and built-in hook names."""

from __future__ import annotations

import pytest

from tests.helpers.config import compose_config


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


def test_a_callback_cannot_take_the_name_of_a_built_in_hook():
    from cifarbench.engine.hooks import build_callbacks
    from cifarbench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"callbacks.lr_schedule is built in"):
        build_callbacks({"lr_schedule": {"_target_": "cifarbench.callbacks.lookahead.Lookahead"}})
