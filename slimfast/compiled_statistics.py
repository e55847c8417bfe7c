"""A ConvTranspose2d head's statistics by the compiled lag fields (csrc/cpu/conv_statistics_cpu.h).

Same values as the torch formulation in ``heads._conv_transpose_stats`` (``lagged_gram``,
``tap_sums`` and the convolution-gradient cross term of slimfast/conv_statistics.py, its float64
twin), in one call that reads the features and targets in their own dtype (float32 or float64):

    G [n_f, n_f] = β² Σ_rows z zᵀ,   H [n_t, n_f] = β² Σ_rows y zᵀ,   c = β² Σ y²

with the bias feature last. It also returns the largest magnitude of G, H and c (NaN when any is
not finite), which stands in for a separate finiteness pass over the batch. CPU only; anything
it does not take (another device or dtype, no compiled module) is left to the torch formulation.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from torch import nn

from .conv_statistics import TapAxis, conv_transpose_axis
from .workspace import Workspace

__all__ = ["conv_transpose_statistics", "lagged_head_gram", "takes", "takes_gram"]

F64 = torch.float64
_DTYPES = {torch.float64: 0, torch.float32: 1}


@lru_cache(maxsize=1)
def _module() -> Any:
    """``slimfast._cpu`` when it was built with the lagged statistics, else None."""
    from .backends import load_backend

    cpp = load_backend("cpp")
    module = getattr(cpp, "_cpu", None)
    return module if hasattr(module, "conv_head_statistics") else None


def takes(head: nn.ConvTranspose2d, features: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether ``conv_transpose_statistics`` computes these: CPU, float32/float64, batched 4-d, the
    head's channels and one target per sample (the compiled call checks the spatial sizes; any
    other mismatch is left to the torch formulation, which names it)."""
    return (features.device.type == "cpu" and target.device.type == "cpu" and features.ndim == 4
            and target.ndim == 4 and features.dtype in _DTYPES and target.dtype in _DTYPES
            and features.shape[0] == target.shape[0] and features.shape[1] == head.in_channels
            and target.shape[1] == head.out_channels and head.groups == 1 and _module() is not None
            and _fits_layout(head, tuple(features.shape), tuple(target.shape)))


def _fits_layout(head: nn.ConvTranspose2d, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> bool:
    axis_h, axis_w = _layout(in_shape, out_shape, head.kernel_size, head.stride, head.padding, head.dilation)
    return _fits_int32(in_shape[0], in_shape[1], in_shape[3], axis_w[6], len(axis_h[3]) * len(axis_w[3]),
                       out_shape[1])


def _fits_int32(n_b: int, C: int, W: int, column_bases: Any, taps: int, n_t: int = 1) -> bool:
    """The kernel's product sizes stay ints (the bound its binding enforces): n_b·(W + 2M) + 2M
    columns times C, and times taps·n_t, below 2³¹, M ≤ the spread of the column taps' bases."""
    margin = max(column_bases) - min(column_bases)
    columns = n_b * (W + 2 * margin) + 2 * margin
    return columns * C < 2**31 and taps * n_t * columns < 2**31


def _axis_args(ax: TapAxis, out_stride: int) -> tuple[Any, ...]:
    """An axis as the compiled call takes it: (n, step, out_stride, phase, start, count, base)."""
    return (ax.n, ax.step, out_stride, list(ax.phase), list(ax.start), list(ax.count), list(ax.base))


@lru_cache(maxsize=256)
def _layout(in_shape: tuple[int, ...], out_shape: tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int],
            padding: tuple[int, int], dilation: tuple[int, int]) -> tuple[Any, Any]:
    """A ConvTranspose2d head's two axes as the compiled call takes them."""
    return tuple(_axis_args(conv_transpose_axis(in_shape[2 + dim], out_shape[2 + dim], kernel[dim], stride[dim],
                                                padding[dim], dilation[dim]), stride[dim]) for dim in range(2))


def conv_transpose_statistics(
    head: nn.ConvTranspose2d, features: torch.Tensor, target: torch.Tensor, beta2: float,
    workspace: Workspace | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(G [n_f, n_f], H [n_t, n_f], c [], largest) for features [n_b, C_in, H, W] and target
    [n_b, n_t, H_out, W_out] (``takes`` must hold; shapes as checked by ``check_head_inputs``).
    With a ``workspace`` G, H and c live in its buffers (overwritten by the next call)."""
    # The kernel reads memory as it lies: a lazily negated view must be materialised first.
    x, y = features.detach().resolve_neg().contiguous(), target.detach().resolve_neg().contiguous()
    n_b, c_in, h_in, w_in = x.shape
    _, n_t, h_out, w_out = y.shape
    axis_h, axis_w = _layout(x.shape, y.shape, head.kernel_size, head.stride, head.padding, head.dilation)
    n_f = c_in * head.kernel_size[0] * head.kernel_size[1] + (head.bias is not None)
    if workspace is None:
        G, H, c = torch.empty(n_f, n_f, dtype=F64), torch.empty(n_t, n_f, dtype=F64), torch.empty((), dtype=F64)
    else:
        G = workspace.empty("G", (n_f, n_f), F64, x.device)
        H = workspace.empty("H", (n_t, n_f), F64, x.device)
        c = workspace.empty("c", (), F64, x.device)
    largest = _module().conv_head_statistics(
        x.data_ptr(), _DTYPES[x.dtype], n_b, c_in, h_in, w_in, y.data_ptr(), _DTYPES[y.dtype], n_t, h_out, w_out,
        axis_h, axis_w, head.bias is not None, float(n_b * h_out * w_out), beta2, G.data_ptr(), H.data_ptr(),
        c.data_ptr())
    return G, H, c, largest


def takes_gram(x: torch.Tensor, ax_h: TapAxis, ax_w: TapAxis) -> bool:
    """Whether ``lagged_head_gram`` forms G for x [n_b, C, H, W] (CPU float64/float32, column step 1,
    sizes within the kernel's ints)."""
    return (x.device.type == "cpu" and x.ndim == 4 and x.dtype in _DTYPES and ax_w.step == 1
            and _module() is not None
            and _fits_int32(x.shape[0], x.shape[1], x.shape[3], ax_w.base, len(ax_h.phase) * len(ax_w.phase)))


def lagged_head_gram(x: torch.Tensor, ax_h: TapAxis, ax_w: TapAxis, bias: bool, rows: int, beta2: float,
                     workspace: Workspace | None = None) -> tuple[torch.Tensor, float]:
    """G [n_f, n_f] = β² Σ_rows z zᵀ of a head with taps ax_h × ax_w on x [n_b, C, H, W] (a Conv2d's
    padded input; ``takes_gram`` must hold), bias feature last (its own entry β²·rows), and the
    largest |G| (NaN when not finite). Twin: ``lagged_gram`` with ``tap_sums``."""
    x = x.detach().resolve_neg().contiguous()
    n_b, c_in, h_in, w_in = x.shape
    n_f = c_in * len(ax_h.phase) * len(ax_w.phase) + bias
    G = torch.empty(n_f, n_f, dtype=F64) if workspace is None else workspace.empty("G", (n_f, n_f), F64, x.device)
    largest = _module().conv_head_statistics(
        x.data_ptr(), _DTYPES[x.dtype], n_b, c_in, h_in, w_in, 0, 0, 0, 0, 0, _axis_args(ax_h, 0), _axis_args(ax_w, 0), bias,
        float(rows), beta2, G.data_ptr(), 0, 0)
    return G, largest
