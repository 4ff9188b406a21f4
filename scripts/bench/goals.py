"""The speed goals the benchmark judges its figures against (issue 5 and the project's GPU goals), in one place:
scripts/benchmark.py's sections and scripts/gpu_check.py both read them here. No imports, so the GPU check can read
them without loading torch."""

DATA_GOALS = {"a": 10.0, "b": 5.0}  # device / per-sample loader img/s on the 2-core machine, per data config
LOADER_GOAL_IMG_S = 1_000_000  # the DeviceLoader alone, crop + flip + Cutout, on one GPU
OVERHEAD_GOAL = 0.95  # trainer / bare training img/s for resnet20 on the CPU
AIRBENCH_GOAL = 0.95  # trainer / bare training img/s (per step) of each airbench recipe; fixed costs reported apart
