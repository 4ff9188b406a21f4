"""overhead: training img/s through the real Trainer against a bare hand-written loop.

The trainer runs as configured (progress bars, TensorBoard, a checkpoint every epoch, metrics.json, per-epoch
evaluation, a log file); the bare loop (bench.runs.run_bare) has the same model, batch size, DeviceLoader batches (same
augmentation), SGD-nesterov optimizer, per-step cosine scheduler and device. Both are timed the same way: wall time
around each epoch's training pass (the trainer's, by the bench.runs.EpochTimer callback from on_epoch_start to
on_train_epoch_end; the bare loop's epoch), synchronised; the first epoch is a warm-up and is excluded. The one-off
work between epochs (evaluation, checkpoint, TensorBoard, metrics.json) is NOT in that figure; a second figure, wall
time around `fit()` (Trainer construction excluded) over all epochs, includes it and is reported beside it. Runs
alternate trainer, bare, trainer, bare, ... and each figure is the median over --overhead-repeats runs. The steady
ratio is judged against goals.OVERHEAD_GOAL.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from bench.common import fmt_times, median, say, table
from bench.goals import OVERHEAD_GOAL
from bench.runs import run_bare, run_trainer


def overhead_overrides(args, device: torch.device) -> list[str]:
    return [
        "dataset=synthetic",
        f"dataset.source.train_size={args.overhead_train_size}",
        f"dataset.source.test_size={args.overhead_test_size}",
        f"model={args.overhead_model}",
        f"trainer.batch_size={args.overhead_batch_size}",
        f"trainer.epochs={args.overhead_epochs}",
        f"trainer.device={device}",
        "trainer.progress_bar=true",
        "trainer.checkpoint_every_n_epochs=1",
    ]


def run(args, device: torch.device) -> dict:
    if args.overhead_epochs < 2:
        raise SystemExit("benchmark: --overhead-epochs must be >= 2 (the first epoch is a warm-up)")
    overrides = overhead_overrides(args, device)
    say(
        f"\n== framework overhead: {args.overhead_model}, synthetic {args.overhead_train_size} train / "
        f"{args.overhead_test_size} test images, batch {args.overhead_batch_size}, {args.overhead_epochs} epochs, "
        f"{args.overhead_repeats} x (trainer, bare) alternating =="
    )
    say(
        "trainer: cifarbench Trainer(...).fit() with the default trainer config (progress bars, TensorBoard, "
        "checkpoint every epoch, metrics.json, per-epoch eval, log file)"
    )
    say("bare:    hand-written loop, same DeviceLoader batches, model, SGD nesterov, per-step cosine scheduler")
    say(
        "steady img/s: train images of epochs 2..N / wall time of those epochs' training passes (synchronised); "
        "epoch 1 (warm-up) and the between-epoch eval/checkpoint/logging are excluded"
    )
    say(
        "fit img/s: all train images / wall time of fit() (construction excluded) -- includes per-epoch eval, "
        "checkpoints, TensorBoard, metrics.json and the final test, which the bare loop does not do"
    )
    if not sys.stderr.isatty():
        say("note: stderr is not a terminal, so the trainer hides its progress bars (RunLog shows them on a TTY only)")
    trainer_runs, bare_runs = [], []
    with tempfile.TemporaryDirectory(prefix="cifarbench_bench_") as tmp:
        for repeat in range(args.overhead_repeats):
            trainer_runs.append(run_trainer(overrides, args.overhead_model, device, Path(tmp)))
            bare_runs.append(run_bare(overrides, device))
            say(
                f"  repeat {repeat + 1}: trainer epochs {fmt_times(trainer_runs[-1]['epoch_s'])}, "
                f"bare epochs {fmt_times(bare_runs[-1]['epoch_s'])}"
            )

    def steady(side: dict) -> float:
        return side["images_per_epoch"] * (len(side["epoch_s"]) - 1) / sum(side["epoch_s"][1:])

    trainer_steady = [steady(r) for r in trainer_runs]
    bare_steady = [steady(r) for r in bare_runs]
    trainer_internal = [
        r["images_per_epoch"] * (len(r["trainer_epoch_s"]) - 1) / sum(r["trainer_epoch_s"][1:]) for r in trainer_runs
    ]
    trainer_fit = [r["images_per_epoch"] * len(r["epoch_s"]) / r["fit_wall_s"] for r in trainer_runs]
    bare_all = [r["images_per_epoch"] * len(r["epoch_s"]) / sum(r["epoch_s"]) for r in bare_runs]
    result = {
        "model": args.overhead_model,
        "train_images": args.overhead_train_size,
        "test_images": args.overhead_test_size,
        "batch_size": args.overhead_batch_size,
        "epochs": args.overhead_epochs,
        "repeats": args.overhead_repeats,
        "images_per_epoch": trainer_runs[0]["images_per_epoch"],
        "bare_images_per_epoch": bare_runs[0]["images_per_epoch"],
        "progress_bars_shown": trainer_runs[0]["bars_shown"],
        "measure": "steady: wall time of the training passes of epochs 2..N (eval/checkpoint excluded); "
        "fit: wall time of fit() over all epochs (eval, checkpoints, final test included)",
        "trainer_img_s": median(trainer_steady),
        "bare_img_s": median(bare_steady),
        "trainer_internal_img_s": median(trainer_internal),
        "trainer_fit_img_s": median(trainer_fit),
        "bare_all_epochs_img_s": median(bare_all),
        "per_repeat_ratio": [a / b for a, b in zip(trainer_steady, bare_steady)],
        "trainer_outside_training_s": median([r["outside_training_s"] for r in trainer_runs]),
        "goal_ratio": OVERHEAD_GOAL,
        "runs": {"trainer": trainer_runs, "bare": bare_runs},
    }
    result["ratio"] = result["trainer_img_s"] / result["bare_img_s"]
    result["fit_ratio"] = result["trainer_fit_img_s"] / result["bare_all_epochs_img_s"]
    result["meets_goal"] = result["ratio"] >= OVERHEAD_GOAL
    if result["images_per_epoch"] != result["bare_images_per_epoch"]:
        say("WARNING: the trainer and the bare loop saw different numbers of images per epoch")
    say()
    say(
        table(
            ["measure", "trainer img/s", "bare img/s", "trainer/bare", "goal"],
            [
                [
                    "steady (epochs 2..N, training passes only)",
                    result["trainer_img_s"],
                    result["bare_img_s"],
                    f"{result['ratio']:.3f}",
                    f">={OVERHEAD_GOAL} {'met' if result['meets_goal'] else 'NOT met'}",
                ],
                [
                    "fit() wall, all epochs (trainer also evals/ckpts)",
                    result["trainer_fit_img_s"],
                    result["bare_all_epochs_img_s"],
                    f"{result['fit_ratio']:.3f}",
                    "-",
                ],
            ],
            left=(0, 4),
        )
    )
    say(
        f"(the trainer's own time/epoch_s gives {result['trainer_internal_img_s']:,.0f} img/s for epochs 2..N; "
        f"per-repeat steady ratios: {', '.join(f'{r:.3f}' for r in result['per_repeat_ratio'])}; "
        f"fit() spent {result['trainer_outside_training_s']:.1f} s per run outside the training passes: "
        f"eval, checkpoints, logging, final test)"
    )
    return result
