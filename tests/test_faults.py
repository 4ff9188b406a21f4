"""Issue 7, reliability and safety: what a user sees when a run is killed, stopped, poisoned by NaN, handed a crafted
checkpoint or given bad input.

The fault tests drive the real entry points in subprocesses (`python -m cifarbench.train ...`) and judge the run by
the files a user would open: checkpoints/{last,best}.pt, metrics.json and the TensorBoard events. Bad-input tests run
in-process where the CLI adds nothing (a CifarbenchError is exactly what the entry points print as one line with
exit status 2, which the CLI tests below check once per entry point).

Everything is tiny (resnet20 or a 2-layer test model, <= 100 images, batch 16) and single-threaded: the machine is
shared. Nothing here asserts a wall-clock time; the timeouts only keep a hung child from hanging the suite.
"""

from __future__ import annotations

import ast
import json
import math
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, airbench_recipe, compose_config, train_in_process, write_cifar10
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifarbench import checkpoint
from cifarbench.cli.evaluate import evaluate_checkpoint
from cifarbench.engine.trainer import Trainer, TrainingInterrupted
from cifarbench.errors import CheckpointError, CifarbenchError, ConfigError, DataError

TIMEOUT = 300  # per child process; a safeguard against hangs, not a performance assertion
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: a scheduler may requeue the job
EXIT_USER_ERROR = 2

# Wall-clock-derived values differ between any two runs; everything else must match bit for bit.
# train_samples counts the images behind img_per_s: like train_time, it leaves out the part of an epoch before a stop.
TIME_KEYS = {
    "time/epoch_s", "throughput/img_per_s", "elapsed", "train_time", "train_samples", "wall_time_s", "img_per_s",
    "sessions", "session_wall_time_s",
}


def is_time(key) -> bool:
    """A time-derived metric, under any prefix (e.g. hparams/wall_time_s)."""
    key = str(key)
    return key in TIME_KEYS or key.rsplit("/", 1)[-1] in TIME_KEYS or key.split("/", 1)[0] in ("time", "throughput")


# resnet20 on 96 synthetic images: 6 steps of 16 per epoch, single-threaded and deterministic.
SMALL = [
    "model=resnet20",
    "dataset=synthetic",
    "dataset.source.train_size=96",
    "dataset.source.test_size=32",
    "trainer.batch_size=16",
    "trainer.eval_batch_size=32",
    "trainer.device=cpu",
    "trainer.deterministic=true",
    "trainer.num_threads=1",
    "trainer.progress_bar=false",
]
# The fast path with every piece of state that a resume has to carry: the device-side augmentation generator,
# EMA, and SWA (averaging from epoch 2, with its own LR schedule).
DEVICE_RUN = SMALL + [
    "dataset.loader=device",
    "trainer.epochs=3",
    "trainer.resume=auto",
    "+callbacks=[ema,swa]",
    "callbacks.ema.decay=0.9",
    "callbacks.swa.start_epoch=2",
    "callbacks.swa.anneal_epochs=1",
    "callbacks.swa.lr=0.02",
]

# A test-only network, importable by child processes through PYTHONPATH. It can return NaN logits on chosen
# training forward passes (1-based) or in evaluation, or send its own process SIGTERM during a chosen training step
# and then keep that step busy, so that a second signal is sure to arrive while the first one's step still runs.
FAULT_MODELS = '''
import os
import signal
import time

import torch
from torch import nn


class Faulty(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, nan_steps=(), nan_eval=False, sigterm_at_step=0, **ignored):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(8, num_classes),
        )
        self.nan_steps = set(nan_steps)
        self.nan_eval = nan_eval
        self.sigterm_at_step = sigterm_at_step
        self.calls = 0

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls == self.sigterm_at_step:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(120)  # the step is still running when the test's second SIGTERM arrives
            if self.calls in self.nan_steps:
                return out * float("nan")
        elif self.nan_eval:
            return out * float("nan")
        return out
'''
FAULTY = ["model._target_=cifarbench_fault_models.Faulty"]  # on top of model=resnet20, whose extra keys it ignores


@pytest.fixture(scope="module")
def fault_models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fault_models")
    (folder / "cifarbench_fault_models.py").write_text(FAULT_MODELS)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


# ------------------------------------------------------------------------------------------------------ helpers
def child_env(extra_path: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # No test may download a dataset: any attempt meets a closed port, as on an offline compute node.
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[proxy] = "http://127.0.0.1:9"
    env.pop("no_proxy", None)
    env.pop("NO_PROXY", None)
    paths = [str(REPO)] + ([str(extra_path)] if extra_path else []) + [env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def cli(module: str, args: list[str], cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=child_env(extra_path), capture_output=True, text=True,
        timeout=TIMEOUT,
    )


def start_training(args: list[str], run_dir: Path, log: Path, extra_path: Path | None = None) -> subprocess.Popen:
    """`python -m cifarbench.train` in the background; stdout and stderr go to `log` (a pipe could fill up)."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cifarbench.train", *args, f"hydra.run.dir={run_dir}"],
            cwd=run_dir.parent, env=child_env(extra_path), stdout=out, stderr=subprocess.STDOUT, text=True,
        )


def wait_until(condition, proc: subprocess.Popen, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) before {what}:\n{log.read_text() if log else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def finish(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def epochs_logged(run_dir: Path) -> int:
    """Epochs in metrics.json (written atomically after each epoch's checkpoint), 0 before the first."""
    try:
        return len(json.loads((run_dir / "metrics.json").read_text()).get("history") or [])
    except (OSError, ValueError):
        return 0


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The CLI contract: exit status 2, no traceback, exactly one `cifarbench: error: ...` line on stderr."""
    shown = f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr + proc.stdout, shown
    assert proc.returncode == EXIT_USER_ERROR, shown
    lines = [line for line in proc.stderr.splitlines() if line.startswith("cifarbench: error: ")]
    assert len(lines) == 1, shown
    return lines[0]


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard scalars as TensorBoard shows them: all event files of the folder, purge_step honoured."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}, purge_orphaned_data=True)
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def without_time(value):
    if isinstance(value, dict):
        return {k: without_time(v) for k, v in value.items() if not is_time(k)}
    if isinstance(value, (list, tuple)):
        return [without_time(v) for v in value]
    return value


def assert_identical(a, b, where: str = "") -> None:
    """Nested dicts/lists of tensors and numbers, equal bit for bit (time-derived keys excluded)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict), where
        keys, other = {k for k in a if not is_time(k)}, {k for k in b if not is_time(k)}
        assert keys == other, f"{where}: keys {sorted(keys ^ other)} differ"
        for key in keys:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(reference: Path, resumed: Path, epochs: int) -> None:
    """What a user compares: final and best weights (with optimizer, EMA, SWA, RNG state), metrics, curves."""
    ref_last = checkpoint.load_checkpoint(reference / "checkpoints" / "last.pt")
    new_last = checkpoint.load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert new_last["epoch"] == epochs and new_last["state"]["step_in_epoch"] == 0
    for name, tensor in ref_last["model"].items():
        assert torch.equal(tensor, new_last["model"][name]), f"final weight {name} differs from the uninterrupted run"
    # The config string holds this run's paths; everything else in last.pt must be the same.
    assert_identical({k: v for k, v in ref_last.items() if k != "config"},
                     {k: v for k, v in new_last.items() if k != "config"}, "last.pt")
    ref_best = checkpoint.load_checkpoint(reference / "checkpoints" / "best.pt")
    new_best = checkpoint.load_checkpoint(resumed / "checkpoints" / "best.pt")
    assert_identical(ref_best["model"], new_best["model"], "best.pt model")
    assert_identical(without_time(ref_best["metrics"]), without_time(new_best["metrics"]), "best.pt metrics")

    ref_metrics = json.loads((reference / "metrics.json").read_text())
    new_metrics = json.loads((resumed / "metrics.json").read_text())
    assert new_metrics["status"] == "completed"
    for key in ("history", "best", "final", "test", "swa", "epochs", "skipped_steps"):
        assert without_time(new_metrics.get(key)) == without_time(ref_metrics.get(key)), f"metrics.json {key}"

    ref_curves, new_curves = scalars(reference), scalars(resumed)
    assert set(new_curves) == set(ref_curves)
    for tag, points in new_curves.items():
        steps = [step for step, _ in points]
        assert steps == sorted(set(steps)), f"TensorBoard tag {tag} repeats an epoch: steps {steps}"
        assert steps == [step for step, _ in ref_curves[tag]], f"TensorBoard tag {tag} misses an epoch: {steps}"
        if not is_time(tag):
            assert points == ref_curves[tag], f"TensorBoard curve {tag} differs from the uninterrupted run"


def reference_run(overrides: list[str], run_dir: Path) -> Path:
    """An uninterrupted run, in-process (the same code path as the CLI, without a process start)."""
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    try:
        result = train_in_process(overrides, run_dir)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
    assert result["status"] == "completed"
    return run_dir


@pytest.fixture(scope="module")
def device_reference(tmp_path_factory) -> Path:
    return reference_run(DEVICE_RUN, tmp_path_factory.mktemp("device_ref") / "run")


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory) -> Path:
    """CIFAR-10 files with 100 training and 40 test images."""
    return write_cifar10(tmp_path_factory.mktemp("cifar") / "data", per_batch=20, test_size=40)


def worker_loader_run(root: Path) -> list[str]:
    # The per-sample path as shipped (the default of dataset=imagefolder, an option for CIFAR): a DataLoader with
    # the dataset's default 2 persistent worker processes, which draw the augmentations.
    return SMALL[:1] + SMALL[4:] + [f"paths.data_dir={root}", "dataset.source.download=false", "dataset.loader=torch",
                                    "trainer.epochs=3", "trainer.resume=auto"]


# ============================================================================================ exact resume
def signal_in_epoch_2(overrides: list[str], tmp_path: Path, sig: int = signal.SIGKILL) -> tuple[Path, Path, int]:
    """Start a run in tmp_path/run and send it `sig` inside epoch 2; (run directory, its log, exit status)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log = tmp_path / "signalled.log"
    proc = start_training(overrides, run_dir, log)
    # metrics.json lists epoch 1 only after epoch 1's last.pt is in place: the run is now inside epoch 2.
    wait_until(lambda: epochs_logged(run_dir) >= 1, proc, "epoch 1 finished", log)
    proc.send_signal(sig)
    return run_dir, log, finish(proc)


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["device", "torch_workers"])
def test_sigkill_mid_epoch_then_resume_auto_is_bit_identical(loader, tmp_path, request):
    """SIGKILL in epoch 2, rerun the same command: same weights, metrics and curves as a run never killed."""
    if loader == "device":
        overrides, reference = DEVICE_RUN, request.getfixturevalue("device_reference")
    else:
        root = request.getfixturevalue("tiny_cifar")
        overrides = worker_loader_run(root)
        reference = reference_run(overrides, tmp_path / "reference")
    run_dir, log, status = signal_in_epoch_2(overrides, tmp_path)
    assert status == -signal.SIGKILL
    assert "starting a fresh run" in log.read_text()  # resume=auto with nothing to resume says so
    killed_at = checkpoint.load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"]
    assert 1 <= killed_at < 3

    resumed = cli("cifarbench.train", overrides + [f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"after epoch {killed_at}" in resumed.stdout + resumed.stderr  # "resumed from ... after epoch N"
    assert_same_run(reference, run_dir, epochs=3)


@pytest.mark.slow
def test_sigterm_stops_after_a_step_saves_and_resumes_exactly(tmp_path, device_reference):
    run_dir, log, status = signal_in_epoch_2(DEVICE_RUN, tmp_path, signal.SIGTERM)
    output = log.read_text()
    assert status == EXIT_INTERRUPTED, f"exit status {status}, expected {EXIT_INTERRUPTED} (EX_TEMPFAIL):\n{output}"
    assert "Traceback" not in output

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted"
    assert "SIGTERM" in metrics["error"] and "trainer.resume=auto" in metrics["error"]
    saved = checkpoint.load_checkpoint(run_dir / "checkpoints" / "last.pt")
    # Stopped inside epoch 2, after the step that was running: a mid-epoch checkpoint.
    assert 1 <= saved["epoch"] < 3 and saved["state"]["step_in_epoch"] >= 1
    assert isinstance(saved["config"], str) and OmegaConf.create(saved["config"]).trainer.epochs == 3

    resumed = cli("cifarbench.train", DEVICE_RUN + [f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(device_reference, run_dir, epochs=3)


def stopped_in_epoch_2(monkeypatch, overrides: list[str], run_dir: Path, send, match: str) -> Path:
    """An in-process run that calls `send()` right after micro-batch 2 of epoch 2 and must stop there, with a
    mid-epoch last.pt at (1, 2)."""
    original_step = Trainer.train_step

    def step_then_send(self, *args, **kwargs):
        out = original_step(self, *args, **kwargs)
        if (self.state.epoch, self.state.step_in_epoch) == (1, 2):
            send()
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_send)
    with pytest.raises(TrainingInterrupted, match=match):
        reference_run(overrides, run_dir)
    monkeypatch.undo()
    saved = checkpoint.load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["state"]["step_in_epoch"]) == (1, 2)
    return run_dir


def test_sigusr1_mid_epoch_resume_is_exact_in_process(tmp_path, monkeypatch):
    """SIGUSR1 (what `sbatch --signal=USR1@...` sends), sent from inside step 2 of epoch 2; torch loader, CutMix and
    label smoothing."""
    overrides = SMALL + ["dataset.loader=torch", "dataset.num_workers=0", "mix=cutmix", "loss.label_smoothing=0.1",
                         "trainer.epochs=2", "trainer.resume=auto"]
    reference = reference_run(overrides, tmp_path / "reference")

    def send_sigusr1():
        assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN), "no SIGUSR1 handler"
        os.kill(os.getpid(), signal.SIGUSR1)

    run_dir = stopped_in_epoch_2(monkeypatch, overrides, tmp_path / "run", send_sigusr1, "SIGUSR1")
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    reference_run(overrides, run_dir)
    assert_same_run(reference, run_dir, epochs=2)


def test_two_sigterms_50_ms_apart_still_save_last_pt(tmp_path, monkeypatch):
    """srun + torchrun: SLURM signals every process of the step and torchrun forwards its own SIGTERM, so a worker
    gets two signals close together. They are one stop request: the run still stops cleanly after the step and
    saves a mid-epoch last.pt, which resumes to the uninterrupted run's weights."""
    overrides = SMALL + ["dataset.loader=device", "trainer.epochs=2", "trainer.resume=auto"]
    reference = reference_run(overrides, tmp_path / "reference")

    def send_two_sigterms():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    run_dir = stopped_in_epoch_2(monkeypatch, overrides, tmp_path / "run", send_two_sigterms, "SIGTERM")
    reference_run(overrides, run_dir)
    assert_same_run(reference, run_dir, epochs=2)


def test_second_sigterm_exits_at_once(tmp_path, fault_models):
    """The first SIGTERM asks for a clean stop after the step; a second one during that step ends the run now.

    The first signal comes during step 2 of epoch 2, which then stays busy for two minutes: only an immediate exit
    on the second signal gets the run out before that (without the mid-epoch last.pt a clean stop would write).
    """
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log = tmp_path / "run.log"
    args = SMALL + FAULTY + ["dataset.source.train_size=48", "+model.sigterm_at_step=5", "trainer.epochs=3"]
    proc = start_training(args, run_dir, log, extra_path=fault_models)
    wait_until(lambda: "SIGTERM received" in log.read_text(), proc, "the first SIGTERM was acknowledged", log)
    time.sleep(2.5)  # past the repeat window: a signal within it is the same request delivered twice (srun+torchrun)
    proc.send_signal(signal.SIGTERM)
    status = finish(proc)
    output = log.read_text()
    assert status in (128 + signal.SIGTERM, -signal.SIGTERM), f"exit status {status}:\n{output}"
    assert "Traceback" not in output
    saved = checkpoint.load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["state"]["step_in_epoch"]) == (1, 0), "the run took the slow path and saved mid-epoch"


def test_kill_between_epoch_events_and_first_checkpoint_leaves_no_duplicate_curve(tmp_path, monkeypatch):
    """A kill after epoch 1 was logged to TensorBoard but before its last.pt: resume=auto starts fresh, and the
    curves must still show each epoch once."""
    overrides = SMALL + ["dataset.loader=device", "trainer.epochs=2", "trainer.resume=auto"]
    run_dir = tmp_path / "run"

    def killed(self):  # the state on disk at that instant: events and best.pt of epoch 1, no last.pt
        raise SystemExit(-9)

    monkeypatch.setattr(Trainer, "save_last", killed)
    with pytest.raises(SystemExit):
        reference_run(overrides, run_dir)
    monkeypatch.undo()
    first_epoch_end = scalars(run_dir)["train/loss"][0][0]  # the x axis is the optimizer step
    assert not (run_dir / "checkpoints" / "last.pt").exists() and first_epoch_end > 1

    reference_run(overrides, run_dir)
    curves = scalars(run_dir)
    for tag, points in curves.items():
        steps = [step for step, _ in points]
        assert steps == sorted(set(steps)), f"TensorBoard tag {tag} repeats an epoch: steps {steps}"
    for tag in ("train/loss", "train/acc", "lr", "test/loss", "test/acc"):
        assert [step for step, _ in curves[tag]] == [first_epoch_end, 2 * first_epoch_end], tag


def test_rerunning_a_finished_run_duplicates_no_curve(tmp_path):
    """The same command again (a requeued job that had already finished, or one killed during its final test):
    the end-of-run scalars (SWA, hparams), logged at the last epoch, must not appear twice."""
    overrides = SMALL + ["dataset.source.train_size=48", "dataset.loader=device", "trainer.epochs=2",
                         "trainer.resume=auto", "+callbacks=swa", "callbacks.swa.start_epoch=2",
                         "callbacks.swa.anneal_epochs=1", "callbacks.swa.lr=0.02"]
    run_dir = tmp_path / "run"
    first = json.loads((reference_run(overrides, run_dir) / "metrics.json").read_text())
    reference_run(overrides, run_dir)
    again = json.loads((run_dir / "metrics.json").read_text())
    assert without_time(again["history"]) == without_time(first["history"]) and again["test"] == first["test"]
    for tag, points in scalars(run_dir).items():
        steps = [step for step, _ in points]
        assert steps == sorted(set(steps)), f"TensorBoard tag {tag} repeats an epoch: steps {steps}"


# ============================================================================================ atomic writes
ATOMIC_CHILD = '''
import io, sys, time
import torch
from cifarbench.checkpoint import save_checkpoint

path, generation, tear = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "tear"
real_save = torch.save

def torn_save(obj, f):
    """Write half of the bytes, make them visible, announce it, and wait to be killed."""
    buffer = io.BytesIO()
    real_save(obj, buffer)
    data = buffer.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    print("torn", flush=True)
    time.sleep(600)

while True:
    if tear and generation % 1000 == 1:
        torch.save = torn_save
    payload = torch.full((2_000_000,), float(generation))
    save_checkpoint(path, {"kind": "test", "generation": generation, "payload": payload})
    torch.save = real_save
    print(generation, flush=True)
    generation += 1
'''


def test_kill_during_checkpoint_write_keeps_a_complete_last_pt(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(ATOMIC_CHILD)
    folder = tmp_path / "checkpoints"
    path = folder / "last.pt"
    rng = random.Random(7)
    killed_mid_write = 0
    for round_ in range(4):
        # Rounds 0 and 1 are killed while a half-written temp file exists (deterministically); the others at a
        # random moment of a loop of 8 MB saves, the real write path throughout.
        tear = round_ < 2
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path), str(1000 * round_), "tear" if tear else "loop"],
            cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, text=True,
        )
        try:
            complete = [int(proc.stdout.readline())]  # one complete save of this round
            if tear:
                assert proc.stdout.readline().strip() == "torn"
            else:
                time.sleep(rng.uniform(0.0, 0.3))
        finally:
            proc.kill()
            rest = proc.communicate(timeout=TIMEOUT)[0]
        complete += [int(line) for line in rest.split() if line.isdigit()]

        leftovers = [p for p in folder.iterdir() if p.name != "last.pt"]
        for leftover in leftovers:  # a temp file may stay behind, never under the checkpoint's own name
            assert leftover.name.startswith(".last.pt.") and leftover.name.endswith(".tmp"), leftover.name
            leftover.unlink()
        killed_mid_write += bool(leftovers)

        saved = checkpoint.load_checkpoint(path)  # it loads: never torn
        generation = saved["generation"]
        assert torch.equal(saved["payload"], torch.full((2_000_000,), float(generation))), "mixed content"
        # The newest completed save, or one newer if the kill fell between its rename and its print.
        assert generation in (complete[-1], complete[-1] + 1), (generation, complete)
        if tear:
            assert generation == complete[-1], "the torn write replaced last.pt"
    assert killed_mid_write >= 2, "no kill landed inside a write: the test tested nothing"


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


def test_a_huge_learning_rate_is_caught_as_a_non_finite_loss(tmp_path):
    """A config-only NaN: lr=1e30 without clipping."""
    with pytest.raises(Exception, match=r"NaN or infinite in epoch 1 at step \d+") as caught:
        train_in_process(SMALL + ["dataset.loader=device", "trainer.epochs=1", "optimizer.lr=1e30"], tmp_path / "run")
    assert isinstance(caught.value, CifarbenchError), (
        f"{type(caught.value).__name__} is not a CifarbenchError, so the CLI prints a traceback instead of the message"
    )
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()


def test_skip_mode_skips_non_finite_steps_up_to_the_limit(tmp_path, fault_models):
    skip = SMALL + FAULTY + ["trainer.epochs=1", "trainer.nonfinite=skip"]
    result = train_in_process(skip + ["+model.nan_steps=[2,4]", "trainer.max_skipped_steps=2"], tmp_path / "ok")
    assert result["status"] == "completed" and result["skipped_steps"] == 2
    assert math.isfinite(result["final"]["train/loss"])
    weights = checkpoint.load_checkpoint(tmp_path / "ok" / "checkpoints" / "last.pt")["model"]
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())

    with pytest.raises(Exception, match=r"trainer.max_skipped_steps=2.*epoch 1, step 5") as caught:
        train_in_process(skip + ["+model.nan_steps=[1,3,5]", "trainer.max_skipped_steps=2"], tmp_path / "over")
    assert isinstance(caught.value, CifarbenchError), "the CLI would print a traceback, not the message"


def test_a_nan_metric_never_becomes_best_pt(tmp_path, fault_models):
    """Evaluation gives NaN logits from epoch 1 on: the accuracy is still a number, but the model is broken."""
    run_dir = tmp_path / "run"
    problems = []
    try:
        train_in_process(SMALL + FAULTY + ["+model.nan_eval=true", "trainer.epochs=2"], run_dir)
    except CifarbenchError:
        pass  # refusing to go on, with a message, is fine too
    except Exception as error:  # noqa: BLE001 - any other exception is a crash the user meets as a traceback
        problems.append(f"the run crashed: {type(error).__name__}: {error}")
    best = run_dir / "checkpoints" / "best.pt"
    if best.exists():
        metrics = checkpoint.load_checkpoint(best)["metrics"]
        bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
        if bad:
            problems.append(f"best.pt was saved from an epoch with non-finite metrics {bad}")
    try:
        written = json.loads((run_dir / "metrics.json").read_text())
        if written["status"] not in ("completed", "failed"):
            problems.append(f"metrics.json status {written['status']!r}")
    except (OSError, ValueError) as error:
        problems.append(f"metrics.json unreadable: {error}")
    assert not problems, "; ".join(problems)


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


def test_source_loads_checkpoints_only_with_weights_only_and_evaluates_no_strings():
    """Checkpoints are read with torch.load(weights_only=True); no eval/exec/pickle.load anywhere in the package."""
    offenders = []
    for source in (REPO / "cifarbench").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name in ("eval", "exec", "pickle.load", "pickle.loads", "marshal.loads"):
                offenders.append(f"{source.name}:{node.lineno} {name}")
            if name == "torch.load":
                flags = {k.arg: k.value for k in node.keywords}
                if not (isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True):
                    offenders.append(f"{source.name}:{node.lineno} torch.load without weights_only=True")
    assert not offenders


# ============================================================================================ bad input
BASE = SMALL[:1] + SMALL[4:] + ["trainer.epochs=1"]  # no dataset chosen
TINY = BASE + ["dataset=synthetic", "dataset.source.train_size=40", "dataset.source.test_size=16"]


def build_error(overrides: list[str], tmp_path: Path, fit: bool = False, base: list[str] = TINY,
                kind: type[CifarbenchError] = ConfigError) -> str:
    """The message of the error (a config, data or checkpoint error, as `kind` says) a run stops with."""
    with pytest.raises(kind) as caught:
        trainer = Trainer(compose_config(base + overrides), tmp_path / "run", {"overrides": overrides, "choices": {}})
        if fit:
            trainer.fit()
    message = str(caught.value)
    assert "\n" not in message, f"not one line: {message!r}"
    return message


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


def test_unknown_group_option_lists_the_available_names(tmp_path):
    proc = cli("cifarbench.train", ["model=resnet19", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "model/resnet19" in proc.stderr and "Available options" in proc.stderr
    assert re.search(r"^\s+resnet18$", proc.stderr, re.M) and re.search(r"^\s+wrn_28_10$", proc.stderr, re.M)
    assert not (tmp_path / "run").exists()


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


# ---------------------------------------------------------------------------------------------- data
def test_dataset_missing_offline_without_download(tmp_path):
    empty = tmp_path / "nothing-here"
    message = build_error([f"paths.data_dir={empty}", "dataset.source.download=false"], tmp_path, base=BASE,
                          kind=DataError)
    assert str(empty / "cifar-10-batches-py") in message
    assert "dataset.source.download=true" in message and "prepare_data.py" in message


def test_dataset_missing_and_download_failing_offline_is_not_called_corrupt(tmp_path, monkeypatch):
    """The default download=true on an offline compute node: the message must say the download failed."""

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    empty = tmp_path / "nothing-here"
    message = build_error(["dataset=cifar100", f"paths.data_dir={empty}"], tmp_path, base=BASE, kind=DataError)
    assert "corrupt" not in message, message
    assert re.search(r"[Dd]ownload.*failed", message) and "offline" in message and "prepare_data.py" in message
    assert "cifar-100-python" in message


def test_truncated_batch_file(tmp_path):
    root = write_cifar10(tmp_path / "data", per_batch=8, test_size=16)
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:300])
    message = build_error([f"paths.data_dir={root}", "dataset.source.download=false"], tmp_path, base=BASE,
                          kind=DataError)
    assert "corrupt or truncated" in message and str(root / "cifar-10-batches-py") in message and "Delete" in message


def write_image_folder(root: Path, counts: dict[str, int]) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name, count in counts.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def imagefolder_overrides(root: Path) -> list[str]:
    return ["dataset=imagefolder", "dataset.num_classes=2", f"dataset.source.root={root}", "dataset.num_workers=0"]


def test_image_folder_with_an_empty_class(tmp_path):
    root = write_image_folder(tmp_path / "images", {"cat": 4, "dog": 0})
    message = build_error(imagefolder_overrides(root), tmp_path, base=BASE, kind=DataError)
    assert "dog" in message and str(root / "train") in message and "no images" in message


def test_image_folder_with_an_unreadable_file(tmp_path):
    root = write_image_folder(tmp_path / "images", {"cat": 4, "dog": 4})
    (root / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    message = build_error(imagefolder_overrides(root), tmp_path, base=BASE, kind=DataError)
    assert str(root / "train" / "dog" / "broken.png") in message and "could not be read" in message


def test_image_folder_missing(tmp_path):
    message = build_error(imagefolder_overrides(tmp_path / "no-images"), tmp_path, base=BASE, kind=DataError)
    assert str(tmp_path / "no-images") in message and "dataset.source.root" in message


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_cifar) -> Path:
    """checkpoints/ of a one-epoch resnet20 run on (tiny) CIFAR-10."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    reference_run(SMALL[:1] + SMALL[4:] + [f"paths.data_dir={tiny_cifar}", "dataset.source.download=false",
                                          "dataset.num_workers=0", "trainer.epochs=1"], run_dir)
    return run_dir / "checkpoints"


def resume_error(resume: Path, overrides: list[str], tmp_path: Path) -> str:
    return build_error(overrides + [f"trainer.resume={resume}"], tmp_path, kind=CheckpointError)


def test_checkpoint_missing(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "nope.pt")) + ".*does not exist"):
        evaluate_checkpoint(tmp_path / "nope.pt", device="cpu")


def test_resume_path_that_does_not_exist(tmp_path):
    message = resume_error(tmp_path / "nope" / "last.pt", [], tmp_path)
    assert str(tmp_path / "nope" / "last.pt") in message and "no such file" in message
    assert "trainer.resume=auto" in message


def test_resume_auto_with_nothing_to_resume_starts_fresh_and_says_so(tmp_path, caplog):
    with caplog.at_level("INFO", logger="cifarbench"):
        trainer = Trainer(compose_config(TINY + ["trainer.resume=auto"]), tmp_path / "fresh", {})
    assert trainer.state.epoch == 0 and trainer.state.global_step == 0
    assert "starting a fresh run" in caplog.text and str(tmp_path / "fresh" / "checkpoints" / "last.pt") in caplog.text


def test_not_a_cifarbench_checkpoint(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(10, 64)}, "epoch": 3}, foreign)
    with pytest.raises(CheckpointError, match=re.escape(str(foreign)) + ".*not a cifarbench checkpoint"):
        evaluate_checkpoint(foreign, device="cpu")
    message = resume_error(foreign, [], tmp_path)
    assert "not a cifarbench checkpoint" in message and "last.pt" in message


def test_truncated_checkpoint(tmp_path, trained):
    torn = tmp_path / "torn.pt"
    torn.write_bytes((trained / "best.pt").read_bytes()[:5000])
    with pytest.raises(CheckpointError) as caught:
        evaluate_checkpoint(torn, device="cpu")
    message = str(caught.value)
    assert str(torn) in message and "truncated" in message and "\n" not in message, message


def test_resume_from_best_pt_asks_for_last_pt(tmp_path, trained):
    message = resume_error(trained / "best.pt", [], tmp_path)
    assert "'best' checkpoint" in message and "last.pt" in message


def test_resume_with_another_architecture_names_both(tmp_path, trained):
    message = resume_error(trained / "last.pt", ["model=resnet32"], tmp_path)
    assert str(trained / "last.pt") in message
    assert "resnet20" in message and "resnet32" in message, f"both architectures must be named: {message}"


def test_resume_with_another_num_classes_names_both(tmp_path, trained):
    message = resume_error(trained / "last.pt", ["dataset.num_classes=5"], tmp_path)
    assert "num_classes: 10 -> 5" in message, f"the checkpoint's 10 classes and this run's 5: {message}"


def write_cifar100(root: Path, count: int = 20) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("train", "test"):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 255, (count, 3072), dtype=np.uint8),
                         "fine_labels": (np.arange(count) % 100).tolist(), "coarse_labels": [0] * count}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i:02d}" for i in range(100)],
                     "coarse_label_names": [f"super{i}" for i in range(20)]}, f)
    return root


def test_evaluate_on_a_dataset_with_other_classes(tmp_path, trained):
    root = write_cifar100(tmp_path / "c100")
    dataset = compose_config(["dataset=cifar100", f"paths.data_dir={root}"], config_name="eval").dataset
    with pytest.raises(CheckpointError) as caught:
        evaluate_checkpoint(trained / "best.pt", device="cpu", dataset_cfg=dataset, data_root=str(root))
    message = str(caught.value)
    assert "10 classes" in message and "100" in message and "airplane" in message and "same classes" in message


def test_evaluate_cli_other_dataset_reads_it_from_the_given_data_dir(tmp_path, trained):
    """`evaluate dataset=cifar100 paths.data_dir=X` must look in X, not in the training run's data directory."""
    root = write_cifar100(tmp_path / "c100")
    proc = cli("cifarbench.evaluate", [f"checkpoint={trained / 'best.pt'}", "dataset=cifar100",
                                       f"paths.data_dir={root}", "dataset.source.download=false", "device=cpu"],
               cwd=tmp_path)
    message = one_error_line(proc)
    assert "10 classes" in message and "cifar100 has 100" in message, message


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["airbench94", "airbench94_muon"])
def test_airbench_sigkill_mid_run_and_rerun_gives_the_same_final_weights(tmp_path, experiment):
    # airbench94_muon: two optimizers and their schedules, the Muon momentum buffers among them, all in last.pt.
    root = write_cifar10(tmp_path / "data", per_batch=80, test_size=100)
    overrides = airbench_recipe(root, experiment) + ["trainer.resume=auto"]
    reference = tmp_path / "reference"
    straight = cli("cifarbench.train", overrides + [f"hydra.run.dir={reference}"], cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    run_dir, _, status = signal_in_epoch_2(overrides, tmp_path)
    assert status == -signal.SIGKILL
    resumed = cli("cifarbench.train", overrides + [f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert_same_run(reference, run_dir, epochs=3)
