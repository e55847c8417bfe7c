"""The one epoch loop and history recorder of every slimfast training run.

``SlimTrain.fit``, ``runs.run_training`` (slimTrain or Adam), ``sweep_run.run_sweep`` (B stacked
slimTrain models) and ``sweep_adam.run_adam_sweep`` all run ``run_epochs`` with an ``EpochRun``
that says how to draw an epoch's batches, take one step, record it, refit the head and close an
epoch; the loop owns the order of these, the step timing, the step count, ``max_steps`` and the
refit schedule (``refit_due``). Histories are plain dicts of lists (JSON ready, and loadable by
``torch.load(weights_only=True)``), made by ``new_history`` and appended to by ``record``.
"""

from __future__ import annotations

import contextlib
import enum
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["REFIT_MODES", "EpochRun", "Stop", "eval_mode", "new_history", "record", "record_evaluation", "refit_due",
           "run_epochs", "split_errors"]

#: When the head is refit on the whole training split: never, after the last epoch, after every epoch.
REFIT_MODES = ("none", "end", "epoch")


def check_refit(refit: str) -> None:
    if refit not in REFIT_MODES:
        raise ValueError(f"refit must be one of {REFIT_MODES}, got {refit!r}")


def refit_due(refit: str, last: bool) -> bool:
    """Whether an epoch's end refits the head: every epoch (``"epoch"``), or the last (``"end"``)."""
    return refit == "epoch" or (refit == "end" and last)


def new_history(keys: Iterable[str] = (), **fields: Any) -> dict[str, Any]:
    """A run's history: the given fields, then an empty list per key."""
    hist = dict(fields)
    for key in keys:
        hist[key] = []
    return hist


def record(hist: dict[str, Any], **values: Any) -> None:
    """Append each value to its list in ``hist`` (a new key starts a new list)."""
    for key, value in values.items():
        hist.setdefault(key, []).append(value)


def record_evaluation(hist: dict[str, Any], epoch: int, train: tuple[float, float], val: tuple[float, float],
                      **extra: Any) -> None:
    """One epoch row of a run's whole-split evaluation: ``train``/``val`` are (MSE, relative error)."""
    record(hist, epoch=epoch, train_loss=train[0], train_rel=train[1], val_loss=val[0], val_rel=val[1], **extra)


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """The modules in eval mode inside the block; each gets its own training flag back after."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


@torch.no_grad()
def split_errors(predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                 chunk: int = 2048) -> tuple[list[float], list[float]]:
    """Per model, over a whole split: the mean squared error ‖P − Y‖²_F / numel(Y) and the
    relative error ‖P − Y‖_F / ‖Y‖_F (NaN when Y = 0), with float64 sums over chunks of ``chunk``
    samples. ``predict(x[chunk])`` returns the B models' predictions [B, *y.shape]."""
    sq: torch.Tensor | None = None
    ref = 0.0
    for start in range(0, x.shape[0], chunk):
        pred = predict(x[start:start + chunk]).double()
        target = y[start:start + chunk].double()
        part = ((pred - target[None]) ** 2).reshape(pred.shape[0], -1).sum(1).cpu()
        sq = part if sq is None else sq + part
        ref += float((target**2).sum())
    if sq is None:
        return [], []
    mse = [float(v) / max(y.numel(), 1) for v in sq]
    rel = [math.sqrt(float(v) / ref) if ref > 0 else math.nan for v in sq]
    return mse, rel


class Stop(enum.Enum):
    """What a step tells the loop: go on; end after this epoch's refit and record (``LAST``);
    end after this epoch's record without refit (``FAILED``: the run diverged)."""

    NO = 0
    LAST = 1
    FAILED = 2


class EpochRun:
    """The parts of a training run that differ between trainers; ``run_epochs`` calls them.

    Subclasses implement ``batches``, ``train_step`` and ``record_step``; the others default to
    no-ops. ``step_errors`` are the exceptions of ``train_step`` that end the run as diverged
    (``step_failed`` decides; it may re-raise), instead of propagating.
    """

    step_errors: tuple[type[BaseException], ...] = ()

    @property
    def active(self) -> bool:
        """False when nothing is left to train (a sweep whose models all diverged)."""
        return True

    def begin_epoch(self, epoch: int) -> None:
        """Called before the epoch's first batch is drawn."""

    def batches(self, epoch: int) -> Iterable[tuple[int, Any]]:
        """(batch index, batch) pairs of the epoch."""
        raise NotImplementedError

    def train_step(self, batch: Any) -> Any:
        raise NotImplementedError

    def step_failed(self, exc: BaseException, steps: int) -> None:
        """``train_step`` raised one of ``step_errors`` after ``steps`` good steps; re-raise to propagate."""
        raise exc

    def record_step(self, epoch: int, index: int, outcome: Any, seconds: float, steps: int) -> Stop:
        """Record step ``steps`` (counted from 1) and its outcome; ``seconds`` is its wall time."""
        raise NotImplementedError

    def refit(self, epoch: int) -> None:
        """Refit the head on the whole training split (called when ``refit_due``)."""

    def end_epoch(self, epoch: int) -> bool:
        """Evaluate and record the epoch; True stops training (after this epoch)."""
        return False


def run_epochs(run: EpochRun, epochs: Sequence[int], refit: str = "none", max_steps: int | None = None) -> int:
    """Train ``run`` over ``epochs`` (e.g. ``range(1, E + 1)``); returns the number of steps taken.

    Per epoch: ``begin_epoch``; for every batch ``train_step`` (timed with ``time.perf_counter``;
    the step's own loss read synchronises a device), ``record_step``; then, unless the run
    failed, ``refit`` when ``refit_due(refit, last)`` (last: the final epoch, or a step said
    ``Stop.LAST``, or ``max_steps`` reached); then ``end_epoch``. Training stops after an epoch
    whose step said stop, when ``end_epoch`` returns True, or before an epoch when the run is no
    longer ``active``.
    """
    check_refit(refit)
    final = epochs[-1] if len(epochs) else None
    steps = 0
    for epoch in epochs:
        if not run.active:
            break
        run.begin_epoch(epoch)
        stop = Stop.NO
        for index, batch in run.batches(epoch):
            t0 = time.perf_counter()
            try:
                outcome = run.train_step(batch)
            except run.step_errors as exc:
                run.step_failed(exc, steps)
                stop = Stop.FAILED
                break
            seconds = time.perf_counter() - t0
            steps += 1
            stop = run.record_step(epoch, index, outcome, seconds, steps)
            if stop is Stop.NO and max_steps is not None and steps >= max_steps:
                stop = Stop.LAST
            if stop is not Stop.NO:
                break
        if stop is not Stop.FAILED and run.active and refit_due(refit, stop is Stop.LAST or epoch == final):
            run.refit(epoch)
        if run.end_epoch(epoch) or stop is not Stop.NO:
            break
    return steps
