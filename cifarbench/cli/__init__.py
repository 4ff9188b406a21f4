"""The command-line entry points (train, evaluate, report) and the Hydra callbacks: the only code that knows
about Hydra's entry point; everything below takes plain arguments or DictConfig nodes."""
