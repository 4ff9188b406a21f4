"""Hooks that plug into the loop, one module each: the built-in ones that every run installs (lr_schedule,
evaluation with best_checkpoint) and the tricks a config adds (ema, swa, lookahead, tta, tensorboard_extras).
The base class and the hook names are in cifarbench.engine.hooks."""
