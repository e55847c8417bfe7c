"""Training quality: slimTrain vs Adam over body learning rates, seeds and problems.

For each problem (peaks, cdr, digits; each with its ``slimfast train`` default epochs) every
(lr, seed) of lr ∈ {1e-4, 1e-3, 1e-2, 1e-1} × seeds {0, 1, 2} is trained twice from the same
initial weights on the same batches: slimTrain (``sweep.run_sweep``: one process, one batched
slimTik call per step) and Adam on body and head (``sweep_adam.run_adam_sweep``). Printed per
problem and lr: the median over seeds of the final validation loss of each method; then the
best-of-sweep (minimum over lrs of those medians), the spread log10(max/min) over the lrs, and
the first epoch at which slimTrain's median validation loss reaches Adam's best-of-sweep final
loss (with ``refit="end"``: the loss the run would end with if it stopped at that epoch, i.e.
with the heads refit there; training is not changed by it). Diverged runs count as +inf.

Acceptance (issue 11): on every problem slimTrain ≤ Adam at lr ∈ {1e-4, 1e-3, 1e-2}; best ≤
best; slimTrain reaches Adam's best in ≤ half the epochs on ≥ 2 problems; slimTrain's spread
≤ half of Adam's on every problem. The script prints which hold.

    python benchmarks/bench_quality.py                      # slimfast defaults (presets.PRESETS["default"])
    python benchmarks/bench_quality.py --preset reference   # the public reference's settings
    python benchmarks/bench_quality.py --memory-depth 5 --refit none --json out.json
    python benchmarks/bench_quality.py --quick              # smoke test: small subsets, 1 seed, 1 epoch
    python benchmarks/bench_quality.py --problems holdout   # a problem the defaults were not chosen on
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from typing import Any

import torch

from slimfast.presets import PRESETS, SlimSettings
from slimfast.problems import get_problem
from slimfast.sweep import REFIT_MODES, ModelSpec, run_sweep
from slimfast.sweep_adam import run_adam_sweep

LRS = (1e-4, 1e-3, 1e-2, 1e-1)
SEEDS = (0, 1, 2)
PROBLEMS = ("peaks", "cdr", "digits")
#: ``slimfast train``'s default epochs (cli.DEFAULT_EPOCHS); "holdout" is not a built-in problem
EPOCHS = {"peaks": 30, "cdr": 30, "digits": 10, "holdout": 20}
#: the learning rates at which slimTrain must be at least as good as Adam
MUST_WIN_LRS = (1e-4, 1e-3, 1e-2)


def _median(values: list[float]) -> float:
    return statistics.median([v if math.isfinite(v) else math.inf for v in values])


def _spread(values: list[float]) -> float:
    lo, hi = min(values), max(values)
    return math.log10(hi / lo) if lo > 0 and math.isfinite(hi) else math.inf


def holdout_problem() -> Any:
    """A problem the defaults were not chosen on: ReLU MLP body 4 → 64 → 32, Linear(32 → 3) head,
    noisy smooth targets (2000 training, 500 validation samples, fixed seed)."""
    from torch import nn

    from slimfast.problems import Problem

    g = torch.Generator().manual_seed(123)

    def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, 4, generator=g)
        y = torch.stack([torch.sin(x[:, 0] + x[:, 1]), torch.cos(2 * x[:, 2]) * x[:, 3], torch.tanh(x[:, 0] * x[:, 3])],
                        1)
        return x, y + 0.05 * torch.randn(n, 3, generator=g)

    (xt, yt), (xv, yv) = data(2000), data(500)
    def body() -> nn.Module:
        return nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())

    return Problem(name="holdout", x_train=xt, y_train=yt, x_val=xv, y_val=yv, x_test=None, y_test=None, batch_size=32,
                   seed=0, body_builder=body, head_builder=lambda: nn.Linear(32, 3))


def run_problem(name: str, settings: SlimSettings, lrs=LRS, seeds=SEEDS, epochs: int | None = None,
                n_train: int | None = None, n_val: int | None = None) -> dict[str, Any]:
    """Both sweeps on one problem; returns the per-lr medians, summaries and per-epoch median curves."""
    problem = holdout_problem() if name == "holdout" else get_problem(name)
    if n_train is not None or n_val is not None:
        problem = problem.subset(n_train, n_val)
    epochs = EPOCHS[name] if epochs is None else epochs
    specs = [ModelSpec(seed=s, lr=lr, memory_depth=settings.memory_depth, Lambda0=settings.Lambda0)
             for lr in lrs for s in seeds]
    t0 = time.perf_counter()
    adam = run_adam_sweep(problem, specs, epochs)
    t_adam = time.perf_counter() - t0
    t0 = time.perf_counter()
    slim = run_sweep(problem, specs, epochs, refit=settings.refit, eval_refit=settings.refit == "end",
                     **settings.solver_kwargs())
    t_slim = time.perf_counter() - t0
    curve_key = "val_loss_refit" if settings.refit == "end" else "val_loss"

    def by_lr(hists, key):
        out = {}
        for lr in lrs:
            runs = [h[key] for h, s in zip(hists, specs) if s.lr == lr]
            n = max(len(r) for r in runs)
            padded = [r + [math.inf] * (n - len(r)) for r in runs]   # a diverged run stops early
            out[lr] = [_median([r[e] for r in padded]) for e in range(n)]
        return out

    adam_curves, slim_curves = by_lr(adam, "val_loss"), by_lr(slim, curve_key)
    adam_final = {lr: c[-1] for lr, c in adam_curves.items()}
    slim_final = {lr: by_lr(slim, "val_loss")[lr][-1] for lr in lrs}
    adam_best = min(adam_final.values())
    reach = {lr: next((e for e, v in enumerate(c) if v <= adam_best), None) for lr, c in slim_curves.items()}
    return {"problem": name, "epochs": epochs, "lrs": list(lrs), "seeds": list(seeds),
            "adam_final": adam_final, "slim_final": slim_final, "adam_best": adam_best,
            "slim_best": min(slim_final.values()), "adam_spread": _spread(list(adam_final.values())),
            "slim_spread": _spread(list(slim_final.values())), "reach_epoch": reach,
            "slim_curves": slim_curves, "adam_curves": adam_curves, "time_adam_s": t_adam, "time_slim_s": t_slim}


def checks(res: dict[str, Any]) -> dict[str, bool]:
    """The acceptance checks of one problem (the 'half the epochs' one is counted over problems)."""
    reached = [e for e in res["reach_epoch"].values() if e is not None]
    return {
        "wins_at_lr<=1e-2": all(res["slim_final"][lr] <= res["adam_final"][lr] for lr in res["lrs"]
                                if lr in MUST_WIN_LRS),
        "best<=best": res["slim_best"] <= res["adam_best"],
        "reach<=half": bool(reached) and min(reached) <= res["epochs"] / 2,
        "spread<=half": res["slim_spread"] <= res["adam_spread"] / 2,
    }


def format_problem(res: dict[str, Any]) -> str:
    lines = [f"### {res['problem']} ({res['epochs']} epochs, median over seeds {res['seeds']})", "",
             "| body lr | Adam val loss | slimTrain val loss | slimTrain/Adam "
             "| slimTrain reaches Adam's best at epoch |",
             "|---|---|---|---|---|"]
    for lr in res["lrs"]:
        a, s = res["adam_final"][lr], res["slim_final"][lr]
        e = res["reach_epoch"][lr]
        lines.append(f"| {lr:g} | {a:.4g} | {s:.4g} | {s / a:.3g} | {'—' if e is None else e} |")
    lines.append(f"| best-of-sweep | {res['adam_best']:.4g} | {res['slim_best']:.4g} | "
                 f"{res['slim_best'] / res['adam_best']:.3g} | |")
    lines.append(f"| spread log10(max/min) | {res['adam_spread']:.2f} | {res['slim_spread']:.2f} | | |")
    ok = checks(res)
    lines += ["", "checks: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in ok.items()),
              f"(time: Adam sweep {res['time_adam_s']:.0f} s, slimTrain sweep {res['time_slim_s']:.0f} s)"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default")
    ap.add_argument("--problems", nargs="+", choices=PROBLEMS + ("holdout",), default=list(PROBLEMS),
                    help="problems (default: the three built-in ones; 'holdout': a problem the defaults were not "
                         "chosen on)")
    ap.add_argument("--seeds", type=int, default=len(SEEDS), help="number of seeds (0, 1, ...)")
    ap.add_argument("--memory-depth", type=int, default=None)
    ap.add_argument("--Lambda0", type=float, default=None)
    ap.add_argument("--lambda-mode", choices=("sgcv", "reference", "constant"), default=None)
    ap.add_argument("--Lambda-min", type=float, default=None, help="lower bound of Λ")
    ap.add_argument("--Lambda-max", type=float, default=None, help="upper bound of Λ")
    ap.add_argument("--refit", choices=REFIT_MODES, default=None)
    ap.add_argument("--epochs", type=int, default=None, help="override every problem's epochs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="smoke test: 128/64 samples, 1 seed, lrs 1e-3 1e-2, 1 epoch")
    ap.add_argument("--json", default=None, help="write the results to this file")
    return ap.parse_args(argv)


def settings_from(args: argparse.Namespace) -> SlimSettings:
    s = PRESETS[args.preset]
    if args.memory_depth is not None:
        s = replace(s, memory_depth=args.memory_depth)
    if args.Lambda0 is not None:
        s = replace(s, Lambda0=args.Lambda0)
    if args.lambda_mode is not None:
        s = replace(s, lambda_mode=args.lambda_mode)
    if args.Lambda_min is not None:
        s = replace(s, Lambda_bounds=(args.Lambda_min, s.Lambda_bounds[1]))
    if args.Lambda_max is not None:
        s = replace(s, Lambda_bounds=(s.Lambda_bounds[0], args.Lambda_max))
    if args.refit is not None:
        s = replace(s, refit=args.refit)
    return s


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = settings_from(args)
    print(f"slimTrain settings: {settings.as_dict()} (preset {args.preset!r} with overrides)")
    kw: dict[str, Any] = {"seeds": tuple(range(args.seeds)), "epochs": args.epochs}
    if args.quick:
        kw.update(seeds=(0,), lrs=(1e-3, 1e-2), epochs=1 if args.epochs is None else args.epochs, n_train=128,
                  n_val=64)
    results = []
    for name in args.problems:
        res = run_problem(name, settings, **kw)
        results.append(res)
        print("\n" + format_problem(res), flush=True)
    n_fast = sum(checks(r)["reach<=half"] for r in results)
    print(f"\nslimTrain reaches Adam's best-of-sweep in <= half the epochs on {n_fast} of {len(results)} problems "
          f"(target: >= 2)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": settings.as_dict(), "results": results}, f, indent=1, default=str)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
