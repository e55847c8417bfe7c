"""Bad input raises TypeError/ValueError naming the argument, through every backend, and the
state is unchanged after a rejected call."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch

from slimfast import SlimTikState, SolverConfig, slimtik_step

from .solver_cases import RandomProblems, assert_state_equal, state_snapshot

F64 = torch.float64
B, NF, NT = 2, 4, 3


def _inputs(device: torch.device) -> dict[str, Any]:
    probs = RandomProblems(B, NF, NT, n_b=10, seed=1)
    G, H, c, m = probs.next_batch()
    return dict(G=G.to(device), H=H.to(device), c=c.to(device), m=m, W=torch.zeros(B, NT, NF, dtype=F64, device=device))


def _nan_at(x: torch.Tensor, value: float) -> torch.Tensor:
    y = x.clone()
    y.view(-1)[0] = value
    return y


CASES: list[tuple[str, Callable[[dict[str, Any]], None], type[Exception], str]] = [
    ("G wrong shape", lambda a: a.update(G=a["G"][:, :3, :3].contiguous()), ValueError, "G"),
    ("H wrong n_t", lambda a: a.update(H=a["H"][:, :2].contiguous()), ValueError, "H"),
    ("W mismatched B", lambda a: a.update(W=torch.zeros(3, NT, NF, dtype=F64, device=a["W"].device)), ValueError, "W"),
    ("c wrong shape", lambda a: a.update(c=a["c"][:1].contiguous()), ValueError, "c"),
    ("G float32", lambda a: a.update(G=a["G"].float()), TypeError, "G"),
    ("W int", lambda a: a.update(W=torch.zeros(B, NT, NF, dtype=torch.int64, device=a["W"].device)), TypeError, "W"),
    ("H list", lambda a: a.update(H=a["H"].tolist()), TypeError, "H"),
    ("G NaN", lambda a: a.update(G=_nan_at(a["G"], float("nan"))), ValueError, "G"),
    ("H Inf", lambda a: a.update(H=_nan_at(a["H"], float("inf"))), ValueError, "H"),
    ("W NaN", lambda a: a.update(W=_nan_at(a["W"], float("nan"))), ValueError, "W"),
    ("c negative", lambda a: a.update(c=-a["c"]), ValueError, "c"),
    ("m zero", lambda a: a.update(m=0), ValueError, "m"),
    ("m NaN array", lambda a: a.update(m=torch.full((B,), float("nan"), dtype=F64)), ValueError, "m"),
    ("m wrong length", lambda a: a.update(m=np.ones(5)), ValueError, "m"),
    ("G non-contiguous", lambda a: a.update(G=a["G"].transpose(1, 2)), ValueError, "G"),
    ("H non-contiguous", lambda a: a.update(H=torch.zeros(B, NF, NT, dtype=F64, device=a["H"].device).transpose(1, 2)),
     ValueError, "H"),
    ("G empty batch", lambda a: a.update(G=a["G"][:0]), ValueError, "G"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_names_the_argument_and_keeps_state(backend: str, device: torch.device, case: tuple) -> None:
    _, mutate, exc, argname = case
    state = SlimTikState(B, NF, NT, memory_depth=2, device=device)
    good = _inputs(device)
    slimtik_step(state, **good, backend=backend)  # non-trivial state: one Gram matrix stored
    before = state_snapshot(state)
    args = _inputs(device)
    mutate(args)
    with pytest.raises(exc, match=rf"\b{argname}\b"):
        slimtik_step(state, **args, backend=backend)
    assert_state_equal(before, state_snapshot(state))
    slimtik_step(state, **_inputs(device), backend=backend)  # still usable
    assert state.step_count == 2


def test_numpy_bad_dtype_and_layout() -> None:
    state = SlimTikState(B, NF, NT)
    args = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in _inputs(torch.device("cpu")).items()}
    with pytest.raises(TypeError, match="G"):
        slimtik_step(state, **{**args, "G": args["G"].astype(np.float32)})
    with pytest.raises(ValueError, match="H"):
        slimtik_step(state, **{**args, "H": np.asfortranarray(args["H"])})
    assert state.step_count == 0


@pytest.mark.parametrize(
    "kwargs,argname",
    [
        (dict(Lambda_bounds=(0.0, 1.0)), "Lambda_bounds"),
        (dict(Lambda_bounds=(-1.0, 1.0)), "Lambda_bounds"),
        (dict(Lambda_bounds=(2.0, 1.0)), "Lambda_bounds"),
        (dict(lambda_bounds=(-1.0, 0.0)), "lambda_bounds"),
        (dict(mode="grid"), "mode"),
        (dict(n_grid=1), "n_grid"),
        (dict(lambda_const=float("nan")), "lambda_const"),
    ],
)
def test_bad_config(kwargs: dict, argname: str) -> None:
    with pytest.raises(ValueError, match=argname):
        SolverConfig(**kwargs)


def test_bounds_that_exclude_every_lambda(backend: str, device: torch.device) -> None:
    """Λ_{k−1} = 4, λ ≥ 2 required, but Λ_k ≤ 5: no admissible λ."""
    state = SlimTikState(B, NF, NT, Lambda0=4.0, device=device)
    before = state_snapshot(state)
    config = SolverConfig(Lambda_bounds=(1e-7, 5.0), lambda_bounds=(2.0, 1e3))
    with pytest.raises(ValueError, match="bounds exclude every"):
        slimtik_step(state, **_inputs(device), config=config, backend=backend)
    assert_state_equal(before, state_snapshot(state))


def test_Lambda_above_its_bound_is_rejected_not_stepped(backend: str, device: torch.device) -> None:
    """A state whose Λ exceeds Λ_max (fresh or loaded; a step never leaves one) would need
    λ ≈ −Λ_{k−1}, which scales the weights by ~Λ_{k−1}/Λ_max: rejected, state unchanged."""
    state = SlimTikState(B, NF, NT, Lambda0=1e6, device=device)
    before = state_snapshot(state)
    with pytest.raises(ValueError, match="exceeds Lambda_max"):
        slimtik_step(state, **_inputs(device), backend=backend)
    assert_state_equal(before, state_snapshot(state))


@pytest.mark.parametrize(
    "kwargs,argname",
    [(dict(batch=0), "batch"), (dict(n_features=0), "n_features"), (dict(memory_depth=-1), "memory_depth"),
     (dict(Lambda0=float("nan")), "Lambda0"), (dict(Lambda0=-1.0), "Lambda0")],
)
def test_bad_state(kwargs: dict, argname: str) -> None:
    base = dict(batch=1, n_features=2, n_targets=1)
    with pytest.raises(ValueError, match=argname):
        SlimTikState(**{**base, **kwargs})


def test_unknown_or_wrong_device_backend() -> None:
    state = SlimTikState(B, NF, NT)
    with pytest.raises(ValueError, match="backend"):
        slimtik_step(state, **_inputs(torch.device("cpu")), backend="fortran")
    with pytest.raises(ValueError, match="cuda"):
        slimtik_step(state, **_inputs(torch.device("cpu")), backend="cuda")
    assert state.step_count == 0
