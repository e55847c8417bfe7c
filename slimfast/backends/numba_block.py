"""numba CPU block-structured slimTik step: the float64 torch twin, one problem per thread.

``slimtik_block_step`` has the semantics of ``slimfast._torch_block._slimtik_block_step`` and
follows it step by step, as ``numba_backend`` follows the dense twin: ``_block_precompute``
mirrors ``_block_precompute`` (per-block eigendecomposition, null masking, projections),
``_block_terms`` and ``_block_sgcv_eval`` the twin's functions of the same names for one μ,
and the λ search is the dense step's own ``numba_backend._select_mu`` (grid, bracket, Illinois
root), reached through the ``_sgcv_at`` overload for ``_BlockProjections``.

Layout: features in contiguous diagonal blocks, block p at [offsets[p], offsets[p+1]) (offsets
[P+1], offsets[P] = n_c), then one border feature at n_c when ``border``. Entries of G_mem and
G between different blocks are never read. Per-block matrices (U_p, K_p) are packed row-major
one after the other in flat arrays, block p from ``packed[p]`` = Σ_{q<p} n_q².

numba's cache tracks only the file of a cached function: this module's entry points cache the
λ search of numba_backend.py with them, so after editing that file delete this module's cache
(``__pycache__/numba_block.*.nbi``) or the block step keeps the old search (numba issue #1833).
"""

from __future__ import annotations

import math
from collections import namedtuple

import numba
import numpy as np
import torch
from numba.extending import overload

from .._torch_impl import N_INFO
from .boundary import StepInputs
from .numba_backend import _as_array, _fmax, _fmin, _is_projections, _jit, _run_batch, _scalars, _select_mu, \
    _sgcv_at, _sgcv_value

__all__ = ["slimtik_block_step"]

#: What every trial μ reads for one problem (twin: ``_torch_block._BlockProjections``); the last
#: five fields are per-μ scratch, written by ``_block_terms`` (Y at the last μ is the step).
#:   s, z, kb [n_c]: block eigenvalues (null ones 0), Uᵀg, Uᵀg_batch;  alpha, gamma: corners;
#:   K: packed blocks U_pᵀ G_p U_p (masked);  offsets [P+1], packed [P];  border: bool;
#:   Bt, Wt [n_t, n_f]: (W G − H)P, WP;  res0: ‖β(W Z − C)‖²;
#:   d, e, Ke [n_c] and X, Y, YG, V [n_t, n_f]: scratch.
_BlockProjections = namedtuple("_BlockProjections", (
    "s", "z", "kb", "alpha", "gamma", "K", "offsets", "packed", "border", "Bt", "Wt", "res0",
    "d", "e", "Ke", "X", "Y", "YG", "V",
))  # fmt: skip


@_jit()
def _packed_offsets(offsets):
    """[P] start of each block's n_p × n_p matrix in a packed array, and the total Σ n_p²."""
    P = offsets.shape[0] - 1
    packed = np.empty(P, dtype=np.int64)
    total = 0
    for p in range(P):
        packed[p] = total
        n = offsets[p + 1] - offsets[p]
        total += n * n
    return packed, total


@_jit()
def _block_precompute(G_mem, G, H, c, W, offsets, border, null_rtol):
    """Per-block eigendecompositions and projections for one problem (twin ``_block_precompute``).

    G_mem, G [n_f, n_f] (only the diagonal blocks and the border read), H, W [n_t, n_f], c.
    Returns (proj, U packed [Σ n_p²] with the eigenvectors as columns of each block, eig_min,
    top = max(s_max, α)). Eigenvalues ≤ null_rtol·n_f·top are 0, and their coordinates of B', K,
    z and k_b are dropped. np.linalg.eigh runs inside the jitted code here (the dense step calls
    torch outside it, because numba's LAPACK wrapper aborts when it cannot allocate a workspace):
    a block's workspace is O(n_p²), allocated next to the O(n_p²) copies made here anyway.
    """
    n_t, n_f = W.shape
    P = offsets.shape[0] - 1
    n_c = offsets[P]
    packed, total = _packed_offsets(offsets)
    s = np.empty(n_c)
    U = np.empty(total)
    K = np.empty(total)
    for p in range(P):
        lo, hi = offsets[p], offsets[p + 1]
        w, v = np.linalg.eigh(np.ascontiguousarray(G_mem[lo:hi, lo:hi]))  # ascending within the block
        s[lo:hi] = w
        U[packed[p]:packed[p] + (hi - lo) ** 2] = np.ascontiguousarray(v).ravel()
    alpha = G_mem[n_c, n_c] if border else 0.0
    s_max, s_min = s.max(), s.min()
    top = _fmax(s_max, alpha)
    scale = _fmax(top, -s_min)
    low = _fmin(s_min, alpha) if border else s_min
    eig_min = low / scale if scale > 0 else 0.0
    keep = np.empty(n_c)
    null_tol = null_rtol * n_f * top
    for j in range(n_c):
        if s[j] < 0.0:
            s[j] = 0.0
        keep[j] = 0.0 if s[j] <= null_tol else 1.0
        s[j] *= keep[j]
    # W G from the blocks and the border only (G is zero between blocks).
    WG = np.zeros((n_t, n_f))
    for p in range(P):
        lo, hi = offsets[p], offsets[p + 1]
        WG[:, lo:hi] = np.ascontiguousarray(W[:, lo:hi]) @ np.ascontiguousarray(G[lo:hi, lo:hi])
    if border:
        for t in range(n_t):
            acc = W[t, n_c] * G[n_c, n_c]
            for i in range(n_c):
                WG[t, i] += W[t, n_c] * G[n_c, i]
                acc += W[t, i] * G[i, n_c]
            WG[t, n_c] = acc
    acc_wg, acc_wh = 0.0, 0.0
    for t in range(n_t):
        for j in range(n_f):
            acc_wg += WG[t, j] * W[t, j]
            acc_wh += W[t, j] * H[t, j]
    res0 = acc_wg - 2.0 * acc_wh + c
    Bt = WG - H
    Wt = W.copy()
    z = np.zeros(n_c)
    kb = np.zeros(n_c)
    for p in range(P):
        lo, hi = offsets[p], offsets[p + 1]
        n = hi - lo
        Up = U[packed[p]:packed[p] + n * n].reshape((n, n))
        Bt[:, lo:hi] = np.ascontiguousarray(Bt[:, lo:hi]) @ Up
        Wt[:, lo:hi] = np.ascontiguousarray(Wt[:, lo:hi]) @ Up
        Kp = np.ascontiguousarray(Up.T) @ (np.ascontiguousarray(G[lo:hi, lo:hi]) @ Up)
        for i in range(n):
            for j in range(n):
                K[packed[p] + i * n + j] = Kp[i, j] * keep[lo + i] * keep[lo + j]
        if border:
            for j in range(n):
                zj, kj = 0.0, 0.0
                for i in range(n):
                    zj += Up[i, j] * G_mem[lo + i, n_c]
                    kj += Up[i, j] * G[lo + i, n_c]
                z[lo + j] = zj * keep[lo + j]
                kb[lo + j] = kj * keep[lo + j]
    for t in range(n_t):
        for j in range(n_c):
            Bt[t, j] *= keep[j]
    gamma = G[n_c, n_c] if border else 0.0
    proj = _BlockProjections(s, z, kb, alpha, gamma, K, offsets, packed, border, Bt, Wt, res0,
                             np.empty(n_c), np.zeros(n_c), np.empty(n_c), np.empty((n_t, n_f)),
                             np.empty((n_t, n_f)), np.empty((n_t, n_f)), np.empty((n_t, n_f)))
    return proj, U, eig_min, top


@_jit()
def _kblock(p, q):
    """(lo, hi, K_q) of block q: its feature range and its n_q × n_q matrix as a view of p.K."""
    lo, hi = p.offsets[q], p.offsets[q + 1]
    n = hi - lo
    return lo, hi, p.K[p.packed[q]:p.packed[q] + n * n].reshape((n, n))


@_jit()
def _times_k(p, x, out):
    """out = K x for x [n_c] (K block diagonal, packed, symmetric), by BLAS per block."""
    for q in range(p.offsets.shape[0] - 1):
        lo, hi, Kq = _kblock(p, q)
        out[lo:hi] = Kq @ x[lo:hi]


@_jit()
def _times_gram(p, Y, out):
    """out = Y G' for rows Y [n_t, n_f] (G' in the block basis: K, border k_b, corner γ)."""
    n_t = Y.shape[0]
    n_c = p.s.shape[0]
    for q in range(p.offsets.shape[0] - 1):
        lo, hi, Kq = _kblock(p, q)
        out[:, lo:hi] = np.ascontiguousarray(Y[:, lo:hi]) @ Kq
    if not p.border:
        return
    for t in range(n_t):
        yb = Y[t, n_c]
        bias = yb * p.gamma
        for j in range(n_c):
            out[t, j] += yb * p.kb[j]
            bias += Y[t, j] * p.kb[j]
        out[t, n_c] = bias


@_jit()
def _apply_inverse(p, X, sigma, out):
    """out = X (D̂ + u uᵀ/σ) for rows X [n_t, n_f], with d, e of the current μ in p's scratch."""
    n_t = X.shape[0]
    n_c = p.s.shape[0]
    for t in range(n_t):
        for j in range(n_c):
            out[t, j] = X[t, j] * p.d[j]
        if p.border:
            xe = 0.0
            for j in range(n_c):
                xe += X[t, j] * p.e[j]
            xu = (X[t, n_c] - xe) / sigma
            for j in range(n_c):
                out[t, j] -= xu * p.e[j]
            out[t, n_c] = xu


@_jit()
def _block_terms(mu, Lambda_prev, p):
    """R, R', T, T' at one μ (twin ``_block_terms``); Y = (B' + λW') A(μ) is left in p.Y."""
    n_t, n_f = p.Bt.shape
    n_c = p.s.shape[0]
    lam = mu - Lambda_prev
    T, T_der = 0.0, 0.0
    for q in range(p.offsets.shape[0] - 1):
        lo, hi, base = p.offsets[q], p.offsets[q + 1], p.packed[q]
        n = hi - lo
        for i in range(n):
            dj = 1.0 / (p.s[lo + i] + mu)
            p.d[lo + i] = dj
            kjj = p.K[base + i * n + i]
            T += dj * kjj
            T_der -= dj * dj * kjj
    sigma = 1.0
    if p.border:
        ze = 0.0
        for j in range(n_c):
            p.e[j] = p.d[j] * p.z[j]
            ze += p.z[j] * p.e[j]
        sigma = p.alpha + mu - ze
        _times_k(p, p.e, p.Ke)
        eKe, ekb, dDu_Gu, uu = 0.0, 0.0, 0.0, 1.0
        for j in range(n_c):
            eKe += p.e[j] * p.Ke[j]
            ekb += p.e[j] * p.kb[j]
            dDu_Gu -= p.d[j] * p.e[j] * (p.kb[j] - p.Ke[j])  # (D̂u)ᵀ G'u
            uu += p.e[j] * p.e[j]
        uGu = eKe - 2.0 * ekb + p.gamma
        T += uGu / sigma
        T_der -= 2.0 * dDu_Gu / sigma + uu * uGu / (sigma * sigma)
    X = p.X
    for t in range(n_t):
        for j in range(n_f):
            X[t, j] = p.Bt[t, j] + lam * p.Wt[t, j]
    _apply_inverse(p, X, sigma, p.Y)
    _times_gram(p, p.Y, p.YG)
    for t in range(n_t):
        for j in range(n_f):
            X[t, j] = p.Wt[t, j] - p.Y[t, j]
    _apply_inverse(p, X, sigma, p.V)
    yb, yyg, r_der = 0.0, 0.0, 0.0
    for t in range(n_t):
        for j in range(n_f):
            yb += p.Y[t, j] * p.Bt[t, j]
            yyg += p.Y[t, j] * p.YG[t, j]
            r_der += p.V[t, j] * (p.YG[t, j] - p.Bt[t, j])
    return p.res0 - 2.0 * yb + yyg, 2.0 * r_der, T, T_der


@_jit()
def _block_sgcv_eval(mu, Lambda_prev, p, m, n_t, den_eps):
    """(f, R, g) at one μ: the dense ``_sgcv_eval``'s definitions from the block terms."""
    R, R_der, T, T_der = _block_terms(mu, Lambda_prev, p)
    D = m - n_t * T
    D_der = -n_t * T_der
    g = R_der * D - 2.0 * R * D_der
    return _sgcv_value(m, R, D, den_eps), R, g


@overload(_sgcv_at, jit_options={"error_model": "numpy"})
def _sgcv_at_block(mu, Lambda_prev, proj, m, n_t, den_eps):
    if not _is_projections(proj, _BlockProjections):
        return None

    def impl(mu, Lambda_prev, proj, m, n_t, den_eps):
        return _block_sgcv_eval(mu, Lambda_prev, proj, m, n_t, den_eps)

    return impl


@_jit()
def _block_step_one(G_mem, G, H, c, m, W, Lambda_prev, offsets, border, opts, W_out, info_out):
    """One problem of ``_slimtik_block_step``: W_new into W_out [n_t, n_f], info into info_out [N_INFO]."""
    den_eps, null_rtol = opts[9], opts[10]
    n_t = W.shape[0]
    p, U, eig_min, top = _block_precompute(G_mem, G, H, c, W, offsets, border, null_rtol)
    mu = _select_mu(Lambda_prev, p, m, n_t, opts)
    f, R, _ = _block_sgcv_eval(mu, Lambda_prev, p, m, n_t, den_eps)  # leaves Y(μ) in p.Y
    n_c = p.s.shape[0]
    W_out[:, :] = W
    for q in range(offsets.shape[0] - 1):  # W_new = W − Y Pᵀ, block by block
        lo, hi = offsets[q], offsets[q + 1]
        n = hi - lo
        Up = U[p.packed[q]:p.packed[q] + n * n].reshape((n, n))
        W_out[:, lo:hi] -= np.ascontiguousarray(p.Y[:, lo:hi]) @ np.ascontiguousarray(Up.T)
    if border:
        for t in range(n_t):
            W_out[t, n_c] -= p.Y[t, n_c]
    if c > 0:
        rel = math.sqrt((0.0 if R < 0.0 else R) / c)
    else:
        rel = 0.0
    s_low = _fmin(p.s.min(), p.alpha) if border else p.s.min()
    info_out[0] = mu - Lambda_prev
    info_out[1] = mu
    info_out[2] = f
    info_out[3] = rel
    info_out[4] = (top + mu) / ((0.0 if s_low < 0.0 else s_low) + mu)
    info_out[5] = eig_min


# The batch loops, as numba_backend's: ``arrays`` is (G_mem, G, H, c, m, W, Λ_{k−1}) with a
# leading [B]; the layout (offsets, border) is shared by the batch.
@_jit(parallel=True)
def _block_step_parallel(arrays, offsets, border, opts, W_out, info_out):
    G_mem, G, H, c, m, W, Lp = arrays
    for b in numba.prange(G.shape[0]):
        _block_step_one(G_mem[b], G[b], H[b], c[b], m[b], W[b], Lp[b], offsets, border, opts, W_out[b], info_out[b])


@_jit()
def _block_step_serial(arrays, offsets, border, opts, W_out, info_out):
    G_mem, G, H, c, m, W, Lp = arrays
    for b in range(G.shape[0]):
        _block_step_one(G_mem[b], G[b], H[b], c[b], m[b], W[b], Lp[b], offsets, border, opts, W_out[b], info_out[b])


def slimtik_block_step(inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The block-structured step for B problems on CPU float64 tensors (``inputs.blocks`` set);
    see ``_torch_block._slimtik_block_step``.

    Returns W_new [B, n_t, n_f] and info [B, N_INFO] (columns ``INFO_FIELDS``) as torch tensors.
    """
    layout = inputs.blocks
    if layout is None:
        raise ValueError("slimtik_block_step needs inputs.blocks")
    B, n_t, n_f = inputs.shape
    if n_f != layout.n_features:
        raise ValueError(f"blocks describe {layout.n_features} features, the inputs have {n_f}")
    W_out = np.empty((B, n_t, n_f))
    info_out = np.empty((B, N_INFO))
    if B > 0:
        p = inputs
        arrays = tuple(_as_array(x) for x in (p.G_mem, p.G, p.H, p.c, p.m, p.W, p.Lambda_prev))
        offsets = np.asarray(layout.offsets(), dtype=np.int64)
        args = (arrays, offsets, bool(layout.border), _scalars(p.config), W_out, info_out)
        _run_batch(_block_step_serial, _block_step_parallel, args, B)
    return torch.from_numpy(W_out), torch.from_numpy(info_out)
