"""The numba block step beyond tests/test_block_step.py: every λ mode against the block twin,
the batch loop (B = 1 serial, B > 1 in prange) against per-problem calls, and the structural
contract that entries of G_mem and G between different blocks are never read."""

from __future__ import annotations

import math

import pytest
import torch

from slimfast import SlimTikState, SolverConfig
from slimfast._torch_block import _slimtik_block_step
from slimfast.backends.boundary import BlockLayout, StepInputs

from .solver_cases import rel_err
from .test_block_step import BlockRun

numba_block = pytest.importorskip("slimfast.backends.numba_block")

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
CONFIGS = {"sgcv": SolverConfig(), "reference": SolverConfig(mode="reference"),
           "constant": SolverConfig(mode="constant", lambda_const=0.01)}


def _steps(layout: BlockLayout, n_t: int, rows: int, config: SolverConfig, B: int = 3, n_steps: int = 4):
    """StepInputs of a run of ``n_steps`` block-structured steps (memory r = 2), advanced by the twin."""
    run = BlockRun(layout, n_t, rows, B=B, seed=3)
    state = SlimTikState(B, layout.n_features, n_t, memory_depth=2)
    W = 0.1 * torch.randn(B, n_t, layout.n_features, dtype=F64, generator=run.gen)
    for _ in range(n_steps):
        _, _, G, H, c, m, _ = run.batch()
        mvec = torch.full((B,), m, dtype=F64)
        inputs = StepInputs(state.memory_gram(G), G, H, c, mvec, W, state.Lambda.clone(), state.memory_empty,
                            config, layout)
        yield inputs
        W, info = _slimtik_block_step(inputs)
        state.commit(G, info[:, 1])


def _assert_close(got, ref, tol=1e-9):
    (W, info), (W_ref, info_ref) = got, ref
    assert rel_err(W, W_ref) <= tol
    err = (info - info_ref).abs().amax(0)
    assert bool((err <= tol * info_ref.abs().amax(0).clamp_min(1.0)).all()), err


@pytest.mark.parametrize("mode", sorted(CONFIGS))
@pytest.mark.parametrize("sizes,border", [((5, 3, 1), True), ((4, 6), False)])
def test_numba_block_step_is_the_twin_in_every_mode(mode, sizes, border):
    layout = BlockLayout(sizes, border)
    for inputs in _steps(layout, 2, 4, CONFIGS[mode]):
        _assert_close(numba_block.slimtik_block_step(inputs), _slimtik_block_step(inputs))


def test_batch_loop_equals_one_problem_at_a_time():
    """The prange loop (B = 3) gives each problem what the serial path (B = 1) gives it alone."""
    layout = BlockLayout((3, 4, 2), True)
    for inputs in _steps(layout, 1, 5, SolverConfig()):
        W, info = numba_block.slimtik_block_step(inputs)
        for b in range(W.shape[0]):
            one = StepInputs(*[getattr(inputs, f)[b:b + 1] for f in ("G_mem", "G", "H", "c", "m", "W", "Lambda_prev")],
                             inputs.memory_empty, inputs.config, layout)
            W_b, info_b = numba_block.slimtik_block_step(one)
            assert torch.equal(W_b[0], W[b]) and torch.equal(info_b[0], info[b])


def test_entries_between_blocks_are_never_read():
    layout = BlockLayout((3, 4, 2), True)
    for inputs in _steps(layout, 2, 5, SolverConfig(), n_steps=2):
        clean = numba_block.slimtik_block_step(inputs)
        G_mem, G = inputs.G_mem.clone(), inputs.G.clone()
        for lo, hi in layout.ranges():
            for M in (G_mem, G):
                M[:, lo:hi, :lo] = math.nan
                M[:, lo:hi, hi:layout.n_core] = math.nan
        poisoned = StepInputs(G_mem, G, inputs.H, inputs.c, inputs.m, inputs.W, inputs.Lambda_prev,
                              inputs.memory_empty, inputs.config, layout)
        W, info = numba_block.slimtik_block_step(poisoned)
        assert bool(torch.isfinite(W).all())
        assert torch.equal(W, clean[0]) and torch.equal(info, clean[1])


def test_a_layout_of_the_wrong_size_is_rejected():
    layout = BlockLayout((3, 4), True)
    inputs = next(_steps(layout, 1, 5, SolverConfig(), B=1, n_steps=1))
    wrong = StepInputs(*[getattr(inputs, f) for f in ("G_mem", "G", "H", "c", "m", "W", "Lambda_prev",
                                                      "memory_empty", "config")], BlockLayout((3, 3), True))
    with pytest.raises(ValueError, match="features"):
        numba_block.slimtik_block_step(wrong)
