"""cifarbench.engine.hooks.lr_schedule: the schedule as a hook."""

from __future__ import annotations

import pytest


# ------------------------------------------------------------------------------------------ the LR schedule hook
def test_the_lr_schedule_is_a_hook_stepped_once_per_optimizer_step_and_held_by_swa(tmp_path, toy_conf):
    """Built in and first: without SWA the schedule takes every optimizer step (3 epochs x 16); with SWA from the
    end of epoch 2 it stops there (2 x 16) and SWALR sets the lr of epoch 3."""
    from tests.helpers.runs import toy_trainer

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
