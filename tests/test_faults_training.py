"""Numerical faults during training: ``on_nonfinite="raise"|"skip"`` through SlimTik and
SlimTrain, the per-step condition number, and near-singular memory.

"Untouched" is checked bit for bit: every tensor of the state dicts, the histories, the body's
buffers, and a run that skipped a bad batch continues exactly like a run that never saw it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
import torch
from torch import nn

import slimfast.solver
import slimfast.fused_head
from slimfast._torch_impl import INFO_FIELDS
from slimfast.heads import head_statistics, head_to_matrix
from slimfast.optim import SlimTik
from slimfast.train import SlimTrain

F64 = torch.float64


def _batches(n: int, n_b: int = 12, n_in: int = 5, n_out: int = 2, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n_b, n_in, generator=g), torch.randn(n_b, n_out, generator=g)) for _ in range(n)]


def _poison(x: torch.Tensor, kind: str) -> torch.Tensor:
    """One bad entry; "overflow" (1e200, float64) makes the float64 statistics Inf, "huge" (1e80)
    makes them finite but beyond the solver's ±1e150."""
    x = x.clone().double() if kind in ("overflow", "huge") else x.clone()
    x.view(-1)[3] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "overflow": 1e200, "huge": 1e80}[kind]
    return x


def _tree_equal(a: Any, b: Any, path: str = "") -> None:
    """Exact equality of nested dicts/lists/tuples of tensors and plain values (NaN == NaN)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        same = torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(), b.nan_to_num()))
        assert same, f"{path}: max |a - b| = {float((a.double() - b.double()).abs().max()) if a.numel() else 0}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _tree_equal(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _tree_equal(u, v, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert a == b, path


def _slim_snapshot(slim: SlimTik) -> dict[str, Any]:
    """Everything a step may change, except the skip counter."""
    sd = slim.state_dict()
    sd["slimtik"] = {k: v for k, v in sd["slimtik"].items() if k != "n_skipped"}
    return {"sd": sd, "head": {k: v.clone() for k, v in slim.head.state_dict().items()}, "n_steps": slim.n_steps_}


# ----------------------------------------------------------------------------- SlimTik


def test_on_nonfinite_is_validated() -> None:
    with pytest.raises(ValueError, match="on_nonfinite"):
        SlimTik(nn.Linear(3, 1), on_nonfinite="ignore")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["huge", "overflow"])
@pytest.mark.parametrize("mode", ["raise", "skip"])
@pytest.mark.parametrize("where", ["features", "target"])
def test_slimtik_too_large_inputs_raise_in_either_mode(where: str, mode: str, kind: str) -> None:
    """Finite data whose statistics exceed ±1e150 (×1e80) or overflow float64 (×1e200) is a scale
    error, not a transient fault: one rule for both scales, in either mode."""
    head = nn.Linear(5, 2)
    slim = SlimTik(head, memory_depth=3, on_nonfinite=mode)  # type: ignore[arg-type]
    x, y = _batches(1)[0]
    slim.step(x, y)
    before = _slim_snapshot(slim)
    with pytest.raises(ValueError, match=f"^{where} too large"):
        slim.step(_poison(x, kind), y) if where == "features" else slim.step(x, _poison(y, kind))
    _tree_equal(before, _slim_snapshot(slim))
    assert slim.n_skipped_ == 0


@pytest.mark.parametrize("where,kind", [("features", "nan"), ("features", "overflow"), ("target", "inf"),
                                        ("target", "-inf"), ("target", "overflow")])
def test_slimtik_raise_names_the_input_and_keeps_state(where: str, kind: str) -> None:
    head = nn.Linear(5, 2)
    slim = SlimTik(head, memory_depth=3)
    data = _batches(3)
    for x, y in data[:2]:
        slim.step(x, y)
    before = _slim_snapshot(slim)
    x, y = data[2]
    x, y = (_poison(x, kind), y) if where == "features" else (x, _poison(y, kind))
    with pytest.raises(ValueError, match=f"^{where}"):
        slim.step(x, y)
    _tree_equal(before, _slim_snapshot(slim))
    assert slim.n_skipped_ == 0


@pytest.mark.parametrize("where,kind", [("features", "nan"), ("target", "inf"), ("features", "-inf")])
def test_slimtik_skip_leaves_everything_untouched(where: str, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """Skip: weights, memory, Λ, step count and histories bit-identical; a warning names the
    input; the record says skipped; and the run then continues exactly like one without the
    bad batch."""
    data = _batches(5, seed=1)
    bad_x, bad_y = data[2]
    bad = (_poison(bad_x, kind), bad_y) if where == "features" else (bad_x, _poison(bad_y, kind))

    torch.manual_seed(0)
    head = nn.Linear(5, 2)
    init = {k: v.clone() for k, v in head.state_dict().items()}
    slim = SlimTik(head, memory_depth=2, on_nonfinite="skip")
    for x, y in data[:2]:
        slim.step(x, y)
    before = _slim_snapshot(slim)
    with caplog.at_level(logging.WARNING, logger="slimfast"):
        rec = slim.step(*bad)
    assert rec.skipped and where in rec.reason and rec.step == 2 and rec.backend == ""
    assert math.isnan(rec.lambda_) and math.isnan(rec.cond) and rec.Lambda == slim.Lambda_
    assert slim.last_info_ is rec and slim.n_skipped_ == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "slimfast"]
    assert len(warnings) == 1 and "skipped" in warnings[0].getMessage() and where in warnings[0].getMessage()
    _tree_equal(before, _slim_snapshot(slim))
    for x, y in data[3:]:
        slim.step(x, y)

    head2 = nn.Linear(5, 2)
    head2.load_state_dict(init)
    slim2 = SlimTik(head2, memory_depth=2)
    for x, y in data[:2] + data[3:]:
        slim2.step(x, y)
    assert torch.equal(head_to_matrix(head), head_to_matrix(head2))
    assert torch.equal(slim.solver_state.memory, slim2.solver_state.memory)
    assert slim.lambda_history_ == slim2.lambda_history_ and slim.cond_history_ == slim2.cond_history_
    assert slim.state_dict()["slimtik"]["n_skipped"] == 1


class _NaNBackend:
    """A backend whose solve returns NaN weights (to reach the solver's FloatingPointError)."""

    @staticmethod
    def slimtik_step(G_mem, G, H, c, m, W, Lambda_prev, memory_empty, config):  # noqa: ANN001, ANN205
        info = torch.ones(W.shape[0], len(INFO_FIELDS), dtype=F64)
        return torch.full_like(W, math.nan), info


@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_nonfinite_solve_raises_or_skips(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    head = nn.Linear(4, 1)
    slim = SlimTik(head, memory_depth=2, on_nonfinite=mode)  # type: ignore[arg-type]
    data = _batches(2, n_in=4, n_out=1)
    slim.step(*data[0])
    before = _slim_snapshot(slim)
    monkeypatch.setattr(slimfast.solver, "resolve_backend", lambda name, device: ("nan", _NaNBackend))
    # The fused Linear path runs the compiled kernel itself; the NaN backend is the general path's.
    monkeypatch.setattr(slimfast.fused_head, "ENABLED", False)
    if mode == "raise":
        with pytest.raises(FloatingPointError, match="non-finite weights"):
            slim.step(*data[1])
    else:
        rec = slim.step(*data[1])
        assert rec.skipped and "non-finite weights" in rec.reason
    _tree_equal(before, _slim_snapshot(slim))


def test_skipped_batches_reach_the_writer() -> None:
    calls: list[tuple[str, float, int]] = []

    class Writer:
        def add_scalar(self, tag: str, value: float, step: int) -> None:
            calls.append((tag, value, step))

    head = nn.Linear(5, 2)
    slim = SlimTik(head, on_nonfinite="skip", writer=Writer())
    x, y = _batches(1)[0]
    slim.step(x, y)
    slim.step(_poison(x, "nan"), y)
    assert ("slimtik/skipped", 1.0, 1) in calls
    assert any(tag == "slimtik/cond" for tag, _, _ in calls)


def test_cond_history_is_reported_per_step_and_round_trips() -> None:
    head = nn.Linear(5, 2).double()
    slim = SlimTik(head, memory_depth=2)
    data = [(x.double(), y.double()) for x, y in _batches(4)]
    records = [slim.step(x, y) for x, y in data]
    assert slim.cond_history_ == [r.cond for r in records]
    assert all(math.isfinite(c) and c >= 1.0 for c in slim.cond_history_)
    # cond = (s_max + Λ)/(s_min + Λ) of G_mem + Λ I; G_mem of the last step = its G + the 2 before
    G_mem = sum(head_statistics(head, x, y)[0] for x, y in data[1:])
    s = torch.linalg.eigvalsh(G_mem).clamp_min(0)
    Lam = slim.Lambda_
    assert slim.cond_history_[-1] == pytest.approx(float((s[-1] + Lam) / (s[0] + Lam)), rel=1e-10)
    other = SlimTik(nn.Linear(5, 2).double())
    other.load_state_dict(slim.state_dict())
    assert other.cond_history_ == slim.cond_history_
    old = slim.state_dict()
    del old["slimtik"]["histories"]["cond_history_"]    # a dict saved before cond_history_ existed
    other.load_state_dict(old)
    assert other.cond_history_ == [] and other.lambda_history_ == slim.lambda_history_


def test_near_singular_memory_stays_finite_and_bounded() -> None:
    """Rank-one features (all batches along one direction) and Λ_min = 1e-12: G_mem is
    singular to rounding; weights stay finite, Λ_k ≥ Λ_min and cond is finite (and huge)."""
    g = torch.Generator().manual_seed(3)
    u = torch.randn(6, dtype=F64, generator=g)
    head = nn.Linear(6, 2).double()
    slim = SlimTik(head, memory_depth=4, Lambda_bounds=(1e-12, 1e3))
    for _ in range(25):
        a = torch.randn(8, 1, dtype=F64, generator=g)
        x = a * u + 1e-9 * torch.randn(8, 6, dtype=F64, generator=g)
        y = torch.cat([a, -a], 1) + 0.01 * torch.randn(8, 2, dtype=F64, generator=g)
        rec = slim.step(x, y)
        assert torch.isfinite(head.weight).all() and torch.isfinite(head.bias).all()
        assert rec.Lambda >= 1e-12 and math.isfinite(rec.cond)
    assert max(slim.cond_history_) > 1e9          # the memory really is near-singular


# ----------------------------------------------------------------------------- SlimTrain


class _BNBody(nn.Module):
    """Linear → BatchNorm → tanh: has buffers that a NaN forward pass would poison."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 8)
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.bn(self.lin(x)))


def _trainer(mode: str, seed: int = 0, loss_fn: Any = None) -> SlimTrain:
    torch.manual_seed(seed)
    body, head = _BNBody(), nn.Linear(8, 2)
    slim = SlimTik(head, memory_depth=3, on_nonfinite=mode)  # type: ignore[arg-type]
    return SlimTrain(body, head, torch.optim.Adam(body.parameters(), lr=1e-2), slim, loss_fn=loss_fn)


def _run_snapshot(t: SlimTrain) -> dict[str, Any]:
    return {"body": {k: v.clone() for k, v in t.body.state_dict().items()},
            "head": {k: v.clone() for k, v in t.head.state_dict().items()},
            "opt": t.body_optimizer.state_dict(), "slim": t.slim.state_dict()}


@pytest.mark.parametrize("where", ["features", "target"])
def test_slimtrain_raise_restores_the_body(where: str) -> None:
    t = _trainer("raise")
    data = _batches(3)
    for x, y in data[:2]:
        t.train_step(x, y)
    before = _run_snapshot(t)
    x, y = data[2]
    with pytest.raises(ValueError, match=f"^{where}"):
        t.train_step(_poison(x, "nan"), y) if where == "features" else t.train_step(x, _poison(y, "inf"))
    _tree_equal(before, _run_snapshot(t))       # BatchNorm running statistics included


def test_slimtrain_skip_equals_a_run_without_the_bad_batches(caplog: pytest.LogCaptureFixture) -> None:
    """fit() over data with a NaN-feature batch and an Inf-target batch, on_nonfinite='skip':
    bit-identical to fit() over the same data without them (body, BatchNorm buffers, Adam
    state, head, SlimTik memory and histories); the history marks the skipped steps."""
    data = _batches(6, seed=2)
    x2, y2 = data[2]
    x4, y4 = data[4]
    noisy = data[:2] + [(_poison(x2, "nan"), y2)] + data[2:4] + [(x4, _poison(y4, "inf"))] + data[4:]
    clean = data

    a = _trainer("skip")
    with caplog.at_level(logging.WARNING, logger="slimfast"):
        hist_a = a.fit(noisy, epochs=2)
    b = _trainer("skip")
    hist_b = b.fit(clean, epochs=2)

    _tree_equal(_run_snapshot(b)["body"], _run_snapshot(a)["body"])
    _tree_equal(_run_snapshot(b)["head"], _run_snapshot(a)["head"])
    _tree_equal(_run_snapshot(b)["opt"], _run_snapshot(a)["opt"])
    sa, sb = a.slim.state_dict()["slimtik"], b.slim.state_dict()["slimtik"]
    assert sa["n_skipped"] == 4 and sb["n_skipped"] == 0
    sa["n_skipped"] = 0
    _tree_equal(sb, sa)
    assert hist_a["skipped"] == [2, 2] and hist_b["skipped"] == [0, 0]
    assert hist_a["epoch_train_loss"] == hist_b["epoch_train_loss"]
    bad_steps = [2, 5, 10, 13]
    assert [i for i, v in enumerate(hist_a["train_loss"]) if math.isnan(v)] == bad_steps
    assert all(math.isnan(hist_a["lambda"][i]) for i in bad_steps)
    assert [v for i, v in enumerate(hist_a["train_loss"]) if i not in bad_steps] == hist_b["train_loss"]
    assert a.n_skipped == 4
    assert sum("skipped" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING) == 4


def _nan_loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(((pred - y) ** 2).mean() - 1e6)      # NaN: the statistics are fine, the loss is not


@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_nonfinite_loss_never_reaches_the_body(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    t = _trainer(mode, loss_fn=_nan_loss)
    x, y = _batches(1)[0]
    before = _run_snapshot(t)
    if mode == "raise":
        with pytest.raises(FloatingPointError, match="loss is nan"):
            t.train_step(x, y)
    else:
        with caplog.at_level(logging.WARNING, logger="slimfast"):
            assert math.isnan(t.train_step(x, y))
        assert t.last_skipped and "body update skipped" in caplog.text
    after = _run_snapshot(t)
    _tree_equal(before["body"], after["body"])
    _tree_equal(before["opt"], after["opt"])
    assert all(p.grad is None for p in t.body.parameters())
    assert t.slim.n_steps_ == 1                   # the head step itself was valid and is kept


def test_training_with_near_singular_memory_stays_finite() -> None:
    """A body whose features start exactly rank one (rank-one first layer, no bias) and a tiny
    Λ_min: the memory Gram matrices are singular; training stays finite, Λ ≥ Λ_min."""
    torch.manual_seed(0)
    lin = nn.Linear(2, 8, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(8, 1) @ torch.randn(1, 2))
    body = nn.Sequential(lin, nn.Tanh())
    head = nn.Linear(8, 1)
    slim = SlimTik(head, memory_depth=5, Lambda_bounds=(1e-12, 1e3))
    t = SlimTrain(body, head, torch.optim.SGD(body.parameters(), lr=1e-2), slim)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(32, 2, generator=g)
    x = torch.cat([x[:, :1], x[:, :1]], 1)       # the inputs themselves are collinear
    y = torch.sin(3 * x[:, :1])
    losses = [t.train_step(x, y) for _ in range(20)]
    assert all(math.isfinite(v) for v in losses)
    assert all(torch.isfinite(p).all() for p in list(body.parameters()) + list(head.parameters()))
    assert min(slim.Lambda_history_) >= 1e-12
    assert all(math.isfinite(c) and c >= 1 for c in slim.cond_history_)
    s = torch.linalg.eigvalsh(slim.solver_state.memory[0].sum(0))
    assert float(s[0].abs() / s[-1]) < 1e-12     # the memory Gram matrix is singular to rounding
