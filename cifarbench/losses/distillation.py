"""Knowledge distillation (Hinton et al., 2015): the loss and a helper that freezes the teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cifarbench.errors import ConfigError
from cifarbench.losses.base import Loss


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: float,
    alpha: float,
    label_smoothing: float = 0.0,
) -> Tensor:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, targets)``.

    The KL term is summed over classes and averaged over the batch ("batchmean", the true KL per sample). The
    ``T^2`` factor keeps its gradient magnitude independent of the temperature, so alpha means the same at any T.
    ``targets`` are class indices (N,) or soft targets (N, C) from Mixup/CutMix; ``label_smoothing`` applies to
    the CE term only. The teacher logits are detached. Computed in float32 even under autocast.
    """
    if temperature <= 0:
        raise ConfigError(f"distillation temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"distillation alpha must be in [0, 1], got {alpha}")
    student = student_logits.float()
    teacher = teacher_logits.detach().float()
    soft_targets = targets.float() if targets.is_floating_point() else targets
    hard = F.cross_entropy(student, soft_targets, label_smoothing=label_smoothing)
    if alpha == 0.0:
        return hard
    kl = F.kl_div(
        F.log_softmax(student / temperature, dim=1),
        F.log_softmax(teacher / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * temperature**2 * kl + (1.0 - alpha) * hard


def frozen_teacher(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode with every parameter ``requires_grad=False`` and return it.

    The trainer still calls it under ``torch.no_grad()`` (saves activation memory), and must not register it as a
    submodule of the student, or ``student.train()`` would switch the teacher's BatchNorm/Dropout back on.
    """
    model.eval()
    model.requires_grad_(False)
    return model


@torch.no_grad()
def teacher_logits(teacher: nn.Module, images: Tensor) -> Tensor:
    """The teacher's logits for ``images``, without building a graph."""
    return teacher(images)


class DistillationLoss(Loss):
    """`loss=distillation loss.teacher=<best.pt>`: the student matches a frozen cifarbench teacher's softened
    predictions (weight `alpha`, temperature `temperature`) and the labels (weight 1 - alpha)."""

    def __init__(self, teacher: str | None, temperature: float = 4.0, alpha: float = 0.9, label_smoothing: float = 0.0):
        if not teacher:
            raise ConfigError("loss=distillation needs a teacher: loss.teacher=<the best.pt or last.pt of a cifarbench "
                              "run on the same classes>")
        self.teacher_path = str(teacher)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.label_smoothing = float(label_smoothing)
        self.teacher: nn.Module | None = None

    def setup(self, *, device: torch.device, num_classes: int, channels_last: bool) -> None:
        from cifarbench import checkpoint  # the checkpoint module builds models; keep it out of the loss's import

        payload = checkpoint.load_checkpoint(self.teacher_path)
        if payload["num_classes"] != num_classes:
            raise ConfigError(
                f"loss.teacher={self.teacher_path} predicts {payload['num_classes']} classes but this dataset has "
                f"{num_classes}; distil from a teacher trained on the same classes"
            )
        teacher = checkpoint.model_from_checkpoint(payload, source=self.teacher_path)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.teacher = frozen_teacher(teacher.to(device, memory_format=memory_format))

    def __call__(self, logits: Tensor, targets: Tensor, images: Tensor) -> Tensor:
        return distillation_loss(logits, teacher_logits(self.teacher, images), targets, self.temperature, self.alpha,
                                 label_smoothing=self.label_smoothing)
