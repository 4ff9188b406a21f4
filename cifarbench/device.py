"""Everything that depends on the kind of device lives here, so the rest of the code stays device-agnostic."""

from __future__ import annotations

import contextlib
import logging
import os

import torch

from cifarbench.errors import ConfigError

PRECISIONS = ("auto", "32", "bf16", "16")
# The spellings users type, Lightning's among them, for the same four choices.
PRECISION_ALIASES = {"fp32": "32", "32-true": "32", "bf16-mixed": "bf16", "fp16": "16", "16-mixed": "16"}


def resolve_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit name must be available on this machine."""
    name = str(name).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"trainer.device={name!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.device={name!r} was asked for, but this machine has no CUDA device; "
            "use trainer.device=auto or trainer.device=cpu"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"trainer.device={name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"trainer.device={name!r} was asked for, but MPS is not available here; use auto or cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"trainer.device={name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether `device` computes bf16 in hardware, and the capability that says so (or is missing).

    Emulated bf16 is a trap: on an AVX2 CPU (no AVX512-BF16, no AMX) a ResNet-20 training step ran 14x slower under
    bf16 autocast than in fp32 (scripts/benchmark.py --only options); GPUs before Ampere (V100, T4) emulate it too,
    where fp16 with a GradScaler is the fast choice.
    """
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        name = f"{torch.cuda.get_device_name(index)} (compute capability {major}.{minor})"
        if major >= 8:
            return True, f"{name} has bf16 tensor cores"
        return False, f"{name} has no bf16 tensor cores (they start at compute capability 8.0)"
    if device.type == "cpu":
        capability = torch.backends.cpu.get_cpu_capability()
        if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
            return True, f"this CPU has AVX512-BF16/AMX (torch's CPU capability: {capability})"
        return False, f"this CPU lacks AVX512-BF16 and AMX (torch's CPU capability: {capability}), so bf16 is emulated"
    return False, f"cifarbench picks no reduced precision on {device.type}"


def resolve_precision(device: torch.device, precision) -> tuple[str, str]:
    """(the precision to run, why). `auto`: bf16 where the device computes it natively, fp16 with a GradScaler on a
    CUDA GPU without bf16, fp32 otherwise. An explicit choice is kept; bf16 on a device that emulates it logs one
    warning naming the missing capability."""
    precision = check_precision(precision)
    native, capability = native_bf16(device)
    if precision == "auto":
        if native:
            return "bf16", f"auto: bf16, since {capability}"
        if device.type == "cuda":
            return "16", f"auto: fp16 with a GradScaler, since {capability}"
        return "32", f"auto: fp32, since {capability}"
    if precision == "bf16" and not native:
        logging.getLogger("cifarbench").warning(
            "trainer.precision=bf16, but %s: expect it to be several times slower than fp32 (measured 14x on an "
            "AVX2 CPU); trainer.precision=auto picks the fast one", capability)
    return precision, f"trainer.precision={precision}"


def check_precision(precision) -> str:
    """The canonical name of a precision (fp16 and 16-mixed are 16), or one ConfigError listing the choices."""
    precision = PRECISION_ALIASES.get(str(precision), str(precision))
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r} is not supported; use one of {', '.join(PRECISIONS)} "
                          f"(or {', '.join(PRECISION_ALIASES)})")
    return precision


def supports_precision(device: torch.device, precision: str) -> bool:
    """Whether `precision` is worth running on this kind of device.

    fp16 autocast runs on the CPU, but with no fast fp16 kernels there a resnet20 step is ~10x slower than fp32
    (bf16 is ~2.5x faster where the CPU has bf16 instructions), so it is refused for training and evaluation falls
    back to fp32. The training step's fp16 path (GradScaler unscale -> clip -> step -> update) is the same code on
    every device.
    """
    return not (check_precision(precision) == "16" and device.type == "cpu")


def check_device_precision(device: torch.device, precision: str) -> None:
    if not supports_precision(device, precision):
        raise ConfigError("trainer.precision=16 needs a GPU; on the CPU use trainer.precision=auto (or 32)")


def autocast(device: torch.device, precision: str):
    """Mixed-precision context for the forward pass; a no-op at full precision."""
    precision = check_precision(precision)
    if precision == "auto":
        raise ValueError("autocast needs a resolved precision: pass trainer.precision through resolve_precision")
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """fp16 needs loss scaling to keep small gradients from underflowing; bf16 and fp32 do not."""
    return torch.amp.GradScaler(device.type, enabled=check_precision(precision) == "16")


def scaler_found_inf(scaler: torch.amp.GradScaler, optimizer) -> list[torch.Tensor]:
    """The overflow flags (one per device) that `scaler.unscale_(optimizer)` recorded, which its step() and update()
    act on. A SAM step all-reduces them across ranks and sets them when its second gradient overflows, so that the
    scaler skips and backs off as for any overflow. GradScaler has no public handle on them (torch's own
    ShardedGradScaler reaches them the same way)."""
    return list(scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"].values())


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that wall-clock timers measure the work and not just its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def configure_backends(device: torch.device, deterministic: bool, benchmark: bool = True) -> None:
    """cudnn autotuning and TF32 are speed wins on GPUs; deterministic mode turns off everything non-repeatable.

    Every flag is set both ways: these are process-wide, and the jobs of an in-process Hydra sweep share the
    process, so a job must not inherit an earlier job's deterministic mode (or lose its own).
    """
    if deterministic:
        # cuBLAS is only repeatable with a fixed workspace; it reads this variable when it starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    torch.backends.cudnn.deterministic = deterministic
    fast = not deterministic and device.type == "cuda"
    torch.backends.cudnn.benchmark = fast and benchmark
    torch.backends.cuda.matmul.allow_tf32 = fast
    torch.backends.cudnn.allow_tf32 = fast


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def pin_memory_available(device: torch.device) -> bool:
    """Pinned host memory only speeds up copies to a CUDA device."""
    return device.type == "cuda"


def rng_states(device: torch.device) -> dict:
    """Device RNG states, for exact resume: every visible GPU's, and which of them this process trains on."""
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state_all()
        states["cuda_device"] = device.index if device.index is not None else torch.cuda.current_device()
    return states


def set_rng_states(states: dict, device: torch.device) -> None:
    """Restore what was saved onto what this machine has.

    A checkpoint holds every visible GPU's state. A machine that sees fewer GPUs (another node, a narrower
    CUDA_VISIBLE_DEVICES) restores those that fit and logs the rest as dropped, and the stream this process trained
    with goes to the GPU it trains on now, even when the two indices differ (rank 3 was cuda:3, is now cuda:1).
    """
    torch.set_rng_state(states["cpu"])
    saved = states.get("cuda") or []
    if device.type != "cuda" or not saved:
        return
    visible = torch.cuda.device_count()
    for index, state in enumerate(saved[:visible]):
        torch.cuda.set_rng_state(state, index)
    trained_on = states.get("cuda_device")
    if trained_on is not None and trained_on < len(saved):
        now_on = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.set_rng_state(saved[trained_on], now_on)
    if len(saved) > visible:
        logging.getLogger("cifarbench").warning(
            "the checkpoint holds the RNG states of %d GPUs and this machine sees %d: restored %d, and this "
            "process's own stream (it trained on cuda:%s)", len(saved), visible, visible, trained_on)


_ALLOCATOR_TUNED = False


def keep_freed_memory(enabled: bool = True) -> bool:
    """On glibc, keep freed memory in the process instead of handing it back to the kernel.

    PyTorch's CPU allocator has no cache: every large activation is malloc'd and freed each step, glibc serves such
    blocks with mmap and returns them on free, and the next step faults every page in again (kernel time that can be
    half of a CPU training step). mallopt turns mmap off for the heap (M_MMAP_MAX=0), stops trimming it
    (M_TRIM_THRESHOLD) and grows it in 1 GiB steps (M_TOP_PAD), like MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_/
    MALLOC_TOP_PAD_ set before start. Once per process; True when it took effect.
    """
    global _ALLOCATOR_TUNED
    if not enabled or _ALLOCATOR_TUNED:
        return _ALLOCATOR_TUNED
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
    _ALLOCATOR_TUNED = all(libc.mallopt(option, value) == 1 for option, value in (
        (m_mmap_max, 0), (m_trim_threshold, 2**31 - 1), (m_top_pad, 2**30)))
    return _ALLOCATOR_TUNED
