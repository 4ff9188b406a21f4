"""The augmentation ops never make the host wait for the device per batch (seen through HostTraffic,
tests/helpers/host_traffic.py), and the detector itself."""

from __future__ import annotations

import pytest
import torch

from cifarbench.data import augment as A
from tests.helpers.host_traffic import HostTraffic
from tests.helpers.images import DEVICES, MEAN, STD, gen, natural_images

# Tiny tensors: one intra-op thread is faster, and much faster on a shared, busy CPU (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def test_host_traffic_sees_every_way_to_wait_for_the_device():
    """The detector itself: each pattern that stalls a GPU pipeline is caught, on the CPU or "meta"."""
    x = torch.arange(6.0)
    patterns = {
        "from_python": [
            lambda: torch.tensor(MEAN, dtype=torch.float32, device=x.device),
            lambda: torch.as_tensor([0.5]),
            lambda: x * torch.tensor(2.0),
        ],
        "read": [
            lambda: x.tolist(),
            lambda: x[0].item(),
            lambda: float(x.sum()),
            lambda: bool(x[1] > 0),
            lambda: x[: x[2].long()],  # a tensor-valued slice bound
            lambda: x[x > 2],  # a boolean mask
            lambda: x.nonzero(),
            lambda: torch.bincount(x.long(), minlength=8),
            lambda: torch.unique(x),
            lambda: torch.equal(x, x),
        ],
        "transfer": [lambda: x.to("meta"), lambda: torch.empty(6, device="meta").copy_(x)],
    }
    for kind, calls in patterns.items():
        for call in calls:
            with HostTraffic() as traffic:
                call()
            assert traffic.of(kind), (kind, traffic.events)
    with HostTraffic() as traffic:  # device-side work is fine: fills, draws, arithmetic with Python scalars
        torch.zeros(3).add_(torch.arange(3)).mul(0.5).clamp_(0, 1)
        torch.where(x > 2, x, 1.0).lerp(x, 0.5)
        torch.rand(3, generator=gen())
    assert traffic.events == []
    assert "tolist" not in torch.Tensor.__dict__  # restored


def steady_state_traffic(pipeline, images: torch.Tensor, generator) -> HostTraffic:
    """The traffic of a second batch: the first may fill the per-device caches of constants."""
    pipeline(images, generator)
    with HostTraffic() as traffic:
        pipeline(images, generator)
    return traffic


NON_POLICY_PIPELINES = {
    "crop-flip-colorjitter-cutout-erasing": lambda: [
        A.RandomCrop(padding=4),
        A.HorizontalFlip(),
        A.ColorJitter(0.4, 0.4, 0.4, 0.1),
        A.Cutout(),
        A.RandomErasing(p=0.5),
    ],
    "constant-crop-jitter-without-contrast-erasing-value": lambda: [
        A.RandomCrop(size=28, padding=2, padding_mode="constant"),
        A.ColorJitter(brightness=0.3, saturation=0.2, hue=0.2),
        A.RandomErasing(p=1.0, value=[0.5, -0.5, 1.0]),
        A.Cutout(n_holes=2, length=8),
    ],
}


TRAFFIC_DEVICES = ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else [])


POLICY_AUGMENTS = [A.AutoAugment(), A.RandAugment(num_ops=3), A.TrivialAugmentWide()]


@pytest.mark.parametrize("device", TRAFFIC_DEVICES)
@pytest.mark.parametrize("name", list(NON_POLICY_PIPELINES))
def test_non_policy_ops_never_wait_for_the_device(name, device):
    """Crop, flip, colour jitter, cutout, erasing, normalisation and the final cast: per batch, no tensor from
    Python values, nothing read back, nothing copied to the device. On "meta" (a device other than the CPU, with
    no data) a constant moved to the device per batch shows too."""
    pipeline = A.BatchAugment(NON_POLICY_PIPELINES[name](), MEAN, STD, dtype=torch.bfloat16, channels_last=True)
    images = natural_images(300, seed=29).to(device)  # 300: more than one of ColorJitter's CPU chunks
    generator = None if device == "meta" else torch.Generator(device=device).manual_seed(30)
    assert steady_state_traffic(pipeline, images, generator).events == []


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", POLICY_AUGMENTS, ids=repr)
def test_policy_ops_read_back_once_per_batch(op, device):
    """The policy ops need the sizes of their per-op groups on the host: one read per batch, for all their steps
    together, and nothing else."""
    pipeline = A.BatchAugment([A.RandomCrop(padding=4), A.HorizontalFlip(), op, A.Cutout()], MEAN, STD)
    images = natural_images(256, seed=31).to(device)
    traffic = steady_state_traffic(pipeline, images, torch.Generator(device=device).manual_seed(32))
    assert len(traffic.of("read")) <= 1, traffic.events
    assert traffic.of("from_python") == [] and traffic.of("transfer") == [], traffic.events


@pytest.mark.parametrize("op", POLICY_AUGMENTS, ids=repr)
def test_policy_draws_move_nothing_to_the_device(op):
    """The draws index tables cached per device; on "meta" a table copied there per batch would show."""
    meta = torch.device("meta")
    op.sample(64, 32, 32, None, meta)
    with HostTraffic() as traffic:
        op.sample(64, 32, 32, None, meta)
    assert traffic.events == []
