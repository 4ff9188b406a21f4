"""cifarbench.engine.runtime: devices, precision, process groups and process-wide backend settings, with the
hardware faked where this CPU host has none."""

from __future__ import annotations

import pytest
import torch

from cifarbench import distributed
from cifarbench.errors import ConfigError
from tests.helpers.runs import toy_trainer


def test_the_cpu_allocator_keeps_freed_memory_on_glibc():
    import platform

    from cifarbench.device import keep_freed_memory

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert keep_freed_memory() is True and keep_freed_memory(enabled=True) is True


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


def test_cuda_asked_for_under_torchrun_without_any_gpu_says_there_is_no_cuda(monkeypatch):
    from cifarbench.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    ctx = distributed.DistContext(rank=1, local_rank=1, world_size=2)
    with pytest.raises(ConfigError, match=r"trainer.device='cuda'.*no CUDA device"):
        resolve_device(distributed.process_device(ctx, "cuda"))


def test_a_sweep_job_does_not_inherit_an_earlier_jobs_deterministic_mode(tmp_path, toy_conf):
    """configure_backends is process-wide; an in-process sweep's later job gets exactly its own config's settings."""
    toy_trainer(toy_conf, tmp_path / "job0", ["trainer.deterministic=true"])
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    toy_trainer(toy_conf, tmp_path / "job1", ["trainer.deterministic=false"])
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    toy_trainer(toy_conf, tmp_path / "job2", ["trainer.deterministic=true"])
    assert torch.are_deterministic_algorithms_enabled()


def test_sync_batchnorm_on_the_cpu_under_torchrun_is_a_clear_error(tmp_path):
    from cifarbench.distributed import DistContext
    from cifarbench.engine.runtime import Runtime
    from cifarbench.engine.setup import build_model
    from tests.helpers.config import compose_config

    cfg = compose_config(["model=resnet20", "trainer.sync_batchnorm=true"])
    rt = Runtime(dist=DistContext(rank=0, world_size=2), device=torch.device("cpu"), precision="32")
    with pytest.raises(ConfigError, match=r"trainer.sync_batchnorm=true needs CUDA devices.*trains on cpu"):
        build_model(cfg, rt)


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
    from cifarbench.engine.runtime import start_runtime
    from tests.helpers.config import compose_config

    fake_hardware(monkeypatch, cpu_bf16=False)
    cfg = compose_config([f"experiment={experiment}", "trainer.device=cpu"])
    assert cfg.trainer.precision == "auto"
    with caplog.at_level("INFO", logger="cifarbench"):
        rt = start_runtime(cfg.trainer, tmp_path)
    assert rt.precision == "32"
    assert "precision 32 on cpu (auto: fp32, since this CPU lacks AVX512-BF16" in caplog.text
