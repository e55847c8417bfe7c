"""The stride-phase blocks of a transposed-convolution head (method.md §6 "Phase blocks").

``ConvTranspose2d`` puts input pixel i, tap t at output o = s·i − p + d·t along each axis, so
tap t only reaches the outputs o ≡ d·t − p (mod s): its phase. Taps of different phase pairs
(phase_h, phase_w) share no output pixel, hence no row of the design matrix, and the head's
Gram matrices are block diagonal over the phase classes (all input channels of a class's taps
form one block), bordered by the bias feature, which every output reads. ``phase_blocks``
gives that structure as a ``BlockLayout`` whose ``order`` lists the head's features (layout
of ``heads.head_to_matrix``: channel-major (c, kh, kw), bias last) block by block.
"""

from __future__ import annotations

from functools import lru_cache

from torch import nn

from .backends.boundary import BlockLayout

__all__ = ["phase_blocks"]


def _tap_phases(k: int, s: int, p: int, d: int) -> list[int]:
    """Phase (d·t − p) mod s of every tap t < k along one axis."""
    return [(d * t - p) % s for t in range(k)]


@lru_cache(maxsize=64)
def _layout(c_in: int, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
            dilation: tuple[int, int], bias: bool) -> BlockLayout | None:
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    rows, cols = _tap_phases(kh, sh, ph, dh), _tap_phases(kw, sw, pw, dw)
    classes = sorted({(a, b) for a in rows for b in cols})
    if len(classes) < 2:
        return None
    order, sizes = [], []
    for a, b in classes:
        taps = [i * kw + j for i in range(kh) for j in range(kw) if rows[i] == a and cols[j] == b]
        order += [c * kh * kw + t for c in range(c_in) for t in taps]
        sizes.append(c_in * len(taps))
    if bias:
        order.append(c_in * kh * kw)
    return BlockLayout(tuple(sizes), bias, tuple(order))


def phase_blocks(head: nn.Module) -> BlockLayout | None:
    """The phase-block structure of a ``ConvTranspose2d`` head with at least two phase classes
    (a stride above 1 along some axis), or None (any other head: its Gram matrix is dense)."""
    if not isinstance(head, nn.ConvTranspose2d) or head.groups != 1:
        return None
    return _layout(head.in_channels, tuple(head.kernel_size), tuple(head.stride), tuple(head.padding),
                   tuple(head.dilation), head.bias is not None)
