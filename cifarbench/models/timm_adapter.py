"""Any timm architecture as a cifarbench model, from scratch or from pretrained weights (`model=timm`):

    python -m cifarbench.train model=timm model.name=convnext_nano
    python -m cifarbench.train model=timm model.name=vit_base_patch16_224.orig_in21k model.pretrained=true
    python -m cifarbench.train model=timm model.name=resnet50 model.pretrained_file=/data/resnet50_a1.safetensors

The dataset gives the class count and input channels. Pretrained weights come from timm's hub (online), or from a
local file for compute nodes without internet: a timm/PyTorch state dict (.safetensors, .pth, .bin) or a cifarbench
checkpoint (best.pt or last.pt of a `model=timm` run). When the file's classifier has another class count, or none,
the classifier starts fresh and the log says so; every other weight must fit, or the run stops naming the misfits.

A pretrained model sees the images as it was trained to: `input_spec` gives the input size, interpolation and
normalisation from timm's pretrained_cfg (each overridable), and the data loaders resize every batch on the training
device (cifarbench.data.augment.Resize), so the upsampled images are never held for a whole split.

timm is an optional dependency: `pip install 'cifarbench[timm]'`.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

import torch
from torch import nn

from cifarbench.data.loaders import InputSpec
from cifarbench.errors import CheckpointError, ConfigError

log = logging.getLogger("cifarbench")

INTERPOLATIONS = ("bilinear", "bicubic")


def _timm():
    try:
        import timm
    except ImportError:
        raise ConfigError("model=timm needs the timm package: pip install 'cifarbench[timm]'") from None
    return timm


def _architecture(name: str) -> str:
    """`vit_base_patch16_224.orig_in21k` -> `vit_base_patch16_224`, checked against timm's list."""
    timm = _timm()
    architecture = str(name).split(".", 1)[0]
    if not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "timm.list_models('<pattern>*') lists them"
        raise ConfigError(f"model.name={name} is not a timm architecture; {hint}")
    return architecture


def input_spec(model_cfg) -> InputSpec | None:
    """The input a `model=timm` config asks for (None for cifarbench's own models, which take the dataset's images
    as they are). `input_size`, `interpolation` and `normalization` left null follow timm's pretrained_cfg: a
    pretrained model gets the size and statistics it was trained with; a model from scratch keeps the dataset's
    size and statistics unless it names a size."""
    if not str(model_cfg.get("_target_", "")).endswith("timm_adapter.timm_model"):
        return None
    timm = _timm()
    name = str(model_cfg.name)
    _architecture(name)
    pretrained = bool(model_cfg.get("pretrained")) or bool(model_cfg.get("pretrained_file"))
    cfg = timm.get_pretrained_cfg(name) if pretrained else None
    size = model_cfg.get("input_size")
    if size is None and cfg is not None:
        size = int(cfg.input_size[-1])
    interpolation = model_cfg.get("interpolation") or (cfg.interpolation if cfg is not None else "bilinear")
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"model.interpolation={interpolation} is not supported; use bilinear or bicubic")
    normalization = model_cfg.get("normalization") or ("pretrained" if pretrained else "dataset")
    if normalization not in ("pretrained", "dataset"):
        raise ConfigError(f"model.normalization={normalization} is not supported; use pretrained (timm's mean and "
                          "std for these weights) or dataset (the dataset's own)")
    if normalization == "pretrained" and cfg is None:
        cfg = timm.get_pretrained_cfg(name)
        if cfg is None:
            raise ConfigError(f"model.normalization=pretrained: timm has no pretrained_cfg for {name}; use dataset")
    mean = tuple(float(m) for m in cfg.mean) if normalization == "pretrained" else None
    std = tuple(float(s) for s in cfg.std) if normalization == "pretrained" else None
    if size is not None and int(size) < 1:
        raise ConfigError(f"model.input_size={size} must be a positive number of pixels (or null: timm's)")
    return InputSpec(int(size) if size is not None else None, str(interpolation), mean, std)


def timm_model(name: str, num_classes: int, in_channels: int = 3, pretrained: bool = False,
               pretrained_file: str | None = None, input_size: int | None = None, interpolation: str | None = None,
               normalization: str | None = None, drop_path: float | None = None, **kwargs) -> nn.Module:
    """timm.create_model(name) for `num_classes` and `in_channels`; `input_size` (when it differs from the
    architecture's default) is passed on as img_size to the models that take one (ViTs). `interpolation` and
    `normalization` are read by the data loaders (`input_spec`), not by the model."""
    timm = _timm()
    _architecture(name)
    if pretrained and pretrained_file:
        raise ConfigError("model.pretrained=true and model.pretrained_file are alternatives: give one")
    options = dict(kwargs)
    if drop_path:
        options["drop_path_rate"] = float(drop_path)
    default_size = int(timm.get_pretrained_cfg(name).input_size[-1]) if timm.get_pretrained_cfg(name) else None
    if input_size is not None and default_size is not None and int(input_size) != default_size:
        options["img_size"] = int(input_size)
    _check_input_size(timm, name, num_classes, in_channels, options, input_size or default_size)
    if pretrained:
        return _from_hub(timm, name, num_classes, in_channels, options)
    if pretrained_file:
        return _from_file(timm, name, pretrained_file, num_classes, in_channels, options)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **options)


def _from_hub(timm, name, num_classes, in_channels, options):
    cfg = timm.get_pretrained_cfg(name)
    try:
        model = timm.create_model(name, pretrained=True, num_classes=num_classes, in_chans=in_channels, **options)
    except (OSError, RuntimeError) as error:  # no network, no such tag, a failed download
        raise ConfigError(f"model.pretrained=true: timm could not fetch the weights of {name} ({error}); on a "
                          "machine without internet, download them elsewhere and give model.pretrained_file=<path>"
                          ) from None
    if cfg is not None and cfg.num_classes != num_classes:
        log.info("%s: timm's pretrained weights (%s classes) with a new %d-class classifier", name,
                 cfg.num_classes or "no", num_classes)
    return model


def _check_input_size(timm, name: str, num_classes: int, in_channels: int, options: dict, size: int | None) -> None:
    """A weightless twin on the meta device takes one forward: a size the architecture can't take (a ViT's patch
    grid) is refused before any weights are built or fetched. An architecture without `img_size` (a CNN) takes the
    data's size as it comes, so `img_size` is dropped from `options` for it."""
    def twin():
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels,
                                     **options)

    try:
        model = twin()
    except TypeError as error:
        if "img_size" not in options or "img_size" not in str(error):
            raise
        options.pop("img_size")
        model = twin()
    if size is None:
        return
    try:
        with torch.no_grad():
            model.eval()(torch.empty(1, in_channels, int(size), int(size), device="meta"))
    except Exception as error:  # noqa: BLE001 - any failure of the probe is the input size's
        raise ConfigError(f"model.input_size={size}: timm's {name} can't take {size}x{size} images "
                          f"({type(error).__name__}: {str(error).splitlines()[0][:160]})") from None


# -------------------------------------------------------------------------------------------- local weights
def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file, a torch file (weights only) or a cifarbench checkpoint."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - unreadable, truncated or not a weights file
        raise CheckpointError(f"model.pretrained_file={path} could not be read as weights ({type(error).__name__}); "
                              "give a .safetensors, .pth or .bin state dict or a cifarbench best.pt") from None
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):  # a cifarbench checkpoint
        payload = payload["model"]
    for key in ("state_dict", "model_state_dict"):  # common wrappers of a plain state dict
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError(f"model.pretrained_file={path} holds no state dict of tensors")
    return payload


def _classifier_names(name: str) -> tuple[str, ...]:
    """The classifier module(s) of an architecture, as timm's pretrained_cfg names them."""
    cfg = _timm().get_pretrained_cfg(name)
    heads = cfg.classifier if cfg is not None and cfg.classifier else "head"
    return (heads,) if isinstance(heads, str) else tuple(heads)


def _is_head(key: str, heads: tuple[str, ...]) -> bool:
    return any(key == head or key.startswith(f"{head}.") for head in heads)


def _classes_in(saved: dict[str, torch.Tensor], name: str) -> int:
    """The class count of the file's classifier, 0 if it has none."""
    return next((int(saved[f"{head}.weight"].shape[0]) for head in _classifier_names(name)
                 if f"{head}.weight" in saved), 0)


def _from_file(timm, name: str, file: str, num_classes: int, in_channels: int, options: dict) -> nn.Module:
    """timm's own loading of pretrained weights (its filters resample a ViT's position table to the input size and
    adapt the stem to the channels), fed from a local file: the classifier is replaced when the file's class count
    differs from the dataset's, and every other weight must fit."""
    path = Path(str(file)).expanduser()
    if not path.is_file():
        raise CheckpointError(f"model.pretrained_file={file}: no such file")
    saved = _read_weights(path)
    file_classes = _classes_in(saved, name)
    # timm loads non-strictly once it drops a classifier, so the names are checked here: every weight of the
    # architecture but its classifier must be in the file, and the file must hold nothing else.
    with torch.device("meta"):
        own = timm.create_model(name, num_classes=num_classes, in_chans=in_channels, **options).state_dict()
    heads = _classifier_names(name)
    missing = [k for k in own if k not in saved and not _is_head(k, heads)]
    foreign = [k for k in saved if k not in own and not _is_head(k, heads)]
    if missing or foreign:
        parts = ([f"{len(missing)} of its weights missing (e.g. {missing[0]})"] if missing else []) + (
            [f"{len(foreign)} that it lacks (e.g. {foreign[0]})"] if foreign else [])
        raise CheckpointError(f"model.pretrained_file={file} doesn't fit timm's {name}: {' and '.join(parts)}; "
                              "give the weights of the same architecture (model.name)")
    try:
        model = timm.create_model(name, pretrained=True, num_classes=num_classes, in_chans=in_channels,
                                  pretrained_cfg_overlay={"state_dict": saved, "num_classes": file_classes},
                                  **options)
    except Exception as error:  # noqa: BLE001 - a strict load or a filter that met foreign weights
        detail = " ".join(str(error).split())[:240]
        raise CheckpointError(f"model.pretrained_file={file} doesn't fit timm's {name} ({detail}); give the "
                              "weights of the same architecture (model.name)") from None
    if file_classes != num_classes:
        log.info("%s: weights from %s with a new classifier (the file's has %s classes, this dataset %d)", name,
                 path, file_classes or "no", num_classes)
    else:
        log.info("%s: every weight from %s, the classifier included", name, path)
    return model
