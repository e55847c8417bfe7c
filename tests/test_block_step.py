"""Block-structured step (phase blocks bordered by a bias): = the dense stacked least squares,
= the dense step's twin on the same Gram matrices, and every backend = the block twin.

The problems have the structure of a stride-s transposed convolution's design: every row (output
pixel) reads the features of one block only, plus the constant bias feature, so the Gram
matrices are block diagonal bordered by the bias row. The references never see the blocks:
the stacked least-squares solve of method.md §2.3 on the raw rows, and the dense twin
``_torch_impl._slimtik_step`` on the whole n_f × n_f matrices.
"""

from __future__ import annotations

import math

import pytest
import torch

from slimfast import SlimTikState, SolverConfig, slimtik_step
from slimfast._torch_block import _slimtik_block_step
from slimfast._torch_impl import INFO_FIELDS, _slimtik_step
from slimfast.backends import load_backend
from slimfast.backends.boundary import BlockLayout, StepInputs

from .solver_cases import dense_slimtik_solution, rel_err

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
#: (block sizes, border, n_t, rows per block per batch): equal phases of a 4×4 stride-2 kernel,
#: unequal ones (k = 3, s = 2), no bias, several targets, and blocks with fewer rows than
#: features (rank-deficient G_mem until the memory fills).
LAYOUTS = [
    ((8, 8, 8, 8), True, 1, 12),
    ((4, 2, 2, 1), True, 2, 6),
    ((5, 7, 6), False, 1, 9),
    ((6, 6, 6, 6), True, 3, 3),
]


class BlockRun:
    """B problems with the block structure of ``layout``, fed batch by batch."""

    def __init__(self, layout: BlockLayout, n_t: int, rows: int, B: int = 2, seed: int = 0) -> None:
        self.layout, self.n_t, self.rows, self.B = layout, n_t, rows, B
        self.gen = torch.Generator().manual_seed(seed)
        n_f = layout.n_features
        self.W_true = torch.randn(B, n_t, n_f, dtype=F64, generator=self.gen) / math.sqrt(n_f)
        self.Z_seen: list[torch.Tensor] = []

    def design(self) -> torch.Tensor:
        """Z [B, n_f, P·rows]: block p's rows read block p's features (and the bias) only."""
        L = self.layout
        Z = torch.zeros(self.B, L.n_features, len(L.sizes) * self.rows, dtype=F64)
        for p, (lo, hi) in enumerate(L.ranges()):
            Z[:, lo:hi, p * self.rows:(p + 1) * self.rows] = torch.randn(self.B, hi - lo, self.rows, dtype=F64,
                                                                         generator=self.gen)
        if L.border:
            Z[:, -1] = 1.0
        return Z

    def batch(self) -> tuple[torch.Tensor, ...]:
        Z = self.design()
        C = self.W_true @ Z + 0.1 * torch.randn(self.B, self.n_t, Z.shape[2], dtype=F64, generator=self.gen)
        beta2 = 1.0 / (Z.shape[2] * self.n_t)
        G = beta2 * Z @ Z.mT
        H = beta2 * C @ Z.mT
        c = beta2 * (C * C).sum((1, 2))
        return Z, C, G, H, c, float(Z.shape[2] * self.n_t), beta2


def _inputs(state: SlimTikState, G, H, c, m, W, config, layout) -> StepInputs:
    mvec = torch.full((G.shape[0],), m, dtype=F64)
    return StepInputs(state.memory_gram(G), G, H, c, mvec, W, state.Lambda.clone(), state.memory_empty, config, layout)


CONFIGS = {"sgcv": SolverConfig(), "reference": SolverConfig(mode="reference"),
           "constant": SolverConfig(mode="constant", lambda_const=0.01)}


@pytest.mark.parametrize("sizes,border,n_t,rows", LAYOUTS)
@pytest.mark.parametrize("mode", sorted(CONFIGS))
def test_block_twin_is_the_dense_step_and_the_stacked_least_squares(sizes, border, n_t, rows, mode):
    """Over memory filling and wrapping (r = 2): the block twin's W and λ, sGCV and residual
    equal the dense twin's (1e-9), and W equals the stacked least-squares solve at its Λ (1e-10)."""
    layout = BlockLayout(sizes, border)
    run, config, r = BlockRun(layout, n_t, rows), CONFIGS[mode], 2
    state = SlimTikState(run.B, layout.n_features, n_t, memory_depth=r)
    W = 0.1 * torch.randn(run.B, n_t, layout.n_features, dtype=F64, generator=run.gen)
    for _ in range(5):
        Z, C, G, H, c, m, beta2 = run.batch()
        Lambda_prev = state.Lambda.clone()
        memory = run.Z_seen[len(run.Z_seen) - state.n_stored:] if state.n_stored else []
        inputs = _inputs(state, G, H, c, m, W, config, layout)
        W_blk, info_blk = _slimtik_block_step(inputs)
        W_dense, info_dense = _slimtik_step(*[getattr(inputs, f) for f in (
            "G_mem", "G", "H", "c", "m", "W", "Lambda_prev", "memory_empty", "config")])
        assert rel_err(W_blk, W_dense) <= 1e-9
        for i, field in enumerate(INFO_FIELDS[:4]):   # cond and eig_min describe the blocks
            assert rel_err(info_blk[:, i], info_dense[:, i]) <= 1e-9, field
        for b in range(run.B):
            W_ref = dense_slimtik_solution(Z[b], C[b], [Zj[b] for Zj in memory], W[b], float(Lambda_prev[b]),
                                           float(info_blk[b, 1]), beta2)
            assert rel_err(W_blk[b], W_ref) <= 1e-10, b
        state.commit(G, info_blk[:, 1])
        run.Z_seen.append(Z)
        W = W_blk


@pytest.mark.parametrize("sizes,border,n_t,rows", LAYOUTS)
def test_every_backend_follows_the_block_twin(backend, device, sizes, border, n_t, rows):
    """``slimtik_step(blocks=…)`` on every backend = the block twin (1e-9), step by step."""
    layout = BlockLayout(sizes, border)
    run = BlockRun(layout, n_t, rows, seed=1)
    states = {name: SlimTikState(run.B, layout.n_features, n_t, memory_depth=2, device=dev)
              for name, dev in (("torch", torch.device("cpu")), (backend, device))}
    W0 = 0.1 * torch.randn(run.B, n_t, layout.n_features, dtype=F64, generator=run.gen)
    Ws = {name: W0.clone().to(states[name].device) for name in states}
    for _ in range(5):
        _, _, G, H, c, m, _ = run.batch()
        out = {}
        for name, state in states.items():
            d = state.device
            out[name] = slimtik_step(state, G.to(d), H.to(d), c.to(d), m, Ws[name], backend=name, blocks=layout)
        (W_ref, info_ref), (W_be, info_be) = out["torch"], out[backend]
        assert info_be.backend == backend
        assert rel_err(W_be.cpu(), W_ref) <= 1e-9
        # A backend without its own block step takes its dense one: cond and eig_min are then
        # those of the whole G_mem (solver.slimtik_step), the rest the same to rounding.
        fields = ["lambda_", "Lambda", "sgcv", "rel_residual"]
        if getattr(load_backend(backend), "BLOCK_STEP", False):
            fields += ["cond", "eig_min"]
        for field in fields:
            a, b = getattr(info_be, field).cpu(), getattr(info_ref, field)
            assert float((a - b).abs().max()) <= 1e-9 * max(1.0, float(b.abs().max())), field
        Ws = {name: out[name][0] for name in out}


def test_the_block_step_reads_only_the_blocks_and_the_border():
    """Whatever lies between blocks of G_mem is never read (the step uses the structure)."""
    layout = BlockLayout((3, 4), True)
    run = BlockRun(layout, 1, 8)
    state = SlimTikState(run.B, layout.n_features, 1, memory_depth=0)
    _, _, G, H, c, m, _ = run.batch()
    W = torch.zeros(run.B, 1, layout.n_features, dtype=F64)
    inputs = _inputs(state, G, H, c, m, W, SolverConfig(), layout)
    W_a, info_a = _slimtik_block_step(inputs)
    G_mem = inputs.G_mem.clone()
    G_mem[:, :3, 3:7] = float("nan")
    G_mem[:, 3:7, :3] = float("nan")
    W_b, info_b = _slimtik_block_step(StepInputs(G_mem, *[getattr(inputs, f) for f in (
        "G", "H", "c", "m", "W", "Lambda_prev", "memory_empty", "config", "blocks")]))
    assert torch.equal(W_a, W_b) and torch.equal(info_a, info_b)


def test_bad_layouts_are_rejected_naming_the_argument():
    state = SlimTikState(1, 5, 1)
    G = torch.eye(5, dtype=F64)[None]
    H, c, W = torch.zeros(1, 1, 5, dtype=F64), torch.ones(1, dtype=F64), torch.zeros(1, 1, 5, dtype=F64)
    with pytest.raises(ValueError, match="blocks"):
        slimtik_step(state, G, H, c, 4, W, blocks=BlockLayout((2, 3), True))
    with pytest.raises(TypeError, match="blocks"):
        slimtik_step(state, G, H, c, 4, W, blocks=(2, 3))
    G_coupled = G.clone()
    G_coupled[0, 0, 3] = G_coupled[0, 3, 0] = 0.5
    with pytest.raises(ValueError, match="between different blocks"):
        slimtik_step(state, G_coupled, H, c, 4, W, blocks=BlockLayout((2, 3), False))
    with pytest.raises(ValueError, match="sizes"):
        BlockLayout((2, 0), True)
    assert state.n_stored == 0 and state.step_count == 0
