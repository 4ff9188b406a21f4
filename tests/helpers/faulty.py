"""A test-only network written to a temp dir for child processes: NaN logits or a SIGTERM on chosen steps."""

from __future__ import annotations

# A test-only network, importable by child processes through PYTHONPATH. It can return NaN logits on chosen
# training forward passes (1-based) or in evaluation, or send its own process SIGTERM during a chosen training step
# and then keep that step busy, so that a second signal is sure to arrive while the first one's step still runs.
FAULT_MODELS = '''
import os
import signal
import time

import torch
from torch import nn


class Faulty(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, nan_steps=(), nan_eval=False, sigterm_at_step=0, **ignored):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(8, num_classes),
        )
        self.nan_steps = set(nan_steps)
        self.nan_eval = nan_eval
        self.sigterm_at_step = sigterm_at_step
        self.calls = 0

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls == self.sigterm_at_step:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(120)  # the step is still running when the test's second SIGTERM arrives
            if self.calls in self.nan_steps:
                return out * float("nan")
        elif self.nan_eval:
            return out * float("nan")
        return out
'''


FAULTY = ["model._target_=cifarbench_fault_models.Faulty"]  # on top of model=resnet20, whose extra keys it ignores
