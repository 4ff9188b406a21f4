"""Loss-based data selection with a small proxy network (airbench96_faster, Jordan 2024): the main network trains
only on the examples of each batch that a cheap proxy finds hardest.

For every training micro-batch of B examples, the proxy (any model config) computes each example's loss; the main
network's step then sees only the `keep` examples with the highest proxy loss (a fraction of B, or a count), in
their batch order. The proxy itself learns alongside, on the same batches: every `train_proxy_every` micro-batches
it takes an SGD step, on the whole batch (`proxy_trains_on: all`) or, as the record does, on the kept examples
only (`kept`); between its steps it only scores, under no_grad. It is always in training mode, as in the record
(BatchNorm uses the batch's statistics and updates its running ones). Since the proxy never depends on the main
network, training both in step gives the same selections as the record's proxy run done ahead of the main run.

The proxy's optimizer is the run's own (`optimizer`, with the run's `param_groups` rules: airbench's 64x lr on
BatchNorm biases) under the run's `scheduler`, stepped once per micro-batch as the record steps it; `frozen` names
proxy parameters that never train (the record freezes the proxy's whitening bias from the start). The proxy's
weights, optimizer, schedule and counters are in last.pt, so a resumed run selects exactly what it would have.

What a run counts: the main network's img/s and `train_samples` are the examples it trained on (the kept ones);
metrics.json's `data_selection` gives the proxy's forward and backward images, over all ranks. Under torchrun each
rank's proxy scores and selects within that rank's own micro-batch, and the proxies train as DDP trains the main
network: rank 0's weights to start, each step's gradients averaged over the ranks. So every rank holds the same
proxy weights, and rank 0's in last.pt resumes all of them exactly (the BatchNorm running statistics stay each rank's,
unused: the proxy always scores in training mode). fp16 is refused (a proxy step has no GradScaler); bf16
autocasts the proxy's forward.
"""

from __future__ import annotations

import fnmatch
import logging
import math

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor

from cifarbench import distributed
from cifarbench.config import build
from cifarbench.device import autocast, memory_format
from cifarbench.engine.hooks import Callback, TrainerView
from cifarbench.errors import ConfigError

log = logging.getLogger("cifarbench")
TRAINS_ON = ("all", "kept")


class DataSelection(Callback):
    def __init__(self, proxy, keep: float = 0.5, train_proxy_every: int = 1, proxy_trains_on: str = "all",
                 frozen=()):
        if not (isinstance(proxy, dict) or OmegaConf.is_dict(proxy)) or "_target_" not in proxy:
            raise ConfigError("callbacks.data_selection.proxy must be a model config with a _target_ (e.g. "
                              "cifarbench.models.airbench.Airbench94 with small widths)")
        keep = float(keep)
        if keep <= 0 or (keep > 1 and not keep.is_integer()):
            raise ConfigError(f"callbacks.data_selection.keep={keep:g} must be a fraction in (0, 1] or a whole "
                              "number of examples per batch")
        if int(train_proxy_every) < 0:
            raise ConfigError(f"callbacks.data_selection.train_proxy_every={train_proxy_every} must be >= 0 "
                              "(0: the proxy never trains)")
        if proxy_trains_on not in TRAINS_ON:
            raise ConfigError(f"callbacks.data_selection.proxy_trains_on={proxy_trains_on!r} must be one of "
                              f"{', '.join(TRAINS_ON)}")
        self.proxy_cfg, self.keep = proxy, keep
        self.train_every, self.trains_on = int(train_proxy_every), proxy_trains_on
        self.frozen = [str(pattern) for pattern in frozen]
        self.steps = self.forward_images = self.backward_images = 0

    # -------------------------------------------------------------------------------------------- setup
    def setup(self, trainer: TrainerView) -> None:
        from cifarbench.engine.setup import init_from_data
        from cifarbench.optim.param_groups import build_param_groups

        cfg, device = trainer.cfg, trainer.device
        if trainer.runtime.precision == "16":
            raise ConfigError("callbacks.data_selection does not run under trainer.precision=16 (the proxy's step "
                              "has no GradScaler); use bf16 or 32")
        node = OmegaConf.create(OmegaConf.to_container(OmegaConf.create(self.proxy_cfg), resolve=True))
        node.num_classes, node.in_channels = trainer.data.num_classes, trainer.data.in_channels
        self.proxy = build(node).to(device, memory_format=memory_format(bool(cfg.trainer.channels_last)))
        shape = tuple(trainer.data.train.images.shape[1:])
        try:  # one image, before any training: a proxy that cannot take the data says so now
            with torch.no_grad():
                self.proxy.eval()(torch.zeros(1, *shape, device=device))
        except Exception as error:  # noqa: BLE001 - any shape or type mismatch, as one line
            raise ConfigError(f"callbacks.data_selection.proxy ({node._target_}) cannot take this dataset's "
                              f"{'x'.join(map(str, shape))} images ({type(error).__name__}: "
                              f"{str(error).splitlines()[0][:200]}); give a proxy model for them") from None
        init_from_data(self.proxy, trainer.data, device)
        self.world_size = trainer.runtime.dist.world_size
        distributed.broadcast_tensors(self.proxy.state_dict().values())  # every rank starts from rank 0's proxy
        rules = OmegaConf.to_container(cfg.param_groups, resolve=True) if cfg.get("param_groups") else {}
        groups = build_param_groups(self.proxy, rules, lr=float(cfg.optimizer.lr),
                                    weight_decay=float(cfg.optimizer.get("weight_decay", 0.0)))
        # Frozen after the groups are made, so that a rule of the run (whitening_bias) may match only those.
        for name, parameter in self.proxy.named_parameters():
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.frozen):
                parameter.requires_grad_(False)
        groups = [{"params": [p for p in g["params"] if p.requires_grad], "lr": g["lr"],
                   "weight_decay": g["weight_decay"]} for g in groups]
        self.optimizer = build(cfg.optimizer)([g for g in groups if g["params"]])
        self.scheduler = build(cfg.scheduler)(self.optimizer, steps_per_epoch=trainer.steps_per_epoch,
                                              epochs=float(cfg.trainer.epochs))
        self.label_smoothing = float(cfg.loss.get("label_smoothing", 0.0) or 0.0)
        self.sum_loss = cfg.loss.get("reduction", "mean") == "sum"
        self.precision = trainer.runtime.precision
        log.info("data selection: the main network trains on %s of each batch with the highest loss under a %.2fM-"
                 "parameter proxy, which trains every %s micro-batch(es) on %s", self._shown_keep(),
                 sum(p.numel() for p in self.proxy.parameters()) / 1e6, self.train_every or "no", self.trains_on)

    def _shown_keep(self) -> str:
        return f"{int(self.keep)} examples" if self.keep > 1 else f"{100 * self.keep:g}%"

    def kept_count(self, batch: int) -> int:
        return min(batch, int(self.keep)) if self.keep > 1 else max(1, math.floor(self.keep * batch + 0.5))

    # ---------------------------------------------------------------------------------------- per batch
    def proxy_losses(self, images: Tensor, labels: Tensor) -> Tensor:
        with autocast(images.device, self.precision if self.precision == "bf16" else "32"):
            logits = self.proxy(images)
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing, reduction="none")

    def on_train_batch_start(self, trainer: TrainerView, images: Tensor, labels: Tensor):
        self.proxy.train()
        k = self.kept_count(len(labels))
        training = self.train_every > 0 and self.steps % self.train_every == 0
        with torch.set_grad_enabled(training):
            losses = self.proxy_losses(images, labels)
        # The k highest losses, kept in batch order (the record's boolean mask does the same).
        kept = losses.detach().topk(k).indices.sort().values
        if training:
            chosen = losses if self.trains_on == "all" else losses[kept]
            loss = chosen.sum() if self.sum_loss else chosen.mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(self.proxy.parameters())  # as DDP does, so that the ranks' proxies agree
            self.optimizer.step()
            self.backward_images += len(chosen) * self.world_size  # every rank's micro-batch is the same size
        if self.train_every > 0:
            self.scheduler.step()  # per micro-batch, as the record steps the proxy's schedule
        self.steps += 1
        self.forward_images += len(labels) * self.world_size
        return images[kept], labels[kept]

    def metrics(self) -> dict:
        return {"data_selection": {"kept_per_batch": self._shown_keep(), "proxy_forward_images": self.forward_images,
                                   "proxy_backward_images": self.backward_images}}

    # ------------------------------------------------------------------------------------------- resume
    def state_dict(self) -> dict:
        return {"proxy": self.proxy.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "steps": self.steps,
                "forward_images": self.forward_images, "backward_images": self.backward_images}

    def load_state_dict(self, state: dict) -> None:
        self.proxy.load_state_dict(state["proxy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps, self.forward_images = int(state["steps"]), int(state["forward_images"])
        self.backward_images = int(state["backward_images"])
