"""The sections of scripts/benchmark.py, one module each (data, overhead, options, imagefolder, airbench,
allocator), each with a `run(args, device) -> dict` that prints its table and returns its JSON entry; the module
docstrings say what each measures and how. Shared pieces: `common` (output, timing, the run header, config
composition), `goals` (the speed goals, also read by scripts/gpu_check.py) and `runs` (the two contenders of the
overhead and airbench sections: the real Trainer, its epochs timed by a callback, and one hand-written loop).

Imported as the package `bench`: scripts/benchmark.py puts scripts/ on sys.path (running `python
scripts/benchmark.py` does so by itself), so the trainer can build the `bench.runs.EpochTimer` callback by name.
"""
