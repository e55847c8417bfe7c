"""The sample side's step without an eigendecomposition: solves with the shifted kernel matrix.

A wide head's memory M = [β_{k−r}Z_{k−r}, …, β_kZ_k] [n_f, N] has N < n_f columns and
G_mem = MMᵀ. With K = MᵀM [N, N], the push-through identity (G_mem + μI)⁻¹M = M(K + μI)⁻¹ and
Woodbury's (G_mem + μI)⁻¹ = (I − M(K + μI)⁻¹Mᵀ)/μ give every quantity of the step from solves
with K + μI. With Mz = β_kZ_k = M S (S: the last n_b columns of I_N), A = MᵀMz = K S [N, n_b], the
batch residual at W_{k−1} R0 = W Mz − βC [n_t, n_b] and WM = W M [n_t, N]:

    E(λ) M = R0 Aᵀ + λ WM                         (E = W G_k − H_k + λW = R0 Mzᵀ + λW)
    res(λ) = R0 − E M (K + μI)⁻¹ S
    tr(Mzᵀ(G_mem + μI)⁻¹Mz) = tr(Aᵀ(K + μI)⁻¹S)
    W_k = (Λ_{k−1}/μ) W + X Mᵀ,   X = ((λ/μ) WM − R0 Sᵀ)(K + μI)⁻¹   [n_t, N]

(μ = Λ_{k−1} + λ; nothing but the λW part of the update is divided by μ, so a small μ costs no
cancellation in the residual or the trace), with λ chosen by the dense step's sGCV search
(``_select_mu``) on this residual and trace. The cpp kernel (``_cpu.sample_side_woodbury_step``,
csrc/cpu/sample_side_cpu.h) tridiagonalises K once and solves with T + μI per trial point: no
eigenvectors, which were the sample side's largest cost (benchmarks/RESULTS.md, "Wide heads").
``_sample_side_woodbury_step`` is its float64 torch twin (a Cholesky solve with K + μI per trial
point).

Shapes: B problems, N memory columns (this batch's n_b last), n_t targets.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from ._torch_impl import _select_mu
from .config import SGCV_DENOMINATOR_EPS, SolverConfig

__all__ = ["takes_woodbury", "woodbury_step"]

F64 = torch.float64
logger = logging.getLogger("slimfast")


class _KernelSide:
    """What every trial μ reads: K [B, N, N], A [B, N, n_b], S [N, n_b], R0 [B, n_t, n_b],
    WM [B, n_t, N] and R0 Aᵀ [B, n_t, N]."""

    def __init__(self, K: torch.Tensor, A: torch.Tensor, R0: torch.Tensor, WM: torch.Tensor) -> None:
        N, n_b = A.shape[-2:]
        self.K, self.A, self.R0, self.WM = K, A, R0, WM
        self.S = torch.eye(N, dtype=F64, device=K.device)[:, N - n_b:]
        self.EM0 = R0 @ A.mT


def _woodbury_sgcv(mu: torch.Tensor, p: _KernelSide, m: torch.Tensor, Lambda_prev: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(f, R, g) at μ [B, P] as ``_sgcv_eval``: f = m R/D², R = ‖res(λ)‖², g = R'D − 2RD' with
    D = m − n_t·trace (f = +inf where D ≤ SGCV_DENOMINATOR_EPS·m). With Ys = (K + μI)⁻¹S and
    A = K S, (K + μI)⁻¹A = S − μYs, so trace = tr(Aᵀ(K + μI)⁻¹S) = n_b − μ⟨S, Ys⟩ and
    trace' = μ‖Ys‖² − ⟨S, Ys⟩; res' = −(WM − E M (K + μI)⁻¹)(K + μI)⁻¹S."""
    n_t, n_b = p.R0.shape[1:]
    eye = torch.eye(p.K.shape[-1], dtype=F64, device=p.K.device)
    L = torch.linalg.cholesky(p.K[:, None] + mu[..., None, None] * eye)   # [B, P, N, N]
    lam = (mu - Lambda_prev[:, None])[..., None, None]
    S = p.S.expand(*L.shape[:2], -1, -1)
    Ys = torch.cholesky_solve(S, L)                                      # (K + μI)⁻¹S
    EM = p.EM0[:, None] + lam * p.WM[:, None]
    q = torch.cholesky_solve(EM.mT, L)                                   # (K + μI)⁻¹(E M)ᵀ
    pw = torch.cholesky_solve(p.WM[:, None].expand(-1, mu.shape[1], -1, -1).mT, L)
    q2 = torch.cholesky_solve(q, L)
    res = p.R0[:, None] - q.mT @ S
    res_der = (q2 - pw).mT @ S
    R, R_der = (res * res).sum((-1, -2)), 2.0 * (res * res_der).sum((-1, -2))
    sy, yy = (S * Ys).sum((-1, -2)), (Ys * Ys).sum((-1, -2))
    m2 = m[:, None]
    D = m2 - n_t * (n_b - mu * sy)
    D_der = -n_t * (mu * yy - sy)
    g = R_der * D - 2.0 * R * D_der
    f = torch.nan_to_num(m2 * R.clamp_min(0.0) / (D * D), nan=math.inf)
    return torch.where(D > SGCV_DENOMINATOR_EPS * m2, f, torch.full_like(f, math.inf)), R, g


def _sample_side_woodbury_step(
    K: torch.Tensor, A: torch.Tensor, R0: torch.Tensor, WM: torch.Tensor, c: torch.Tensor, m: torch.Tensor,
    Lambda_prev: torch.Tensor, config: SolverConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 torch twin of ``_cpu.sample_side_woodbury_step`` (module docstring).

    Args:
        K: [B, N, N] MᵀM; A: [B, N, n_b] MᵀMz; R0: [B, n_t, n_b] W Mz − βC; WM: [B, n_t, N] W M;
        c: [B] β²‖C‖²; m: [B] scalar residuals; Lambda_prev: [B] Λ_{k−1}.

    Returns:
        X [B, n_t, N] (W_k = (Λ_{k−1}/μ)W + X Mᵀ) and info [B, 6] as the dense step's, with
        cond = (s_max + μ)/μ and eig_min = 0 (G_mem has rank ≤ N < n_f).
    """
    p = _KernelSide(K, A, R0, WM)
    mu = _select_mu(p, m, Lambda_prev, config, evaluate=_woodbury_sgcv)
    f, R, _ = _woodbury_sgcv(mu[:, None], p, m, Lambda_prev)
    lam = mu - Lambda_prev
    eye = torch.eye(K.shape[-1], dtype=F64, device=K.device)
    rhs = (lam / mu)[:, None, None] * WM - R0 @ p.S.mT
    X = torch.linalg.solve(K + mu[:, None, None] * eye, rhs.mT).mT
    rel = torch.where(c > 0, torch.sqrt(R[:, 0].clamp_min(0.0) / torch.where(c > 0, c, torch.ones_like(c))),
                      torch.zeros_like(c))
    s_max = torch.linalg.eigvalsh(K)[:, -1].clamp_min(0.0)
    info = torch.stack([lam, mu, f[:, 0], rel, (s_max + mu) / mu, torch.zeros_like(mu)], dim=1)
    return X, info


def takes_woodbury(name: str, module: Any, N: int, n_f: int) -> bool:
    """Whether the backend ``name`` steps through the tridiagonal route: the cpp kernel, for a
    memory of fewer columns than features (else G_mem may have full rank and the route's
    W_k = (Λ_{k−1}/μ)W + XMᵀ would be a difference of large terms)."""
    return name == "cpp" and N < n_f and hasattr(getattr(module, "_cpu", None), "sample_side_woodbury_step")


def woodbury_step(
    module: Any, K: torch.Tensor, A: torch.Tensor, R0: torch.Tensor, WM: torch.Tensor, c: torch.Tensor,
    m: torch.Tensor, Lambda_prev: torch.Tensor, config: SolverConfig,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(X [B, n_t, N], info [B, 6]) of ``_sample_side_woodbury_step`` by the cpp kernel (CPU
    float64 tensors of the shapes given there), or None when rounding left some K + μI of a
    problem not positive definite (K's scale far beyond μ/ε): the caller then decomposes K."""
    B, N, n_b = A.shape
    n_t = R0.shape[1]
    args = [t.contiguous() for t in (K, A, R0, WM, c, m, Lambda_prev)]
    X = K.new_empty(B, n_t, N)
    info = K.new_empty(B, 6)
    declined = module._cpu.sample_side_woodbury_step(B, N, n_b, n_t, *(t.data_ptr() for t in args),
                                                     module._kernel_options(config), X.data_ptr(), info.data_ptr())
    if declined:
        logger.debug("sample side: K + μI of problem %d not positive definite in float64; eigendecomposition instead",
                     declined - 1)
        return None
    return X, info
