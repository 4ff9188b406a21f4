"""`python -m cifarbench.export checkpoint=<best.pt> format=onnx|torchscript`: the code is in
cifarbench.deploy.export; this is its command line."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from cifarbench.cli.typos import exit_on_typos
from cifarbench.config import config_dir
from cifarbench.errors import EXIT_USER_ERROR, CifarbenchError


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="export")
def run(cfg: DictConfig) -> None:
    from cifarbench.config import check_required
    from cifarbench.deploy.export import export_checkpoint, report_lines

    try:
        check_required(cfg, "python -m cifarbench.export")
        report = export_checkpoint(cfg.checkpoint, str(cfg.format), output=cfg.output, softmax=bool(cfg.softmax),
                                   verify_images=int(cfg.verify_images), data_root=cfg.data_root)
    except CifarbenchError as error:
        print(f"cifarbench: error: {error}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    print("\n".join(report_lines(report)))


def main() -> None:
    """`python -m cifarbench.export`: a typo in any override is one line naming the nearest valid one."""
    exit_on_typos("export", "export")
    run()


if __name__ == "__main__":
    main()
