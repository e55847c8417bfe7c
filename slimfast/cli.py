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
import logging
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .commands import TRAIN_PROBLEMS, cmd_compare, cmd_sweep, cmd_train
from .presets import PRESETS
from .reports import sweep_summary
from .runs import DEFAULT_LR, METHODS, RunConfig, batches, evaluate, final_metrics, make_trainer, run_training, world

# names of the training and report layers that callers import from here since before the split
__all__ = ["main", "build_parser", "RunConfig", "run_training", "batches", "evaluate", "final_metrics",
           "make_trainer", "sweep_summary", "world"]

logger = logging.getLogger("slimfast")

#: Problems whose layers are so small that intra-op threads only add synchronisation (and, on a
#: busy machine, stalls of ~0.1–1 s when a thread is descheduled): run them single-threaded.
SINGLE_THREAD_DEFAULT = {"peaks": 1, "cdr": 1}


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
        p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                       help="slimTrain settings: 'default' (slimfast's, chosen by benchmarks/bench_quality.py) or "
                            "'reference' (the public reference code's: r=5, Λ0=0.05, reference λ grid, no refit); "
                            "the options below override single settings")
        p.add_argument("--memory-depth", type=_nonneg_int, default=None,
                       help=f"slimTik memory depth r (default: preset's; default preset {PRESETS['default'].memory_depth})")
        p.add_argument("--Lambda0", "--lambda0", dest="Lambda0", type=_nonneg_float, default=None,
                       help=f"initial regularisation Λ0 (default: preset's, {PRESETS['default'].Lambda0:g})")
        p.add_argument("--lambda-mode", choices=("sgcv", "reference", "constant"), default=None,
                       help="how λ is chosen each step (default: preset's, sgcv)")
        p.add_argument("--reduction", choices=("mean", "sum"), default="mean",
                       help="head objective scaling: mean (1/m, as nn.MSELoss(); default) or sum")
        p.add_argument("--refit", choices=("none", "end", "epoch"), default=None,
                       help="exact full-data refit of the head (ridge, λ by exact GCV): after the last epoch (end), "
                            "after every epoch (epoch) or none (default: preset's, "
                            f"{PRESETS['default'].refit})")
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
    compare.add_argument("--seeds", type=_list_of(int), default=None,
                         help="seeds (initial weights, batch order), comma-separated; the table reports medians "
                              "over them (default: --seed)")
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
                       help="memory depths r, comma-separated (default: --memory-depth or the preset's)")
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
