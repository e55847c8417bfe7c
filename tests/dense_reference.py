"""Explicit dense design matrices of head layers: the independent reference of the tests.

Built from the layer's own functional op with one-hot weights (one output channel per feature),
so they share nothing with the lag-field / weight-gradient formulas of ``slimfast.heads``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slimfast.heads import HeadLayer, Reduction, head_shape

F64 = torch.float64


def _conv2d_one_hot(head: nn.Conv2d, x: torch.Tensor, eye: torch.Tensor) -> torch.Tensor:
    """head's convolution of x with the weights ``eye``, padding mode included (public ops only)."""
    if head.padding_mode == "zeros":
        return F.conv2d(x, eye, None, head.stride, head.padding, head.dilation)
    pads: list[int] = []
    for axis in (1, 0):   # F.pad lists the last dimension first
        if head.padding == "same":
            total = head.dilation[axis] * (head.kernel_size[axis] - 1)
            pads += [total // 2, total - total // 2]
        elif head.padding == "valid":
            pads += [0, 0]
        else:
            pads += [head.padding[axis]] * 2
    return F.conv2d(F.pad(x, pads, mode=head.padding_mode), eye, None, head.stride, 0, head.dilation)


def dense_design(head: HeadLayer, features: torch.Tensor) -> torch.Tensor:
    """Explicit design matrix Z [n_f, rows] (float64), structural zeros included.

    Rows are ordered (sample, output pixel) like ``target.permute(1, 0, 2, 3).reshape(n_t, -1)``.
    """
    x = features.detach().to(F64)
    n_t, n_f = head_shape(head)
    bias = head.bias is not None
    if isinstance(head, nn.Linear):
        Z = x.reshape(-1, head.in_features).T
    else:
        if x.ndim == 3:
            x = x[None]
        K = n_f - int(bias)
        c_in, (kh, kw) = head.in_channels, head.kernel_size
        eye = torch.eye(K, dtype=F64, device=x.device).reshape(K, c_in, kh, kw)
        if isinstance(head, nn.Conv2d):
            out = _conv2d_one_hot(head, x, eye)
        else:
            out = F.conv_transpose2d(x, eye.transpose(0, 1), None, head.stride, head.padding,
                                     head.output_padding, 1, head.dilation)
        Z = out.transpose(0, 1).reshape(K, -1)
    if bias:
        Z = torch.cat([Z, Z.new_ones(1, Z.shape[1])])
    return Z


def dense_statistics(
    head: HeadLayer, features: torch.Tensor, target: torch.Tensor, reduction: Reduction = "mean"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(G, H, c, m) = (β²ZZᵀ, β²CZᵀ, β²‖C‖², m) from ``dense_design``; β² = 1/m ("mean") or 1."""
    Z = dense_design(head, features)
    y = target.detach().to(F64)
    n_t = head_shape(head)[0]
    if isinstance(head, nn.Linear):
        C = y.reshape(-1, n_t).T
    else:
        C = (y[None] if y.ndim == 3 else y).transpose(0, 1).reshape(n_t, -1)
    m = C.numel()
    beta2 = 1.0 / m if reduction == "mean" else 1.0
    return beta2 * Z @ Z.T, beta2 * C @ Z.T, beta2 * (C * C).sum(), m
