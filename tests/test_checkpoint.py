"""Checkpoint and resume: a mid-epoch checkpoint restored into fresh objects (in this process
and in a new one) continues bit-identically on CPU — body, head, Adam state, scheduler, SlimTik
memory and histories, data order, dropout and augmentation randomness; a checkpoint written
while running one backend continues on another within the backends' agreement.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import slimfast
from slimfast.backends import load_backend
from slimfast.checkpoint import Checkpoint, EpochSampler, get_rng_state, load_checkpoint, save_checkpoint
from slimfast.optim import SlimTik
from slimfast.train import SlimTrain

from .test_faults_training import _tree_equal

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, N, BATCH = 3, 32, 8
STOP_AT = (1, 2)            # save after batch index 1 of epoch 1, i.e. position (epoch 1, batch_index 2)

#: Backends agree to rounding per step (the twin tests). After 5 further steps of a float64 run
#: (head solve + Adam on the body) measured: weights and memory 1.9e-12 (cpp) / 6.3e-13 (numba)
#: relative to the torch continuation, Λ history 3.1e-11 / 5.5e-11 (λ is the minimiser of a
#: flat sGCV function, so it carries rounding further than W does).
CROSS_BACKEND_RTOL = 1e-9
CROSS_BACKEND_LAMBDA_RTOL = 1e-8


class Augmented(Dataset):
    """Fixed samples plus augmentation noise drawn from the global numpy and python RNGs (as a
    transform in the main process would): a resume must restore those states too."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = (2 * torch.rand(N, 2, generator=g) - 1).to(dtype)
        self.y = torch.sin(3 * self.x[:, :1]) * torch.cos(2 * self.x[:, 1:])

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.as_tensor(np.random.randn(2), dtype=self.x.dtype) * 0.01 + 0.01 * random.random()
        return self.x[i] + noise, self.y[i]


def make_loader(dtype: torch.dtype = torch.float32) -> DataLoader:
    return DataLoader(Augmented(dtype), batch_size=BATCH, sampler=EpochSampler(N, seed=5))


def build(seed: int = 0, backend: str | None = None, dtype: torch.dtype = torch.float32,
          dropout: float = 0.1) -> tuple[SlimTrain, Any]:
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 8), nn.Tanh()).to(dtype)
    head = nn.Linear(8, 1).to(dtype)
    opt = torch.optim.Adam(body.parameters(), lr=1e-2)
    trainer = SlimTrain(body, head, opt, SlimTik(head, memory_depth=3, backend=backend))
    return trainer, torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.8)


def snapshot(trainer: SlimTrain, sched: Any) -> dict[str, Any]:
    return {"body": trainer.body.state_dict(), "head": trainer.head.state_dict(),
            "opt": trainer.body_optimizer.state_dict(), "slim": trainer.slim.state_dict(),
            "sched": sched.state_dict(), "epoch_running": list(trainer.epoch_running)}


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


class _Stop(Exception):
    pass


def _interrupted_run(path: Path) -> dict[str, Any]:
    """Train from the start and stop (as a crash would) right after saving at STOP_AT; returns
    the RNG states at the save."""
    _seed_all(1)
    trainer, sched = build(seed=0)
    seen: list[dict[str, Any]] = []

    def progress(epoch: int, i: int, n: int | None, loss: float) -> None:
        if (epoch, i + 1) == STOP_AT:
            save_checkpoint(path, slimtrain=trainer, epoch=epoch, batch_index=i + 1, scheduler=sched,
                            extra={"note": "mid-epoch", "losses_so_far": len(seen)})
            seen.append(get_rng_state())
            raise _Stop

    with pytest.raises(_Stop):
        trainer.fit(make_loader(), EPOCHS, scheduler=sched, progress=progress)
    return seen[0]


def _uninterrupted() -> tuple[SlimTrain, Any, dict[str, list[float]]]:
    _seed_all(1)
    trainer, sched = build(seed=0)
    hist = trainer.fit(make_loader(), EPOCHS, scheduler=sched)
    return trainer, sched, hist


def test_mid_epoch_resume_is_bit_identical(tmp_path: Path) -> None:
    full, full_sched, full_hist = _uninterrupted()
    rng_at_end = get_rng_state()
    path = tmp_path / "run.pt"
    rng_at_save = _interrupted_run(path)
    assert not (tmp_path / "run.pt.tmp").exists()

    _seed_all(999)                                   # the new run starts from other RNG states
    trainer, sched = build(seed=42)                  # and other weights: all must come from the file
    ck = load_checkpoint(path, slimtrain=trainer, scheduler=sched)
    assert isinstance(ck, Checkpoint) and (ck.epoch, ck.batch_index) == STOP_AT
    assert ck.extra == {"note": "mid-epoch", "losses_so_far": 0} and ck.backend in ("cpp", "numba", "torch")
    _tree_equal(get_rng_state(), rng_at_save)
    hist = trainer.fit(make_loader(), EPOCHS, scheduler=sched, start_epoch=ck.epoch, start_batch=ck.batch_index)

    _tree_equal(snapshot(full, full_sched), snapshot(trainer, sched))
    n_done = STOP_AT[0] * (N // BATCH) + STOP_AT[1]
    assert hist["train_loss"] == full_hist["train_loss"][n_done:]
    assert hist["epoch_train_loss"] == full_hist["epoch_train_loss"][STOP_AT[0]:]   # running sums resumed
    assert hist["lr"] == full_hist["lr"][STOP_AT[0]:]
    _tree_equal(get_rng_state(), rng_at_end)


RESUME_SCRIPT = """
import sys, torch
from slimfast.checkpoint import load_checkpoint
from tests.test_checkpoint import EPOCHS, build, make_loader, snapshot
trainer, sched = build(seed=7)
ck = load_checkpoint(sys.argv[1], slimtrain=trainer, scheduler=sched)
trainer.fit(make_loader(), EPOCHS, scheduler=sched, start_epoch=ck.epoch, start_batch=ck.batch_index)
torch.save(snapshot(trainer, sched), sys.argv[2])
"""


def test_resume_in_a_new_process_is_bit_identical(tmp_path: Path) -> None:
    path, out = tmp_path / "run.pt", tmp_path / "final.pt"
    _interrupted_run(path)
    # The child must import the same slimfast as this process (the installed one, with its compiled
    # backends), not the source tree: its folder goes first, the repository (for ``tests``) second,
    # and the child runs outside the repository so ``-c`` does not put the source tree first.
    package_parent = str(Path(slimfast.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_parent, str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(path), str(out)], cwd=tmp_path, env=env, check=True,
                   timeout=120)
    full, full_sched, _ = _uninterrupted()
    _tree_equal(snapshot(full, full_sched), torch.load(out, weights_only=True))


def _cross_backend_run(tmp_path: Path, save_backend: str, load_backend_name: str | None) -> dict[str, Any]:
    """float64 run: 6 steps on ``save_backend``, checkpoint, then 5 steps on ``load_backend_name``."""
    _seed_all(3)
    trainer, sched = build(seed=0, backend=save_backend, dtype=torch.float64, dropout=0.0)
    loader = make_loader(torch.float64)
    batches = [batch for _ in range(3) for batch in loader]
    for x, y in batches[:6]:
        trainer.train_step(x.double(), y.double())
    path = tmp_path / f"{save_backend}.pt"
    save_checkpoint(path, slimtrain=trainer, epoch=1, batch_index=2, scheduler=sched)
    resumed, sched2 = build(seed=1, backend=load_backend_name, dtype=torch.float64, dropout=0.0)
    ck = load_checkpoint(path, slimtrain=resumed, scheduler=sched2)
    assert ck.backend == save_backend
    for x, y in batches[6:11]:
        resumed.train_step(x.double(), y.double())
        assert resumed.slim.last_info_.backend == (load_backend_name or resumed.slim.last_info_.backend)
    return snapshot(resumed, sched2)


def _flat(sd: dict[str, Any]) -> torch.Tensor:
    parts = [sd["body"][k].reshape(-1) for k in sorted(sd["body"])] + [sd["head"][k].reshape(-1) for k in sd["head"]]
    parts.append(sd["slim"]["slimtik"]["solver"]["memory"].reshape(-1))
    return torch.cat([p.double() for p in parts])


@pytest.mark.parametrize("target", ["cpp", "numba"])
def test_checkpoint_from_torch_backend_continues_on_another(tmp_path: Path, target: str) -> None:
    if load_backend(target) is None:
        pytest.skip(f"{target} backend not available")
    ref = _cross_backend_run(tmp_path, "torch", "torch")
    other = _cross_backend_run(tmp_path, "torch", target)
    a, b = _flat(other), _flat(ref)
    assert float((a - b).norm() / b.norm()) <= CROSS_BACKEND_RTOL
    Lam_a = torch.tensor(other["slim"]["slimtik"]["histories"]["Lambda_history_"], dtype=torch.float64)
    Lam_b = torch.tensor(ref["slim"]["slimtik"]["histories"]["Lambda_history_"], dtype=torch.float64)
    assert torch.allclose(Lam_a, Lam_b, rtol=CROSS_BACKEND_LAMBDA_RTOL, atol=0)
    assert other["slim"]["slimtik"]["n_steps"] == ref["slim"]["slimtik"]["n_steps"] == 11


def test_parts_instead_of_slimtrain_and_generators(tmp_path: Path) -> None:
    trainer, sched = build(seed=0)
    gen = torch.Generator().manual_seed(11)
    torch.rand(3, generator=gen)
    parts = dict(body=trainer.body, head=trainer.head, body_optimizer=trainer.body_optimizer, slim=trainer.slim)
    x, y = next(iter(make_loader()))
    trainer.train_step(x, y)
    save_checkpoint(tmp_path / "p.pt", **parts, epoch=0, batch_index=1, generators={"aug": gen})
    expected = torch.rand(4, generator=gen)
    other, _ = build(seed=5)
    gen2 = torch.Generator()
    ck = load_checkpoint(tmp_path / "p.pt", body=other.body, head=other.head, body_optimizer=other.body_optimizer,
                         slim=other.slim, generators={"aug": gen2}, restore_rng=False)
    assert (ck.epoch, ck.batch_index, ck.extra) == (0, 1, None)
    assert torch.equal(torch.rand(4, generator=gen2), expected)
    _tree_equal(trainer.head.state_dict(), other.head.state_dict())


def test_checkpoint_errors(tmp_path: Path) -> None:
    trainer, sched = build()
    with pytest.raises(ValueError, match="either slimtrain"):
        save_checkpoint(tmp_path / "a.pt", slimtrain=trainer, body=trainer.body, epoch=0, batch_index=0)
    with pytest.raises(ValueError, match="missing head, body_optimizer, slim"):
        save_checkpoint(tmp_path / "a.pt", body=trainer.body, epoch=0, batch_index=0)
    with pytest.raises(ValueError, match="batch_index"):
        save_checkpoint(tmp_path / "a.pt", slimtrain=trainer, epoch=0, batch_index=-1)
    torch.save({"some": "dict"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a slimfast checkpoint"):
        load_checkpoint(tmp_path / "other.pt", slimtrain=trainer)
    save_checkpoint(tmp_path / "a.pt", slimtrain=trainer, epoch=0, batch_index=0)
    with pytest.raises(ValueError, match="generators"):
        load_checkpoint(tmp_path / "a.pt", slimtrain=trainer, generators={"x": torch.Generator()})
    with pytest.raises(ValueError, match="scheduler"):
        load_checkpoint(tmp_path / "a.pt", slimtrain=trainer, scheduler=sched)
    with pytest.raises(ValueError, match="start_epoch"):
        trainer.fit(make_loader(), 2, start_epoch=3)


def test_epoch_sampler_order_depends_on_seed_and_epoch_only() -> None:
    s = EpochSampler(20, seed=3)
    s.set_epoch(4)
    state = torch.get_rng_state()
    a = list(s)
    assert torch.equal(torch.get_rng_state(), state)          # no global RNG consumed
    torch.rand(5)
    assert list(s) == a and sorted(a) == list(range(20))
    s.set_epoch(5)
    assert list(s) != a
    t = EpochSampler(20, seed=4)
    t.set_epoch(4)
    assert list(t) != a
    assert list(EpochSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]
