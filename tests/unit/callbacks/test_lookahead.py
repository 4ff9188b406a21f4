"""The Lookahead callback: its state and its step count under accumulation."""

from __future__ import annotations

import torch

from cifarbench.callbacks.lookahead import Lookahead
from tests.helpers.config import compose_config


def test_lookahead_counts_the_optimizer_steps_that_accumulation_makes(tmp_path):
    """5 micro-batches an epoch in groups of 2 make 3 optimizer steps (the short last group steps too): the model
    becomes the average at the run's real last step, not one step before it (which the next step would undo)."""
    from cifarbench.engine.trainer import Trainer

    overrides = ["model=simple_cnn", "dataset=synthetic", "dataset.source.train_size=80", "dataset.source.test_size=16",
                 "trainer.batch_size=16", "trainer.accumulate_steps=2", "trainer.epochs=2", "+callbacks=lookahead",
                 "trainer.device=cpu", "trainer.progress_bar=false", "~callbacks.tensorboard_extras"]
    trainer = Trainer(compose_config(overrides), tmp_path / "run", {})
    trainer.fit()
    assert trainer.state.global_step == 6 == trainer.callbacks["lookahead"].total_steps
    for name, tensor in trainer.model.state_dict().items():
        if tensor.is_floating_point():  # counters such as num_batches_tracked are not averaged
            assert torch.equal(tensor, trainer.callbacks["lookahead"].average[name]), name


def test_lookaheads_average_is_restored_from_its_state_dict():
    saved, resumed = Lookahead(), Lookahead()
    saved.average = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    resumed.average = {"w": torch.zeros(2), "n": torch.tensor(0)}
    resumed.load_state_dict(saved.state_dict())
    assert torch.equal(resumed.average["w"], torch.tensor([1.0, 2.0])) and int(resumed.average["n"]) == 3
