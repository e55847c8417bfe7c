"""Compiled CPU backend: the slimTik step of ``slimfast._cpu`` on CPU float64 torch tensors.

Same signature and results as ``slimfast._torch_impl._slimtik_step`` (its twin). Tensors cross
into C++ as data pointers, so the extension is independent of the torch version; this module
owns the checks that make those pointers safe (device, dtype, shape, contiguity).
"""

from __future__ import annotations

import torch

from .. import _cpu  # ImportError here means "backend unavailable" to the loader
from .._torch_impl import N_INFO
from ..config import SolverConfig

__all__ = ["EIGENSOLVERS", "jacobi_eigh", "slimtik_step"]

#: Eigensolver choices of the compiled step: "auto" (the header's Jacobi for n_f <= 6, else
#: "syevd"), "syevd", "syevr" (SciPy's LAPACK inside the kernel, one thread per problem), "jacobi"
#: (the shared header's, as on the GPU), "torch" (torch.linalg.eigh, i.e. torch's LAPACK with its
#: own threads, handed to the kernel). Measured at n_f = 257, B = 1 on 2 cores, "torch" was not
#: faster than "syevd" on average (its threads pay only on an idle machine and collapse on a busy
#: one), so "auto" does not use it.
EIGENSOLVERS: dict[str, int] = {**_cpu.EIGENSOLVERS, "torch": _cpu.EIGENSOLVERS["auto"]}


def _as_buffer(name: str, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """x as a contiguous CPU float64 tensor of ``shape``; ValueError naming ``name`` otherwise."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cpu" or x.dtype != torch.float64:
        raise ValueError(f"{name} must be a CPU float64 tensor, got {x.dtype} on {x.device}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(x.shape)}")
    return x.contiguous()


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
    eigensolver: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One slimTik step for B problems (twin: ``slimfast._torch_impl._slimtik_step``).

    Args:
        G_mem, G: [B, n_f, n_f]; H, W: [B, n_t, n_f]; c, m, Lambda_prev: [B]; all CPU float64.
        memory_empty: True when G_mem is G alone.
        config: λ mode and bounds.
        eigensolver: key of ``EIGENSOLVERS`` (for benchmarks; "auto" picks the fastest).

    Returns:
        W_new [B, n_t, n_f] and info [B, 5] (columns ``_torch_impl.INFO_FIELDS``).
    """
    if W.dim() != 3:
        raise ValueError(f"W must have shape [B, n_t, n_f], got {list(W.shape)}")
    if eigensolver not in EIGENSOLVERS:
        raise ValueError(f"eigensolver must be one of {sorted(EIGENSOLVERS)}, got {eigensolver!r}")
    B, n_t, n_f = W.shape
    W = _as_buffer("W", W, (B, n_t, n_f))
    G_mem = _as_buffer("G_mem", G_mem, (B, n_f, n_f))
    G = _as_buffer("G", G, (B, n_f, n_f))
    H = _as_buffer("H", H, (B, n_t, n_f))
    c = _as_buffer("c", c, (B,))
    m = _as_buffer("m", m, (B,))
    Lambda_prev = _as_buffer("Lambda_prev", Lambda_prev, (B,))
    W_new = torch.empty_like(W)
    info = torch.empty(B, N_INFO, dtype=torch.float64)
    s = Ut = None
    if eigensolver == "torch":  # the kernel clips s at 0 itself, as the twin does after eigh
        s, U = torch.linalg.eigh(G_mem)
        # The kernel takes eigenvectors as rows; LAPACK returns them so (U is column-major), so
        # this .contiguous() is normally free.
        Ut = U.mT.contiguous()
    _cpu.slimtik_step(
        B, n_f, n_t,
        G_mem.data_ptr(), G.data_ptr(), H.data_ptr(), c.data_ptr(), m.data_ptr(), W.data_ptr(),
        Lambda_prev.data_ptr(), bool(memory_empty), _cpu.StepOptions(**config.kernel_options()),
        W_new.data_ptr(), info.data_ptr(), EIGENSOLVERS[eigensolver],
        0 if s is None else s.data_ptr(), 0 if Ut is None else Ut.data_ptr(),
    )  # fmt: skip
    return W_new, info


def jacobi_eigh(
    A: torch.Tensor,
    U0: torch.Tensor | None = None,
    tol: float = 1e-14,
    max_sweeps: int = 60,
    *,
    return_sweeps: bool = False,
):
    """Eigendecomposition by the CUDA kernel's Jacobi (csrc/slimfast_jacobi.h), one thread per matrix.

    Args:
        A: [..., n, n] symmetric CPU float64 (lower triangle read, as ``torch.linalg.eigh``).
        U0: optional [..., n, n] warm start (e.g. eigenvectors of a nearby matrix): rotations
            start from U0ᵀ A U0.
        tol: stop when ‖offdiag‖_F <= tol·‖A‖_F.
        max_sweeps: at most this many cyclic sweeps.

    Returns:
        (s [..., n] ascending, U [..., n, n] eigenvectors as columns), and the largest number
        of sweeps used if ``return_sweeps``.
    """
    if A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must have shape [..., n, n], got {list(A.shape)}")
    n = A.shape[-1]
    batch = tuple(A.shape[:-2])
    B = 1
    for size in batch:
        B *= size
    A = _as_buffer("A", A, batch + (n, n))
    if U0 is not None:
        U0 = _as_buffer("U0", U0, batch + (n, n))
    s = torch.empty(batch + (n,), dtype=torch.float64)
    U = torch.empty(batch + (n, n), dtype=torch.float64)
    if B == 0 or n == 0:
        return (s, U, 0) if return_sweeps else (s, U)
    sweeps = _cpu.jacobi_eigh(
        B, n, A.data_ptr(), 0 if U0 is None else U0.data_ptr(), s.data_ptr(), U.data_ptr(), float(tol), int(max_sweeps)
    )
    return (s, U, sweeps) if return_sweeps else (s, U)
