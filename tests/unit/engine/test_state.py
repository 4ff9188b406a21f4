"""cifarbench.engine.state: the training state."""

from __future__ import annotations

from cifarbench import checkpoint
from cifarbench.engine.state import TrainState
from tests.helpers.runs import toy_trainer


def test_the_training_state_is_one_dataclass_saved_whole(tmp_path, toy_conf):
    trainer = toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=1"])
    trainer.fit()
    saved = checkpoint.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    from cifarbench.compat import LAYOUT1_STATE_FIELDS, STATE_FIELDS_ADDED

    assert set(saved["state"]) == set(TrainState().state_dict()) == set(LAYOUT1_STATE_FIELDS) | set(STATE_FIELDS_ADDED)
    assert saved["state"] == trainer.state.state_dict()
