"""The new W equals the minimiser of the stacked least-squares problem (method.md §2.3)."""

from __future__ import annotations

import pytest
import torch

from slimfast import SlimTikState, SolverConfig, slimtik_step

from .solver_cases import RandomProblems, dense_slimtik_solution, rel_err


@pytest.mark.parametrize("n_f", [1, 3, 17, 64])
@pytest.mark.parametrize("n_t", [1, 5])
@pytest.mark.parametrize("r", [0, 2, 5])
def test_step_matches_dense_stacked_solve(backend: str, device: torch.device, n_f: int, n_t: int, r: int) -> None:
    B, steps = (8 if n_f < 64 else 3), 4
    # Enough samples per batch that G_mem is well conditioned: 1e-10 then tests the solver, not lstsq.
    probs = RandomProblems(B, n_f, n_t, n_b=2 * n_f + 8, seed=100 * n_f + 10 * n_t + r)
    state = SlimTikState(B, n_f, n_t, memory_depth=r, Lambda0=0.05, device=device)
    W = 0.1 * torch.randn(B, n_t, n_f, dtype=torch.float64, generator=probs.gen)
    for k in range(steps):
        G, H, c, m = probs.next_batch()
        Lambda_prev = state.Lambda.cpu().clone()
        W_new, info = slimtik_step(state, G.to(device), H.to(device), c.to(device), m, W.to(device), backend=backend)
        assert info.backend == backend
        W_new = W_new.cpu()
        for b in range(B):
            Z_mem = [probs.Z_blocks[j][b] for j in range(max(0, k - r), k)]
            W_ref = dense_slimtik_solution(probs.Z_blocks[k][b], probs.C_blocks[k][b], Z_mem, W[b],
                                           float(Lambda_prev[b]), float(info.Lambda[b]), probs.beta2)
            assert rel_err(W_new[b], W_ref) < 1e-10, (k, b)
        torch.testing.assert_close(info.Lambda.cpu(), Lambda_prev + info.lambda_.cpu(), rtol=1e-12, atol=1e-12)
        W = W_new


@pytest.mark.parametrize("n_f,n_t", [(3, 1), (17, 5)])
def test_full_memory_with_zero_Lambda0_is_ridge_on_all_data(backend: str, device: torch.device, n_f: int, n_t: int) -> None:
    """With r ≥ steps and Λ_0 = 0, W_k solves ridge regression with Λ_k on every batch seen."""
    B, steps = 2, 5
    probs = RandomProblems(B, n_f, n_t, n_b=12, seed=7)
    config = SolverConfig(mode="constant", lambda_const=0.3, Lambda_bounds=(1e-12, 1e3))
    state = SlimTikState(B, n_f, n_t, memory_depth=steps, Lambda0=0.0, device=device)
    W = torch.zeros(B, n_t, n_f, dtype=torch.float64)
    for k in range(steps):
        G, H, c, m = probs.next_batch()
        W, info = slimtik_step(state, G.to(device), H.to(device), c.to(device), m, W.to(device),
                               config=config, backend=backend)
        W = W.cpu()
        Lam = 0.3 * (k + 1)
        torch.testing.assert_close(info.Lambda.cpu(), torch.full((B,), Lam, dtype=torch.float64), rtol=1e-14, atol=0)
        Z_all = torch.cat(probs.Z_blocks, dim=2)
        C_all = torch.cat(probs.C_blocks, dim=2)
        for b in range(B):
            A = probs.beta2 * Z_all[b] @ Z_all[b].T + Lam * torch.eye(n_f, dtype=torch.float64)
            W_ridge = torch.linalg.solve(A, probs.beta2 * Z_all[b] @ C_all[b].T).T
            assert rel_err(W[b], W_ridge) < 1e-10, (k, b)


def test_numpy_in_numpy_out_and_zero_copy_inputs() -> None:
    probs = RandomProblems(2, 4, 3, n_b=16, seed=3)
    G, H, c, m = probs.next_batch()
    state = SlimTikState(2, 4, 3, memory_depth=2)
    W, info = slimtik_step(state, G.numpy(), H.numpy(), c.numpy(), m, torch.zeros(2, 3, 4, dtype=torch.float64).numpy())
    import numpy as np

    assert isinstance(W, np.ndarray) and isinstance(info.Lambda, np.ndarray)
    assert W.shape == (2, 3, 4) and info.sgcv.shape == (2,)
    assert state.step_count == 1 and state.n_stored == 1
