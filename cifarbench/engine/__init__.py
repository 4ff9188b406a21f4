"""The training engine, one part per module; cifarbench.engine.trainer puts them together into the loop.

runtime (process group, device, threads, seeds, RNG state), setup (data, model, optimisation, loss from the config),
state (the run's counters and history), step (one micro-batch), stopping (signals and the cross-rank vote),
checkpointing (last.pt/best.pt from a registry of stateful parts), callbacks (the hooks tricks plug into).
"""
