"""``run_sweep``: train every model of a list of ``ModelSpec`` on a built-in problem, one process.

Re-exported by ``slimfast.sweep`` (``from slimfast.sweep import run_sweep``); the trainer is
``sweep.SweepTrainer``.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch

from .presets import PRESETS
from .runs import mark_blow_up

if TYPE_CHECKING:
    from .sweep import ModelSpec

logger = logging.getLogger("slimfast")

__all__ = ["run_sweep"]


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
    from .sweep import REFIT_MODES, SweepTrainer

    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if refit not in REFIT_MODES:
        raise ValueError(f"refit must be one of {REFIT_MODES}, got {refit!r}")
    trainer = SweepTrainer.from_problem(problem, specs, backend=backend, weight_decay=weight_decay, **solver_kwargs)
    bs = batch_size or problem.batch_size
    gens = [torch.Generator().manual_seed(s.seed) for s in specs]
    hists: list[dict[str, Any]] = []
    for s in specs:
        cfg = {"method": "slimtrain", "lr": s.lr, "epochs": epochs, "memory_depth": s.memory_depth,
               "batch_size": batch_size, "seed": s.seed, "backend": backend, "weight_decay": weight_decay,
               "max_steps": max_steps, "Lambda0": s.Lambda0, "refit": refit}
        hists.append({"method": "slimtrain", "config": cfg, "spec": asdict(s), "problem": problem.name,
                      "batch_size": bs, "epoch": [], "train_loss": [], "val_loss": [], "train_rel": [],
                      "val_rel": [], "alpha": [], "batch_loss": [], "step_time": [], "step_alpha": [],
                      "step_lambda": [], "diverged": False, "error": None})

    def record_epoch(epoch: int) -> None:
        if eval_refit:
            saved = {k: v.clone() for k, v in trainer.head_params.items()}
            trainer.refit_heads(problem.x_train, problem.y_train)
            va_refit = trainer.evaluate(problem.x_val, problem.y_val)[0]
            for k, v in saved.items():
                trainer.head_params[k].copy_(v)
            for row, model in enumerate(trainer.active):
                hists[model].setdefault("val_loss_refit", []).append(va_refit[row])
        tr = trainer.evaluate(problem.x_train, problem.y_train)
        va = trainer.evaluate(problem.x_val, problem.y_val)
        for row, model in enumerate(trainer.active):
            h = hists[model]
            h["epoch"].append(epoch)
            h["train_loss"].append(tr[0][row])
            h["train_rel"].append(tr[1][row])
            h["val_loss"].append(va[0][row])
            h["val_rel"].append(va[1][row])
            h["alpha"].append(trainer.alpha(model))

    start = time.perf_counter()
    record_epoch(0)
    steps = 0
    n = problem.x_train.shape[0]
    done = False
    for epoch in range(1, epochs + 1):
        if not trainer.active:
            break
        perms = {model: torch.randperm(n, generator=gens[model]) for model in trainer.active}
        for lo in range(0, n, bs):
            t0 = time.perf_counter()
            idx = torch.stack([perms[model][lo:lo + bs] for model in trainer.active])
            info = trainer.train_step(problem.x_train[idx], problem.y_train[idx])
            dt = time.perf_counter() - t0
            steps += 1
            for row, model in enumerate(info.models):
                if model in info.diverged:
                    continue
                h = hists[model]
                h["step_time"].append(dt)
                h["batch_loss"].append(info.loss[row])
                h["step_alpha"].append(info.alpha[row])
                h["step_lambda"].append(info.lambda_[row])
            if info.diverged:
                # the solo run stops here and records this epoch with the weights as they are now
                tr = trainer.evaluate(problem.x_train, problem.y_train, dropped=True)
                va = trainer.evaluate(problem.x_val, problem.y_val, dropped=True)
                for row, model in enumerate(trainer.last_dropped[0]):
                    reason = info.diverged[model]
                    h = hists[model]
                    h["diverged"], h["error"], h["steps"] = True, reason, steps - 1
                    h["epoch"].append(epoch)
                    h["train_loss"].append(tr[0][row])
                    h["train_rel"].append(tr[1][row])
                    h["val_loss"].append(va[0][row])
                    h["val_rel"].append(va[1][row])
                    h["alpha"].append(trainer.alpha(model))
                    logger.warning("sweep model %d (%s) stopped at step %d: %s", model, specs[model].label,
                                   steps - 1, reason)
            if progress is not None:
                progress(steps, trainer.n_active)
            if not trainer.active or (max_steps is not None and steps >= max_steps):
                done = True
                break
        if trainer.active:
            if refit == "epoch" or (refit == "end" and (done or epoch == epochs)):
                for model, mu in zip(trainer.active, trainer.refit_heads(problem.x_train, problem.y_train)):
                    hists[model].setdefault("refit_alpha", []).append(mu)
            record_epoch(epoch)
        if done:
            break
    wall = time.perf_counter() - start
    for h in hists:
        h.setdefault("steps", steps)
        h["wall_time"] = wall
        h["median_step_time"] = statistics.median(h["step_time"]) if h["step_time"] else math.nan
        if not math.isfinite(h["val_loss"][-1]):
            h["diverged"] = True
        mark_blow_up(h)   # the rule of run_training: final validation loss > 10x the untrained one
    return hists
