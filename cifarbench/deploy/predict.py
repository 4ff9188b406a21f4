"""Classify image files with a trained checkpoint: any size and format PIL reads, decoded and resized exactly as
training read image folders (cifarbench.data.imagefolder.decode_image), normalised with the run's statistics,
optionally with test-time augmentation; one CSV row per image with its top-k classes by name and probabilities.

An unreadable file is one warning naming it; the others are still predicted.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import UnidentifiedImageError

from cifarbench.callbacks.tta import predict_with_tta, tta_views
from cifarbench.data.imagefolder import EXTENSIONS, decode_image
from cifarbench.deploy.inference import load_deployable
from cifarbench.errors import ConfigError, DataError
from cifarbench.fileio import atomic_write

log = logging.getLogger("cifarbench")


@dataclass
class Prediction:
    path: str
    classes: list[str]  # top-k, best first
    probabilities: list[float]


def image_files(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """A folder (searched recursively for image files, in sorted order), one file, or a list of both."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    files: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"inputs: {path} is neither a file nor a folder; give image files or a folder of them")
    if not files:
        raise DataError(f"inputs: no image files ({', '.join(sorted(EXTENSIONS))}) in {', '.join(map(str, items))}")
    return files


def _batches(files: list[Path], mode: str, size: int, batch_size: int) -> Iterable[tuple[list[Path], torch.Tensor]]:
    paths, images = [], []
    for path in files:
        try:
            images.append(decode_image(path, mode, size))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            log.warning("skipping %s: not a readable image (%s)", path, type(error).__name__)
            continue
        paths.append(path)
        if len(paths) == batch_size:
            yield paths, torch.stack(images)
            paths, images = [], []
    if paths:
        yield paths, torch.stack(images)


def predict_files(checkpoint: str | Path, inputs, top_k: int = 5, tta: str = "none", batch_size: int = 256,
                  device: str = "cpu") -> list[Prediction]:
    from cifarbench.device import resolve_device

    if int(top_k) < 1:
        raise ConfigError(f"top_k={top_k} must be at least 1")
    tta_views(torch.zeros(1, 1, 2, 2), tta)  # an unknown mode is refused before any image is read
    deployable = load_deployable(checkpoint)
    files = image_files(inputs)
    device_ = resolve_device(device)
    classifier = deployable.classifier.to(device_)
    mode = "L" if deployable.in_channels == 1 else "RGB"
    k = min(int(top_k), len(deployable.classes))
    predictions = []
    with torch.no_grad():
        for paths, images in _batches(files, mode, deployable.image_size, int(batch_size)):
            network_input = classifier.preprocess(images.to(device_).float() / 255)
            probabilities = predict_with_tta(classifier.model, network_input, tta).softmax(dim=1).cpu()
            top = probabilities.topk(k, dim=1)
            for path, values, indices in zip(paths, top.values.tolist(), top.indices.tolist()):
                predictions.append(Prediction(str(path), [deployable.classes[i] for i in indices], values))
    return predictions


def write_csv(predictions: list[Prediction], output: str | Path) -> None:
    """path, class_1, prob_1, ..., class_k, prob_k: one row per image."""
    k = max((len(p.classes) for p in predictions), default=0)
    header = ["path"] + [name for rank in range(1, k + 1) for name in (f"class_{rank}", f"prob_{rank}")]

    def write(f):
        import io

        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(header)
        for p in predictions:
            writer.writerow([p.path] + [v for pair in zip(p.classes, (f"{x:.6f}" for x in p.probabilities))
                                        for v in pair])
        f.write(text.getvalue().encode())

    atomic_write(output, write)
