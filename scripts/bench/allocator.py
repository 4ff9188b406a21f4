"""allocator (CPU only): training steps of large-activation models (airbench94 at batch 1024, WRN-16-8 at batch 128;
bf16 autocast, channels_last) with cifarbench.device.keep_freed_memory on (glibc keeps freed memory) and off (it hands
it back). The setting is process-wide and one-way, so each run is a child process (bench/allocator_child.py), off and
on alternating, --alloc-rounds pairs of --alloc-steps timed steps; s/step, kernel (sys) seconds and minor page faults
per run, median over the rounds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from bench.common import REPO, median, say, table

MEASURES = ("s_per_step", "sys_s", "minor_faults")


def child(mode: str, model: str, batch: int, steps: int) -> dict:
    """One allocator_child run: its JSON line. It imports this checkout's cifarbench and bench, whatever is
    installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(REPO / "scripts"), env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-m", "bench.allocator_child", mode, model, str(batch), str(steps)],
                         capture_output=True, text=True, check=True, cwd=REPO, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args, device: torch.device) -> dict:
    if device.type != "cpu":
        say("\n== allocator: CPU only; skipped ==")
        return {"skipped": "not a CPU run"}
    say(f"\n== allocator: glibc keeps freed memory (on) or hands it back (off), {args.alloc_steps} steps ==")
    rows, result = [], {}
    for model, batch in (("airbench94", 1024), ("wrn_16_8", 128)):
        runs: dict[str, list[dict]] = {"on": [], "off": []}
        for _ in range(args.alloc_rounds):
            for mode in ("off", "on"):
                runs[mode].append(child(mode, model, batch, args.alloc_steps))
        figures = {mode: {key: median([r[key] for r in values]) for key in MEASURES} for mode, values in runs.items()}
        result[model] = {**figures, "speedup": figures["off"]["s_per_step"] / figures["on"]["s_per_step"]}
        for mode in ("off", "on"):
            f = figures[mode]
            rows.append([f"{model} batch {batch}", mode, f"{f['s_per_step']:.3f}", f"{f['sys_s']:.2f}",
                         f"{f['minor_faults']:,.0f}"])
        say(f"  {model}: on is {result[model]['speedup']:.2f}x the speed of off")
    say(table(["model", "keep freed memory", "s/step", "sys s", "minor faults"], rows, left=(0, 1)))
    return result
