"""`python -m cifarbench.predict checkpoint=<best.pt> inputs=<folder or files> output=predictions.csv`: the code is in
cifarbench.deploy.predict; this is its command line."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, ListConfig

from cifarbench.cli.typos import exit_on_typos
from cifarbench.config import config_dir
from cifarbench.errors import EXIT_USER_ERROR, CifarbenchError


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="predict")
def run(cfg: DictConfig) -> None:
    from collections import Counter

    from cifarbench.config import check_required
    from cifarbench.deploy.predict import predict_files, write_csv

    try:
        check_required(cfg, "python -m cifarbench.predict")
        inputs = list(cfg.inputs) if isinstance(cfg.inputs, ListConfig) else str(cfg.inputs)
        predictions = predict_files(cfg.checkpoint, inputs, top_k=int(cfg.top_k), tta=str(cfg.tta),
                                    batch_size=int(cfg.batch_size), device=str(cfg.device))
        write_csv(predictions, cfg.output)
    except CifarbenchError as error:
        print(f"cifarbench: error: {error}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    counts = Counter(p.classes[0] for p in predictions)
    print(f"{len(predictions)} images -> {cfg.output}; top-1 classes: "
          + ", ".join(f"{name} {count}" for name, count in counts.most_common()))


def main() -> None:
    """`python -m cifarbench.predict`: a typo in any override is one line naming the nearest valid one."""
    exit_on_typos("predict", "predict")
    run()


if __name__ == "__main__":
    main()
