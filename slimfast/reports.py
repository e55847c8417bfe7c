"""Reports of the command line: markdown tables, strict JSON and the summaries of sweeps.

Pure functions of run histories (``runs.run_training``'s dicts) and their final metrics; a NaN
validation loss means the run diverged and is shown as "diverged".
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .runs import METHOD_LABELS, METHODS, final_metrics


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
    # "train loss" is the final network evaluated on the whole training split (not a running batch mean)
    header = ["method", "lr", "epochs", "steps", "train loss (split)", "val loss", "train rel err", "val rel err",
              "time/step [ms]", "effective λ (alpha_)"]
    rows = [[METHOD_LABELS[m["method"]], f"{m['lr']:g}", str(m["epochs"]), str(m["steps"]), _fmt(m["train_loss"]),
             _fmt(m["val_loss"]), _fmt(m["train_rel"], ".4f"), _fmt(m["val_rel"], ".4f"), _fmt(m["step_ms"], ".3f"),
             _fmt(m["alpha"], ".3e")] for m in metrics]
    if any("seed" in m for m in metrics):
        header.insert(2, "seed")
        for row, m in zip(rows, metrics):
            row.insert(2, str(m.get("seed", "")))
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
