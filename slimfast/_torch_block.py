"""Float64 torch twin of the block-structured step (method.md §6 "Phase blocks").

Compiled counterpart: ``slimtik_block_step`` of every backend (``csrc/slimtik_block_step.h`` for
the C++ ones). The features come in contiguous diagonal blocks (``BlockLayout``), optionally
followed by one border feature (a head's bias) that couples to all of them:

    G_mem = [[blockdiag(G_1, …, G_P), g],      G the same, for the batch
             [gᵀ,                     α]]

Entries between different blocks are structural zeros and are never read. With
G_p = U_p diag(s_p) U_pᵀ per block and P = blockdiag(U_1, …, U_P) ⊕ 1, G_mem in the basis P is
an arrowhead matrix [[S, z], [zᵀ, α]] (z = Uᵀg), whose inverse is a diagonal plus rank one
(Schur complement on the border):

    A(μ) = (G_mem + μI)⁻¹ = P (D̂ + u uᵀ/σ) Pᵀ,   D̂ = diag(d, 0),  d = 1/(s + μ),
    e = d∘z,  u = (−e, 1),  σ(μ) = α + μ − z·e.

For every trial μ (λ = μ − Λ_{k−1}), with B' = (W G − H)P, W' = WP, G' = PᵀGP (its diagonal
blocks K_p = U_pᵀ G_p U_p, border k_b = Uᵀ g_batch, corner γ) and X = B' + λW':

    Y = X A                                   (the step: W(λ) = W − Y Pᵀ)
    R(μ) = res₀ − 2⟨Y, B'⟩ + ⟨Y, Y G'⟩         ‖res(λ)‖², as method.md §4
    R'(μ) = 2⟨(W' − Y) A, Y G' − B'⟩
    T(μ) = tr(A G') = Σ_j d_j K_jj + uᵀG'u/σ
    T'(μ) = −tr(A G' A) = −(Σ_j d_j² K_jj + 2 (D̂u)ᵀG'u/σ + (uᵀu)(uᵀG'u)/σ²)

and sGCV, its admissibility and the sign g = R'D − 2RD' (D = m − n_t T) are those of the dense
step, so the λ search (grid, bracket, Illinois root) is the same code. Each μ costs
O(n_t Σ_p n_p²) instead of O(n_f²), and the eigendecompositions O(Σ_p n_p³) instead of O(n_f³).

As in the dense step, block eigenvalues at most n_f·ε·s_max are exactly 0 and their coordinates
of B', K and z (0 in exact arithmetic: such a direction is in the null space of G_mem) are
dropped. ``eig_min`` and ``cond`` in the info row describe the block-diagonal part with the
border's corner α as one more 1 × 1 block (the arrowhead's own eigenvalues are never formed).

Shapes: B problems, n_f = Σ_p n_p (+1 with a border) features, n_t targets, N trial points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._torch_impl import _select_mu
from .backends.boundary import BlockLayout, StepInputs
from .config import SGCV_DENOMINATOR_EPS, SGCV_NULL_RTOL_PER_FEATURE

__all__ = ["_slimtik_block_step"]


@dataclass
class _BlockProjections:
    """What every trial μ reads, per problem b (core = the n_c = Σ n_p block features).

    Attributes:
        s: [B, n_c] block eigenvalues of G_mem, clipped at 0, null ones exactly 0.
        U: [B, n_c, n_c] blockdiag(U_1, …, U_P), eigenvectors as columns.
        z: [B, n_c] Uᵀ g (memory border in the block basis; 0 without a border).
        alpha: [B] memory corner α (0 without a border).
        K: [B, n_c, n_c] blockdiag(U_pᵀ G_p U_p) of the batch (zero between blocks).
        kb: [B, n_c] Uᵀ g_batch;  gamma: [B] batch corner.
        Bt, Wt: [B, n_t, n_f] (W G − H)P and WP (border column last).
        res0: [B] ‖β(W Z − C)‖².
        border: whether the layout has the border feature.
    """

    s: torch.Tensor
    U: torch.Tensor
    z: torch.Tensor
    alpha: torch.Tensor
    K: torch.Tensor
    kb: torch.Tensor
    gamma: torch.Tensor
    Bt: torch.Tensor
    Wt: torch.Tensor
    res0: torch.Tensor
    border: bool


def _block_eigh(G_mem: torch.Tensor, layout: BlockLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of the diagonal blocks of G_mem [B, n_f, n_f]: s_raw [B, n_c] (ascending within
    each block, blocks in order) and blockdiag(U_p) [B, n_c, n_c]."""
    B, n_c = G_mem.shape[0], layout.n_core
    s = G_mem.new_zeros(B, n_c)
    U = G_mem.new_zeros(B, n_c, n_c)
    for lo, hi in layout.ranges():
        s[:, lo:hi], U[:, lo:hi, lo:hi] = torch.linalg.eigh(G_mem[:, lo:hi, lo:hi])
    return s, U


def _block_diagonal(G: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """The diagonal blocks of G [B, n_f, n_f] as a [B, n_c, n_c] matrix, zero between blocks."""
    out = G.new_zeros(G.shape[0], layout.n_core, layout.n_core)
    for lo, hi in layout.ranges():
        out[:, lo:hi, lo:hi] = G[:, lo:hi, lo:hi]
    return out


def _block_precompute(G_mem: torch.Tensor, G: torch.Tensor, H: torch.Tensor, c: torch.Tensor, W: torch.Tensor,
                      layout: BlockLayout) -> tuple[_BlockProjections, torch.Tensor, torch.Tensor]:
    """Per-block eigendecompositions and projections. Returns the projections, eig_min [B] and
    the blocks' largest eigenvalue s_top [B] (for ``cond``)."""
    n_c, n_f = layout.n_core, layout.n_features
    s_raw, U = _block_eigh(G_mem, layout)
    zero = G_mem.new_zeros(G_mem.shape[0])
    alpha = G_mem[:, n_c, n_c] if layout.border else zero
    top = torch.maximum(s_raw.max(1).values, alpha)
    scale = torch.maximum(top, -s_raw.min(1).values)
    low = torch.minimum(s_raw.min(1).values, alpha) if layout.border else s_raw.min(1).values
    eig_min = torch.where(scale > 0, low / torch.where(scale > 0, scale, torch.ones_like(scale)), zero)
    s = s_raw.clamp_min(0.0)
    null = s <= SGCV_NULL_RTOL_PER_FEATURE * n_f * top[:, None]
    s = s.masked_fill(null, 0.0)
    keep = (~null).to(s.dtype)
    WG = W @ G
    res0 = (WG * W).sum((1, 2)) - 2.0 * (W * H).sum((1, 2)) + c
    Bt, Wt = (WG - H).clone(), W.clone()
    Bt[:, :, :n_c] = (Bt[:, :, :n_c] @ U) * keep[:, None, :]
    Wt[:, :, :n_c] = Wt[:, :, :n_c] @ U
    K = (U.mT @ _block_diagonal(G, layout) @ U) * (keep[:, :, None] * keep[:, None, :])
    if layout.border:
        z = (U.mT @ G_mem[:, :n_c, n_c, None])[..., 0] * keep
        kb = (U.mT @ G[:, :n_c, n_c, None])[..., 0] * keep
        gamma = G[:, n_c, n_c]
    else:
        z, kb, gamma = s.new_zeros(s.shape), s.new_zeros(s.shape), zero
    p = _BlockProjections(s, U, z, alpha, K, kb, gamma, Bt, Wt, res0, layout.border)
    return p, eig_min, top


def _times_gram(p: _BlockProjections, Y: torch.Tensor) -> torch.Tensor:
    """Y G' for Y [B, N, n_t, n_f] (G' in the block basis: K, border kb, corner γ)."""
    n_c = p.s.shape[1]
    core = Y[..., :n_c] @ p.K[:, None]
    if not p.border:
        return core
    yb = Y[..., n_c:]
    core = core + yb * p.kb[:, None, None, :]
    bias = (Y[..., :n_c] * p.kb[:, None, None, :]).sum(-1, keepdim=True) + yb * p.gamma[:, None, None, None]
    return torch.cat([core, bias], dim=-1)


def _apply_inverse(p: _BlockProjections, X: torch.Tensor, d: torch.Tensor, e: torch.Tensor,
                   sigma: torch.Tensor) -> torch.Tensor:
    """X (D̂ + u uᵀ/σ) for rows X [B, N, n_t, n_f]; d, e [B, N, n_c], σ [B, N]."""
    n_c = p.s.shape[1]
    core = X[..., :n_c] * d[:, :, None, :]
    if not p.border:
        return core
    xu = (X[..., n_c:] - (X[..., :n_c] * e[:, :, None, :]).sum(-1, keepdim=True)) / sigma[:, :, None, None]
    return torch.cat([core - xu * e[:, :, None, :], xu], dim=-1)


def _block_terms(mu: torch.Tensor, p: _BlockProjections, Lambda_prev: torch.Tensor):
    """Y [B, N, n_t, n_f] and R, R', T, T' [B, N] at trial points μ [B, N] (module docstring)."""
    lam = (mu - Lambda_prev[:, None])[:, :, None, None]
    d = 1.0 / (p.s[:, None, :] + mu[..., None])
    kdiag = torch.diagonal(p.K, dim1=1, dim2=2)[:, None, :]
    T = (d * kdiag).sum(-1)
    T_der = -(d * d * kdiag).sum(-1)
    if p.border:
        e = d * p.z[:, None, :]
        sigma = p.alpha[:, None] + mu - (p.z[:, None, :] * e).sum(-1)
        Ke = e @ p.K.mT                                        # [B, N, n_c] K e (K symmetric)
        Gu_core = p.kb[:, None, :] - Ke                        # (G'u)_core
        uGu = (e * Ke).sum(-1) - 2.0 * (e * p.kb[:, None, :]).sum(-1) + p.gamma[:, None]
        dDu_Gu = -(d * e * Gu_core).sum(-1)                    # (D̂u)ᵀ G'u
        uu = (e * e).sum(-1) + 1.0
        T = T + uGu / sigma
        T_der = T_der - (2.0 * dDu_Gu / sigma + uu * uGu / (sigma * sigma))
    else:
        e = d.new_zeros(d.shape)
        sigma = mu.new_ones(mu.shape)
    Bt, Wt = p.Bt[:, None], p.Wt[:, None]
    Y = _apply_inverse(p, Bt + lam * Wt, d, e, sigma)
    YG = _times_gram(p, Y)
    R = p.res0[:, None] - 2.0 * (Y * Bt).sum((2, 3)) + (Y * YG).sum((2, 3))
    V = _apply_inverse(p, Wt - Y, d, e, sigma)
    R_der = 2.0 * (V * (YG - Bt)).sum((2, 3))
    return Y, R, R_der, T, T_der


def _block_sgcv_eval(mu: torch.Tensor, p: _BlockProjections, m: torch.Tensor, Lambda_prev: torch.Tensor):
    """(f, R, g) [B, N] at μ [B, N]: the dense ``_sgcv_eval``'s definitions from the block terms."""
    n_t = p.Bt.shape[1]
    _, R, R_der, T, T_der = _block_terms(mu, p, Lambda_prev)
    m2 = m[:, None]
    D = m2 - n_t * T
    D_der = -n_t * T_der
    g = R_der * D - 2.0 * R * D_der
    admissible = D > SGCV_DENOMINATOR_EPS * m2
    f = torch.nan_to_num(m2 * R.clamp_min(0.0) / (D * D), nan=math.inf)
    return torch.where(admissible, f, torch.full_like(f, math.inf)), R, g


def _slimtik_block_step(inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """One slimTik step for B problems whose Gram matrices have ``inputs.blocks``' structure.

    Args: those of ``StepInputs`` (G_mem, G: [B, n_f, n_f], read only on the diagonal blocks and
    the border; H, W: [B, n_t, n_f]; c, m, Lambda_prev: [B]; config), ``inputs.blocks`` set.

    Returns:
        W_new [B, n_t, n_f] and info [B, 6] as ``_torch_impl._slimtik_step`` (the same W_new, λ,
        sGCV and residual to rounding; ``cond`` and ``eig_min`` of the blocks, module docstring).
    """
    layout = inputs.blocks
    if layout is None:
        raise ValueError("_slimtik_block_step needs inputs.blocks")
    p, eig_min, top = _block_precompute(inputs.G_mem, inputs.G, inputs.H, inputs.c, inputs.W, layout)
    m, Lambda_prev, c = inputs.m, inputs.Lambda_prev, inputs.c
    mu = _select_mu(p, m, Lambda_prev, inputs.config, evaluate=_block_sgcv_eval)
    Y, R, _, _, _ = _block_terms(mu[:, None], p, Lambda_prev)
    f, _, _ = _block_sgcv_eval(mu[:, None], p, m, Lambda_prev)
    Y = Y[:, 0]
    n_c = layout.n_core
    W_new = inputs.W.clone()
    W_new[:, :, :n_c] -= Y[:, :, :n_c] @ p.U.mT
    if layout.border:
        W_new[:, :, n_c:] -= Y[:, :, n_c:]
    lam = mu - Lambda_prev
    rel = torch.where(c > 0, torch.sqrt(R[:, 0].clamp_min(0.0) / torch.where(c > 0, c, torch.ones_like(c))),
                      torch.zeros_like(c))
    s_low = torch.minimum(p.s.min(1).values, p.alpha) if layout.border else p.s.min(1).values
    cond = (top + mu) / (s_low.clamp_min(0.0) + mu)
    info = torch.stack([lam, mu, f[:, 0], rel, cond, eig_min], dim=1)
    return W_new, info
