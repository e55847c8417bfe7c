"""``SlimTik`` on the sample side: which side a head steps on, and the head step there.

A wide ``nn.Linear`` head (n_f > SAMPLE_SIDE_CROSSOVER·(r + 1)·n_b, or SAMPLE_SIDE_CROSSOVER_CPP
on the cpp backend, whose sample side needs no eigendecomposition; both measured by
``benchmarks/bench_solver.py --wide``) is solved by ``sample_side.sample_side_step``: same
objective, same λ, same weights as the dense step (to rounding), without the n_f × n_f Gram
matrix or its eigendecomposition. The side is decided once, at the first step (from that batch's
size), and is then fixed by the solver state: a ``SampleSideState`` steps on the sample side, a
``SlimTikState`` on the feature side, also after ``load_state_dict``.

Only ``nn.Linear`` heads without data parallelism can step on the sample side (a convolutional
head's design has a row per output pixel, and data parallel runs all-reduce the Gram matrix);
``solve_side="samples"`` on such a head raises ValueError, ``"auto"`` keeps them on the feature side.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from .backends import resolve_backend
from .distributed import use_data_parallel
from .heads import head_shape, head_to_matrix, matrix_to_params
from .sample_side import prefer_samples, sample_side_step
from .state import SampleSideState
from .validation import MAX_ABS, largest_magnitude

if TYPE_CHECKING:
    from .optim import SlimTik, SlimTikInfo

__all__ = ["SOLVE_SIDES", "SolveSide", "check_solve_side", "side_of", "steps_on_samples", "sample_side_head_step"]

#: ``SlimTik(solve_side=...)``: "auto" (by size), "features" (Gram matrix, the dense step) or "samples".
SolveSide = Literal["auto", "features", "samples"]
SOLVE_SIDES: tuple[str, ...] = ("auto", "features", "samples")

F64 = torch.float64


def check_solve_side(solve_side: Any, head: nn.Module, distributed: bool | None = None) -> SolveSide:
    """``solve_side`` if valid for ``head``; ValueError naming it otherwise."""
    if solve_side not in SOLVE_SIDES:
        raise ValueError(f"solve_side must be one of {SOLVE_SIDES}, got {solve_side!r}")
    if solve_side == "samples" and not isinstance(head, nn.Linear):
        raise ValueError(f"solve_side='samples' needs an nn.Linear head, got {type(head).__name__} (a weight-shared "
                         "head's design has one row per output pixel; use 'features' or 'auto')")
    if solve_side == "samples" and distributed:
        raise ValueError("solve_side='samples' does not run data parallel (the ranks all-reduce Gram matrices)")
    return solve_side


def side_of(slim: SlimTik) -> str:
    """``repr(solve_side)`` and, once the state exists, the side it steps on: "'auto' (samples)"."""
    state, side = slim.solver_state, repr(getattr(slim, "solve_side", "auto"))
    return side if state is None else f"{side} ({'samples' if isinstance(state, SampleSideState) else 'features'})"


def steps_on_samples(slim: SlimTik, features: torch.Tensor) -> bool:
    """Whether this ``SlimTik.step`` runs on the sample side (the state decides once it exists)."""
    if slim.solver_state is not None:
        return isinstance(slim.solver_state, SampleSideState)
    side = getattr(slim, "solve_side", "auto")
    if side == "features" or not isinstance(slim.head, nn.Linear):
        return False
    if use_data_parallel(slim.distributed, slim.process_group):
        if side == "samples":
            raise ValueError("solve_side='samples' does not run data parallel (the ranks all-reduce Gram matrices)")
        return False
    if side == "samples":
        return True
    n_b = features.numel() // slim.head.in_features
    backend = resolve_backend(slim.backend, slim.head.weight.device)[0]
    return prefer_samples(head_shape(slim.head)[1], slim.memory_depth, n_b, backend)


def linear_design(head: nn.Linear, features: torch.Tensor, target: torch.Tensor, reduction: str
                  ) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """(Z [1, n_f, n_b], C [1, n_t, n_b], β, m) of one batch in float64: the features as columns
    with the bias row of ones, the targets likewise, β = 1/√m ("mean") or 1 ("sum"), m = n_b·n_t.

    Z is the transpose of a contiguous [1, n_b, n_f] (one sample per row, as the features come
    and as the memory stores them), written in one converting copy: at n_f = 2048 a transposing
    copy costs more than the products with it."""
    x = features.detach().reshape(-1, head.in_features)
    n_b, n_in = x.shape
    Zt = torch.empty(1, n_b, n_in + (head.bias is not None), dtype=F64, device=x.device)
    Zt[0, :, :n_in].copy_(x)
    if head.bias is not None:
        Zt[0, :, n_in] = 1.0
    with torch.autocast(features.device.type, enabled=False):
        C = target.detach().reshape(-1, head.out_features).to(F64).T[None].contiguous()
    m = C.numel()
    return Zt.mT, C, (1.0 / math.sqrt(m) if reduction == "mean" else 1.0), m


def _data_fault(Z: torch.Tensor, C: torch.Tensor, beta: float) -> tuple[str, bool]:
    """("", _) if the batch is usable; else the message and whether it may be skipped (NaN/Inf in
    the data, not a scale error: one rule with the feature side, ``step_record.explain``)."""
    tops = torch.stack([largest_magnitude(Z), largest_magnitude(C)]).tolist()   # NaN/Inf where not finite
    bad = [name for name, top in zip(("features", "target"), tops) if not math.isfinite(top)]
    if bad:
        return f"{' and '.join(bad)} contain{'s' if len(bad) == 1 else ''} NaN or Inf", True
    b2 = beta * beta
    # β²‖z_j‖² ≤ β²·n_f·max|Z|² (and β²‖C‖² ≤ β²·|C|·max|C|²): the sums are needed only near the bound.
    scale = [b2 * Z.shape[1] * tops[0] * tops[0], b2 * C.numel() * tops[1] * tops[1]]
    if not max(scale) <= MAX_ABS:
        scale = torch.stack([b2 * (Z * Z).sum(1).max(), b2 * (C * C).sum()]).tolist()
    big = [name for name, v in zip(("features", "target"), scale) if not (v <= MAX_ABS)]
    if big:
        return (f"{' and '.join(big)} too large: the float64 statistics exceed ±{MAX_ABS:g} (the solver squares "
                "them); rescale the data"), False
    return "", False


def sample_side_head_step(slim: SlimTik, features: torch.Tensor, target: torch.Tensor) -> SlimTikInfo:
    """``SlimTik.step`` on the sample side (inputs already checked for shape and device)."""
    from .optim import SlimTikInfo

    head = slim.head
    Z, C, beta, m = linear_design(head, features, target, slim.reduction)
    reason, skippable = _data_fault(Z, C, beta)
    if reason:
        if skippable and slim.on_nonfinite == "skip":
            return _skipped(slim, m, reason)
        raise ValueError(reason)
    if slim.solver_state is None:
        n_t, n_f = head_shape(head)
        slim.solver_state = SampleSideState(1, n_f, n_t, slim.memory_depth, slim.Lambda0, head.weight.device,
                                            config=slim.config)
    state = slim.solver_state
    snap = state.snapshot() if head.weight.dtype != F64 else None
    try:
        W_new, info = sample_side_step(state, Z, C, beta, m, head_to_matrix(head)[None], config=slim.config,
                                       backend=slim.backend)
    except FloatingPointError as fault:
        if slim.on_nonfinite == "skip":
            return _skipped(slim, m, str(fault))
        raise
    weight, bias = matrix_to_params(head, W_new[0].to(head.weight.dtype))
    fields = [info.lambda_[0], info.Lambda[0], info.sgcv[0], info.rel_residual[0], info.cond[0]]
    finite = torch.isfinite(weight).all() & (torch.isfinite(bias).all() if bias is not None else True)
    lam, Lam, sgcv, rel, cond, ok = torch.stack(fields + [finite.to(F64)]).tolist()
    if not ok:
        if snap is not None:
            state.restore(snap)
        fault = FloatingPointError(f"the new head weights overflow the head's dtype {head.weight.dtype} "
                                   f"(|W| up to {float(W_new.abs().max()):.3g}); head and solver state unchanged")
        if slim.on_nonfinite == "skip":
            return _skipped(slim, m, str(fault))
        raise fault
    head.weight.copy_(weight)
    if bias is not None:
        head.bias.copy_(bias)
    rec = SlimTikInfo(step=slim.n_steps_, lambda_=lam, Lambda=Lam, alpha=Lam / slim.n_steps_, sgcv=sgcv,
                      rel_residual=rel, cond=cond, m=m, backend=info.backend, side="samples")
    slim._record(rec)
    return rec


def _skipped(slim: SlimTik, m: int, reason: str) -> SlimTikInfo:
    """The record of a batch skipped with ``on_nonfinite="skip"`` (nothing else changes)."""
    from .optim import SlimTikInfo

    rec = SlimTikInfo(slim.n_steps_, m=m, side="samples", _owner=slim)
    slim._skip(rec, reason)
    return rec
