"""Sample-side slimTik step for wide heads: the memory's kernel matrix instead of its Gram matrix.

When n_f exceeds the N = (n_stored + 1)·n_b columns of the memory M = [β_{k−r}Z_{k−r}, …, β_kZ_k]
[n_f, N] (method.md §4, last paragraph; §6 "Sample side"), everything the step needs lies in
range(M). With MᵀM = V diag(σ²) Vᵀ [N, N] and Q = M V Σ⁻¹ [n_f, N'] (σ² above the dense path's
null threshold n_f·ε·σ²_max, at most n_f of them), the problem projected on Q

    z' = Qᵀz,  G' = QᵀG_kQ,  H' = H_kQ,  G_mem' = Σ² (diagonal),  W' = WQ,  same c, m, Λ_{k−1}

has the same res₀, the same sGCV function, hence the same λ, and the step lifts back as

    W_new = W'_new Qᵀ + (Λ_{k−1}/μ)·(W − W Q Qᵀ),   μ = Λ_{k−1} + λ

(on the null space of G_mem, s = 0 and B̃ = 0, so W(λ) = W − λ W P_null/μ there). The fast path
never forms Q or anything n_f × n_f: with P = V Σ⁻¹ [N, N'] and A = Mᵀ(β_kZ_k) [N, n_b],
βQᵀZ_k = PᵀA, W' = (WM)P and W'_new Qᵀ = (W'_new Pᵀ) Mᵀ. MᵀM is a cache (``SampleSideState``):
only the new block's n_b columns are computed each step, N·n_b·n_f multiply-adds. Cost per step
O(n_f·N·n_b + N³) instead of O(n_f³). The projected step is the existing batched kernel of the
chosen backend, with G_mem' = diag(σ²): the cuda kernel's Jacobi returns its eigenpairs without a
rotation. The cpp backend needs no eigendecomposition at all when N < n_f: it takes the same step
from solves with K + μI, K tridiagonalised once (``slimfast.sample_side_woodbury``; the whole step
1.5–1.8× faster at N = 384, benchmarks/RESULTS.md); with N ≥ n_f (G_mem may have full rank), or where
rounding leaves K + μI indefinite (K's scale far beyond μ/ε), it projects as the other backends.

Numerics: MᵀM squares M's condition number, so a direction with σ_j² near the null threshold is
resolved to about ε·σ²_max/σ_j² relative (the dense path: ε·σ²_max/(σ_j² + μ)). Exact
duplicates (rank-deficient M) give rounding-level σ² that fall below the threshold, as in the
dense path.

Shapes: B problems, n_f features (bias included), n_t targets, n_b samples in this batch.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any

import scipy.linalg
import torch

from ._torch_impl import INFO_FIELDS, _admissible_interval, _slimtik_step
from .backends import resolve_backend
from .config import SGCV_NULL_RTOL_PER_FEATURE, SolverConfig
from .sample_side_woodbury import takes_woodbury, woodbury_step
from .solver import StepInfo, raise_first_if_any
from .state import SampleSideState
from .validation import MAX_ABS, Fault, first_fault, largest_magnitude, residual_counts

__all__ = ["SAMPLE_SIDE_CROSSOVER", "SAMPLE_SIDE_CROSSOVER_CPP", "prefer_samples", "sample_side_step"]

#: The sample side is chosen when n_f > SAMPLE_SIDE_CROSSOVER·(r + 1)·n_b: the larger of the two
#: crossovers measured by ``benchmarks/bench_solver.py --wide`` (n_b = 64: n_f/N ≈ 1.1 at r = 5,
#: where the N³ eigendecomposition dominates, ≈ 2 at r = 0, where the sample side's fixed cost of
#: a dozen small tensor operations does; benchmarks/RESULTS.md, "Wide heads").
SAMPLE_SIDE_CROSSOVER = 2.0
#: The same for the cpp backend, whose sample side needs no eigendecomposition (N < n_f): measured
#: n_f/N ≈ 1.12 at r = 5 and ≈ 1.25 at r = 0 (benchmarks/RESULTS.md, "Wide heads without eigenvectors").
SAMPLE_SIDE_CROSSOVER_CPP = 1.25

F64 = torch.float64


def prefer_samples(n_features: int, memory_depth: int, n_b: int, backend: str | None = None) -> bool:
    """True when the sample side is the cheaper one for a full memory of (r + 1)·n_b columns on
    ``backend`` (a resolved backend name; None: the crossover of the eigendecomposing backends)."""
    crossover = SAMPLE_SIDE_CROSSOVER_CPP if backend == "cpp" else SAMPLE_SIDE_CROSSOVER
    return n_features > crossover * (memory_depth + 1) * n_b


def _eigh(K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of K [B, N, N] as ``torch.linalg.eigh``. On CPU by SciPy's LAPACK (divide and
    conquer), which the compiled CPU step uses too: 14 ms instead of torch's 16–21 ms at N = 384
    on one thread (benchmarks/RESULTS.md, "Wide heads"); on CUDA by torch (cuSOLVER)."""
    if K.device.type != "cpu":
        return torch.linalg.eigh(K)
    s, V = K.new_empty(K.shape[:-1]), torch.empty_like(K)
    for b in range(K.shape[0]):
        w, v = scipy.linalg.eigh(K[b].numpy(), driver="evd", check_finite=False)
        s[b], V[b] = torch.from_numpy(w), torch.from_numpy(v)
    return s, V


def _kernel_basis(K: torch.Tensor, n_f: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Range basis of M from its kernel matrix K = MᵀM [B, N, N].

    Returns (σ² [B, N'] ascending, P = V Σ⁻¹ [B, N, N'], rank [B]): the N' = max rank largest
    eigenpairs; in a problem of lower rank the leading columns are zero (σ² = 0, P = 0), which the
    kernel treats as null directions and the lift ignores. Kept: at most n_f eigenvalues (G_mem
    has n_f), and only those above the dense path's threshold n_f·ε·σ²_max (method.md §6).
    """
    s, V = _eigh(K)
    N = K.shape[-1]
    keep = s > SGCV_NULL_RTOL_PER_FEATURE * n_f * s[:, -1:]
    keep[:, : max(N - n_f, 0)] = False
    rank = keep.sum(1)
    n_keep = max(int(rank.max()), 1)
    s, V, keep = s[:, N - n_keep:], V[:, :, N - n_keep:], keep[:, N - n_keep:]
    sigma2 = torch.where(keep, s, torch.zeros_like(s))
    inv = torch.where(keep, torch.rsqrt(torch.where(keep, s, torch.ones_like(s))), torch.zeros_like(s))
    return sigma2, V * inv[:, None, :], rank


def _diagonal_hint(backend: str, sigma2: torch.Tensor) -> dict[str, Any]:
    """How the backend should decompose the projected G_mem' = diag(σ²) [B, N', N']: the cpp kernel
    is handed its eigenpairs (σ² ascending, the identity), the cuda kernel's Jacobi finds them
    without a rotation; the other backends decompose it themselves."""
    if backend == "cpp":
        B, n = sigma2.shape
        return {"eigenpairs": (sigma2.contiguous(), _identity(B, n))}
    return {"eigensolver": "jacobi"} if backend == "cuda" else {}


@functools.lru_cache(maxsize=8)
def _identity(B: int, n: int) -> torch.Tensor:
    """[B, n, n] identity on the CPU, built once per size (the kernel only reads it)."""
    return torch.eye(n, dtype=F64).expand(B, n, n).contiguous()


def _sym(A: torch.Tensor) -> torch.Tensor:
    return 0.5 * (A + A.mT)


def _projected(Zp: torch.Tensor, C: torch.Tensor, beta: torch.Tensor, sigma2: torch.Tensor, WQ: torch.Tensor):
    """(G_mem', G', H', c) of the projected problem from Zp = βQᵀZ_k [B, N', n_b] and C_k."""
    G = _sym(Zp @ Zp.mT)
    H = beta[:, None, None] * (C @ Zp.mT)
    c = beta * beta * (C * C).sum((1, 2))
    return torch.diag_embed(sigma2), G.contiguous(), H.contiguous(), c, WQ.contiguous()


def _null_ratio(Lambda_prev: torch.Tensor, mu: torch.Tensor, rank: torch.Tensor, n_f: int) -> torch.Tensor:
    """[B] Λ_{k−1}/μ, the factor of W's component in the null space of G_mem; 0 where G_mem has
    full rank. There QQᵀ = I, and W − WQQᵀ would be rounding amplified by Λ_{k−1}/μ (large when
    sGCV lowers Λ by orders of magnitude)."""
    return torch.where(rank < n_f, Lambda_prev / mu, torch.zeros_like(mu))


def _finish_info(info: torch.Tensor, rank: torch.Tensor, sigma2: torch.Tensor, n_f: int) -> torch.Tensor:
    """The dense path's cond and eig_min for G_mem [n_f, n_f]: where rank < n_f its smallest
    eigenvalue is exactly 0, so cond = (s_max + μ)/μ and eig_min = 0."""
    mu = info[:, 1]
    deficient = rank < n_f
    info = info.clone()
    info[:, 4] = torch.where(deficient, (sigma2[:, -1] + mu) / mu, info[:, 4])
    info[:, 5] = torch.where(deficient, torch.zeros_like(mu), info[:, 5])
    return info


def _sample_side_step(
    blocks: list[torch.Tensor], Z: torch.Tensor, C: torch.Tensor, beta: torch.Tensor, m: torch.Tensor,
    W: torch.Tensor, Lambda_prev: torch.Tensor, memory_empty: bool, config: SolverConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 torch twin of the sample-side step: forms M, Q and the projections explicitly.

    Args:
        blocks: the stored scaled blocks β_jZ_j, each [B, n_f, n_j] (any order).
        Z: [B, n_f, n_b] this batch's features (unscaled, bias row included); C: [B, n_t, n_b].
        beta: [B] β_k; m: [B] scalar residuals; W: [B, n_t, n_f] W_{k−1}; Lambda_prev: [B].
        memory_empty: True when ``blocks`` is empty (then G' = Σ² in exact arithmetic).

    Returns:
        W_new [B, n_t, n_f] and info [B, 6] (``INFO_FIELDS``), as the dense step would.
    """
    n_f = Z.shape[1]
    Mz = beta[:, None, None] * Z
    M = torch.cat([*blocks, Mz], dim=2)
    sigma2, P, rank = _kernel_basis(_sym(M.mT @ M), n_f)
    Q = M @ P
    inputs = _projected(Q.mT @ Mz, C, beta, sigma2, W @ Q)
    W_p, info = _slimtik_step(*inputs[:4], m, inputs[4], Lambda_prev, memory_empty, config)
    ratio = _null_ratio(Lambda_prev, info[:, 1], rank, n_f)[:, None, None]
    W_new = W_p @ Q.mT + ratio * (W - (W @ Q) @ Q.mT)
    return W_new, _finish_info(info, rank, sigma2, n_f)


def _as_scale(name: str, value: Any, B: int, device: torch.device) -> torch.Tensor:
    """β as a [B] float64 tensor: a positive finite number, or a [B] tensor of them."""
    if isinstance(value, (bool,)):
        raise TypeError(f"{name} must be a positive number or a [B] tensor, got a bool")
    if isinstance(value, numbers.Real):
        t = torch.full((B,), float(value), dtype=F64, device=device)
    elif isinstance(value, torch.Tensor) and value.is_floating_point():
        t = value.to(device=device, dtype=F64).expand(B) if value.ndim == 0 else value.to(device=device, dtype=F64)
    else:
        raise TypeError(f"{name} must be a positive number or a [B] float tensor, got {type(value).__name__}")
    if tuple(t.shape) != (B,):
        raise ValueError(f"{name} must be a number or have shape [B] = [{B}], got {list(t.shape)}")
    if not bool((torch.isfinite(t) & (t > 0)).all()):
        raise ValueError(f"{name} must be positive and finite")
    return t


def _check_array(name: str, x: Any, shape: tuple[int, ...], doc: str, device: torch.device,
                 contiguous: bool = True) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor, got {type(x).__name__}")
    if x.dtype != F64:
        raise TypeError(f"{name} must have dtype float64, got {x.dtype}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {doc} = {list(shape)}, got {list(x.shape)}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device}, but the solver state is on {device}")
    top = float(largest_magnitude(x)) if x.numel() else 0.0   # NaN where x has a NaN
    if not math.isfinite(top):
        raise ValueError(f"{name} contains NaN or Inf")
    if top > MAX_ABS:
        raise ValueError(f"{name} has entries beyond ±{MAX_ABS:g}; rescale the data")
    x = x.resolve_neg()
    return x.contiguous() if contiguous else x


def _check_inputs(state: SampleSideState, config: SolverConfig, Z: Any, C: Any, beta: Any, m: Any, W: Any):
    if not isinstance(state, SampleSideState):
        raise TypeError(f"state must be a SampleSideState, got {type(state).__name__}")
    if not isinstance(config, SolverConfig):
        raise TypeError(f"config must be a SolverConfig, got {type(config).__name__}")
    B, n_f, n_t, dev = state.batch, state.n_features, state.n_targets, state.device
    if not isinstance(Z, torch.Tensor):
        raise TypeError(f"Z must be a torch tensor, got {type(Z).__name__}")
    if Z.ndim != 3 or Z.shape[-1] < 1:
        raise ValueError(f"Z must be a tensor of shape [B, n_f, n_b] with n_b >= 1, got {getattr(Z, 'shape', Z)!r}")
    n_b = Z.shape[-1]
    # Z only enters torch products: any strides (the head passes the transpose of [B, n_b, n_f]).
    Z = _check_array("Z", Z, (B, n_f, n_b), "[B, n_f, n_b]", dev, contiguous=False)
    C = _check_array("C", C, (B, n_t, n_b), "[B, n_t, n_b]", dev)
    W = _check_array("W", W, (B, n_t, n_f), "[B, n_t, n_f]", dev)
    beta = _as_scale("beta", beta, B, dev)
    m_t, m_bad = residual_counts(m, B, dev)
    if bool(m_bad.any()):
        raise ValueError("m must be positive and finite in every problem")
    mu_lo, mu_hi = _admissible_interval(state.Lambda, config)
    faults = first_fault([(Fault.LAMBDA_ABOVE_MAX, state.Lambda > config.Lambda_bounds[1]),
                          (Fault.BOUNDS_EXCLUDE, mu_lo > mu_hi)], B, dev)
    raise_first_if_any(faults, config, state.Lambda, "")
    return Z, C, beta, m_t, W


def _eigen_route(name: str, module: Any, K: torch.Tensor, A: torch.Tensor, C: torch.Tensor, beta: torch.Tensor,
                 m: torch.Tensor, WM: torch.Tensor, state: SampleSideState, config: SolverConfig, n_f: int):
    """(X [B, n_t, N], Λ_{k−1}/μ or 0 [B], info [B, 6]) through K's eigendecomposition: the
    projected problem on Q = M V Σ⁻¹ stepped by the backend's kernel (module docstring);
    W_k = ratio·W + X Mᵀ as on the tridiagonal route."""
    sigma2, P, rank = _kernel_basis(K, n_f)
    inputs = _projected(P.mT @ A, C, beta, sigma2, WM @ P)
    W_p, info = module.slimtik_step(*inputs[:4], m, inputs[4], state.Lambda, state.memory_empty, config,
                                    **_diagonal_hint(name, sigma2))
    ratio = _null_ratio(state.Lambda, info[:, 1], rank, n_f)
    X = (W_p - ratio[:, None, None] * inputs[4]) @ P.mT
    return X, ratio, _finish_info(info, rank, sigma2, n_f)


def sample_side_step(
    state: SampleSideState, Z: torch.Tensor, C: torch.Tensor, beta: float | torch.Tensor, m: Any, W: torch.Tensor,
    *, config: SolverConfig | None = None, backend: str | None = None,
) -> tuple[torch.Tensor, StepInfo[torch.Tensor]]:
    """Advance ``state`` by one slimTik step computed on the sample side; return the new weights.

        W_k = W_{k−1} − (W_{k−1}G_k − H_k + λ_kW_{k−1})(G_mem + Λ_kI)⁻¹,  G_k = β²Z_kZ_kᵀ, H_k = β²C_kZ_kᵀ

    exactly as ``slimtik_step`` (same λ by sGCV, same info), without forming any n_f × n_f matrix.

    Args:
        state: memory of scaled feature blocks, kernel cache and Λ; updated only on success.
        Z: [B, n_f, n_b] features of this batch (bias row of ones included), float64, any strides.
        C: [B, n_t, n_b] targets, float64.
        beta: β_k (1/√m for a mean reduction, 1 for a sum): a positive number or [B].
        m: scalar residuals m_k (n_b·n_t): a number or [B].
        W: [B, n_t, n_f] W_{k−1}.
        config, backend: as in ``slimtik_step`` (the backend runs the projected step).

    Bad input raises TypeError/ValueError naming the argument before anything changes
    (validation is eager; there is no lazy mode). Non-finite new weights raise FloatingPointError,
    state unchanged. CPU or CUDA tensors on the state's device.

    Returns:
        (W_new [B, n_t, n_f], StepInfo with [B] fields).
    """
    config = config if config is not None else SolverConfig()
    Z, C, beta, m_t, W = _check_inputs(state, config, Z, C, beta, m, W)
    name, module = resolve_backend(backend, state.device)
    B, n_f, n_b = Z.shape
    r, cap = state.memory_depth, state.cap
    Mz = beta[:, None, None] * Z
    cols = state.columns()
    n_mem = len(cols)
    # A full memory uses every padded column: no gathers then.
    pick = slice(None) if n_mem == r * cap else cols
    # New kernel entries: stored blocks (all padded columns, so no gather of n_f-long data) and itself.
    stored = state.blocks @ Mz
    gram = _sym(Mz.mT @ Mz)
    A = torch.cat([stored[:, pick], gram], dim=1)
    K_mem = state.kernel if n_mem == r * cap else state.kernel[:, cols][:, :, cols]
    # K = [[K_mem, A_mem], [A_memᵀ, MzᵀMz]] written once into its buffer (nested cats write it twice).
    K = A.new_empty(B, n_mem + n_b, n_mem + n_b)
    K[:, :n_mem, :n_mem] = K_mem
    K[:, :, n_mem:] = A
    K[:, n_mem:, :n_mem] = A[:, :n_mem].mT
    if not float(largest_magnitude(K)) <= MAX_ABS:
        raise ValueError(f"Z too large: its kernel matrix exceeds ±{MAX_ABS:g} (the solver squares it); rescale")
    WM = torch.cat([(W @ state.blocks.mT)[:, :, pick], W @ Mz], dim=2)
    solved = None
    if takes_woodbury(name, module, K.shape[-1], n_f):   # no eigendecomposition (sample_side_woodbury)
        R0 = WM[:, :, n_mem:] - beta[:, None, None] * C
        solved = woodbury_step(module, K, A, R0, WM, beta * beta * (C * C).sum((1, 2)), m_t, state.Lambda, config)
    if solved is not None:
        X, info = solved
        ratio = state.Lambda / info[:, 1]
    else:
        X, ratio, info = _eigen_route(name, module, K, A, C, beta, m_t, WM, state, config, n_f)
    if n_mem == r * cap:
        X_mem = X[:, :, :n_mem]
    else:
        X_mem = X.new_zeros(B, X.shape[1], r * cap)
        X_mem[:, :, cols] = X[:, :, :n_mem]
    W_new = ratio[:, None, None] * W + X[:, :, n_mem:] @ Mz.mT + X_mem @ state.blocks
    if not bool(torch.isfinite(W_new).all()):
        raise FloatingPointError(f"backend {name!r} produced non-finite weights on the sample side; state unchanged")
    Lambda_prev = state.Lambda.clone()
    state.commit(Mz, beta, torch.cat([stored, gram], dim=1), info[:, 1])
    fields = {f: info[:, i] for i, f in enumerate(INFO_FIELDS)}
    faults = torch.zeros(B, dtype=torch.int64, device=state.device)
    return W_new, StepInfo(backend=name, faults=faults, config=config, Lambda_prev=Lambda_prev, **fields)

