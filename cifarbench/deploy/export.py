"""A checkpoint written as ONNX or TorchScript, with the run's preprocessing inside (cifarbench.deploy.inference)
and a free batch size, then checked: the exported file, run by onnxruntime or loaded back by TorchScript, must give
PyTorch's outputs on real test images of the run's dataset, at two batch sizes, within a stated tolerance.

ONNX goes through torch.onnx's exporter (torch.export underneath: opset 18 and up) and carries the class names,
normalisation and input size in its metadata; TorchScript is traced, and carries the same as `cifarbench.json` in
its extra files. Both take float images in [0, 1], (N, C, H, W), at the run's image size.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from cifarbench.deploy.inference import Deployable, load_deployable
from cifarbench.errors import CifarbenchError, ConfigError, DataError

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
# Exported and PyTorch outputs must agree to |a - b| <= ATOL + RTOL * |b|, elementwise (numpy's allclose): fp32
# kernels of another runtime reorder sums, which moves logits by ~1e-6 relative, far inside this.
ATOL, RTOL = 1e-4, 1e-3


@dataclass
class ExportReport:
    path: str
    format: str
    model_name: str
    outputs: str  # "logits" or "probabilities"
    images: int  # test images the check ran on
    batch_sizes: tuple[int, int]
    max_abs_diff: float
    top1_agreement: float  # fraction of images whose top class is the same
    atol: float
    rtol: float
    seconds: float


def metadata(deployable: Deployable, softmax: bool) -> dict:
    return {"classes": deployable.classes, "mean": deployable.classifier.mean.flatten().tolist(),
            "std": deployable.classifier.std.flatten().tolist(), "image_size": deployable.image_size,
            "in_channels": deployable.in_channels, "input": "float32 images in [0, 1], (N, C, H, W), RGB",
            "output": "probabilities" if softmax else "logits", "model_name": deployable.model_name,
            "checkpoint": str(deployable.source)}


def verification_images(deployable: Deployable, count: int, data_root: str | None = None) -> torch.Tensor:
    """The first `count` test images of the run's dataset, as floats in [0, 1]."""
    from omegaconf import open_dict

    from cifarbench.engine.setup import build_data

    dataset = deployable.config.dataset.copy()
    with open_dict(dataset):
        dataset.val_size = None
        if data_root is not None:
            dataset.source.root = data_root
    try:
        data = build_data(dataset, int(deployable.config.trainer.seed))
    except DataError as error:
        raise DataError(f"export checks its output on the run's test images, which could not be read ({error}); "
                        "give data_root=<where the dataset lies>") from None
    return data.test.images[:count].float() / 255


def _export_onnx(classifier: torch.nn.Module, example: torch.Tensor, path: Path, info: dict) -> None:
    for package, extra in (("onnx", "export"), ("onnxscript", "export"), ("onnxruntime", "export")):
        try:
            __import__(package)
        except ImportError:
            raise ConfigError(f"format=onnx needs the {package} package, which is not installed; pip install "
                              f"'cifarbench[{extra}]' or use format=torchscript") from None
    import onnx

    output = "probabilities" if info["output"] == "probabilities" else "logits"
    # The exporter's notes on its own graph passes (dozens of INFO lines and warnings) mean nothing to a user.
    logging.disable(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(classifier, (example,), str(path), input_names=["images"], output_names=[output],
                              dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}}, dynamo=True,
                              external_data=False, verbose=False)
    finally:
        logging.disable(logging.NOTSET)
    model = onnx.load(str(path))
    for key, value in info.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(model, str(path))


def _export_torchscript(classifier: torch.nn.Module, example: torch.Tensor, path: Path, info: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, still what C++ loads
        traced = torch.jit.trace(classifier, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"cifarbench.json": json.dumps(info)})


def run_exported(path: Path, fmt: str, images: torch.Tensor) -> torch.Tensor:
    """The exported file's outputs on `images`, run the way a deployment would."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return torch.from_numpy(session.run(None, {name: images.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            return module(images)


def export_checkpoint(checkpoint: str | Path, fmt: str, output: str | Path | None = None, softmax: bool = False,
                      verify_images: int = 256, data_root: str | None = None) -> ExportReport:
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt} is not supported; use one of {', '.join(FORMATS)}")
    if int(verify_images) < 2:
        raise ConfigError(f"verify_images={verify_images} must be at least 2 (two batch sizes are checked)")
    started = time.perf_counter()
    deployable = load_deployable(checkpoint, softmax=softmax)
    checkpoint = Path(checkpoint).expanduser()
    path = Path(output).expanduser() if output else checkpoint.with_name(checkpoint.stem + FORMATS[fmt])
    path.parent.mkdir(parents=True, exist_ok=True)
    images = verification_images(deployable, int(verify_images), data_root)
    classifier = deployable.classifier
    info = metadata(deployable, softmax)
    try:
        (_export_onnx if fmt == "onnx" else _export_torchscript)(classifier, images[:2].contiguous(), path, info)
    except CifarbenchError:
        raise
    except Exception as error:  # noqa: BLE001 - the exporter's own failure, as one line
        path.unlink(missing_ok=True)
        first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        other = "torchscript" if fmt == "onnx" else "onnx"
        raise CifarbenchError(f"{deployable.model_name} from {checkpoint} cannot be exported to {fmt} "
                              f"({type(error).__name__}: {first[:300]}); try format={other}") from None
    with torch.no_grad():
        expected = classifier(images)
    # The whole batch, then one image alone: a batch size baked in at export time fails the second.
    exported = torch.cat([run_exported(path, fmt, images[:-1]), run_exported(path, fmt, images[-1:])])
    difference = (exported - expected).abs()
    report = ExportReport(
        path=str(path), format=fmt, model_name=deployable.model_name, outputs=info["output"], images=len(images),
        batch_sizes=(len(images) - 1, 1), max_abs_diff=float(difference.max()),
        top1_agreement=float((exported.argmax(1) == expected.argmax(1)).float().mean()), atol=ATOL, rtol=RTOL,
        seconds=time.perf_counter() - started)
    if not torch.allclose(exported, expected, rtol=RTOL, atol=ATOL):
        path.unlink(missing_ok=True)
        raise CifarbenchError(f"the {fmt} export of {checkpoint} does not reproduce PyTorch: max |difference| "
                              f"{report.max_abs_diff:.3g} > {ATOL:g} + {RTOL:g} x |output|; the file was removed")
    return report


def report_lines(report: ExportReport) -> list[str]:
    return [
        f"exported {report.model_name} to {report.path} ({report.format}, {report.outputs}, batch size free)",
        f"checked on {report.images} test images at batch sizes {report.batch_sizes[0]} and {report.batch_sizes[1]}: "
        f"max |{report.format} - PyTorch| = {report.max_abs_diff:.2e} (tolerance {report.atol:g} + {report.rtol:g} x "
        f"|output|), top-1 agreement {100 * report.top1_agreement:.2f}%",
    ]

