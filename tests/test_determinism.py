"""Determinism: the same seed gives bit-identical weights on CPU run after run (per backend), and
the CPU backends' trajectories agree within a stated tolerance over 20 steps.

Tolerances. Every backend runs the same algorithm in float64 (same grid, bracket and root
iteration as the torch twin), so they differ by rounding only; how far that rounding travels
depends on the loop:
- functional API, 20 steps on fixed statistics: measured ≤ 1.3e-12 relative in W and Λ
  (well- and ill-posed problems, sGCV and reference modes) → TRAJECTORY_RTOL = 1e-9;
- float64 slimTrain, 20 steps (head solve + Adam on the body): measured ≤ 8e-10 relative in
  the parameters and in Λ. λ is the minimiser of a flat sGCV function, so its rounding-level
  differences are ~1e-10 relative, and the body and the memory (cond up to ~1e6 here) carry
  them forward → TRAINING_RTOL = 1e-7.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from slimfast import SlimTikState, SolverConfig, slimtik_step
from slimfast.optim import SlimTik
from slimfast.train import SlimTrain

from .conftest import CPU_BACKENDS, EMULATE, require_backend
from .solver_cases import RandomProblems, assert_backends_follow_the_twin, rel_err
from .test_faults_training import _tree_equal

F64 = torch.float64
TRAJECTORY_RTOL = 1e-9
TRAINING_RTOL = 1e-7
N_STEPS = 20


def _data(dtype: torch.dtype, n: int = 96, batch: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    x = (2 * torch.rand(n, 2, generator=g) - 1).to(dtype)
    y = torch.sin(3 * x[:, :1]) * torch.cos(2 * x[:, 1:])
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def _train(backend: str, seed: int, dtype: torch.dtype = torch.float32, epochs: int = 2,
           dropout: float = 0.1) -> tuple[SlimTrain, dict[str, list[float]]]:
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 8), nn.Tanh()).to(dtype)
    head = nn.Linear(8, 1).to(dtype)
    trainer = SlimTrain(body, head, torch.optim.Adam(body.parameters(), lr=1e-2),
                        SlimTik(head, memory_depth=3, backend=backend))
    return trainer, trainer.fit(_data(dtype), epochs)


def _snapshot(t: SlimTrain) -> dict[str, Any]:
    return {"body": t.body.state_dict(), "head": t.head.state_dict(), "opt": t.body_optimizer.state_dict(),
            "slim": t.slim.state_dict()}


@pytest.fixture(params=CPU_BACKENDS + (EMULATE,))
def cpu_backend(request: pytest.FixtureRequest) -> str:
    require_backend(request.param)
    return request.param


def test_same_seed_gives_identical_weights(cpu_backend: str) -> None:
    """Two runs from the same seed (dropout included) are bit-identical; another seed is not."""
    a, hist_a = _train(cpu_backend, seed=5)
    b, hist_b = _train(cpu_backend, seed=5)
    _tree_equal(_snapshot(a), _snapshot(b))
    assert hist_a["train_loss"] == hist_b["train_loss"]
    assert a.slim.last_info_.backend == cpu_backend
    c, _ = _train(cpu_backend, seed=6)
    assert not torch.equal(c.head.weight, a.head.weight)


def test_functional_solver_is_deterministic(cpu_backend: str) -> None:
    """Repeated calls with the same inputs give identical bits (no thread-order effects)."""
    outs = []
    for _ in range(3):
        probs = RandomProblems(6, 12, 3, n_b=8, seed=2)
        state = SlimTikState(6, 12, 3, memory_depth=2)
        W = torch.zeros(6, 3, 12, dtype=F64)
        for _ in range(5):
            W, info = slimtik_step(state, *probs.next_batch(), W, backend=cpu_backend)
        outs.append((W, info.Lambda, info.cond, state.memory))
    for other in outs[1:]:
        for x, y in zip(outs[0], other):
            assert torch.equal(x, y)


def _functional_trajectory(backend: str, config: SolverConfig, well_posed: bool) -> list[tuple[torch.Tensor, ...]]:
    probs = RandomProblems(4, 10, 3, n_b=16, well_posed=well_posed, seed=0)
    state = SlimTikState(4, 10, 3, memory_depth=3)
    W = torch.zeros(4, 3, 10, dtype=F64)
    traj = []
    for _ in range(N_STEPS):
        W, info = slimtik_step(state, *probs.next_batch(), W, config=config, backend=backend)
        traj.append((W.clone(), info.Lambda.clone()))
    return traj


@pytest.mark.parametrize("mode", ["sgcv", "reference"])
@pytest.mark.parametrize("well_posed", [True, False], ids=["fit", "noise"])
def test_backends_agree_over_20_functional_steps(mode: str, well_posed: bool) -> None:
    config = SolverConfig(mode=mode)
    assert_backends_follow_the_twin(lambda name: _functional_trajectory(name, config, well_posed), TRAJECTORY_RTOL)


def _train_steps(backend: str, n_steps: int = N_STEPS) -> SlimTrain:
    """float64 slimTrain (head solve + Adam on the body, no dropout), exactly ``n_steps`` steps."""
    torch.manual_seed(3)
    body = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh()).double()
    head = nn.Linear(8, 1).double()
    trainer = SlimTrain(body, head, torch.optim.Adam(body.parameters(), lr=1e-2),
                        SlimTik(head, memory_depth=3, backend=backend))
    data = _data(F64)
    for k in range(n_steps):
        trainer.train_step(*data[k % len(data)])
    return trainer


def _params(t: SlimTrain) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in list(t.body.parameters()) + list(t.head.parameters())])


def test_backends_agree_over_20_training_steps() -> None:
    ref = _train_steps("torch")
    compared = 0
    for name in ("cpp", "numba"):
        try:
            require_backend(name)
        except pytest.skip.Exception:
            continue
        t = _train_steps(name)
        assert t.slim.n_steps_ == ref.slim.n_steps_ == N_STEPS
        assert rel_err(_params(t), _params(ref)) <= TRAINING_RTOL, name
        Lam, Lam_ref = (torch.tensor(x.slim.Lambda_history_, dtype=F64) for x in (t, ref))
        assert float(((Lam - Lam_ref).abs() / Lam_ref).max()) <= TRAINING_RTOL, name
        compared += 1
    if compared == 0:
        pytest.skip("only the torch backend is available")
