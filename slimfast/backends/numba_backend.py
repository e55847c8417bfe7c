"""numba CPU backend of the slimTik step: the float64 torch twin, one problem per thread.

``slimtik_step`` has the arguments (``boundary.step_entry``) and semantics of ``slimfast._torch_impl._slimtik_step``
and follows it step by step (same log grid over μ, first-occurrence argmin, bracket rule,
Illinois iteration with the same termination and clamps, reference candidates and fallback,
info columns), so it agrees with the twin to rounding. The helpers below mirror
``_sgcv_precompute``, ``_sgcv_eval``, ``_select_mu`` and ``_illinois_root`` for a single
problem; two entry points loop over the B problems (``prange`` when B > 1, a plain loop when
B == 1 so a single problem pays no thread-pool overhead and LAPACK keeps all cores). With
``blocks`` the step is ``numba_block``'s (twin ``_torch_block._slimtik_block_step``).

The λ search (``_select_mu``, ``_illinois_root``) is shared with the block step: it evaluates
sGCV through ``sgcv_at(μ, Λ_{k−1}, proj, …)``, an overload chosen at compile time by the type
of the projections ``proj`` (``_DenseProjections`` here, numba_block's for the block step). An
overload, not a jitted evaluator passed as an argument: numba cannot cache a function that
receives or references a dispatcher as a value, so every process would recompile the step.

Nothing is compiled at import: numba compiles each function on its first call and caches
the machine code under ``__pycache__`` (or numba's user-wide cache directory); when no cache
location is writable the functions are compiled without caching.
"""

from __future__ import annotations

import contextlib
import math
from collections import namedtuple
from typing import Any, Callable

import numba
import numpy as np
import torch
from numba.core import types
from numba.extending import overload

from .._torch_impl import N_INFO, N_REFERENCE_POINTS
from ..config import FLOAT64_EPS, SGCV_DENOMINATOR_EPS, SGCV_NULL_RTOL_PER_FEATURE, SolverConfig
from .boundary import StepInputs, step_entry

__all__ = ["slimtik_step"]

#: ``slimtik_step`` runs the block-structured step when ``inputs.blocks`` is set (``solver``).
BLOCK_STEP = True

_DBL_MAX = float(np.finfo(np.float64).max)
_LOG10_EPS = math.log10(FLOAT64_EPS)
_MODE_SGCV, _MODE_CONSTANT, _MODE_REFERENCE = 0, 1, 2


def _jit(**options):
    """``numba.njit(cache=True, error_model="numpy", **options)``; no cache when no location is writable.

    The numpy error model makes x/0 give ±inf or NaN as in torch (the python model raises
    ZeroDivisionError), so the kernels keep the twin's semantics in degenerate cases.
    """
    options.setdefault("error_model", "numpy")
    options.setdefault("cache", True)

    def wrap(func):
        try:
            return numba.njit(**options)(func)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(**{**options, "cache": False})(func)

    return wrap


# --- scalar helpers with torch semantics -------------------------------------------------


@_jit()
def _fmax(x, y):
    """torch.maximum: NaN if either argument is NaN."""
    if math.isnan(x) or math.isnan(y):
        return math.nan
    return x if x >= y else y


@_jit()
def _fmin(x, y):
    """torch.minimum: NaN if either argument is NaN."""
    if math.isnan(x) or math.isnan(y):
        return math.nan
    return x if x <= y else y


@_jit()
def _linspace01(i, n):
    """Element i of torch.linspace(0, 1, n) in float64 (torch's two-sided formula)."""
    step = 1.0 / (n - 1)
    if i < n // 2:
        return step * i
    return 1.0 - step * (n - i - 1)


@_jit()
def _sgcv_value(m, R, D, den_eps):
    """f = m·max(R, 0)/D² as the twins: NaN → inf, ±inf → ±DBL_MAX (torch.nan_to_num(f, nan=inf)),
    then f = +inf where μ is inadmissible, D ≤ SGCV_DENOMINATOR_EPS·m (``den_eps``)."""
    Rc = 0.0 if R < 0.0 else R  # clamp_min(0) keeps NaN
    f = m * Rc / (D * D)
    if math.isnan(f):
        f = math.inf
    elif f == math.inf:
        f = _DBL_MAX
    elif f == -math.inf:
        f = -_DBL_MAX
    if not D > den_eps * m:
        f = math.inf
    return f


# --- mirrors of the torch twin ----------------------------------------------------------


@_jit()
def _admissible_interval(Lambda_prev, Lmin, Lmax, lmin, lmax):
    """Bounds of μ = Λ_{k−1} + λ: [max(Λ_min, Λ_{k−1}+λ_min), min(Λ_max, Λ_{k−1}+λ_max)]."""
    if math.isfinite(lmin):
        mu_lo = _fmax(Lambda_prev + lmin, Lmin)
    else:
        mu_lo = Lmin
    mu_hi = _fmin(Lambda_prev + lmax, Lmax)
    return mu_lo, mu_hi


@_jit()
def _tree_sum_rows(T, out):
    """out[r] = Σ_j T[r, j] by pairwise halving (error O(log n · ε), like torch's sums); T is destroyed."""
    n = T.shape[1]
    while n > 1:
        half = n // 2
        rest = n - half  # element j is paired with j + rest; an odd middle element waits
        for r in range(T.shape[0]):
            for j in range(half):
                T[r, j] += T[r, j + rest]
        n = rest
    for r in range(T.shape[0]):
        out[r] = T[r, 0] if T.shape[1] > 0 else 0.0


@_jit()
def _sgcv_precompute(s, UT, G, H, c, W, memory_empty, null_rtol):
    """Project the batch statistics once on G_mem = U diag(s) Uᵀ (method.md §4).

    s [n_f] ascending (overwritten: clipped) and UT = Uᵀ [n_f, n_f] C-contiguous come from
    ``torch.linalg.eigh`` outside the jitted code: numba's own LAPACK wrapper aborts the process
    (numba_fatal_error) when it cannot allocate its workspace, where torch raises.

    Returns (s, Uᵀ, Bt, Wt, a, b, k, Q, res0, eig_min), all arrays C-contiguous (one matmul
    layout to compile). Q stacks Q0, Q1, Q2: [3·n_f, n_f] (rows i, n_f + i, 2n_f + i), or only
    their diagonals [3, n_f] when ``memory_empty`` (K̃ = diag(s)). Eigenvalues in the null space
    (``_torch_impl._null_space``) are 0 with their columns of B̃ and rows/columns of K̃.
    """
    n_t, n_f = W.shape
    scale = max(s[n_f - 1], -s[0])
    eig_min = s[0] / scale if scale > 0 else 0.0
    for j in range(n_f):
        if s[j] < 0.0:
            s[j] = 0.0
    null_tol = null_rtol * n_f * s[n_f - 1]
    keep = np.empty(n_f)
    for j in range(n_f):
        keep[j] = 0.0 if s[j] <= null_tol else 1.0
        s[j] *= keep[j]
    U = np.ascontiguousarray(UT.T)
    WG = W @ G
    T = np.empty((2, n_t * n_f))
    for t in range(n_t):
        for j in range(n_f):
            T[0, t * n_f + j] = WG[t, j] * W[t, j]
            T[1, t * n_f + j] = W[t, j] * H[t, j]
    sums = np.empty(3 * n_f)
    _tree_sum_rows(T, sums)
    res0 = sums[0] - 2.0 * sums[1] + c
    Bt = (WG - H) @ U
    for t in range(n_t):
        for j in range(n_f):
            Bt[t, j] *= keep[j]
    Wt = W @ U
    T = np.empty((3 * n_f, n_t))
    for j in range(n_f):
        for t in range(n_t):
            T[j, t] = Bt[t, j] * Bt[t, j]
            T[n_f + j, t] = Bt[t, j] * Wt[t, j]
            T[2 * n_f + j, t] = Wt[t, j] * Wt[t, j]
    _tree_sum_rows(T, sums)
    a = sums[:n_f].copy()
    b = sums[n_f : 2 * n_f].copy()
    if memory_empty:
        k = s.copy()
        Q = np.empty((3, n_f))
        for j in range(n_f):
            Q[0, j] = s[j] * a[j]
            Q[1, j] = 2.0 * s[j] * b[j]
            Q[2, j] = s[j] * sums[2 * n_f + j]
        return s, UT, Bt, Wt, a, b, k, Q, res0, eig_min
    K = UT @ (G @ U)
    for i in range(n_f):
        for j in range(n_f):
            K[i, j] *= keep[i] * keep[j]
    BtT = np.ascontiguousarray(Bt.T)
    WtT = np.ascontiguousarray(Wt.T)
    BB = BtT @ Bt
    BW = BtT @ Wt
    WW = WtT @ Wt
    k = np.empty(n_f)
    Q = np.empty((3 * n_f, n_f))
    for i in range(n_f):
        k[i] = K[i, i]
        for j in range(n_f):
            Q[i, j] = K[i, j] * BB[i, j]
            Q[n_f + i, j] = K[i, j] * (BW[i, j] + BW[j, i])
            Q[2 * n_f + i, j] = K[i, j] * WW[i, j]
    return s, UT, Bt, Wt, a, b, k, Q, res0, eig_min


@_jit()
def _sgcv_eval(mu, Lambda_prev, s, a, b, k, Q, diagonal, res0, m, n_t, den_eps):
    """sGCV value, residual and derivative sign at one μ: (f, R, g), as ``_sgcv_eval``.

    R(μ) = res0 − 2 Σ_j d_j (a_j + λ b_j) + dᵀ(Q0 + λQ1 + λ²Q2)d,  d = 1/(s + μ), λ = μ − Λ_{k−1}
    f(μ) = m R / (m − n_t T)²,  T = Σ_j K̃_jj d_j; g = R' D − 2 R D' with D = m − n_t T.
    f as ``_sgcv_value`` (+inf where μ is inadmissible).
    """
    n_f = s.shape[0]
    lam = mu - Lambda_prev
    d = np.empty(n_f)
    for j in range(n_f):
        d[j] = 1.0 / (s[j] + mu)
    Qd = d if diagonal else Q @ d  # [Q0 d; Q1 d; Q2 d] (BLAS gemv)
    # Rows: d(a+λb), d q_λ, d²(a+λb), d b, d² q_λ, d q', k d, k d²
    # with q_λ = (Q0 + λQ1 + λ²Q2)d and q' = (Q1 + 2λQ2)d, summed pairwise below.
    T = np.empty((8, n_f))
    for i in range(n_f):
        if diagonal:
            q_lam_d = (Q[0, i] + lam * (Q[1, i] + lam * Q[2, i])) * d[i]
            q_der_d = (Q[1, i] + 2.0 * lam * Q[2, i]) * d[i]
        else:
            q_lam_d = Qd[i] + lam * (Qd[n_f + i] + lam * Qd[2 * n_f + i])
            q_der_d = Qd[n_f + i] + 2.0 * lam * Qd[2 * n_f + i]
        ab = a[i] + lam * b[i]
        di = d[i]
        d2 = di * di
        T[0, i] = di * ab
        T[1, i] = di * q_lam_d
        T[2, i] = d2 * ab
        T[3, i] = di * b[i]
        T[4, i] = d2 * q_lam_d
        T[5, i] = di * q_der_d
        T[6, i] = k[i] * di
        T[7, i] = k[i] * d2
    S = np.empty(8)
    _tree_sum_rows(T, S)
    R = res0 - 2.0 * S[0] + S[1]
    R_der = 2.0 * S[2] - 2.0 * S[3] - 2.0 * S[4] + S[5]
    D = m - n_t * S[6]
    D_der = n_t * S[7]
    g = R_der * D - 2.0 * R * D_der
    return _sgcv_value(m, R, D, den_eps), R, g


#: What the dense ``_sgcv_eval`` reads after ``_sgcv_precompute`` (``_select_mu``'s ``proj``).
_DenseProjections = namedtuple("_DenseProjections", ("s", "a", "b", "k", "Q", "diagonal", "res0"))


def _sgcv_at(mu, Lambda_prev, proj, m, n_t, den_eps):
    """(f, R, g) at one μ from the projections ``proj``: jitted code only, where the ``overload``
    matching the type of ``proj`` supplies the evaluator (module docstring)."""
    raise NotImplementedError("_sgcv_at is only callable from jitted code")


def _is_projections(proj, cls) -> bool:
    """Whether the numba type ``proj`` is the namedtuple ``cls`` (an ``_sgcv_at`` overload's match)."""
    return isinstance(proj, types.NamedTuple) and proj.instance_class is cls


@overload(_sgcv_at, jit_options={"error_model": "numpy"})
def _sgcv_at_dense(mu, Lambda_prev, proj, m, n_t, den_eps):
    if not _is_projections(proj, _DenseProjections):
        return None

    def impl(mu, Lambda_prev, proj, m, n_t, den_eps):
        return _sgcv_eval(mu, Lambda_prev, proj.s, proj.a, proj.b, proj.k, proj.Q, proj.diagonal, proj.res0, m,
                          n_t, den_eps)

    return impl


# The search is not cached on its own: numba keys a cache on the file of the cached function only
# and would reuse a stale search after a change to another file's evaluator; each step's entry
# point caches it with the evaluator it calls.
@_jit(cache=False)
def _illinois_root(ta, tb, ga, gb, Lambda_prev, proj, m, n_t, root_tol, max_root_iter, den_eps):
    """Root of g(t) = sGCV'(e^t) sign on [ta, tb] by Illinois regula falsi, as ``_illinois_root``."""
    side = 0
    c_prev = math.nan
    c = ta
    for _ in range(max_root_iter):
        c_new = (ta * gb - tb * ga) / (gb - ga)
        c = _fmin(_fmax(c_new, _fmin(ta, tb)), _fmax(ta, tb))
        gc = _sgcv_at(math.exp(c), Lambda_prev, proj, m, n_t, den_eps)[2]
        if gc == 0 or abs(c - c_prev) <= root_tol * _fmax(abs(c), 1.0):
            break
        if (gc > 0) == (gb > 0):
            # Illinois: halve the value kept at the endpoint that did not move twice in a row.
            if side == -1:
                ga = ga / 2
            tb = c
            gb = gc
            side = -1
        else:
            if side == 1:
                gb = gb / 2
            ta = c
            ga = gc
            side = 1
        c_prev = c
    return c


@_jit(cache=False)
def _select_mu(Lambda_prev, proj, m, n_t, opts):
    """New cumulative regularisation μ = Λ_k for one problem according to the mode in ``opts``
    (``_scalars``), sGCV evaluated by ``_sgcv_at`` on the projections ``proj``."""
    mode, lambda_const, Lmin, Lmax, lmin, lmax, n_grid, root_tol, max_root_iter, den_eps, _ = opts
    mu_lo, mu_hi = _admissible_interval(Lambda_prev, Lmin, Lmax, lmin, lmax)
    if mode == _MODE_CONSTANT:
        return _fmin(_fmax(Lambda_prev + lambda_const, mu_lo), mu_hi)

    if mode == _MODE_REFERENCE:
        n = N_REFERENCE_POINTS
        lmax_ref = lmax if math.isfinite(lmax) else Lmax
        n_low = Lambda_prev / 2.0 - Lmin
        log_low = math.log10(_fmax(n_low, FLOAT64_EPS))
        step = (math.log10(lmax_ref) - _LOG10_EPS) / (n - 1)
        best_f = math.inf
        best_mu = math.nan
        found = False  # some f finite
        for i in range(2 * n):
            if i < n:  # −logspace from Λ_{k−1}/2 − Λ_min down to eps; dropped (NaN) when ≤ 0
                if n_low > 0:
                    lam = -(10.0 ** (log_low + (_LOG10_EPS - log_low) * _linspace01(i, n)))
                else:
                    lam = math.nan
            else:  # torch.logspace(log10(eps), log10(λ_max), n)
                j = i - n
                if j < n // 2:
                    lam = 10.0 ** (_LOG10_EPS + step * j)
                else:
                    lam = 10.0 ** (math.log10(lmax_ref) - step * (n - j - 1))
            mu = Lambda_prev + lam
            if mu >= mu_lo and mu <= mu_hi:
                f = _sgcv_at(mu, Lambda_prev, proj, m, n_t, den_eps)[0]
            else:
                f = math.inf
            if math.isfinite(f):
                found = True
            if i == 0 or f < best_f:  # first occurrence of the minimum
                best_f = f
                best_mu = mu
        if found:
            return best_mu
        return _fmin(_fmax(Lambda_prev, mu_lo), mu_hi)

    # sGCV: grid in log μ, then the root of dsGCV/dμ on the bracket next to the best point.
    t_lo = math.log(mu_lo)
    t_hi = math.log(mu_hi)
    t_grid = np.empty(n_grid)
    f_grid = np.empty(n_grid)
    g_grid = np.empty(n_grid)
    i_best = 0
    f_best = math.inf
    for i in range(n_grid):
        t = t_lo + (t_hi - t_lo) * _linspace01(i, n_grid)
        f, _, g = _sgcv_at(math.exp(t), Lambda_prev, proj, m, n_t, den_eps)
        t_grid[i] = t
        f_grid[i] = f
        g_grid[i] = g
        if i == 0 or f < f_best:
            f_best = f
            i_best = i
    t_best = t_grid[i_best]
    g_best = g_grid[i_best]
    go_left = i_best > 0 and g_best > 0
    go_right = i_best < n_grid - 1 and g_best < 0
    i_other = i_best - 1 if go_left else min(i_best + 1, n_grid - 1)
    t_other = t_grid[i_other]
    g_other = g_grid[i_other]
    bracketed = ((go_left and g_other < 0) or (go_right and g_other > 0)) and t_hi > t_lo
    bracketed = bracketed and f_best < math.inf and f_grid[i_other] < math.inf  # admissible ends
    t_star = t_best
    if bracketed:
        t_star = _illinois_root(t_other, t_best, g_other, g_best, Lambda_prev, proj, m, n_t, root_tol,
                                max_root_iter, den_eps)
    return _fmin(_fmax(math.exp(t_star), mu_lo), mu_hi)


@_jit()
def _slimtik_step_one(s, UT, G, H, c, m, W, Lambda_prev, memory_empty, opts, W_out, info_out):
    """One problem of ``_slimtik_step``: writes W_new into W_out [n_t,n_f] and info_out [N_INFO]."""
    den_eps, null_rtol = opts[9], opts[10]
    n_t = W.shape[0]
    s, UT, Bt, Wt, a, b, k, Q, res0, eig_min = _sgcv_precompute(s, UT, G, H, c, W, memory_empty, null_rtol)
    mu = _select_mu(Lambda_prev, _DenseProjections(s, a, b, k, Q, memory_empty, res0), m, n_t, opts)
    f, R, _ = _sgcv_eval(mu, Lambda_prev, s, a, b, k, Q, memory_empty, res0, m, n_t, den_eps)
    lam = mu - Lambda_prev
    n_f = s.shape[0]
    X = np.empty_like(Bt)
    for j in range(n_f):
        d = 1.0 / (s[j] + mu)
        for t in range(n_t):
            X[t, j] = (Bt[t, j] + lam * Wt[t, j]) * d
    step = X @ UT
    for t in range(n_t):
        for j in range(n_f):
            W_out[t, j] = W[t, j] - step[t, j]
    if c > 0:
        Rc = 0.0 if R < 0.0 else R
        rel = math.sqrt(Rc / c)
    else:
        rel = 0.0
    info_out[0] = lam
    info_out[1] = mu
    info_out[2] = f
    info_out[3] = rel
    info_out[4] = (s[n_f - 1] + mu) / (s[0] + mu)
    info_out[5] = eig_min


# The batch loops: one problem per prange worker, or a plain loop for B == 1. ``arrays`` is
# (s, Uᵀ, G, H, c, m, W, Λ_{k−1}) with a leading [B]; ``opts`` the scalars of ``_scalars``.
@_jit(parallel=True)
def _slimtik_step_parallel(arrays, memory_empty, opts, W_out, info_out):
    s, UT, G, H, c, m, W, Lp = arrays
    for p in numba.prange(G.shape[0]):
        _slimtik_step_one(s[p], UT[p], G[p], H[p], c[p], m[p], W[p], Lp[p], memory_empty, opts, W_out[p], info_out[p])


@_jit()
def _slimtik_step_serial(arrays, memory_empty, opts, W_out, info_out):
    s, UT, G, H, c, m, W, Lp = arrays
    for p in range(G.shape[0]):
        _slimtik_step_one(s[p], UT[p], G[p], H[p], c[p], m[p], W[p], Lp[p], memory_empty, opts, W_out[p], info_out[p])


_blas_controller: Any = None  # threadpoolctl selection of the OpenBLAS libraries; False: unavailable


def _single_threaded_blas() -> contextlib.AbstractContextManager:
    """OpenBLAS limited to one thread while the ``prange`` workers call it, restored after.

    Each worker already owns a core; a nested OpenBLAS pool only oversubscribes, and under
    numba's OpenMP threading layer OpenBLAS (pthreads build) prints "Detect OpenMP Loop" on
    every threaded call. numba binds the BLAS/LAPACK of ``scipy.linalg.cython_*``; MKL and
    other OpenMP-aware libraries are left alone.
    """
    global _blas_controller
    if _blas_controller is None:
        try:
            import scipy.linalg.cython_lapack  # noqa: F401  (load the library numba calls first)
            from threadpoolctl import ThreadpoolController

            _blas_controller = ThreadpoolController().select(internal_api="openblas")
        except Exception:  # threadpoolctl missing or failing: run with the library defaults
            _blas_controller = False
    if not _blas_controller or not _blas_controller.lib_controllers:
        return contextlib.nullcontext()
    return _blas_controller.limit(limits=1)


def _run_batch(serial: Callable, parallel: Callable, args: tuple, B: int) -> None:
    """``serial(*args)`` for B == 1 (no thread pool; BLAS keeps its own threads for a large n_f),
    else ``parallel(*args)`` with single-threaded BLAS; a MemoryError in a worker raises as one."""
    if B == 1:
        serial(*args)
        return
    try:
        with _single_threaded_blas():
            parallel(*args)
    except SystemError as exc:  # how a MemoryError leaves a prange loop
        if isinstance(exc.__cause__, MemoryError):
            raise MemoryError(str(exc.__cause__)) from exc
        raise


def _as_array(x: torch.Tensor) -> np.ndarray:
    """Zero-copy float64 C-contiguous view (copies only if the tensor is not already one)."""
    return x.detach().to(dtype=torch.float64).contiguous().numpy()


def _scalars(config: SolverConfig) -> tuple:
    """The step options as the jitted code takes them (runtime arguments, not globals: numba's
    cache would keep a global's old value)."""
    Lmin, Lmax = (float(v) for v in config.Lambda_bounds)
    lmin, lmax = (float(v) for v in config.lambda_bounds)
    return (int(config.mode_code), float(config.lambda_const), Lmin, Lmax, lmin, lmax, int(config.n_grid),
            float(config.root_tol), int(config.max_root_iter), SGCV_DENOMINATOR_EPS, SGCV_NULL_RTOL_PER_FEATURE)


@step_entry
def slimtik_step(inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """One slimTik step for B problems on CPU float64 tensors (arguments: ``boundary.StepInputs``);
    see ``_torch_impl._slimtik_step``.

    Returns W_new [B, n_t, n_f] and info [B, N_INFO] (columns ``INFO_FIELDS``) as torch tensors.
    """
    if inputs.blocks is not None:
        from .numba_block import slimtik_block_step  # it builds on this module

        return slimtik_block_step(inputs)
    B, n_t, n_f = inputs.shape
    W_out = np.empty((B, n_t, n_f))
    info_out = np.empty((B, N_INFO))
    if B > 0:
        # Everything sized n_f² is allocated here, where a failure raises MemoryError.
        s, U = torch.linalg.eigh(inputs.G_mem.detach().to(torch.float64))
        p = inputs
        arrays = tuple(_as_array(x) for x in (s, U.mT, p.G, p.H, p.c, p.m, p.W, p.Lambda_prev))
        args = (arrays, bool(p.memory_empty), _scalars(p.config), W_out, info_out)
        _run_batch(_slimtik_step_serial, _slimtik_step_parallel, args, B)
    return torch.from_numpy(W_out), torch.from_numpy(info_out)
