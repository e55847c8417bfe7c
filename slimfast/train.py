"""``SlimTrain``: the slimTrain loop (method.md §2) for a body network and a linear head.

Each step: features from the body, the head solved exactly by ``SlimTik`` on those features
(detached), then one step of any torch optimizer on the body for the loss with the new head:

    z = body(x);  slim.step(z.detach(), y);  loss = loss_fn(head(z), y);  loss.backward();  body_opt.step()

``fit(..., refit="end")`` (the default) then replaces the head by the exact ridge solution over
the whole training loader with λ by exact GCV (``refit.refit_head``): the last step's head was
solved on one batch only.

Numerical faults: a batch the head step rejects raises (body buffers such as BatchNorm statistics
restored, body and head untouched); with ``SlimTik(on_nonfinite="skip")`` a batch with
non-finite statistics is skipped by the whole iteration instead (no body update, buffers
restored). A non-finite loss never reaches ``backward``: it raises FloatingPointError, or with
``on_nonfinite="skip"`` skips the body update (the head step of that batch is kept).
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import get_rng_state, set_rng_state
from .loop import EpochRun, REFIT_MODES, Stop, check_refit, eval_mode, new_history, record, run_epochs
from .module_buffers import ModuleBuffers
from .optim import SlimTik
from .refit import refit_head

logger = logging.getLogger("slimfast")

__all__ = ["REFIT_MODES", "ProgressFn", "SlimTrain"]

#: progress(epoch, batch_index, n_batches or None, loss) — called after every training step.
ProgressFn = Callable[[int, int, "int | None", float], None]
#: callback(epoch, history) — called after every epoch; returning True stops training.
CallbackFn = Callable[[int, dict[str, list[float]]], "bool | None"]


def _batch_size(x: Any) -> int:
    return int(x.shape[0]) if isinstance(x, torch.Tensor) and x.ndim > 0 else 1


def _finite(x: Any, y: Any) -> bool:
    """Whether floating tensors x and y hold only finite values (one sync)."""
    checks = [torch.isfinite(t).all() for t in (x, y) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


def _set_epoch(loader: Any, epoch: int) -> None:
    """Call ``set_epoch(epoch)`` on the loader, its sampler and its batch sampler where they have one."""
    seen: set[int] = set()
    for obj in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if obj is not None and id(obj) not in seen and callable(getattr(obj, "set_epoch", None)):
            seen.add(id(obj))
            obj.set_epoch(epoch)


class SlimTrain:
    """Train ``body`` with ``body_optimizer`` while ``slim`` solves for ``head`` every step.

    Args:
        body: feature extractor F(·; θ).
        head: the linear head that ``slim`` owns (must be ``slim.head``).
        body_optimizer: any torch optimizer over the body's parameters (not the head's).
        slim: the ``SlimTik`` optimizer of ``head``.
        loss_fn: loss of (head(z), y); default ``F.mse_loss`` with ``reduction=slim.reduction``
            (``nn.MSELoss``'s loss without a module call per step), the loss whose half the
            head step minimises exactly.

    Batches are moved to the head's device. The head's forward in the body step runs with its
    parameters' ``requires_grad`` switched off, so no head gradient is computed or accumulated
    (the head is solved, not trained by gradients).

    Attributes:
        last_skipped: whether the last ``train_step`` skipped its batch.
        n_skipped: batches skipped so far (head step skipped, or body update skipped).
        epoch_running: (loss·batch-size sum, sample count) of the current epoch so far; saved
            by ``save_checkpoint`` so that a resumed epoch's ``running_train_loss`` is the
            uninterrupted one.
    """

    def __init__(
        self,
        body: nn.Module,
        head: nn.Module,
        body_optimizer: torch.optim.Optimizer,
        slim: SlimTik,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if not isinstance(slim, SlimTik):
            raise TypeError(f"slim must be a SlimTik optimizer, got {type(slim).__name__}")
        if slim.head is not head:
            raise ValueError("slim must be the SlimTik optimizer of this head (slim.head is not head)")
        head_ids = {id(p) for p in head.parameters()}
        if any(id(p) in head_ids for g in body_optimizer.param_groups for p in g["params"]):
            raise ValueError("body_optimizer must not hold the head's parameters (SlimTik sets them)")
        self.body, self.head, self.body_optimizer, self.slim = body, head, body_optimizer, slim
        self._body_buffers = ModuleBuffers()
        self._head_parameters = ModuleBuffers(parameters=True)
        self.loss_fn = loss_fn if loss_fn is not None else functools.partial(F.mse_loss, reduction=slim.reduction)
        self.last_skipped = False
        self.n_skipped = 0
        self.epoch_running: tuple[float, int] = (0.0, 0)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def _head_forward(self, z: torch.Tensor) -> torch.Tensor:
        """head(z) with the head's parameters out of the graph: gradients reach the body only."""
        params = [p for p in self._head_parameters.of(self.head) if p.requires_grad]
        try:
            for p in params:
                p.requires_grad_(False)
            return self.head(z)
        finally:
            for p in params:
                p.requires_grad_(True)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One slimTrain iteration on the batch (x, y); returns the batch loss with W_k.

        Non-finite faults (see the module docstring): with ``slim.on_nonfinite="skip"`` a
        skipped batch returns NaN and sets ``last_skipped``; with ``"raise"`` the head step
        raises ValueError naming ``features``/``target``, and a non-finite loss raises
        FloatingPointError before ``backward`` (head step taken, body untouched).
        """
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        skip_mode = self.slim.on_nonfinite == "skip"
        self.last_skipped = False
        self.body_optimizer.zero_grad(set_to_none=True)
        # Keep the body's buffers (BatchNorm running statistics; usually none or small) so that a
        # rejected or skipped batch's forward pass leaves no trace in the body.
        buffers = [(b, b.detach().clone()) for b in self._body_buffers.of(self.body)]
        z = self.body(x)
        try:
            info = self.slim.step(z.detach(), y)
        except Exception:
            self._restore_buffers(buffers)
            raise
        if info.skipped:
            self._skip_body(buffers)
            return math.nan
        loss = self.loss_fn(self._head_forward(z), y)
        value = float(loss.detach())   # the step's one loss sync, before backward: NaN never reaches θ
        if not math.isfinite(value):
            if not skip_mode:
                self._restore_buffers(buffers)
                raise FloatingPointError(f"loss is {value} after the head step {self.slim.n_steps_}; the body was "
                                         "not updated (SlimTik(on_nonfinite='skip') skips such batches)")
            logger.warning("slimtrain: loss is %s after head step %d; body update skipped", value, self.slim.n_steps_)
            self._skip_body(buffers)
            return value
        loss.backward()
        self.body_optimizer.step()
        return value

    def _restore_buffers(self, buffers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)

    def _skip_body(self, buffers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self._restore_buffers(buffers)
        self.body_optimizer.zero_grad(set_to_none=True)
        self.last_skipped = True
        self.n_skipped += 1

    def refit(self, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """``refit.refit_head`` of the head over all of ``loader`` (exact ridge, μ by exact GCV);
        returns μ*. Uses the slimTik optimizer's reduction, backend and process group. The RNG
        states are restored afterwards, so the extra pass over a shuffling loader changes no
        later batch order. The solver state (memory, Λ) is kept: the next step starts from the
        refit head."""
        rng = get_rng_state()
        if self.slim.on_nonfinite == "skip":
            loader = ((x, y) for x, y in loader if _finite(x, y))
        try:
            result = refit_head(self.body, self.head, loader, reduction=self.slim.reduction, backend=self.slim.backend,
                                process_group=self.slim.process_group, distributed=self.slim.distributed)
        finally:
            set_rng_state(rng)
        return result.alpha_

    @torch.no_grad()
    def evaluate(self, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """Batch losses averaged with weights = batch size (the dataset mean for a mean loss).

        The RNG states are restored afterwards (a shuffling loader draws from them). With
        ``slim.on_nonfinite="skip"`` batches whose inputs or targets are not finite are left
        out (as in training)."""
        rng = get_rng_state()
        try:
            return self._evaluate(loader)
        finally:
            set_rng_state(rng)

    def _evaluate(self, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
        total, count = 0.0, 0
        with eval_mode(self.body, self.head):
            for x, y in loader:
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                if self.slim.on_nonfinite == "skip" and not _finite(x, y):
                    continue
                n = _batch_size(x)
                total += float(self.loss_fn(self.head(self.body(x)), y)) * n
                count += n
        return total / max(count, 1)

    def fit(
        self,
        loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
        epochs: int,
        val_loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
        callback: CallbackFn | None = None,
        scheduler: Any | None = None,
        progress: ProgressFn | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        start_epoch: int = 0,
        start_batch: int = 0,
        refit: str = "end",
        refit_loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
        eval_train: bool = True,
    ) -> dict[str, list[float]]:
        """Train for ``epochs`` passes over ``loader``; returns the history.

        Args:
            loader: iterable of (x, y) batches (re-iterated every epoch). At the start of every
                epoch, ``set_epoch(epoch)`` is called on the loader, its ``sampler`` and its
                ``batch_sampler`` where they have one (``slimfast.checkpoint.EpochSampler``,
                ``DistributedSampler``).
            epochs: number of passes.
            val_loader: optional (x, y) batches evaluated after every epoch.
            callback: ``callback(epoch, history)`` after every epoch; return True to stop.
            scheduler: LR scheduler of the body optimizer, stepped every epoch (or every step
                with ``scheduler_interval="step"``); ReduceLROnPlateau gets the validation loss
                (the epoch's training loss without ``val_loader``).
            progress: ``progress(epoch, batch_index, n_batches or None, loss)`` after each step.
            start_epoch, start_batch: resume point (``Checkpoint.epoch``, ``Checkpoint.batch_index``
                from ``slimfast.checkpoint.load_checkpoint``): epochs ``start_epoch … epochs − 1``
                run, and the first ``start_batch`` batches of epoch ``start_epoch`` are drawn and
                discarded (with the torch/numpy/python RNG states restored afterwards, so the
                replay consumes no randomness). For a bit-identical resume the loader's order in
                an epoch must depend on the epoch index only (fixed order, or a ``set_epoch``
                sampler). ``epochs`` counts from 0 as in the uninterrupted run.
            refit: exact full-data head refit (``SlimTrain.refit``) over ``refit_loader``
                (default: ``loader``): ``"end"`` (default) after the last epoch, before its
                evaluation; ``"epoch"`` after every epoch (training goes on from the refit
                head); ``"none"``. A callback that stops training early gets no final refit.
            eval_train: evaluate the training split (``loader`` in eval mode, after the epoch
                and its refit) for ``epoch_train_loss``; False skips that pass (the key then
                holds ``running_train_loss``'s values).

        A skipped batch (``SlimTik(on_nonfinite="skip")``) appears in the per-step lists with
        ``train_loss`` and ``lambda`` NaN, is left out of ``epoch_train_loss``, does not step a
        per-step scheduler, and is counted in the per-epoch list ``skipped``.

        Returns:
            dict of lists: per step ``train_loss`` (the batch loss right after the head was
            solved on that batch: optimistic), ``step_time`` (s), ``alpha``, ``lambda``; per
            epoch ``epoch_train_loss`` (the network at the epoch's end evaluated on ``loader``),
            ``running_train_loss`` (batch-size weighted mean of that epoch's ``train_loss``),
            ``val_loss`` (when ``val_loader``), ``refit_alpha`` (μ* of each refit), ``lr`` (body
            optimizer, first group, at the epoch's start), ``epoch_time`` (s), ``skipped``.
        """
        check_refit(refit)
        if not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
        if not isinstance(start_epoch, int) or not 0 <= start_epoch <= epochs:
            raise ValueError(f"start_epoch must be an integer in [0, epochs={epochs}], got {start_epoch!r}")
        if not isinstance(start_batch, int) or start_batch < 0:
            raise ValueError(f"start_batch must be a non-negative integer, got {start_batch!r}")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        keys = ("train_loss", "step_time", "alpha", "lambda", "epoch_train_loss", "running_train_loss", "val_loss",
                "refit_alpha", "lr", "epoch_time", "skipped")
        history = new_history(keys)
        run = _FitRun(self, loader, history, start_epoch=start_epoch, start_batch=start_batch, val_loader=val_loader,
                      callback=callback, scheduler=scheduler, scheduler_interval=scheduler_interval,
                      progress=progress, refit_loader=refit_loader, eval_train=eval_train)
        run_epochs(run, range(start_epoch, epochs), refit=refit)
        return history


class _FitRun(EpochRun):
    """``SlimTrain.fit``'s parts of the shared epoch loop (``loop.run_epochs``)."""

    def __init__(self, trainer: SlimTrain, loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
                 history: dict[str, Any], *,
                 start_epoch: int, start_batch: int, val_loader: Iterable[Any] | None, callback: CallbackFn | None,
                 scheduler: Any | None, scheduler_interval: str, progress: ProgressFn | None,
                 refit_loader: Iterable[Any] | None, eval_train: bool) -> None:
        self.trainer, self.loader, self.history = trainer, loader, history
        self.start_epoch, self.start_batch = start_epoch, start_batch
        self.val_loader, self.callback, self.progress = val_loader, callback, progress
        self.refit_loader = refit_loader if refit_loader is not None else loader
        self.eval_train = eval_train
        self.scheduler = scheduler
        self.plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        self.step_scheduler = scheduler is not None and scheduler_interval == "step" and not self.plateau
        self.epoch_scheduler = scheduler is not None and (scheduler_interval == "epoch" or self.plateau)
        try:
            self.n_batches: int | None = len(loader)  # type: ignore[arg-type]
        except TypeError:
            self.n_batches = None
        self.skip, self.n_skipped, self.t_epoch = 0, 0, 0.0

    def begin_epoch(self, epoch: int) -> None:
        t = self.trainer
        t.body.train()
        t.head.train()
        record(self.history, lr=float(t.body_optimizer.param_groups[0]["lr"]))
        self.t_epoch = time.perf_counter()
        self.skip = self.start_batch if epoch == self.start_epoch else 0
        # a resumed epoch goes on from the checkpoint's running sums
        t.epoch_running = t.epoch_running if self.skip else (0.0, 0)
        self.n_skipped = 0
        _set_epoch(self.loader, epoch)

    def batches(self, epoch: int) -> Iterable[tuple[int, Any]]:
        rng = get_rng_state() if self.skip else None   # before iter(): a DataLoader draws its seed there
        batches = iter(self.loader)
        if rng is not None:
            for _ in itertools.islice(batches, self.skip):
                pass
            set_rng_state(rng)
        return enumerate(batches, start=self.skip)

    def train_step(self, batch: Any) -> tuple[float, int]:
        x, y = batch
        return self.trainer.train_step(x, y), _batch_size(x)   # float(loss) synchronises: the time is complete

    def record_step(self, epoch: int, index: int, outcome: tuple[float, int], seconds: float, steps: int) -> Stop:
        t, slim = self.trainer, self.trainer.slim
        loss, n = outcome
        skipped_head = t.last_skipped and slim.last_info_.skipped
        record(self.history, step_time=seconds, train_loss=loss, alpha=slim.alpha_,
               **{"lambda": math.nan if skipped_head else slim.lambda_history_[-1]})
        if t.last_skipped:
            self.n_skipped += 1
        else:
            total, count = t.epoch_running
            t.epoch_running = (total + loss * n, count + n)
            if self.step_scheduler:
                self.scheduler.step()
        if self.progress is not None:
            self.progress(epoch, index, self.n_batches, loss)
        return Stop.NO

    def refit(self, epoch: int) -> None:
        record(self.history, refit_alpha=self.trainer.refit(self.refit_loader))

    def end_epoch(self, epoch: int) -> bool:
        t, h = self.trainer, self.history
        total, count = t.epoch_running
        epoch_loss = total / max(count, 1)
        record(h, running_train_loss=epoch_loss, skipped=self.n_skipped,
                 epoch_train_loss=t.evaluate(self.loader) if self.eval_train else epoch_loss)
        if self.val_loader is not None:
            record(h, val_loss=t.evaluate(self.val_loader))
        record(h, epoch_time=time.perf_counter() - self.t_epoch)
        if self.epoch_scheduler:
            if self.plateau:
                self.scheduler.step(h["val_loss"][-1] if self.val_loader is not None else h["epoch_train_loss"][-1])
            else:
                self.scheduler.step()
        return bool(self.callback is not None and self.callback(epoch, h))
