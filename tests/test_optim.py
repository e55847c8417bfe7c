"""SlimTik: same update as the functional solver, exact least-squares solution, checkpoints."""

from __future__ import annotations

import io
import logging
import math

import pytest
import torch
from torch import nn

from slimfast.phase_blocks import phase_blocks
from slimfast import SlimTikState, SolverConfig, slimtik_step
from slimfast.heads import head_output_shape, head_shape, head_statistics, head_to_matrix
from slimfast.optim import SlimTik

from .dense_reference import dense_design
from .solver_cases import make_head

F64 = torch.float64


def _batches(head: nn.Module, in_shape: tuple[int, ...], n: int, seed: int = 0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n):
        shape = (in_shape[0] - (k == n - 1),) + tuple(in_shape[1:])   # a partial last batch
        x = torch.randn(shape, dtype=F64, generator=g)
        y = torch.randn(head_output_shape(head, shape), dtype=F64, generator=g)
        out.append((x.to(dtype), y.to(dtype)))
    return out


HEADS = {
    "linear": (lambda: nn.Linear(4, 3), (9, 4)),
    "conv": (lambda: nn.Conv2d(2, 2, 3, stride=2, padding=1), (2, 2, 5, 5)),
    "convT": (lambda: nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1, output_padding=1), (2, 2, 3, 3)),
}


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_step_equals_functional_solver(name: str, reduction: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The general path; the fused Linear path is held to it bit for bit in test_fused_head.py.
    monkeypatch.setattr("slimfast.fused_head.ENABLED", False)
    head, in_shape = make_head(HEADS[name], seed=0)
    slim = SlimTik(head, memory_depth=2, reduction=reduction)
    n_t, n_f = head_shape(head)
    state = SlimTikState(1, n_f, n_t, memory_depth=2, Lambda0=0.05)
    W = head_to_matrix(head)[None].clone()
    for x, y in _batches(head, in_shape, 4):
        G, H, c, m = head_statistics(head, x, y, reduction)
        # A strided transposed convolution is solved per phase block (SlimTik's block_solve="auto").
        W, info = slimtik_step(state, G[None], H[None], c.reshape(1), m, W, config=SolverConfig(),
                               blocks=phase_blocks(head))
        rec = slim.step(x, y)
        assert torch.equal(head_to_matrix(head), W[0])
        assert rec.lambda_ == float(info.lambda_[0]) and rec.Lambda == float(info.Lambda[0])
        assert rec.backend == info.backend and rec.m == m
    assert torch.equal(slim.solver_state.memory, state.memory)
    assert slim.n_steps_ == 4 and len(slim.alpha_history_) == 4
    assert slim.alpha_ == pytest.approx(slim.Lambda_ / 4)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_weights_equal_stacked_least_squares(name: str) -> None:
    """W_k minimises ½β²‖WZ_k−C_k‖² + ½Σ_j β_j²‖(W−W_{k−1})Z_j‖² + Λ_{k−1}/2‖W−W_{k−1}‖² + λ/2‖W‖²."""
    head, in_shape = make_head(HEADS[name], seed=1)
    r, lam = 2, 0.01
    slim = SlimTik(head, memory_depth=r, Lambda0=0.05, lambda_mode="constant", lambda_const=lam)
    seen: list[tuple[torch.Tensor, float]] = []     # (Z_j, β_j) of earlier batches
    Lambda_prev = 0.05
    for x, y in _batches(head, in_shape, 5, seed=3):
        Z = dense_design(head, x)
        C = y.transpose(0, 1).reshape(y.shape[1], -1) if y.ndim == 4 else y.T
        beta = 1.0 / math.sqrt(C.numel())
        W_prev = head_to_matrix(head)
        n_f = Z.shape[0]
        rows = [beta * Z.T] + [bj * Zj.T for Zj, bj in seen[-r:]]
        rows += [math.sqrt(Lambda_prev) * torch.eye(n_f, dtype=F64), math.sqrt(lam) * torch.eye(n_f, dtype=F64)]
        rhs = [beta * C.T] + [bj * Zj.T @ W_prev.T for Zj, bj in seen[-r:]]
        rhs += [math.sqrt(Lambda_prev) * W_prev.T, torch.zeros(n_f, W_prev.shape[0], dtype=F64)]
        W_ref = torch.linalg.lstsq(torch.cat(rows), torch.cat(rhs), driver="gelsd").solution.T
        slim.step(x, y)
        W = head_to_matrix(head)
        assert float((W - W_ref).norm() / W_ref.norm()) < 1e-10
        seen.append((Z, beta))
        Lambda_prev += lam
        assert slim.Lambda_ == pytest.approx(Lambda_prev, rel=1e-14)


def test_first_step_is_stationary_for_half_mse_loss() -> None:
    """With mean reduction the step minimises ½·MSELoss + Λ_0/2‖W−W_0‖² + λ/2‖W‖² (autograd)."""
    head = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1).double()
    x, y = _batches(head, (3, 2, 3, 4), 1, seed=5)[0]
    W0 = [p.detach().clone() for p in head.parameters()]
    lam = 0.02
    SlimTik(head, memory_depth=3, Lambda0=0.1, lambda_mode="constant", lambda_const=lam).step(x, y)
    params = list(head.parameters())
    obj = 0.5 * nn.MSELoss()(head(x), y)
    obj = obj + sum(0.1 / 2 * ((p - p0) ** 2).sum() + lam / 2 * (p ** 2).sum() for p, p0 in zip(params, W0))
    grads = torch.autograd.grad(obj, params)
    assert max(float(g.abs().max()) for g in grads) < 1e-12


def test_memory_keeps_each_batch_scaling() -> None:
    """A partial last batch is scaled by its own β; older Gram matrices are not rescaled."""
    head = nn.Linear(3, 2).double()
    slim = SlimTik(head, memory_depth=3)
    batches = _batches(head, (8, 3), 3)
    for x, y in batches:
        slim.step(x, y)
    for j, (x, y) in enumerate(batches):
        # The fused step forms G in its own loop, head_statistics with torch's GEMM: equal up to
        # summation order (an ulp on one machine, none on another), while a wrong β would be a
        # relative error of ≥ 1/8 here.
        G = head_statistics(head, x, y)[0]
        torch.testing.assert_close(slim.solver_state.memory[0, j], G, rtol=0, atol=1e-14 * float(G.abs().max()))


def _save_load(obj) -> dict:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_state_dict_round_trip_keeps_values_and_dtypes() -> None:
    head = nn.Linear(4, 2)                       # float32 head, float64 solver state
    slim = SlimTik(head, memory_depth=3, lambda_mode="reference")
    for x, y in _batches(head, (6, 4), 4, dtype=torch.float32):
        slim.step(x, y)
    sd = _save_load(slim.state_dict())
    other = SlimTik(nn.Linear(4, 2))
    other.load_state_dict(sd)
    assert other.solver_state.memory.dtype == F64 and other.solver_state.Lambda.dtype == F64
    assert torch.equal(other.solver_state.memory, slim.solver_state.memory)
    assert torch.equal(other.solver_state.Lambda, slim.solver_state.Lambda)
    assert other.config == slim.config and other.memory_depth == 3
    assert other.n_steps_ == 4 and other.alpha_ == slim.alpha_
    for name in ("lambda_history_", "alpha_history_", "sgcv_history_", "rel_residual_history_"):
        assert getattr(other, name) == getattr(slim, name)
    again = other.state_dict()["slimtik"]
    assert again["solver"]["memory"].dtype == F64
    with pytest.raises(ValueError, match="n_f"):
        SlimTik(nn.Linear(5, 2)).load_state_dict(sd)


def test_resume_is_bit_identical() -> None:
    torch.manual_seed(3)
    head = nn.Conv2d(2, 2, 3, padding=1)
    init = {k: v.clone() for k, v in head.state_dict().items()}
    batches = _batches(head, (2, 2, 4, 4), 6, seed=7, dtype=torch.float32)
    slim = SlimTik(head, memory_depth=2)
    for x, y in batches:
        slim.step(x, y)
    full = head_to_matrix(head)

    head2 = nn.Conv2d(2, 2, 3, padding=1)
    head2.load_state_dict(init)
    slim2 = SlimTik(head2, memory_depth=2)
    for x, y in batches[:3]:
        slim2.step(x, y)
    ckpt = _save_load({"head": head2.state_dict(), "slim": slim2.state_dict()})
    head3 = nn.Conv2d(2, 2, 3, padding=1)
    head3.load_state_dict(ckpt["head"])
    slim3 = SlimTik(head3)                        # settings come from the checkpoint
    slim3.load_state_dict(ckpt["slim"])
    for x, y in batches[3:]:
        slim3.step(x, y)
    assert torch.equal(head_to_matrix(head3), full)
    assert slim3.lambda_history_ == slim.lambda_history_


def test_bf16_autocast_keeps_float64_statistics() -> None:
    head = nn.Linear(6, 2)
    slim = SlimTik(head, memory_depth=2)
    x, y = _batches(head, (10, 6), 1, dtype=torch.bfloat16)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        slim.step(x, y)
    assert slim.solver_state.memory.dtype == F64
    G_ref = head_statistics(head, x.double(), y.double())[0]
    assert torch.equal(slim.solver_state.memory[0, 0], G_ref)
    assert head.weight.dtype == torch.float32


@pytest.mark.parametrize("bad", ["width", "target_shape", "nan_features", "inf_target"])
def test_bad_input_raises_and_leaves_head_and_state_untouched(bad: str) -> None:
    head = nn.Linear(4, 2)
    slim = SlimTik(head)
    x, y = _batches(head, (8, 4), 1, dtype=torch.float32)[0]
    slim.step(x, y)
    before_w = head_to_matrix(head)
    before = slim.state_dict()["slimtik"]
    if bad == "width":
        x, arg = torch.randn(8, 5), "features"
    elif bad == "target_shape":
        y, arg = torch.randn(8), "target"
    elif bad == "nan_features":
        x, arg = x.clone(), "features"
        x[0, 1] = math.nan
    else:
        y, arg = y.clone(), "target"
        y[3, 0] = math.inf
    with pytest.raises(ValueError, match=arg):
        slim.step(x, y)
    assert torch.equal(head_to_matrix(head), before_w)
    after = slim.state_dict()["slimtik"]
    assert torch.equal(after["solver"]["memory"], before["solver"]["memory"])
    assert after["n_steps"] == before["n_steps"] == 1 and after["histories"] == before["histories"]


def test_scheduler_attaches_writer_and_logging(caplog: pytest.LogCaptureFixture, capsys) -> None:
    class Writer:
        def __init__(self) -> None:
            self.calls: list[tuple[str, float, int]] = []

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            self.calls.append((tag, value, step))

    head = nn.Linear(3, 1)
    writer = Writer()
    slim = SlimTik(head, writer=writer)
    assert slim.param_groups[0]["lr"] == 1.0
    sched = torch.optim.lr_scheduler.StepLR(slim, step_size=1, gamma=0.5)
    with caplog.at_level(logging.DEBUG, logger="slimfast"):
        for x, y in _batches(head, (8, 3), 2, dtype=torch.float32):
            slim.step(x, y)
            sched.step()
    assert ("slimtik/alpha", slim.alpha_, 2) in writer.calls
    assert any("slimtik step 2" in r.getMessage() for r in caplog.records)
    assert capsys.readouterr().out == ""
    with pytest.raises(TypeError):
        slim.add_param_group({"params": [torch.zeros(1, requires_grad=True)]})


def test_step_count_and_Lambda_come_from_the_solver_state_not_the_histories() -> None:
    """Clearing the per-step lists (as a long run may do to bound memory) changes no current value:
    n_steps_, Lambda_ and alpha_ are the solver state's; alpha_history_ is derived from Lambda_history_."""
    torch.manual_seed(0)
    head = nn.Linear(4, 2).double()
    slim = SlimTik(head, memory_depth=2)
    x, y = torch.randn(16, 4, dtype=F64), torch.randn(16, 2, dtype=F64)
    for _ in range(3):
        slim.step(x, y)
    Lam, alpha = slim.Lambda_, slim.alpha_
    assert slim.n_steps_ == slim.solver_state.step_count == 3
    assert Lam == float(slim.solver_state.Lambda[0]) and alpha == Lam / 3
    assert slim.alpha_history_ == [L / (i + 1) for i, L in enumerate(slim.Lambda_history_)]
    for name in ("lambda_history_", "Lambda_history_", "sgcv_history_", "rel_residual_history_", "cond_history_"):
        getattr(slim, name).clear()
    assert (slim.n_steps_, slim.Lambda_, slim.alpha_) == (3, Lam, alpha)
    rec = slim.step(x, y)
    assert slim.alpha_history_ == [rec.Lambda / 4] and rec.alpha == rec.Lambda / 4
