"""Exact full-data refit: ``refit_head`` == a dense float64 ridge solve with λ minimising exact GCV.

The reference is independent of the solver: the explicit design matrix (``tests/dense_reference.dense_design``),
its SVD, GCV and dGCV/dμ written in the SVD basis, a fine log grid over the same interval and
Brent's root of the derivative on the best bracket. Two gloo ranks with half the data each must
give the single-process head.
"""

from __future__ import annotations

import datetime
import math
import socket
import traceback

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from scipy.optimize import brentq
from torch import nn

from slimfast.heads import head_shape, head_to_matrix

from slimfast.refit import MU_RANGE, data_statistics, refit_head, ridge_gcv_solve
from slimfast.sweep import ModelSpec, SweepTrainer

from .dense_reference import dense_design

F64 = torch.float64


def _targets_matrix(head: nn.Module, y: torch.Tensor) -> torch.Tensor:
    n_t = head_shape(head)[0]
    if isinstance(head, nn.Linear):
        return y.reshape(-1, n_t).T.to(F64)
    return y.transpose(0, 1).reshape(n_t, -1).to(F64)


def _dense_gcv_ridge(Z: torch.Tensor, C: torch.Tensor, mu_lo: float, mu_hi: float):
    """(W, μ*, GCV(μ*)) for min ½·mean((WZ − C)²) + (μ/2)‖W‖², μ* = argmin exact GCV (SVD of Z)."""
    Z, C = Z.double().numpy(), C.double().numpy()
    n_t = C.shape[0]
    m = C.size
    Zs, Cs = Z / math.sqrt(m), C / math.sqrt(m)             # β = 1/sqrt(m): β²Z Zᵀ = G of reduction="mean"
    U, sig, Vt = np.linalg.svd(Zs.T, full_matrices=False)   # Zsᵀ = U diag(σ) Vᵀ  (rows × n_f)
    s = sig**2
    P = Cs @ U                                               # [n_t, rank] projections of the targets
    c_perp = float((Cs * Cs).sum() - (P * P).sum())         # part of C outside the column space

    def R(mu):     # ‖β(W(μ)Z − C)‖²
        return c_perp + float((P**2 * (mu / (s + mu)) ** 2).sum())

    def dR(mu):
        return float((P**2 * 2 * mu * s / (s + mu) ** 3).sum())

    def D(mu):
        return m - n_t * float((s / (s + mu)).sum())

    def dD(mu):
        return n_t * float((s / (s + mu) ** 2).sum())

    def gcv(mu):
        d = D(mu)
        return m * R(mu) / d**2 if d > 0 else math.inf

    def g(t):      # sign of dGCV/dμ at μ = e^t
        mu = math.exp(t)
        return dR(mu) * D(mu) - 2 * R(mu) * dD(mu)

    ts = np.linspace(math.log(mu_lo), math.log(mu_hi), 4001)
    vals = np.array([gcv(math.exp(t)) for t in ts])
    i = int(vals.argmin())
    assert 0 < i < len(ts) - 1, "the test problem must have an interior GCV minimum"
    t_star = brentq(g, ts[i - 1], ts[i + 1], xtol=1e-15, rtol=1e-15) if g(ts[i - 1]) * g(ts[i + 1]) < 0 else ts[i]
    mu = math.exp(t_star)
    W = ((Cs @ Zs.T) @ np.linalg.inv(Zs @ Zs.T + mu * np.eye(Z.shape[0])))
    return torch.from_numpy(W), mu, gcv(mu)


def _linear_case(seed: int = 0, n: int = 60):
    """Noisy linear-in-features data with few samples per feature: GCV has an interior minimum."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):   # same weights in every process
        torch.manual_seed(seed)
        body = nn.Sequential(nn.Linear(4, 14, dtype=F64), nn.Tanh())
        head = nn.Linear(14, 3, dtype=F64)
    x = torch.randn(n, 4, generator=g, dtype=F64)
    with torch.no_grad():
        y = torch.sin(x @ torch.randn(4, 3, generator=g, dtype=F64)) + 0.5 * torch.randn(n, 3, generator=g, dtype=F64)
    return body, head, x, y


def _conv_case(seed: int = 0, n: int = 6):
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.ConvTranspose2d(3, 1, 4, stride=2, padding=1, dtype=F64)
    z = torch.randn(n, 3, 3, 3, generator=g, dtype=F64)
    with torch.no_grad():
        y = head(z) + 0.1 * torch.randn(n, 1, 6, 6, generator=g, dtype=F64)   # signal + noise
    return None, head, z, y


def _loader(x, y, sizes):
    out, lo = [], 0
    for s in sizes:
        out.append((x[lo:lo + s], y[lo:lo + s]))
        lo += s
    assert lo == x.shape[0]
    return out


@pytest.mark.parametrize("case", ["linear", "conv_transpose"])
def test_refit_equals_dense_ridge_at_exact_gcv_minimum(case):
    body, head, x, y = _linear_case() if case == "linear" else _conv_case()
    sizes = [17, 20, 23] if case == "linear" else [1, 2, 3]          # unequal batches, one pass
    with torch.no_grad():
        Z = dense_design(head, x if body is None else body(x))
    C = _targets_matrix(head, y)
    n_f = Z.shape[0]
    scale = float((Z * Z).sum()) / C.numel() / n_f                    # tr(G)/n_f with G = ZZᵀ/m
    W_ref, mu_ref, gcv_ref = _dense_gcv_ridge(Z, C, MU_RANGE[0] * scale, MU_RANGE[1] * scale)
    before = head_to_matrix(head).clone()
    res = refit_head(body, head, _loader(x, y, sizes))
    W = head_to_matrix(head)
    assert not torch.allclose(W, before)
    assert float((W - W_ref).abs().max()) <= 1e-10 * max(1.0, float(W_ref.abs().max()))
    assert abs(res.gcv_ - gcv_ref) <= 1e-8 * gcv_ref
    assert res.alpha_ == pytest.approx(mu_ref, rel=1e-6)
    assert res.mu_bounds[0] < res.alpha_ < res.mu_bounds[1]
    assert res.m == C.numel() and res.n_samples == x.shape[0]


def test_refit_of_batched_problems_equals_each_alone():
    """ridge_gcv_solve over B problems (each scaled by its own tr(G)/n_f) == one at a time."""
    stats = []
    for seed in range(3):
        body, head, x, y = _linear_case(seed)
        G, H, c, m, _ = data_statistics(body, head, [(x, y)])
        stats.append((G * 10.0**seed, H * 10.0**seed, c * 10.0**seed, m))    # different scales
    Wb, mub, gcvb, _, _ = ridge_gcv_solve(torch.stack([s[0] for s in stats]), torch.stack([s[1] for s in stats]),
                                          torch.stack([s[2] for s in stats]), stats[0][3])
    for b, (G, H, c, m) in enumerate(stats):
        W, mu, gcv, _, _ = ridge_gcv_solve(G, H, c, m)
        assert torch.allclose(Wb[b], W, rtol=1e-12, atol=1e-12)
        assert float(mub[b]) == pytest.approx(float(mu), rel=1e-10)
        assert float(gcvb[b]) == pytest.approx(float(gcv), rel=1e-10)


def test_refit_empty_loader_raises():
    body, head, _, _ = _linear_case()
    with pytest.raises(ValueError, match="no samples"):
        refit_head(body, head, [])


def test_refit_restores_body_mode_and_is_no_grad():
    body, head, x, y = _linear_case()
    body.train()
    refit_head(body, head, [(x, y)])
    assert body.training
    assert head.weight.grad is None and all(p.grad is None for p in body.parameters())


def test_sweep_refit_heads_equal_refit_head_per_model():
    from slimfast.problems import get_problem

    problem = get_problem("peaks").subset(n_train=96, n_val=32)
    specs = [ModelSpec(seed=s, lr=1e-2, memory_depth=0) for s in (0, 1)]
    trainer = SweepTrainer.from_problem(problem, specs)
    trainer.train_step(problem.x_train[None, :32].expand(2, -1, -1), problem.y_train[None, :32].expand(2, -1, -1))
    mus = trainer.refit_heads(problem.x_train, problem.y_train)
    for row, s in enumerate(specs):
        body, head = problem.make_body(s.seed), problem.make_head(s.seed)
        body_p, head_p = trainer.model_state(s.seed)
        body.load_state_dict(body_p)
        res = refit_head(body, head, [(problem.x_train, problem.y_train)])
        assert res.alpha_ == pytest.approx(mus[row], rel=1e-8)
        W = head_to_matrix(head)
        Wt = trainer.head_matrices()[row]
        assert torch.allclose(W, Wt, rtol=1e-5, atol=1e-6)   # float32 heads: rounding of the write


# ----------------------------------------------------------------------------- two gloo ranks

def _dp_worker(rank: int, port: int, queue) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                                timeout=datetime.timedelta(seconds=50))
        body, head, x, y = _linear_case()
        shard = slice(0, 23) if rank == 0 else slice(23, None)           # unequal shards
        xs, ys = x[shard], y[shard]
        res = refit_head(body, head, _loader(xs, ys, [10, xs.shape[0] - 10]))
        queue.put({"rank": rank, "W": head_to_matrix(head).numpy(), "mu": res.alpha_, "n": res.n_samples,
                   "m": res.m})
    except Exception:
        queue.put({"rank": rank, "error": traceback.format_exc()})
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo not available")
def test_two_gloo_ranks_refit_equals_one_process(monkeypatch: pytest.MonkeyPatch):
    queue = mp.get_context("spawn").Queue()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")     # the spawned ranks inherit it; restored after the test
    procs = mp.start_processes(_dp_worker, args=(_free_port(), queue), nprocs=2, join=False, start_method="spawn")
    results = sorted((queue.get(timeout=55) for _ in range(2)), key=lambda r: r["rank"])
    procs.join(timeout=20)
    failed = [f"rank {r['rank']} failed:\n{r['error']}" for r in results if "error" in r]
    assert not failed, "\n".join(failed)
    r0, r1 = results
    assert np.array_equal(r0["W"], r1["W"]) and r0["mu"] == r1["mu"]
    body, head, x, y = _linear_case()
    single = refit_head(body, head, [(x, y)])
    W = head_to_matrix(head).numpy()
    assert np.abs(r0["W"] - W).max() <= 1e-12 * max(1.0, np.abs(W).max())
    assert r0["mu"] == pytest.approx(single.alpha_, rel=1e-9)
    assert r0["n"] == x.shape[0] and r0["m"] == single.m
