"""cifarbench.engine.hooks.progress: progress lines off a terminal and log lines beside the bar in one."""

from __future__ import annotations

import logging
import sys

from tests.helpers.runs import toy_trainer


# ------------------------------------------------------------------------------------ progress
def test_progress_lines_appear_inside_an_epoch_off_a_terminal(tmp_path, toy_conf, caplog):
    caplog.set_level(logging.INFO, logger="cifarbench")
    assert not sys.stderr.isatty()
    toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=1", "trainer.log_every_n_steps=4",
                                             "trainer.progress_bar=true"]).fit()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1/1 step ")]
    assert [line.split()[3] for line in lines] == ["4/16", "8/16", "12/16"], lines
    assert all(" lr " in line and " img/s " in line and "epoch ETA" in line for line in lines)
    messages = caplog.text
    assert f"run directory: {(tmp_path / 'run').resolve()}" in messages
    assert f"tensorboard --logdir {(tmp_path / 'run').resolve()}" in messages
    assert f"best weights: {(tmp_path / 'run').resolve() / 'checkpoints' / 'best.pt'}" in messages


def test_a_slow_epoch_prints_a_line_every_progress_interval_between_log_steps(tmp_path, toy_conf, caplog):
    caplog.set_level(logging.INFO, logger="cifarbench")
    toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=1", "trainer.log_every_n_steps=1000",
                                             "trainer.progress_every_s=0.000001"]).fit()
    steps = [r.getMessage().split()[3] for r in caplog.records if r.getMessage().startswith("epoch 1/1 step ")]
    assert steps == [f"{i}/16" for i in range(1, 16)]


def test_in_a_terminal_log_lines_go_through_tqdm_instead_of_onto_the_bar(tmp_path):
    from tqdm.contrib.logging import _TqdmLoggingHandler

    from cifarbench.loggers.run_log import RunLog

    run_log = RunLog(tmp_path, progress_bar=True)
    run_log.show_bars = True  # as on a terminal
    root = logging.getLogger()
    console = logging.StreamHandler(sys.stderr)
    root.addHandler(console)
    try:
        with run_log.redirect_logging():
            assert any(isinstance(h, _TqdmLoggingHandler) for h in root.handlers) and console not in root.handlers
        assert console in root.handlers
    finally:
        root.removeHandler(console)
        run_log.close()
