"""Compiled CPU backend: the slimTik step of ``slimfast._cpu`` on CPU float64 torch tensors.

Same arguments and results as ``slimfast._torch_impl._slimtik_step`` (its twin; the signature is
``boundary.step_entry``'s). Tensors cross into C++ as data pointers packed in one checked
``_cpu.StepBuffers``, so the extension is independent of the torch version; ``boundary.as_buffers``
makes those pointers safe (device, dtype, shape, contiguity).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .. import _cpu  # ImportError here means "backend unavailable" to the loader
from .._torch_impl import N_INFO
from ..config import SolverConfig
from .boundary import BlockLayout, StepInputs, as_buffer, as_buffers, square_batch, step_buffers, step_entry
from .lapack_provider import install as _install_lapack

_install_lapack(_cpu)   # torch's MKL for dsyevd/dgemm/dgemv where it is there and passes its check

__all__ = ["BLOCK_STEP", "EIGENSOLVERS", "jacobi_eigh", "slimtik_step"]

#: Eigensolver choices of the compiled step: "auto" (the header's Jacobi for n_f <= 12, else
#: "syevd"), "syevd", "syevr" (SciPy's LAPACK inside the kernel, one thread per problem), "jacobi"
#: (the shared header's, as on the GPU), "torch" (torch.linalg.eigh, i.e. torch's LAPACK with its
#: own threads, handed to the kernel). Measured at n_f = 257, B = 1 on 2 cores, "torch" was not
#: faster than "syevd" on average (its threads pay only on an idle machine and collapse on a busy
#: one), so "auto" does not use it.
#: ``slimtik_step`` runs the compiled block-structured step when ``inputs.blocks`` is set
#: (csrc/slimtik_block_step.h; the solver routes block steps by this flag).
BLOCK_STEP = True

EIGENSOLVERS: dict[str, int] = {**_cpu.EIGENSOLVERS, "torch": _cpu.EIGENSOLVERS["auto"]}


@step_entry
def slimtik_step(inputs: StepInputs, *, eigensolver: str = "auto",
                 eigenpairs: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One slimTik step for B problems (twin: ``slimfast._torch_impl._slimtik_step``).

    Args: those of ``boundary.StepInputs`` (G_mem, G: [B, n_f, n_f]; H, W: [B, n_t, n_f];
    c, m, Lambda_prev: [B]; all CPU float64; memory_empty; config; blocks: with a layout the
    block-structured step runs, twin ``_torch_block._slimtik_block_step``), then
        eigensolver: key of ``EIGENSOLVERS`` (for benchmarks; "auto" picks the fastest).
        eigenpairs: (s [B, n_f] ascending, Ut [B, n_f, n_f] orthonormal eigenvectors as rows) with
            G_mem = Utᵀ diag(s) Ut, known to the caller (the sample side's G_mem is diagonal):
            handed to the kernel in place of its eigensolver. Not checked beyond their layout.

    Returns:
        W_new [B, n_t, n_f] and info [B, N_INFO] (columns ``_torch_impl.INFO_FIELDS``).
    """
    if eigensolver not in EIGENSOLVERS:
        raise ValueError(f"eigensolver must be one of {sorted(EIGENSOLVERS)}, got {eigensolver!r}")
    t = as_buffers(inputs, "cpu")
    B = t.shape[0]
    W_new = torch.empty_like(t.W)
    info = torch.empty(B, N_INFO, dtype=torch.float64)
    if t.blocks is not None:  # the block-structured step (twin: _torch_block._slimtik_block_step)
        if eigensolver == "torch" or eigenpairs is not None:
            raise ValueError("eigensolver 'torch' and eigenpairs hand G_mem's eigenpairs to the dense step; the "
                             "block step factors its blocks itself (use 'auto', 'syevd', 'syevr' or 'jacobi')")
        blocks = _block_offsets(t.blocks, t.shape[2])
        _cpu.slimtik_block_step(step_buffers(_cpu, t, W_new, info), blocks, _kernel_options(t.config),
                                EIGENSOLVERS[eigensolver])
        return W_new, info
    s = Ut = None   # given s_in/U_in, the kernel runs no eigensolver of its own
    if eigenpairs is not None:
        n_f = t.shape[2]
        s = as_buffer("eigenpairs[0]", eigenpairs[0], (B, n_f), t.W.device)
        Ut = as_buffer("eigenpairs[1]", eigenpairs[1], (B, n_f, n_f), t.W.device)
    elif eigensolver == "torch":  # the kernel clips s at 0 itself, as the twin does after eigh
        s, U = torch.linalg.eigh(t.G_mem)
        # The kernel takes eigenvectors as rows; LAPACK returns them so (U is column-major), so
        # this .contiguous() is normally free.
        Ut = U.mT.contiguous()
    buffers = step_buffers(_cpu, t, W_new, info, s_in=s, U_in=Ut)
    _cpu.slimtik_step(buffers, _kernel_options(t.config), EIGENSOLVERS[eigensolver])
    return W_new, info


@functools.lru_cache(maxsize=64)
def _block_offsets(layout: BlockLayout, n_f: int) -> Any:
    """The checked ``_cpu.BlockOffsets`` of a (contiguous) layout, built once per layout."""
    return _cpu.BlockOffsets(list(layout.offsets()), layout.border, n_f)


@functools.lru_cache(maxsize=64)
def _kernel_options(config: SolverConfig) -> Any:
    """The bound ``StepOptions`` of a config (frozen, hashable), built once rather than every
    step: 4 µs of a ~20 µs small step."""
    return _cpu.StepOptions(**config.kernel_options())


def jacobi_eigh(
    A: torch.Tensor, U0: torch.Tensor | None = None, tol: float = 1e-14, max_sweeps: int = 60, *,
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
    A, U0, n, batch, B = square_batch(A, U0, torch.device("cpu"))
    s = torch.empty(batch + (n,), dtype=torch.float64)
    U = torch.empty(batch + (n, n), dtype=torch.float64)
    if B == 0 or n == 0:
        return (s, U, 0) if return_sweeps else (s, U)
    sweeps = _cpu.jacobi_eigh(
        B, n, A.data_ptr(), 0 if U0 is None else U0.data_ptr(), s.data_ptr(), U.data_ptr(), float(tol), int(max_sweeps)
    )
    return (s, U, sweeps) if return_sweeps else (s, U)
