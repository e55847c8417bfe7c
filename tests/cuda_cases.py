"""Step inputs and comparisons shared by the step tests of every backend (the CUDA kernels emulated
on the CPU and on a GPU, the numba backend): one problem generator, one comparator, one check.

Statistics as method.md §4: G = β² Z Zᵀ, H = β² C Zᵀ, c = β² ‖C‖², β² = 1/n_b, m = n_b·n_t; a
non-empty memory is G_mem = G + the Grams of earlier batches. "wellposed" data C = W_true Z + noise
with feature scales decaying over three decades puts the sGCV minimum inside the admissible
interval (so the grid, the bracket and the Illinois root are all exercised); "noise" data is C pure
noise.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from slimfast._torch_impl import INFO_FIELDS, _slimtik_step
from slimfast.config import SolverConfig

F64 = torch.float64
RTOL = 1e-9

CONFIGS = {
    "sgcv": SolverConfig(mode="sgcv"),
    "constant": SolverConfig(mode="constant", lambda_const=0.01),
    "reference": SolverConfig(mode="reference"),
}
#: Finite λ bounds, a narrower Λ interval, clipping.
BOUNDED_CONFIGS = {
    "sgcv-bounded": SolverConfig(mode="sgcv", Lambda_bounds=(1e-6, 1e2), lambda_bounds=(-0.02, 10.0)),
    "constant-clipped": SolverConfig(mode="constant", lambda_const=-5.0, lambda_bounds=(-0.01, 1e3)),
    "reference-bounded": SolverConfig(mode="reference", Lambda_bounds=(1e-6, 1e2), lambda_bounds=(-0.02, 10.0)),
}


def cuda_module():
    """``slimfast._cuda``, or skip the calling test when it was not built."""
    try:
        from slimfast import _cuda
    except ImportError as exc:
        pytest.skip(f"slimfast._cuda not built: {exc}")
    return _cuda


def seed_of(*key) -> int:
    return zlib.crc32(repr(key).encode())


def make_problem(B: int, n_f: int, n_t: int, memory: bool, data: str, seed: int, device: str | torch.device = "cpu"):
    """Step inputs (G_mem, G, H, c, m, W, Lambda_prev, memory_empty) for B independent problems."""
    gen = torch.Generator().manual_seed(seed)
    opts = dict(generator=gen, dtype=F64)
    n_b = 2 * n_f + 8
    beta2 = 1.0 / n_b
    scale = 10.0 ** (-3.0 * torch.arange(n_f, dtype=F64) / max(n_f - 1, 1))
    W_true = torch.randn(B, n_t, n_f, **opts)

    def batch():
        Z = scale[:, None] * torch.randn(B, n_f, n_b, **opts)
        noise = torch.randn(B, n_t, n_b, **opts)
        C = noise if data == "noise" else W_true @ Z + 0.5 * noise
        return beta2 * Z @ Z.transpose(1, 2), beta2 * C @ Z.transpose(1, 2), beta2 * (C * C).sum((1, 2))

    G, H, c = batch()
    G_mem = G.clone()
    if memory:
        for _ in range(3):
            G_mem += batch()[0]
        W = W_true + 0.3 * torch.randn(B, n_t, n_f, **opts)
    else:
        W = torch.zeros(B, n_t, n_f, dtype=F64)
    m = torch.full((B,), float(n_b * n_t), dtype=F64)
    # Λ_{k−1} over several decades; the first problem sits at Λ_min so the reference mode's
    # negative candidates are dropped there (Λ/2 ≤ Λ_min).
    Lambda_prev = 10.0 ** (-3.0 + 3.0 * torch.rand(B, **opts))
    if B > 1:
        Lambda_prev[0] = 1e-7
    tensors = [t.contiguous().to(device) for t in (G_mem, G, H, c, m, W, Lambda_prev)]
    return (*tensors, not memory)


def assert_matches(W_new, info, W_ref, info_ref, rtol: float = RTOL) -> None:
    """Backend result vs the float64 twin: W relative to each problem's scale, info per column."""
    assert W_new.dtype == F64 and info.dtype == F64
    assert W_new.shape == W_ref.shape and info.shape == info_ref.shape == (W_ref.shape[0], len(INFO_FIELDS))
    W_new, info, W_ref, info_ref = (t.detach().cpu() for t in (W_new, info, W_ref, info_ref))
    w_scale = W_ref.abs().amax((1, 2), keepdim=True).clamp_min(1e-300)
    torch.testing.assert_close(W_new / w_scale, W_ref / w_scale, rtol=0.0, atol=rtol)
    cols = dict(zip(INFO_FIELDS, info.unbind(1)))
    refs = dict(zip(INFO_FIELDS, info_ref.unbind(1)))
    # λ = Λ_k − Λ_{k−1} is a difference: its error is relative to Λ_k.
    torch.testing.assert_close(
        (cols["lambda_"] - refs["lambda_"]).abs() / refs["Lambda"], torch.zeros_like(refs["Lambda"]),
        rtol=0.0, atol=rtol,
    )
    for name in ("Lambda", "sgcv", "rel_residual", "cond"):
        torch.testing.assert_close(cols[name], refs[name], rtol=rtol, atol=0.0, msg=lambda s, n=name: f"{n}: {s}")
    # eig_min = s_min/max|s| is rounding noise (~n_f·ε) for a singular G_mem: absolute tolerance.
    torch.testing.assert_close(cols["eig_min"], refs["eig_min"], rtol=0.0, atol=1e-12)


def check_against_twin(step, B: int, n_f: int, n_t: int, memory: bool, data: str, config_name: str,
                       device: str | torch.device = "cpu", **kwargs) -> None:
    """``step(*make_problem(...), config, **kwargs)`` vs the float64 twin on the same inputs, with
    the config named in CONFIGS or BOUNDED_CONFIGS and a seed derived from the whole case."""
    config = {**CONFIGS, **BOUNDED_CONFIGS}[config_name]
    args = make_problem(B, n_f, n_t, memory, data, seed_of(B, n_f, n_t, memory, data, config_name), device=device)
    W_new, info = step(*args, config, **kwargs)
    assert_matches(W_new, info, *_slimtik_step(*args, config))


def symmetric_cases(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Symmetric test matrices [n, n]: random, graded PSD Gram, near-degenerate, exactly repeated,
    diagonal, zero, rank one."""
    gen = torch.Generator().manual_seed(seed)
    R = torch.randn(n, n, dtype=F64, generator=gen)
    # numpy's LAPACK: torch's CPU QR/eigh cost ~0.2 s per call on some builds.
    Q = torch.from_numpy(np.linalg.qr(torch.randn(n, n, dtype=F64, generator=gen).numpy())[0])
    scale = 10.0 ** (-3.0 * torch.arange(n, dtype=F64) / max(n - 1, 1))
    Z = scale[:, None] * torch.randn(n, 2 * n + 8, dtype=F64, generator=gen)
    near = torch.ones(n, dtype=F64)
    near[: n // 2] = 2.0
    near = near + 1e-10 * torch.randn(n, dtype=F64, generator=gen)
    repeated = torch.ones(n, dtype=F64)
    repeated[: n // 3] = -1.0
    v = torch.randn(n, 1, dtype=F64, generator=gen)
    return {
        "random": R + R.T,
        "gram": Z @ Z.T / Z.shape[1],
        "near-degenerate": Q @ torch.diag(near) @ Q.T,
        "repeated": Q @ torch.diag(repeated) @ Q.T,
        "diagonal": torch.diag(torch.randn(n, dtype=F64, generator=gen)),
        "zero": torch.zeros(n, n, dtype=F64),
        "rank-one": v @ v.T,
    }


def check_eigh(A: torch.Tensor, s: torch.Tensor, U: torch.Tensor, tol: float = 1e-12) -> None:
    """s ascending, eigenvalues as torch.linalg.eigvalsh, A U = U diag(s), Uᵀ U = I (all scaled by ‖A‖)."""
    A, s, U = (t.detach().cpu() for t in (A, s, U))
    n = A.shape[-1]
    s_ref = torch.from_numpy(np.linalg.eigvalsh(A.numpy()))
    norm = s_ref.abs().amax(-1, keepdim=True).clamp_min(1e-300)  # ‖A‖₂
    assert bool((s[..., 1:] >= s[..., :-1]).all()), "eigenvalues not ascending"
    assert float(((s - s_ref).abs() / norm).max()) < tol
    resid = torch.linalg.matrix_norm(A @ U - U * s[..., None, :]) / norm[..., 0]
    assert float(resid.max()) < tol * n**0.5
    eye = torch.eye(n, dtype=F64)
    assert float((U.transpose(-1, -2) @ U - eye).abs().max()) < tol * n**0.5
