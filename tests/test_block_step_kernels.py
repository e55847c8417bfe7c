"""The compiled block-structured step (csrc/slimtik_block_step.h) beyond the twin test of
tests/test_block_step.py: the CUDA block code's host emulation is free of data races between
threads and agrees with the CPU launcher whatever the thread count; every CPU eigensolver gives
the same step; entries between blocks are never read; bad layouts are rejected by the C++
checks with a message naming the problem."""

from __future__ import annotations

import pytest
import torch

from slimfast import SlimTikState, SolverConfig
from slimfast.backends.boundary import BlockLayout

from .block_emulation import slimtik_step as emulate_step
from .solver_cases import rel_err
from .test_block_step import BlockRun, _inputs

cpp = pytest.importorskip("slimfast.backends.cpp")
_cpu = pytest.importorskip("slimfast._cpu")

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
FIELDS = ("G_mem", "G", "H", "c", "m", "W", "Lambda_prev", "memory_empty", "config")


def _step_args(sizes=(5, 3, 4), border=True, n_t=2, rows=6, config=SolverConfig(), seed=4):
    """Positional step arguments of a block problem whose memory holds earlier batches."""
    layout = BlockLayout(sizes, border)
    run = BlockRun(layout, n_t, rows, B=3, seed=seed)
    state = SlimTikState(run.B, layout.n_features, n_t, memory_depth=2)
    for _ in range(2):
        _, _, G, *_ = run.batch()
        state.commit(G, torch.full((run.B,), 0.05, dtype=F64))
    _, _, G, H, c, m, _ = run.batch()
    W = 0.1 * torch.randn(run.B, n_t, layout.n_features, dtype=F64, generator=run.gen)
    inputs = _inputs(state, G, H, c, m, W, config, layout)
    return [getattr(inputs, f) for f in FIELDS], layout


@pytest.mark.parametrize("n_threads", [1, 3, 32, 128])
@pytest.mark.parametrize("border", [True, False])
def test_emulation_is_race_free_and_matches_the_cpu_launcher(n_threads, border):
    args, layout = _step_args(border=border)
    W_cpu, info_cpu = cpp.slimtik_step(*args, blocks=layout)
    W_fwd, info_fwd = emulate_step(*args, blocks=layout, n_threads=n_threads)
    W_rev, info_rev = emulate_step(*args, blocks=layout, n_threads=n_threads, reverse=True)
    # Reversing the simulated threads changes nothing at all unless two threads race.
    assert torch.equal(W_fwd, W_rev) and torch.equal(info_fwd, info_rev)
    assert rel_err(W_fwd, W_cpu) <= 1e-9
    assert float((info_fwd - info_cpu).abs().max()) <= 1e-9 * max(1.0, float(info_cpu.abs().max()))


@pytest.mark.parametrize("shared", ["off", "matrix", "on"])
def test_emulation_keeps_the_jacobi_matrices_anywhere(shared):
    args, layout = _step_args()
    W_ref, info_ref = cpp.slimtik_step(*args, blocks=layout)
    W, info = emulate_step(*args, blocks=layout, shared=shared, n_threads=64)
    assert rel_err(W, W_ref) <= 1e-9
    assert rel_err(info, info_ref) <= 1e-9


@pytest.mark.parametrize("mode", ["sgcv", "reference", "constant"])
def test_every_cpu_eigensolver_gives_the_same_block_step(mode):
    config = SolverConfig(mode=mode, lambda_const=0.01) if mode == "constant" else SolverConfig(mode=mode)
    args, layout = _step_args(sizes=(30, 2, 7), n_t=1, rows=20, config=config)
    W_ref, info_ref = cpp.slimtik_step(*args, blocks=layout, eigensolver="syevd")
    for eigensolver in ("auto", "syevr", "jacobi"):
        W, info = cpp.slimtik_step(*args, blocks=layout, eigensolver=eigensolver)
        assert rel_err(W, W_ref) <= 1e-9, eigensolver
        assert rel_err(info, info_ref) <= 1e-9, eigensolver


@pytest.mark.parametrize("which", ["cpp", "emulate"])
def test_entries_between_blocks_are_never_read(which):
    args, layout = _step_args()
    step = cpp.slimtik_step if which == "cpp" else emulate_step
    W_a, info_a = step(*args, blocks=layout)
    poisoned = list(args)
    for k in (0, 1):  # G_mem and G
        M = args[k].clone()
        for lo, hi in layout.ranges():
            M[:, lo:hi, :lo] = float("nan")
            M[:, lo:hi, hi:layout.n_core] = float("nan")
        poisoned[k] = M
    W_b, info_b = step(*poisoned, blocks=layout)
    assert torch.equal(W_a, W_b) and torch.equal(info_a, info_b)


@pytest.mark.parametrize("offsets,border,n_f,message", [
    ([0, 3, 3, 5], False, 5, "strictly increasing"),
    ([0, 4, 2, 5], False, 5, "strictly increasing"),
    ([1, 3, 5], False, 5, "start at 0"),
    ([0, 3, 5], True, 5, "n_f - border = 4"),
    ([0, 3, 4], False, 5, "n_f - border = 5"),
    ([0], False, 5, "at least 2 entries"),
    ([0, 3, 5], False, 0, "n_f"),
])
def test_bad_offsets_are_rejected_in_cpp(offsets, border, n_f, message):
    with pytest.raises(ValueError, match=message):
        _cpu.BlockOffsets(offsets, border, n_f)


def test_a_layout_for_other_features_is_rejected():
    args, layout = _step_args()
    n_f = layout.n_features
    t = [a.contiguous() if isinstance(a, torch.Tensor) else a for a in args]
    W_new, info = torch.empty_like(t[5]), torch.empty(t[5].shape[0], _cpu.N_INFO, dtype=F64)
    B, n_t = t[5].shape[:2]
    buffers = _cpu.StepBuffers(B, n_f, n_t, False, *(x.data_ptr() for x in t[:7]), W_new.data_ptr(), info.data_ptr())
    other = _cpu.BlockOffsets([0, n_f - 2], True, n_f - 1)
    options = _cpu.StepOptions(**SolverConfig().kernel_options())
    with pytest.raises(ValueError, match="blocks describe n_f"):
        _cpu.slimtik_block_step(buffers, other, options)
    good = _cpu.BlockOffsets(list(layout.offsets()), True, n_f)
    _cpu.slimtik_block_step(buffers, good, options)
    assert bool(torch.isfinite(W_new).all()) and bool(torch.isfinite(info).all())


def test_the_torch_eigensolver_is_refused_for_blocks():
    args, layout = _step_args()
    with pytest.raises(ValueError, match="block step"):
        cpp.slimtik_step(*args, blocks=layout, eigensolver="torch")
