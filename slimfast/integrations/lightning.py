"""slimTrain in Lightning: a LightningModule with manual optimisation (body optimizer + SlimTik).

    import lightning as L
    from slimfast.integrations.lightning import SlimTrainModule

    module = SlimTrainModule(body, head, lr=1e-3)
    L.Trainer(max_epochs=10, accelerator="cpu").fit(module, train_loader, val_loader)

Every ``training_step`` is one slimTrain iteration (``slimfast.train.SlimTrain.train_step``):
features from the body, the head solved by ``SlimTik`` on the detached features, the MSE loss
with the new head, ``manual_backward`` through the body, one step of the body optimizer (Adam).
Both optimizers come from ``configure_optimizers``, so Lightning checkpoints the SlimTik state
(memory and Λ, float64) with the rest.

Data parallel: under Lightning's DDP strategy torch.distributed is initialised, so SlimTik
all-reduces the head statistics of every rank's shard (``slimfast.distributed``, one collective
of 8·(n_f² + n_t·n_f + 2) bytes per step) and every rank takes the same head step; the body's
gradients are averaged by DDP as usual. The head's parameters never require gradients (SlimTik
sets them), so DDP needs no ``find_unused_parameters``.

Needs ``lightning`` (or the older ``pytorch_lightning``): ``pip install lightning``. This module
is an example to copy and adapt (other losses, optimizers, schedulers): the contract that matters
is the order body → ``slim.step(z.detach(), y)`` → loss with the new head → body step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on the environment
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as exc:
        raise ImportError("slimfast.integrations.lightning needs Lightning: pip install lightning "
                          "(or pytorch_lightning)") from exc

from ..heads import Reduction
from ..optim import SlimTik, release_head

__all__ = ["SlimTrainModule"]


class SlimTrainModule(pl.LightningModule):
    """body → linear head (nn.Linear / nn.Conv2d / nn.ConvTranspose2d), trained by slimTrain.

    Args:
        body: feature extractor; trained by Adam(lr, weight_decay).
        head: the linear head; solved every step by SlimTik (never by gradients).
        lr, weight_decay: the body's Adam.
        memory_depth, Lambda0, reduction, backend: SlimTik's settings; ``slimtik_kwargs`` go
            to SlimTik too (lambda_mode, bounds, on_nonfinite, process_group, distributed, ...).

    Logged: ``train_loss`` (the batch MSE with the new head), ``slimtik_lambda`` (λ_k),
    ``slimtik_alpha`` (Λ_k/(k+1)); ``val_loss`` in validation.
    """

    def __init__(self, body: nn.Module, head: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0,
                 memory_depth: int = 0, Lambda0: float = 0.05, reduction: Reduction = "mean",
                 backend: str | None = None, **slimtik_kwargs: Any) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.body, self.head = body, head
        for p in self.head.parameters():   # set by SlimTik, never by gradients (and DDP skips them)
            p.requires_grad_(False)
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.slimtik_kwargs = dict(memory_depth=memory_depth, Lambda0=Lambda0, reduction=reduction, backend=backend,
                                   **slimtik_kwargs)
        self.loss_fn = nn.MSELoss(reduction=reduction)
        self.save_hyperparameters(ignore=["body", "head"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        body_opt = torch.optim.Adam(self.body.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        release_head(self.head)   # a second fit builds a new SlimTik while the old trainer may hold the first
        return [body_opt, SlimTik(self.head, **self.slimtik_kwargs)]

    @property
    def slim(self) -> SlimTik:
        """The SlimTik optimizer (unwrapped from Lightning's optimizer wrapper)."""
        opt = self.optimizers()[1]
        return getattr(opt, "optimizer", opt)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        body_opt = self.optimizers()[0]
        body_opt.zero_grad()
        z = self.body(x)
        info = self.slim.step(z.detach(), y)    # SlimTik.step(features, target), not step(closure)
        loss = self.loss_fn(self.head(z), y)
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"loss is {float(loss)} after head step {self.slim.n_steps_}")
        self.manual_backward(loss)
        body_opt.step()
        self.log("train_loss", loss.detach(), prog_bar=True)
        self.log("slimtik_lambda", info.lambda_)
        self.log("slimtik_alpha", self.slim.alpha_)
        return loss.detach()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.log("val_loss", loss, prog_bar=True)
        return loss
