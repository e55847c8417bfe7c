"""CUDA backend on a GPU: the kernels vs the float64 torch twin on CUDA tensors.

Every test skips on its own (``gpu`` fixture) when there is no CUDA device or ``slimfast._cuda``
was not built; the same arithmetic is tested without a GPU in test_math_header.py.
"""

from __future__ import annotations

import pytest
import torch

from slimfast._torch_impl import _slimtik_step

from .cuda_cases import BOUNDED_CONFIGS, CONFIGS, F64, assert_matches, check_eigh, cuda_module, make_problem
from .cuda_cases import seed_of, symmetric_cases

pytestmark = pytest.mark.gpu


@pytest.fixture
def gpu():
    """The cuda backend module; skips this test without a CUDA device or without slimfast._cuda."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cuda_module()
    from slimfast.backends import cuda

    return cuda


def problem(B, n_f, n_t, memory, data, config_name):
    return make_problem(B, n_f, n_t, memory, data, seed_of(B, n_f, n_t, memory, data, config_name), device="cuda")


# ------------------------------------------------------------------ the step vs the twin


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("memory", [False, True], ids=["empty", "memory"])
@pytest.mark.parametrize("n_t", [1, 5])
@pytest.mark.parametrize("n_f", [1, 3, 17, 33, 64, 130])
@pytest.mark.parametrize("B", [1, 7, 64])
def test_step_matches_torch_twin(gpu, B, n_f, n_t, memory, config_name):
    config = CONFIGS[config_name]
    args = problem(B, n_f, n_t, memory, "wellposed", config_name)
    W_new, info = gpu.slimtik_step(*args, config)
    assert W_new.device == args[0].device and info.device == args[0].device
    assert_matches(W_new, info, *_slimtik_step(*args, config))


@pytest.mark.parametrize("config_name", list(CONFIGS) + list(BOUNDED_CONFIGS))
@pytest.mark.parametrize("memory", [False, True], ids=["empty", "memory"])
@pytest.mark.parametrize(("B", "n_f", "n_t"), [(7, 17, 5), (3, 40, 1)])
def test_step_noise_and_bounded_configs_match_torch_twin(gpu, B, n_f, n_t, memory, config_name):
    config = {**CONFIGS, **BOUNDED_CONFIGS}[config_name]
    args = problem(B, n_f, n_t, memory, "noise", config_name)
    assert_matches(*gpu.slimtik_step(*args, config), *_slimtik_step(*args, config))


@pytest.mark.parametrize("eigensolver", ["jacobi", "cusolver"])
@pytest.mark.parametrize("memory", [False, True], ids=["empty", "memory"])
@pytest.mark.parametrize(("B", "n_f"), [(1, 130), (7, 64), (64, 33), (64, 130)])
def test_step_eigensolvers_match_torch_twin(gpu, B, n_f, memory, eigensolver):
    """Both eigensolvers, on either side of the "auto" crossover."""
    config = CONFIGS["sgcv"]
    args = problem(B, n_f, 4, memory, "wellposed", eigensolver)
    assert_matches(*gpu.slimtik_step(*args, config, eigensolver=eigensolver), *_slimtik_step(*args, config))


@pytest.mark.parametrize("shared", ["on", "matrix", "off"])
@pytest.mark.parametrize("n_threads", [32, 128, 512])
@pytest.mark.parametrize("n_f", [5, 33])
def test_step_launch_configurations_agree(gpu, n_f, n_threads, shared):
    """Shared or global Jacobi matrices, any block size: the same result."""
    args = problem(9, n_f, 3, True, "wellposed", "launch")
    config = CONFIGS["sgcv"]
    ref = _slimtik_step(*args, config)
    W_new, info = gpu.slimtik_step(*args, config, n_threads=n_threads, shared=shared, eigensolver="jacobi")
    assert_matches(W_new, info, *ref)


def test_step_warm_start_and_U_out(gpu):
    """U_out holds G_mem's eigenvectors; feeding them back as U0 gives the same step."""
    args = problem(16, 24, 3, True, "wellposed", "warm")
    config = CONFIGS["sgcv"]
    U_out = torch.empty(16, 24, 24, dtype=F64, device="cuda")
    cold = gpu.slimtik_step(*args, config, U_out=U_out, eigensolver="jacobi")
    check_eigh(args[0], torch.linalg.eigvalsh(args[0]), U_out)
    # A slightly different memory (next step): warm start from the previous eigenvectors.
    G_mem2 = args[0] + 1e-3 * args[1]
    args2 = (G_mem2,) + tuple(args[1:])
    warm = gpu.slimtik_step(*args2, config, U0=U_out, eigensolver="jacobi")
    assert_matches(*warm, *_slimtik_step(*args2, config))
    assert_matches(*gpu.slimtik_step(*args, config, U0=U_out, eigensolver="jacobi"), *cold, rtol=1e-11)


def test_step_on_a_side_stream(gpu):
    args = problem(8, 20, 2, True, "wellposed", "stream")
    config = CONFIGS["sgcv"]
    ref = _slimtik_step(*args, config)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        W_new, info = gpu.slimtik_step(*args, config)
    side.synchronize()
    assert_matches(W_new, info, *ref)


def test_step_never_synchronises(gpu):
    args = problem(4, 12, 2, True, "wellposed", "sync")
    config = CONFIGS["sgcv"]
    ws = torch.empty(gpu.workspace_size(4, 12, 2, config, memory_empty=False), dtype=F64, device="cuda")
    gpu.slimtik_step(*args, config, workspace=ws, eigensolver="jacobi")  # first call: module load etc.
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        W_new, info = gpu.slimtik_step(*args, config, workspace=ws, eigensolver="jacobi")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_matches(W_new, info, *_slimtik_step(*args, config))


@pytest.mark.parametrize("n_f", [12, 64, 130], ids=["small", "shared-opt-in", "global"])
def test_step_can_be_graph_captured(gpu, n_f):
    """Capture one step in a CUDA graph, change the inputs in place, replay: the new step. The
    default eigensolver ("auto") must pick the capturable Jacobi path while capturing."""
    B, n_t = 8, 3
    config = CONFIGS["sgcv"]
    args = problem(B, n_f, n_t, True, "wellposed", "graph")
    static = [a.clone() for a in args[:7]]
    memory_empty = args[7]
    ws = torch.empty(gpu.workspace_size(B, n_f, n_t, config, memory_empty), dtype=F64, device="cuda")
    U_out = torch.empty(B, n_f, n_f, dtype=F64, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch recommends
        gpu.slimtik_step(*static, memory_empty, config, workspace=ws, U_out=U_out, eigensolver="jacobi")
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        W_new, info = gpu.slimtik_step(*static, memory_empty, config, workspace=ws, U_out=U_out)
    new = problem(B, n_f, n_t, True, "wellposed", "graph-replay")
    for dst, src in zip(static, new[:7]):
        dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    assert_matches(W_new, info, *_slimtik_step(*new, config))
    check_eigh(new[0], torch.linalg.eigvalsh(new[0]), U_out)


def test_loader_selects_cuda_for_cuda_tensors(gpu):
    from slimfast import SolverConfig
    from slimfast.backends import loader
    from slimfast.solver import slimtik_step
    from slimfast.state import SlimTikState

    name, module = loader.resolve_backend(None, torch.device("cuda"))
    assert name == "cuda" and module is gpu
    assert slimfast_info_default_cuda() == "cuda"
    G_mem, G, H, c, m, W, Lambda_prev, _ = problem(3, 6, 2, False, "wellposed", "loader")
    state = SlimTikState(3, 6, 2, memory_depth=2, Lambda0=0.05, device="cuda")
    W_new, info = slimtik_step(state, G, H, c, m, W, config=SolverConfig())
    assert info.backend == "cuda" and W_new.device.type == "cuda"
    ref, ref_info = _slimtik_step(G, G, H, c, m, W, torch.full((3,), 0.05, dtype=F64, device="cuda"), True,
                                  SolverConfig())
    assert_matches(W_new, torch.stack([info.lambda_, info.Lambda, info.sgcv, info.rel_residual, info.cond], 1),
                   ref, ref_info)


def slimfast_info_default_cuda():
    import slimfast

    return slimfast.backend_info()["default_cuda"]


def test_step_rejects_bad_input(gpu):
    args = list(problem(2, 4, 3, True, "wellposed", "bad"))
    config = CONFIGS["sgcv"]
    cpu = list(args)
    cpu[1] = cpu[1].cpu()
    with pytest.raises(ValueError, match="G"):
        gpu.slimtik_step(*cpu, config)
    f32 = list(args)
    f32[5] = f32[5].float()
    with pytest.raises(ValueError, match="W"):
        gpu.slimtik_step(*f32, config)
    with pytest.raises(ValueError, match="workspace"):
        gpu.slimtik_step(*args, config, workspace=torch.empty(5, dtype=F64, device="cuda"))
    with pytest.raises(ValueError, match="shared"):
        gpu.slimtik_step(*args, config, shared="sometimes")
    with pytest.raises(ValueError, match="n_threads"):
        gpu.slimtik_step(*args, config, n_threads=100)


def test_empty_batch(gpu):
    args = problem(1, 3, 2, True, "wellposed", "empty")
    args = tuple(a[:0] if isinstance(a, torch.Tensor) else a for a in args)
    W_new, info = gpu.slimtik_step(*args, CONFIGS["sgcv"])
    assert W_new.shape == (0, 2, 3) and info.shape == (0, 5)


# ------------------------------------------------------------------ Jacobi eigensolver


@pytest.mark.parametrize("kind", ["random", "gram", "near-degenerate", "repeated", "zero"])
@pytest.mark.parametrize("n", [1, 2, 5, 32, 33, 64, 100, 130, 257])
def test_jacobi_eigh_matches_eigh(gpu, n, kind):
    A = torch.stack([symmetric_cases(n, seed_of(n, kind, b))[kind] for b in range(3)]).cuda()
    s, U, sweeps = gpu.jacobi_eigh(A, return_sweeps=True)
    check_eigh(A, s, U)
    assert sweeps < 60


@pytest.mark.parametrize("kind", ["random", "gram", "near-degenerate"])
@pytest.mark.parametrize("n", [7, 64, 130])
def test_jacobi_eigh_warm_start(gpu, n, kind):
    A = symmetric_cases(n, seed_of("warm", n, kind))[kind].cuda()
    E = torch.randn(n, n, dtype=F64, device="cuda")
    A2 = A + 1e-7 * float(A.abs().max()) * (E + E.T)
    _, U1 = torch.linalg.eigh(A)
    s_cold, _, sweeps_cold = gpu.jacobi_eigh(A2[None], return_sweeps=True)
    s_warm, U_warm, sweeps_warm = gpu.jacobi_eigh(A2[None], U1[None], return_sweeps=True)
    check_eigh(A2[None], s_warm, U_warm)
    torch.testing.assert_close(s_warm, s_cold, rtol=0, atol=1e-13 * float(A2.abs().max()))
    if kind == "random":
        assert sweeps_warm < sweeps_cold


@pytest.mark.parametrize("shared", ["on", "matrix", "off"])
def test_jacobi_eigh_matches_its_host_emulation(gpu, shared):
    """The GPU runs the code the CPU tests emulate: same result to rounding (FMA contraction and
    reduction order differ)."""
    A = torch.stack([symmetric_cases(20, b)["random"] for b in range(4)])  # well-separated eigenvalues
    s_gpu, U_gpu = gpu.jacobi_eigh(A.cuda(), shared=shared)
    from . import block_emulation

    s_emu, U_emu = block_emulation.emulate_jacobi_eigh(A)
    torch.testing.assert_close(s_gpu.cpu(), s_emu, rtol=0, atol=1e-13)
    torch.testing.assert_close(U_gpu.cpu().abs(), U_emu.abs(), rtol=0, atol=1e-9)


def test_step_matches_its_host_emulation(gpu):
    args = make_problem(5, 19, 3, True, "wellposed", seed=3)
    config = CONFIGS["sgcv"]
    from . import block_emulation

    emu = block_emulation.emulate_slimtik_step(*args, config)
    dev = gpu.slimtik_step(*(a.cuda() if isinstance(a, torch.Tensor) else a for a in args), config)
    assert_matches(*dev, *emu, rtol=1e-11)
