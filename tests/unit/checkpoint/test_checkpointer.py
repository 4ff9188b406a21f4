"""cifarbench.checkpoint.checkpointer: when last.pt is written."""

from __future__ import annotations


def test_the_last_epoch_is_saved_even_off_the_checkpoint_interval(tmp_path, toy_conf):
    from cifarbench import checkpoint
    from tests.helpers.runs import toy_trainer

    toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=1", "trainer.checkpoint_every_n_epochs=2",
                                             "dataset.source.train_size=32"]).fit()
    last = checkpoint.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["epoch"] == 1 and last["state"]["global_step"] == 2
