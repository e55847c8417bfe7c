"""The commands of ``slimfast``: ``train``, ``compare`` and ``sweep`` (each ``cmd_*(args) -> exit status``).

Each loads its problem, runs (``runs.run_training`` or ``sweep.run_sweep``), then writes its
report (``reports``) and figures (``plots``) into ``--out`` and prints the tables. The parser and
the entry point are in ``cli``; only the command line prints.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from .plots import plot_convergence, plot_loss, plot_sensitivity, plot_sweep_sensitivity
from .reports import compare_table, results_table, sweep_finals, sweep_summary, sweep_tables, write_json
from .config import SolverConfig
from .outputs import prepare_output, staged_output
from .presets import PRESETS, SlimSettings
from .runs import METHOD_LABELS, METHODS, RunConfig, final_metrics, run_training, world
from .state import check_Lambda0

TRAIN_PROBLEMS = ("peaks", "cdr", "digits", "mnist")
LR_SWEEP = (1e-4, 1e-3, 1e-2, 1e-1)
#: Default epochs of ``train`` per problem (each finishes in well under 2 minutes on 2 cores).
DEFAULT_EPOCHS = {"peaks": 30, "cdr": 30, "digits": 10, "mnist": 1}
#: Default epochs of each run of ``compare`` (8 runs per problem).
DEFAULT_COMPARE_EPOCHS = 5
TRAIN_OUTPUTS = ("history.json", "loss.png", "summary.md")
COMPARE_OUTPUTS = ("convergence.png", "sensitivity.png", "compare.md", "compare.json")
SWEEP_OUTPUTS = ("sensitivity.png", "sweep.md", "sweep.json")


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
            "cpu_lapack": info["cpu_lapack"],
            "available_backends": [k for k, v in info["available"].items() if v is True]}


def _settings(args: argparse.Namespace) -> SlimSettings:
    """The slimTrain settings of ``--preset`` with the single options that override it."""
    s = PRESETS[getattr(args, "preset", "default")]
    for field in ("memory_depth", "Lambda0", "lambda_mode", "refit"):
        value = getattr(args, field, None)
        if value is not None:
            s = replace(s, **{field: value})
    return s


def _run_config(args: argparse.Namespace, method: str, lr: float, epochs: int, seed: int | None = None) -> RunConfig:
    s = _settings(args)
    return RunConfig(method=method, lr=lr, epochs=epochs, memory_depth=s.memory_depth, batch_size=args.batch_size,
                     seed=args.seed if seed is None else seed, backend=args.backend, weight_decay=args.weight_decay,
                     max_steps=args.max_steps, Lambda0=s.Lambda0, lambda_mode=s.lambda_mode,
                     Lambda_bounds=s.Lambda_bounds, reduction=getattr(args, "reduction", "mean"), refit=s.refit)


def cmd_train(args: argparse.Namespace) -> int:
    rank, size = world()
    out = Path(args.out if args.out is not None else f"runs/{args.problem}-{args.optimizer}")
    if rank == 0:
        out = prepare_output(out, TRAIN_OUTPUTS)
    problem = _load_problem(args)
    epochs = args.epochs if args.epochs is not None else DEFAULT_EPOCHS[args.problem]
    cfg = _run_config(args, args.optimizer, args.lr, epochs)
    label = METHOD_LABELS[cfg.method]
    if rank == 0:
        print(f"{label} on {problem!r}" + (f", data parallel over {size} ranks" if size > 1 else ""))
    hist = _run_with_bar(problem, cfg, f"{args.problem} {label} lr={cfg.lr:g}", not args.quiet and rank == 0)
    if rank != 0:   # every rank holds the same weights and history; rank 0 reports
        return 0
    metrics = final_metrics(hist)
    table = results_table([metrics])
    env = _environment()
    hist["environment"] = env
    hist["metrics"] = metrics
    title = f"{args.problem}: {label}, lr={cfg.lr:g}"
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
              "Train loss (split) = the final network evaluated on the whole training split, after the refit "
              "where there is one (the per-step batch losses in history.json, `batch_loss`, are taken right after "
              "the head was solved on that batch and are optimistic). Effective λ = Λ_k/(k+1) (`SlimTik.alpha_`).",
              "", "![loss curves](loss.png)", ""]
    with staged_output(out) as stage:
        write_json(stage / "history.json", hist)
        plot_loss(hist, stage / "loss.png", title)
        (stage / "summary.md").write_text("\n".join(lines))
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


def _median_over_seeds(values: list[float]) -> float:
    """Median with a diverged run (NaN) counted as +inf; NaN if that median is a diverged run."""
    med = statistics.median([v if math.isfinite(v) else math.inf for v in values])
    return med if math.isfinite(med) else math.nan


def cmd_compare(args: argparse.Namespace) -> int:
    out = prepare_output(args.out if args.out is not None else f"runs/{args.problem}-compare", COMPARE_OUTPUTS)
    problem = _load_problem(args)
    epochs = args.epochs if args.epochs is not None else DEFAULT_COMPARE_EPOCHS
    lrs = tuple(args.lrs) if args.lrs else LR_SWEEP
    seeds = tuple(args.seeds) if getattr(args, "seeds", None) else (args.seed,)
    settings = _settings(args)
    print(f"slimTrain vs Adam on {problem!r}, {epochs} epochs, lr ∈ {{{', '.join(f'{lr:g}' for lr in lrs)}}}, "
          f"seeds {list(seeds)}; slimTrain settings {json.dumps(settings.as_dict())}")
    runs: dict[str, dict[float, dict[int, dict[str, Any]]]] = {m: {lr: {} for lr in lrs} for m in METHODS}
    plan = [(m, lr, seed) for lr in lrs for m in METHODS for seed in seeds]
    outer = _progress_bar(len(plan), "runs", not args.quiet)
    outer.unit = "run"
    try:
        for method, lr, seed in plan:
            cfg = _run_config(args, method, lr, epochs, seed=seed)
            runs[method][lr][seed] = _run_with_bar(problem, cfg, f"{METHOD_LABELS[method]} lr={lr:g} seed={seed}",
                                                   not args.quiet, leave=False)
            outer.update(1)
    finally:
        outer.close()
    finals = {m: {lr: _median_over_seeds([final_metrics(h)["val_loss"] for h in by_seed.values()])
                  for lr, by_seed in by_lr.items()} for m, by_lr in runs.items()}
    summary = sweep_summary(finals)
    title = f"{args.problem}: {epochs} epochs (seed {seeds[0]})"
    first = {m: {lr: by_seed[seeds[0]] for lr, by_seed in by_lr.items()} for m, by_lr in runs.items()}
    table = compare_table(finals, summary)
    details = results_table([dict(final_metrics(runs[m][lr][seed]), seed=seed) for lr in lrs for m in METHODS
                             for seed in seeds])
    env = _environment()
    md = [f"# slimfast compare: {args.problem}", "",
          f"- problem: {problem!r}", f"- epochs: {epochs}, seeds: {list(seeds)}, weight decay: {args.weight_decay}",
          f"- slimTrain settings: {json.dumps(settings.as_dict())} (preset {args.preset!r}); Adam with the given lr "
          "on the body, head solved by SlimTik. Adam: the same network, initial weights and batch order, Adam on "
          "all weights.",
          f"- environment: {json.dumps(env)}", "",
          f"## Final validation loss (median over {len(seeds)} seed{'s' if len(seeds) > 1 else ''})", "", table, "",
          "Spread = max/min of the median final validation loss across the learning-rate sweep (1 = insensitive).",
          "", "## All runs", "", details, "",
          "![convergence](convergence.png)", "", "![sensitivity](sensitivity.png)", ""]
    with staged_output(out) as stage:
        plot_convergence(first, stage / "convergence.png", title)
        plot_sensitivity(finals, stage / "sensitivity.png", f"{args.problem}: {epochs} epochs, median over "
                         f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}")
        (stage / "compare.md").write_text("\n".join(md))
        write_json(stage / "compare.json", {
            "problem": args.problem, "epochs": epochs, "seeds": list(seeds), "settings": settings.as_dict(),
            "environment": env,
            "final_val_loss": {m: {f"{lr:g}": v for lr, v in by_lr.items()} for m, by_lr in finals.items()},
            "summary": summary,
            "runs": {m: {f"{lr:g}": {str(seed): h for seed, h in by_seed.items()} for lr, by_seed in by_lr.items()}
                     for m, by_lr in runs.items()}})
    print(table)
    print(details)
    print(f"wrote {out / 'convergence.png'}, {out / 'sensitivity.png'}, {out / 'compare.md'}, {out / 'compare.json'}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import ModelSpec, run_sweep

    settings = _settings(args)
    Lambda0s = args.Lambda0s or (settings.Lambda0,)
    sweep_config = SolverConfig(mode=settings.lambda_mode, Lambda_bounds=settings.Lambda_bounds,
                                lambda_bounds=settings.lambda_bounds)
    for L0 in Lambda0s:   # the sweep steps every head with this SolverConfig
        check_Lambda0(L0, sweep_config, name="--Lambda0s value")
    out = prepare_output(args.out if args.out is not None else f"runs/{args.problem}-sweep", SWEEP_OUTPUTS)
    problem = _load_problem(args)
    epochs = args.epochs if args.epochs is not None else DEFAULT_COMPARE_EPOCHS
    lrs = args.lrs or LR_SWEEP
    seeds = args.seeds or (args.seed,)
    depths = args.memory_depths or (settings.memory_depth,)
    specs = [ModelSpec(seed=seed, lr=lr, Lambda0=L0, memory_depth=r)
             for L0 in Lambda0s for r in depths for lr in lrs for seed in seeds]
    print(f"slimTrain sweep on {problem!r}: {len(specs)} models in one process, {epochs} epochs; "
          f"lr ∈ {{{', '.join(f'{v:g}' for v in lrs)}}}, seeds {list(seeds)}, Λ0 {list(Lambda0s)}, r {list(depths)}")
    cfg = RunConfig(epochs=epochs, batch_size=args.batch_size, max_steps=args.max_steps)
    bar = _progress_bar(_total_steps(problem, cfg), f"{args.problem} sweep ({len(specs)} models)", not args.quiet)
    try:
        hists = run_sweep(problem, specs, epochs, batch_size=args.batch_size, max_steps=args.max_steps,
                          backend=args.backend, weight_decay=args.weight_decay,
                          progress=lambda step, active: bar.update(1), refit=settings.refit,
                          reduction=getattr(args, "reduction", "mean"), lambda_mode=settings.lambda_mode,
                          Lambda_bounds=settings.Lambda_bounds, lambda_bounds=settings.lambda_bounds)
    finally:
        bar.close()
    title = f"{args.problem}: {epochs} epochs, {len(specs)} models"
    finals = sweep_finals(specs, hists)
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
          "- each model = `slimfast train --seed <seed> --lr <lr> --memory-depth <r> --Lambda0 <Λ0>` on this data "
          f"(Adam on the body, head solved by SlimTik); shared settings {json.dumps(settings.as_dict())}",
          f"- environment: {json.dumps(env)}", "",
          "## Final validation loss per configuration", "", summary, "",
          "Spread = max/min over learning rates of the median (over seeds) final validation loss "
          "(1 = insensitive; inf if a model diverged).", "",
          "## All models", "", models, "", "![sensitivity](sensitivity.png)", ""]
    with staged_output(out) as stage:
        plot_sweep_sensitivity(finals, stage / "sensitivity.png", title)
        (stage / "sweep.md").write_text("\n".join(md))
        write_json(stage / "sweep.json", {"problem": args.problem, "epochs": epochs, "environment": env,
                                          "specs": [asdict(s) for s in specs], "runs": hists})
    print(summary)
    print(f"wrote {out / 'sensitivity.png'}, {out / 'sweep.md'}, {out / 'sweep.json'}")
    return 0
