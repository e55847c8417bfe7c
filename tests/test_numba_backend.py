"""numba backend vs the float64 torch twin ``_torch_impl._slimtik_step`` on fresh random problems.

Statistics as method.md §4: G = β² Z Zᵀ, H = β² C Zᵀ, c = β² ‖C‖², β² = 1/n_b, m = n_b·n_t; a
non-empty memory is G_mem = G + the Grams of earlier batches. "wellposed" data C = W_true Z + noise
with decaying feature scales puts the sGCV minimum inside the admissible interval (so the grid,
the bracket and the Illinois root are all exercised); "noise" data is C pure noise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from slimfast._torch_impl import INFO_FIELDS, _slimtik_step
from slimfast.config import SolverConfig

from .cuda_cases import make_problem  # the same random problems the CUDA tests use

numba_backend = pytest.importorskip("slimfast.backends.numba_backend")

RTOL = 1e-9


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The problems are tiny: torch's intra-op pool only spins (and dominates the test time)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


CONFIGS = {
    "sgcv": SolverConfig(mode="sgcv"),
    "constant": SolverConfig(mode="constant", lambda_const=0.01),
    "reference": SolverConfig(mode="reference"),
}
#: Finite λ bounds, a narrower Λ interval, clipping: run on a smaller grid of sizes.
BOUNDED_CONFIGS = {
    "sgcv-bounded": SolverConfig(mode="sgcv", Lambda_bounds=(1e-6, 1e2), lambda_bounds=(-0.02, 10.0)),
    "constant-clipped": SolverConfig(mode="constant", lambda_const=-5.0, lambda_bounds=(-0.01, 1e3)),
    "reference-bounded": SolverConfig(mode="reference", Lambda_bounds=(1e-6, 1e2), lambda_bounds=(-0.02, 10.0)),
}


def assert_matches(W_new, info, W_ref, info_ref):
    assert W_new.dtype == torch.float64 and info.dtype == torch.float64
    assert W_new.shape == W_ref.shape and info.shape == info_ref.shape == (W_ref.shape[0], len(INFO_FIELDS))
    # W relative to the size of each problem's weights (entries may be ~0).
    w_scale = W_ref.abs().amax((1, 2), keepdim=True).clamp_min(1e-300)
    torch.testing.assert_close(W_new / w_scale, W_ref / w_scale, rtol=0.0, atol=RTOL)
    cols = dict(zip(INFO_FIELDS, info.unbind(1)))
    refs = dict(zip(INFO_FIELDS, info_ref.unbind(1)))
    # λ = Λ_k − Λ_{k−1} is a difference: its error is relative to Λ_k.
    torch.testing.assert_close(
        (cols["lambda_"] - refs["lambda_"]).abs() / refs["Lambda"],
        torch.zeros_like(refs["Lambda"]),
        rtol=0.0,
        atol=RTOL,
    )
    for name in ("Lambda", "sgcv", "rel_residual", "cond"):
        torch.testing.assert_close(cols[name], refs[name], rtol=RTOL, atol=0.0, msg=lambda s, n=name: f"{n}: {s}")
    # eig_min = s_min/max|s| is rounding noise (~n_f·ε) for a singular G_mem: absolute tolerance.
    torch.testing.assert_close(cols["eig_min"], refs["eig_min"], rtol=0.0, atol=1e-12)


def check_case(B, n_f, n_t, memory, data, config_name, config):
    seed = zlib.crc32(repr((B, n_f, n_t, memory, data, config_name)).encode())
    args = make_problem(B, n_f, n_t, memory, data, seed)
    W_new, info = numba_backend.slimtik_step(*args, config)
    W_ref, info_ref = _slimtik_step(*args, config)
    assert_matches(W_new, info, W_ref, info_ref)


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("data", ["wellposed", "noise"])
@pytest.mark.parametrize("memory", [False, True], ids=["empty", "memory"])
@pytest.mark.parametrize("n_t", [1, 5])
@pytest.mark.parametrize("n_f", [1, 3, 17, 64])
@pytest.mark.parametrize("B", [1, 3, 8])
def test_matches_torch_twin(B, n_f, n_t, memory, data, config_name):
    check_case(B, n_f, n_t, memory, data, config_name, CONFIGS[config_name])


@pytest.mark.parametrize("config_name", list(BOUNDED_CONFIGS))
@pytest.mark.parametrize("data", ["wellposed", "noise"])
@pytest.mark.parametrize("memory", [False, True], ids=["empty", "memory"])
@pytest.mark.parametrize(("B", "n_f", "n_t"), [(1, 3, 5), (3, 17, 1), (8, 17, 5)])
def test_bounded_configs_match_torch_twin(B, n_f, n_t, memory, data, config_name):
    check_case(B, n_f, n_t, memory, data, config_name, BOUNDED_CONFIGS[config_name])


@pytest.mark.parametrize("memory", [False, True], ids=["empty", "memory"])
def test_wellposed_data_has_interior_minimum(memory):
    """The test data really exercises the bracket and root: most λ_k are not at a bound."""
    args = make_problem(8, 17, 5, memory, "wellposed", seed=7)
    _, info = numba_backend.slimtik_step(*args, CONFIGS["sgcv"])
    mu = info[:, 1]
    interior = (mu > 1e-7 * 1.001) & (mu < 1e3 * 0.999)
    assert int(interior.sum()) >= 6


def test_empty_batch():
    args = make_problem(1, 3, 2, True, "wellposed", seed=1)
    args = tuple(a[:0] if isinstance(a, torch.Tensor) else a for a in args)
    W_new, info = numba_backend.slimtik_step(*args, CONFIGS["sgcv"])
    assert W_new.shape == (0, 2, 3) and info.shape == (0, len(INFO_FIELDS))


def test_import_compiles_nothing():
    code = (
        "import slimfast.backends.numba_backend as nb\n"
        "assert not nb._slimtik_step_serial.signatures and not nb._slimtik_step_parallel.signatures\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
