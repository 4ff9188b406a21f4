"""airbench: each airbench recipe (experiment=airbench94, airbench94_muon, airbench95, airbench96) through the real
Trainer against the same run as a hand-written loop (bench.runs.run_bare with its final TTA test), on synthetic data.

The trainer side is the Trainer built and fit(), so data, whitening, evaluation and the final TTA test are in its
whole-run time; the bare side does the same work without logging, checkpoints or callbacks. Both sides first warm up
alike, untimed (--ab-warmup runs each: CUDA context, cuDNN autotuning, the allocator), so that neither pays for the
other; the timed pairs then alternate which side goes first, median over --ab-repeats. Training img/s counts full
epochs after the first (warm-up) one, and its trainer/bare ratio is judged against goals.AIRBENCH_GOAL; the whole run
is wall time from start to test, and the fixed costs (the run outside its training epochs) are reported apart. The
trainer's include more than bookkeeping: a plain pass over the test set after the last epoch (the accuracy without
TTA, which every run reports beside the TTA one), TensorBoard, checkpoints and the confusion-matrix image.

A clock on a shared machine can't tell a 5% overhead from its neighbours, so each recipe's training passes are also
counted, once a side, untimed, in the second of 2 epochs of --ab-count-batches batches (bench.runs.WorkCount): FLOPs
and aten calls per step. The trainer must match the bare loop's FLOPs exactly (no extra model pass); its extra calls
per step bound the work the framework adds (logging, metrics, hooks; the epoch's own bookkeeping is spread over the
counted steps, so the bound is loose), the same on any device.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from bench.common import fmt_times, median, say, stopwatch, table
from bench.goals import AIRBENCH_GOAL
from bench.runs import run_bare, run_trainer

AIRBENCH_RECIPES = ("airbench94", "airbench94_muon", "airbench95", "airbench96")


def airbench_overrides(args, device: torch.device, recipe: str, train_size: int | None = None,
                       test_size: int | None = None, epochs: float | None = None) -> list[str]:
    batch = [f"trainer.batch_size={args.ab_batch_size}"] if args.ab_batch_size else []  # else the recipe's own
    def given(value, default):
        return default if value is None else value

    return [f"experiment={recipe}", "dataset=synthetic",
            f"dataset.source.train_size={given(train_size, args.ab_train_size)}",
            f"dataset.source.test_size={given(test_size, args.ab_test_size)}", *batch,
            f"trainer.epochs={given(epochs, args.ab_epochs)}", f"trainer.device={device}", "trainer.resume=null",
            *args.ab_override]


def run(args, device: torch.device) -> dict:
    recipes = [r.strip() for r in args.ab_recipes.split(",") if r.strip()]
    return {"recipes": {recipe: run_recipe(args, device, recipe) for recipe in recipes}}


def run_recipe(args, device: torch.device, recipe: str) -> dict:
    overrides = airbench_overrides(args, device, recipe)
    say(f"\n== {recipe}: synthetic {args.ab_train_size} train / {args.ab_test_size} test, batch "
        f"{args.ab_batch_size or 'as the recipe'}, {args.ab_epochs} epochs, {args.ab_repeats} x (trainer, bare)"
        f"{''.join(' ' + item for item in args.ab_override)} ==")
    runs: dict[str, list[dict]] = {"trainer": [], "bare": []}

    def run_side(side: str, tmp: Path) -> dict:
        if side == "bare":
            return run_bare(overrides, device, test=True)
        wall: list[float] = []
        with stopwatch(device, wall):
            result = run_trainer(overrides, "airbench94", device, tmp)
        return {**result, "run_wall_s": wall[0]}

    with tempfile.TemporaryDirectory(prefix="cifarbench_bench_airbench_") as tmp:
        for _ in range(args.ab_warmup):
            for side in ("trainer", "bare"):
                run_side(side, Path(tmp))
        for index in range(args.ab_repeats):
            for side in pair_order(index):
                runs[side].append(run_side(side, Path(tmp)))
            say(f"  trainer epochs {fmt_times(runs['trainer'][-1]['epoch_s'])} run "
                f"{runs['trainer'][-1]['run_wall_s']:.1f}s; bare epochs {fmt_times(runs['bare'][-1]['epoch_s'])} "
                f"run {runs['bare'][-1]['run_wall_s']:.1f}s ({' first, '.join(pair_order(index))} second)")
    trainer_runs, bare_runs = runs["trainer"], runs["bare"]
    batch = bare_runs[-1]["batch_size"]
    work = count_work(args, device, recipe, batch)
    full = args.ab_train_size // batch * batch  # images of a whole epoch

    def training_rate(times: list[float]) -> float:
        whole = [t for t in times[1:]][: max(int(args.ab_epochs) - 1, 1)]
        return full * len(whole) / sum(whole)

    trainer_rate = median([training_rate(r["epoch_s"]) for r in trainer_runs])
    bare_rate = median([training_rate(r["epoch_s"]) for r in bare_runs])
    trainer_wall = median([r["run_wall_s"] for r in trainer_runs])
    bare_wall = median([r["run_wall_s"] for r in bare_runs])
    trainer_fixed = median([fixed_cost_s(r) for r in trainer_runs])
    bare_fixed = median([fixed_cost_s(r) for r in bare_runs])
    result = {"batch_size": batch, "trainer_img_s": trainer_rate, "bare_img_s": bare_rate,
              "train_ratio": trainer_rate / bare_rate, "trainer_run_s": trainer_wall, "bare_run_s": bare_wall,
              "run_ratio": trainer_wall / bare_wall, "trainer_fixed_s": trainer_fixed, "bare_fixed_s": bare_fixed,
              "warmup_runs": args.ab_warmup, **work,
              "goal": f"train_ratio >= {AIRBENCH_GOAL} (per step); fixed costs reported apart"}
    say(table(["measure", "trainer", "bare", "ratio", "goal"], [
        ["training img/s (whole epochs after the first)", f"{trainer_rate:.0f}", f"{bare_rate:.0f}",
         f"{result['train_ratio']:.3f}", f">= {AIRBENCH_GOAL}"],
        ["whole run s (build, train, evaluate, TTA test)", f"{trainer_wall:.1f}", f"{bare_wall:.1f}",
         f"{result['run_ratio']:.3f}", "-"],
        ["fixed s (the run outside its training epochs)", f"{trainer_fixed:.2f}", f"{bare_fixed:.2f}",
         f"+{trainer_fixed - bare_fixed:.2f} s", "-"],
        ["GFLOP per training step (counted)", f"{work['trainer_step_gflop']:.2f}", f"{work['bare_step_gflop']:.2f}",
         f"{work['flop_ratio']:.3f}", "= 1"],
        ["aten calls per training step (counted)", f"{work['trainer_step_calls']:.0f}",
         f"{work['bare_step_calls']:.0f}", f"+{work['trainer_step_calls'] - work['bare_step_calls']:.0f}", "-"],
    ], left=(0, 4)))
    return result


def count_work(args, device: torch.device, recipe: str, batch: int) -> dict:
    """FLOPs and aten calls per training step of each side, counted in the second of 2 epochs of
    --ab-count-batches batches (untimed)."""
    overrides = airbench_overrides(args, device, recipe, train_size=args.ab_count_batches * batch,
                                   test_size=min(args.ab_test_size, 64), epochs=2)
    with tempfile.TemporaryDirectory(prefix="cifarbench_bench_work_") as tmp:
        sides = {"trainer": run_trainer(overrides, "airbench94", device, Path(tmp), count_work=True),
                 "bare": run_bare(overrides, device, count_work=True)}
    trainer, bare = sides["trainer"], sides["bare"]
    return {"trainer_step_gflop": trainer["flop"] / 1e9, "bare_step_gflop": bare["flop"] / 1e9,
            "flop_ratio": trainer["flop"] / bare["flop"], "trainer_step_calls": trainer["calls"],
            "bare_step_calls": bare["calls"], "counted_steps": [trainer["steps"], bare["steps"]]}


def pair_order(index: int) -> tuple[str, str]:
    """Which side of timed pair `index` runs first: they take turns, so neither always follows the other's run."""
    return ("trainer", "bare") if index % 2 == 0 else ("bare", "trainer")


def fixed_cost_s(result: dict) -> float:
    """A run's seconds outside its training epochs: building, data init, evaluation, TTA test and, for the trainer,
    its records (TensorBoard, checkpoints, the confusion-matrix image). On a fast GPU these dominate a short run,
    so they are reported apart from the per-step ratio."""
    return result["run_wall_s"] - sum(result["epoch_s"])
