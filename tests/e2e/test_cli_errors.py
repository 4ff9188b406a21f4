"""The CLI contract from subprocesses: exit status 2 and one `cifarbench: error: ...` line for bad input, and
--help/--cfg."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifarbench.engine.trainer import Trainer
from cifarbench.errors import CheckpointError
from tests.helpers.cli import HANG_TIMEOUT, cli
from tests.helpers.config import compose_config
from tests.helpers.data import write_cifar100
from tests.helpers.faulty import FAULTY
from tests.helpers.paths import REPO
from tests.helpers.runs import SMALL, TINY


def test_a_typo_stops_the_cli_before_any_data_is_read(tmp_path):
    import subprocess
    import sys

    missing = tmp_path / "no-data-here"
    proc = subprocess.run(
        [sys.executable, "-m", "cifarbench.train", "+trainer.epoch=3", f"paths.data_dir={missing}",
         "dataset.source.download=false", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=HANG_TIMEOUT,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("cifarbench: error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "did you mean trainer.epochs?" in errors[0] and "not found" not in errors[0]


@pytest.mark.parametrize(("module", "args", "expected"), [
    ("cifarbench.train", ["dataset=imagefolder"], "dataset.source.root must be given"),
    ("cifarbench.evaluate", [], "checkpoint must be given: python -m cifarbench.evaluate checkpoint="),
])
def test_a_missing_mandatory_value_is_one_line(module, args, expected, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", module, *args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=HANG_TIMEOUT)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("cifarbench: error: ")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr[-2000:]
    assert expected in errors[0]


EXIT_USER_ERROR = 2


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The CLI contract: exit status 2, no traceback, exactly one `cifarbench: error: ...` line on stderr."""
    shown = f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr + proc.stdout, shown
    assert proc.returncode == EXIT_USER_ERROR, shown
    lines = [line for line in proc.stderr.splitlines() if line.startswith("cifarbench: error: ")]
    assert len(lines) == 1, shown
    return lines[0]


# ============================================================================================ non-finite loss
def test_nan_loss_stops_with_one_line_naming_epoch_and_step(tmp_path, fault_models):
    run_dir = tmp_path / "run"
    proc = cli("cifarbench.train", SMALL + FAULTY + ["+model.nan_steps=[3]", "trainer.epochs=2",
                                                       f"hydra.run.dir={run_dir}"], cwd=tmp_path,
               extra_path=fault_models)
    message = one_error_line(proc)
    assert re.search(r"epoch 1\b.*step 3\b", message), message
    assert "trainer.nonfinite=skip" in message and "optimizer.lr" in message  # the fixes
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "step 3" in metrics["error"]
    assert not (run_dir / "checkpoints" / "best.pt").exists()


# ============================================================================================ safe loading
class _Payload:
    """Unpickling this runs `exec(code)`, as a crafted checkpoint would."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    payload = _Payload(f"open({str(marker)!r}, 'w').write('the checkpoint ran code')")
    torch.save({"format": "cifarbench", "version": 1, "kind": "last", "model_name": "resnet20", "num_classes": 10,
                "classes": [str(i) for i in range(10)], "config": "model: {}", "model": {"fc.weight": payload}}, path)
    return path


def test_crafted_checkpoint_is_refused_everywhere_and_runs_nothing(tmp_path, tiny_cifar):
    marker = tmp_path / "PWNED"
    evil = crafted_checkpoint(tmp_path / "evil.pt", marker)

    proc = cli("cifarbench.evaluate", [f"checkpoint={evil}", "device=cpu"], cwd=tmp_path)
    message = one_error_line(proc)
    assert str(evil) in message and "refused" in message
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", message), f"control characters in the message: {message!r}"
    assert not marker.exists()

    base = SMALL[:1] + SMALL[4:] + [f"paths.data_dir={tiny_cifar}", "dataset.source.download=false",
                                    "dataset.num_workers=0", "trainer.epochs=1"]
    for overrides in ([f"trainer.resume={evil}"], ["loss=distillation", f"loss.teacher={evil}"]):
        with pytest.raises(CheckpointError, match="refused to load") as caught:
            Trainer(compose_config(base + overrides), tmp_path / "run", {})
        assert str(evil) in str(caught.value)
        assert not marker.exists(), f"{overrides}: the checkpoint ran code"

    # Control: the payload is real, a plain pickle load would have run it.
    torch.load(crafted_checkpoint(tmp_path / "control.pt", tmp_path / "control-marker"), weights_only=False)
    assert (tmp_path / "control-marker").exists()


def test_unknown_group_option_names_the_nearest_one(tmp_path):
    proc = cli("cifarbench.train", ["model=resnet19", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 2
    message = one_error_line(proc)
    assert "model=resnet19: no such option; did you mean model=resnet18?" in message
    assert not (tmp_path / "run").exists()


TYPOS = {
    "plain key": (("train", "train"), ["trainer.epoch=3"],
                  "unknown config key trainer.epoch: did you mean trainer.epochs?"),
    "group": (("train", "train"), ["modle=resnet20"], "unknown config key modle: did you mean model?"),
    "key of a target": (("train", "train"), ["optimizer.lrr=0.1"],
                        "unknown config key optimizer.lrr: did you mean optimizer.lr?"),
    "key of the chosen option": (("train", "train"), ["model=wrn_28_10", "model.widen=8"],
                                 "unknown config key model.widen: did you mean model.widen_factor?"),
    "deleted key": (("train", "train"), ["~trainer.epoch"], "did you mean trainer.epochs?"),
    "added option": (("train", "train"), ["+callbacks=emaa"],
                     "callbacks=emaa: no such option; did you mean callbacks=ema?"),
    "sweep value": (("train", "train"), ["-m", "model=resnet20,resnet2"],
                    "model=resnet2: no such option; did you mean model=resnet20?"),
    "list of options": (("train", "train"), ["logger=[tensorboard,mlfow]"],
                        "logger=mlfow: no such option; did you mean logger=mlflow?"),
    "evaluate": (("eval", "evaluate"), ["checkpint=x.pt"], "unknown config key checkpint: did you mean checkpoint?"),
    "predict": (("predict", "predict"), ["checkpoint=x.pt", "input=photos"],
                "unknown config key input: did you mean inputs?"),
}


@pytest.mark.parametrize("form", list(TYPOS))
def test_a_typo_in_any_form_is_one_line_with_the_nearest_name_and_status_2(form, capsys):
    """Hydra's own report of a plain-key typo suggests adding it with `+` (a key nothing reads): the entry points
    check their command line first, each sweep value too, so no job starts."""
    from cifarbench.cli.typos import exit_on_typos

    (config_name, command), args, expected = TYPOS[form]
    with pytest.raises(SystemExit) as exited:
        exit_on_typos(config_name, command, args)
    assert exited.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cifarbench: error: ") and expected in err, err


def test_a_valid_command_line_passes_the_typo_check():
    from cifarbench.cli.typos import exit_on_typos

    exit_on_typos("train", "train", ["-m", "model=resnet20,wrn_28_10", "trainer.epochs=3", "+callbacks=ema",
                                     "optimizer.lr=interval(0.01,0.1)", "--cfg", "job", "hydra.run.dir=x"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_one_line_from_the_cli(tmp_path):
    proc = cli("cifarbench.train", TINY + ["trainer.device=cuda", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    message = one_error_line(proc)
    assert "trainer.device='cuda'" in message and "no CUDA device" in message and "trainer.device=cpu" in message


def unwritable_output_dirs(tmp_path: Path) -> list[Path]:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    dirs = [blocker / "run"]
    if os.geteuid() != 0:  # root writes into a 0o500 folder anyway
        locked = tmp_path / "read-only"
        locked.mkdir(mode=0o500)
        dirs.append(locked / "run")
    return dirs


def test_unwritable_output_directory_is_reported_before_training(tmp_path):
    for run_dir in unwritable_output_dirs(tmp_path):
        proc = cli("cifarbench.train", TINY + [f"hydra.run.dir={run_dir}"], cwd=tmp_path)
        message = one_error_line(proc)
        assert str(run_dir) in message and "hydra.run.dir" in message, message
        assert "epoch 1" not in proc.stdout + proc.stderr  # nothing was trained first


def test_evaluate_cli_other_dataset_reads_it_from_the_given_data_dir(tmp_path, trained):
    """`evaluate dataset=cifar100 paths.data_dir=X` must look in X, not in the training run's data directory."""
    root = write_cifar100(tmp_path / "c100")
    proc = cli("cifarbench.evaluate", [f"checkpoint={trained / 'best.pt'}", "dataset=cifar100",
                                       f"paths.data_dir={root}", "dataset.source.download=false", "device=cpu"],
               cwd=tmp_path)
    message = one_error_line(proc)
    assert "10 classes" in message and "cifar100 has 100" in message, message


# ------------------------------------------------------------------------ config mistakes
def test_a_typo_stops_before_a_run_directory_exists_with_one_message(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "cifarbench.train", "dataset=synthetic", "+trainer.epoch=3",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=HANG_TIMEOUT)
    assert proc.returncode == 2
    output = proc.stdout + proc.stderr
    assert output.count("did you mean trainer.epochs?") == 1, output
    assert proc.stderr.startswith("cifarbench: error: ") and "Traceback" not in output
    assert not (tmp_path / "run").exists()


def test_evaluate_has_its_own_help(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "cifarbench.evaluate", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert proc.returncode == 0
    assert "cifarbench.evaluate: test a trained checkpoint" in proc.stdout and "checkpoint: ???" in proc.stdout
    assert "model:" not in proc.stdout and "optimizer" not in proc.stdout  # no training groups


def test_missing_dataset_offline_gives_one_clear_message(tmp_path):
    empty = tmp_path / "nothing-here"
    proc = subprocess.run(
        [sys.executable, "-m", "cifarbench.train", f"paths.data_dir={empty}", "dataset.source.download=false",
         f"hydra.run.dir={tmp_path / 'run'}", "trainer.device=cpu"],
        capture_output=True, text=True, timeout=HANG_TIMEOUT,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    message = [line for line in proc.stderr.splitlines() if line.startswith("cifarbench: error:")]
    assert len(message) == 1
    assert str(empty / "cifar-10-batches-py") in message[0]
    assert "download" in message[0] and "cifar-10-batches-py' folder" in message[0]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "failed"


def test_cli_help_and_cfg_job():
    help_text = subprocess.run([sys.executable, "-m", "cifarbench.train", "--help"], capture_output=True, text=True,
                               timeout=HANG_TIMEOUT).stdout
    assert "cifarbench.train" in help_text and "model: " in help_text and "wrn_28_10" in help_text
    job = subprocess.run([sys.executable, "-m", "cifarbench.train", "--cfg", "job", "model=wrn_28_10",
                          "dataset=cifar100"], capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert job.returncode == 0
    cfg = compose_config(["model=wrn_28_10", "dataset=cifar100"])
    assert "num_classes: ${dataset.num_classes}" in job.stdout
    assert cfg.model.num_classes == 100
