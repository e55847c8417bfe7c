"""The shared epoch loop, the batched head↔matrix maps and SlimTikState slicing used by sweeps."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from slimfast.heads import head_shape, head_to_matrix, matrix_to_params, params_to_matrix, write_matrix_, write_params_
from slimfast.loop import EpochRun, Stop, new_history, record, run_epochs
from slimfast.solver import slimtik_step
from slimfast.state import SlimTikState

F64 = torch.float64

HEADS = {
    "linear": lambda: nn.Linear(5, 3),
    "linear_nobias": lambda: nn.Linear(5, 3, bias=False),
    "conv": lambda: nn.Conv2d(2, 3, (3, 2), stride=2, padding=1),
    "convT": lambda: nn.ConvTranspose2d(2, 3, 4, stride=2, padding=1),
    "convT_nobias": lambda: nn.ConvTranspose2d(3, 2, (2, 3), stride=2, bias=False),
}


# ----------------------------------------------------------------------------- head maps, batched

@pytest.mark.parametrize("name", sorted(HEADS))
def test_batched_head_maps_equal_the_single_model_maps(name: str) -> None:
    torch.manual_seed(0)
    heads = [HEADS[name]() for _ in range(3)]
    weight = torch.stack([h.weight.detach() for h in heads])
    bias = torch.stack([h.bias.detach() for h in heads]) if heads[0].bias is not None else None
    W = params_to_matrix(heads[0], weight, bias)
    assert W.dtype == F64 and W.is_contiguous()
    assert torch.equal(W, torch.stack([head_to_matrix(h) for h in heads]))

    W_new = torch.randn(3, *head_shape(heads[0]), dtype=F64)
    write_params_(heads[0], weight, bias, W_new)     # in place, into the stacks
    w_b, b_b = matrix_to_params(heads[0], W_new)
    for i, h in enumerate(heads):
        write_matrix_(h, W_new[i])
        assert torch.equal(weight[i], h.weight.detach()) and torch.equal(w_b[i].float(), h.weight.detach())
        if bias is not None:
            assert torch.equal(bias[i], h.bias.detach()) and torch.equal(b_b[i].float(), h.bias.detach())
        assert torch.equal(head_to_matrix(h), W_new[i].float().double())


def test_batched_head_map_rejects_a_wrong_matrix_shape() -> None:
    head = nn.Linear(5, 3)
    weight, bias = head.weight.detach()[None].clone(), head.bias.detach()[None].clone()
    with pytest.raises(ValueError, match="W must have shape"):
        write_params_(head, weight, bias, torch.zeros(1, 3, 5, dtype=F64))
    with pytest.raises(ValueError, match="does not match the stacked parameters"):
        write_params_(head, weight, bias, torch.zeros(2, 3, 6, dtype=F64))
    with pytest.raises(ValueError, match=r"W must have shape \[n_t, n_f\] = \[3, 6\], got \[1, 3, 6\]"):
        write_matrix_(head, torch.zeros(1, 3, 6, dtype=F64))    # one model's map stays one model's


# ----------------------------------------------------------------------------- state slicing

def _state(B: int = 4, n_f: int = 3, n_t: int = 2, r: int = 2) -> SlimTikState:
    g = torch.Generator().manual_seed(1)
    st = SlimTikState(B, n_f, n_t, r, 0.1)
    A = torch.randn(B, r, n_f, n_f, dtype=F64, generator=g)
    st.memory = A @ A.transpose(-1, -2)
    st.Lambda = torch.rand(B, dtype=F64, generator=g) + 0.1
    st.n_stored, st.head, st.step_count = 1, 1, 7
    return st


def test_state_select_and_cat_are_inverse() -> None:
    st = _state()
    part = st.select([2, 0])
    assert part.batch == 2 and torch.equal(part.memory, st.memory[[2, 0]])
    assert torch.equal(part.Lambda, st.Lambda[[2, 0]])
    assert (part.n_stored, part.head, part.step_count, part.memory_depth) == (1, 1, 7, 2)
    masked = st[torch.tensor([False, True, False, True])]
    assert torch.equal(masked.Lambda, st.Lambda[[1, 3]])
    part.Lambda += 1.0       # copies: the original is untouched
    assert not torch.equal(part.Lambda, st.Lambda[[2, 0]])
    empty = st.select([])
    assert empty.batch == 0 and empty.memory.shape == (0, 2, 3, 3)
    back = SlimTikState.cat([st.select([0, 1]), st.select([2]), st.select([3])])
    assert back.batch == 4 and torch.equal(back.memory, st.memory) and torch.equal(back.Lambda, st.Lambda)
    assert back.state_dict().keys() == st.state_dict().keys()


def test_state_cat_rejects_states_not_stepped_together() -> None:
    a, b = _state().select([0]), _state().select([1])
    b.step_count += 1
    with pytest.raises(ValueError, match="step_count"):
        SlimTikState.cat([a, b])
    with pytest.raises(ValueError, match="at least one"):
        SlimTikState.cat([])


def test_stepping_selected_rows_equals_stepping_them_in_the_whole_state() -> None:
    """What the sweep relies on when it drops a model: the problems of a state are independent."""
    st = _state()
    g = torch.Generator().manual_seed(2)
    Z = torch.randn(4, 3, 6, dtype=F64, generator=g)
    C = torch.randn(4, 2, 6, dtype=F64, generator=g)
    G, H, c = Z @ Z.transpose(1, 2) / 12, C @ Z.transpose(1, 2) / 12, (C**2).sum((1, 2)) / 12
    W = torch.randn(4, 2, 3, dtype=F64, generator=g)
    rows = [3, 1]
    part = st.select(rows)
    W_all, _ = slimtik_step(st, G, H, c, 12, W, backend="torch")
    W_part, _ = slimtik_step(part, G[rows], H[rows], c[rows], 12, W[rows], backend="torch")
    assert torch.allclose(W_part, W_all[rows], rtol=1e-12, atol=1e-14)
    assert torch.allclose(part.memory, st.memory[rows], rtol=1e-12, atol=0)
    assert torch.allclose(part.Lambda, st.Lambda[rows], rtol=1e-12, atol=0)
    assert (part.n_stored, part.head, part.step_count) == (st.n_stored, st.head, st.step_count)


# ----------------------------------------------------------------------------- the epoch loop

class _Run(EpochRun):
    """Batches 0..n−1 per epoch; ``stop_at`` maps a step number to what record_step returns."""

    step_errors = (ArithmeticError,)

    def __init__(self, n: int = 3, stop_at: dict[int, Stop] | None = None, fail_at: int | None = None) -> None:
        self.n, self.stop_at, self.fail_at = n, stop_at or {}, fail_at
        self.calls: list[tuple] = []
        self.steps_seen = 0

    def begin_epoch(self, epoch: int) -> None:
        self.calls.append(("begin", epoch))

    def batches(self, epoch: int):
        return enumerate(range(self.n))

    def train_step(self, batch: int) -> int:
        self.steps_seen += 1
        if self.steps_seen == self.fail_at:
            raise ZeroDivisionError("step failed")
        return batch

    def step_failed(self, exc: BaseException, steps: int) -> None:
        self.calls.append(("failed", steps))

    def record_step(self, epoch: int, index: int, outcome: int, seconds: float, steps: int) -> Stop:
        assert seconds >= 0 and index == outcome
        self.calls.append(("step", epoch, index, steps))
        return self.stop_at.get(steps, Stop.NO)

    def refit(self, epoch: int) -> None:
        self.calls.append(("refit", epoch))

    def end_epoch(self, epoch: int) -> bool:
        self.calls.append(("end", epoch))
        return False


def _kinds(run: _Run) -> list:
    return [c for c in run.calls if c[0] != "step"]


def test_loop_order_and_refit_schedule() -> None:
    run = _Run(n=2)
    assert run_epochs(run, range(1, 3), refit="end") == 4
    assert run.calls == [("begin", 1), ("step", 1, 0, 1), ("step", 1, 1, 2), ("end", 1),
                         ("begin", 2), ("step", 2, 0, 3), ("step", 2, 1, 4), ("refit", 2), ("end", 2)]
    run = _Run(n=1)
    run_epochs(run, range(3), refit="epoch")
    assert [c[0] for c in _kinds(run)] == ["begin", "refit", "end"] * 3
    run = _Run(n=1)
    run_epochs(run, range(2), refit="none")
    assert ("refit", 1) not in run.calls
    assert run_epochs(_Run(), range(0)) == 0


def test_loop_max_steps_and_last_refit_and_stop() -> None:
    run = _Run(n=3)
    assert run_epochs(run, range(1, 5), refit="end", max_steps=4) == 4
    assert _kinds(run)[-3:] == [("begin", 2), ("refit", 2), ("end", 2)]
    run = _Run(n=3, stop_at={2: Stop.LAST})
    assert run_epochs(run, range(1, 5), refit="end") == 2
    assert _kinds(run) == [("begin", 1), ("refit", 1), ("end", 1)]


def test_loop_failed_run_records_the_epoch_without_refit() -> None:
    run = _Run(n=3, stop_at={4: Stop.FAILED})
    assert run_epochs(run, range(1, 5), refit="epoch") == 4
    assert _kinds(run) == [("begin", 1), ("refit", 1), ("end", 1), ("begin", 2), ("end", 2)]
    run = _Run(n=3, fail_at=2)      # an exception in step_errors: step_failed, nothing recorded for it
    assert run_epochs(run, range(1, 5), refit="end") == 1
    assert run.calls == [("begin", 1), ("step", 1, 0, 1), ("failed", 1), ("end", 1)]


def test_loop_propagates_other_errors_and_checks_refit() -> None:
    class Bad(_Run):
        def train_step(self, batch: int) -> int:
            raise KeyError("not a step error")

    with pytest.raises(KeyError):
        run_epochs(Bad(), range(2))
    with pytest.raises(ValueError, match="refit must be one of"):
        run_epochs(_Run(), range(2), refit="always")


def test_history_records_rows_and_is_a_plain_json_dict() -> None:
    h = new_history(("a", "b"), method="x")
    assert type(h) is dict
    record(h, a=1.0, c=math.pi)
    record(h, **{"lambda": 2.0})
    assert h == {"method": "x", "a": [1.0], "b": [], "c": [math.pi], "lambda": [2.0]}
    assert json.loads(json.dumps(h)) == h
