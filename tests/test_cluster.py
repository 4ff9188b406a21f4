"""What breaks only off a single CPU (GPU boxes, torchrun, SLURM), exercised through its CPU equivalents.

Each test here failed before the fix it guards: resume with state mapped off the CPU, preemption signals that must
reach submitit's handler after the save, stops and non-finite skips inside an accumulation group, the process
group's backend and GPU choice, OneCycle's peak, the fp16 GradScaler step, and the smaller items of the GPU/cluster
issue (evaluate's loaders, the teacher's memory format, the TensorBoard writer on errors, corrupt checkpoints,
fp16 checkpoints evaluated on the CPU, float64 accumulators).
"""

from __future__ import annotations

import json
import math
import random
import signal

import pytest
import torch
from conftest import signal_after_step, stopped_then_resumed, toy_trainer
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from cifarbench import checkpoint, distributed
from cifarbench.checkpoint.checkpointer import read_last
from cifarbench.cli.evaluate import evaluate_checkpoint
from cifarbench.engine.hooks.evaluation import EpochEvaluation
from cifarbench.engine.trainer import TrainingInterrupted
from cifarbench.errors import CheckpointError, ConfigError


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ resume on GPUs
def test_resume_restores_every_state_from_cpu_tensors_whatever_the_training_device(tmp_path, toy_conf, monkeypatch):
    """On CUDA a checkpoint mapped to the training device brings RNG states as CUDA tensors, which
    torch.set_rng_state and Generator.set_state reject. Here `meta` stands in for the GPU: the resume's RNG part
    believes it trains there, and every torch.load must map to the CPU (anything else would arrive on meta)."""
    extra = ["trainer.epochs=2", "mix=cutmix", "+callbacks=ema"]
    toy_trainer(toy_conf, tmp_path / "run", extra).fit()
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    saved = checkpoint.load_checkpoint(last)

    real_load, locations = torch.load, []

    def load_as_on_a_gpu_box(f, map_location=None, **kwargs):
        locations.append(str(map_location))
        payload = real_load(f, map_location="cpu", **kwargs)
        if str(map_location) != "cpu":
            payload = torch.utils._pytree.tree_map(lambda x: x.to("meta") if isinstance(x, torch.Tensor) else x,
                                                   payload)
        return payload

    torch.manual_seed(1234)  # something else, so the restore has to happen for the checks below to pass
    resumed = toy_trainer(toy_conf, tmp_path / "other", extra + ["trainer.resume=null"])
    resumed.rank_parts["rng"].device = torch.device("meta")
    monkeypatch.setattr(torch, "load", load_as_on_a_gpu_box)
    resumed.checkpoints.load_last(read_last(last), last, resumed.parts, resumed.rank_parts,
                                  {"ema": resumed.callbacks["ema"]}, num_classes=10, model_name=resumed.model_name)
    monkeypatch.undo()

    assert locations == ["cpu"]
    rank0 = saved["ranks"][0]
    assert torch.equal(torch.get_rng_state(), rank0["rng"]["torch"]["cpu"])
    assert torch.equal(resumed.step.mix_generator.get_state(), rank0["rng"]["mix"])
    assert resumed.loaders.train.state_dict()["epoch"] == rank0["loader"]["epoch"]
    assert same_weights(resumed.model.state_dict(), saved["model"])
    assert same_weights(resumed.callbacks["ema"].ema.module.state_dict(), saved["callbacks"]["ema"]["module"])
    assert (resumed.state.epoch, resumed.state.global_step) == (2, saved["state"]["global_step"])


# ------------------------------------------------------------------------------------------ preemption signals
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2], ids=lambda s: s.name)
def test_a_preemption_signal_saves_then_hands_over_to_the_handler_installed_before(sig, tmp_path, toy_conf,
                                                                                    monkeypatch):
    """submitit installs its requeue handler (SIGUSR2, or SUBMITIT_PREEMPT_SIGNAL) before the task runs; ours must
    save last.pt and metrics.json first, then call it, so the job is requeued and resumes from that save."""
    run_dir = tmp_path / "run"
    calls = []

    def earlier_handler(signum, frame):
        calls.append((signum, (run_dir / "checkpoints" / "last.pt").is_file(),
                      json.loads((run_dir / "metrics.json").read_text())["status"]))

    previous = signal.signal(sig, earlier_handler)
    try:
        signal_after_step(monkeypatch, sig, epoch=0, step=3)
        with pytest.raises(TrainingInterrupted, match=sig.name):
            toy_trainer(toy_conf, run_dir, ["trainer.epochs=2"]).fit()
        assert signal.getsignal(sig) is earlier_handler, "the earlier handler was not put back"
    finally:
        signal.signal(sig, previous)
    assert calls == [(sig, True, "interrupted")]
    saved = checkpoint.load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["state"]["step_in_epoch"]) == (0, 3)


def test_a_requeueing_handler_that_exits_gets_the_last_word(tmp_path, toy_conf, monkeypatch):
    """submitit's handler requeues and calls sys.exit: its exit wins over cifarbench's EXIT_INTERRUPTED."""
    def requeue_and_exit(signum, frame):
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, requeue_and_exit)
    try:
        signal_after_step(monkeypatch, signal.SIGUSR2, epoch=0, step=2)
        with pytest.raises(SystemExit) as exited:
            toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=2"]).fit()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert exited.value.code == -1
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "interrupted"
    assert checkpoint.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["state"]["step_in_epoch"] == 2


# --------------------------------------------------------------------------------- accumulation-group boundaries
def test_a_stop_inside_an_accumulation_group_waits_for_its_optimizer_step_and_resumes_exactly(tmp_path, toy_conf,
                                                                                              monkeypatch):
    extra = ["trainer.epochs=2", "trainer.accumulate_steps=2", "trainer.resume=auto"]
    straight = toy_trainer(toy_conf, tmp_path / "straight", extra)
    straight.fit()

    signal_after_step(monkeypatch, signal.SIGTERM, epoch=1, step=3)  # the first micro-batch of the second group
    with pytest.raises(TrainingInterrupted):
        toy_trainer(toy_conf, tmp_path / "run", extra).fit()
    monkeypatch.undo()
    saved = checkpoint.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["state"]["step_in_epoch"]) == (1, 4), "stopped with half a group's gradient"

    resumed = toy_trainer(toy_conf, tmp_path / "run", extra)
    resumed.fit()
    assert resumed.state.global_step == straight.state.global_step
    assert same_weights(resumed.model.state_dict(), straight.model.state_dict())


class NanOnCalls(torch.nn.Module):
    """Wraps the training model: NaN logits on the chosen training forward passes (1-based)."""

    def __init__(self, model: torch.nn.Module, calls: set[int]):
        super().__init__()
        self.model, self.calls, self.count = model, calls, 0

    def forward(self, x):
        out = self.model(x)
        self.count += 1
        return out * float("nan") if self.count in self.calls else out


@pytest.mark.parametrize("bad_micro_batch", [1, 2])
def test_skip_mode_skips_a_whole_accumulation_group(bad_micro_batch, tmp_path, toy_conf):
    """A non-finite loss on either micro-batch of a group skips that group's optimizer step and nothing else: the
    run ends with the weights of a run whose first group was never taken."""
    extra = ["trainer.epochs=1", "trainer.accumulate_steps=2", "trainer.nonfinite=skip"]
    poisoned = toy_trainer(toy_conf, tmp_path / "poisoned", extra)
    poisoned.step.train_model = NanOnCalls(poisoned.step.train_model, {bad_micro_batch})
    result = poisoned.fit()
    assert result["skipped_steps"] == 1 and poisoned.state.global_step == 256 // 32 - 1
    assert all(torch.isfinite(w).all() for w in poisoned.model.state_dict().values())

    # The same run with the first group's two micro-batches both poisoned: the reference for "group skipped".
    reference = toy_trainer(toy_conf, tmp_path / "reference", extra)
    reference.step.train_model = NanOnCalls(reference.step.train_model, {1, 2})
    reference.fit()
    assert same_weights(poisoned.model.state_dict(), reference.model.state_dict())


# ------------------------------------------------------------------------------------- process group and GPUs
@pytest.fixture
def gpu_box(monkeypatch):
    """CUDA 'present' with one GPU; selecting a GPU fails the test."""
    def no_set_device(index):
        raise AssertionError(f"torch.cuda.set_device({index}) was called")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", no_set_device)


def test_the_process_group_sends_cpu_tensors_to_gloo_and_selects_no_gpu_before_the_config(gpu_box, monkeypatch):
    joined = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kwargs: joined.update(kwargs))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    ctx = distributed.init_process_group()
    assert (ctx.rank, ctx.local_rank, ctx.world_size) == (1, 1, 2)
    assert "cpu:gloo" in joined["backend"] and "cuda:nccl" in joined["backend"]


def test_a_cpu_run_under_torchrun_on_a_gpu_box_stays_on_the_cpu(gpu_box):
    ctx = distributed.DistContext(rank=1, local_rank=1, world_size=2)
    assert distributed.process_device(ctx, "cpu") == "cpu"


def test_more_ranks_than_gpus_and_an_explicit_gpu_under_torchrun_are_clear_errors(gpu_box):
    ctx = distributed.DistContext(rank=1, local_rank=1, world_size=2)
    with pytest.raises(ConfigError, match=r"more processes.*--nproc_per_node=1"):
        distributed.process_device(ctx, "auto")
    with pytest.raises(ConfigError, match=r"trainer.device=cuda:0 under torchrun.*CUDA_VISIBLE_DEVICES"):
        distributed.process_device(ctx, "cuda:0")


# --------------------------------------------------------------------------------------------------- schedules
def test_onecycle_peaks_at_the_optimizers_scaled_lr(tmp_path, toy_conf):
    trainer = toy_trainer(toy_conf, tmp_path / "run", [
        "scheduler=onecycle", "optimizer.lr=0.05", "trainer.lr_scaling=linear", "trainer.lr_base_batch=8",
    ])
    assert trainer.optimizer.param_groups[0]["max_lr"] == pytest.approx(0.05 * 16 / 8)
    explicit = toy_trainer(toy_conf, tmp_path / "explicit", ["scheduler=onecycle", "scheduler.max_lr=0.3"])
    assert explicit.optimizer.param_groups[0]["max_lr"] == pytest.approx(0.3)


# ------------------------------------------------------------------------------------------------ fp16 step
@pytest.fixture
def fp16_on_cpu(monkeypatch):
    """Let precision 16 run on the CPU (refused for users: it is slow there), so the GradScaler path runs."""
    monkeypatch.setattr("cifarbench.engine.runtime.check_device_precision", lambda device, precision: None)


def test_fp16_overflow_step_is_skipped_and_the_scale_backs_off(tmp_path, toy_conf, fp16_on_cpu):
    trainer = toy_trainer(toy_conf, tmp_path / "run", ["trainer.precision=16", "trainer.epochs=1"])
    assert trainer.scaler.is_enabled()
    initial_scale = trainer.scaler.get_scale()
    weight = trainer.model.fc.weight
    overflow_once = [True]

    def inf_on_first_backward(grad):
        if overflow_once.pop() if overflow_once else False:
            return grad * float("inf")
        return grad

    weight.register_hook(inf_on_first_backward)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    images, labels = next(iter(trainer.loaders.train))
    trainer.state.step_in_epoch = 1
    trainer.train_step(images, labels, len(trainer.loaders.train))
    assert same_weights(trainer.model.state_dict(), before), "an overflowing fp16 step changed the weights"
    assert trainer.scaler.get_scale() == initial_scale * trainer.scaler.get_backoff_factor()

    trainer.state.step_in_epoch = 2
    trainer.train_step(images, labels, len(trainer.loaders.train))
    assert not same_weights(trainer.model.state_dict(), before), "the next, finite step did not update"


def test_fp16_gradient_clipping_sees_unscaled_gradients(tmp_path, toy_conf, fp16_on_cpu, monkeypatch):
    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters]))))
        return clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    trainer = toy_trainer(toy_conf, tmp_path / "run", ["trainer.precision=16", "trainer.epochs=1",
                                                       "trainer.grad_clip_norm=1.0"])
    result = trainer.fit()
    assert len(norms) == trainer.state.global_step == 256 // 16
    # Scaled gradients would be ~65536x the unscaled ones; a cross-entropy gradient of this net is O(1).
    assert 0 < max(norms) < 100, norms
    assert result["status"] == "completed" and math.isfinite(result["final"]["train/loss"])


# ------------------------------------------------------------------------------------------------ smaller ones
def test_evaluate_builds_no_training_loader(tmp_path, toy_conf, monkeypatch):
    toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=1"]).fit()
    from cifarbench.data import loaders

    built = []
    original = loaders.DeviceLoader

    class Recording(original):
        def __init__(self, split, *args, **kwargs):
            built.append(len(split))
            super().__init__(split, *args, **kwargs)

    monkeypatch.setattr(loaders, "DeviceLoader", Recording)
    result = evaluate_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", device="cpu")
    assert built == [64] and result["count"] == 64


def test_the_distillation_teacher_follows_channels_last(tmp_path, toy_conf):
    toy_trainer(toy_conf, tmp_path / "teacher", ["trainer.epochs=1"]).fit()
    student = toy_trainer(toy_conf, tmp_path / "student", [
        "loss=distillation", f"loss.teacher={tmp_path / 'teacher' / 'checkpoints' / 'best.pt'}",
        "trainer.channels_last=true",
    ])
    conv = student.step.loss.teacher.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_the_tensorboard_writer_is_closed_when_a_run_fails(tmp_path, toy_conf, monkeypatch):
    """A bug in the first evaluation: the writer is closed (its thread and file are released, which matters for
    in-process sweeps such as Optuna's) and what was logged before the error is on disk."""
    trainer = toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=3"])
    writer = trainer.log.writer

    def fail(self, trainer):
        raise RuntimeError("a bug in the evaluation")

    monkeypatch.setattr(EpochEvaluation, "evaluate", fail)
    with pytest.raises(RuntimeError, match="a bug in the evaluation"):
        trainer.fit()
    assert writer.file_writer is None, "the SummaryWriter was left open"
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"tensors": 0, "images": 0})
    events.Reload()
    assert events.Tags()["images"] and events.Tags()["tensors"], events.Tags()


def test_random_bytes_are_called_corrupt_not_unsafe(tmp_path):
    """Garbage fails inside the unpickler in many ways (bad opcodes, empty stacks, unknown memo keys); each must be
    one clear CheckpointError that calls the file corrupt, never "unsafe" and never a traceback."""
    garbage = tmp_path / "best.pt"
    for seed in range(200):
        garbage.write_bytes(random.Random(seed).randbytes(4096))
        with pytest.raises(CheckpointError) as caught:
            checkpoint.load_checkpoint(garbage)
        message = str(caught.value)
        assert "corrupt" in message and str(garbage) in message, (seed, message)
        assert "could run code" not in message and "refused" not in message, (seed, message)


def test_an_fp16_checkpoint_is_evaluated_in_fp32_on_the_cpu_with_a_note(tmp_path, toy_conf, capsys):
    toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=1"]).fit()
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    reference = evaluate_checkpoint(best, device="cpu")
    payload = checkpoint.load_checkpoint(best)
    config = OmegaConf.create(payload["config"])
    config.trainer.precision = "16"
    payload["config"] = OmegaConf.to_yaml(config)
    checkpoint.save_checkpoint(tmp_path / "fp16.pt", payload)
    capsys.readouterr()
    result = evaluate_checkpoint(tmp_path / "fp16.pt", device="cpu")
    note = capsys.readouterr().err
    assert "precision 16" in note and "fp32" in note and "trainer.precision" not in note
    assert (result["acc"], result["loss"]) == (reference["acc"], reference["loss"])


class Float64Watch(TorchDispatchMode):
    """Records every op that makes a float64 tensor (MPS has none)."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in tree_flatten(out)[0]):
            self.ops.add(str(func))
        return out


def test_training_and_evaluation_keep_no_float64_accumulators(tmp_path, toy_conf):
    trainer = toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=1"])
    with Float64Watch() as watch:
        record = trainer.train_epoch()
        metrics = trainer.evaluate_split("test")
    assert not watch.ops, sorted(watch.ops)
    assert 0 < record["train/loss"] < 10 and metrics["count"] == 64


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_check_exits_at_once_without_cuda():
    import subprocess
    import sys

    from conftest import REPO

    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr and proc.stdout == ""


def test_cuda_asked_for_under_torchrun_without_any_gpu_says_there_is_no_cuda(monkeypatch):
    from cifarbench.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    ctx = distributed.DistContext(rank=1, local_rank=1, world_size=2)
    with pytest.raises(ConfigError, match=r"trainer.device='cuda'.*no CUDA device"):
        resolve_device(distributed.process_device(ctx, "cuda"))


# ------------------------------------------------------------------------------- a GPU box's last.pt, elsewhere
def test_a_mid_epoch_last_pt_written_on_a_gpu_resumes_exactly_on_the_cpu(tmp_path, toy_conf, monkeypatch):
    """A run preempted mid-epoch on a GPU node and resumed on another kind of device. Its last.pt then holds CUDA
    generator states (16 bytes; a CPU one is 5,056), which a CPU generator refuses with a bare RuntimeError. The
    loader's position is two integers, and the CUDA streams are for CUDA only: the resume continues exactly."""
    extra = ["trainer.epochs=2", "augment=standard", "trainer.resume=auto"]  # crop + flip: the loader's draws count

    def as_written_on_a_gpu(saved: dict) -> dict:
        assert saved["state"]["step_in_epoch"] == 3
        cuda_state = torch.zeros(16, dtype=torch.uint8)  # the shape of a CUDA generator's state: seed and offset
        for rank in saved["ranks"]:
            rank["loader"]["generator"] = cuda_state.clone()  # what a GPU node's cifarbench before this fix saved
            rank["rng"]["torch"].update(cuda=[cuda_state.clone()], cuda_device=0)
        return saved

    straight, resumed = stopped_then_resumed(toy_conf, tmp_path, monkeypatch, extra, as_written_on_a_gpu, step=3)
    assert resumed.state.global_step == straight.state.global_step == 32
    assert same_weights(resumed.model.state_dict(), straight.model.state_dict())
    # An absolute anchor: the weights moved from their start (a resume that trained nothing would not match).
    fresh = toy_trainer(toy_conf, tmp_path / "fresh", ["trainer.epochs=2", "trainer.resume=null"])
    assert not same_weights(fresh.model.state_dict(), straight.model.state_dict())


def test_rng_states_of_more_gpus_than_visible_restore_what_fits_and_this_processs_own(monkeypatch, caplog):
    """A checkpoint from a 4-GPU node, process 3 (cuda:3), resumed where it sees one GPU: set_rng_state_all would
    raise IndexError. The first state goes to GPU 0, then this process's own stream (cuda:3's) to the GPU it
    trains on now, and the log says what was dropped."""
    from cifarbench.device import set_rng_states

    calls = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append((int(state[0]), device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: [][len(states)])  # as on a 1-GPU box
    saved = [torch.full((16,), i, dtype=torch.uint8) for i in range(4)]
    before = torch.get_rng_state()
    set_rng_states({"cpu": before, "cuda": saved, "cuda_device": 3}, torch.device("cuda", 0))
    assert calls == [(0, 0), (3, 0)]
    assert "RNG states of 4 GPUs and this machine sees 1" in caplog.text
    assert torch.equal(torch.get_rng_state(), before)


def test_a_sweep_job_does_not_inherit_an_earlier_jobs_deterministic_mode(tmp_path, toy_conf):
    """configure_backends is process-wide; an in-process sweep's later job gets exactly its own config's settings."""
    toy_trainer(toy_conf, tmp_path / "job0", ["trainer.deterministic=true"])
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    toy_trainer(toy_conf, tmp_path / "job1", ["trainer.deterministic=false"])
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    toy_trainer(toy_conf, tmp_path / "job2", ["trainer.deterministic=true"])
    assert torch.are_deterministic_algorithms_enabled()


def test_sync_batchnorm_on_the_cpu_under_torchrun_is_a_clear_error(tmp_path):
    from conftest import compose_config

    from cifarbench.distributed import DistContext
    from cifarbench.engine.runtime import Runtime
    from cifarbench.engine.setup import build_model

    cfg = compose_config(["model=resnet20", "trainer.sync_batchnorm=true"])
    rt = Runtime(dist=DistContext(rank=0, world_size=2), device=torch.device("cpu"), precision="32")
    with pytest.raises(ConfigError, match=r"trainer.sync_batchnorm=true needs CUDA devices.*trains on cpu"):
        build_model(cfg, rt)


# -------------------------------------------------------------------------------------- multi-node resume
def test_a_rank_that_cannot_read_rank_0s_last_pt_stops_every_rank_naming_file_and_node(tmp_path, monkeypatch):
    """Rank 1's view of a two-rank run (the collectives faked): rank 0 chose a last.pt this node can't see."""
    import socket

    from cifarbench.checkpoint.checkpointer import agree_on_resume
    from cifarbench.distributed import DistContext

    missing = tmp_path / "node0-only" / "checkpoints" / "last.pt"
    looked = []
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj, src=0: looked.append(obj) or
                        {"path": str(missing), "error": None})
    monkeypatch.setattr(distributed, "all_gather_objects", lambda obj: [None, obj])
    with pytest.raises(CheckpointError) as error:
        agree_on_resume(tmp_path / "rank1-view", "auto", DistContext(rank=1, world_size=2))
    message = str(error.value)
    assert str(missing) in message and socket.gethostname() in message and "rank 1" in message
    assert looked == [{"path": None, "error": None}], "rank 1 must not look for a checkpoint itself"


# ------------------------------------------------------------------------------------------ precision=auto
def fake_hardware(monkeypatch, *, cpu_bf16=False, cpu_capability="AVX2", gpu_capability=(8, 0), gpu="NVIDIA A100"):
    """Fakes what torch reports about the hardware, so that each branch of the decision runs here."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: cpu_capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: cpu_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: gpu_capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: gpu)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


@pytest.mark.parametrize(("device", "hardware", "expected", "reason"), [
    ("cpu", {"cpu_bf16": False}, "32", "lacks AVX512-BF16 and AMX (torch's CPU capability: AVX2)"),
    ("cpu", {"cpu_bf16": True, "cpu_capability": "AVX512"}, "bf16", "has AVX512-BF16/AMX"),
    ("cuda", {"gpu_capability": (9, 0), "gpu": "NVIDIA H100"}, "bf16", "NVIDIA H100 (compute capability 9.0) has bf16"),
    ("cuda", {"gpu_capability": (7, 0), "gpu": "Tesla V100"}, "16", "fp16 with a GradScaler, since Tesla V100"),
    ("cuda", {"gpu_capability": (7, 5), "gpu": "Tesla T4"}, "16", "no bf16 tensor cores"),
    ("mps", {}, "32", "no reduced precision on mps"),
])
def test_precision_auto_picks_what_the_device_computes_natively(monkeypatch, device, hardware, expected, reason):
    from cifarbench.device import resolve_precision

    fake_hardware(monkeypatch, **hardware)
    precision, why = resolve_precision(torch.device(device), "auto")
    assert precision == expected and reason in why, why


def test_explicit_bf16_on_a_cpu_that_emulates_it_warns_once_with_the_missing_capability(monkeypatch, caplog):
    from cifarbench.device import resolve_precision

    fake_hardware(monkeypatch, cpu_bf16=False)
    assert resolve_precision(torch.device("cpu"), "bf16")[0] == "bf16"  # the user's choice stands
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "AVX512-BF16 and AMX" in warnings[0] and "precision=auto" in warnings[0]
    caplog.clear()
    fake_hardware(monkeypatch, cpu_bf16=True)
    assert resolve_precision(torch.device("cpu"), "bf16")[0] == "bf16" and not caplog.records


@pytest.mark.parametrize("experiment", ["airbench94", "airbench94_muon"])
def test_the_airbench_recipes_run_at_auto_precision_and_record_what_ran(experiment, tmp_path, monkeypatch, caplog):
    """On this CPU host bf16 is emulated (17x slower): the recipe's trainer runs fp32 and says why."""
    from conftest import compose_config

    from cifarbench.engine.runtime import start_runtime

    fake_hardware(monkeypatch, cpu_bf16=False)
    cfg = compose_config([f"experiment={experiment}", "trainer.device=cpu"])
    assert cfg.trainer.precision == "auto"
    with caplog.at_level("INFO", logger="cifarbench"):
        rt = start_runtime(cfg.trainer, tmp_path)
    assert rt.precision == "32"
    assert "precision 32 on cpu (auto: fp32, since this CPU lacks AVX512-BF16" in caplog.text
