"""The training engine, one part per module; cifarbench.engine.trainer puts them together into the loop.

runtime (process group, device, threads, seeds, RNG state), setup (data, model, optimisation, loss from the config),
state (the run's counters, history and running sums), step (one micro-batch), stopping (signals and the cross-rank
vote), metrics (evaluating a model on a loader), hooks (the Callback base, the TrainerView callbacks see, and the
built-in hooks: LR schedule, evaluation and checkpoints, progress, metrics.json).
"""
