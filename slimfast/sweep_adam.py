"""The Adam baseline of a sweep: B networks (body and head) trained by Adam in one process.

    histories = run_adam_sweep(problem, [ModelSpec(seed=s, lr=lr) for ...], epochs=5)

The counterpart of ``sweep.run_sweep`` for ``cli.run_training(method="adam")``: the B networks
``head(body(x))`` are stacked and run with one ``vmap`` of ``functional_call``, the loss is
``nn.MSELoss()`` per model and the update is ``StackedAdam`` (torch.optim.Adam's arithmetic
per model, one learning rate each) on body and head together. Model i sees the batches of
``run_sweep``'s model i (a generator seeded by its seed), so slimTrain and Adam sweeps with the
same specs start from the same weights and see the same data in the same order. Only ``seed``
and ``lr`` of the specs are used. A model whose loss becomes non-finite is frozen (its learning
rate set to 0, gradients of the others unchanged) and marked ``diverged``.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from .loop import EpochRun, Stop, eval_mode, new_history, record, record_evaluation, run_epochs, split_errors
from .stacked import FromProblem, StackedAdam, _StackedMSE, check_stackable, stack_params
from .sweep import ModelSpec
from .sweep_run import finish_histories

__all__ = ["AdamSweepTrainer", "run_adam_sweep"]


class AdamSweepTrainer(FromProblem):
    """B networks ``nn.Sequential(body, head)`` of one architecture, trained by Adam in lockstep."""

    def __init__(self, bodies: Sequence[nn.Module], heads: Sequence[nn.Module], specs: Sequence[ModelSpec],
                 weight_decay: float = 0.0) -> None:
        nets = [nn.Sequential(copy.deepcopy(b), copy.deepcopy(h)) for b, h in zip(bodies, heads)]
        check_stackable(nets, "networks")
        self.specs = list(specs)
        self._net = copy.deepcopy(nets[0])
        self.params, self.buffers = stack_params(nets)
        self.optimizer = StackedAdam(self.params, [s.lr for s in self.specs], weight_decay=weight_decay)
        self.diverged: dict[int, str] = {}
        self._vnet = vmap(self._call)

    def _call(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor):
        return functional_call(self._net, (params, buffers), (x,))

    def train_step(self, xs: torch.Tensor, ys: torch.Tensor) -> list[float]:
        """One Adam step of every model on its own batch (xs [B, n_b, ...]); returns the [B] losses."""
        self.optimizer.zero_grad()
        pred = self._vnet(self.params, self.buffers, xs)
        losses = _StackedMSE.apply(pred, ys.to(pred.dtype), True)
        values = losses.detach().tolist()
        for i, v in enumerate(values):
            if not math.isfinite(v) and i not in self.diverged:
                self.diverged[i] = f"non-finite training loss {v}"
                self.optimizer.lr[i] = 0.0
        live = [i for i in range(len(values)) if i not in self.diverged]
        if live:
            losses[live].sum().backward()
            for p in self.params.values():   # a frozen model's NaN gradient must not reach its moments
                if p.grad is not None and self.diverged:
                    p.grad[list(self.diverged)] = 0.0
            self.optimizer.step()
        return values

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 2048) -> tuple[list[float], list[float]]:
        """Per model: (mean squared error, relative error) on (x, y), eval mode, float64 sums."""
        vnet = vmap(self._call, in_dims=(0, 0, None))
        with eval_mode(self._net):
            return split_errors(lambda xc: vnet(self.params, self.buffers, xc), x, y, chunk)


def run_adam_sweep(problem: Any, specs: Sequence[ModelSpec], epochs: int, batch_size: int | None = None,
                   weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Train every model of ``specs`` with Adam on ``problem``; one history per model.

    History keys as ``sweep.run_sweep`` (per epoch, index 0 = before training: ``epoch``,
    ``train_loss``, ``val_loss``, ``train_rel``, ``val_rel``; per step ``batch_loss``), with
    ``method="adam"``.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    trainer = AdamSweepTrainer.from_problem(problem, specs, weight_decay=weight_decay)
    bs = batch_size or problem.batch_size
    hists = [new_history(("epoch", "train_loss", "val_loss", "train_rel", "val_rel", "batch_loss"), method="adam",
                     spec={"seed": s.seed, "lr": s.lr}, problem=problem.name, batch_size=bs) for s in specs]
    for h in hists:
        h.update(diverged=False, error=None)
    run = _AdamSweepRun(problem, trainer, hists, bs)
    start = time.perf_counter()
    run.end_epoch(0)
    steps = run_epochs(run, range(1, epochs + 1))
    finish_histories(hists, steps, time.perf_counter() - start, blow_up=False)
    for h in hists:
        h["median_batch_loss"] = statistics.median(h["batch_loss"]) if h["batch_loss"] else math.nan
    return hists


class _AdamSweepRun(EpochRun):
    """``run_adam_sweep``'s parts of the shared epoch loop: B networks, one history each."""

    def __init__(self, problem: Any, trainer: AdamSweepTrainer, hists: list[dict[str, Any]], batch_size: int) -> None:
        self.problem, self.trainer, self.hists, self.batch_size = problem, trainer, hists, batch_size
        self.generators = [torch.Generator().manual_seed(s.seed) for s in trainer.specs]
        self.perms: list[torch.Tensor] = []

    def batches(self, epoch: int) -> Iterable[tuple[int, int]]:
        n = self.problem.x_train.shape[0]
        self.perms = [torch.randperm(n, generator=g) for g in self.generators]
        return enumerate(range(0, n, self.batch_size))

    def train_step(self, lo: int) -> list[float]:
        idx = torch.stack([p[lo:lo + self.batch_size] for p in self.perms])
        return self.trainer.train_step(self.problem.x_train[idx], self.problem.y_train[idx])

    def record_step(self, epoch: int, index: int, losses: list[float], seconds: float, steps: int) -> Stop:
        for h, v in zip(self.hists, losses):
            record(h, batch_loss=v)
        return Stop.NO

    def end_epoch(self, epoch: int) -> bool:
        p, diverged = self.problem, self.trainer.diverged
        tr = self.trainer.evaluate(p.x_train, p.y_train)
        va = self.trainer.evaluate(p.x_val, p.y_val)
        for i, h in enumerate(self.hists):
            if i in diverged and h["diverged"]:
                continue
            record_evaluation(h, epoch, (tr[0][i], tr[1][i]), (va[0][i], va[1][i]))
            if i in diverged:
                h["diverged"], h["error"] = True, diverged[i]
        return False
