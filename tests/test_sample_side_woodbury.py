"""The sample side's tridiagonal route: cpp kernel = its float64 twin = the eigen route's twin.

``_sample_side_woodbury_step`` (solves with K + μI) against ``_sample_side_step`` (K's
eigendecomposition, which test_sample_side checks against the stacked least squares) and against
the stacked least squares itself; ``_cpu.sample_side_woodbury_step`` (tridiagonal T + μI) against
the twin on the same inputs; the cpp backend taking this route exactly when N < n_f.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from slimfast import SlimTik, SolverConfig
from slimfast import sample_side as sample_side_module
from slimfast.backends import load_backend
from slimfast.sample_side import SAMPLE_SIDE_CROSSOVER, SAMPLE_SIDE_CROSSOVER_CPP, _sample_side_step, sample_side_step
from slimfast.sample_side_woodbury import _sample_side_woodbury_step, woodbury_step
from slimfast.state import SampleSideState

from .solver_cases import dense_slimtik_solution, rel_err

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
CPP = load_backend("cpp")
needs_cpp = pytest.mark.skipif(CPP is None or not hasattr(getattr(CPP, "_cpu", None), "sample_side_woodbury_step"),
                               reason="no compiled CPU extension")


def problem(n_f: int, n_b: int, n_t: int, r: int, Lambda_prev: float, seed: int, scale: float = 1.0):
    """One step's inputs: stored blocks β_jZ_j, this batch (Z, C, β, m), W_{k−1}, Λ_{k−1}, and the
    route's (K, A, R0, WM, c) from them. Targets from a linear model plus noise (λ interior)."""
    g = torch.Generator().manual_seed(seed)
    W_true = torch.randn(1, n_t, n_f, dtype=F64, generator=g) / math.sqrt(n_f)
    blocks = [scale * torch.randn(1, n_f, n_b, dtype=F64, generator=g) / math.sqrt(n_b * n_t) for _ in range(r)]
    Z = scale * torch.randn(1, n_f, n_b, dtype=F64, generator=g)
    C = W_true @ Z + 0.1 * torch.randn(1, n_t, n_b, dtype=F64, generator=g)
    W = 0.1 * torch.randn(1, n_t, n_f, dtype=F64, generator=g)
    m = torch.tensor([float(n_b * n_t)], dtype=F64)
    beta = 1.0 / math.sqrt(n_b * n_t)
    Mz = beta * Z
    M = torch.cat([*blocks, Mz], dim=2)
    K = M.mT @ M
    K = 0.5 * (K + K.mT)
    route = (K, M.mT @ Mz, W @ Mz - beta * C, W @ M, beta * beta * (C * C).sum((1, 2)), m,
             torch.tensor([Lambda_prev], dtype=F64))
    return blocks, Z, C, beta, m, W, M, route


def info_err(info: torch.Tensor, ref: torch.Tensor) -> float:
    """rel_err over the info columns, an sGCV of +inf (μ inadmissible, as in constant mode) equal
    only to +inf."""
    same_inf = torch.isinf(info) & (info == ref)
    assert bool((torch.isinf(info) == torch.isinf(ref)).all()), (info, ref)
    return rel_err(torch.where(same_inf, 0.0, info), torch.where(same_inf, 0.0, ref))


@pytest.fixture
def eigen_route_calls(monkeypatch) -> list[str]:
    """The backend names ``sample_side._eigen_route`` is called with (it still runs)."""
    calls: list[str] = []
    real = sample_side_module._eigen_route

    def spy(name, *args):
        calls.append(name)
        return real(name, *args)

    monkeypatch.setattr(sample_side_module, "_eigen_route", spy)
    return calls


CASES = [  # n_f, n_b, n_t, r, Λ_{k−1}
    (120, 10, 1, 0, 0.05),
    (150, 12, 3, 2, 1e-3),
    (200, 8, 2, 5, 3.0),
    (90, 12, 4, 1, 0.3),
]


@pytest.mark.parametrize("mode", ["sgcv", "constant", "reference"])
@pytest.mark.parametrize("case", CASES)
def test_twin_equals_the_eigen_route_and_the_stacked_least_squares(case, mode: str) -> None:
    n_f, n_b, n_t, r, Lp = case
    config = SolverConfig(mode=mode, lambda_const=0.01)
    for seed in range(3):
        blocks, Z, C, beta, m, W, M, route = problem(n_f, n_b, n_t, r, Lp, seed)
        X, info = _sample_side_woodbury_step(*route, config)
        W_new = (route[-1] / info[:, 1])[:, None, None] * W + X @ M.mT
        W_eig, info_eig = _sample_side_step(blocks, Z, C, torch.tensor([beta], dtype=F64), m, W, route[-1], r == 0,
                                            config)
        assert rel_err(W_new, W_eig) < 1e-9
        assert info_err(info[:, :4], info_eig[:, :4]) < 1e-9
        assert rel_err(info[:, 4], info_eig[:, 4]) < 1e-8 and bool((info[:, 5] == 0).all())
        memory = [Bj[0] / beta for Bj in blocks]
        W_ref = dense_slimtik_solution(Z[0], C[0], memory, W[0], Lp, float(info[0, 1]), beta ** 2)
        assert rel_err(W_new[0], W_ref) < 1e-10


@needs_cpp
@pytest.mark.parametrize("mode", ["sgcv", "constant", "reference"])
@pytest.mark.parametrize("case", CASES + [(400, 64, 3, 5, 0.05)])
def test_cpp_kernel_equals_the_twin(case, mode: str) -> None:
    n_f, n_b, n_t, r, Lp = case
    config = SolverConfig(mode=mode, lambda_const=-0.5 * Lp)
    for seed in range(3):
        *_, route = problem(n_f, n_b, n_t, r, Lp, 100 + seed)
        X, info = woodbury_step(CPP, *route, config)
        X_twin, info_twin = _sample_side_woodbury_step(*route, config)
        assert rel_err(X, X_twin) < 1e-9
        assert info_err(info[:, :4], info_twin[:, :4]) < 1e-9
        assert rel_err(info[:, 4], info_twin[:, 4]) < 1e-9 and bool((info[:, 5] == 0).all())


@needs_cpp
def test_cpp_kernel_steps_a_batch_of_problems_independently() -> None:
    routes = [problem(100, 9, 2, 3, Lp, seed)[-1] for seed, Lp in enumerate((0.01, 0.2, 5.0))]
    stacked = [torch.cat(parts) for parts in zip(*routes)]
    X, info = woodbury_step(CPP, *stacked, SolverConfig())
    for b, route in enumerate(routes):
        X_b, info_b = woodbury_step(CPP, *route, SolverConfig())
        assert torch.equal(X[b:b + 1], X_b) and torch.equal(info[b:b + 1], info_b)


@needs_cpp
@pytest.mark.parametrize("n_f, n_b, r, woodbury", [(200, 16, 3, True), (40, 16, 3, False)])
def test_cpp_takes_the_route_exactly_when_the_memory_has_fewer_columns_than_features(
        eigen_route_calls: list[str], n_f: int, n_b: int, r: int, woodbury: bool) -> None:
    """N = (r + 1)·n_b = 64: the route for n_f = 200, the eigendecomposition for n_f = 40 (G_mem
    may have full rank there); the torch backend always decomposes."""
    calls = eigen_route_calls
    g = torch.Generator().manual_seed(0)
    for backend in ("cpp", "torch"):
        state = SampleSideState(1, n_f, 2, r, 0.05, torch.device("cpu"))
        W = torch.zeros(1, 2, n_f, dtype=F64)
        for _ in range(r + 2):
            Z = torch.randn(1, n_f, n_b, dtype=F64, generator=g)
            C = torch.randn(1, 2, n_b, dtype=F64, generator=g)
            W, _ = sample_side_step(state, Z, C, 1.0 / math.sqrt(2 * n_b), 2 * n_b, W, backend=backend)
    assert ("cpp" in calls) == (not woodbury) and "torch" in calls


@needs_cpp
@pytest.mark.parametrize("bad", [dict(N=0), dict(n_b=9), dict(n_t=0), dict(K_ptr=0), dict(X_out_ptr=0),
                                 dict(info_ptr=3)])
def test_binding_rejects_bad_sizes_and_pointers(bad: dict) -> None:
    *_, (K, A, R0, WM, c, m, Lp) = problem(30, 8, 2, 0, 0.1, 0)
    X, info = torch.empty(1, 2, 8, dtype=F64), torch.empty(1, 6, dtype=F64)
    args = dict(B=1, N=8, n_b=8, n_t=2, K_ptr=K.data_ptr(), A_ptr=A.data_ptr(), R0_ptr=R0.data_ptr(),
                WM_ptr=WM.data_ptr(), c_ptr=c.data_ptr(), m_ptr=m.data_ptr(), Lambda_ptr=Lp.data_ptr(),
                options=CPP._kernel_options(SolverConfig()), X_out_ptr=X.data_ptr(), info_ptr=info.data_ptr())
    args.update(bad)
    with pytest.raises(ValueError, match=next(iter(bad))):
        CPP._cpu.sample_side_woodbury_step(**args)


@needs_cpp
def test_cpp_switches_to_the_sample_side_at_its_own_crossover() -> None:
    """(r + 1)·n_b = 24 columns: n_f = 41 lies between the cpp crossover (1.25·24 = 30) and the
    others' (2·24 = 48), so the cpp backend steps on the sample side and torch on the feature side."""
    assert SAMPLE_SIDE_CROSSOVER_CPP * 24 < 41 < SAMPLE_SIDE_CROSSOVER * 24
    x, y = torch.randn(8, 40), torch.randn(8, 2)
    for backend, side in (("cpp", "samples"), ("torch", "features")):
        slim = SlimTik(nn.Linear(40, 2), memory_depth=2, backend=backend)
        assert slim.step(x, y).side == side


@needs_cpp
def test_cpp_kernel_declines_a_shifted_kernel_matrix_that_is_not_positive_definite() -> None:
    """K + μI with a pivot ≤ 0 (here K = −I, as rounding could make a K far beyond μ/ε): None."""
    *_, (K, A, R0, WM, c, m, Lp) = problem(30, 8, 2, 0, 0.1, 0)
    K_bad = -torch.eye(8, dtype=F64)[None].contiguous()
    assert woodbury_step(CPP, K_bad, A, R0, WM, c, m, Lp, SolverConfig()) is None
    assert woodbury_step(CPP, K, A, R0, WM, c, m, Lp, SolverConfig()) is not None


@needs_cpp
def test_a_declined_batch_steps_through_the_eigendecomposition(monkeypatch, eigen_route_calls: list[str]) -> None:
    calls = eigen_route_calls
    monkeypatch.setattr(sample_side_module, "woodbury_step", lambda *args: None)
    g = torch.Generator().manual_seed(2)
    states = {be: SampleSideState(1, 120, 2, 2, 0.05, torch.device("cpu")) for be in ("cpp", "torch")}
    W = {be: torch.zeros(1, 2, 120, dtype=F64) for be in states}
    for _ in range(4):
        Z, C = torch.randn(1, 120, 10, dtype=F64, generator=g), torch.randn(1, 2, 10, dtype=F64, generator=g)
        for be in states:
            W[be], _ = sample_side_step(states[be], Z, C, 1.0 / math.sqrt(20), 20, W[be], backend=be)
        assert rel_err(W["cpp"], W["torch"]) < 1e-9
    assert calls.count("cpp") == 4
