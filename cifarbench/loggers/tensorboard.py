"""TensorBoard for people reviewing runs: hparams (so a sweep's runs compare in the HPARAMS tab), the augmented
training samples, the confusion matrix and per-class accuracy, and the resolved config as text.

torch is imported only by the functions that write tensors, so the sweep callback and the report that use the
hparams helpers start without it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from cifarbench.loggers.base import Logger, LoggerRun
from cifarbench.reporting.table import COMPLETED, run_row

if TYPE_CHECKING:
    from torch import Tensor
    from torch.utils.tensorboard import SummaryWriter


# ------------------------------------------------------------------------------------------------ hparams
# Config values that describe a run even when nobody overrode them; paths that a config lacks are skipped.
KEY_CONFIG_PATHS = (
    "optimizer.lr",
    "optimizer.weight_decay",
    "trainer.epochs",
    "trainer.batch_size",
    "loss.label_smoothing",
    "trainer.seed",
    "trainer.precision",
)
# Config-group choices that say nothing about the experiment.
IGNORED_CHOICE_PREFIXES = ("hydra", "paths")
# HPARAMS metric tag -> report column: the same numbers the results table shows.
HPARAM_METRICS = {
    "hparams/best_val_acc": "best_val_acc",
    "hparams/selected_test_acc": "test_acc",
    "hparams/test_top5": "test_top5",
    "hparams/final_test_acc": "final_test_acc",
    "hparams/params_m": "params_m",
    "hparams/gflops": "gflops",
    "hparams/wall_time_s": "wall_time_s",
    "hparams/img_per_s": "img_per_s",
}
SESSION_STATUS = {
    COMPLETED: "STATUS_SUCCESS",
    "failed": "STATUS_FAILURE",
    "interrupted": "STATUS_ABORTED",
    "running": "STATUS_RUNNING",
}


def _scalar(value: Any) -> str | bool | int | float | None:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Sequence):
        return "[" + ",".join(str(item) for item in value) + "]"
    return str(value)


def flatten_hparams(values: Mapping | DictConfig, prefix: str = "") -> dict[str, str | bool | int | float]:
    """Nested mapping -> {"a.b": scalar}; lists become "[x,y]" strings, None values are left out."""
    if isinstance(values, DictConfig):
        values = OmegaConf.to_container(values, resolve=True)
    flat: dict[str, str | bool | int | float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_hparams(value, prefix=f"{name}."))
            continue
        value = _scalar(value)
        if value is not None:
            flat[name] = value
    return flat


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Hydra command-line overrides -> {key: typed value} (group choices and key=value alike; deletions skipped)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parsed: dict[str, Any] = {}
    for text in overrides:
        try:
            override = OverridesParser.create().parse_override(text)
        except OverrideParseException:  # kept as text rather than lost
            key, _, value = text.lstrip("+~").partition("=")
            parsed[key] = value
            continue
        if not override.is_delete():
            parsed[override.key_or_group] = _scalar(override.value())
    return parsed


def _augment_ops(cfg: DictConfig) -> str | None:
    # Hydra lists no choice for a list-valued group such as augment=[standard,cutout]; the op names say it all.
    augment = OmegaConf.select(cfg, "augment", default=None)
    if not isinstance(augment, DictConfig):
        return None
    return "[" + ",".join(str(name) for name, op in augment.items_ex(resolve=False) if op is not None) + "]"


def _current_hydra_choices_and_overrides() -> tuple[dict, list[str]]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}, []
    hydra_cfg = HydraConfig.get()
    return dict(hydra_cfg.runtime.choices), list(hydra_cfg.overrides.task)


def hparams_from_run(
    cfg: DictConfig | Mapping,
    overrides: Sequence[str] | None = None,
    choices: Mapping[str, Any] | None = None,
    key_paths: Sequence[str] = KEY_CONFIG_PATHS,
) -> dict[str, str | bool | int | float]:
    """The hparams of a run: key config values, then config-group choices, then the overrides (which win).

    Inside a Hydra job `overrides` and `choices` default to the job's own. Every run of a sweep gets the same keys
    from `key_paths` and the choices, so TensorBoard's HPARAMS table has the same columns for all of them.
    """
    if overrides is None or choices is None:
        current_choices, current_overrides = _current_hydra_choices_and_overrides()
        choices = current_choices if choices is None else choices
        overrides = current_overrides if overrides is None else overrides
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    values: dict[str, Any] = {}
    for path in key_paths:
        values[path] = _scalar(OmegaConf.select(cfg, path, default=None))
    values["augment.ops"] = _augment_ops(cfg)
    for group, option in choices.items():
        if not str(group).startswith(IGNORED_CHOICE_PREFIXES):
            values[str(group)] = _scalar(option)
    values.update(parse_overrides(overrides))
    return {key: value for key, value in values.items() if value is not None}


def hparams_metrics(metrics: Mapping) -> dict[str, float | None]:
    """HPARAMS metric tag -> value from a metrics.json payload (None where the run has no such value)."""
    row = run_row(dict(metrics), Path("."), "")
    return {tag: row[column] for tag, column in HPARAM_METRICS.items()}


def _set_session_status(session_end, status: str) -> None:
    # torch's hparams() always says STATUS_SUCCESS; a failed run should show as failed in the HPARAMS table.
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    value = session_end.value[0]
    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    data.session_end_info.status = api_pb2.Status.Value(SESSION_STATUS.get(status, "STATUS_UNKNOWN"))
    data.session_end_info.end_time_secs = time.time()
    value.metadata.plugin_data.content = data.SerializeToString()


def log_hparams(
    writer: SummaryWriter,
    hparams: Mapping,
    metrics: Mapping[str, float | None],
    step: int | None = None,
    status: str = COMPLETED,
) -> None:
    """Write the HPARAMS plugin summaries and the metric scalars into the writer's own event directory.

    `SummaryWriter.add_hparams` opens a sub-run per call, which TensorBoard lists as a separate run; here
    everything goes into the writer's file, so the run, its curves and its hparams are one row. Every tag of
    `metrics` is declared (so all runs show the same columns); None values are not written. Pass the last epoch as
    `step`. Booleans are written as "True"/"False" strings: torch's hparams() would store them as numbers.
    """
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    values = {
        key: str(value) if isinstance(value, bool) else value
        for key, value in flatten_hparams(hparams).items()
    }
    experiment, session_start, session_end = hparams_summaries(values, dict(metrics))
    _set_session_status(session_end, status)
    file_writer = writer._get_file_writer()  # public `file_writer` is None once the writer was closed
    for summary in (experiment, session_start, session_end):
        file_writer.add_summary(summary, step)
    for tag, value in metrics.items():
        if value is not None and math.isfinite(value):
            writer.add_scalar(tag, value, step)
    writer.flush()


# --------------------------------------------------------------------------------------------------- images
# Tags every run uses, so the IMAGES and TEXT tabs line runs up side by side.
AUGMENTED_SAMPLES_TAG = "train/augmented_samples"
CONFIG_TAG = "config"
CONFUSION_ANNOTATE_MAX_CLASSES = 12  # beyond this, numbers in cells become unreadable
CONFUSION_LABEL_MAX_CLASSES = 30  # beyond this (CIFAR-100), tick labels become unreadable


def _row_normalised(confusion: Tensor) -> Tensor:
    """Each true class's row as fractions of its support, so the diagonal is the per-class accuracy (recall)."""
    import torch

    confusion = confusion.detach().to("cpu", dtype=torch.float64)
    return confusion / confusion.sum(dim=1, keepdim=True).clamp_min(1)


def confusion_heatmap(confusion: Tensor, min_size: int = 256) -> Tensor:
    """Pure-torch rendering (no labels): uint8 (3, H, W), white = 0 up to dark blue = 1 of the row's samples."""
    import torch

    fractions = _row_normalised(confusion).float()
    white = torch.tensor([1.0, 1.0, 1.0])
    blue = torch.tensor([0.03, 0.19, 0.42])
    colours = white[:, None, None] + (blue - white)[:, None, None] * fractions[None]
    cell = max(
        1, -(-min_size // fractions.shape[0])
    )  # ceil: cells of whole pixels, at least min_size overall
    image = colours.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2)
    return (image * 255).round().to(torch.uint8)


def _confusion_figure(confusion: Tensor, class_names: Sequence[str]):
    from cifarbench.reporting.plots import agg_figure

    fractions = _row_normalised(confusion).numpy()
    num_classes = len(fractions)
    side = min(12.0, 4.0 + 0.3 * num_classes)
    figure = agg_figure(side + 1.0, side)
    axes = figure.add_subplot()
    shown = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(shown, ax=axes, label="fraction of the true class")
    if num_classes <= CONFUSION_LABEL_MAX_CLASSES:
        axes.set_xticks(range(num_classes), list(class_names), rotation=90)
        axes.set_yticks(range(num_classes), list(class_names))
    if num_classes <= CONFUSION_ANNOTATE_MAX_CLASSES:
        counts = confusion.detach().cpu().tolist()
        for true in range(num_classes):
            for predicted in range(num_classes):
                dark = fractions[true, predicted] > 0.5
                axes.text(predicted, true, counts[true][predicted], ha="center", va="center", fontsize="small",
                          color="white" if dark else "black")  # fmt: skip
    axes.set(xlabel="predicted class", ylabel="true class", title="Confusion matrix (rows: true class)")
    return figure


def confusion_image(
    confusion: Tensor, class_names: Sequence[str], use_matplotlib: bool | None = None
) -> Tensor:
    """uint8 (3, H, W) picture of the confusion matrix: matplotlib with labels, or the pure-torch heatmap."""
    import torch

    if use_matplotlib is None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            use_matplotlib = False
        else:
            use_matplotlib = True
    if not use_matplotlib:
        return confusion_heatmap(confusion)
    import numpy as np

    figure = _confusion_figure(confusion, class_names)
    figure.canvas.draw()
    rgba = np.asarray(figure.canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).contiguous()


def per_class_accuracy_table(confusion: Tensor, class_names: Sequence[str]) -> str:
    """Markdown table (TensorBoard renders it in the TEXT tab): class, accuracy %, correct, support."""
    counts = confusion.detach().cpu()
    correct, support = counts.diagonal().tolist(), counts.sum(dim=1).tolist()
    lines = ["| class | accuracy % | correct | support |", "| --- | ---: | ---: | ---: |"]
    accuracies = []
    for name, right, total in zip(class_names, correct, support):
        accuracy = right / total if total else None
        accuracies.append(accuracy)
        shown = f"{100 * accuracy:.2f}" if accuracy is not None else "-"
        lines.append(f"| {name} | {shown} | {right} | {total} |")
    measured = [accuracy for accuracy in accuracies if accuracy is not None]
    if measured:
        lines.append(f"| **mean per class** | {100 * sum(measured) / len(measured):.2f} | | |")
    return "\n".join(lines)


def log_confusion_matrix(
    writer: SummaryWriter,
    confusion: Tensor,
    class_names: Sequence[str],
    step: int,
    prefix: str = "test",
    use_matplotlib: bool | None = None,
) -> None:
    """`{prefix}/confusion_matrix` image and `{prefix}/per_class_accuracy` text; confusion rows are true classes."""
    if (
        confusion.dim() != 2
        or confusion.shape[0] != confusion.shape[1]
        or confusion.shape[0] != len(class_names)
    ):
        raise ValueError(
            f"confusion must be (C, C) with C = len(class_names) = {len(class_names)}; got {tuple(confusion.shape)}"
        )
    writer.add_image(
        f"{prefix}/confusion_matrix", confusion_image(confusion, class_names, use_matplotlib), step
    )
    writer.add_text(f"{prefix}/per_class_accuracy", per_class_accuracy_table(confusion, class_names), step)


def log_image_grid(
    writer: SummaryWriter,
    images: Tensor,
    tag: str = AUGMENTED_SAMPLES_TAG,
    step: int = 0,
    max_images: int = 64,
) -> None:
    """A square-ish grid of up to `max_images` images: uint8 (N, C, H, W), or float in [0, 1]; 1 channel is fine.

    For augmented training samples, undo the normalisation first (x * std + mean) so the grid shows what the
    model was fed, Cutout squares included.
    """
    import torch
    from torchvision.utils import make_grid

    images = images[:max_images].detach().cpu()
    if images.is_floating_point():
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    nrow = max(1, math.ceil(math.sqrt(len(images))))
    writer.add_image(tag, make_grid(images, nrow=nrow, padding=2), step)


def log_config_text(writer: SummaryWriter, yaml_str: str, tag: str = CONFIG_TAG, step: int = 0) -> None:
    """The resolved config as a YAML code block in the TEXT tab (TensorBoard renders Markdown)."""
    writer.add_text(tag, f"```yaml\n{yaml_str.rstrip()}\n```", step)


# --------------------------------------------------------------------------------------------------- logger
class TensorBoardLogger(Logger):
    """`logger=tensorboard` (the default): event files in the run directory, read by `tensorboard --logdir`.

    A resumed session purges the events a killed one wrote after its last.pt (SummaryWriter's purge_step), so the
    curves never fork. `writer` is what the TensorBoard extras (images, confusion matrix) write with."""

    name = "tensorboard"

    def __init__(self, flush_secs: int = 120):
        self.flush_secs = int(flush_secs)
        self.writer: SummaryWriter | None = None

    def start(self, run: LoggerRun, state: Mapping | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run.run_dir), purge_step=run.first_step, flush_secs=self.flush_secs)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def log_summary(self, hparams: Mapping[str, Any], metrics: Mapping[str, float | None], step: int) -> None:
        log_hparams(self.writer, hparams, metrics, step=step)

    def log_artifact(self, path: Path, kind: str) -> None:
        if kind == "config":
            log_config_text(self.writer, Path(path).read_text())

    def flush(self) -> None:
        self.writer.flush()

    def finish(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
