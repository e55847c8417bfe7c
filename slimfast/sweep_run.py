"""``run_sweep``: train every model of a list of ``ModelSpec`` on a built-in problem, one process.

Re-exported by ``slimfast.sweep`` (``from slimfast.sweep import run_sweep``); the trainer is
``sweep.SweepTrainer``.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch

from .loop import EpochRun, Stop, check_refit, new_history, record, record_evaluation, run_epochs
from .presets import PRESETS
from .runs import mark_blow_up

if TYPE_CHECKING:
    from .sweep import ModelSpec, SweepTrainer

logger = logging.getLogger("slimfast")

__all__ = ["finish_histories", "run_sweep"]


def run_sweep(
    problem: Any,
    specs: Sequence[ModelSpec],
    epochs: int,
    batch_size: int | None = None,
    max_steps: int | None = None,
    backend: str | None = None,
    weight_decay: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
    refit: str = PRESETS["default"].refit,
    eval_refit: bool = False,
    **solver_kwargs: Any,
) -> list[dict[str, Any]]:
    """Train every model of ``specs`` on ``problem``; one history per model, as ``cli.run_training``.

    Model i is ``cli.run_training(problem, RunConfig(seed=s.seed, lr=s.lr, memory_depth=s.memory_depth,
    ...))`` with its head's Λ_0 = s.Lambda0: the same initial weights, the same batches in the
    same order (a generator seeded with s.seed per model) and the same updates. ``step_time``
    is the time of the whole B-model step (shared by all models). A model whose step fails is
    marked ``diverged`` (with ``error``), its last epoch record is taken at that moment, and the
    others go on. ``progress(step, n_active)`` is called after every step.

    ``refit``: "end" (default, as ``cli.run_training``: the heads are refit on the training split
    after the last epoch,
    ``SweepTrainer.refit_heads``, before it is recorded) or "epoch" (before every epoch's record,
    training continuing from the refit heads). ``eval_refit``: also record per epoch
    ``val_loss_refit``, the validation loss with the heads refit on the training split, from a
    copy (training unchanged): what ``refit="end"`` would end with if the run stopped there.
    ``solver_kwargs`` go to ``SweepTrainer``
    (``reduction``, ``lambda_mode``, ``Lambda_bounds``, ...).
    """
    from .sweep import SweepTrainer

    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    check_refit(refit)
    trainer = SweepTrainer.from_problem(problem, specs, backend=backend, weight_decay=weight_decay, **solver_kwargs)
    bs = batch_size or problem.batch_size
    hists: list[dict[str, Any]] = []
    for s in specs:
        cfg = {"method": "slimtrain", "lr": s.lr, "epochs": epochs, "memory_depth": s.memory_depth,
               "batch_size": batch_size, "seed": s.seed, "backend": backend, "weight_decay": weight_decay,
               "max_steps": max_steps, "Lambda0": s.Lambda0, "refit": refit}
        hists.append(new_history(_EPOCH_KEYS + ("alpha", "batch_loss", "step_time", "step_alpha", "step_lambda"),
                             method="slimtrain", config=cfg, spec=asdict(s), problem=problem.name, batch_size=bs))
        hists[-1].update(diverged=False, error=None)
    run = _SweepRun(problem, trainer, hists, bs, progress, eval_refit)
    start = time.perf_counter()
    run.end_epoch(0)
    steps = run_epochs(run, range(1, epochs + 1), refit=refit, max_steps=max_steps)
    finish_histories(hists, steps, time.perf_counter() - start)
    return hists


_EPOCH_KEYS = ("epoch", "train_loss", "val_loss", "train_rel", "val_rel")


def finish_histories(hists: Sequence[dict[str, Any]], steps: int, wall: float, blow_up: bool = True) -> None:
    """Summary fields of a sweep's histories (``steps`` unless a model stopped earlier, ``wall_time``,
    ``median_step_time`` where steps are timed), ``diverged`` where the final validation loss is
    not finite, and (``blow_up``) by ``mark_blow_up``, the rule of ``run_training``."""
    for h in hists:
        h.setdefault("steps", steps)
        h["wall_time"] = wall
        if "step_time" in h:
            h["median_step_time"] = statistics.median(h["step_time"]) if h["step_time"] else math.nan
        if not math.isfinite(h["val_loss"][-1]):
            h["diverged"] = True
        if blow_up:
            mark_blow_up(h)   # the rule of run_training: final validation loss > 10x the untrained one


class _SweepRun(EpochRun):
    """``run_sweep``'s parts of the shared epoch loop: B models, one history each."""

    def __init__(self, problem: Any, trainer: SweepTrainer, hists: list[dict[str, Any]], batch_size: int,
                 progress: Callable[[int, int], None] | None, eval_refit: bool) -> None:
        self.problem, self.trainer, self.hists, self.batch_size = problem, trainer, hists, batch_size
        self.progress, self.eval_refit = progress, eval_refit
        self.generators = [torch.Generator().manual_seed(s.seed) for s in trainer.specs]
        self.perms: dict[int, torch.Tensor] = {}

    @property
    def active(self) -> bool:
        return bool(self.trainer.active)

    def batches(self, epoch: int) -> Iterable[tuple[int, int]]:
        n = self.problem.x_train.shape[0]
        self.perms = {model: torch.randperm(n, generator=self.generators[model]) for model in self.trainer.active}
        return enumerate(range(0, n, self.batch_size))

    def train_step(self, lo: int) -> Any:
        # the batch is gathered inside the timed step, as the B-model step's time always included it
        idx = torch.stack([self.perms[model][lo:lo + self.batch_size] for model in self.trainer.active])
        return self.trainer.train_step(self.problem.x_train[idx], self.problem.y_train[idx])

    def record_step(self, epoch: int, index: int, info: Any, seconds: float, steps: int) -> Stop:
        trainer, p = self.trainer, self.problem
        for row, model in enumerate(info.models):
            if model not in info.diverged:
                record(self.hists[model], step_time=seconds, batch_loss=info.loss[row],
                       step_alpha=info.alpha[row], step_lambda=info.lambda_[row])
        if info.diverged:
            # the solo run stops here and records this epoch with the weights as they are now
            tr = trainer.evaluate(p.x_train, p.y_train, dropped=True)
            va = trainer.evaluate(p.x_val, p.y_val, dropped=True)
            for row, model in enumerate(trainer.last_dropped[0]):
                reason = info.diverged[model]
                h = self.hists[model]
                h["diverged"], h["error"], h["steps"] = True, reason, steps - 1
                record_evaluation(h, epoch, (tr[0][row], tr[1][row]), (va[0][row], va[1][row]),
                                  alpha=trainer.alpha(model))
                logger.warning("sweep model %d (%s) stopped at step %d: %s", model, trainer.specs[model].label,
                               steps - 1, reason)
        if self.progress is not None:
            self.progress(steps, trainer.n_active)
        return Stop.NO if trainer.active else Stop.LAST

    def refit(self, epoch: int) -> None:
        for model, mu in zip(self.trainer.active, self.trainer.refit_heads(self.problem.x_train, self.problem.y_train)):
            record(self.hists[model], refit_alpha=mu)

    def end_epoch(self, epoch: int) -> bool:
        trainer, p = self.trainer, self.problem
        if not trainer.active:
            return False
        if self.eval_refit:
            saved = {k: v.clone() for k, v in trainer.head_params.items()}
            trainer.refit_heads(p.x_train, p.y_train)
            va_refit = trainer.evaluate(p.x_val, p.y_val)[0]
            for k, v in saved.items():
                trainer.head_params[k].copy_(v)
            for row, model in enumerate(trainer.active):
                record(self.hists[model], val_loss_refit=va_refit[row])
        tr = trainer.evaluate(p.x_train, p.y_train)
        va = trainer.evaluate(p.x_val, p.y_val)
        for row, model in enumerate(trainer.active):
            record_evaluation(self.hists[model], epoch, (tr[0][row], tr[1][row]), (va[0][row], va[1][row]),
                              alpha=trainer.alpha(model))
        return False
