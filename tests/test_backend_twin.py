"""Every backend's step vs the float64 torch twin ``_torch_impl._slimtik_step`` on fresh random
problems: one body, parametrised over the conftest ``backend`` fixture (cuda on a GPU, cpp, numba,
and the host emulation of the CUDA block code; the torch backend is the twin itself).

Problems from tests/cuda_cases.py: "wellposed" data put the sGCV minimum inside the admissible
interval (so the grid, the bracket and the Illinois root are all exercised), "noise" data do not.
"""

from __future__ import annotations

import pytest
import torch

from slimfast._torch_impl import INFO_FIELDS, _slimtik_step
from slimfast.backends import load_backend

from .cuda_cases import BOUNDED_CONFIGS, CONFIGS, assert_matches, make_problem, seed_of

pytestmark = pytest.mark.usefixtures("single_thread")   # tiny problems: torch's pool only spins


@pytest.fixture
def step(backend: str, device: torch.device):
    """(the backend's slimtik_step, its device); the torch backend is the reference itself."""
    if backend == "torch":
        pytest.skip("the torch backend is the twin these tests compare with")
    return load_backend(backend).slimtik_step, device


def check_case(step, B, n_f, n_t, memory, data, config_name, config):
    run, device = step
    args = make_problem(B, n_f, n_t, memory, data, seed_of(B, n_f, n_t, memory, data, config_name), device=device)
    W_new, info = run(*args, config)
    assert W_new.device == args[0].device and info.device == args[0].device
    assert_matches(W_new, info, *_slimtik_step(*args, config))


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("data", ["wellposed", "noise"])
@pytest.mark.parametrize("memory", [False, True], ids=["empty", "memory"])
@pytest.mark.parametrize("n_t", [1, 5])
@pytest.mark.parametrize("n_f", [1, 3, 17, 64])
@pytest.mark.parametrize("B", [1, 3, 8])
def test_matches_torch_twin(step, B, n_f, n_t, memory, data, config_name):
    check_case(step, B, n_f, n_t, memory, data, config_name, CONFIGS[config_name])


@pytest.mark.parametrize("config_name", list(BOUNDED_CONFIGS))
@pytest.mark.parametrize("data", ["wellposed", "noise"])
@pytest.mark.parametrize("memory", [False, True], ids=["empty", "memory"])
@pytest.mark.parametrize(("B", "n_f", "n_t"), [(1, 3, 5), (3, 17, 1), (8, 17, 5)])
def test_bounded_configs_match_torch_twin(step, B, n_f, n_t, memory, data, config_name):
    check_case(step, B, n_f, n_t, memory, data, config_name, BOUNDED_CONFIGS[config_name])


@pytest.mark.parametrize("data", ["wellposed", "noise"])
@pytest.mark.parametrize("memory", [False, True], ids=["empty", "memory"])
@pytest.mark.parametrize(("B", "n_f", "n_t"), [(1, 17, 16), (3, 17, 72), (2, 5, 40), (1, 30, 40)])
def test_many_targets_match_torch_twin(step, B, n_f, n_t, memory, data):
    """Many targets on a small head (cdr's 17 × 72): the cpp kernel takes its products by BLAS
    from 2·n_t rows (csrc/cpu/cpu_context.h kGemmMinRows) whatever n_f, the loops below."""
    check_case(step, B, n_f, n_t, memory, data, "sgcv", CONFIGS["sgcv"])


@pytest.mark.parametrize("memory", [False, True], ids=["empty", "memory"])
def test_wellposed_data_has_interior_minimum(step, memory):
    """The test data really exercises the bracket and root: most λ_k are not at a bound."""
    run, device = step
    _, info = run(*make_problem(8, 17, 5, memory, "wellposed", seed=7, device=device), CONFIGS["sgcv"])
    mu = info[:, INFO_FIELDS.index("Lambda")]
    interior = (mu > 1e-7 * 1.001) & (mu < 1e3 * 0.999)
    assert int(interior.sum()) >= 6
