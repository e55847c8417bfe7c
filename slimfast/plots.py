"""Figures of the command line (PNG files), drawn with matplotlib's object API.

Every figure is a ``matplotlib.figure.Figure`` saved with ``Figure.savefig``: no pyplot, so no
backend is selected or changed (a library must not call ``matplotlib.use``), and nothing is drawn
on screen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .reports import _config_label, _median_finite
from .runs import METHOD_LABELS


def _figure(ncols: int = 1, width: float = 6.0, height: float = 4.0):
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


def plot_convergence(runs: dict[str, dict[float, dict[str, Any]]], path: Path, title: str) -> None:
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


def plot_sweep_sensitivity(finals: dict[tuple[float, int], dict[float, list[float]]], path: Path, title: str) -> None:
    """Final validation loss against the body learning rate: every model a dot, the median over
    seeds a line, one colour per (Λ0, r)."""
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
