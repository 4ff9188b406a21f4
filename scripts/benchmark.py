#!/usr/bin/env python
"""Benchmarks of issue 5: data throughput, framework overhead and training-step options, side by side in one run.

Sections (pick with --only data,overhead,options; each is a module of scripts/bench/ whose docstring says what it
measures and how):

data         the seed articles' per-sample pipeline (torchvision on PIL images, DataLoader workers) against
             cifarbench's DeviceLoader with the same ops, crop + flip + Cutout (a) and with AutoAugment (b); then the
             DeviceLoader alone at several batch sizes against 1M img/s (bench/data.py)
overhead     training img/s of the real Trainer against a bare hand-written loop (same model, batches, optimizer,
             schedule), over each epoch's training pass and over the whole fit() (bench/overhead.py)
imagefolder  (with --image-folder PATH) the Trainer on an image folder: per-sample DataLoader against the decoded
             uint8 cache on the device loader (bench/imagefolder.py)
options      training-step img/s for a small and a large model: fp32 eager against channels_last, bf16 autocast,
             torch.compile, each alone and all together (bench/options.py)
airbench     the airbench recipes through the Trainer against the same run as a bare loop (bench/airbench.py)
allocator    CPU: glibc keeping freed memory on against off, on large-activation models (bench/allocator.py)

The two contenders of overhead and airbench are in bench/runs.py: the Trainer, its epochs timed by a training callback,
and one hand-written loop that serves both sections. The speed goals are in bench/goals.py (scripts/gpu_check.py reads
them too).

Timers wait for the device (cifarbench.device.synchronize) before they start and stop, so CUDA figures are honest.
Backend flags are set once as the trainer sets them (cifarbench.device.configure_backends: cudnn.benchmark and TF32
on CUDA, nothing on the CPU). The header reports the device and torch.get_num_threads(). On a CPU shared with other
jobs, torch's intra-op threads stall each other and every figure drops (often several-fold): measure on an idle
machine. --threads 1 makes the figures steadier there; the device path then has one core while the per-sample
path keeps its worker processes, so the data ratio it gives is conservative.

Examples:
    python scripts/benchmark.py                                   # everything, ~10 min on an idle 2-core CPU
    python scripts/benchmark.py --only data --device cuda --json bench.json
    python scripts/benchmark.py --quick --device cpu              # tiny sizes: checks that it runs, not speed
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
for path in (SCRIPTS.parent, SCRIPTS):  # the checkout's cifarbench (without `pip install -e .`) and bench/
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402

from bench import airbench, allocator, data, imagefolder, options, overhead  # noqa: E402
from bench.common import cpu_name, header, say  # noqa: E402
from bench.options import OPTION_VARIANTS  # noqa: E402
from cifarbench.device import configure_backends, resolve_device  # noqa: E402

# In the order they run.
SECTIONS = {"data": data, "overhead": overhead, "options": options, "imagefolder": imagefolder, "airbench": airbench,
            "allocator": allocator}
DEFAULT_SECTIONS = ("data", "overhead", "options")  # imagefolder needs --image-folder

# Sizes of the full run (sized for ~10 minutes on an idle 2-core CPU) and of --quick (a smoke test).
PROFILES = {
    "full": dict(
        num_images=50_000,
        data_images=10_240,
        data_rounds=3,
        workers=2,
        data_batch_size=128,
        loader_batch_sizes="128,512,2048",
        overhead_model="resnet20",
        overhead_train_size=4096,
        overhead_test_size=512,
        overhead_batch_size=128,
        overhead_epochs=3,
        overhead_repeats=3,
        options_models="resnet20,resnet18",
        options_variants=",".join(OPTION_VARIANTS),
        options_batch_size=128,
        options_warmup=2,
        options_steps=2,
        options_rounds=3,
        if_batches=100,
        if_epochs=2,
        if_repeats=2,
        ab_recipes=",".join(airbench.AIRBENCH_RECIPES),
        ab_train_size=10240,
        ab_test_size=2000,
        ab_batch_size=None,
        ab_epochs=3,
        ab_repeats=2,
        ab_warmup=1,
        ab_count_batches=2,
        alloc_steps=4,
        alloc_rounds=2,
    ),
    "quick": dict(
        num_images=512,
        data_images=256,
        data_rounds=1,
        workers=2,
        data_batch_size=64,
        loader_batch_sizes="64,128",
        overhead_model="resnet20",
        overhead_train_size=256,
        overhead_test_size=64,
        overhead_batch_size=64,
        overhead_epochs=2,
        overhead_repeats=1,
        # torch.compile takes minutes on a busy 2-core machine: the quick run leaves it out.
        options_models="resnet20,resnet32",
        options_variants="baseline,channels_last,bf16",
        options_batch_size=8,
        options_warmup=1,
        options_steps=1,
        options_rounds=1,
        if_batches=2,
        if_epochs=2,
        if_repeats=1,
        # airbench95/96 (4.6M and 12.7M parameters) take minutes a run on a CPU: the quick run keeps the two 94s.
        ab_recipes="airbench94,airbench94_muon",
        ab_train_size=512,
        ab_test_size=128,
        ab_batch_size=128,
        ab_epochs=2,
        ab_repeats=1,
        ab_warmup=0,
        ab_count_batches=1,
        alloc_steps=1,
        alloc_rounds=1,
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="cifarbench benchmarks (issue 5): data throughput, framework overhead, training-step options.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--only", default=",".join(DEFAULT_SECTIONS),
                        help=f"comma-separated sections of {tuple(SECTIONS)}")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also save the results here")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    group = parser.add_argument_group("data (defaults: full profile; --quick shrinks them)")
    group.add_argument("--num-images", type=int, help="random uint8 images in the dataset (full: 50000)")
    group.add_argument("--data-images", type=int, help="images per timed window (full: 10240)")
    group.add_argument("--data-rounds", type=int, help="alternating windows per loader (full: 3)")
    group.add_argument("--data-batch-size", type=int, help="batch size of both loaders (full: 128)")
    group.add_argument("--workers", type=int, help="DataLoader worker processes of the per-sample path (full: 2)")
    group.add_argument("--loader-batch-sizes", help="DeviceLoader alone, crop+flip+Cutout, at each of these batch "
                       "sizes, against the 1M img/s goal (full: 128,512,2048)")
    group.add_argument(
        "--padding-mode",
        default="constant",
        choices=("constant", "reflect"),
        help="RandomCrop padding (conf/augment/standard.yaml uses constant)",
    )
    group = parser.add_argument_group("overhead")
    group.add_argument("--overhead-model", help="conf/model name (full: resnet20)")
    group.add_argument("--overhead-train-size", type=int, help="synthetic training images (full: 4096)")
    group.add_argument("--overhead-test-size", type=int, help="synthetic test images (full: 512)")
    group.add_argument("--overhead-batch-size", type=int, help="full: 128")
    group.add_argument("--overhead-epochs", type=int, help="epochs per run, the first one untimed (full: 3)")
    group.add_argument("--overhead-repeats", type=int, help="(trainer, bare) pairs, alternating (full: 3)")
    group = parser.add_argument_group("imagefolder (needs --image-folder)")
    group.add_argument("--image-folder", type=Path, help="root/train/<class>/* and root/test/<class>/* images")
    group.add_argument("--if-model", default="resnet20", help="conf/model name (default resnet20)")
    group.add_argument("--if-batches", type=int, help="training batches of 128 per epoch (full: 100)")
    group.add_argument("--if-epochs", type=int, help="epochs per run, the first one untimed (full: 2)")
    group.add_argument("--if-repeats", type=int, help="(per-sample, device) pairs, alternating (full: 2)")
    group = parser.add_argument_group("airbench (the airbench recipes: fit() against a bare loop)")
    group.add_argument("--ab-recipes", help=f"comma-separated experiments (full: "
                       f"{','.join(airbench.AIRBENCH_RECIPES)}; quick: airbench94,airbench94_muon)")
    group.add_argument("--ab-train-size", type=int, help="synthetic training images (full: 10240)")
    group.add_argument("--ab-test-size", type=int, help="synthetic test images (full: 2000)")
    group.add_argument("--ab-batch-size", type=int, help="full: each recipe's own (1024, 2000)")
    group.add_argument("--ab-epochs", type=float, help="epochs per run, the first one untimed (full: 3)")
    group.add_argument("--ab-repeats", type=int, help="(trainer, bare) pairs, alternating (full: 2)")
    group.add_argument("--ab-warmup", type=int, help="untimed runs of each side first (CUDA/cuDNN warm-up; full: 1)")
    group.add_argument("--ab-override", action="append", default=[], metavar="KEY=VALUE",
                       help="a training-config override for both sides of every recipe, repeatable (e.g. "
                            "model.widths=[16,32,32] for a smoke run; default: the recipes as shipped)")
    group.add_argument("--ab-count-batches", type=int,
                       help="batches an epoch of the untimed runs that count FLOPs and aten calls (full: 2)")
    group = parser.add_argument_group("allocator (CPU: glibc keeping freed memory, on against off)")
    group.add_argument("--alloc-steps", type=int, help="timed training steps per model and run (full: 4)")
    group.add_argument("--alloc-rounds", type=int, help="(on, off) pairs, alternating (full: 2)")
    group = parser.add_argument_group("options")
    group.add_argument("--options-models", help="comma-separated conf/model names (full: resnet20,resnet18)")
    group.add_argument(
        "--options-variants",
        help=f"comma-separated subset of {','.join(OPTION_VARIANTS)} (full: all; quick: no compile)",
    )
    group.add_argument("--options-batch-size", type=int, help="full: 128")
    group.add_argument("--options-warmup", type=int, help="untimed steps per variant (full: 2)")
    group.add_argument("--options-steps", type=int, help="timed steps per round (full: 2)")
    group.add_argument("--options-rounds", type=int, help="round-robin rounds (full: 3)")
    args = parser.parse_args(argv)
    for key, value in PROFILES["quick" if args.quick else "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    if "imagefolder" in args.sections and args.image_folder is None:
        parser.error("--only imagefolder needs --image-folder PATH")
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown or not args.sections:
        parser.error(f"--only: unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from cifarbench.errors import CifarbenchError

    try:
        device = resolve_device(args.device)
    except CifarbenchError as error:
        print(f"benchmark: error: {error}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    # As the trainer does (cudnn.benchmark and TF32 on CUDA; nothing on the CPU), once for every contender.
    configure_backends(device, deterministic=False)
    info = header(device, args)
    say(
        f"cifarbench benchmark ({info['profile']}): device {info['device']} ({info['device_name']}), "
        f"torch.get_num_threads()={info['torch_num_threads']}, os.cpu_count()={info['cpu_count']}"
    )
    say(f"torch {info['torch']}, torchvision {info['torchvision']}, python {info['python']}, git {info['git']}")
    say(f"host CPU: {cpu_name()}, torch CPU capability {info['cpu_capability']}; bf16: {info['cpu_bf16']}")
    say(f"command: {info['command']}")
    results: dict = {"header": info}
    started = time.perf_counter()
    for section in SECTIONS:
        if section in args.sections:
            section_started = time.perf_counter()
            results[section] = SECTIONS[section].run(args, device)
            results[section]["section_wall_s"] = time.perf_counter() - section_started
            # Every section's figures involve the host CPU (all of them on --device cpu; the per-sample loader's
            # workers on any device), so each carries its capability.
            results[section]["cpu_capability"] = info["cpu_capability"]
            say(f"[{section}: {results[section]['section_wall_s']:.0f} s, host CPU capability "
                f"{info['cpu_capability']}]")
    results["header"]["total_wall_s"] = time.perf_counter() - started
    say(f"\ntotal {results['header']['total_wall_s']:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
        say(f"results saved to {args.json}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
