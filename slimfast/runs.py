"""Training runs of the command line: one network trained with slimTrain or Adam, with its history.

``run_training`` trains a built-in problem's network (``problem.make_body``/``make_head``) with
``RunConfig``'s settings and returns a JSON-ready history; ``final_metrics`` reads its last epoch.
The loss everywhere is the mean squared error ``((pred − target)**2).mean()``; the relative error
is ‖pred − target‖_F / ‖target‖_F over the whole split.

slimTrain: Adam (learning rate ``lr``) on the body, the head solved every step by ``SlimTik``
(λ mode, memory depth, Λ_0, Λ bounds and reduction from ``RunConfig``; defaults
``presets.PRESETS["default"]``), and with ``refit="end"`` the head refit exactly on the whole
training split after the last epoch (``refit.refit_head``). Adam: the same network, same initial
weights, same batch order, Adam on body and head together. Library code: it logs, never prints.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .loop import EpochRun, Stop, eval_mode, new_history, record, record_evaluation, run_epochs, split_errors
from .presets import PRESETS

logger = logging.getLogger("slimfast")

METHODS = ("slimtrain", "adam")
DEFAULT_LR = 1e-3
METHOD_LABELS = {"slimtrain": "slimTrain", "adam": "Adam"}


@dataclass(frozen=True)
class RunConfig:
    """Settings of one training run."""

    method: str = "slimtrain"
    lr: float = DEFAULT_LR
    epochs: int = 20
    memory_depth: int = PRESETS["default"].memory_depth
    batch_size: int | None = None
    seed: int = 0
    backend: str | None = None
    weight_decay: float = 0.0
    max_steps: int | None = None
    Lambda0: float = PRESETS["default"].Lambda0
    lambda_mode: str = PRESETS["default"].lambda_mode
    Lambda_bounds: tuple[float, float] = PRESETS["default"].Lambda_bounds
    reduction: str = "mean"
    refit: str = PRESETS["default"].refit

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.memory_depth < 0:
            raise ValueError(f"memory_depth must be >= 0, got {self.memory_depth}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")
        if self.refit not in ("none", "end", "epoch"):
            raise ValueError(f"refit must be 'none', 'end' or 'epoch', got {self.refit!r}")


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled pass over (x, y) in mini-batches (the last one may be smaller)."""
    perm = torch.randperm(x.shape[0], generator=generator)
    for start in range(0, x.shape[0], batch_size):
        idx = perm[start:start + batch_size]
        yield x[idx], y[idx]


def evaluate(body: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor,
             chunk: int = 2048) -> tuple[float, float]:
    """(mean squared error, relative error) of head(body(x)) against y, eval mode (``loop.split_errors``)."""
    with eval_mode(body, head):
        mse, rel = split_errors(lambda xc: head(body(xc))[None], x, y, chunk)
    return (mse[0], rel[0]) if mse else (0.0, math.nan)


class _AdamTrainer:
    """Plain baseline: Adam on body and head together for the MSE loss.

    Data parallel: ``model`` is DistributedDataParallel(Sequential(body, head)) and ``loss_fn``
    a ``_ShardLoss``; otherwise the network is head(body(x)) and the loss F.mse_loss.
    """

    def __init__(self, body: nn.Module, head: nn.Module, lr: float, weight_decay: float,
                 model: nn.Module | None = None, loss_fn: Callable[..., torch.Tensor] | None = None) -> None:
        self.body, self.head = body, head
        self.model = model
        self.loss_fn = loss_fn if loss_fn is not None else F.mse_loss
        params = list(body.parameters()) + list(head.parameters())
        self.optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        pred = self.model(x) if self.model is not None else self.head(self.body(x))
        loss = self.loss_fn(pred, y)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _ShardLoss:
    """MSE of this rank's shard of a batch, for data-parallel training.

    Weighted by world·n_rank/n_batch, so DistributedDataParallel's gradient average is exactly the
    gradient of the whole batch's MSE (also for unequal shards). Its value is the whole batch's
    MSE on every rank (one scalar all-reduce), so a non-finite loss stops every rank alike.
    """

    def __init__(self) -> None:
        self.scale = 1.0

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        local = F.mse_loss(pred, target) * self.scale
        total = local.detach().clone()
        dist.all_reduce(total)
        total /= dist.get_world_size()
        return local + (total - local.detach())


def make_trainer(method: str, body: nn.Module, head: nn.Module, cfg: RunConfig) -> Any:
    """An object with ``train_step(x, y) -> float`` for ``method`` (slimtrain | adam).

    Under an initialised torch.distributed process group with more than one rank the trainer is
    data parallel: the body (Adam: body and head) is wrapped in DistributedDataParallel, SlimTik
    all-reduces its statistics, and the loss is a ``_ShardLoss`` (attribute ``shard_loss``).
    """
    _, size = world()
    shard_loss = _ShardLoss() if size > 1 else None
    if method == "adam":
        model = None
        if size > 1:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(nn.Sequential(body, head))
        trainer: Any = _AdamTrainer(body, head, cfg.lr, cfg.weight_decay, model, shard_loss)
    else:
        from .optim import SlimTik
        from .train import SlimTrain

        slim = SlimTik(head, memory_depth=cfg.memory_depth, Lambda0=cfg.Lambda0, lambda_mode=cfg.lambda_mode,
                       Lambda_bounds=tuple(cfg.Lambda_bounds), reduction=cfg.reduction, backend=cfg.backend)
        body_opt = torch.optim.Adam(body.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        module = body
        if size > 1:
            from torch.nn.parallel import DistributedDataParallel

            module = DistributedDataParallel(body)
        trainer = SlimTrain(module, head, body_opt, slim, loss_fn=shard_loss)
    trainer.shard_loss = shard_loss
    return trainer


#: progress(n_steps_done, loss, alpha) after each training step.
StepProgress = Callable[[int, float, float | None], None]


def run_training(problem: Any, cfg: RunConfig, progress: StepProgress | None = None) -> dict[str, Any]:
    """Train ``problem``'s network with ``cfg``; returns a JSON-ready history.

    The network is initialised from ``cfg.seed`` and the batches are shuffled by a generator
    seeded with it, so slimTrain and Adam with the same seed see the same data in the same
    order from the same starting weights. A run whose loss becomes non-finite, or whose head
    solve fails, stops early and is marked ``diverged``.

    History keys: per epoch (index 0 = before training) ``epoch``, ``train_loss`` and
    ``val_loss`` (the network at the epoch's end evaluated on the whole split, after the refit
    where there is one), ``train_rel``, ``val_rel``, ``alpha`` (slimTrain's effective λ, else
    None), ``refit_alpha`` (μ* of each refit); per step ``batch_loss`` (the batch's loss right
    after the head was solved on it: optimistic), ``step_time`` (s), ``step_alpha`` and
    ``step_lambda`` (slimTrain); summary ``steps``, ``median_step_time``, ``wall_time``,
    ``diverged``, ``error``; ``loss_definitions`` says in words what each loss key measures.
    ``diverged`` also marks a run whose final validation loss ends above ``BLOW_UP_FACTOR`` ×
    the untrained network's (``mark_blow_up``).

    Data parallel (torch.distributed initialised, e.g. under ``torchrun``): every rank draws the
    same batches and trains on its contiguous shard of each (``tensor_split`` by rank); a final
    batch smaller than the number of ranks is skipped. ``batch_loss`` is the whole batch's loss.
    All ranks end with identical weights; the epoch losses are evaluated on the full splits.
    """
    torch.manual_seed(cfg.seed)
    body, head = problem.make_body(cfg.seed), problem.make_head(cfg.seed)
    run = _TrainingRun(problem, cfg, body, head, make_trainer(cfg.method, body, head, cfg), progress)
    hist = run.hist
    start = time.perf_counter()
    run.end_epoch(0)
    run.steps = run_epochs(run, range(1, cfg.epochs + 1), refit=cfg.refit if run.slim is not None else "none",
                           max_steps=cfg.max_steps)
    hist["steps"] = run.steps
    hist["wall_time"] = time.perf_counter() - start
    hist["median_step_time"] = statistics.median(hist["step_time"]) if hist["step_time"] else math.nan
    if not math.isfinite(hist["val_loss"][-1]):
        hist["diverged"] = True
    mark_blow_up(hist)
    return hist


class _TrainingRun(EpochRun):
    """``run_training``'s parts of the shared epoch loop (``loop.run_epochs``)."""

    step_errors = (FloatingPointError, ValueError, RuntimeError)   # NaN features, a failed solve

    def __init__(self, problem: Any, cfg: RunConfig, body: nn.Module, head: nn.Module, trainer: Any,
                 progress: StepProgress | None) -> None:
        # body and head themselves, not a data-parallel wrapper: evaluation and refit are per rank
        self.problem, self.cfg, self.body, self.head, self.trainer = problem, cfg, body, head, trainer
        self.progress = progress
        self.slim = getattr(trainer, "slim", None)
        self.rank, self.size = world()
        self.batch_size = cfg.batch_size or problem.batch_size
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.steps = 0
        self.hist = new_history(
            ("epoch", "train_loss", "val_loss", "train_rel", "val_rel", "alpha", "batch_loss", "step_time",
             "step_alpha", "step_lambda", "refit_alpha"),
            method=cfg.method, config=asdict(cfg), problem=problem.name, batch_size=self.batch_size)
        self.hist.update(diverged=False, error=None, world_size=self.size, loss_definitions={
            "train_loss": "MSE of the network at the epoch's end (after any refit) over the whole training split",
            "val_loss": "the same over the validation split",
            "batch_loss": "MSE of one batch right after the head step on that batch (optimistic for slimTrain)"})

    def begin_epoch(self, epoch: int) -> None:
        self.body.train()
        self.head.train()

    def batches(self, epoch: int) -> Iterator[tuple[int, tuple[torch.Tensor, torch.Tensor]]]:
        rank, size = self.rank, self.size
        for index, (x, y) in enumerate(batches(self.problem.x_train, self.problem.y_train, self.batch_size,
                                               self.generator)):
            if size > 1:
                if x.shape[0] < size:
                    continue
                n_batch = x.shape[0]
                x, y = x.tensor_split(size)[rank], y.tensor_split(size)[rank]
                self.trainer.shard_loss.scale = size * x.shape[0] / n_batch
            yield index, (x, y)

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        return self.trainer.train_step(*batch)

    def step_failed(self, exc: BaseException, steps: int) -> None:
        if steps == 0:  # nothing ever worked: a configuration error, not divergence
            raise exc
        self.hist["diverged"], self.hist["error"] = True, f"{type(exc).__name__}: {exc}"
        logger.warning("%s run (lr=%g) stopped at step %d: %s", self.cfg.method, self.cfg.lr, steps, exc)

    def record_step(self, epoch: int, index: int, outcome: float, seconds: float, steps: int) -> Stop:
        loss, alpha = outcome, None
        record(self.hist, step_time=seconds, batch_loss=loss)
        if self.slim is not None:
            alpha = float(self.slim.alpha_)
            record(self.hist, step_alpha=alpha, step_lambda=float(self.slim.lambda_history_[-1]))
        if self.progress is not None:
            self.progress(steps, loss, alpha)
        if not math.isfinite(loss):
            self.hist["diverged"], self.hist["error"] = True, f"non-finite training loss at step {steps}"
            return Stop.FAILED
        return Stop.NO

    def refit(self, epoch: int) -> None:
        # every rank holds the whole training split: each refits on all of it, no communication
        from .refit import refit_head

        x, y, chunk = self.problem.x_train, self.problem.y_train, 4096
        data = ((x[i:i + chunk], y[i:i + chunk]) for i in range(0, x.shape[0], chunk))
        res = refit_head(self.body, self.head, data, reduction=self.cfg.reduction,
                         backend=self.cfg.backend, distributed=False)
        record(self.hist, refit_alpha=res.alpha_)

    def end_epoch(self, epoch: int) -> bool:
        body, head, p = self.body, self.head, self.problem
        record_evaluation(self.hist, epoch, evaluate(body, head, p.x_train, p.y_train),
                          evaluate(body, head, p.x_val, p.y_val),
                          alpha=None if self.slim is None else float(self.slim.alpha_))
        return False


#: A run whose final validation loss exceeds this multiple of the untrained network's (epoch 0)
#: counts as diverged: its weights blew up even though every number stayed finite.
BLOW_UP_FACTOR = 10.0


def mark_blow_up(hist: dict[str, Any]) -> None:
    """Mark ``hist`` diverged (with an ``error``) if its final validation loss is more than
    ``BLOW_UP_FACTOR`` times the epoch-0 loss; histories of ``run_training`` and ``run_sweep`` alike."""
    losses = hist["val_loss"]
    if hist["diverged"] or len(losses) < 2 or not (math.isfinite(losses[0]) and losses[0] > 0):
        return
    if losses[-1] > BLOW_UP_FACTOR * losses[0]:
        hist["diverged"] = True
        hist["error"] = hist["error"] or (f"validation loss grew from {losses[0]:.4g} (untrained) to {losses[-1]:.4g}, "
                                          f"more than {BLOW_UP_FACTOR:g}x: the weights blew up")


def final_metrics(hist: dict[str, Any]) -> dict[str, Any]:
    """The last epoch's numbers of a run (validation loss NaN when the run diverged)."""
    val = hist["val_loss"][-1]
    return {
        "method": hist["method"], "lr": hist["config"]["lr"], "epochs": hist["epoch"][-1], "steps": hist["steps"],
        "train_loss": hist["train_loss"][-1], "val_loss": val if not hist["diverged"] else math.nan,
        "train_rel": hist["train_rel"][-1], "val_rel": hist["val_rel"][-1],
        "step_ms": 1e3 * hist["median_step_time"], "alpha": hist["alpha"][-1], "diverged": hist["diverged"],
    }
