"""Checking a ``SlimTik.state_dict()`` before it is loaded (``SlimTik.check_state_dict``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import SolverConfig
from .heads import head_shape
from .sample_side_head import check_solve_side
from .state import as_size, check_Lambda0, state_class

if TYPE_CHECKING:
    from .optim import SlimTik

#: Per-step lists kept by SlimTik (``alpha_history_`` is derived from ``Lambda_history_``).
HISTORIES = ("lambda_history_", "Lambda_history_", "sgcv_history_", "rel_residual_history_", "cond_history_")


def parse_state_dict(slim: SlimTik, state_dict: Any) -> dict[str, Any]:
    """The settings ``slim.load_state_dict(state_dict)`` applies (config, memory depth, counts,
    Λ_0, reduction, solve side, solver state dict, histories), checked against ``slim``'s head
    without changing anything; ValueError naming the offending field."""
    if not isinstance(state_dict, dict) or not isinstance(state_dict.get("slimtik"), dict):
        raise ValueError("state_dict has no 'slimtik' entry; it was not saved by SlimTik.state_dict()")
    extra = state_dict["slimtik"]
    missing = [k for k in ("solver", "n_steps", "memory_depth", "Lambda0", "reduction", "config", "histories")
               if k not in extra]
    if missing:
        raise ValueError(f"state_dict['slimtik'] lacks {', '.join(missing)}")
    groups = state_dict.get("param_groups")
    if not isinstance(groups, list) or len(groups) != 1 or not isinstance(groups[0], dict) \
            or len(groups[0].get("params", ())) != len(slim.param_groups[0]["params"]):
        raise ValueError("state_dict field param_groups does not match this head's weight (and bias)")
    if not isinstance(state_dict.get("state"), dict):
        raise ValueError("state_dict field state must be a dict")
    if not isinstance(extra["config"], dict):
        raise ValueError("state_dict field slimtik.config must be a dict")
    try:
        config = SolverConfig(**extra["config"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"state_dict field slimtik.config: {exc}") from None
    memory_depth = as_size("slimtik.memory_depth", extra["memory_depth"], 0)
    n_steps = as_size("slimtik.n_steps", extra["n_steps"], 0)
    n_skipped = as_size("slimtik.n_skipped", extra.get("n_skipped", 0), 0)
    Lambda0 = check_Lambda0(extra["Lambda0"], config, name="slimtik.Lambda0")
    if extra["reduction"] not in ("mean", "sum"):
        raise ValueError(f"state_dict field slimtik.reduction must be 'mean' or 'sum', got {extra['reduction']!r}")
    solver = extra["solver"]
    if solver is not None:
        state_class(solver).check_state_dict(solver, config)
        n_t, n_f = head_shape(slim.head)
        if (int(solver["n_features"]), int(solver["n_targets"])) != (n_f, n_t):
            raise ValueError(f"state_dict is for a head with (n_f, n_t)=({solver['n_features']}, "
                             f"{solver['n_targets']}), this head has ({n_f}, {n_t})")
        if int(solver["batch"]) != 1 or int(solver["memory_depth"]) != memory_depth:
            raise ValueError(f"state_dict field slimtik.solver has batch={solver['batch']}, memory_depth="
                             f"{solver['memory_depth']}; expected 1 and slimtik.memory_depth={memory_depth}")
        if int(solver["step_count"]) != n_steps:
            raise ValueError(f"state_dict field slimtik.solver.step_count={solver['step_count']} differs from "
                             f"slimtik.n_steps={n_steps}")
    elif n_steps != 0:
        raise ValueError(f"state_dict field slimtik.n_steps={n_steps} but it holds no solver state")
    hist = extra["histories"]
    if not isinstance(hist, dict):
        raise ValueError("state_dict field slimtik.histories must be a dict")
    histories = {}
    for name in HISTORIES:   # cond_history_ is absent from dicts saved before it existed
        values = hist.get(name, [])
        try:
            histories[name] = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ValueError(f"state_dict field slimtik.histories.{name} must be a list of numbers") from None
        if len(values) > n_steps:
            raise ValueError(f"state_dict field slimtik.histories.{name} has {len(values)} entries for "
                             f"{n_steps} steps")
    return {"config": config, "memory_depth": memory_depth, "n_steps": n_steps, "n_skipped": n_skipped,
            "solve_side": check_solve_side(extra.get("solve_side", "auto"), slim.head),
            "Lambda0": Lambda0, "reduction": extra["reduction"], "solver": solver, "histories": histories}

