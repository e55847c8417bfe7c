"""Float64 torch twins of the compiled kernels (method.md §2–4).

Every function here has a compiled counterpart of the same name without the leading
underscore: the step's composition in ``csrc/slimtik_step.h`` (run by the CPU launcher,
``csrc/cpu/slimtik_step_cpu.cpp``, and the CUDA kernel, ``csrc/cuda/slimtik_step_cuda.cu``) and
its leaf functions in ``csrc/slimfast_math.h``. The twins are the reference the tests compare every
backend against, and on CUDA tensors they are the "torch.linalg.eigh (cuSOLVER) + torch
sGCV" baseline of the benchmarks. They follow the kernels step by step: same grid, same
bracket rule, same Illinois root iteration, so backends agree to rounding, not merely to the
tolerance of a minimiser.

Shapes: B problems, n_f features, n_t targets; N trial points per problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .backends.boundary import StepInputs, step_entry
from .config import FLOAT64_EPS, SGCV_DENOMINATOR_EPS, SGCV_NULL_RTOL_PER_FEATURE, SolverConfig

#: Columns of the per-problem info array returned by every backend. ``eig_min`` is the smallest
#: eigenvalue of G_mem over its largest magnitude, before clipping at 0 (< 0 only by rounding
#: for a PSD G_mem; the solver rejects clearly negative values, see validation.INDEFINITE_RTOL).
INFO_FIELDS: tuple[str, ...] = ("lambda_", "Lambda", "sgcv", "rel_residual", "cond", "eig_min")
N_INFO = len(INFO_FIELDS)
#: Trial points per sign in the reference grid (public reference code).
N_REFERENCE_POINTS = 30


@dataclass
class _Projections:
    """Everything the sGCV function needs after the eigendecomposition G_mem = U diag(s) Uᵀ.

    Attributes (per problem b):
        s: [B, n_f] eigenvalues of G_mem, clipped at 0 (G_mem is PSD; rounding is not); those at
            most n_f·ε·s_max (``null_space``) are set to exactly 0, with their columns of B̃ and
            their rows and columns of K̃ (they are rounding noise of a rank-deficient G_mem).
        eig_min: [B] smallest eigenvalue of G_mem before clipping, over max |eigenvalue| (0 if G_mem = 0).
        U: [B, n_f, n_f] eigenvectors as columns.
        Bt, Wt: [B, n_t, n_f]  B̃ = (W G − H) U and W̃ = W U.
        a, b: [B, n_f]  a_j = (B̃ᵀB̃)_jj, b_j = (B̃ᵀW̃)_jj.
        k: [B, n_f]  K̃_jj with K̃ = Uᵀ G U (equals s when the memory holds only G).
        Q0, Q1, Q2: [B, n_f, n_f]  K̃∘B̃ᵀB̃, K̃∘(B̃ᵀW̃ + W̃ᵀB̃), K̃∘W̃ᵀW̃; when K̃ is diagonal
            only their diagonals [B, n_f] are kept (``diagonal=True``).
        res0: [B]  ‖β(W_{k−1} Z_k − C_k)‖² = tr(W G Wᵀ) − 2 tr(W Hᵀ) + c.
    """

    s: torch.Tensor
    eig_min: torch.Tensor
    U: torch.Tensor
    Bt: torch.Tensor
    Wt: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    k: torch.Tensor
    Q0: torch.Tensor
    Q1: torch.Tensor
    Q2: torch.Tensor
    res0: torch.Tensor
    diagonal: bool


def _admissible_interval(Lambda_prev: torch.Tensor, config: SolverConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """[B] bounds of μ = Λ_{k−1} + λ: [max(Λ_min, Λ_{k−1}+λ_min), min(Λ_max, Λ_{k−1}+λ_max)]."""
    Lmin, Lmax = config.Lambda_bounds
    lmin, lmax = config.lambda_bounds
    mu_lo = torch.clamp(Lambda_prev + lmin, min=Lmin) if math.isfinite(lmin) else torch.full_like(Lambda_prev, Lmin)
    mu_hi = torch.clamp(Lambda_prev + lmax, max=Lmax)
    return mu_lo, mu_hi


def _null_space(s: torch.Tensor) -> torch.Tensor:
    """[B, n_f] mask of the eigenvalues s [B, n_f] (ascending, clipped at 0) that count as zero:
    s_j <= SGCV_NULL_RTOL_PER_FEATURE·n_f·s_max."""
    return s <= SGCV_NULL_RTOL_PER_FEATURE * s.shape[-1] * s[:, -1:]


def _eig_min(s_raw: torch.Tensor) -> torch.Tensor:
    """[B] smallest eigenvalue over the largest magnitude of s_raw [B, n_f] (ascending); 0 for 0."""
    scale = torch.maximum(s_raw[:, -1], -s_raw[:, 0])
    return torch.where(scale > 0, s_raw[:, 0] / torch.where(scale > 0, scale, torch.ones_like(scale)),
                       torch.zeros_like(scale))


def _sgcv_precompute(
    G_mem: torch.Tensor, G: torch.Tensor, H: torch.Tensor, c: torch.Tensor, W: torch.Tensor, memory_empty: bool
) -> _Projections:
    """Eigendecompose G_mem [B,n_f,n_f] and project the batch statistics once (method.md §4)."""
    s_raw, U = torch.linalg.eigh(G_mem)
    eig_min = _eig_min(s_raw)
    s = s_raw.clamp_min(0.0)
    null = _null_space(s)
    s = s.masked_fill(null, 0.0)
    keep = (~null).to(s.dtype)
    WG = W @ G
    res0 = (WG * W).sum((1, 2)) - 2.0 * (W * H).sum((1, 2)) + c
    Bt = ((WG - H) @ U) * keep[:, None, :]
    Wt = W @ U
    a = (Bt * Bt).sum(1)
    b = (Bt * Wt).sum(1)
    if memory_empty:
        cw = (Wt * Wt).sum(1)
        return _Projections(s, eig_min, U, Bt, Wt, a, b, s, s * a, 2.0 * s * b, s * cw, res0, diagonal=True)
    K = (U.transpose(1, 2) @ G @ U) * (keep[:, :, None] * keep[:, None, :])
    BW = Bt.transpose(1, 2) @ Wt
    Q0 = K * (Bt.transpose(1, 2) @ Bt)
    Q1 = K * (BW + BW.transpose(1, 2))
    Q2 = K * (Wt.transpose(1, 2) @ Wt)
    k = torch.diagonal(K, dim1=1, dim2=2)
    return _Projections(s, eig_min, U, Bt, Wt, a, b, k, Q0, Q1, Q2, res0, diagonal=False)


def _trace_term(mu: torch.Tensor, p: _Projections) -> torch.Tensor:
    """[B, N] n_t · tr(β² Z_kᵀ (G_mem + μI)^{−1} Z_k) = n_t Σ_j K̃_jj/(s_j + μ) (method.md §4)."""
    return p.Wt.shape[1] * (p.k[:, None] / (p.s[:, None, :] + mu[..., None])).sum(-1)


def _sgcv_eval(
    mu: torch.Tensor, p: _Projections, m: torch.Tensor, Lambda_prev: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """sGCV value, residual and derivative sign at μ [B, N] (method.md §3–4).

    Returns (f, R, g), each [B, N]:
        R(μ) = ‖res(λ)‖² = res0 − 2 Σ_j d_j (a_j + λ b_j) + dᵀ(Q0 + λQ1 + λ²Q2)d,  d = 1/(s + μ), λ = μ − Λ_{k−1}
        f(μ) = m R / (m − n_t T)²,  T = Σ_j K̃_jj d_j   (+inf where μ is inadmissible: the
            denominator D = m − n_t T is ≤ SGCV_DENOMINATOR_EPS·m, method.md §6)
        g(μ) = R' D − 2 R D'  with D = m − n_t T; sign(g) = sign(df/dμ) since D > 0.
    """
    n_t = p.Wt.shape[1]
    lam = mu - Lambda_prev[:, None]
    d = 1.0 / (p.s[:, None, :] + mu[..., None])
    lam3 = lam[..., None]
    if p.diagonal:
        q_lam_d = (p.Q0[:, None] + lam3 * (p.Q1[:, None] + lam3 * p.Q2[:, None])) * d
        q_der_d = (p.Q1[:, None] + 2.0 * lam3 * p.Q2[:, None]) * d
    else:
        Q0d = torch.einsum("bij,bnj->bni", p.Q0, d)
        Q1d = torch.einsum("bij,bnj->bni", p.Q1, d)
        Q2d = torch.einsum("bij,bnj->bni", p.Q2, d)
        q_lam_d = Q0d + lam3 * (Q1d + lam3 * Q2d)
        q_der_d = Q1d + 2.0 * lam3 * Q2d
    a, b, k = p.a[:, None], p.b[:, None], p.k[:, None]
    d2 = d * d
    R = p.res0[:, None] - 2.0 * (d * (a + lam3 * b)).sum(-1) + (d * q_lam_d).sum(-1)
    R_der = 2.0 * (d2 * (a + lam3 * b)).sum(-1) - 2.0 * (d * b).sum(-1) - 2.0 * (d2 * q_lam_d).sum(-1) + (d * q_der_d).sum(-1)
    m2 = m[:, None]
    D = m2 - _trace_term(mu, p)
    D_der = n_t * (k * d2).sum(-1)
    g = R_der * D - 2.0 * R * D_der
    admissible = D > SGCV_DENOMINATOR_EPS * m2
    f = torch.nan_to_num(m2 * R.clamp_min(0.0) / (D * D), nan=math.inf)
    return torch.where(admissible, f, torch.full_like(f, math.inf)), R, g


def _reference_candidates(Lambda_prev: torch.Tensor, config: SolverConfig) -> torch.Tensor:
    """[B, 60] λ trial points of the public reference: ±logspace between eps and the bounds.

    Positive: 30 points from eps to λ_max (Λ_max when λ_max is infinite); negative: 30 points
    from −(Λ_{k−1}/2 − Λ_min) to −eps, dropped (NaN) when Λ_{k−1}/2 ≤ Λ_min.
    """
    lmax = config.lambda_bounds[1] if math.isfinite(config.lambda_bounds[1]) else config.Lambda_bounds[1]
    n = N_REFERENCE_POINTS
    opts = dict(dtype=Lambda_prev.dtype, device=Lambda_prev.device)
    pos = torch.logspace(math.log10(FLOAT64_EPS), math.log10(lmax), n, **opts).expand(Lambda_prev.shape[0], n)
    n_low = Lambda_prev / 2.0 - config.Lambda_bounds[0]
    frac = torch.linspace(0.0, 1.0, n, **opts)
    log_low = torch.log10(n_low.clamp_min(FLOAT64_EPS))[:, None]
    neg = -(10.0 ** (log_low + (math.log10(FLOAT64_EPS) - log_low) * frac))
    neg = torch.where((n_low > 0)[:, None], neg, torch.full_like(neg, math.nan))
    return torch.cat([neg, pos], dim=1)


def _illinois_root(
    ta: torch.Tensor, tb: torch.Tensor, ga: torch.Tensor, gb: torch.Tensor, g_of_t, config: SolverConfig
) -> torch.Tensor:
    """Root of g on [ta, tb] (g(ta) < 0 < g(tb) or the reverse), Illinois regula falsi, [B]."""
    side = torch.zeros_like(ta)
    c_prev = torch.full_like(ta, math.nan)
    c = ta.clone()
    done = torch.zeros_like(ta, dtype=torch.bool)
    for _ in range(config.max_root_iter):
        c_new = (ta * gb - tb * ga) / (gb - ga)
        c_new = torch.minimum(torch.maximum(c_new, torch.minimum(ta, tb)), torch.maximum(ta, tb))
        c = torch.where(done, c, c_new)
        gc = g_of_t(c)
        converged = (gc == 0) | ((c - c_prev).abs() <= config.root_tol * torch.clamp(c.abs(), min=1.0))
        same_as_b = (gc > 0) == (gb > 0)
        upd = ~done & ~converged
        # Illinois: halve the value kept at the endpoint that did not move twice in a row.
        move_b = upd & same_as_b
        move_a = upd & ~same_as_b
        ga = torch.where(move_b & (side == -1), ga / 2, ga)
        gb = torch.where(move_a & (side == 1), gb / 2, gb)
        tb = torch.where(move_b, c, tb)
        gb = torch.where(move_b, gc, gb)
        ta = torch.where(move_a, c, ta)
        ga = torch.where(move_a, gc, ga)
        side = torch.where(move_b, torch.full_like(side, -1), torch.where(move_a, torch.ones_like(side), side))
        c_prev = torch.where(done, c_prev, c)
        done = done | converged
        if bool(done.all()):
            break
    return c


def _select_mu(
    p: _Projections, m: torch.Tensor, Lambda_prev: torch.Tensor, config: SolverConfig, evaluate=None
) -> torch.Tensor:
    """New cumulative regularisation μ = Λ_k [B] according to ``config.mode``; ``evaluate(μ, p, m,
    Lambda_prev) -> (f, R, g)`` is the sGCV function (default ``_sgcv_eval``; the block step's
    ``_block_sgcv_eval`` for its projections)."""
    _sgcv_eval = globals()["_sgcv_eval"] if evaluate is None else evaluate
    mu_lo, mu_hi = _admissible_interval(Lambda_prev, config)
    if config.mode == "constant":
        return torch.minimum(torch.maximum(Lambda_prev + config.lambda_const, mu_lo), mu_hi)
    if config.mode == "reference":
        mu = Lambda_prev[:, None] + _reference_candidates(Lambda_prev, config)
        ok = (mu >= mu_lo[:, None]) & (mu <= mu_hi[:, None])
        f, _, _ = _sgcv_eval(torch.where(ok, mu, mu_lo[:, None]), p, m, Lambda_prev)
        f = torch.where(ok, f, torch.full_like(f, math.inf))
        best = torch.gather(mu, 1, f.argmin(1, keepdim=True))[:, 0]
        fallback = torch.minimum(torch.maximum(Lambda_prev, mu_lo), mu_hi)
        return torch.where(torch.isfinite(f).any(1), best, fallback)

    n = config.n_grid
    t_lo, t_hi = torch.log(mu_lo), torch.log(mu_hi)
    frac = torch.linspace(0.0, 1.0, n, dtype=mu_lo.dtype, device=mu_lo.device)
    t_grid = t_lo[:, None] + (t_hi - t_lo)[:, None] * frac
    f, _, g_grid = _sgcv_eval(torch.exp(t_grid), p, m, Lambda_prev)
    i = f.argmin(1)
    rows = torch.arange(i.shape[0], device=i.device)
    t_best, g_best = t_grid[rows, i], g_grid[rows, i]
    i_left, i_right = (i - 1).clamp_min(0), (i + 1).clamp_max(n - 1)
    # The minimum lies on the side where dsGCV/dμ points downhill from the best grid point.
    go_left = (i > 0) & (g_best > 0)
    go_right = (i < n - 1) & (g_best < 0)
    i_other = torch.where(go_left, i_left, i_right)
    t_other, g_other = t_grid[rows, i_other], g_grid[rows, i_other]
    bracketed = (go_left & (g_other < 0)) | (go_right & (g_other > 0))
    # Both ends admissible (an inadmissible point's g is not the sign of dsGCV/dμ). D grows with
    # μ, so the whole bracket is then admissible.
    f_best, f_other = f[rows, i], f[rows, i_other]
    bracketed &= (t_hi > t_lo) & (f_best < math.inf) & (f_other < math.inf)

    def g_of_t(t: torch.Tensor) -> torch.Tensor:
        return _sgcv_eval(torch.exp(t)[:, None], p, m, Lambda_prev)[2][:, 0]

    t_star = t_best
    if bool(bracketed.any()):
        root = _illinois_root(t_other, t_best, g_other, g_best, g_of_t, config)
        t_star = torch.where(bracketed, root, t_best)
    return torch.minimum(torch.maximum(torch.exp(t_star), mu_lo), mu_hi)


@step_entry
def _slimtik_step(inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """One slimTik step for B problems (method.md §2.3 with λ from §3).

    Args: those of ``StepInputs`` (G_mem: [B, n_f, n_f] memory Gram matrix
    β²Σ_{j=k−r..k} Z_j Z_jᵀ, current batch included; G: [B, n_f, n_f] β² Z_k Z_kᵀ;
    H: [B, n_t, n_f] β² C_k Z_kᵀ; c: [B] β²‖C_k‖²; m: [B] scalar residuals m_k; W: [B, n_t, n_f]
    W_{k−1}; Lambda_prev: [B] Λ_{k−1}; memory_empty: G_mem is G alone, so Uᵀ G U = diag(s); config).

    Returns:
        W_new [B, n_t, n_f] = W − (B + λW)(G_mem + Λ_k I)^{−1}, and info [B, 6] with columns
        ``INFO_FIELDS``: λ_k, Λ_k, sGCV(λ_k), ‖res(λ_k)‖/‖βC_k‖, (s_max + Λ_k)/(s_min + Λ_k),
        s_min/max|s| of G_mem before clipping.
    """
    if inputs.blocks is not None:
        from ._torch_block import _slimtik_block_step   # it builds on this module

        return _slimtik_block_step(inputs)
    G_mem, G, H, c, m, W, Lambda_prev = (inputs.G_mem, inputs.G, inputs.H, inputs.c, inputs.m, inputs.W,
                                         inputs.Lambda_prev)
    memory_empty, config = inputs.memory_empty, inputs.config
    p = _sgcv_precompute(G_mem, G, H, c, W, memory_empty)
    mu = _select_mu(p, m, Lambda_prev, config)
    f, R, _ = _sgcv_eval(mu[:, None], p, m, Lambda_prev)
    lam = mu - Lambda_prev
    d = 1.0 / (p.s + mu[:, None])
    W_new = W - ((p.Bt + lam[:, None, None] * p.Wt) * d[:, None, :]) @ p.U.transpose(1, 2)
    rel = torch.where(c > 0, torch.sqrt(R[:, 0].clamp_min(0.0) / torch.where(c > 0, c, torch.ones_like(c))), torch.zeros_like(c))
    cond = (p.s[:, -1] + mu) / (p.s[:, 0] + mu)
    info = torch.stack([lam, mu, f[:, 0], rel, cond, p.eig_min], dim=1)
    return W_new, info
