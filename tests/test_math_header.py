"""The CUDA kernels' arithmetic, tested on the CPU.

``csrc/slimtik_step.h`` composes the step once as templates over an execution context; the CUDA
kernels run it with a thread block per problem and ``slimfast._cpu`` also builds it (always) with
a host context that runs the simulated threads of a block one after another (``emulate_*``). These
tests run that exact code — the shared-header pieces (``jacobi_rotation``, ``round_robin_pair``,
the sGCV sums, the grid bracket, the Illinois state machine), the block loops of
``csrc/slimtik_loops.h``, the parallel Jacobi ordering, the work distribution over threads —
against ``torch.linalg.eigh`` and the float64 torch twin. They need no GPU. Running the simulated
threads in reverse order must not change a single bit: work items of one parallel phase must not
depend on each other, which is what makes the kernel free of data races between the threads of a
block. (The CPU launcher runs the same composition with one thread and BLAS hooks:
test_cpp_kernel.py.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from slimfast import _cpu
from slimfast._torch_impl import _slimtik_step

from . import cuda_cases as cases
from .cuda_cases import CONFIGS, F64, assert_matches, check_eigh, make_problem, seed_of, symmetric_cases


@pytest.fixture
def emu():
    """tests/block_emulation.py: the kernels' block code run on the host by slimfast._cpu (always built)."""
    from . import block_emulation

    return block_emulation


# ------------------------------------------------------------------ header pieces


@pytest.mark.parametrize("n_pad", [2, 4, 6, 10, 64, 130])
def test_round_robin_covers_every_pair_once_in_disjoint_rounds(n_pad):
    rounds = _cpu.round_robin_schedule(n_pad)
    assert len(rounds) == n_pad - 1
    seen = set()
    for pairs in rounds:
        assert len(pairs) == n_pad // 2
        flat = [i for pq in pairs for i in pq]
        assert sorted(flat) == list(range(n_pad)), "pairs of one round must be disjoint and cover every index"
        for p, q in pairs:
            assert 0 <= p < q < n_pad
            seen.add((p, q))
    assert len(seen) == n_pad * (n_pad - 1) // 2


@pytest.mark.parametrize(
    ("app", "aqq", "apq"),
    [(1.0, 2.0, 0.5), (2.0, 1.0, -0.5), (1.0, 1.0, 0.3), (-3.0, 5.0, 1e-8), (1.0, 1.0 + 1e-15, 1e-300),
     (1e300, -1e300, 1e-10), (0.0, 0.0, -2.0)],
)
def test_jacobi_rotation_zeroes_the_offdiagonal(app, aqq, apq):
    c, s, t = _cpu.jacobi_rotation(app, aqq, apq)
    assert abs(c * c + s * s - 1.0) < 4e-16
    assert abs(abs(t) - abs(s / c)) <= 4e-16 * max(1.0, abs(t))
    assert abs(t) <= 1.0  # the smaller of the two angles
    # Rows then columns with row_p ← c·row_p − s·row_q, row_q ← s·row_p + c·row_q.
    R = torch.tensor([[c, s], [-s, c]], dtype=F64)
    A = torch.tensor([[app, apq], [apq, aqq]], dtype=F64)
    D = R.T @ A @ R
    scale = max(abs(app), abs(aqq), abs(apq))
    assert abs(float(D[0, 1])) <= 1e-15 * scale
    assert abs(float(D[0, 0]) - (app - t * apq)) <= 1e-15 * scale
    assert abs(float(D[1, 1]) - (aqq + t * apq)) <= 1e-15 * scale


def test_jacobi_rotation_is_exactly_the_identity_for_a_zero_entry():
    assert _cpu.jacobi_rotation(3.0, -1.0, 0.0) == (1.0, 0.0, 0.0)


# ------------------------------------------------------------------ block-parallel Jacobi


@pytest.mark.parametrize("kind", ["random", "gram", "near-degenerate", "repeated", "diagonal", "zero", "rank-one"])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 33, 64])
def test_emulated_jacobi_matches_eigh(emu, n, kind):
    A = torch.stack([symmetric_cases(n, seed_of(n, kind, b))[kind] for b in range(2)])
    s, U, sweeps = emu.emulate_jacobi_eigh(A, tol=1e-14, return_sweeps=True)
    check_eigh(A, s, U)
    assert sweeps < 60


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n, clusters", [(64, (-1.0, 1.0)), (48, (0.5, 2.0, 3.0)), (96, (1.0, 1e-3))])
def test_jacobi_converges_on_exactly_repeated_spectra(emu, n, clusters, seed):
    """Eigenvalues of high multiplicity (a Gram matrix of duplicated samples, a ±1 spectrum): the
    rotations by rounding-level entries inside a cluster are skipped, so the sweeps converge
    quadratically instead of stalling (both Jacobis: the block code's emulation, the CPU serial one)."""
    from slimfast.backends import cpp

    gen = torch.Generator().manual_seed(seed)
    Q = torch.from_numpy(np.linalg.qr(torch.randn(n, n, dtype=F64, generator=gen).numpy())[0])
    d = torch.tensor([clusters[i * len(clusters) // n] for i in range(n)], dtype=F64)
    A = (Q @ torch.diag(d) @ Q.T)[None]
    for eigh in (emu.emulate_jacobi_eigh, cpp.jacobi_eigh):
        s, U, sweeps = eigh(A, tol=1e-14, return_sweeps=True)
        check_eigh(A, s, U)
        assert sweeps <= 20, (eigh, sweeps)


@pytest.mark.parametrize("kind", ["random", "gram", "near-degenerate", "repeated"])
@pytest.mark.parametrize("n", [2, 7, 32])
def test_emulated_jacobi_warm_start(emu, n, kind):
    """From the eigenvectors of a nearby matrix: same decomposition, and for a small change of a
    well-separated spectrum, fewer sweeps."""
    A = symmetric_cases(n, seed_of("warm", n, kind))[kind]
    E = torch.randn(n, n, dtype=F64, generator=torch.Generator().manual_seed(n))
    A2 = A + 1e-7 * float(A.abs().max()) * (E + E.T)
    _, U1 = torch.linalg.eigh(A)
    s_cold, U_cold, sweeps_cold = emu.emulate_jacobi_eigh(A2[None], tol=1e-14, return_sweeps=True)
    s_warm, U_warm, sweeps_warm = emu.emulate_jacobi_eigh(A2[None], U1[None], tol=1e-14, return_sweeps=True)
    check_eigh(A2[None], s_warm, U_warm)
    torch.testing.assert_close(s_warm, s_cold, rtol=0, atol=1e-13 * float(A2.abs().max()))
    if kind == "random" and n > 2:
        assert sweeps_warm < sweeps_cold


def test_emulated_jacobi_batch_shapes_and_lower_triangle(emu):
    """[..., n, n] batches; only the lower triangle is read, as torch.linalg.eigh."""
    A = torch.randn(2, 3, 6, 6, dtype=F64)
    A = A + A.transpose(-1, -2)
    garbage = torch.tril(A) + torch.triu(torch.randn(2, 3, 6, 6, dtype=F64), 1)  # upper ≠ lower
    s, U = emu.emulate_jacobi_eigh(garbage)
    assert s.shape == (2, 3, 6) and U.shape == (2, 3, 6, 6)
    check_eigh(A, s, U)


@pytest.mark.parametrize("n", [1, 4, 9, 40])
def test_emulated_jacobi_has_no_races_and_no_layout_dependence(emu, n):
    """Reverse thread order and shared-memory placement change nothing, not even a bit."""
    A = symmetric_cases(n, seed_of("race", n))["random"][None]
    _, U1 = torch.linalg.eigh(A + 1e-3)
    for U0 in (None, U1):
        base = emu.emulate_jacobi_eigh(A, U0, n_threads=64)
        for kwargs in (dict(reverse=True), dict(shared="matrix"), dict(shared="on"), dict(shared="on", reverse=True)):
            other = emu.emulate_jacobi_eigh(A, U0, n_threads=64, **kwargs)
            assert torch.equal(base[0], other[0]) and torch.equal(base[1], other[1]), kwargs


@pytest.mark.parametrize("n_threads", [1, 32, 96, 512])
def test_emulated_jacobi_any_thread_count(emu, n_threads):
    A = symmetric_cases(17, 3)["gram"][None]
    s, U = emu.emulate_jacobi_eigh(A, n_threads=n_threads)
    check_eigh(A, s, U)


def test_emulated_jacobi_stays_inside_its_workspace(emu):
    B, n = 3, 11
    size = _cpu.emulate_jacobi_workspace_doubles(B, n)
    ws = torch.full((size + 1000,), 1234.5, dtype=F64)
    A = torch.stack([symmetric_cases(n, b)["random"] for b in range(B)])
    s, U = emu.emulate_jacobi_eigh(A, workspace=ws)
    check_eigh(A, s, U)
    assert bool((ws[size:] == 1234.5).all()), "the kernel wrote past its workspace"


# ------------------------------------------------------------------ the whole step


#: (config name, B, n_f, n_t): every unbounded config over the full size grid, the bounded ones
#: (finite λ bounds, a narrower Λ interval, clipping) over a smaller one.
STEP_CASES = [
    (name, B, n_f, n_t)
    for name in cases.CONFIGS
    for B, n_f in [(1, 1), (3, 1), (3, 2), (3, 3), (3, 17), (2, 33), (2, 64)]
    for n_t in (1, 5)
] + [(name, B, n_f, n_t) for name in cases.BOUNDED_CONFIGS for B, n_f, n_t in [(1, 3, 5), (3, 17, 1), (4, 17, 5)]]


@pytest.mark.parametrize("data", ["wellposed", "noise"])
@pytest.mark.parametrize("memory", [False, True], ids=["empty", "memory"])
@pytest.mark.parametrize(("config_name", "B", "n_f", "n_t"), STEP_CASES)
def test_emulated_step_matches_torch_twin(emu, config_name, B, n_f, n_t, memory, data):
    cases.check_against_twin(emu.emulate_slimtik_step, B, n_f, n_t, memory, data, config_name)


@pytest.mark.parametrize("memory", [False, True], ids=["empty", "memory"])
def test_emulated_step_exercises_the_root_search(emu, memory):
    """The test data really reaches the bracket and the Illinois root: most λ_k are interior."""
    args = make_problem(8, 17, 5, memory, "wellposed", seed=7)
    _, info = emu.emulate_slimtik_step(*args, CONFIGS["sgcv"])
    mu = info[:, 1]
    assert int(((mu > 1e-7 * 1.001) & (mu < 1e3 * 0.999)).sum()) >= 6


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("memory", [False, True], ids=["empty", "memory"])
@pytest.mark.parametrize("n_f", [1, 6, 21])
def test_emulated_step_has_no_races(emu, n_f, memory, config_name):
    """Reverse thread order, shared-memory placement and a warm start with U_out: bit-identical
    W and info across orders and placements; warm start equal to rounding."""
    config = CONFIGS[config_name]
    args = make_problem(3, n_f, 4, memory, "wellposed", seed_of("race", n_f, memory, config_name))
    U_out = torch.empty(3, n_f, n_f, dtype=F64)
    base = emu.emulate_slimtik_step(*args, config, n_threads=64, U_out=U_out)
    for kwargs in (dict(reverse=True), dict(shared="matrix"), dict(shared="on"), dict(shared="on", reverse=True)):
        other = emu.emulate_slimtik_step(*args, config, n_threads=64, **kwargs)
        assert torch.equal(base[0], other[0]) and torch.equal(base[1], other[1]), kwargs
    s = torch.linalg.eigvalsh(args[0])
    check_eigh(args[0], s, U_out)
    warm = emu.emulate_slimtik_step(*args, config, n_threads=64, U0=U_out)
    assert_matches(*warm, *base, rtol=1e-11)


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("memory", [False, True], ids=["empty", "memory"])
def test_emulated_step_from_given_eigenpairs(emu, memory, config_name):
    """The cuSOLVER path: eigenpairs computed outside the kernel replace its Jacobi sweeps."""
    config = CONFIGS[config_name]
    args = make_problem(3, 14, 2, memory, "wellposed", seed_of("given", memory, config_name))
    U_out = torch.empty(3, 14, 14, dtype=F64)
    W_new, info = emu.emulate_slimtik_step(*args, config, eigensolver="cusolver", U_out=U_out)
    assert_matches(W_new, info, *_slimtik_step(*args, config))
    torch.testing.assert_close(U_out, torch.linalg.eigh(args[0])[1], rtol=0, atol=0)


@pytest.mark.parametrize("n_threads", [1, 32, 160, 512])
def test_emulated_step_any_thread_count(emu, n_threads):
    args = make_problem(2, 13, 3, True, "wellposed", seed=11)
    W_new, info = emu.emulate_slimtik_step(*args, CONFIGS["sgcv"], n_threads=n_threads)
    assert_matches(W_new, info, *_slimtik_step(*args, CONFIGS["sgcv"]))


@pytest.mark.parametrize("memory", [False, True], ids=["empty", "memory"])
@pytest.mark.parametrize("n_grid", [2, 33, 100])
def test_emulated_step_stays_inside_its_workspace(emu, memory, n_grid):
    from slimfast.config import SolverConfig

    config = SolverConfig(n_grid=n_grid)
    args = make_problem(3, 9, 4, memory, "wellposed", seed=5)
    size = emu.workspace_size(3, 9, 4, config, memory_empty=not memory)
    ws = torch.full((size + 1000,), 1234.5, dtype=F64)
    W_new, info = emu.emulate_slimtik_step(*args, config, workspace=ws)
    assert_matches(W_new, info, *_slimtik_step(*args, config))
    assert bool((ws[size:] == 1234.5).all()), "the kernel wrote past its workspace"
    # The reference mode needs 60 trial points whatever n_grid is.
    config = SolverConfig(mode="reference", n_grid=n_grid)
    ws = torch.full((size + 1000,), 1234.5, dtype=F64)
    W_new, info = emu.emulate_slimtik_step(*args, config, workspace=ws)
    assert_matches(W_new, info, *_slimtik_step(*args, config))
    assert bool((ws[size:] == 1234.5).all()), "the kernel wrote past its workspace"


@pytest.mark.parametrize(
    ("name", "index", "spoil", "kwargs"),
    [
        ("G", 1, lambda G: G[:, :3], {}),
        ("H", 2, lambda H: H.float(), {}),
        ("workspace", None, None, dict(workspace=torch.empty(3, dtype=F64))),
        ("U0", None, None, dict(U0=torch.eye(3, dtype=F64).expand(2, 3, 3))),
    ],
)
def test_emulated_step_rejects_bad_input(emu, name, index, spoil, kwargs):
    args = list(make_problem(2, 4, 3, True, "wellposed", seed=1))
    if index is not None:
        args[index] = spoil(args[index])
    with pytest.raises(ValueError, match=name):
        emu.emulate_slimtik_step(*args, CONFIGS["sgcv"], **kwargs)


def test_bindings_validate_arguments():
    _cuda = cases.cuda_module()
    with pytest.raises(ValueError, match="n_f"):
        _cuda.workspace_doubles(1, 0, 1, 33, True)
    with pytest.raises(ValueError, match="n_grid"):
        _cuda.workspace_doubles(1, 3, 1, 1, True)
    with pytest.raises(ValueError, match="A_ptr"):
        _cpu.emulate_jacobi_eigh(1, 3, 0, 0, 8, 8, 1e-14, 10, 8)
    with pytest.raises(ValueError, match="n_grid"):
        _cpu.emulate_workspace_doubles(1, 3, 1, 1, True)
    with pytest.raises(ValueError, match="n_threads"):
        _cuda.jacobi_eigh(1, 3, 8, 0, 8, 8, 1e-14, 10, 8, 0, 0, 0, 33, -1)
    with pytest.raises(ValueError, match="device"):
        _cuda.jacobi_eigh(1, 3, 8, 0, 8, 8, 1e-14, 10, 8, 0, -1)
    with pytest.raises(ValueError, match="mode"):
        _cuda.StepOptions(7, 0.0, 1e-7, 1e3, -math.inf, 1e3, 33, 1e-13, 100)
    with pytest.raises(ValueError, match="n_grid"):  # the same limits as the CPU module's
        _cuda.StepOptions(0, 0.0, 1e-7, 1e3, -math.inf, 1e3, 100001, 1e-13, 100)
