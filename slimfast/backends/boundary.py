"""The one boundary between the solver and its backends.

Every backend's ``slimtik_step(G_mem, G, H, c, m, W, Lambda_prev, memory_empty, config, **options)``
is made by ``step_entry`` from a kernel that takes one ``StepInputs``: the signature is written
here only. The pointer backends (``cpp``, ``cuda`` and the tests' host emulation of the CUDA
block code) check their tensors once, with ``as_buffers``, and hand them to the compiled module
as one checked ``StepBuffers`` object (``step_buffers``), whose construction checks sizes and
pointers once for every launcher (csrc/bindings_common.h).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, TypeVar

import torch

from ..config import SolverConfig

__all__ = [
    "BlockLayout", "StepInputs", "as_buffer", "as_buffers", "eigenvector_buffer", "scratch", "square_batch", "step_buffers",
    "step_entry",
]

F64 = torch.float64
R = TypeVar("R")


@dataclass(frozen=True)
class BlockLayout:
    """Features in contiguous diagonal blocks, then optionally one border feature (method.md §6
    "Phase blocks"): G_mem and G are zero between different blocks, and only the border (a
    head's bias, the last feature) couples to all of them.

    Attributes:
        sizes: n_p of each block, in feature order (each ≥ 1).
        border: whether one border feature follows the blocks.
        order: for the solver (``slimtik_step(blocks=…)``): the features' indices in block order
            (a permutation of range(n_f); position i of the blocked problem is feature order[i]),
            or None when they are already in order. Backends only see contiguous layouts.
    """

    sizes: tuple[int, ...]
    border: bool
    order: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not self.sizes or any(int(n) < 1 for n in self.sizes):
            raise ValueError(f"blocks must have sizes >= 1, got {self.sizes}")
        if self.order is not None and sorted(self.order) != list(range(self.n_features)):
            raise ValueError(f"blocks.order must be a permutation of range({self.n_features})")

    def contiguous(self) -> "BlockLayout":
        """The same blocks with the features already in order (what a backend receives)."""
        return self if self.order is None else BlockLayout(self.sizes, self.border)

    @property
    def n_core(self) -> int:
        """Σ_p n_p, the features in blocks."""
        return sum(self.sizes)

    @property
    def n_features(self) -> int:
        """n_f = Σ_p n_p (+1 with a border)."""
        return self.n_core + int(self.border)

    def ranges(self) -> list[tuple[int, int]]:
        """[(first, end)] feature range of each block."""
        out, lo = [], 0
        for n in self.sizes:
            out.append((lo, lo + n))
            lo += n
        return out

    def offsets(self) -> tuple[int, ...]:
        """(0, n_1, n_1 + n_2, …, n_core): P + 1 block boundaries."""
        return (0,) + tuple(hi for _, hi in self.ranges())


@dataclass(frozen=True)
class StepInputs:
    """One slimTik step's arrays for B problems (method.md §2.3; twin ``_torch_impl._slimtik_step``).

    Attributes:
        G_mem: [B, n_f, n_f] memory Gram matrix (current batch included).
        G: [B, n_f, n_f] current batch Gram β² Z_k Z_kᵀ.
        H: [B, n_t, n_f] β² C_k Z_kᵀ.
        c, m, Lambda_prev: [B] β²‖C_k‖², scalar residual counts m_k, Λ_{k−1}.
        W: [B, n_t, n_f] current weights W_{k−1}.
        memory_empty: True when G_mem is G alone (then Uᵀ G U = diag(s)).
        config: λ mode and bounds.
        blocks: the Gram matrices' block structure, or None (dense): with it, backends run the
            block-structured step (twin ``_torch_block._slimtik_block_step``).
    """

    G_mem: torch.Tensor
    G: torch.Tensor
    H: torch.Tensor
    c: torch.Tensor
    m: torch.Tensor
    W: torch.Tensor
    Lambda_prev: torch.Tensor
    memory_empty: bool
    config: SolverConfig
    blocks: BlockLayout | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(B, n_t, n_f), read from W."""
        B, n_t, n_f = self.W.shape
        return B, n_t, n_f


def step_entry(kernel: Callable[..., R]) -> Callable[..., R]:
    """``kernel(inputs: StepInputs, **options)`` as a backend's ``slimtik_step``.

    The result takes ``(G_mem, G, H, c, m, W, Lambda_prev, memory_empty, config, **options)``
    (positionally or by name, as the solver and the tests call every backend) and returns the
    kernel's (W_new [B, n_t, n_f], info [B, N_INFO]).
    """

    def slimtik_step(G_mem: torch.Tensor, G: torch.Tensor, H: torch.Tensor, c: torch.Tensor, m: torch.Tensor,
                     W: torch.Tensor, Lambda_prev: torch.Tensor, memory_empty: bool, config: SolverConfig,
                     blocks: BlockLayout | None = None, **options: Any) -> R:
        return kernel(StepInputs(G_mem, G, H, c, m, W, Lambda_prev, bool(memory_empty), config, blocks), **options)

    functools.update_wrapper(slimtik_step, kernel, assigned=("__module__", "__doc__"), updated=())
    return slimtik_step


def _where(device: torch.device) -> str:
    return "CPU" if device.type == "cpu" else "CUDA"


def as_buffer(name: str, x: Any, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """x as a contiguous float64 tensor of ``shape`` on ``device``; TypeError/ValueError naming
    ``name`` otherwise (what makes its data pointer safe to hand to a compiled kernel)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    # The common case in four cheap reads (this runs 7 times per step; the full diagnosis below
    # costs ~1 µs more per tensor, which is a tenth of a small step's kernel).
    if x.dtype is F64 and x.shape == shape and x.device == device and x.is_contiguous():
        return x
    where = x.device
    if x.dtype != F64 or where.type != device.type:
        raise ValueError(f"{name} must be a {_where(device)} float64 tensor, got {x.dtype} on {where}")
    if where.index != device.index:
        raise ValueError(f"{name} is on {where}, expected {device} (all tensors on one device)")
    if x.shape != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(x.shape)}")
    return x.contiguous()


def _device_of(W: Any, device_type: str) -> torch.device:
    if not isinstance(W, torch.Tensor) or W.dim() != 3:
        raise ValueError(f"W must be a tensor of shape [B, n_t, n_f], got {getattr(W, 'shape', type(W))}")
    if W.device.type != device_type:
        raise ValueError(f"W must be a {_where(torch.device(device_type))} float64 tensor, got {W.dtype} on "
                         f"{W.device}")
    if device_type == "cuda" and W.device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return W.device


def as_buffers(inputs: StepInputs, device_type: str) -> StepInputs:
    """``inputs`` with every array checked by ``as_buffer`` on W's device (of ``device_type``)."""
    device = _device_of(inputs.W, device_type)
    B, n_t, n_f = inputs.shape
    mat, rows, vec = (B, n_f, n_f), (B, n_t, n_f), (B,)
    p = inputs
    return StepInputs(
        as_buffer("G_mem", p.G_mem, mat, device), as_buffer("G", p.G, mat, device), as_buffer("H", p.H, rows, device),
        as_buffer("c", p.c, vec, device), as_buffer("m", p.m, vec, device), as_buffer("W", p.W, rows, device),
        as_buffer("Lambda_prev", p.Lambda_prev, vec, device), p.memory_empty, p.config, p.blocks,
    )  # fmt: skip


def _ptr(x: torch.Tensor | None) -> int:
    return 0 if x is None else x.data_ptr()


def step_buffers(module: ModuleType, inputs: StepInputs, W_new: torch.Tensor, info: torch.Tensor, *,
                 workspace: torch.Tensor | None = None, U0: torch.Tensor | None = None,
                 U_out: torch.Tensor | None = None, s_in: torch.Tensor | None = None,
                 U_in: torch.Tensor | None = None) -> Any:
    """``module.StepBuffers`` of checked ``inputs`` (``as_buffers``), outputs W_new [B, n_t, n_f]
    and info [B, N_INFO], and the optional block-code buffers (all [B, n_f, n_f] but s_in [B, n_f]
    and the workspace), which the caller has checked."""
    B, n_t, n_f = inputs.shape
    p = inputs
    return module.StepBuffers(
        B, n_f, n_t, p.memory_empty, p.G_mem.data_ptr(), p.G.data_ptr(), p.H.data_ptr(), p.c.data_ptr(),
        p.m.data_ptr(), p.W.data_ptr(), p.Lambda_prev.data_ptr(), W_new.data_ptr(), info.data_ptr(),
        _ptr(workspace), _ptr(U0), _ptr(U_out), _ptr(s_in), _ptr(U_in),
    )  # fmt: skip


def square_batch(A: Any, U0: torch.Tensor | None, device: torch.device) -> tuple:
    """A [..., n, n] (and a warm start U0 of the same shape) as checked buffers on ``device`` for
    a batched eigensolver: returns (A, U0, n, batch shape, B = prod(batch))."""
    if not isinstance(A, torch.Tensor) or A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must be a tensor of shape [..., n, n], got {list(getattr(A, 'shape', ())) or type(A)}")
    n, batch = A.shape[-1], tuple(A.shape[:-2])
    A = as_buffer("A", A, batch + (n, n), device)
    U0 = None if U0 is None else as_buffer("U0", U0, batch + (n, n), device)
    return A, U0, n, batch, math.prod(batch)


def scratch(workspace: torch.Tensor | None, size: int, device: torch.device, fill: float | None = None) -> torch.Tensor:
    """The block code's workspace: ``workspace`` if it is a contiguous float64 tensor of at least
    ``size`` elements on ``device`` (ValueError otherwise), else a new one (filled with ``fill``
    when given, so that a read of an unwritten element shows up)."""
    if workspace is None:
        n = max(size, 1)
        return torch.empty(n, dtype=F64, device=device) if fill is None else torch.full((n,), fill, dtype=F64,
                                                                                         device=device)
    if workspace.dtype != F64 or workspace.device != device or not workspace.is_contiguous():
        raise ValueError(f"workspace must be a contiguous float64 tensor on {device}")
    if workspace.numel() < size:
        raise ValueError(f"workspace must hold at least {size} elements, got {workspace.numel()}")
    return workspace


def eigenvector_buffer(name: str, x: torch.Tensor | None, inputs: StepInputs) -> torch.Tensor | None:
    """An optional [B, n_f, n_f] warm start (``U0``, copied to contiguous) or output (``U_out``,
    written in place, so it must already be contiguous) on the inputs' device."""
    if x is None:
        return None
    B, _, n_f = inputs.shape
    checked = as_buffer(name, x, (B, n_f, n_f), inputs.W.device)
    if name == "U_out" and not x.is_contiguous():
        raise ValueError("U_out must be contiguous")
    return checked
