"""options: training-step img/s for a small and a large model: fp32 contiguous eager (baseline) against
channels_last, bf16 autocast, torch.compile, each alone and all together, on one fixed random batch.

The first --options-warmup steps of each variant (torch.compile's compilation included) are not timed; the variants
are then timed round-robin, --options-steps steps per round, median over --options-rounds rounds.
"""

from __future__ import annotations

import gc

import torch
import torch.nn.functional as F

from bench.common import compose, median, on_off, say, stopwatch, table
from cifarbench.device import autocast, native_bf16

OPTION_VARIANTS = {
    "baseline": dict(channels_last=False, bf16=False, compile=False),
    "channels_last": dict(channels_last=True, bf16=False, compile=False),
    "bf16": dict(channels_last=False, bf16=True, compile=False),
    "compile": dict(channels_last=False, bf16=False, compile=True),
    "all": dict(channels_last=True, bf16=True, compile=True),
}


class StepVariant:
    """One model + optimizer + fixed batch, set up for one combination of options; `step()` is a training step."""

    def __init__(self, model_name: str, options: dict, batch_size: int, device: torch.device):
        from cifarbench.config import build

        cfg = compose(["dataset=synthetic", f"model={model_name}"])
        torch.manual_seed(0)
        fmt = torch.channels_last if options["channels_last"] else torch.contiguous_format
        self.device = device
        self.model = build(cfg.model).to(device, memory_format=fmt).train()
        self.forward = torch.compile(self.model) if options["compile"] else self.model
        self.optimizer = build(cfg.optimizer)(self.model.parameters())
        self.precision = "bf16" if options["bf16"] else "32"
        generator = torch.Generator().manual_seed(1)
        self.images = torch.randn(batch_size, 3, 32, 32, generator=generator).to(device, memory_format=fmt)
        self.labels = torch.randint(0, 10, (batch_size,), generator=generator).to(device)

    def step(self) -> None:
        with autocast(self.device, self.precision):  # as Trainer.train_step
            logits = self.forward(self.images)
            loss = F.cross_entropy(logits.float(), self.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def run(self, steps: int) -> float:
        """Seconds for `steps` training steps, synchronised."""
        times: list[float] = []
        with stopwatch(self.device, times):
            for _ in range(steps):
                self.step()
        return times[0]


def run(args, device: torch.device) -> dict:
    models = [m for m in args.options_models.split(",") if m]
    names = ["baseline", *(v for v in args.options_variants.split(",") if v and v != "baseline")]
    unknown = sorted(set(names) - set(OPTION_VARIANTS))
    if unknown:
        raise SystemExit(f"benchmark: --options-variants: unknown {unknown}; choose from {', '.join(OPTION_VARIANTS)}")
    bs = args.options_batch_size
    say(
        f"\n== training-step options: batch {bs}, SGD nesterov step on one fixed random batch, "
        f"{args.options_warmup} untimed warm-up steps per variant (torch.compile's compilation included), "
        f"then {args.options_rounds} round-robin rounds of {args.options_steps} steps (median) =="
    )
    results = []
    for model_name in models:
        variants, rows = {}, {}
        for name in names:
            options = OPTION_VARIANTS[name]
            row = {"model": model_name, "variant": name, **options, "img_s": None, "ratio": None, "error": None}
            rows[name] = row
            try:
                variant = StepVariant(model_name, options, bs, device)
                row["warmup_s"] = variant.run(args.options_warmup)
                variants[name] = variant
            except Exception as error:  # e.g. no C++ compiler for torch.compile, bf16 not supported here
                row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
                say(f"  {model_name} {name}: failed ({row['error']})")
        timings = {name: [] for name in variants}
        for _ in range(args.options_rounds):
            for name, variant in variants.items():
                timings[name].append(bs * args.options_steps / variant.run(args.options_steps))
        for name, values in timings.items():
            rows[name]["img_s"] = median(values)
            rows[name]["rounds_img_s"] = values
        base = rows["baseline"]["img_s"]
        for row in rows.values():
            if row["img_s"] is not None and base:
                row["ratio"] = row["img_s"] / base
        results.extend(rows.values())
        say(
            f"  {model_name}: "
            + ", ".join(f"{n} {r['img_s']:,.0f}" if r["img_s"] else f"{n} failed" for n, r in rows.items())
            + " img/s"
        )
        del variants
        gc.collect()
        torch._dynamo.reset()
    say()
    say(
        table(
            ["model", "variant", "channels_last", "bf16", "compile", "img/s", "vs baseline", "warm-up s"],
            [
                [
                    r["model"],
                    r["variant"],
                    on_off(r["channels_last"]),
                    on_off(r["bf16"]),
                    on_off(r["compile"]),
                    r["img_s"] if r["img_s"] is not None else f"failed: {r['error']}"[:60],
                    f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-",
                    r.get("warmup_s"),
                ]
                for r in results
            ],
            left=(0, 1),
        )
    )
    if device.type == "cpu":
        say(f"(bf16 on this CPU: {native_bf16(device)[1]})")
    return {
        "batch_size": bs,
        "warmup_steps": args.options_warmup,
        "steps": args.options_steps,
        "rounds": args.options_rounds,
        "compile_warmup": "excluded from img/s",
        "results": results,
    }
