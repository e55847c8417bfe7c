"""SlimTik's contract with its caller: the head's dtype bounds the new weights, Λ_0 lies in its
bounds, copies continue exactly like the original, ``step`` says how it is called, one head has
one SlimTik, and numpy integers count as integers.

"Unchanged" is bit for bit (``_tree_equal`` over the state dicts, the head and the histories).
"""

from __future__ import annotations

import copy
import gc
import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from slimfast.config import SolverConfig
from slimfast.optim import SlimTik, release_head
from slimfast.state import SlimTikState

from .test_faults_training import _batches, _slim_snapshot, _tree_equal


def _half_case(n_b: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ~1e-3 and targets up to 1.1e4: the float64 solve is fine, |W| ~ 5e5 is not a float16."""
    g = torch.Generator().manual_seed(3)
    x = (1e-3 * torch.randn(n_b, 8, generator=g)).half()
    y = (1.1e4 * torch.rand(n_b, 2, generator=g)).half()
    return x, y


# ----------------------------------------------------------------------------- half-precision heads


@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_half_head_overflow_in_the_cast_leaves_everything_unchanged(mode: str) -> None:
    torch.manual_seed(0)
    head = nn.Linear(8, 2).half()
    # λ = 0 at Λ = 1e-7: the weights are the least-squares fit, so they scale with the targets
    slim = SlimTik(head, memory_depth=2, Lambda0=1e-7, lambda_mode="constant",
                   on_nonfinite=mode)  # type: ignore[arg-type]
    x, y = _half_case()
    good = [(x, (y.double() * 1e-4).half()), (x.flip(0), (y.double() * 2e-4).half())]  # |W| ~ 1e2
    slim.step(*good[0])
    before = _slim_snapshot(slim)
    if mode == "raise":
        with pytest.raises(FloatingPointError, match="float16"):
            slim.step(x, y)
    else:
        rec = slim.step(x, y)
        assert rec.skipped and "float16" in rec.reason and slim.n_skipped_ == 1
    _tree_equal(before, _slim_snapshot(slim))
    assert bool(torch.isfinite(head.weight).all()) and bool(torch.isfinite(head.bias).all())
    rec = slim.step(*good[1])                # and the next good batch just works
    assert not rec.skipped and rec.step == 2


def test_half_head_overflow_is_caught_through_slimtrain() -> None:
    from slimfast.train import SlimTrain

    torch.manual_seed(0)
    body, head = nn.Identity(), nn.Linear(8, 2).half()
    trainer = SlimTrain(body, head, torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), SlimTik(head))
    x, y = _half_case()
    w0 = head.weight.clone()
    with pytest.raises(FloatingPointError):
        trainer.train_step(x, y)
    assert torch.equal(head.weight, w0) and trainer.slim.solver_state.step_count == 0


# ----------------------------------------------------------------------------- Λ_0 and its bounds


@pytest.mark.parametrize("Lambda0", [1e6, 1e3 * (1 + 1e-12), math.inf, math.nan, -1e-3])
def test_Lambda0_outside_its_bounds_is_rejected_at_construction(Lambda0: float) -> None:
    with pytest.raises(ValueError, match="Lambda0"):
        SlimTik(nn.Linear(3, 1), Lambda0=Lambda0)
    with pytest.raises(ValueError, match="Lambda0"):
        SlimTikState(1, 4, 1, 2, Lambda0, config=SolverConfig())
    with pytest.raises(ValueError, match="Lambda0"):
        SlimTik(nn.Linear(3, 1), Lambda0=50.0, Lambda_bounds=(1e-7, 10.0))


def test_Lambda0_that_no_first_step_can_reach_the_bounds_is_rejected() -> None:
    """Λ_0 = 0 with λ ≤ 1e-9 can never reach Λ_min = 1e-7."""
    with pytest.raises(ValueError, match="no admissible"):
        SlimTik(nn.Linear(3, 1), Lambda0=0.0, lambda_bounds=(-1.0, 1e-9))


def test_Lambda0_zero_and_Lambda_max_are_allowed_and_the_first_step_lands_in_the_bounds() -> None:
    for Lambda0 in (0.0, 1e3):
        head = nn.Linear(5, 2).double()
        slim = SlimTik(head, Lambda0=Lambda0)
        x, y = _batches(1, seed=2)[0]
        rec = slim.step(x.double(), y.double())
        assert 1e-7 <= rec.Lambda <= 1e3
    # Λ_0 at Λ_max: the weights stay of the data's size (Λ_0 = 1e6 used to give |W| ~ 1e3·|W_ls|)
    assert float(head.weight.detach().abs().max()) < 10


def test_state_without_config_keeps_any_nonnegative_Lambda() -> None:
    """A bare state may stand for the middle of a run (the solver's own bound checks apply)."""
    assert float(SlimTikState(1, 4, 1, 2, 1e6).Lambda[0]) == 1e6


# ----------------------------------------------------------------------------- copies


def _model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 2))


def _run(model: nn.Sequential, slim: SlimTik, data: list) -> None:
    for x, y in data:
        slim.step(model[1](model[0](x)), y)


class _Holder(nn.Module):
    """A model that keeps its optimizer as a plain attribute."""

    def __init__(self, net: nn.Sequential, slim: SlimTik) -> None:
        super().__init__()
        self.net, self.slim = net, slim


@pytest.mark.parametrize("how", ["tuple", "dict", "module", "pickle"])
def test_copies_continue_exactly_like_the_original(how: str) -> None:
    data = _batches(6, seed=5)
    model = _model()
    slim = SlimTik(model[2], memory_depth=2)
    _run(model, slim, data[:3])
    if how == "tuple":
        model2, slim2 = copy.deepcopy((model, slim))
    elif how == "dict":
        both = copy.deepcopy({"slim": slim, "model": model})
        model2, slim2 = both["model"], both["slim"]
    elif how == "module":
        holder = copy.deepcopy(_Holder(model, slim))
        model2, slim2 = holder.net, holder.slim
    else:
        model2, slim2 = pickle.loads(pickle.dumps((model, slim)))
    assert slim2.head is model2[2] and slim2.head is not slim.head
    assert slim2.param_groups[0]["params"][0] is model2[2].weight
    _tree_equal(_slim_snapshot(slim), _slim_snapshot(slim2))
    _run(model2, slim2, data[3:])            # the copy's steps leave the original alone ...
    assert slim.n_steps_ == 3 and slim.solver_state.step_count == 3
    _run(model, slim, data[3:])              # ... and the original then takes the identical steps
    _tree_equal(_slim_snapshot(slim), _slim_snapshot(slim2))
    assert torch.equal(model[2].weight, model2[2].weight)


def test_deepcopy_of_slimtik_alone_owns_a_copied_head() -> None:
    head = nn.Linear(4, 1)
    slim = SlimTik(head)
    slim2 = copy.deepcopy(slim)
    assert slim2.head is not head and torch.equal(slim2.head.weight, head.weight)
    x, y = _batches(1, n_in=4, n_out=1)[0]
    assert slim2.step(x, y).step == 1 and slim.n_steps_ == 0


def test_pickling_a_slimtik_with_a_writer_fails_at_copy_time() -> None:
    class Writer:
        def add_scalar(self, *args) -> None:
            pass

    writer = Writer()
    slim = SlimTik(nn.Linear(3, 1), writer=writer)
    with pytest.raises(TypeError, match="writer"):
        pickle.dumps(slim)
    assert copy.deepcopy(slim).writer is writer     # deepcopy shares it


# ----------------------------------------------------------------------------- step's signature, ownership


def test_step_without_a_batch_says_how_it_is_called() -> None:
    slim = SlimTik(nn.Linear(3, 1))
    with pytest.raises(TypeError, match=r"step\(features, target\).*closure"):
        slim.step(lambda: torch.tensor(0.0))
    with pytest.raises(TypeError, match=r"step\(features, target\)"):
        slim.step()
    with pytest.raises(TypeError, match=r"step\(features, target\)"):
        slim.step(torch.zeros(2, 3))


def test_one_head_one_slimtik() -> None:
    head = nn.Linear(3, 1)
    slim = SlimTik(head)
    with pytest.raises(ValueError, match="already has a SlimTik"):
        SlimTik(head)
    assert slim.head is head
    SlimTik(copy.deepcopy(head))             # a copy of the head is another head
    del slim
    gc.collect()
    slim = SlimTik(head)                     # the first optimizer is gone: the head is free again
    x, y = _batches(1, n_in=3, n_out=1)[0]
    slim.step(x, y)
    release_head(head)                       # an explicit hand-over: the old one may not step again
    new = SlimTik(head)
    with pytest.raises(RuntimeError, match="no longer owns"):
        slim.step(x, y)
    assert new.step(x, y).step == 1


# ----------------------------------------------------------------------------- integer sizes


def test_numpy_integers_count_as_integers() -> None:
    state = SlimTikState(batch=np.int64(2), n_features=np.int32(3), n_targets=np.array(1), memory_depth=np.uint8(2))
    assert (state.batch, state.n_features, state.n_targets, state.memory_depth) == (2, 3, 1, 2)
    assert all(type(v) is int for v in (state.batch, state.n_features, state.n_targets, state.memory_depth))
    assert SlimTik(nn.Linear(3, 1), memory_depth=np.int64(4)).memory_depth == 4
    for bad in (True, np.bool_(True), 2.0, "2", np.array([2])):
        with pytest.raises(ValueError, match="batch"):
            SlimTikState(batch=bad, n_features=3, n_targets=1)


def test_solver_config_bounds_are_stored_as_float_tuples() -> None:
    """Any sequence is accepted for the bounds and kept as a float tuple, so every config is
    hashable (the cpp backend caches its kernel options per config)."""
    from slimfast import SolverConfig

    listed = SolverConfig(Lambda_bounds=[1e-3, 10], lambda_bounds=[-1, 5])
    assert listed.Lambda_bounds == (1e-3, 10.0) and listed.lambda_bounds == (-1.0, 5.0)
    assert listed == SolverConfig(Lambda_bounds=(1e-3, 10.0), lambda_bounds=(-1.0, 5.0))
    assert hash(listed) == hash(SolverConfig(Lambda_bounds=(1e-3, 10.0), lambda_bounds=(-1.0, 5.0)))
