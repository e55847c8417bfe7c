"""CUDA backend: the slimTik step of ``slimfast._cuda`` on CUDA float64 torch tensors.

Same signature and results as ``slimfast._torch_impl._slimtik_step`` (its twin). One thread
block per problem; the eigendecomposition of G_mem is a block-parallel cyclic Jacobi (optionally
warm-started from a previous step's eigenvectors), then the projections, the sGCV search and the
update, all on the device. A step never synchronises with the host and allocates only through
torch (outputs and a workspace on the tensors' device), so it can be captured in a CUDA graph.

Tensors cross into C++ as data pointers and the stream as an integer, so the extension is
independent of the torch version; this module owns the checks that make those pointers safe
(device, dtype, shape, contiguity).

The kernels' block code also runs serially on the host, built into the CPU module
(``slimfast._cpu.emulate_*``, wrapped for the tests in tests/block_emulation.py), so every CPU
install tests the GPU's arithmetic.
"""

from __future__ import annotations

import torch

from .. import _cuda  # ImportError here means "backend unavailable" to the loader
from .._torch_impl import N_INFO
from ..config import SolverConfig

__all__ = [
    "EIGENSOLVERS", "JACOBI_MAX_SWEEPS", "JACOBI_TOL", "choose_eigensolver", "jacobi_eigh", "slimtik_step",
    "workspace_size",
]

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


def _as_buffer(name: str, x: torch.Tensor, shape: tuple[int, ...], device: torch.device | None) -> torch.Tensor:
    """x as a contiguous float64 tensor of ``shape`` on ``device`` (a CUDA device, or the CPU when
    None); ValueError naming ``name`` otherwise."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    want = "CPU" if device is None else "CUDA"
    if x.dtype != F64 or (x.device.type != "cuda") == (device is not None):
        raise ValueError(f"{name} must be a {want} float64 tensor, got {x.dtype} on {x.device}")
    if device is not None and x.device != device:
        raise ValueError(f"{name} is on {x.device}, expected {device} (all tensors on one device)")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(x.shape)}")
    return x.contiguous()


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


def _step_inputs(G_mem, G, H, c, m, W, Lambda_prev, U0, U_out, device):
    if not isinstance(W, torch.Tensor) or W.dim() != 3:
        raise ValueError(f"W must be a tensor of shape [B, n_t, n_f], got {getattr(W, 'shape', type(W))}")
    B, n_t, n_f = W.shape
    if device is not None:
        if W.device.type != "cuda":
            raise ValueError(f"W must be a CUDA float64 tensor, got {W.dtype} on {W.device}")
        device = W.device
    t = dict(
        W=_as_buffer("W", W, (B, n_t, n_f), device),
        G_mem=_as_buffer("G_mem", G_mem, (B, n_f, n_f), device),
        G=_as_buffer("G", G, (B, n_f, n_f), device),
        H=_as_buffer("H", H, (B, n_t, n_f), device),
        c=_as_buffer("c", c, (B,), device),
        m=_as_buffer("m", m, (B,), device),
        Lambda_prev=_as_buffer("Lambda_prev", Lambda_prev, (B,), device),
        U0=None if U0 is None else _as_buffer("U0", U0, (B, n_f, n_f), device),
    )
    if U_out is not None:
        # Written in place, so it must already be contiguous (a .contiguous() copy would be lost).
        _as_buffer("U_out", U_out, (B, n_f, n_f), device)
        if not U_out.is_contiguous():
            raise ValueError("U_out must be contiguous")
    return B, n_t, n_f, device, t


def _step_options(config: SolverConfig) -> "_cuda.StepOptions":
    if not isinstance(config, SolverConfig):
        raise TypeError(f"config must be a SolverConfig, got {type(config).__name__}")
    return _cuda.StepOptions(**config.kernel_options())


def _workspace(workspace: torch.Tensor | None, size: int, device: torch.device) -> torch.Tensor:
    if workspace is None:
        return torch.empty(max(size, 1), dtype=F64, device=device)
    if workspace.dtype != F64 or workspace.device != device or not workspace.is_contiguous():
        raise ValueError(f"workspace must be a contiguous float64 tensor on {device}")
    if workspace.numel() < size:
        raise ValueError(f"workspace must hold at least {size} elements, got {workspace.numel()}")
    return workspace


def slimtik_step(
    G_mem: torch.Tensor,
    G: torch.Tensor,
    H: torch.Tensor,
    c: torch.Tensor,
    m: torch.Tensor,
    W: torch.Tensor,
    Lambda_prev: torch.Tensor,
    memory_empty: bool,
    config: SolverConfig,
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

    Args:
        G_mem, G: [B, n_f, n_f]; H, W: [B, n_t, n_f]; c, m, Lambda_prev: [B]; CUDA float64, all
            on one device.
        memory_empty: True when G_mem is G alone.
        config: λ mode and bounds.
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
        W_new [B, n_t, n_f] and info [B, 5] (columns ``_torch_impl.INFO_FIELDS``), enqueued on
        the current stream of the tensors' device; nothing is synchronised (except by cuSOLVER).
    """
    B, n_t, n_f, device, t = _step_inputs(G_mem, G, H, c, m, W, Lambda_prev, U0, U_out, device=W.device)
    opts = _step_options(config)
    shared_code = _shared_code(shared)
    if eigensolver not in EIGENSOLVERS:
        raise ValueError(f"eigensolver must be one of {EIGENSOLVERS}, got {eigensolver!r}")
    W_new = torch.empty_like(t["W"])
    info = torch.empty(B, N_INFO, dtype=F64, device=device)
    if B == 0:
        return W_new, info
    ws = _workspace(workspace, workspace_size(B, n_f, n_t, config, memory_empty), device)
    if eigensolver == "auto":
        eigensolver = choose_eigensolver(B, n_f)
    s_in = U_in = None
    if eigensolver == "cusolver":
        s_in, U_in = torch.linalg.eigh(t["G_mem"])
        s_in, U_in = s_in.contiguous(), U_in.contiguous()  # eigh returns column-major eigenvectors
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        _cuda.slimtik_step(
            B, n_f, n_t,
            t["G_mem"].data_ptr(), t["G"].data_ptr(), t["H"].data_ptr(), t["c"].data_ptr(), t["m"].data_ptr(),
            t["W"].data_ptr(), t["Lambda_prev"].data_ptr(), bool(memory_empty), opts,
            W_new.data_ptr(), info.data_ptr(), ws.data_ptr(),
            0 if t["U0"] is None else t["U0"].data_ptr(), 0 if U_out is None else U_out.data_ptr(),
            stream, _device_index(device), float(jacobi_tol), int(max_sweeps), int(n_threads), shared_code,
            0 if s_in is None else s_in.data_ptr(), 0 if U_in is None else U_in.data_ptr(),
        )  # fmt: skip
    return W_new, info


def _jacobi_inputs(A: torch.Tensor, U0: torch.Tensor | None, device) -> tuple:
    if not isinstance(A, torch.Tensor) or A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must be a tensor of shape [..., n, n], got {getattr(A, 'shape', type(A))}")
    n = A.shape[-1]
    batch = tuple(A.shape[:-2])
    B = 1
    for size in batch:
        B *= size
    A = _as_buffer("A", A, batch + (n, n), device)
    if U0 is not None:
        U0 = _as_buffer("U0", U0, batch + (n, n), device)
    return A, U0, n, batch, B


def jacobi_eigh(
    A: torch.Tensor,
    U0: torch.Tensor | None = None,
    tol: float = 1e-14,
    max_sweeps: int = 60,
    *,
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
    device = A.device
    A, U0, n, batch, B = _jacobi_inputs(A, U0, device)
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


# ------------------------------------------------------------------ host emulation (tests)
