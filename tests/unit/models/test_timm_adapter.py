"""model=timm offline: a tiny timm model saved locally stands in for published weights. It loads as "pretrained" into
a model with another class count (everything but the classifier), its images are resized batch by batch on the
training device with the weights' own statistics, and a short run trains; bad input gets one clear message."""

from __future__ import annotations

import builtins
import json
import logging

import pytest
import torch

from cifarbench.data.augment import Resize
from cifarbench.data.device_loader import DeviceLoader
from cifarbench.data.splits import ImageTensors
from cifarbench.errors import CheckpointError, ConfigError
from cifarbench.models.timm_adapter import input_spec, timm_model
from tests.helpers.config import compose_config
from tests.helpers.runs import train_in_process

timm = pytest.importorskip("timm")

ARCH = "test_vit"  # timm's own 0.3M-parameter ViT (patch 16, 160 px, mean/std 0.5)


def _saved(tmp_path, name=ARCH, classes=100, suffix=".safetensors"):
    torch.manual_seed(3)
    source = timm.create_model(name, num_classes=classes)
    path = tmp_path / f"{name}_{classes}{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(source.state_dict(), str(path))
    else:
        torch.save(source.state_dict(), path)
    return source, path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_local_file_loads_everything_but_a_classifier_of_another_class_count(tmp_path, suffix, caplog):
    source, path = _saved(tmp_path, suffix=suffix)
    with caplog.at_level(logging.INFO, logger="cifarbench"):
        model = timm_model(ARCH, num_classes=10, pretrained_file=str(path))
    saved, loaded = source.state_dict(), model.state_dict()
    assert loaded["head.weight"].shape == (10, saved["head.weight"].shape[1])
    assert not torch.equal(loaded["head.weight"], saved["head.weight"][:10])  # a fresh classifier
    for key, value in saved.items():
        if not key.startswith("head."):
            assert torch.equal(loaded[key], value), key
    assert "with a new classifier (the file's has 100 classes, this dataset 10)" in caplog.text
    # Anchor: without the file, the same architecture starts from other weights.
    fresh = timm_model(ARCH, num_classes=10)
    assert not torch.equal(fresh.state_dict()["blocks.0.attn.qkv.weight"], saved["blocks.0.attn.qkv.weight"])


def test_a_file_with_the_same_classes_keeps_its_classifier(tmp_path):
    source, path = _saved(tmp_path, classes=10)
    model = timm_model(ARCH, num_classes=10, pretrained_file=str(path))
    assert torch.equal(model.state_dict()["head.weight"], source.state_dict()["head.weight"])


def test_a_pretrained_file_of_another_architecture_is_refused_naming_the_misfits(tmp_path):
    _, path = _saved(tmp_path, name="test_resnet")
    with pytest.raises(CheckpointError, match=r"model.pretrained_file=.* doesn't fit timm's test_vit: .* missing"):
        timm_model(ARCH, num_classes=10, pretrained_file=str(path))
    (tmp_path / "broken.pth").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="could not be read as weights"):
        timm_model(ARCH, num_classes=10, pretrained_file=str(tmp_path / "broken.pth"))
    with pytest.raises(CheckpointError, match="no such file"):
        timm_model(ARCH, num_classes=10, pretrained_file=str(tmp_path / "absent.pth"))


def test_an_unknown_name_suggests_timm_architectures():
    with pytest.raises(ConfigError, match=r"model.name=resnt18 is not a timm architecture; did you mean resnet18"):
        timm_model("resnt18", num_classes=10)


def test_an_input_size_the_model_cannot_take_is_refused_before_any_weights():
    with pytest.raises(ConfigError, match=r"model.input_size=8: timm's test_vit can't take 8x8 images"):
        timm_model(ARCH, num_classes=10, input_size=8)


def test_model_timm_without_timm_says_how_to_install_it(monkeypatch):
    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(ConfigError, match=r"model=timm needs the timm package: pip install 'cifarbench\[timm\]'"):
        timm_model("resnet18", num_classes=10)


def test_pretrained_from_the_hub_offline_points_to_pretrained_file(monkeypatch):
    import huggingface_hub.constants

    # huggingface_hub reads HF_HUB_OFFLINE when it is imported (timm imported it already): set the constant too, or
    # the hub is tried and the test waits for network timeouts (46 s) before the same message.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"could not fetch the weights of test_vit.*model.pretrained_file=<path>"):
        timm_model(ARCH, num_classes=10, pretrained=True)


def test_the_input_spec_follows_the_pretrained_weights_unless_overridden(tmp_path):
    cfg = compose_config(["model=timm", f"model.name={ARCH}", "model.pretrained_file=x.pth"]).model
    assert input_spec(cfg).size == 160 and input_spec(cfg).mean == (0.5, 0.5, 0.5)
    assert input_spec(cfg).interpolation == "bicubic" or input_spec(cfg).interpolation == "bilinear"
    cfg = compose_config(["model=timm", f"model.name={ARCH}", "model.pretrained_file=x.pth", "model.input_size=48",
                          "model.interpolation=bicubic", "model.normalization=dataset"]).model
    spec = input_spec(cfg)
    assert (spec.size, spec.interpolation, spec.mean) == (48, "bicubic", None)
    scratch = compose_config(["model=timm", "model.name=resnet18"]).model
    assert input_spec(scratch).size is None and input_spec(scratch).mean is None  # the data as it is
    assert input_spec(compose_config(["model=resnet20"]).model) is None


def test_the_device_loader_resizes_each_batch_and_never_holds_the_split_upsampled():
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    split = ImageTensors(images, torch.arange(40) % 10)
    for shuffle in (True, False):  # training, and evaluation (which caches normalised images at the data's size)
        loader = DeviceLoader(split, 8, device="cpu", mean=(0.5,) * 3, std=(0.5,) * 3, shuffle=shuffle,
                              resize=Resize(160, "bicubic"))
        batch, _ = next(iter(loader))
        assert batch.shape == (8, 3, 160, 160)
        held = [t for t in vars(loader).values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
        assert loader._cache is None and all(t.shape[-1] != 160 for t in held)
        assert loader.images.shape == (40, 3, 32, 32) and loader.images.dtype == torch.uint8
    expected = torch.nn.functional.interpolate((images[:8].float() / 255 - 0.5) / 0.5, size=(160, 160),
                                               mode="bicubic", align_corners=False)
    torch.testing.assert_close(batch, expected)


def test_a_short_fine_tune_from_a_local_file_trains_on_resized_images(tmp_path, caplog):
    source, path = _saved(tmp_path)
    run_dir = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="cifarbench")
    result = train_in_process([
        "model=timm", f"model.name={ARCH}", f"model.pretrained_file={path}", "model.input_size=48",
        "dataset=synthetic", "dataset.source.train_size=64", "dataset.source.test_size=16", "trainer.batch_size=16",
        "trainer.epochs=2", "trainer.device=cpu", "trainer.progress_bar=false", "optimizer.lr=0.01",
    ], run_dir)
    assert result["status"] == "completed" and result["model"] == f"timm:{ARCH}"
    log = caplog.text
    assert "the model takes 48 px images: each batch is resized from 32 px on cpu" in log
    assert "with a new classifier" in log
    history = result["history"]
    assert history[-1]["train/loss"] < history[0]["train/loss"] or history[-1]["train/acc"] > history[0]["train/acc"]
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert tuple(best["mean"]) == (0.5, 0.5, 0.5)  # the weights' statistics, recorded as the run's
    assert best["model"]["head.weight"].shape[0] == 10
    # A checkpoint rebuilds without reading the pretrained file again (it may be gone on another machine).
    path.unlink()
    from cifarbench.checkpoint import model_from_checkpoint

    rebuilt = model_from_checkpoint(best)
    assert torch.equal(rebuilt.state_dict()["head.weight"], best["model"]["head.weight"])
    assert json.loads((run_dir / "metrics.json").read_text())["gflops"] > 0
