"""SlimTrain: the loop trains, schedulers attach, checkpoints resume bit-identically."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from slimfast.optim import SlimTik
from slimfast.train import SlimTrain


class ResBody(nn.Module):
    """Residual tanh network: z ← z + h·tanh(L z), width ``width``."""

    def __init__(self, n_in: int = 2, width: int = 8, depth: int = 2, h: float = 0.5) -> None:
        super().__init__()
        self.open = nn.Linear(n_in, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.h = h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.tanh(self.open(x))
        for layer in self.layers:
            z = z + self.h * torch.tanh(layer(z))
        return z


def _data(n: int = 128, batch: int = 32, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.rand(n, 2, generator=g) - 1
    y = (torch.sin(3 * x[:, :1]) * torch.cos(2 * x[:, 1:]))
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def _setup(seed: int = 0, lr: float = 1e-2, **slim_kw) -> SlimTrain:
    torch.manual_seed(seed)
    body, head = ResBody(), nn.Linear(8, 1)
    return SlimTrain(body, head, torch.optim.Adam(body.parameters(), lr=lr), SlimTik(head, memory_depth=5, **slim_kw))


def test_fit_reduces_loss_and_reports_history() -> None:
    trainer = _setup(lr=3e-2)
    data, val = _data(), _data(64, seed=1)
    calls = []
    hist = trainer.fit(data, epochs=10, val_loader=val, progress=lambda *a: calls.append(a))
    assert hist["epoch_train_loss"][-1] < 0.6 * hist["epoch_train_loss"][0]
    assert hist["val_loss"][-1] < 0.6 * hist["val_loss"][0]
    n_steps = 10 * len(data)
    for key in ("train_loss", "step_time", "alpha", "lambda"):
        assert len(hist[key]) == n_steps
    assert len(hist["val_loss"]) == len(hist["lr"]) == len(hist["epoch_time"]) == 10
    assert calls[0] == (0, 0, len(data), hist["train_loss"][0]) and len(calls) == n_steps
    assert hist["alpha"][-1] == trainer.slim.alpha_
    assert all(p.grad is None for p in trainer.head.parameters())   # the head is solved, not trained


def test_lr_scheduler_on_body_optimizer() -> None:
    trainer = _setup(lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(trainer.body_optimizer, step_size=1, gamma=0.5)
    hist = trainer.fit(_data(), epochs=3, scheduler=sched)
    assert hist["lr"] == pytest.approx([1e-2, 5e-3, 2.5e-3])
    trainer = _setup(lr=1e-2)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(trainer.body_optimizer, patience=0, factor=0.1)
    trainer.fit(_data(), epochs=2, val_loader=_data(32, seed=2), scheduler=plateau)
    # and one on SlimTik itself attaches without error (its lr is unused)
    slim_sched = torch.optim.lr_scheduler.StepLR(trainer.slim, step_size=1)
    trainer.train_step(*_data()[0])
    slim_sched.step()


def test_callback_stops_training() -> None:
    hist = _setup().fit(_data(), epochs=5, callback=lambda epoch, h: epoch == 1)
    assert len(hist["epoch_train_loss"]) == 2


def _save_load(obj) -> dict:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _checkpoint(t: SlimTrain, sched) -> dict:
    return _save_load({"body": t.body.state_dict(), "head": t.head.state_dict(), "opt": t.body_optimizer.state_dict(),
                       "slim": t.slim.state_dict(), "sched": sched.state_dict()})


def test_resume_mid_run_is_bit_identical() -> None:
    data = _data()
    full = _setup(seed=4)
    sched = torch.optim.lr_scheduler.StepLR(full.body_optimizer, step_size=1, gamma=0.7)
    ref = full.fit(data, epochs=4, scheduler=sched, refit="none")   # a run split in two calls: no refit at the split

    first = _setup(seed=4)
    sched1 = torch.optim.lr_scheduler.StepLR(first.body_optimizer, step_size=1, gamma=0.7)
    h1 = first.fit(data, epochs=2, scheduler=sched1, refit="none")
    ckpt = _checkpoint(first, sched1)

    resumed = _setup(seed=99)                         # different init; everything comes from the checkpoint
    sched2 = torch.optim.lr_scheduler.StepLR(resumed.body_optimizer, step_size=1, gamma=0.7)
    resumed.body.load_state_dict(ckpt["body"])
    resumed.head.load_state_dict(ckpt["head"])
    resumed.body_optimizer.load_state_dict(ckpt["opt"])
    resumed.slim.load_state_dict(ckpt["slim"])
    sched2.load_state_dict(ckpt["sched"])
    h2 = resumed.fit(data, epochs=2, scheduler=sched2, refit="none")

    assert h1["train_loss"] + h2["train_loss"] == ref["train_loss"]
    for a, b in zip(list(full.body.parameters()) + list(full.head.parameters()),
                    list(resumed.body.parameters()) + list(resumed.head.parameters())):
        assert torch.equal(a, b)
    assert torch.equal(full.slim.solver_state.memory, resumed.slim.solver_state.memory)
    assert resumed.slim.lambda_history_ == full.slim.lambda_history_


def test_bf16_autocast_run_keeps_float64_statistics() -> None:
    trainer = _setup()
    losses = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for x, y in _data():
            losses.append(trainer.train_step(x, y))
    state = trainer.slim.solver_state
    assert state.memory.dtype == torch.float64 and state.Lambda.dtype == torch.float64
    assert trainer.head.weight.dtype == torch.float32
    assert all(math.isfinite(v) for v in losses)


def test_constructor_checks() -> None:
    body, head = ResBody(), nn.Linear(8, 1)
    slim = SlimTik(head)
    with pytest.raises(ValueError, match="body_optimizer"):
        SlimTrain(body, head, torch.optim.SGD(list(body.parameters()) + list(head.parameters()), lr=0.1), slim)
    with pytest.raises(ValueError, match="slim"):
        SlimTrain(body, nn.Linear(8, 1), torch.optim.SGD(body.parameters(), lr=0.1), slim)


def test_epoch_train_loss_is_an_evaluation_of_the_training_split() -> None:
    """epoch_train_loss == evaluate(loader) of the final network; the optimistic running mean of
    the post-solve batch losses is reported separately as running_train_loss."""
    trainer = _setup(lr=1e-2)
    data = _data()
    hist = trainer.fit(data, epochs=3, refit="none")
    assert hist["epoch_train_loss"][-1] == trainer.evaluate(data)
    n = sum(x.shape[0] for x, _ in data)
    last = hist["train_loss"][-len(data):]
    running = sum(v * x.shape[0] for v, (x, _) in zip(last, data)) / n
    assert hist["running_train_loss"][-1] == pytest.approx(running, rel=1e-12)
    assert hist["running_train_loss"][-1] != hist["epoch_train_loss"][-1]


@pytest.mark.parametrize("mode", ["end", "epoch"])
def test_fit_refit_is_refit_head_of_the_trained_network(mode: str) -> None:
    from slimfast.heads import head_to_matrix
    from slimfast.refit import refit_head

    data = _data()
    plain = _setup(seed=3)
    # "epoch" also refits after epoch 1, which changes training; the last refit is then re-done
    # below (a refit does not depend on the head it replaces)
    plain.fit(data, epochs=2, refit="none" if mode == "end" else "epoch")
    before = head_to_matrix(plain.head).clone()
    ref = refit_head(plain.body, plain.head, data)
    refit = _setup(seed=3)
    hist = refit.fit(data, epochs=2, refit=mode)
    assert torch.equal(head_to_matrix(refit.head), head_to_matrix(plain.head))
    assert hist["refit_alpha"][-1] == ref.alpha_
    assert len(hist["refit_alpha"]) == (1 if mode == "end" else 2)
    if mode == "end":
        assert not torch.equal(before, head_to_matrix(refit.head))


def test_fit_refit_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="refit"):
        _setup().fit(_data(), epochs=1, refit="sometimes")
