"""One run of the allocator section, in its own process (keep_freed_memory is process-wide and one-way):

    python -m bench.allocator_child on|off MODEL BATCH STEPS     (with scripts/ and the repository on PYTHONPATH)

Sets cifarbench.device.keep_freed_memory on or off first, then trains MODEL (bf16 autocast, channels_last, SGD
nesterov, one fixed random batch of BATCH on the CPU: options.StepVariant) for one untimed step and STEPS timed ones,
and prints one JSON line: whether the setting took, seconds per step, and the kernel (sys) seconds and minor page
faults of the timed steps.
"""

from __future__ import annotations

import argparse
import json
import resource

import torch

from bench.options import OPTION_VARIANTS, StepVariant
from cifarbench.device import keep_freed_memory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("on", "off"))
    parser.add_argument("model")
    parser.add_argument("batch", type=int)
    parser.add_argument("steps", type=int)
    args = parser.parse_args(argv)
    tuned = keep_freed_memory(args.mode == "on")  # before the first large allocation
    options = {**OPTION_VARIANTS["channels_last"], "bf16": True}
    variant = StepVariant(args.model, options, args.batch, torch.device("cpu"))
    variant.run(1)
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds = variant.run(args.steps)
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"tuned": tuned, "s_per_step": seconds / args.steps, "sys_s": after.ru_stime - before.ru_stime,
                      "minor_faults": after.ru_minflt - before.ru_minflt}))


if __name__ == "__main__":
    main()
