"""The CUDA kernels' block code run serially on the host (``slimfast._cpu.emulate_*``): the tests'
way to run the GPU's arithmetic and work distribution on every CPU install.

Same arguments and results as ``slimfast.backends.cuda.slimtik_step`` / ``jacobi_eigh``, on CPU
float64 tensors (the step's signature is ``slimfast.backends.boundary.step_entry``'s).
``n_threads`` simulated threads per block run one after another (in reverse order
with ``reverse``: a result that depends on the order would reveal a data race between threads);
``shared`` ("off" | "matrix" | "on") puts the Jacobi matrices in a separate buffer, as the kernel
does in shared memory. The workspace starts as NaN unless given, so a read of an unwritten
element shows up.
"""

from __future__ import annotations

import math

import torch

from slimfast import _cpu
from slimfast._torch_impl import N_INFO
from slimfast.backends.boundary import (
    BlockLayout, StepInputs, as_buffers, eigenvector_buffer, scratch, square_batch, step_buffers, step_entry,
)
from slimfast.config import SolverConfig

F64 = torch.float64
CPU = torch.device("cpu")
SHARED = {"off": 0, "matrix": 1, "on": 2}
JACOBI_TOL: float = float(_cpu.JACOBI_TOL)
JACOBI_MAX_SWEEPS: int = int(_cpu.JACOBI_MAX_SWEEPS)


#: ``slimtik_step`` runs the compiled block-structured step when ``inputs.blocks`` is set
#: (csrc/slimtik_block_step.h; the solver routes block steps by this flag).
BLOCK_STEP = True

#: The step runs the CUDA block code: it takes U0/U_out/workspace/eigensolver, and the solver keeps
#: the warm start and the workspace in the state (``solver._block_options``).
BLOCK_CODE = True

def workspace_size(B: int, n_f: int, n_t: int, config: SolverConfig, memory_empty: bool) -> int:
    """float64 elements of the workspace one emulated step of B problems needs."""
    return int(_cpu.emulate_workspace_doubles(B, n_f, n_t, config.n_grid, bool(memory_empty)))


@step_entry
def slimtik_step(
    inputs: StepInputs, *, U0: torch.Tensor | None = None, U_out: torch.Tensor | None = None,
    workspace: torch.Tensor | None = None, jacobi_tol: float = JACOBI_TOL, max_sweeps: int = JACOBI_MAX_SWEEPS,
    n_threads: int = 128, reverse: bool = False, shared: str = "off", eigensolver: str = "jacobi",
) -> tuple[torch.Tensor, torch.Tensor]:
    """W_new [B, n_t, n_f] and info [B, N_INFO] by the kernel's block code (``eigensolver="cusolver"``
    hands it torch.linalg.eigh's eigenpairs, as the cuda backend does; "auto" is "jacobi", the cuda
    backend's choice whenever it must not synchronise). Also a backend module: the conftest's
    ``emulate`` backend steps through it."""
    if eigensolver not in ("auto", "jacobi", "cusolver"):
        raise ValueError(f"eigensolver must be 'auto', 'jacobi' or 'cusolver' here, got {eigensolver!r}")
    t = as_buffers(inputs, "cpu")
    U0, U_out = eigenvector_buffer("U0", U0, t), eigenvector_buffer("U_out", U_out, t)
    B, n_t, n_f = t.shape
    W_new = torch.empty_like(t.W)
    info = torch.empty(B, N_INFO, dtype=F64)
    if B == 0:
        return W_new, info
    if t.blocks is not None:
        return _block_step(t, W_new, info, U0, U_out, workspace, jacobi_tol, max_sweeps, n_threads, reverse, shared,
                           eigensolver)
    ws = scratch(workspace, workspace_size(B, n_f, n_t, t.config, t.memory_empty), CPU, fill=math.nan)
    s_in = U_in = None
    if eigensolver == "cusolver":
        s_in, U_in = (x.contiguous() for x in torch.linalg.eigh(t.G_mem))
    buffers = step_buffers(_cpu, t, W_new, info, workspace=ws, U0=U0, U_out=U_out, s_in=s_in, U_in=U_in)
    _cpu.emulate_slimtik_step(buffers, _cpu.StepOptions(**t.config.kernel_options()), float(jacobi_tol),
                              int(max_sweeps), int(n_threads), bool(reverse), SHARED[shared])
    return W_new, info


emulate_slimtik_step = slimtik_step


def block_workspace_size(B: int, n_f: int, n_t: int, config: SolverConfig, blocks: BlockLayout) -> int:
    """float64 elements of the workspace one emulated block step of B problems needs."""
    return int(_cpu.emulate_block_workspace_doubles(B, n_f, n_t, config.n_grid, _block_offsets(blocks, n_f)))


def _block_offsets(layout: BlockLayout, n_f: int):
    return _cpu.BlockOffsets(list(layout.offsets()), layout.border, n_f)


def _block_step(t: StepInputs, W_new, info, U0, U_out, workspace, jacobi_tol, max_sweeps, n_threads, reverse, shared,
                eigensolver):
    """The block-structured step's kernel code (csrc/slimtik_block_step.h) on the host: its own
    Jacobi per block, no warm start and no eigenvector output (the solver passes neither)."""
    if U0 is not None or U_out is not None:
        raise ValueError("the block step takes no U0 or U_out")
    if eigensolver == "cusolver":
        raise ValueError("the block step factors its blocks with the kernel's Jacobi ('auto' or 'jacobi')")
    B, n_t, n_f = t.shape
    ws = scratch(workspace, block_workspace_size(B, n_f, n_t, t.config, t.blocks), CPU, fill=math.nan)
    buffers = step_buffers(_cpu, t, W_new, info, workspace=ws)
    _cpu.emulate_slimtik_block_step(buffers, _block_offsets(t.blocks, n_f), _cpu.StepOptions(**t.config.kernel_options()),
                                    float(jacobi_tol), int(max_sweeps), int(n_threads), bool(reverse), SHARED[shared])
    return W_new, info


def emulate_jacobi_eigh(
    A: torch.Tensor, U0: torch.Tensor | None = None, tol: float = 1e-14, max_sweeps: int = 60, *,
    return_sweeps: bool = False, n_threads: int = 128, reverse: bool = False, shared: str = "off",
    workspace: torch.Tensor | None = None,
):
    """(s [..., n] ascending, U [..., n, n]) of symmetric A [..., n, n] (lower triangle read) by the
    jacobi_eigh kernel's block code; also the largest sweep count with ``return_sweeps``."""
    A, U0, n, batch, B = square_batch(A, U0, CPU)
    s = torch.empty(batch + (n,), dtype=F64)
    U = torch.empty(batch + (n, n), dtype=F64)
    sweeps = torch.zeros(max(B, 1), dtype=torch.int32)
    if B == 0 or n == 0:
        return (s, U, 0) if return_sweeps else (s, U)
    ws = scratch(workspace, int(_cpu.emulate_jacobi_workspace_doubles(B, n)), CPU, fill=math.nan)
    _cpu.emulate_jacobi_eigh(B, n, A.data_ptr(), 0 if U0 is None else U0.data_ptr(), s.data_ptr(), U.data_ptr(),
                             float(tol), int(max_sweeps), ws.data_ptr(), sweeps.data_ptr(), int(n_threads),
                             bool(reverse), SHARED[shared])
    return (s, U, int(sweeps.max())) if return_sweeps else (s, U)
