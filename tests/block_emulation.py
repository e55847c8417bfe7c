"""The CUDA kernels' block code run serially on the host (``slimfast._cpu.emulate_*``): the tests'
way to run the GPU's arithmetic and work distribution on every CPU install.

Same arguments and results as ``slimfast.backends.cuda.slimtik_step`` / ``jacobi_eigh``, on CPU
float64 tensors. ``n_threads`` simulated threads per block run one after another (in reverse order
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
from slimfast.config import SolverConfig

F64 = torch.float64
SHARED = {"off": 0, "matrix": 1, "on": 2}
JACOBI_TOL: float = float(_cpu.JACOBI_TOL)
JACOBI_MAX_SWEEPS: int = int(_cpu.JACOBI_MAX_SWEEPS)


def _buffer(name: str, x: torch.Tensor | None, shape: tuple[int, ...] | None = None) -> torch.Tensor | None:
    """x as a contiguous CPU float64 tensor of ``shape``; ValueError naming ``name`` otherwise."""
    if x is None:
        return None
    if x.dtype != F64 or x.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU float64 tensor, got {x.dtype} on {x.device}")
    if shape is not None and tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(x.shape)}")
    return x.contiguous()


def workspace_size(B: int, n_f: int, n_t: int, config: SolverConfig, memory_empty: bool) -> int:
    """float64 elements of the workspace one emulated step of B problems needs."""
    return int(_cpu.emulate_workspace_doubles(B, n_f, n_t, config.n_grid, bool(memory_empty)))


def _ptr(x: torch.Tensor | None) -> int:
    return 0 if x is None else x.data_ptr()


def _workspace(workspace: torch.Tensor | None, size: int) -> torch.Tensor:
    if workspace is None:
        return torch.full((max(size, 1),), math.nan, dtype=F64)
    if workspace.numel() < size or workspace.dtype != F64 or not workspace.is_contiguous():
        raise ValueError(f"workspace must be a contiguous float64 tensor of at least {size} elements")
    return workspace


def emulate_slimtik_step(
    G_mem: torch.Tensor, G: torch.Tensor, H: torch.Tensor, c: torch.Tensor, m: torch.Tensor, W: torch.Tensor,
    Lambda_prev: torch.Tensor, memory_empty: bool, config: SolverConfig, *, U0: torch.Tensor | None = None,
    U_out: torch.Tensor | None = None, workspace: torch.Tensor | None = None, jacobi_tol: float = JACOBI_TOL,
    max_sweeps: int = JACOBI_MAX_SWEEPS, n_threads: int = 128, reverse: bool = False, shared: str = "off",
    eigensolver: str = "jacobi",
) -> tuple[torch.Tensor, torch.Tensor]:
    """W_new [B, n_t, n_f] and info [B, N_INFO] by the kernel's block code (``eigensolver="cusolver"``
    hands it torch.linalg.eigh's eigenpairs, as the cuda backend does)."""
    if eigensolver not in ("jacobi", "cusolver"):
        raise ValueError(f"eigensolver must be 'jacobi' or 'cusolver' here, got {eigensolver!r}")
    B, n_t, n_f = W.shape
    shapes = dict(G_mem=(B, n_f, n_f), G=(B, n_f, n_f), H=(B, n_t, n_f), c=(B,), m=(B,), W=(B, n_t, n_f),
                  Lambda_prev=(B,), U0=(B, n_f, n_f))
    given = dict(G_mem=G_mem, G=G, H=H, c=c, m=m, W=W, Lambda_prev=Lambda_prev, U0=U0)
    G_mem, G, H, c, m, W, Lambda_prev, U0 = (_buffer(k, v, shapes[k]) for k, v in given.items())
    if U_out is not None:
        _buffer("U_out", U_out, shapes["U0"])
    W_new = torch.empty_like(W)
    info = torch.empty(B, N_INFO, dtype=F64)
    if B == 0:
        return W_new, info
    ws = _workspace(workspace, workspace_size(B, n_f, n_t, config, memory_empty))
    s_in = U_in = None
    if eigensolver == "cusolver":
        s_in, U_in = (x.contiguous() for x in torch.linalg.eigh(G_mem))
    _cpu.emulate_slimtik_step(
        B, n_f, n_t, G_mem.data_ptr(), G.data_ptr(), H.data_ptr(), c.data_ptr(), m.data_ptr(), W.data_ptr(),
        Lambda_prev.data_ptr(), bool(memory_empty), _cpu.StepOptions(**config.kernel_options()), W_new.data_ptr(),
        info.data_ptr(), ws.data_ptr(), _ptr(U0), _ptr(U_out), float(jacobi_tol), int(max_sweeps), int(n_threads),
        bool(reverse), SHARED[shared], _ptr(s_in), _ptr(U_in),
    )  # fmt: skip
    return W_new, info


def emulate_jacobi_eigh(
    A: torch.Tensor, U0: torch.Tensor | None = None, tol: float = 1e-14, max_sweeps: int = 60, *,
    return_sweeps: bool = False, n_threads: int = 128, reverse: bool = False, shared: str = "off",
    workspace: torch.Tensor | None = None,
):
    """(s [..., n] ascending, U [..., n, n]) of symmetric A [..., n, n] (lower triangle read) by the
    jacobi_eigh kernel's block code; also the largest sweep count with ``return_sweeps``."""
    if A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must have shape [..., n, n], got {list(A.shape)}")
    n, batch = A.shape[-1], tuple(A.shape[:-2])
    B = math.prod(batch)
    A, U0 = _buffer("A", A), _buffer("U0", U0, tuple(A.shape))
    s = torch.empty(batch + (n,), dtype=F64)
    U = torch.empty(batch + (n, n), dtype=F64)
    sweeps = torch.zeros(max(B, 1), dtype=torch.int32)
    if B == 0 or n == 0:
        return (s, U, 0) if return_sweeps else (s, U)
    ws = _workspace(workspace, int(_cpu.emulate_jacobi_workspace_doubles(B, n)))
    _cpu.emulate_jacobi_eigh(B, n, A.data_ptr(), _ptr(U0), s.data_ptr(), U.data_ptr(), float(tol), int(max_sweeps),
                             ws.data_ptr(), sweeps.data_ptr(), int(n_threads), bool(reverse), SHARED[shared])
    return (s, U, int(sweeps.max())) if return_sweeps else (s, U)
