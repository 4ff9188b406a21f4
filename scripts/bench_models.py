#!/usr/bin/env python
"""Benchmark the model zoo: parameters, forward GFLOPs, training throughput, and DenseNet's memory-efficient mode.

Each model is built from its conf/model/<name>.yaml (10 classes, 3 input channels: the CIFAR-10 figures the papers
quote) exactly as a training run would build it.

- params: trainable parameters.
- GFLOPs: forward FLOPs per 32x32 image counted by torch.utils.flop_counter.FlopCounterMode, which counts a
  multiply-add as 2 FLOPs (convs and matmuls only). Many papers quote multiply-adds: GMACs = GFLOPs / 2.
- img/s: training throughput (forward, backward, SGD step) on random data after --warmup untimed steps.
- memory: peak training memory of --memory-model (densenet190) at --memory-batch-size (64), plain vs memory_efficient.
  On CUDA this is torch.cuda.max_memory_allocated over one forward+backward. Elsewhere it is the peak total size of
  live tensor storages over one forward+backward, simulated on the meta device (shapes only, no data) with a
  TorchDispatchMode that tracks every storage until it is freed: weights, gradients, input and activations, but no
  allocator overhead or kernel workspace. It needs no RAM and no compute, so it runs on any machine.

Examples:
    python scripts/bench_models.py --models resnet20 resnet18 --steps 3
    python scripts/bench_models.py --models densenet100 --memory-only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from cifarbench.models.stats import count_parameters, forward_gflops

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "model"


def available_models() -> list[str]:
    return sorted(path.stem for path in CONF_DIR.glob("*.yaml"))


def build(name: str, num_classes: int = 10, in_channels: int = 3, **overrides) -> torch.nn.Module:
    node = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    cfg = OmegaConf.create({"dataset": {"num_classes": num_classes, "in_channels": in_channels}, "model": node})
    for key, value in overrides.items():
        cfg.model[key] = value
    return instantiate(cfg.model)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_throughput(model: torch.nn.Module, device: torch.device, batch_size: int, steps: int, warmup: int) -> float:
    """Training images per second: forward, cross-entropy, backward and an SGD step on a fixed random batch."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return batch_size * steps / (time.perf_counter() - start)


class LiveStoragePeak(TorchDispatchMode):
    """Track the total bytes of live tensor storages after every op and remember the peak.

    Storages are identified by their StorageImpl, so views and in-place results are counted once, and are dropped
    as soon as the last reference (Python or autograd's saved tensors) goes away.
    """

    def __init__(self, preexisting=()):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        for tensor in preexisting:
            self._track(tensor)
        self.peak = self.current()

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in self.live:
            self.live[key] = (StorageWeakRef(storage), storage.nbytes())

    def current(self) -> int:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            del self.live[key]
        return sum(nbytes for _, nbytes in self.live.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.current()  # forget dead storages first: their addresses may be reused by this op's outputs
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                self._track(item)
        self.peak = max(self.peak, self.current())
        return out


def peak_training_memory(name: str, device: torch.device, batch_size: int, memory_efficient: bool) -> int:
    """Peak memory in bytes of one forward+backward of `name` (see the module docstring for the method)."""
    if device.type == "cuda":
        model = build(name, memory_efficient=memory_efficient).to(device).train()
        x = torch.randn(batch_size, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (batch_size,), device=device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        F.cross_entropy(model(x), y).backward()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    with torch.device("meta"):
        model = build(name, memory_efficient=memory_efficient).train()
        x = torch.empty(batch_size, 3, 32, 32)
        y = torch.zeros(batch_size, dtype=torch.long)
    tracker = LiveStoragePeak(preexisting=[*model.parameters(), *model.buffers(), x, y])
    with tracker:
        F.cross_entropy(model(x), y).backward()
    return tracker.peak


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_models: --device cuda requested but CUDA is not available")
    return torch.device(name)


def main(argv: list[str] | None = None) -> None:
    models = available_models()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=models, metavar="NAME",
                        help=f"conf/model names (default: all {len(models)})")
    parser.add_argument("--batch-size", type=int, default=128, help="training batch size for img/s (default 128)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first (default 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for CPU runs (on a busy shared CPU, 1 is often fastest)")
    parser.add_argument("--no-throughput", action="store_true", help="skip img/s (params and GFLOPs only)")
    parser.add_argument("--memory-model", default="densenet190", help="DenseNet config for the memory comparison")
    parser.add_argument("--memory-batch-size", type=int, default=64)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory_efficient comparison")
    parser.add_argument("--memory-only", action="store_true", help="only the memory_efficient comparison")
    args = parser.parse_args(argv)

    unknown = sorted(set(args.models) - set(models))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from: {', '.join(models)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device: {device} (torch {torch.__version__}, {torch.get_num_threads()} CPU threads)", flush=True)

    if not args.memory_only:
        throughput_note = "" if args.no_throughput else f", img/s: train batch {args.batch_size}, {args.steps} steps"
        print(f"GFLOPs: forward per image, FlopCounterMode (multiply-add = 2 FLOPs){throughput_note}")
        print(f"{'model':24s} {'params':>12s} {'M':>7s} {'GFLOPs':>8s} {'img/s':>9s}", flush=True)
        for name in args.models:
            model = build(name).to(device)
            params = count_parameters(model)
            gflops = forward_gflops(model, (3, 32, 32), device)
            rate = "-"
            if not args.no_throughput:
                rate = f"{train_throughput(model, device, args.batch_size, args.steps, args.warmup):.1f}"
            print(f"{name:24s} {params:12,d} {params / 1e6:7.2f} {gflops:8.3f} {rate:>9s}", flush=True)
            del model

    if not args.no_memory:
        method = ("torch.cuda.max_memory_allocated" if device.type == "cuda"
                  else "peak live tensor storage, simulated on the meta device (weights+grads+activations)")
        print(f"\npeak training memory, {args.memory_model} at batch {args.memory_batch_size}, one forward+backward "
              f"[{method}]", flush=True)
        plain = peak_training_memory(args.memory_model, device, args.memory_batch_size, memory_efficient=False)
        print(f"  memory_efficient=false: {plain / 2**30:8.2f} GiB", flush=True)
        efficient = peak_training_memory(args.memory_model, device, args.memory_batch_size, memory_efficient=True)
        print(f"  memory_efficient=true:  {efficient / 2**30:8.2f} GiB", flush=True)
        print(f"  ratio efficient/plain:  {efficient / plain:8.3f} (goal <= 0.5)", flush=True)


if __name__ == "__main__":
    main()
