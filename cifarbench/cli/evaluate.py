"""`python -m cifarbench.evaluate checkpoint=<best.pt>`: test loss, top-1, top-5 and per-class accuracy."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from cifarbench.cli.typos import exit_on_typos
from cifarbench.config import config_dir
from cifarbench.errors import EXIT_USER_ERROR, CheckpointError, CifarbenchError


def evaluate_checkpoint(
    checkpoint_path: str | Path,
    *,
    device: str = "auto",
    precision: str | None = None,
    batch_size: int | None = None,
    data_root: str | None = None,
    dataset_cfg: DictConfig | None = None,
    tta: str = "none",
    tta_translate_px: int = 1,
    tta_below_confidence: float | None = None,
) -> dict:
    from cifarbench import checkpoint
    from cifarbench.callbacks.tta import selective_tta
    from cifarbench.data.loaders import build_loaders
    from cifarbench.device import memory_format, resolve_device, resolve_precision, supports_precision
    from cifarbench.engine.metrics import evaluate
    from cifarbench.engine.setup import build_data
    from cifarbench.models.timm_adapter import input_spec

    predictor = selective_tta(tta, tta_translate_px, tta_below_confidence,
                              keys=("tta", "tta_translate_px", "tta_below_confidence"))
    payload = checkpoint.load_checkpoint(checkpoint_path)
    cfg = checkpoint.stored_config(payload)
    with open_dict(cfg):
        if dataset_cfg is not None:
            cfg.dataset = dataset_cfg
        if data_root is not None:
            cfg.dataset.source.root = data_root
        cfg.dataset.val_size = None  # the test split is what's evaluated; no need to carve a validation split
        if batch_size is not None:
            cfg.trainer.eval_batch_size = batch_size
        cfg.trainer.device = device
    device_ = resolve_device(device)
    precision, _ = resolve_precision(device_, precision or cfg.trainer.precision)
    if not supports_precision(device_, precision):
        print(f"cifarbench: {checkpoint_path} was trained at precision {precision}, which {device_.type} does not run "
              "well; evaluating in fp32 (choose another with precision=)", file=sys.stderr)
        precision = "32"
    data = build_data(cfg.dataset, int(cfg.trainer.seed))
    if data.num_classes != payload["num_classes"] or list(data.classes) != list(payload["classes"]):
        raise CheckpointError(
            f"{checkpoint_path} was trained on {payload['num_classes']} classes ({', '.join(payload['classes'][:5])}"
            f"{', ...' if payload['num_classes'] > 5 else ''}) but dataset {cfg.dataset.name} has {data.num_classes} "
            f"({', '.join(data.classes[:5])}{', ...' if data.num_classes > 5 else ''}); evaluate it on a dataset "
            "with the same classes"
        )
    # The stored normalisation is the one the weights were trained with.
    data.mean, data.std = tuple(payload["mean"]), tuple(payload["std"])
    model = checkpoint.model_from_checkpoint(payload, source=str(checkpoint_path))
    model = model.to(device_, memory_format=memory_format(cfg.trainer.channels_last))
    loaders = build_loaders(cfg, data, device_, splits=("test",), model_input=input_spec(cfg.model))
    result = evaluate(model, loaders.test, num_classes=data.num_classes, device=device_, precision=precision,
                      predict=predictor)
    if predictor is not None:
        result["tta"] = {"mode": tta, "below_confidence": tta_below_confidence, **predictor.cost()}
    result["classes"] = list(data.classes)
    result["epoch"] = payload.get("epoch")
    result["model_name"] = payload.get("model_name")
    return result


def format_result(result: dict) -> str:
    lines = [
        f"model {result['model_name']} (epoch {result['epoch']}), {result['count']} test images",
        f"test loss  {result['loss']:.4f}",
        f"top-1 acc  {100 * result['acc']:.2f}%",
        f"top-5 acc  {100 * result['top5']:.2f}%",
    ]
    if "tta" in result:
        tta = result["tta"]
        bar = f" below confidence {tta['below_confidence']:g}" if tta["below_confidence"] is not None else ""
        lines.append(f"TTA {tta['mode']}{bar}: {tta['forward_passes_per_image']:.3f} forward passes per image, "
                     f"{100 * tta['augmented_fraction']:.1f}% of the images augmented")
    lines.append("per-class accuracy:")
    width = max(len(c) for c in result["classes"])
    lines += [f"  {c:<{width}}  {100 * a:6.2f}%" for c, a in zip(result["classes"], result["per_class_acc"])]
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def run(cfg: DictConfig) -> None:
    from cifarbench.config import check_required

    try:
        check_required(cfg, "python -m cifarbench.evaluate")
        result = evaluate_checkpoint(
            cfg.checkpoint, device=cfg.device, precision=cfg.precision, batch_size=cfg.batch_size,
            data_root=cfg.data_root, tta=cfg.tta, tta_translate_px=cfg.tta_translate_px,
            tta_below_confidence=cfg.tta_below_confidence,
            # Resolved here, so ${paths.data_dir} means this command's paths, not those stored in the checkpoint.
            dataset_cfg=(
                OmegaConf.create(OmegaConf.to_container(cfg.dataset, resolve=True)) if cfg.get("dataset") else None
            ),
        )
    except CifarbenchError as error:
        print(f"cifarbench: error: {error}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    print(format_result(result))
    if cfg.output:
        keys = ("loss", "acc", "top5", "count", "per_class_acc", "classes", "epoch", "tta")
        summary = {k: result[k] for k in keys if k in result}
        Path(cfg.output).write_text(json.dumps(summary, indent=2))


def main() -> None:
    """`python -m cifarbench.evaluate`: a typo in any override is one line naming the nearest valid one."""
    exit_on_typos("eval", "evaluate")
    run()


if __name__ == "__main__":
    main()
