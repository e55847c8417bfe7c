"""CUDA backend: the slimTik step of ``slimfast._cuda`` on CUDA float64 torch tensors.

Same arguments and results as ``slimfast._torch_impl._slimtik_step`` (its twin; the signature is
``boundary.step_entry``'s). One thread
block per problem; the eigendecomposition of G_mem is a block-parallel cyclic Jacobi (optionally
warm-started from a previous step's eigenvectors), then the projections, the sGCV search and the
update, all on the device. A step never synchronises with the host and allocates only through
torch (outputs and a workspace on the tensors' device), so it can be captured in a CUDA graph.

Tensors cross into C++ as data pointers packed in one checked ``_cuda.StepBuffers`` and the
stream as an integer, so the extension is independent of the torch version;
``boundary.as_buffers`` makes those pointers safe (device, dtype, shape, contiguity).

The kernels' block code also runs serially on the host, built into the CPU module
(``slimfast._cpu.emulate_*``, wrapped for the tests in tests/block_emulation.py), so every CPU
install tests the GPU's arithmetic.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .. import _cuda  # ImportError here means "backend unavailable" to the loader
from .._torch_impl import N_INFO
from ..config import SolverConfig
from .boundary import BlockLayout, StepInputs, as_buffers, eigenvector_buffer, scratch, square_batch, step_buffers, step_entry

__all__ = [
    "BLOCK_CODE", "BLOCK_STEP", "EIGENSOLVERS", "block_workspace_size", "JACOBI_MAX_SWEEPS", "JACOBI_TOL", "choose_eigensolver", "jacobi_eigh",
    "slimtik_step",
    "workspace_size",
]

#: ``slimtik_step`` runs the compiled block-structured step when ``inputs.blocks`` is set
#: (csrc/slimtik_block_step.h; the solver routes block steps by this flag).
BLOCK_STEP = True

#: The step runs the CUDA block code: it takes U0/U_out/workspace/eigensolver, and the solver keeps
#: the warm start and the workspace in the state (``solver._block_options``).
BLOCK_CODE = True

#: Eigensolvers of the step: "jacobi" (the kernel's own block-parallel Jacobi: no host
#: synchronisation, graph-capturable), "cusolver" (torch.linalg.eigh, which synchronises, then the
#: kernel from the eigenpairs), "auto" (see ``choose_eigensolver``).
EIGENSOLVERS: tuple[str, ...] = ("auto", "jacobi", "cusolver")

#: Jacobi stopping rule of the step: ‖offdiag‖_F <= JACOBI_TOL·‖G_mem‖_F, at most JACOBI_MAX_SWEEPS.
JACOBI_TOL: float = float(_cuda.JACOBI_TOL)
JACOBI_MAX_SWEEPS: int = int(_cuda.JACOBI_MAX_SWEEPS)
#: Where a block keeps its Jacobi matrices: "auto" as much in shared memory as fits, "off" all in
#: global memory, "matrix" the working matrix in shared memory, "on" also the eigenvectors.
_SHARED = {"auto": _cuda.SHARED_AUTO, "off": _cuda.SHARED_OFF, "matrix": _cuda.SHARED_MATRIX, "on": _cuda.SHARED_ON}

F64 = torch.float64


def _shared_code(shared: str) -> int:
    if shared not in _SHARED:
        raise ValueError(f"shared must be one of {list(_SHARED)}, got {shared!r}")
    return _SHARED[shared]


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def choose_eigensolver(B: int, n_f: int) -> str:
    """The "auto" choice: one block per problem wins when there are many problems or they are small;
    a few large ones are faster with cuSOLVER, whose cost grows with B but uses the whole GPU per
    matrix. The crossover B ≈ n_f/5 is an estimate (benchmarks/bench_gpu.py reports both). Never
    "cusolver" while a CUDA graph is being captured (it synchronises)."""
    if n_f > 32 and B < max(2, n_f // 5) and not torch.cuda.is_current_stream_capturing():
        return "cusolver"
    return "jacobi"


def workspace_size(B: int, n_f: int, n_t: int, config: SolverConfig, memory_empty: bool) -> int:
    """float64 elements of the workspace one step of B problems needs (see ``slimtik_step``)."""
    return int(_cuda.workspace_doubles(int(B), int(n_f), int(n_t), int(config.n_grid), bool(memory_empty)))


def block_workspace_size(B: int, n_f: int, n_t: int, config: SolverConfig, blocks: BlockLayout) -> int:
    """float64 elements of the workspace one block-structured step of B problems needs."""
    offsets = _cuda.BlockOffsets(list(blocks.offsets()), blocks.border, int(n_f))
    return int(_cuda.block_workspace_doubles(int(B), int(n_f), int(n_t), int(config.n_grid), offsets))


def _step_options(config: SolverConfig) -> "_cuda.StepOptions":
    if not isinstance(config, SolverConfig):
        raise TypeError(f"config must be a SolverConfig, got {type(config).__name__}")
    return _cuda.StepOptions(**config.kernel_options())


@step_entry
def slimtik_step(
    inputs: StepInputs,
    *,
    U0: torch.Tensor | None = None,
    U_out: torch.Tensor | None = None,
    workspace: torch.Tensor | None = None,
    jacobi_tol: float = JACOBI_TOL,
    max_sweeps: int = JACOBI_MAX_SWEEPS,
    n_threads: int = 0,
    shared: str = "auto",
    eigensolver: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One slimTik step for B problems (twin: ``slimfast._torch_impl._slimtik_step``).

    Args: those of ``boundary.StepInputs`` (G_mem, G: [B, n_f, n_f]; H, W: [B, n_t, n_f];
    c, m, Lambda_prev: [B]; CUDA float64, all on one device; memory_empty; config; blocks: with
    a layout the block-structured step's kernel runs (twin ``_torch_block._slimtik_block_step``;
    its own Jacobi per block, so no U0, U_out or "cusolver", and its own workspace size:
    ``block_workspace_size``)), then
        U0: optional [B, n_f, n_f] orthogonal matrices close to G_mem's eigenvectors (e.g. the
            previous step's ``U_out``): the Jacobi sweeps start from U0ᵀ G_mem U0 and need fewer
            sweeps. Only the speed depends on it.
        U_out: optional contiguous [B, n_f, n_f] tensor that receives G_mem's eigenvectors
            (columns, eigenvalues ascending), for the next step's warm start.
        workspace: optional float64 tensor of at least ``workspace_size(...)`` elements on the
            device (reuse one across steps, e.g. inside a CUDA graph); allocated per call if None.
        jacobi_tol, max_sweeps: Jacobi stopping rule (‖offdiag‖_F <= tol·‖G_mem‖_F).
        n_threads: threads per block (0: chosen by n_f); shared: "auto" | "off" | "matrix" | "on",
            where the Jacobi matrices live (benchmarks and tests; see ``_SHARED``).
        eigensolver: one of ``EIGENSOLVERS``. "jacobi" never synchronises with the host (use it,
            or "auto", inside CUDA graphs); "cusolver" does (torch.linalg.eigh checks for errors
            on the host). U0 only matters to "jacobi".

    Returns:
        W_new [B, n_t, n_f] and info [B, N_INFO] (columns ``_torch_impl.INFO_FIELDS``), enqueued on
        the current stream of the tensors' device; nothing is synchronised (except by cuSOLVER).
    """
    t = as_buffers(inputs, "cuda")
    U0, U_out = eigenvector_buffer("U0", U0, t), eigenvector_buffer("U_out", U_out, t)
    opts = _step_options(t.config)
    shared_code = _shared_code(shared)
    if eigensolver not in EIGENSOLVERS:
        raise ValueError(f"eigensolver must be one of {EIGENSOLVERS}, got {eigensolver!r}")
    (B, n_t, n_f), device = t.shape, t.W.device
    W_new = torch.empty_like(t.W)
    info = torch.empty(B, N_INFO, dtype=F64, device=device)
    if B == 0:
        return W_new, info
    if t.blocks is not None:
        if U0 is not None or U_out is not None or eigensolver == "cusolver":
            raise ValueError("the block step factors its blocks with the kernel's Jacobi: no U0, U_out or 'cusolver'")
        blocks = _block_offsets(t.blocks, n_f, device).blocks
        size = int(_cuda.block_workspace_doubles(B, n_f, n_t, int(t.config.n_grid), blocks))
        buffers = step_buffers(_cuda, t, W_new, info, workspace=scratch(workspace, size, device))
        with torch.cuda.device(device):
            stream = torch.cuda.current_stream(device).cuda_stream
            _cuda.slimtik_block_step(buffers, blocks, opts, stream, _device_index(device), float(jacobi_tol),
                                     int(max_sweeps), int(n_threads), shared_code)
        return W_new, info
    ws = scratch(workspace, workspace_size(B, n_f, n_t, t.config, t.memory_empty), device)
    if eigensolver == "auto":
        eigensolver = choose_eigensolver(B, n_f)
    s_in = U_in = None
    if eigensolver == "cusolver":
        s_in, U_in = (x.contiguous() for x in torch.linalg.eigh(t.G_mem))  # eigh's U is column-major
    buffers = step_buffers(_cuda, t, W_new, info, workspace=ws, U0=U0, U_out=U_out, s_in=s_in, U_in=U_in)
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        _cuda.slimtik_step(buffers, opts, stream, _device_index(device), float(jacobi_tol), int(max_sweeps),
                           int(n_threads), shared_code)
    return W_new, info


@functools.lru_cache(maxsize=64)
def _block_offsets(layout: BlockLayout, n_f: int, device: torch.device) -> Any:
    """The checked ``_cuda.BlockOffsets`` of a contiguous layout with its offsets copied to
    ``device`` once (the kernel reads them there; the object keeps the tensor alive)."""
    offsets = list(layout.offsets())
    on_device = torch.tensor(offsets, dtype=torch.int32, device=device)
    blocks = _cuda.BlockOffsets(offsets, layout.border, n_f, on_device.data_ptr())
    return _KeptAlive(blocks, on_device)


class _KeptAlive:
    """A ``_cuda.BlockOffsets`` and the device tensor its offsets_ptr points into."""

    def __init__(self, blocks: Any, tensor: torch.Tensor) -> None:
        self.blocks, self.tensor = blocks, tensor


def jacobi_eigh(
    A: torch.Tensor, U0: torch.Tensor | None = None, tol: float = 1e-14, max_sweeps: int = 60, *,
    return_sweeps: bool = False,
    n_threads: int = 0,
    shared: str = "auto",
):
    """Eigendecomposition by the block-parallel Jacobi kernel (one block per matrix).

    Args:
        A: [..., n, n] symmetric CUDA float64 (lower triangle read, as ``torch.linalg.eigh``).
        U0: optional [..., n, n] orthogonal warm start (e.g. eigenvectors of a nearby matrix).
        tol: stop when ‖offdiag‖_F <= tol·‖A‖_F.
        max_sweeps: at most this many sweeps (n−1 rounds of n/2 parallel rotations each).
        return_sweeps: also return the largest number of sweeps used (synchronises).

    Returns:
        (s [..., n] ascending, U [..., n, n] eigenvectors as columns)[, sweeps].
    """
    if not isinstance(A, torch.Tensor) or A.device.type != "cuda":
        raise ValueError(f"A must be a CUDA float64 tensor, got {getattr(A, 'device', type(A))}")
    A, U0, n, batch, B = square_batch(A, U0, A.device)
    device = A.device
    shared_code = _shared_code(shared)
    s = torch.empty(batch + (n,), dtype=F64, device=device)
    U = torch.empty(batch + (n, n), dtype=F64, device=device)
    sweeps = torch.zeros(max(B, 1), dtype=torch.int32, device=device)
    if B == 0 or n == 0:
        return (s, U, 0) if return_sweeps else (s, U)
    ws = torch.empty(int(_cuda.jacobi_workspace_doubles(B, n)), dtype=F64, device=device)
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        _cuda.jacobi_eigh(
            B, n, A.data_ptr(), 0 if U0 is None else U0.data_ptr(), s.data_ptr(), U.data_ptr(), float(tol),
            int(max_sweeps), ws.data_ptr(), stream, _device_index(device), sweeps.data_ptr(), int(n_threads),
            shared_code,
        )
    return (s, U, int(sweeps.max())) if return_sweeps else (s, U)

