"""Exact full-data head refit: ridge regression with λ by exact GCV, from sufficient statistics.

    result = refit_head(body, head, loader)     # head.weight/bias now hold W(μ*) over all of loader
    result.alpha_, result.gcv_

One no-grad pass over ``loader`` accumulates the float64 statistics of the whole data set
(unscaled sums, so a data-parallel run needs one all-reduce of 8·(n_f² + n_t·n_f + 2) bytes)

    G = β² Σ_batches Z Zᵀ  [n_f, n_f],   H = β² Σ C Zᵀ  [n_t, n_f],   c = β² Σ ‖C‖²,   m = Σ m_batch,

with β² = 1/m (``reduction="mean"``) or 1 (``"sum"``). Then one slimTik step through the same
solver kernels with an empty memory, Λ_0 = 0 and W_prev = 0 is exactly the ridge solve
(method.md §6)

    W(μ) = H (G + μI)^{−1},   μ* = argmin GCV(μ) = m ‖res(μ)‖² / (m − n_t Σ_j s_j/(s_j + μ))²,

with s the eigenvalues of G and ‖res(μ)‖² = c − 2 tr(W Hᵀ) + tr(W G Wᵀ). With mean reduction
W(μ) minimises ½·MSE(head(Z), C) + (μ/2)‖W‖² over the whole data set (μ in the scaling of
``nn.MSELoss()``, as ``SlimTik``'s Λ).

Range of μ. The solver searches μ over its admissible interval [Λ_min, min(Λ_max, λ_max)]
(Λ_prev = 0, λ_min = −∞). ``refit_head`` sets it relative to the mean eigenvalue
s̄ = tr(G)/n_f: μ ∈ [``mu_range[0]``·s̄, ``mu_range[1]``·s̄], default [1e-12, 1e3]·s̄. The
lower end keeps (G + μI) at a condition number ≲ 1e12·n_f in float64; the upper end is a
ridge so strong that W is ~1e-3 of the least-squares head. A minimiser at the lower end means
"no ridge needed" (many samples per feature), which is the usual full-data case. Points whose
GCV denominator is not positive are inadmissible (they only occur when m ≤ n_t·n_f, fewer
residuals than unknowns), as in every sGCV step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .config import SolverConfig
from .distributed import all_reduce_statistics, use_data_parallel
from .heads import Reduction, check_head, head_shape, head_statistics, write_matrix_
from .solver import slimtik_step
from .state import SlimTikState

logger = logging.getLogger("slimfast")

__all__ = ["RefitResult", "data_statistics", "refit_head", "ridge_gcv_solve"]

F64 = torch.float64
#: Default search range of μ relative to the mean eigenvalue tr(G)/n_f of the data Gram matrix.
MU_RANGE = (1e-12, 1e3)
#: Grid points in log μ before the root refinement (≈ 8 per decade over the default range).
N_GRID = 129


@dataclass(frozen=True)
class RefitResult:
    """Record of one full-data refit (plain Python numbers).

    Attributes:
        alpha_: the chosen ridge parameter μ* (scaling of ``reduction``, as ``SlimTik``'s Λ).
        gcv_: exact GCV value at μ*.
        rel_residual: ‖W Z − C‖/‖C‖ over the whole data set.
        mu_bounds: (μ_lo, μ_hi), the interval that was searched.
        m: scalar residuals in the data set (all ranks together).
        n_samples: samples seen (all ranks together).
        backend: solver backend that ran the solve.
    """

    alpha_: float
    gcv_: float
    rel_residual: float
    mu_bounds: tuple[float, float]
    m: int
    n_samples: int
    backend: str


@torch.no_grad()
def data_statistics(
    body: nn.Module | None,
    head: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    reduction: Reduction = "mean",
    process_group: Any = None,
    distributed: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """(G, H, c, m, n_samples) of ``head`` over every batch of ``loader``; body in eval mode.

    Features are ``body(x)`` (``x`` itself when ``body`` is None), moved to the head's device.
    Sums are unscaled per batch and scaled once by the whole data set's β² at the end, so
    batch sizes (and a last partial batch) do not matter. Data parallel (``distributed`` as in
    ``SlimTik``): every rank passes its shard and the sums are all-reduced once.

    Returns G [n_f, n_f], H [n_t, n_f], c [] float64 on the head's device, m and n_samples (ints).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    check_head(head)
    n_t, n_f = head_shape(head)
    device = head.weight.device
    G = torch.zeros(n_f, n_f, dtype=F64, device=device)
    H = torch.zeros(n_t, n_f, dtype=F64, device=device)
    c = torch.zeros((), dtype=F64, device=device)
    m, n_samples = 0, 0
    modes = None if body is None else body.training
    if body is not None:
        body.eval()
    try:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            z = x if body is None else body(x)
            G_b, H_b, c_b, m_b = head_statistics(head, z, y, "sum")
            G += G_b
            H += H_b
            c += c_b
            m += int(m_b)
            n_samples += int(x.shape[0]) if x.ndim > 0 else 1
    finally:
        if body is not None:
            body.train(modes)
    if use_data_parallel(distributed, process_group):
        # m travels in the statistics buffer: one all-reduce. Every sample has the same number
        # of scalar residuals (one architecture), so the global sample count follows from m.
        per_sample = m / n_samples if n_samples else 0.0
        G, H, c, m = all_reduce_statistics(G, H, c, m, "sum", process_group)
        n_samples = round(m / per_sample) if per_sample else 0
    if m == 0:
        raise ValueError("loader yielded no samples: cannot refit the head on an empty data set")
    if reduction == "mean":
        G, H, c = G / m, H / m, c / m
    return G, H, c, m, n_samples


def ridge_gcv_solve(
    G: torch.Tensor,
    H: torch.Tensor,
    c: torch.Tensor,
    m: int,
    mu_range: tuple[float, float] = MU_RANGE,
    n_grid: int = N_GRID,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """W(μ*) = H (G + μ*I)^{−1} with μ* minimising exact GCV, for B problems in one slimTik step
    (empty memory, Λ_0 = 0, W_prev = 0).

    Each problem b is first divided by its mean eigenvalue s̄_b = tr(G_b)/n_f (G, H, c all
    scaled by 1/s̄_b: the same W, μ scaled by 1/s̄_b, GCV by 1/s̄_b), so one solver call with
    the shared bounds ``mu_range`` searches μ_b ∈ [lo·s̄_b, hi·s̄_b] for every problem.

    Args:
        G [B, n_f, n_f], H [B, n_t, n_f], c [B]: float64 statistics of whole data sets (scaled);
            unbatched [n_f, n_f], [n_t, n_f], [] also accepted (then the results are unbatched).
        m: scalar residuals per problem.
        mu_range: μ search interval relative to s̄.
        n_grid: log-μ grid points before the root refinement of dGCV/dμ.

    Returns (W [B, n_t, n_f], μ* [B], GCV(μ*) [B], relative residual ‖WZ − C‖/‖C‖ [B], backend).
    """
    lo_rel, hi_rel = (float(v) for v in mu_range)
    if not (0.0 < lo_rel < hi_rel < math.inf):
        raise ValueError(f"mu_range must satisfy 0 < lo < hi < inf, got {mu_range}")
    single = G.ndim == 2
    if single:
        G, H, c = G[None], H[None], c.reshape(1)
    B, n_t, n_f = H.shape
    scale = torch.diagonal(G, dim1=1, dim2=2).sum(1) / n_f
    # all-zero features: W = 0 whatever μ is; any positive scale will do
    scale = torch.where((scale > 0) & torch.isfinite(scale), scale, torch.ones_like(scale))
    config = SolverConfig(mode="sgcv", Lambda_bounds=(lo_rel, hi_rel), lambda_bounds=(-math.inf, hi_rel),
                          n_grid=n_grid)
    state = SlimTikState(B, n_f, n_t, memory_depth=0, Lambda0=0.0, device=G.device)
    W0 = torch.zeros(B, n_t, n_f, dtype=F64, device=G.device)
    W, info = slimtik_step(state, (G / scale[:, None, None]).contiguous(), (H / scale[:, None, None]).contiguous(),
                           (c / scale).contiguous(), m, W0, config=config, backend=backend)
    mu, gcv, rel = info.Lambda * scale, info.sgcv * scale, info.rel_residual
    if single:
        return W[0], mu[0], gcv[0], rel[0], info.backend
    return W, mu, gcv, rel, info.backend


def refit_head(
    body: nn.Module | None,
    head: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    reduction: Reduction = "mean",
    mu_range: tuple[float, float] = MU_RANGE,
    n_grid: int = N_GRID,
    backend: str | None = None,
    process_group: Any = None,
    distributed: bool | None = None,
) -> RefitResult:
    """Replace ``head``'s weights by the exact ridge solution over all of ``loader`` (module docstring).

    Args:
        body: feature extractor (eval mode during the pass; None: the loader yields features).
        head: nn.Linear / nn.Conv2d / nn.ConvTranspose2d (groups = 1); its weight and bias are
            overwritten (the bias is the constant-1 feature, regularised like the weights, as
            in every slimTik step).
        loader: iterable of (x, y) batches, iterated once.
        reduction: scaling of the objective and of ``alpha_`` ("mean" as ``nn.MSELoss()``).
        mu_range, n_grid, backend: search interval of μ (relative to tr(G)/n_f), grid size,
            solver backend.
        process_group, distributed: data parallel as ``SlimTik`` (each rank passes its shard;
            every rank gets the identical head).

    Raises ValueError for an empty loader, FloatingPointError (head untouched) if the solve
    is not finite.
    """
    G, H, c, m, n_samples = data_statistics(body, head, loader, reduction, process_group, distributed)
    W, mu_t, gcv_t, rel_t, name = ridge_gcv_solve(G, H, c, m, mu_range, n_grid, backend)
    mu, gcv, rel = float(mu_t), float(gcv_t), float(rel_t)
    scale = float(torch.diagonal(G).sum()) / G.shape[0]
    scale = scale if scale > 0 and math.isfinite(scale) else 1.0
    bounds = (mu_range[0] * scale, mu_range[1] * scale)
    write_matrix_(head, W.to(head.weight.device))
    logger.info("refit_head: %d samples, mu=%.4g in [%.3g, %.3g], gcv=%.6g, rel_residual=%.4g [%s]", n_samples,
                mu, bounds[0], bounds[1], gcv, rel, name)
    return RefitResult(alpha_=mu, gcv_=gcv, rel_residual=rel, mu_bounds=bounds, m=int(m), n_samples=n_samples,
                       backend=name)
