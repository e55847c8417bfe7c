"""Sampled GCV from statistics equals its dense definition; the chosen λ is a true minimiser."""

from __future__ import annotations

import math

import pytest
import torch

from slimfast import SlimTikState, SolverConfig, slimtik_step
from slimfast._torch_impl import _admissible_interval, _sgcv_eval, _sgcv_precompute, _trace_term

from .solver_cases import RandomProblems, dense_slimtik_solution

F64 = torch.float64


def _warm_state(probs: RandomProblems, r: int, steps: int) -> tuple[SlimTikState, torch.Tensor]:
    state = SlimTikState(probs.B, probs.n_f, probs.n_t, memory_depth=r, Lambda0=0.05)
    W = torch.zeros(probs.B, probs.n_t, probs.n_f, dtype=F64)
    for _ in range(steps):
        G, H, c, m = probs.next_batch()
        W, _ = slimtik_step(state, G, H, c, m, W, backend="torch")
    return state, W


@pytest.mark.parametrize("n_f,n_t,r", [(3, 1, 0), (17, 5, 2), (9, 4, 5)])
@pytest.mark.parametrize("well_posed", [True, False])
def test_residual_and_trace_terms_equal_dense_definitions(n_f: int, n_t: int, r: int, well_posed: bool) -> None:
    probs = RandomProblems(2, n_f, n_t, n_b=24, well_posed=well_posed, seed=11)
    state, W = _warm_state(probs, r, steps=3)
    G, H, c, m = probs.next_batch()
    k = len(probs.Z_blocks) - 1
    p = _sgcv_precompute(state.memory_gram(G), G, H, c, W, state.memory_empty)
    mu_lo, mu_hi = _admissible_interval(state.Lambda, SolverConfig())
    for frac in (0.0, 0.13, 0.5, 0.91, 1.0):
        mu = torch.exp(torch.log(mu_lo) + frac * (torch.log(mu_hi) - torch.log(mu_lo)))
        m_t = torch.full((2,), m, dtype=F64)
        _, R, _ = _sgcv_eval(mu[:, None], p, m_t, state.Lambda)
        T = _trace_term(mu[:, None], p)
        for b in range(2):
            Z, C = probs.Z_blocks[k][b], probs.C_blocks[k][b]
            Z_mem = [probs.Z_blocks[j][b] for j in range(max(0, k - r), k)]
            W_l = dense_slimtik_solution(Z, C, Z_mem, W[b], float(state.Lambda[b]), float(mu[b]), probs.beta2)
            res_dense = probs.beta2 * float(((W_l @ Z - C) ** 2).sum())
            assert abs(float(R[b, 0]) - res_dense) <= 1e-10 * float(c[b]), (frac, b)
            M = torch.cat([Zj for Zj in Z_mem] + [Z], dim=1)
            A = probs.beta2 * M @ M.T + float(mu[b]) * torch.eye(n_f, dtype=F64)
            trace_dense = n_t * probs.beta2 * float(torch.trace(Z.T @ torch.linalg.solve(A, Z)))
            assert abs(float(T[b, 0]) - trace_dense) <= 1e-10 * max(1.0, trace_dense), (frac, b)


@pytest.mark.parametrize("n_f,n_t,r", [(1, 1, 0), (3, 5, 2), (17, 1, 5), (17, 5, 0), (64, 5, 2)])
@pytest.mark.parametrize("well_posed", [True, False])
def test_chosen_lambda_beats_a_fine_grid(backend: str, device: torch.device, n_f: int, n_t: int, r: int,
                                         well_posed: bool) -> None:
    B = 4
    probs = RandomProblems(B, n_f, n_t, n_b=2 * n_f + 8, well_posed=well_posed, seed=n_f * 7 + r)
    state, W = _warm_state(probs, r, steps=2)
    G, H, c, m = probs.next_batch()
    p = _sgcv_precompute(state.memory_gram(G), G, H, c, W, state.memory_empty)
    Lambda_prev = state.Lambda.clone()
    mu_lo, mu_hi = _admissible_interval(Lambda_prev, SolverConfig())
    frac = torch.linspace(0.0, 1.0, 2001, dtype=F64)
    grid = torch.exp(torch.log(mu_lo)[:, None] + (torch.log(mu_hi) - torch.log(mu_lo))[:, None] * frac)
    m_t = torch.full((B,), m, dtype=F64)
    f_grid, _, _ = _sgcv_eval(grid, p, m_t, Lambda_prev)
    state.Lambda = state.Lambda.to(device)
    state.memory = state.memory.to(device)
    _, info = slimtik_step(state, G.to(device), H.to(device), c.to(device), m, W.to(device), backend=backend)
    f_best = f_grid.min(1).values
    assert torch.all(info.sgcv.cpu() <= f_best * (1 + 1e-8)), (info.sgcv, f_best)
    # Reported sGCV is the function's value at the chosen λ.
    f_at, _, _ = _sgcv_eval(info.Lambda.cpu()[:, None], p, m_t, Lambda_prev)
    torch.testing.assert_close(info.sgcv.cpu(), f_at[:, 0], rtol=1e-9, atol=0)


def test_denominator_uses_all_scalar_residuals() -> None:
    """With n_t > 1 the denominator is m_k − n_t·tr(·) with m_k = n_b·n_t, never n_b − ... ."""
    probs = RandomProblems(1, 5, 6, n_b=8, seed=2)
    G, H, c, m = probs.next_batch()
    assert m == 8 * 6
    W = torch.zeros(1, 6, 5, dtype=F64)
    p = _sgcv_precompute(G, G, H, c, W, memory_empty=True)
    mu = torch.tensor([[1e-7]], dtype=F64)
    T = float(_trace_term(mu, p))
    # tr((G+μI)^{-1}G) ≤ rank(G) = 5, so n_t·tr ≤ 30 < m = 48: denominator stays positive,
    # whereas n_b − n_t·tr (the reference's formula) would be negative here.
    assert 8 - T < 0 < 48 - T
    f, _, _ = _sgcv_eval(mu, p, torch.tensor([48.0], dtype=F64), torch.tensor([0.05], dtype=F64))
    assert math.isfinite(float(f))


@pytest.mark.parametrize("mode", ["constant", "reference"])
def test_other_modes(backend: str, device: torch.device, mode: str) -> None:
    probs = RandomProblems(3, 6, 2, n_b=20, seed=5)
    config = SolverConfig(mode=mode, lambda_const=0.2)
    state = SlimTikState(3, 6, 2, memory_depth=3, Lambda0=0.05, device=device)
    W = torch.zeros(3, 2, 6, dtype=F64, device=device)
    ref_state = SlimTikState(3, 6, 2, memory_depth=3, Lambda0=0.05)
    W_ref = W.cpu()
    for _ in range(3):
        G, H, c, m = probs.next_batch()
        W, info = slimtik_step(state, G.to(device), H.to(device), c.to(device), m, W, config=config, backend=backend)
        W_ref, info_ref = slimtik_step(ref_state, G, H, c, m, W_ref, config=config, backend="torch")
        torch.testing.assert_close(W.cpu(), W_ref, rtol=1e-9, atol=1e-12)
        if mode == "constant":
            torch.testing.assert_close(info.lambda_.cpu(), torch.full((3,), 0.2, dtype=F64))
        else:
            assert torch.all(info.Lambda.cpu() >= 1e-7)
