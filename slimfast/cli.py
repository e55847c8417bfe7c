"""Command line: train a built-in problem with slimTrain or Adam, or compare both over a learning-rate sweep.

    python -m slimfast train --problem peaks                  # slimTrain, default settings
    python -m slimfast train --problem cdr --optimizer adam --lr 1e-2
    python -m slimfast compare --problem peaks --epochs 5     # lr ∈ {1e-4, 1e-3, 1e-2, 1e-1}
    python -m slimfast sweep --problem peaks --lrs 1e-3,1e-2 --seeds 0,1   # 4 models, one process
    torchrun --nproc-per-node 2 -m slimfast train --problem peaks   # data parallel (gloo)

``train`` writes ``loss.png``, ``summary.md`` and ``history.json`` to ``--out``; ``compare``
writes ``convergence.png``, ``sensitivity.png``, ``compare.md`` and ``compare.json``; ``sweep``
writes ``sensitivity.png``, ``sweep.md`` and ``sweep.json``. Under ``torchrun`` (WORLD_SIZE > 1)
``train`` is data parallel: every rank takes its shard of each batch and only rank 0 prints and
writes (see ``run_training``).
The loss everywhere is the mean squared error ``((pred − target)**2).mean()``; the relative
error is ‖pred − target‖_F / ‖target‖_F over the whole split.

slimTrain: Adam (learning rate ``--lr``) on the body, the head solved every step by ``SlimTik``
(sGCV, memory depth ``--memory-depth``). Adam: the same network, same initial weights, same
batch order, Adam on body and head together. Only this module prints; the library logs to
``logging.getLogger("slimfast")`` (``-v`` shows it).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger("slimfast")

TRAIN_PROBLEMS = ("peaks", "cdr", "digits", "mnist")
METHODS = ("slimtrain", "adam")
LR_SWEEP = (1e-4, 1e-3, 1e-2, 1e-1)
#: Default epochs of ``train`` per problem (each finishes in well under 2 minutes on 2 cores).
DEFAULT_EPOCHS = {"peaks": 30, "cdr": 30, "digits": 10, "mnist": 1}
#: Default epochs of each run of ``compare`` (8 runs per problem).
DEFAULT_COMPARE_EPOCHS = 5
DEFAULT_LR = 1e-3
#: Problems whose layers are so small that intra-op threads only add synchronisation (and, on a
#: busy machine, stalls of ~0.1–1 s when a thread is descheduled): run them single-threaded.
SINGLE_THREAD_DEFAULT = {"peaks": 1, "cdr": 1}
METHOD_LABELS = {"slimtrain": "slimTrain", "adam": "Adam"}


# ============================================================================ training runs

@dataclass(frozen=True)
class RunConfig:
    """Settings of one training run."""

    method: str = "slimtrain"
    lr: float = DEFAULT_LR
    epochs: int = 20
    memory_depth: int = 5
    batch_size: int | None = None
    seed: int = 0
    backend: str | None = None
    weight_decay: float = 0.0
    max_steps: int | None = None

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


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled pass over (x, y) in mini-batches (the last one may be smaller)."""
    perm = torch.randperm(x.shape[0], generator=generator)
    for start in range(0, x.shape[0], batch_size):
        idx = perm[start:start + batch_size]
        yield x[idx], y[idx]


@torch.no_grad()
def evaluate(body: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 2048) -> tuple[float, float]:
    """(mean squared error, relative error) of head(body(x)) against y, in eval mode."""
    modes = body.training, head.training
    body.eval()
    head.eval()
    try:
        sq, ref = 0.0, 0.0
        for start in range(0, x.shape[0], chunk):
            pred = head(body(x[start:start + chunk])).double()
            target = y[start:start + chunk].double()
            sq += float(((pred - target) ** 2).sum())
            ref += float((target**2).sum())
    finally:
        body.train(modes[0])
        head.train(modes[1])
    mse = sq / max(y.numel(), 1)
    rel = math.sqrt(sq / ref) if ref > 0 else math.nan
    return mse, rel


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

        slim = SlimTik(head, memory_depth=cfg.memory_depth, backend=cfg.backend)
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

    History keys: per epoch (index 0 = before training) ``epoch``, ``train_loss``,
    ``val_loss``, ``train_rel``, ``val_rel``, ``alpha`` (slimTrain's effective λ, else None);
    per step ``batch_loss``, ``step_time`` (s), ``step_alpha`` and ``step_lambda`` (slimTrain);
    summary ``steps``, ``median_step_time``, ``wall_time``, ``diverged``, ``error``.

    Data parallel (torch.distributed initialised, e.g. under ``torchrun``): every rank draws the
    same batches and trains on its contiguous shard of each (``tensor_split`` by rank); a final
    batch smaller than the number of ranks is skipped. ``batch_loss`` is the whole batch's loss.
    All ranks end with identical weights; the epoch losses are evaluated on the full splits.
    """
    rank, size = world()
    torch.manual_seed(cfg.seed)
    body, head = problem.make_body(cfg.seed), problem.make_head(cfg.seed)
    trainer = make_trainer(cfg.method, body, head, cfg)
    slim = getattr(trainer, "slim", None)
    batch_size = cfg.batch_size or problem.batch_size
    gen = torch.Generator().manual_seed(cfg.seed)
    hist: dict[str, Any] = {
        "method": cfg.method, "config": asdict(cfg), "problem": problem.name, "batch_size": batch_size,
        "epoch": [], "train_loss": [], "val_loss": [], "train_rel": [], "val_rel": [], "alpha": [],
        "batch_loss": [], "step_time": [], "step_alpha": [], "step_lambda": [],
        "diverged": False, "error": None, "world_size": size,
    }

    def record_epoch(epoch: int) -> None:
        tr = evaluate(body, head, problem.x_train, problem.y_train)
        va = evaluate(body, head, problem.x_val, problem.y_val)
        hist["epoch"].append(epoch)
        hist["train_loss"].append(tr[0])
        hist["train_rel"].append(tr[1])
        hist["val_loss"].append(va[0])
        hist["val_rel"].append(va[1])
        hist["alpha"].append(None if slim is None else float(slim.alpha_))

    start = time.perf_counter()
    record_epoch(0)
    steps = 0
    body.train()
    head.train()
    for epoch in range(1, cfg.epochs + 1):
        for x, y in batches(problem.x_train, problem.y_train, batch_size, gen):
            if size > 1:
                if x.shape[0] < size:
                    continue
                n_batch = x.shape[0]
                x, y = x.tensor_split(size)[rank], y.tensor_split(size)[rank]
                trainer.shard_loss.scale = size * x.shape[0] / n_batch
            t0 = time.perf_counter()
            try:
                loss = trainer.train_step(x, y)
            except (FloatingPointError, ValueError, RuntimeError) as exc:  # NaN features, failed solve
                if steps == 0:  # nothing ever worked: a configuration error, not divergence
                    raise
                hist["diverged"], hist["error"] = True, f"{type(exc).__name__}: {exc}"
                logger.warning("%s run (lr=%g) stopped at step %d: %s", cfg.method, cfg.lr, steps, exc)
                break
            hist["step_time"].append(time.perf_counter() - t0)
            hist["batch_loss"].append(loss)
            alpha = None
            if slim is not None:
                alpha = float(slim.alpha_)
                hist["step_alpha"].append(alpha)
                hist["step_lambda"].append(float(slim.lambda_history_[-1]))
            steps += 1
            if progress is not None:
                progress(steps, loss, alpha)
            if not math.isfinite(loss):
                hist["diverged"], hist["error"] = True, f"non-finite training loss at step {steps}"
                break
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                break
        record_epoch(epoch)
        if hist["diverged"] or (cfg.max_steps is not None and steps >= cfg.max_steps):
            break
    hist["steps"] = steps
    hist["wall_time"] = time.perf_counter() - start
    hist["median_step_time"] = statistics.median(hist["step_time"]) if hist["step_time"] else math.nan
    if not math.isfinite(hist["val_loss"][-1]):
        hist["diverged"] = True
    return hist


def final_metrics(hist: dict[str, Any]) -> dict[str, Any]:
    """The last epoch's numbers of a run (validation loss NaN when the run diverged)."""
    val = hist["val_loss"][-1]
    return {
        "method": hist["method"], "lr": hist["config"]["lr"], "epochs": hist["epoch"][-1], "steps": hist["steps"],
        "train_loss": hist["train_loss"][-1], "val_loss": val if not hist["diverged"] else math.nan,
        "train_rel": hist["train_rel"][-1], "val_rel": hist["val_rel"][-1],
        "step_ms": 1e3 * hist["median_step_time"], "alpha": hist["alpha"][-1], "diverged": hist["diverged"],
    }


# ============================================================================ output helpers

def _fmt(v: Any, spec: str = ".4e") -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if math.isnan(v):
            return "diverged"
        return format(v, spec)
    return str(v)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def results_table(metrics: Sequence[dict[str, Any]]) -> str:
    header = ["method", "lr", "epochs", "steps", "train loss", "val loss", "train rel err", "val rel err",
              "time/step [ms]", "effective λ (alpha_)"]
    rows = [[METHOD_LABELS[m["method"]], f"{m['lr']:g}", str(m["epochs"]), str(m["steps"]), _fmt(m["train_loss"]),
             _fmt(m["val_loss"]), _fmt(m["train_rel"], ".4f"), _fmt(m["val_rel"], ".4f"), _fmt(m["step_ms"], ".3f"),
             _fmt(m["alpha"], ".3e")] for m in metrics]
    return markdown_table(header, rows)


def _jsonable(obj: Any) -> Any:
    """Replace non-finite floats by None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(_jsonable(obj), indent=1) + "\n")


def _figure(ncols: int = 1, width: float = 6.0, height: float = 4.0):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _positive(values: Sequence[float | None]) -> list[float]:
    return [v if (v is not None and math.isfinite(v) and v > 0) else math.nan for v in values]


def plot_loss(hist: dict[str, Any], path: Path, title: str) -> None:
    """Loss curves of one run: per-step batch loss, per-epoch train/validation loss; λ for slimTrain."""
    slim = hist["method"] == "slimtrain" and hist["step_alpha"]
    fig, axes = _figure(2 if slim else 1)
    ax = axes[0]
    n_steps = len(hist["batch_loss"])
    per_epoch = max(1, math.ceil(n_steps / max(hist["epoch"][-1], 1)))
    if n_steps:
        ax.semilogy([(i + 1) / per_epoch for i in range(n_steps)], _positive(hist["batch_loss"]),
                    color="0.75", lw=0.6, label="batch loss")
    ax.semilogy(hist["epoch"], _positive(hist["train_loss"]), "o-", label="train loss")
    ax.semilogy(hist["epoch"], _positive(hist["val_loss"]), "s--", label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean squared error")
    ax.set_title(title)
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    if slim:
        ax = axes[1]
        steps = range(1, len(hist["step_alpha"]) + 1)
        ax.semilogy(steps, _positive(hist["step_alpha"]), label="effective λ = Λ_k/(k+1)")
        lam = hist["step_lambda"]
        ax.semilogy(steps, [abs(v) if v else math.nan for v in lam], lw=0.5, alpha=0.6, label="|λ_k|")
        ax.set_xlabel("step")
        ax.set_title("regularisation (sGCV)")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.savefig(path, dpi=110)


# ============================================================================ commands

def _load_problem(args: argparse.Namespace) -> Any:
    from .problems import get_problem

    kwargs: dict[str, Any] = {}
    if args.batch_size is not None:
        kwargs["batch_size"] = args.batch_size
    if args.problem == "mnist":
        if args.data_dir is None:
            raise ValueError("--problem mnist needs --data-dir DIR (a folder with the MNIST IDX files)")
        kwargs["data_dir"] = args.data_dir
        # the split sizes go to the loader: a small local copy may hold fewer than 60000 images
        kwargs.update({k: v for k, v in (("n_train", args.n_train), ("n_val", args.n_val)) if v is not None})
        return get_problem("mnist", seed=args.seed, **kwargs)
    if args.data_dir is not None:
        raise ValueError("--data-dir is only used by --problem mnist")
    problem = get_problem(args.problem, seed=args.seed, **kwargs)
    if args.n_train is not None or args.n_val is not None:
        problem = problem.subset(args.n_train, args.n_val)
    return problem


def _progress_bar(total: int, desc: str, enabled: bool, leave: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=leave, file=sys.stderr, dynamic_ncols=True,
                unit="step")


def _total_steps(problem: Any, cfg: RunConfig) -> int:
    per_epoch = math.ceil(problem.n_train / (cfg.batch_size or problem.batch_size))
    total = per_epoch * cfg.epochs
    return min(total, cfg.max_steps) if cfg.max_steps is not None else total


def _run_with_bar(problem: Any, cfg: RunConfig, desc: str, show: bool, leave: bool = True) -> dict[str, Any]:
    bar = _progress_bar(_total_steps(problem, cfg), desc, show, leave)

    def progress(step: int, loss: float, alpha: float | None) -> None:
        bar.update(1)
        if step % 20 == 0:
            post = {"loss": f"{loss:.3e}"}
            if alpha is not None:
                post["λ"] = f"{alpha:.2e}"
            bar.set_postfix(post, refresh=False)

    try:
        return run_training(problem, cfg, progress)
    finally:
        bar.close()


def _environment() -> dict[str, Any]:
    from . import __version__, backend_info

    info = backend_info()
    return {"slimfast": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "default_cpu_backend": info["default_cpu"],
            "available_backends": [k for k, v in info["available"].items() if v is True]}


def _run_config(args: argparse.Namespace, method: str, lr: float, epochs: int) -> RunConfig:
    return RunConfig(method=method, lr=lr, epochs=epochs, memory_depth=args.memory_depth, batch_size=args.batch_size,
                     seed=args.seed, backend=args.backend, weight_decay=args.weight_decay, max_steps=args.max_steps)


def cmd_train(args: argparse.Namespace) -> int:
    problem = _load_problem(args)
    epochs = args.epochs if args.epochs is not None else DEFAULT_EPOCHS[args.problem]
    cfg = _run_config(args, args.optimizer, args.lr, epochs)
    rank, size = world()
    out = Path(args.out if args.out is not None else f"runs/{args.problem}-{args.optimizer}")
    label = METHOD_LABELS[cfg.method]
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        print(f"{label} on {problem!r}" + (f", data parallel over {size} ranks" if size > 1 else ""))
    hist = _run_with_bar(problem, cfg, f"{args.problem} {label} lr={cfg.lr:g}", not args.quiet and rank == 0)
    if rank != 0:   # every rank holds the same weights and history; rank 0 reports
        return 0
    metrics = final_metrics(hist)
    table = results_table([metrics])
    env = _environment()
    hist["environment"] = env
    hist["metrics"] = metrics
    write_json(out / "history.json", hist)
    title = f"{args.problem}: {label}, lr={cfg.lr:g}"
    plot_loss(hist, out / "loss.png", title)
    lines = [f"# slimfast train: {args.problem}, {label}", "",
             f"- problem: {problem!r}", f"- settings: {json.dumps(asdict(cfg))}",
             f"- wall time: {hist['wall_time']:.2f} s for {hist['steps']} steps "
             f"(median {metrics['step_ms']:.3f} ms/step)",
             f"- environment: {json.dumps(env)}"]
    if size > 1:
        lines.append(_data_parallel_line(size, cfg.method, problem))
    if hist["error"]:
        lines.append(f"- stopped early: {hist['error']}")
    lines += ["", table, "", "Loss = mean squared error over the split; relative error = ‖pred − y‖/‖y‖. "
              "Effective λ = Λ_k/(k+1) (`SlimTik.alpha_`).", "", "![loss curves](loss.png)", ""]
    (out / "summary.md").write_text("\n".join(lines))
    print(table)
    if hist["error"]:
        print(f"note: the run stopped early: {hist['error']}")
    print(f"wrote {out / 'loss.png'}, {out / 'summary.md'}, {out / 'history.json'}")
    return 0


def _data_parallel_line(size: int, method: str, problem: Any) -> str:
    import torch.distributed as dist

    from .distributed import bytes_per_step
    from .heads import head_shape

    line = (f"- data parallel: {size} ranks ({dist.get_backend()}), each with 1/{size} of every batch; "
            "DistributedDataParallel on the " + ("body" if method == "slimtrain" else "network"))
    if method == "slimtrain":
        n_t, n_f = head_shape(problem.make_head())
        line += (f"; SlimTik all-reduces its head statistics once per step: {bytes_per_step(n_f, n_t)} bytes "
                 f"(n_f = {n_f}, n_t = {n_t}; independent of the batch size)")
    return line


def sweep_summary(finals: dict[str, dict[float, float]]) -> dict[str, dict[str, Any]]:
    """Per method: best lr and loss, and the spread max/min of the final validation loss (inf if a run diverged)."""
    out = {}
    for method, by_lr in finals.items():
        values = list(by_lr.values())
        finite = [v for v in values if math.isfinite(v)]
        best_lr = min((lr for lr in by_lr if math.isfinite(by_lr[lr])), key=lambda lr: by_lr[lr], default=None)
        if len(finite) < len(values):
            spread = math.inf
        else:
            spread = max(finite) / min(finite) if finite and min(finite) > 0 else math.nan
        out[method] = {"best_lr": best_lr, "best_val_loss": by_lr[best_lr] if best_lr is not None else math.nan,
                       "spread": spread, "n_diverged": len(values) - len(finite)}
    return out


def plot_convergence(runs: dict[str, dict[float, dict[str, Any]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import colormaps

    fig, axes = _figure(2)
    lrs = sorted({lr for by_lr in runs.values() for lr in by_lr})
    cmap = colormaps["viridis"]
    for ax, key, ylabel in ((axes[0], "val_loss", "validation loss"), (axes[1], "train_loss", "training loss")):
        for method, style in (("slimtrain", "-"), ("adam", "--")):
            for i, lr in enumerate(lrs):
                if lr not in runs.get(method, {}):
                    continue
                h = runs[method][lr]
                ax.semilogy(h["epoch"], _positive(h[key]), style, marker="o" if method == "slimtrain" else "x",
                            ms=3, color=cmap(i / max(len(lrs) - 1, 1)), label=f"{METHOD_LABELS[method]} lr={lr:g}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title(title)
    axes[1].legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=110)


def plot_sensitivity(finals: dict[str, dict[float, float]], path: Path, title: str) -> None:
    fig, axes = _figure(1)
    ax = axes[0]
    for method, marker in (("slimtrain", "o-"), ("adam", "s--")):
        by_lr = finals.get(method, {})
        lrs = sorted(by_lr)
        ax.loglog(lrs, _positive([by_lr[lr] for lr in lrs]), marker, label=METHOD_LABELS[method])
        for lr in lrs:
            if not math.isfinite(by_lr[lr]):
                ax.annotate("diverged", (lr, 1.0), xycoords=("data", "axes fraction"), rotation=90, va="top",
                            fontsize=7)
    ax.set_xlabel("learning rate (Adam; on the body for slimTrain)")
    ax.set_ylabel("final validation loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110)


def compare_table(finals: dict[str, dict[float, float]], summary: dict[str, dict[str, Any]]) -> str:
    methods = [m for m in METHODS if m in finals]
    lrs = sorted({lr for by_lr in finals.values() for lr in by_lr})
    rows = [[f"{lr:g}"] + [_fmt(finals[m].get(lr, math.nan)) for m in methods] for lr in lrs]
    rows.append(["best"] + [f"{_fmt(summary[m]['best_val_loss'])} (lr={_fmt(summary[m]['best_lr'], 'g')})"
                            for m in methods])
    rows.append(["spread max/min"] + [_fmt(summary[m]["spread"], ".3g")
                                      + (f" ({summary[m]['n_diverged']} diverged)" if summary[m]["n_diverged"] else "")
                                      for m in methods])
    return markdown_table(["lr"] + [f"{METHOD_LABELS[m]} val loss" for m in methods], rows)


def cmd_compare(args: argparse.Namespace) -> int:
    problem = _load_problem(args)
    epochs = args.epochs if args.epochs is not None else DEFAULT_COMPARE_EPOCHS
    out = Path(args.out if args.out is not None else f"runs/{args.problem}-compare")
    out.mkdir(parents=True, exist_ok=True)
    lrs = tuple(args.lrs) if args.lrs else LR_SWEEP
    print(f"slimTrain vs Adam on {problem!r}, {epochs} epochs, lr ∈ {{{', '.join(f'{lr:g}' for lr in lrs)}}}")
    runs: dict[str, dict[float, dict[str, Any]]] = {m: {} for m in METHODS}
    plan = [(m, lr) for lr in lrs for m in METHODS]
    outer = _progress_bar(len(plan), "runs", not args.quiet)
    outer.unit = "run"
    try:
        for method, lr in plan:
            cfg = _run_config(args, method, lr, epochs)
            runs[method][lr] = _run_with_bar(problem, cfg, f"{METHOD_LABELS[method]} lr={lr:g}", not args.quiet,
                                             leave=False)
            outer.update(1)
    finally:
        outer.close()
    finals = {m: {lr: final_metrics(h)["val_loss"] for lr, h in by_lr.items()} for m, by_lr in runs.items()}
    summary = sweep_summary(finals)
    title = f"{args.problem}: {epochs} epochs"
    plot_convergence(runs, out / "convergence.png", title)
    plot_sensitivity(finals, out / "sensitivity.png", title)
    table = compare_table(finals, summary)
    details = results_table([final_metrics(runs[m][lr]) for lr in lrs for m in METHODS])
    env = _environment()
    md = [f"# slimfast compare: {args.problem}", "",
          f"- problem: {problem!r}", f"- epochs: {epochs}, memory depth: {args.memory_depth}, seed: {args.seed}, "
          f"weight decay: {args.weight_decay}",
          "- slimTrain: Adam with the given lr on the body, head solved by SlimTik (sGCV); "
          "Adam: the same network, initial weights and batch order, Adam on all weights.",
          f"- environment: {json.dumps(env)}", "",
          "## Final validation loss", "", table, "",
          "Spread = max/min of the final validation loss across the learning-rate sweep (1 = insensitive).", "",
          "## All runs", "", details, "",
          "![convergence](convergence.png)", "", "![sensitivity](sensitivity.png)", ""]
    (out / "compare.md").write_text("\n".join(md))
    write_json(out / "compare.json", {"problem": args.problem, "epochs": epochs, "environment": env,
                                      "final_val_loss": {m: {f"{lr:g}": v for lr, v in by_lr.items()}
                                                         for m, by_lr in finals.items()},
                                      "summary": summary,
                                      "runs": {m: {f"{lr:g}": h for lr, h in by_lr.items()} for m, by_lr in runs.items()}})
    print(table)
    print(details)
    print(f"wrote {out / 'convergence.png'}, {out / 'sensitivity.png'}, {out / 'compare.md'}, {out / 'compare.json'}")
    return 0


# ============================================================================ sweep

def _config_label(Lambda0: float, depth: int) -> str:
    return f"Λ0={Lambda0:g}, r={depth}"


def sweep_finals(specs: Sequence[Any], hists: Sequence[dict[str, Any]]) -> dict[tuple[float, int], dict[float, list[float]]]:
    """Final validation losses grouped as {(Λ0, r): {lr: [one per seed]}} (NaN = diverged)."""
    out: dict[tuple[float, int], dict[float, list[float]]] = {}
    for spec, h in zip(specs, hists):
        out.setdefault((spec.Lambda0, spec.memory_depth), {}).setdefault(spec.lr, []).append(
            final_metrics(h)["val_loss"])
    return out


def _median_finite(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if len(finite) == len(values) and finite else math.nan


def plot_sweep_sensitivity(finals: dict[tuple[float, int], dict[float, list[float]]], path: Path, title: str) -> None:
    """Final validation loss against the body learning rate: every model a dot, the median over
    seeds a line, one colour per (Λ0, r)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import colormaps

    fig, axes = _figure(1)
    ax = axes[0]
    cmap = colormaps["tab10"]
    for i, (key, by_lr) in enumerate(sorted(finals.items())):
        color = cmap(i % 10)
        lrs = sorted(by_lr)
        for lr in lrs:
            vals = _positive(by_lr[lr])
            ax.scatter([lr] * len(vals), vals, s=12, color=color, alpha=0.6)
            n_div = sum(1 for v in by_lr[lr] if not math.isfinite(v))
            if n_div:
                ax.annotate(f"{n_div} diverged", (lr, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                            va="top", fontsize=7, color=color)
        ax.loglog(lrs, _positive([_median_finite(by_lr[lr]) for lr in lrs]), "o-", color=color,
                  label=f"slimTrain {_config_label(*key)} (median over seeds)")
    ax.set_xlabel("learning rate (Adam on the body)")
    ax.set_ylabel("final validation loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def sweep_tables(specs: Sequence[Any], hists: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """(summary per (Λ0, r) and lr, one row per model)."""
    finals = sweep_finals(specs, hists)
    rows = []
    for key, by_lr in sorted(finals.items()):
        medians = {lr: _median_finite(v) for lr, v in by_lr.items()}
        finite = [v for v in medians.values() if math.isfinite(v)]
        spread = max(finite) / min(finite) if len(finite) == len(medians) and finite and min(finite) > 0 else math.inf
        for lr in sorted(by_lr):
            vals = by_lr[lr]
            ok = [v for v in vals if math.isfinite(v)]
            rows.append([_config_label(*key), f"{lr:g}", str(len(vals)), _fmt(medians[lr]),
                         _fmt(min(ok)) if ok else "diverged", _fmt(max(ok)) if ok else "diverged",
                         str(len(vals) - len(ok))])
        best = min((lr for lr in medians if math.isfinite(medians[lr])), key=lambda lr: medians[lr], default=None)
        rows.append([_config_label(*key), "best / spread", "", f"{_fmt(medians[best]) if best else 'diverged'} "
                     f"(lr={_fmt(best, 'g')})", "", _fmt(spread, ".3g"), ""])
    summary = markdown_table(["config", "lr", "seeds", "median val loss", "min", "max", "diverged"], rows)
    per_model = []
    for i, (spec, h) in enumerate(zip(specs, hists)):
        m = final_metrics(h)
        per_model.append([str(i), f"{spec.lr:g}", str(spec.seed), f"{spec.Lambda0:g}", str(spec.memory_depth),
                          str(m["steps"]), _fmt(m["train_loss"]), _fmt(m["val_loss"]), _fmt(m["val_rel"], ".4f"),
                          _fmt(m["alpha"], ".3e"), h["error"] or ""])
    models = markdown_table(["model", "lr", "seed", "Λ0", "r", "steps", "train loss", "val loss", "val rel err",
                             "effective λ", "stopped"], per_model)
    return summary, models


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import ModelSpec, run_sweep

    problem = _load_problem(args)
    epochs = args.epochs if args.epochs is not None else DEFAULT_COMPARE_EPOCHS
    out = Path(args.out if args.out is not None else f"runs/{args.problem}-sweep")
    out.mkdir(parents=True, exist_ok=True)
    lrs = args.lrs or LR_SWEEP
    seeds = args.seeds or (args.seed,)
    Lambda0s = args.Lambda0s or (0.05,)
    depths = args.memory_depths or (args.memory_depth,)
    specs = [ModelSpec(seed=seed, lr=lr, Lambda0=L0, memory_depth=r)
             for L0 in Lambda0s for r in depths for lr in lrs for seed in seeds]
    print(f"slimTrain sweep on {problem!r}: {len(specs)} models in one process, {epochs} epochs; "
          f"lr ∈ {{{', '.join(f'{v:g}' for v in lrs)}}}, seeds {list(seeds)}, Λ0 {list(Lambda0s)}, r {list(depths)}")
    cfg = RunConfig(epochs=epochs, batch_size=args.batch_size, max_steps=args.max_steps)
    bar = _progress_bar(_total_steps(problem, cfg), f"{args.problem} sweep ({len(specs)} models)", not args.quiet)
    try:
        hists = run_sweep(problem, specs, epochs, batch_size=args.batch_size, max_steps=args.max_steps,
                          backend=args.backend, weight_decay=args.weight_decay,
                          progress=lambda step, active: bar.update(1))
    finally:
        bar.close()
    title = f"{args.problem}: {epochs} epochs, {len(specs)} models"
    finals = sweep_finals(specs, hists)
    plot_sweep_sensitivity(finals, out / "sensitivity.png", title)
    summary, models = sweep_tables(specs, hists)
    env = _environment()
    wall = hists[0]["wall_time"]
    steps = max(h["steps"] for h in hists)
    md = [f"# slimfast sweep: {args.problem}", "",
          f"- problem: {problem!r} (data seed {args.seed})",
          f"- {len(specs)} models trained together in one process (stacked bodies, one vmap; all heads "
          f"solved by one batched slimTik call per step and memory depth); {epochs} epochs, {steps} steps, "
          f"weight decay {args.weight_decay}",
          f"- wall time {wall:.2f} s ({1e3 * hists[0]['median_step_time']:.3f} ms per step for all models)",
          "- each model = `slimfast train --seed <seed> --lr <lr> --memory-depth <r>` on this data (Adam on the "
          "body, head solved by SlimTik with sGCV; Λ0 its initial regularisation)",
          f"- environment: {json.dumps(env)}", "",
          "## Final validation loss per configuration", "", summary, "",
          "Spread = max/min over learning rates of the median (over seeds) final validation loss "
          "(1 = insensitive; inf if a model diverged).", "",
          "## All models", "", models, "", "![sensitivity](sensitivity.png)", ""]
    (out / "sweep.md").write_text("\n".join(md))
    write_json(out / "sweep.json", {"problem": args.problem, "epochs": epochs, "environment": env,
                                    "specs": [asdict(s) for s in specs], "runs": hists})
    print(summary)
    print(f"wrote {out / 'sensitivity.png'}, {out / 'sweep.md'}, {out / 'sweep.json'}")
    return 0


# ============================================================================ parser

def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _nonneg_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def _list_of(convert: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        items = [t for t in text.replace(" ", ",").split(",") if t]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        return tuple(convert(t) for t in items)

    return parse


def _nonneg_float(text: str) -> float:
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .backends import BACKEND_NAMES

    parser = argparse.ArgumentParser(prog="slimfast", description="slimTrain: separable networks whose linear head "
                                     "is solved every step (sampled Tikhonov with sGCV).")
    parser.add_argument("--version", action="version", version=f"slimfast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,compare,sweep}")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--problem", choices=TRAIN_PROBLEMS, default="peaks", help="built-in problem (default: peaks)")
        p.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files (--problem mnist only)")
        p.add_argument("--epochs", type=_nonneg_int, default=None, help="passes over the training set")
        p.add_argument("--memory-depth", type=_nonneg_int, default=5, help="slimTik memory depth r (default: 5)")
        p.add_argument("--batch-size", type=_positive_int, default=None, help="mini-batch size (default: problem's)")
        p.add_argument("--seed", type=int, default=0, help="seed of data, initial weights and batch order")
        p.add_argument("--out", default=None, help="output folder (default: runs/<problem>-<method>)")
        p.add_argument("--backend", choices=BACKEND_NAMES, default=None, help="force a slimTik solver backend")
        p.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay on the body (default: 0)")
        p.add_argument("--threads", type=_positive_int, default=None,
                       help="torch intra-op threads (default: 1 for peaks and cdr, whose tiny layers only lose "
                            "time to threading; torch's default otherwise)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        p.add_argument("-v", "--verbose", action="count", default=0, help="show slimfast log messages (-vv: debug)")
        # hidden: small runs for tests and smoke checks
        p.add_argument("--n-train", type=_positive_int, default=None, help=argparse.SUPPRESS)
        p.add_argument("--n-val", type=_positive_int, default=None, help=argparse.SUPPRESS)
        p.add_argument("--max-steps", type=_positive_int, default=None, help=argparse.SUPPRESS)

    train = sub.add_parser("train", help="train one network and report losses, timing and λ",
                           description="Train a built-in problem with slimTrain (default) or Adam.")
    common(train)
    train.add_argument("--optimizer", choices=METHODS, default="slimtrain", help="slimtrain (default) or adam")
    train.add_argument("--lr", type=_positive_float, default=DEFAULT_LR, help=f"Adam learning rate (default: {DEFAULT_LR:g})")
    train.set_defaults(func=cmd_train)

    compare = sub.add_parser("compare", help="slimTrain vs Adam over a learning-rate sweep",
                             description="Run slimTrain and Adam for lr in {1e-4, 1e-3, 1e-2, 1e-1}.")
    common(compare)
    compare.add_argument("--lrs", type=_positive_float, nargs="+", default=None, help=argparse.SUPPRESS)
    compare.set_defaults(func=cmd_compare)

    sweep = sub.add_parser("sweep", help="many slimTrain models (lr × seed × Λ0 × r) trained together in one process",
                           description="Train every combination of the given learning rates, seeds, initial "
                                       "regularisations and memory depths together (stacked bodies, one batched "
                                       "head solve per step); writes sensitivity.png, sweep.md and sweep.json.")
    common(sweep)
    sweep.add_argument("--lrs", type=_list_of(_positive_float), default=None,
                       help="body learning rates, comma-separated (default: 1e-4,1e-3,1e-2,1e-1)")
    sweep.add_argument("--seeds", type=_list_of(int), default=None,
                       help="model seeds (initial weights, batch order), comma-separated (default: --seed); "
                            "the data always come from --seed")
    sweep.add_argument("--Lambda0s", "--lambda0s", dest="Lambda0s", type=_list_of(_nonneg_float), default=None,
                       help="initial regularisations Λ0, comma-separated (default: 0.05)")
    sweep.add_argument("--memory-depths", type=_list_of(_nonneg_int), default=None,
                       help="memory depths r, comma-separated (default: --memory-depth)")
    sweep.set_defaults(func=cmd_sweep)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m slimfast``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if args.verbose > 1 else logging.INFO)
    threads = args.threads if args.threads is not None else SINGLE_THREAD_DEFAULT.get(args.problem)
    if threads is not None:
        torch.set_num_threads(threads)
    if _launched_world_size() > 1 and args.command != "train":
        parser.exit(2, f"slimfast: error: only 'train' runs data parallel; run '{args.command}' in one process\n")
    created = _init_distributed_from_env()
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"slimfast: error: {exc}\n")
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly
        sys.stderr.close()
        return 1
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 1  # not reached


def _launched_world_size() -> int:
    import os

    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _init_distributed_from_env() -> bool:
    """Under ``torchrun`` (WORLD_SIZE > 1 in the environment): initialise the default process group
    from the environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). The CLI trains on the CPU,
    so the backend is gloo. Returns True if this call created the group."""
    if _launched_world_size() <= 1:
        return False
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    dist.init_process_group("gloo")
    return True


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
