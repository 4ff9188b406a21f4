"""Optimisation: LR schedules (schedules), parameter groups and training windows (param_groups), several
optimizers in one run (optimizer_sets), and optimizers torch lacks (muon)."""
