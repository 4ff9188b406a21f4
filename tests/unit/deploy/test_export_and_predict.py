"""Models leaving the framework: ONNX and TorchScript exports of three families that reproduce the checkpoint's own
network (normalisation inside, batch size free), and predict on a folder of mixed images, one of them corrupt."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from cifarbench import checkpoint
from cifarbench.deploy.export import export_checkpoint
from cifarbench.deploy.predict import predict_files
from cifarbench.errors import CifarbenchError
from tests.helpers.cli import HANG_TIMEOUT
from tests.helpers.data import write_image_folder
from tests.helpers.runs import SMALL, reference_run

# Each family trained for two steps on 96 synthetic images: weights and BatchNorm statistics that are not the init's.
FAMILIES = {
    "resnet": ["model=resnet20"],
    "densenet": ["model=densenet100", "model.depth=40", "model.growth_rate=6"],
    "airbench": ["model=airbench94", "model.widths=[16,32,32]"],
}


@pytest.fixture(scope="module")
def trained_models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("families")
    runs = {}
    for family, overrides in FAMILIES.items():
        run_dir = reference_run(SMALL[1:] + overrides + ["trainer.epochs=1", "trainer.limit_train_batches=2"],
                                root / family)
        runs[family] = run_dir / "checkpoints" / "best.pt"
    return runs


def by_hand(best, images: torch.Tensor) -> torch.Tensor:
    """The checkpoint's network on images normalised with its stored statistics, written out here: the anchor that
    a normalisation missing from (or doubled in) the export would miss."""
    payload = checkpoint.load_checkpoint(best)
    model = checkpoint.model_from_checkpoint(payload).eval()
    mean = torch.tensor(payload["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(payload["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        return model((images - mean) / std)


def run_onnx(path, images: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_the_checkpoints_network_at_any_batch_size(trained_models, family, fmt, tmp_path):
    best = trained_models[family]
    report = export_checkpoint(best, fmt, output=tmp_path / f"model.{fmt}", verify_images=8)
    assert report.max_abs_diff <= 1e-4 and report.top1_agreement == 1.0
    assert report.batch_sizes == (7, 1)
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = by_hand(best, images)
    if fmt == "onnx":
        import onnx

        outputs = [run_onnx(report.path, images), run_onnx(report.path, images[:1])]
        meta = {p.key: json.loads(p.value) for p in onnx.load(report.path).metadata_props}
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            files = {"cifarbench.json": ""}
            module = torch.jit.load(report.path, _extra_files=files)
        with torch.no_grad():
            outputs = [module(images), module(images[:1])]
        meta = json.loads(files["cifarbench.json"])
    torch.testing.assert_close(outputs[0], expected, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(outputs[1], expected[:1], rtol=1e-3, atol=1e-4)
    payload = checkpoint.load_checkpoint(best)
    assert meta["classes"] == payload["classes"] and meta["mean"] == pytest.approx(payload["mean"])
    assert meta["image_size"] == 32 and meta["output"] == "logits"


def test_softmax_export_outputs_probabilities(trained_models, tmp_path):
    report = export_checkpoint(trained_models["resnet"], "onnx", output=tmp_path / "p.onnx", softmax=True,
                               verify_images=4)
    images = torch.rand(3, 3, 32, 32)
    probabilities = run_onnx(report.path, images)
    torch.testing.assert_close(probabilities, by_hand(trained_models["resnet"], images).softmax(1), rtol=1e-3,
                               atol=1e-5)
    assert report.outputs == "probabilities"


def test_shakedrop_exports_its_eval_form(tmp_path):
    """PyramidNet with ShakeDrop: training draws a random branch per sample; the export is the expectation (eval)."""
    run_dir = reference_run(SMALL[1:] + ["model=pyramidnet110", "model.depth=20", "model.alpha=16",
                                         "model.shakedrop=0.5", "trainer.epochs=1", "trainer.limit_train_batches=1"],
                            tmp_path / "run")
    best = run_dir / "checkpoints" / "best.pt"
    report = export_checkpoint(best, "torchscript", output=tmp_path / "m.pt", verify_images=4)
    images = torch.rand(4, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(report.path)
    with torch.no_grad():
        first, second = module(images), module(images)
    torch.testing.assert_close(first, second, rtol=0, atol=0)  # no random branch left in it
    torch.testing.assert_close(first, by_hand(best, images), rtol=1e-3, atol=1e-4)


def test_an_export_that_fails_is_one_clear_message(trained_models, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("Unsupported operator aten::frobnicate\nwith a long trace")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(CifarbenchError) as caught:
        export_checkpoint(trained_models["resnet"], "onnx", output=tmp_path / "x.onnx", verify_images=4)
    message = str(caught.value)
    assert "\n" not in message and "aten::frobnicate" in message and "format=torchscript" in message
    assert not (tmp_path / "x.onnx").exists()


def test_predict_a_folder_of_mixed_images_with_class_names_and_one_corrupt_file(tmp_path, caplog):
    from PIL import Image

    root = write_image_folder(tmp_path / "images", {"cat": 8, "dog": 8})
    run_dir = reference_run(SMALL[:1] + SMALL[4:] + [
        "dataset=imagefolder", "dataset.num_classes=2", f"dataset.source.root={root}", "dataset.num_workers=0",
        "dataset.image_size=8", "dataset.val_size=null", "trainer.epochs=1", "trainer.batch_size=8"],
        tmp_path / "run")
    best = run_dir / "checkpoints" / "best.pt"
    new = tmp_path / "new"
    (new / "sub").mkdir(parents=True)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (30, 45, 3), dtype=np.uint8)).save(new / "wide.png")
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(new / "small.jpg", quality=95)
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(new / "sub" / "grey.png")
    (new / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    caplog.set_level(logging.WARNING, logger="cifarbench")
    output = tmp_path / "predictions.csv"
    result = subprocess.run(
        [sys.executable, "-m", "cifarbench.predict", f"checkpoint={best}", f"inputs={new}", f"output={output}",
         "top_k=2", "device=cpu"], capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(str(new / "broken.jpg")) + result.stderr.count(str(new / "broken.jpg")) == 1
    with output.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["path"] for row in rows] == [str(new / "small.jpg"), str(new / "sub" / "grey.png"),
                                             str(new / "wide.png")]
    assert all({row["class_1"], row["class_2"]} == {"cat", "dog"} for row in rows)
    # The probabilities are the network's on the image decoded and resized as training read the folder.
    from cifarbench.data.imagefolder import decode_image

    image = decode_image(new / "wide.png", "RGB", 8).float()[None] / 255
    probabilities = by_hand(best, image).softmax(1)[0]
    payload = checkpoint.load_checkpoint(best)
    row = rows[2]
    assert float(row["prob_1"]) == pytest.approx(probabilities.max().item(), abs=2e-6)
    assert row["class_1"] == payload["classes"][int(probabilities.argmax())]
    assert float(row["prob_1"]) + float(row["prob_2"]) == pytest.approx(1.0, abs=1e-5)
    # In-process, with test-time augmentation: the flip view changes the numbers, not the files listed.
    flipped = predict_files(best, [new / "wide.png"], top_k=1, tta="flip")
    assert flipped[0].path == str(new / "wide.png") and flipped[0].probabilities[0] != float(row["prob_1"])
