"""Compiled CPU kernel (slimfast._cpu via slimfast.backends.cpp) against its float64 torch twin.

The kernel follows ``_torch_impl._slimtik_step`` operation by operation, so the two must agree to
rounding (1e-9 relative), not merely to the tolerance of a minimiser. The data keep the batch
residual at least ~1e-3 of β²‖C‖², so the cancellation in ‖res(λ)‖² from statistics
(method.md §4, numerical note) costs at most a few digits.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

_cpu = pytest.importorskip("slimfast._cpu")

from slimfast._torch_impl import INFO_FIELDS, _slimtik_step  # noqa: E402
from slimfast.backends import cpp  # noqa: E402
from slimfast.config import SolverConfig  # noqa: E402

RTOL = 1e-9
F64 = torch.float64


def make_problem(
    B: int,
    n_f: int,
    n_t: int,
    memory_empty: bool,
    kind: str,
    seed: int,
    n_b: int | None = None,
    n_b_memory: int | None = None,
):
    """Sufficient statistics of B random problems (method.md §4), memory of 3 earlier batches.

    kind "fit": C = W_true Z + 0.1·noise (sGCV minimum interior); "noise": C independent of Z.
    n_b samples in the current batch (default 2 n_f + 3), n_b_memory in each earlier one (default n_b).
    """
    g = torch.Generator().manual_seed(seed)
    n_b = n_b if n_b is not None else 2 * n_f + 3
    n_b_memory = n_b_memory if n_b_memory is not None else n_b
    beta2 = 1.0 / n_b
    Zs = [torch.randn(B, n_f, n_b_memory, generator=g, dtype=F64) for _ in range(0 if memory_empty else 3)]
    Zs.append(torch.randn(B, n_f, n_b, generator=g, dtype=F64))
    Z = Zs[-1]
    if kind == "fit":
        W_true = torch.randn(B, n_t, n_f, generator=g, dtype=F64)
        C = W_true @ Z + 0.1 * torch.randn(B, n_t, n_b, generator=g, dtype=F64)
    else:
        C = torch.randn(B, n_t, n_b, generator=g, dtype=F64)
    G = beta2 * Z @ Z.transpose(1, 2)
    G_mem = G.clone() if memory_empty else sum(beta2 * z @ z.transpose(1, 2) for z in Zs)
    H = beta2 * C @ Z.transpose(1, 2)
    c = beta2 * (C * C).sum((1, 2))
    m = torch.full((B,), float(n_b * n_t), dtype=F64)
    W = 0.3 * torch.randn(B, n_t, n_f, generator=g, dtype=F64)
    Lambda_prev = 10.0 ** (-3.0 + 3.0 * torch.rand(B, generator=g, dtype=F64))
    return G_mem, G, H, c, m, W, Lambda_prev


@pytest.fixture(params=["cpp", "block-emulation"])
def kernel(request):
    """The CPU step, and the CUDA kernels' block code run on the host (built into slimfast._cpu):
    every case below checks both compositions against the torch twin."""
    if request.param == "cpp":
        return cpp.slimtik_step
    from . import block_emulation

    return lambda *args, **kwargs: block_emulation.emulate_slimtik_step(*args, **kwargs)


#: eig_min is relative to max|s|; for a PSD G_mem it is 0 up to ~n_f·ε, whatever the backend.
EIG_MIN_ATOL = 1e-12

CONFIGS = {
    "sgcv": SolverConfig(),
    "sgcv_bounded": SolverConfig(lambda_bounds=(-0.01, 0.5), Lambda_bounds=(1e-4, 10.0), n_grid=9),
    "constant": SolverConfig(mode="constant", lambda_const=0.02),
    "constant_clipped": SolverConfig(mode="constant", lambda_const=-5.0),
    "reference": SolverConfig(mode="reference"),
    "reference_bounded": SolverConfig(mode="reference", lambda_bounds=(-0.1, 2.0), Lambda_bounds=(1e-3, 1e2)),
}


def assert_step_close(out, ref, spread=None):
    """W per problem in norm; info columns elementwise (λ relative to Λ_k, since λ = Λ_k − Λ_{k−1}).

    ``spread`` (optional, from ``twin_spread``): how far the twin moves under a rounding-level
    change of its own; the kernel may then differ by up to 10× that (flash-attention's rule).
    """
    W, info = out
    W_ref, info_ref = ref
    assert W.shape == W_ref.shape and info.shape == info_ref.shape
    dW = (W - W_ref).flatten(1).norm(dim=1)
    tol_W = RTOL * W_ref.flatten(1).norm(dim=1)
    scale = info_ref.abs()
    scale[:, 0] = torch.maximum(scale[:, 0], info_ref[:, 1].abs())
    tol_info = RTOL * scale
    # eig_min = s_min/max|s| is rounding noise (~n_f·ε) for a singular G_mem: absolute tolerance.
    tol_info[:, INFO_FIELDS.index("eig_min")] = EIG_MIN_ATOL
    if spread is not None:
        tol_W = torch.maximum(tol_W, 10 * spread[0])
        tol_info = torch.maximum(tol_info, 10 * spread[1])
    assert bool((dW <= tol_W).all()), f"W differs: {(dW / tol_W).max().item():.3e} x tolerance"
    for j, name in enumerate(INFO_FIELDS):
        err = (info[:, j] - info_ref[:, j]).abs()
        same = info[:, j] == info_ref[:, j]  # exact matches include ±DBL_MAX and inf
        ok = same | (err <= tol_info[:, j])
        assert bool(ok.all()), f"info[{name}] differs: {info[:, j].tolist()} vs {info_ref[:, j].tolist()}"


def twin_spread(args, memory_empty, config, ref):
    """Twin's change when the features are permuted (same problem, different rounding): [B], [B, 5]."""
    G_mem, G, H, c, m, W, Lambda_prev = args
    perm = torch.randperm(W.shape[-1], generator=torch.Generator().manual_seed(0))
    inv = torch.argsort(perm)
    G_mem_p, G_p = (x[:, perm][:, :, perm] for x in (G_mem, G))
    W_p, info_p = _slimtik_step(G_mem_p, G_p, H[..., perm], c, m, W[..., perm], Lambda_prev, memory_empty, config)
    return (W_p[..., inv] - ref[0]).flatten(1).norm(dim=1), (info_p - ref[1]).abs()


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("n_f", [1, 3, 17, 64])
@pytest.mark.parametrize("n_t", [1, 5])
@pytest.mark.parametrize("memory_empty", [True, False])
@pytest.mark.parametrize("kind", ["fit", "noise"])
def test_step_matches_torch_twin(kernel, config_name, n_f, n_t, memory_empty, kind):
    seed = zlib.crc32(repr((config_name, n_f, n_t, memory_empty, kind)).encode())
    B = 8 if n_f < 64 else 3
    args = make_problem(B, n_f, n_t, memory_empty, kind, seed)
    config = CONFIGS[config_name]
    assert_step_close(kernel(*args, memory_empty, config), _slimtik_step(*args, memory_empty, config))


@pytest.mark.parametrize("n_b", [5, 20])
@pytest.mark.parametrize("memory_empty", [True, False])
def test_step_rank_deficient_memory(kernel, n_b, memory_empty):
    """Fewer samples than features: G (and G_mem without memory) singular, eigenvalues clipped at 0.

    The fit can then be nearly exact (‖res‖² ~ 1e-7 β²‖C‖²), so sGCV and its derivative carry
    the cancellation noise of method.md §4 and the minimiser μ is only defined to ~1e-8: the
    tolerance is taken from the twin's own spread. The block code's Jacobi eigensolver is a
    different algorithm from LAPACK's, whose rounding in the null space moves sGCV further than a
    permutation moves the twin's (measured: 2.4e-9 relative in sGCV, 2.4× RTOL): its info may
    differ by 1e-8 relative.
    """
    args = make_problem(4, 24, 3, memory_empty, "fit", 7 + n_b, n_b=n_b)
    for config in (CONFIGS["sgcv"], CONFIGS["reference"]):
        ref = _slimtik_step(*args, memory_empty, config)
        spread = twin_spread(args, memory_empty, config, ref)
        if kernel is not cpp.slimtik_step:
            spread = (spread[0], torch.maximum(spread[1], 1e-9 * ref[1].abs()))  # ×10 in assert_step_close
        assert_step_close(kernel(*args, memory_empty, config), ref, spread)


def test_step_denominator_not_positive(kernel):
    """m_k below n_t·tr(...) makes sGCV's denominator ≤ 0 on part of the interval (f = DBL_MAX there)."""
    G_mem, G, H, c, m, W, Lambda_prev = make_problem(6, 17, 2, True, "fit", 11)
    m = torch.full_like(m, 3.0)
    for config in (CONFIGS["sgcv"], CONFIGS["reference"]):
        out = kernel(G_mem, G, H, c, m, W, Lambda_prev, True, config)
        assert_step_close(out, _slimtik_step(G_mem, G, H, c, m, W, Lambda_prev, True, config))


@pytest.mark.parametrize("n_f", [40, 129])
@pytest.mark.parametrize("n_t", [1, 3, 20])
@pytest.mark.parametrize("config_name", ["sgcv", "reference", "constant"])
def test_step_low_rank_batch_gram(kernel, n_f, n_t, config_name):
    """Current batch far smaller than n_f (rank G = 6), full-rank memory: the kernel factors G and,
    for sGCV with few targets, never forms Q0..Q2 (products through K = F Fᵀ instead)."""
    args = make_problem(2, n_f, n_t, False, "fit", n_f + n_t, n_b=6, n_b_memory=2 * n_f)
    config = CONFIGS[config_name]
    assert_step_close(kernel(*args, False, config), _slimtik_step(*args, False, config))


@pytest.mark.parametrize("case", ["indefinite", "zero"])
def test_step_batch_gram_not_low_rank_psd(kernel, case):
    """The kernel factors G by pivoted Cholesky when it is PSD; other symmetric G (indefinite: the
    fallback product Uᵀ G U; zero: K = 0) must give the twin's result too."""
    G_mem, G, H, c, m, W, Lambda_prev = make_problem(3, 40, 2, False, "fit", 21)
    if case == "indefinite":
        X = torch.randn(3, 40, 40, generator=torch.Generator().manual_seed(5), dtype=F64)
        G = 0.05 * (X + X.transpose(1, 2))
    else:
        G = torch.zeros_like(G)
    config = CONFIGS["sgcv"]
    assert_step_close(
        kernel(G_mem, G, H, c, m, W, Lambda_prev, False, config),
        _slimtik_step(G_mem, G, H, c, m, W, Lambda_prev, False, config),
    )


def test_reference_negative_candidates_dropped(kernel):
    """Λ_{k−1}/2 <= Λ_min: the reference grid has no negative λ."""
    G_mem, G, H, c, m, W, _ = make_problem(4, 9, 2, False, "noise", 3)
    Lambda_prev = torch.full((4,), 1.5e-7, dtype=F64)
    config = CONFIGS["reference"]
    assert_step_close(
        kernel(G_mem, G, H, c, m, W, Lambda_prev, False, config),
        _slimtik_step(G_mem, G, H, c, m, W, Lambda_prev, False, config),
    )


@pytest.mark.parametrize("eigensolver", ["syevd", "syevr", "jacobi", "torch"])
@pytest.mark.parametrize("n_f", [5, 40])
def test_step_every_eigensolver(eigensolver, n_f):
    args = make_problem(3, n_f, 2, False, "fit", n_f)
    config = CONFIGS["sgcv"]
    out = cpp.slimtik_step(*args, False, config, eigensolver=eigensolver)
    assert_step_close(out, _slimtik_step(*args, False, config))


@pytest.mark.parametrize("memory_empty", [False, True])
def test_step_with_given_eigenpairs(memory_empty):
    """G_mem's eigenpairs handed in (as the sample side does for its diagonal G_mem): the twin's step."""
    args = make_problem(3, 12, 2, memory_empty, "fit", 12)
    config = CONFIGS["sgcv"]
    s, U = torch.linalg.eigh(args[0])
    out = cpp.slimtik_step(*args, memory_empty, config, eigenpairs=(s, U.mT.contiguous()))
    assert_step_close(out, _slimtik_step(*args, memory_empty, config))
    diag = torch.diag_embed(torch.linspace(0.5, 2.0, 12, dtype=F64).expand(3, 12))
    eye = torch.eye(12, dtype=F64).expand(3, 12, 12).contiguous()
    G_mem, rest = diag + args[1], args[1:]
    s, U = torch.linalg.eigh(G_mem)
    assert_step_close(cpp.slimtik_step(G_mem, *rest, False, config, eigenpairs=(s, U.mT.contiguous())),
                      _slimtik_step(G_mem, *rest, False, config))
    assert_step_close(cpp.slimtik_step(diag, *rest, False, config, eigenpairs=(diag.diagonal(dim1=1, dim2=2), eye)),
                      _slimtik_step(diag, *rest, False, config))
    with pytest.raises(ValueError, match=r"eigenpairs\[1\]"):
        cpp.slimtik_step(*args, memory_empty, config, eigenpairs=(s, U[:, :5]))


def test_step_large_single_problem(kernel):
    """n_f above every size threshold (dgemm projections, dgemm grid), one problem."""
    args = make_problem(1, 129, 3, False, "fit", 5)
    assert_step_close(kernel(*args, False, CONFIGS["sgcv"]), _slimtik_step(*args, False, CONFIGS["sgcv"]))


# ---- Jacobi eigensolver (the arithmetic of the CUDA kernel, run on the CPU) ---------------------


def random_symmetric(B: int, n: int, seed: int, clustered: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if not clustered:
        X = torch.randn(B, n, n, generator=g, dtype=F64)
        return (X + X.transpose(1, 2)) / 2
    # Repeated eigenvalues: rotations of the eigenbasis within each cluster are all valid.
    Q, _ = torch.linalg.qr(torch.randn(B, n, n, generator=g, dtype=F64))
    s = torch.tensor([float(i // 3) for i in range(n)], dtype=F64)
    return Q @ torch.diag_embed(s.expand(B, n)) @ Q.transpose(1, 2)


def assert_eigh_ok(A: torch.Tensor, s: torch.Tensor, U: torch.Tensor):
    norm = torch.linalg.matrix_norm(A, ord=2).clamp_min(1e-300)[:, None]
    s_ref = torch.linalg.eigh(A).eigenvalues
    assert bool(((s - s_ref).abs() <= 1e-10 * norm).all())
    assert bool((s[:, 1:] >= s[:, :-1]).all()), "eigenvalues not ascending"
    recon = U @ torch.diag_embed(s) @ U.transpose(1, 2)
    assert bool(((recon - A).flatten(1).norm(dim=1) <= 1e-12 * A.shape[-1] * norm[:, 0]).all())
    eye = torch.eye(A.shape[-1], dtype=F64)
    assert bool(((U.transpose(1, 2) @ U - eye).flatten(1).norm(dim=1) <= 1e-12 * A.shape[-1]).all())


@pytest.mark.parametrize("n", [1, 2, 5, 17, 64])
@pytest.mark.parametrize("clustered", [False, True])
def test_jacobi_cold(n, clustered):
    A = random_symmetric(4, n, n, clustered)
    s, U = cpp.jacobi_eigh(A)
    assert_eigh_ok(A, s, U)


@pytest.mark.parametrize("n", [5, 17, 64])
def test_jacobi_warm_start(n):
    """Warm start from a nearby matrix's eigenvectors: same accuracy, fewer sweeps."""
    A = random_symmetric(3, n, 100 + n)
    _, U0 = torch.linalg.eigh(A)
    A2 = A + 1e-4 * random_symmetric(3, n, 200 + n)
    s_cold, U_cold, sweeps_cold = cpp.jacobi_eigh(A2, return_sweeps=True)
    s_warm, U_warm, sweeps_warm = cpp.jacobi_eigh(A2, U0, return_sweeps=True)
    assert_eigh_ok(A2, s_cold, U_cold)
    assert_eigh_ok(A2, s_warm, U_warm)
    assert sweeps_warm < sweeps_cold


def test_jacobi_reads_lower_triangle_and_zero_matrix():
    A = random_symmetric(2, 6, 9)
    A_bad = A.clone()
    A_bad[:, 0, 5] += 3.0  # upper triangle ignored, as torch.linalg.eigh does by default
    s, U = cpp.jacobi_eigh(A_bad)
    assert_eigh_ok(A, s, U)
    s0, U0 = cpp.jacobi_eigh(torch.zeros(1, 4, 4, dtype=F64))
    assert bool((s0 == 0).all()) and torch.equal(U0[0], torch.eye(4, dtype=F64))


def test_jacobi_unbatched_shape():
    A = random_symmetric(1, 7, 4)[0]
    s, U = cpp.jacobi_eigh(A)
    assert s.shape == (7,) and U.shape == (7, 7)
    assert_eigh_ok(A[None], s[None], U[None])


@pytest.mark.parametrize("n", [2, 3, 8, 17, 40])
def test_jacobi_is_the_gpu_jacobi(n):
    """The CPU's Jacobi and the CUDA kernel's block Jacobi (emulated) apply the same rotations in the
    same rounds: the same sweeps, and eigenpairs that agree to rounding (a round applied one
    rotation at a time vs all at once differs only in the order of the products)."""
    from . import block_emulation

    A = random_symmetric(3, n, 300 + n)
    for U0 in (None, torch.linalg.eigh(A + 1e-3 * random_symmetric(3, n, 400 + n))[1]):
        s_cpu, U_cpu, sweeps_cpu = cpp.jacobi_eigh(A, U0, return_sweeps=True)
        s_emu, U_emu, sweeps_emu = block_emulation.emulate_jacobi_eigh(A, U0, return_sweeps=True)
        assert abs(sweeps_cpu - sweeps_emu) <= 1
        norm = torch.linalg.matrix_norm(A, ord=2)[:, None]
        assert bool(((s_cpu - s_emu).abs() <= 1e-13 * norm).all())
        # Random spectra are well separated: the eigenvectors agree up to sign.
        overlap = (U_cpu * U_emu).sum(-2).abs()
        assert bool(((overlap - 1).abs() <= 1e-10).all())


# ---- argument validation -----------------------------------------------------------------------


def _valid_call_args():
    G_mem, G, H, c, m, W, Lp = make_problem(2, 3, 2, False, "fit", 0)
    W_out, info = torch.empty_like(W), torch.empty(2, len(INFO_FIELDS), dtype=F64)
    keep = (G_mem, G, H, c, m, W, Lp, W_out, info)  # keeps the buffers alive
    kwargs = dict(
        B=2, n_f=3, n_t=2, G_mem_ptr=G_mem.data_ptr(), G_ptr=G.data_ptr(), H_ptr=H.data_ptr(),
        c_ptr=c.data_ptr(), m_ptr=m.data_ptr(), W_ptr=W.data_ptr(), Lambda_prev_ptr=Lp.data_ptr(),
        memory_empty=False, options=_cpu.StepOptions(**VALID_OPTIONS),
        W_out_ptr=W_out.data_ptr(), info_ptr=info.data_ptr(),
    )  # fmt: skip
    return kwargs, keep


VALID_OPTIONS = dict(mode=0, lambda_const=0.0, Lambda_min=1e-7, Lambda_max=1e3, lambda_min=-math.inf, lambda_max=1e3,
                     n_grid=33, root_tol=1e-13, max_root_iter=100)


def _call_binding(kwargs):
    """The step binding with ``kwargs`` split as it takes them: the checked StepBuffers, then the rest."""
    step = {k: kwargs.pop(k) for k in ("options", "eigensolver") if k in kwargs}
    _cpu.slimtik_step(_cpu.StepBuffers(**kwargs), **step)


def test_binding_accepts_valid_arguments():
    kwargs, keep = _valid_call_args()
    _call_binding(kwargs)
    assert bool(torch.isfinite(keep[-1]).all())


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("B", 0), ("n_f", 0), ("n_t", -1), ("n_f", 50000), ("G_mem_ptr", 0), ("G_ptr", 0), ("H_ptr", 0),
        ("c_ptr", 0), ("m_ptr", 0), ("W_ptr", 0), ("Lambda_prev_ptr", 0), ("W_out_ptr", 0), ("info_ptr", 0),
        ("mode", 3), ("n_grid", 1), ("Lambda_min", 0.0), ("Lambda_max", math.inf), ("Lambda_min", 1e4),
        ("lambda_min", math.nan), ("lambda_max", -1.0), ("lambda_const", math.nan), ("root_tol", 0.0),
        ("max_root_iter", 0), ("eigensolver", 9), ("s_in_ptr", 8),
        ("n_grid", 100001),  # the same limit as the CUDA module (one validation, csrc/bindings_common.h)
        ("W_ptr", 4),  # misaligned
    ],
)  # fmt: skip
def test_binding_rejects_bad_arguments(name, value):
    """Sizes and pointers by the step binding; options when the StepOptions struct is built (the one
    validation both modules share)."""
    kwargs, _keep = _valid_call_args()
    with pytest.raises(ValueError, match=name.split("_ptr")[0] if name != "s_in_ptr" else "together"):
        if name in VALID_OPTIONS:
            _cpu.StepOptions(**{**VALID_OPTIONS, name: value})
        else:
            _call_binding({**kwargs, name: value})


@pytest.mark.parametrize(
    ("name", "value"),
    [("B", 0), ("n", 0), ("A_ptr", 0), ("s_out_ptr", 0), ("U_out_ptr", 0), ("tol", -1.0), ("max_sweeps", 0)],
)
def test_jacobi_binding_rejects_bad_arguments(name, value):
    A = random_symmetric(1, 3, 0)
    s, U = torch.empty(1, 3, dtype=F64), torch.empty(1, 3, 3, dtype=F64)
    kwargs = dict(
        B=1, n=3, A_ptr=A.data_ptr(), U0_ptr=0, s_out_ptr=s.data_ptr(), U_out_ptr=U.data_ptr(), tol=1e-14, max_sweeps=30
    )
    kwargs[name] = value
    with pytest.raises(ValueError, match=name.split("_ptr")[0]):
        _cpu.jacobi_eigh(**kwargs)


def test_backend_rejects_wrong_tensors():
    G_mem, G, H, c, m, W, Lp = make_problem(2, 3, 2, False, "fit", 0)
    config = CONFIGS["sgcv"]
    with pytest.raises(ValueError, match="G_mem"):
        cpp.slimtik_step(G_mem.float(), G, H, c, m, W, Lp, False, config)
    with pytest.raises(ValueError, match="H"):
        cpp.slimtik_step(G_mem, G, H[:, :1], c, m, W, Lp, False, config)
    with pytest.raises(ValueError, match="eigensolver"):
        cpp.slimtik_step(G_mem, G, H, c, m, W, Lp, False, config, eigensolver="qr")
    # Non-contiguous input is copied, not misread.
    Gt = G.transpose(1, 2).contiguous().transpose(1, 2)
    assert_step_close(
        cpp.slimtik_step(G_mem, Gt, H, c, m, W, Lp, False, config),
        _slimtik_step(G_mem, G, H, c, m, W, Lp, False, config),
    )
