"""A 16-model slimTrain sweep in one process vs the same 16 runs one after another.

Models: peaks, body learning rates {1e-4, 1e-3, 1e-2, 1e-1} × seeds {0, 1, 2, 3}, memory depth 5,
Λ_0 = 0.05, batch 32, the same number of epochs (hence steps) for both ways:

    sweep       ``slimfast.sweep.run_sweep``: stacked bodies (one vmap), one batched slimTik call
                per step for all 16 heads, StackedAdam; per-epoch evaluation of all models.
    sequential  ``slimfast.cli.run_training`` 16 times (what ``slimfast train`` does per model),
                per-epoch evaluation included.

Correctness first: every model's per-step batch losses and per-epoch validation losses from the
sweep must equal its sequential run (relative difference ≤ 1e-4, float32 networks; on our CPUs
they agree bit for bit). Then the two are timed in interleaved repetitions (so load changes on a
shared machine hit both alike); the table gives the median wall and process-CPU time of each and
the ratio sequential/sweep. The target is ≥ 4× on 2 CPU cores (wall time).

    python benchmarks/bench_sweep.py [--epochs 2] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

import slimfast
from slimfast.cli import RunConfig, run_training
from slimfast.problems import get_problem
from slimfast.sweep import ModelSpec, run_sweep

LRS = (1e-4, 1e-3, 1e-2, 1e-1)
SEEDS = (0, 1, 2, 3)
TARGET = 4.0


def _loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _sequential(problem, specs, epochs):
    return [run_training(problem, RunConfig(lr=s.lr, seed=s.seed, epochs=epochs, memory_depth=s.memory_depth))
            for s in specs]


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the CLI's default for peaks: 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    problem = get_problem("peaks", seed=0)
    specs = [ModelSpec(seed=s, lr=lr, memory_depth=5) for lr in LRS for s in SEEDS]
    steps = args.epochs * -(-problem.n_train // problem.batch_size)
    print(f"# bench_sweep: {len(specs)} peaks models, {args.epochs} epochs = {steps} steps each")
    print(f"slimfast {slimfast.__version__}, torch {torch.__version__}, python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {args.threads} thread(s), load average {_loadavg()}")

    # correctness first
    sweep_h = run_sweep(problem, specs, args.epochs)
    seq_h = _sequential(problem, specs, args.epochs)
    worst_step = max(_rel(a, b) for h, r in zip(sweep_h, seq_h) for a, b in zip(h["batch_loss"], r["batch_loss"]))
    worst_val = max(_rel(a, b) for h, r in zip(sweep_h, seq_h) for a, b in zip(h["val_loss"], r["val_loss"]))
    for h, r in zip(sweep_h, seq_h):
        assert h["steps"] == r["steps"] == steps, (h["steps"], r["steps"])
        assert h["diverged"] == r["diverged"]
    assert worst_step <= 1e-4 and worst_val <= 1e-4, (worst_step, worst_val)
    print(f"agreement: max relative difference sweep vs sequential: batch losses {worst_step:.2e}, "
          f"validation losses {worst_val:.2e} ({'bit for bit' if worst_step == worst_val == 0 else 'rounding'})")

    times: dict[str, list[tuple[float, float]]] = {"sweep": [], "sequential": []}
    for _ in range(args.repeats):
        for name, fn in (("sweep", lambda: run_sweep(problem, specs, args.epochs)),
                         ("sequential", lambda: _sequential(problem, specs, args.epochs))):
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append((time.perf_counter() - w0, time.process_time() - c0))
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    ratio_wall = med["sequential"][0] / med["sweep"][0]
    ratio_cpu = med["sequential"][1] / med["sweep"][1]
    print()
    print("| way | wall [s] (median) | CPU [s] (median) | per model-step wall [ms] | runs |")
    print("|---|---|---|---|---|")
    for k in ("sequential", "sweep"):
        print(f"| {k} | {med[k][0]:.3f} | {med[k][1]:.3f} | {1e3 * med[k][0] / (len(specs) * steps):.3f} | "
              f"{', '.join(f'{w:.2f}' for w, _ in times[k])} |")
    print()
    print(f"ratio sequential/sweep: wall {ratio_wall:.2f}×, CPU {ratio_cpu:.2f}× (target ≥ {TARGET:g}× wall) "
          f"{'MET' if ratio_wall >= TARGET else 'NOT MET'}; load average after: {_loadavg()}")


if __name__ == "__main__":
    main()
