"""Sufficient statistics of a linear head layer, and the layer ↔ weight-matrix maps.

A head is a layer whose output is linear in its parameters (method.md §1): ``nn.Linear``,
``nn.Conv2d`` or ``nn.ConvTranspose2d`` (groups = 1). Its prediction for one batch is

    pred[o, row] = Σ_f W[o, f] · Z[f, row]         W ∈ R^{n_t × n_f},  Z ∈ R^{n_f × rows}

with one row per sample (Linear) or per sample × output pixel (convolutions), n_t the output
width / output channels, and n_f the input width or C_in·kh·kw, plus one constant-1 feature
when the layer has a bias. ``head_statistics`` returns, in float64 whatever the input dtype,

    G = β² Z Zᵀ  [n_f, n_f],   H = β² C Zᵀ  [n_t, n_f],   c = β² ‖C‖²  [],   m = n_t · rows,

C [n_t, rows] being the target laid out like the prediction and m the number of scalar
residuals.

Loss scaling (the objective the slimTik step minimises):
    ``reduction="mean"``: β² = 1/m, so the data term ½β²‖W Z − C‖² equals
        ½ · ((pred − target)**2).mean() = ½ · nn.MSELoss()(pred, target);
    ``reduction="sum"``:  β² = 1, the data term is ½ · ((pred − target)**2).sum().
The step therefore minimises half the layer's MSE loss plus the Tikhonov terms of method.md
§2.3; the factor ½ only rescales λ (the minimiser of ½L + (λ/2)‖W‖² is that of L + λ‖W‖²).
Note that method.md §2 writes β² = 1/n_b for a dense head; β² = 1/m differs from it by the
factor n_t (and by the pixel count for convolutions), which is exactly what makes the data term
the torch ``MSELoss`` of the layer. For a head with n_t = 1 the two agree.

How the statistics are formed (never from an explicit design with structural zeros):
    Linear: Z = features (leading dimensions flattened into rows), bias row of ones; G and H
        are two GEMMs.
    Conv2d, ConvTranspose2d: G from lagged channel correlations of the (padded) input
        (``slimfast.conv_statistics``): two taps that reach the same output pixels read input
        pixels a fixed lag apart, so every C_in × C_in block of G is a rectangle sum of one of a
        few lag fields. A transposed convolution's taps fall into stride-phase classes that share
        no output pixel, so G is block diagonal over the phases (apart from the bias row).
        H is the layer's weight gradient for the "gradient" y (``torch.nn.grad.conv2d_weight``):
        H[o, f] = Σ_rows C[o, row] Z[f, row] is exactly that. A Conv2d with a column stride
        falls back to ``unfold`` (``_unfold`` computes exactly ``F.unfold`` from a strided view;
        ATen's CPU im2col is far slower), which a stride already makes small.
    On the CPU a ConvTranspose2d head's G, H and c come from one compiled call that reads the
    batch in its own dtype, and a Conv2d head's G (no column stride) from the same lag-field
    kernel (``slimfast.compiled_statistics``; the torch formulation above is their float64 twin,
    chosen with ``kernel="torch"``).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_weight

from . import compiled_statistics
from .conv_statistics import conv_axis, conv_transpose_axis, lagged_gram, tap_sums
from .workspace import Workspace

Reduction = Literal["mean", "sum"]
Kernel = Literal["auto", "torch"]
HeadLayer = nn.Linear | nn.Conv2d | nn.ConvTranspose2d

F64 = torch.float64

__all__ = [
    "HeadLayer", "Kernel", "Reduction", "check_head", "check_head_inputs", "check_statistics_finite",
    "head_output_shape", "head_shape", "head_statistics", "head_to_matrix", "matrix_to_params", "params_to_matrix",
    "statistics_and_magnitude", "write_matrix_", "write_params_",
]


# ----------------------------------------------------------------------------- layer checks

def check_head(head: nn.Module) -> None:
    """Raise TypeError/ValueError unless ``head`` is a supported, initialised head layer."""
    if not isinstance(head, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        raise TypeError(f"head must be nn.Linear, nn.Conv2d or nn.ConvTranspose2d, got {type(head).__name__}")
    if isinstance(head.weight, nn.parameter.UninitializedParameter):
        raise ValueError("head has uninitialised (lazy) parameters; run one forward pass first")
    if isinstance(head, (nn.Conv2d, nn.ConvTranspose2d)):
        if head.groups != 1:
            raise ValueError(f"head must have groups=1, got groups={head.groups}")
        if isinstance(head, nn.ConvTranspose2d) and head.padding_mode != "zeros":
            raise ValueError(f"ConvTranspose2d head must use padding_mode='zeros', got {head.padding_mode!r}")
    if not head.weight.is_floating_point():
        raise TypeError(f"head.weight must be floating point, got {head.weight.dtype}")


def head_shape(head: HeadLayer) -> tuple[int, int]:
    """(n_t, n_f): output width / channels, and features per row including the bias feature."""
    bias = 1 if head.bias is not None else 0
    if isinstance(head, nn.Linear):
        return head.out_features, head.in_features + bias
    kh, kw = head.kernel_size
    return head.out_channels, head.in_channels * kh * kw + bias


def _conv_pads(head: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding the Conv2d applies to its input (F.pad order).

    ``padding="same"`` puts the odd pixel of an odd total d·(k − 1) on the right/bottom, as
    torch does; ``"valid"`` is no padding.
    """
    pads: list[int] = []
    for axis in (1, 0):   # F.pad lists the last dimension first
        if head.padding == "valid":
            lo = hi = 0
        elif head.padding == "same":
            total = head.dilation[axis] * (head.kernel_size[axis] - 1)
            lo, hi = total // 2, total - total // 2
        else:
            lo = hi = int(head.padding[axis])
        pads += [lo, hi]
    left, right, top, bottom = pads
    return left, right, top, bottom


def head_output_shape(head: HeadLayer, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of ``head(features)`` for features of ``input_shape`` (already checked)."""
    if isinstance(head, nn.Linear):
        return tuple(input_shape[:-1]) + (head.out_features,)
    lead, (h_in, w_in) = tuple(input_shape[:-3]), input_shape[-2:]
    if isinstance(head, nn.Conv2d):
        left, right, top, bottom = _conv_pads(head)
        sizes = [(n + lo + hi - d * (k - 1) - 1) // s + 1 for n, lo, hi, k, s, d in zip(
            (h_in, w_in), (top, left), (bottom, right), head.kernel_size, head.stride, head.dilation)]
    else:
        sizes = [(n - 1) * s - 2 * p + d * (k - 1) + op + 1 for n, s, p, d, k, op in zip(
            (h_in, w_in), head.stride, head.padding, head.dilation, head.kernel_size, head.output_padding)]
    return lead + (head.out_channels, sizes[0], sizes[1])


def check_head_inputs(head: HeadLayer, features: torch.Tensor, target: torch.Tensor, finite: bool = True) -> None:
    """Validate one batch for ``head``; errors name ``features`` or ``target``.

    Features: Linear [..., n_in] (rows = product of leading dims); Conv2d/ConvTranspose2d
    [n_b, C_in, H, W] or unbatched [C_in, H, W]. Target: exactly the shape of head(features).
    Both real (not bool/complex), on the head's device, non-empty and (``finite``) finite;
    ``finite=False`` leaves that to ``check_statistics_finite`` on the much smaller statistics.
    """
    for name, x in (("features", features), ("target", target)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype == torch.bool or x.dtype.is_complex:
            raise ValueError(f"{name} must be real-valued, got dtype {x.dtype}")
        if x.device != head.weight.device:
            raise ValueError(f"{name} is on {x.device}, but the head is on {head.weight.device}")
    if isinstance(head, nn.Linear):
        if features.ndim < 1 or features.shape[-1] != head.in_features:
            raise ValueError(f"features must have shape [..., n_in={head.in_features}], got {list(features.shape)}")
    else:
        if features.ndim not in (3, 4) or features.shape[-3] != head.in_channels:
            raise ValueError(f"features must have shape [n_b, C_in={head.in_channels}, H, W], "
                             f"got {list(features.shape)}")
    expected = head_output_shape(head, tuple(features.shape))
    if any(s <= 0 for s in expected[-2:]) and not isinstance(head, nn.Linear):
        raise ValueError(f"features of spatial size {list(features.shape[-2:])} are too small for the head")
    if features.numel() == 0:
        raise ValueError(f"features is empty (shape {list(features.shape)})")
    if tuple(target.shape) != expected:
        raise ValueError(f"target must have the head's output shape {list(expected)}, got {list(target.shape)}")
    if finite:
        for name, x in (("features", features), ("target", target)):
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                raise ValueError(f"{name} contains NaN or Inf")


def check_statistics_finite(G: torch.Tensor, c: torch.Tensor) -> None:
    """ValueError naming ``features`` / ``target`` if tr(G) / c is not finite (one sync).

    tr(G) = β² Σ z² over every feature the layer reads and c = β² Σ C² over every target entry,
    so a NaN or Inf that would reach the layer's output or loss shows up here; overflow (|x| ≳
    1e154 in float64) is reported the same way, since the statistics would be unusable.
    """
    ok = torch.isfinite(torch.stack([G.diagonal().sum(), c])).tolist()
    bad = [name for name, good in zip(("features", "target"), ok) if not good]
    if bad:
        raise ValueError(f"{' and '.join(bad)} contain{'s' if len(bad) == 1 else ''} NaN or Inf "
                         "(or values too large for float64 statistics)")


# ----------------------------------------------------------------------------- weights ↔ W

def head_to_matrix(head: HeadLayer) -> torch.Tensor:
    """W [n_t, n_f] float64 (contiguous) from the layer's weight and bias (bias = last column).

    Column order matches the design rows: Linear (in), Conv2d (C_in, kh, kw) as in ``unfold``,
    ConvTranspose2d (C_in, kh, kw) with W[o, (i, t)] = weight[i, o, t].
    """
    return params_to_matrix(head, head.weight.detach(), None if head.bias is None else head.bias.detach())


def params_to_matrix(head: HeadLayer, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """W [..., n_t, n_f] float64 (contiguous) from parameters shaped like the layer's with any
    leading batch dimensions (weight [..., *head.weight.shape], bias [..., n_t]): ``head_to_matrix``
    for B stacked models of one architecture (a sweep)."""
    lead = weight.shape[: weight.ndim - head.weight.ndim]
    if isinstance(head, nn.Linear):
        W = weight
    elif isinstance(head, nn.Conv2d):
        W = weight.reshape(*lead, weight.shape[-4], -1)
    else:
        W = weight.transpose(-4, -3).reshape(*lead, weight.shape[-3], -1)
    cols = [W.to(F64)]
    if bias is not None:
        cols.append(bias.to(F64)[..., None])
    return torch.cat(cols, dim=-1).contiguous()


def _param_views(head: HeadLayer, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Views (where possible) of W [..., n_t, n_f] shaped like the layer's weight and bias, with
    W's leading batch dimensions in front."""
    n_t, n_f = head_shape(head)
    if W.ndim < 2 or tuple(W.shape[-2:]) != (n_t, n_f):
        raise ValueError(f"W must have shape [n_t, n_f] = [{n_t}, {n_f}] (after any batch dimensions), "
                         f"got {list(W.shape)}")
    lead = W.shape[:-2]
    has_bias = head.bias is not None
    Wx = W[..., : n_f - 1] if has_bias else W
    bias = W[..., n_f - 1] if has_bias else None
    if isinstance(head, nn.Linear):
        weight = Wx
    elif isinstance(head, nn.Conv2d):
        weight = Wx.reshape(*lead, *head.weight.shape)
    else:
        c_in, c_out, kh, kw = head.weight.shape
        weight = Wx.reshape(*lead, c_out, c_in, kh, kw).transpose(-4, -3)
    return weight, bias


def matrix_to_params(head: HeadLayer, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) shaped like the layer's parameters from W [..., n_t, n_f] (leading batch
    dimensions kept); new contiguous tensors with the dtype of W (inverse of ``head_to_matrix``)."""
    weight, bias = _param_views(head, W)
    return weight.clone(memory_format=torch.contiguous_format), None if bias is None else bias.clone()


@torch.no_grad()
def write_matrix_(head: HeadLayer, W: torch.Tensor) -> None:
    """Copy W [n_t, n_f] into the layer's weight and bias in place (cast to their dtype)."""
    if W.ndim != 2:
        n_t, n_f = head_shape(head)
        raise ValueError(f"W must have shape [n_t, n_f] = [{n_t}, {n_f}], got {list(W.shape)}")
    write_params_(head, head.weight, head.bias, W)


@torch.no_grad()
def write_params_(head: HeadLayer, weight: torch.Tensor, bias: torch.Tensor | None, W: torch.Tensor) -> None:
    """Copy W [..., n_t, n_f] in place into parameters shaped like the layer's with the same
    leading batch dimensions (weight [..., *head.weight.shape], bias [..., n_t]; cast to their
    dtype): ``write_matrix_`` for B stacked models."""
    w, b = _param_views(head, W)
    if w.shape != weight.shape:
        raise ValueError(f"W {list(W.shape)} does not match the stacked parameters: weight {list(weight.shape)}")
    weight.copy_(w)
    if b is not None:
        bias.copy_(b)


# ----------------------------------------------------------------------------- statistics

def _beta2(reduction: Reduction, m: int) -> float:
    if reduction == "mean":
        return 1.0 / m
    if reduction == "sum":
        return 1.0
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def _assemble(
    G: torch.Tensor, H: torch.Tensor, z_sum: torch.Tensor | None, c_sum: torch.Tensor | None, rows: int,
    C: torch.Tensor, beta2: float, workspace: Workspace | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Append the bias feature (z_sum = Σ_rows Z, c_sum = Σ_rows C) and scale by β² (with a
    ``workspace``, G [n_f, n_f] is returned in its buffers)."""
    n_f = G.shape[0] + (z_sum is not None)
    if z_sum is not None:
        n = G.shape[0]
        Gb = G.new_empty(n + 1, n + 1) if workspace is None else workspace.empty("G_bias", (n_f, n_f), G.dtype,
                                                                                  G.device)
        Gb[:n, :n] = G
        Gb[:n, n] = z_sum
        Gb[n, :n] = z_sum
        Gb[n, n] = rows
        G = Gb
        H = torch.cat([H, c_sum[:, None]], dim=1)
    Cf = C.reshape(-1)
    c = torch.dot(Cf, Cf).mul_(beta2)
    # GEMM blocking can make G asymmetric in the last bit; the solver's eigh reads one triangle.
    out = None if workspace is None else workspace.empty("G", (n_f, n_f), G.dtype, G.device)
    G = torch.add(G, G.T, out=out).mul_(0.5 * beta2)
    return G, H.mul(beta2).contiguous(), c


def _linear_stats(head: nn.Linear, x: torch.Tensor, y: torch.Tensor, beta2: float):
    Z = x.reshape(-1, head.in_features)          # [rows, n_in]
    C = y.reshape(-1, head.out_features)         # [rows, n_t]
    if head.bias is not None:
        # A dense head's features are small next to its GEMMs: appending the ones column is
        # cheaper than assembling the bias row from separate reductions.
        Z = torch.cat([Z, Z.new_ones(Z.shape[0], 1)], dim=1)
    return _assemble(Z.T @ Z, C.T @ Z, None, None, Z.shape[0], C, beta2)


def _unfold(x: torch.Tensor, kernel: tuple[int, int], dilation: tuple[int, int] = (1, 1),
            stride: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """``F.unfold(x, kernel, dilation, padding=0, stride)`` for x [n, C, H, W] → [n, C·kh·kw, L].

    Same values and layout (channel-major (c, kh, kw), pixels row-major), built as one strided
    view and one copy: ATen's CPU im2col is 10–100× slower for float64 at these sizes.
    """
    n, c, h, w = x.shape
    (kh, kw), (dh, dw), (sh, sw) = kernel, dilation, stride
    oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    s0, s1, s2, s3 = x.stride()
    view = x.as_strided((n, c, kh, kw, oh, ow), (s0, s1, dh * s2, dw * s3, sh * s2, sw * s3), x.storage_offset())
    return view.reshape(n, c * kh * kw, oh * ow)


def _sum_outer(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Σ_n A_n B_nᵀ for A [n, p, L], B [n, q, L] → [p, q] (float64 GEMMs).

    ``einsum("npl,nql->pq")`` is several times slower on CPU; a batched GEMM plus a sum over n
    is fastest while its [n, p, q] intermediate is no larger than the inputs (p, q ≤ L), else
    one flattening copy and a single GEMM keeps memory at the size of the inputs.
    """
    n, p, L = A.shape
    q = B.shape[1]
    if p * q <= (p + q) * L:
        return (A @ B.transpose(1, 2)).sum(0)
    return A.transpose(0, 1).reshape(p, n * L) @ B.transpose(0, 1).reshape(q, n * L).T


def _pad_conv_input(head: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    left, right, top, bottom = _conv_pads(head)
    if left or right or top or bottom:
        mode = "constant" if head.padding_mode == "zeros" else head.padding_mode
        x = F.pad(x, (left, right, top, bottom), mode=mode)
    return x


def _conv_stats(head: nn.Conv2d, x: torch.Tensor, y: torch.Tensor, beta2: float, workspace: Workspace | None = None,
                compiled: bool = False):
    x = _pad_conv_input(head, x)
    (kh, kw), (sh, sw), (dh, dw) = head.kernel_size, head.stride, head.dilation
    Y = y.reshape(y.shape[0], y.shape[1], -1)                                                 # [n_b, n_t, L]
    bias = head.bias is not None
    rows = y.shape[0] * Y.shape[2]
    if sw == 1:
        # Lag fields (conv_statistics): the column ranges of the taps differ only at the edges.
        ax_h = conv_axis(x.shape[2], y.shape[2], kh, sh, dh)
        ax_w = conv_axis(x.shape[3], y.shape[3], kw, sw, dw)
        H = conv2d_weight(x, (y.shape[1], x.shape[1], kh, kw), y, head.stride, 0, head.dilation).reshape(y.shape[1], -1)
        if compiled and compiled_statistics.takes_gram(x, ax_h, ax_w):   # G complete: bias and β² included
            G, _ = compiled_statistics.lagged_head_gram(x, ax_h, ax_w, bias, rows, beta2, workspace)
            if bias:
                H = torch.cat([H, Y.sum((0, 2))[:, None]], dim=1)
            Yf = Y.reshape(-1)
            return G, H.mul(beta2).contiguous(), torch.dot(Yf, Yf).mul_(beta2)
        G = lagged_gram(x, ax_h, ax_w, workspace)
        z_sum = tap_sums(x, ax_h, ax_w) if bias else None
    else:
        # A column stride makes every tap's column set sparse; the strided unfold is as cheap.
        X = _unfold(x, head.kernel_size, head.dilation, head.stride)                          # [n_b, K, L]
        G, H = _sum_outer(X, X), _sum_outer(Y, X)
        z_sum = X.sum((0, 2)) if bias else None
    return _assemble(G, H, z_sum, Y.sum((0, 2)) if bias else None, rows, Y, beta2, workspace)


def _conv_transpose_stats(head: nn.ConvTranspose2d, x: torch.Tensor, y: torch.Tensor, beta2: float,
                          workspace: Workspace | None = None):
    n_b, c_in, h_in, w_in = x.shape
    _, n_t, h_out, w_out = y.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = head.kernel_size, head.stride, head.padding, head.dilation
    ax_h = conv_transpose_axis(h_in, h_out, kh, sh, ph, dh)
    ax_w = conv_transpose_axis(w_in, w_out, kw, sw, pw, dw)
    G = lagged_gram(x, ax_h, ax_w, workspace)
    # H[o, (i, t)] = Σ x[n, i, q] y[n, o, s·q − p + d·t] is the weight gradient of a convolution of
    # y whose output grid is x's; output_padding ≥ stride gives that grid extra (zero) rows.
    extra_h, extra_w = head.output_padding[0] // sh, head.output_padding[1] // sw
    x_grid = F.pad(x, (0, extra_w, 0, extra_h)) if extra_h or extra_w else x
    Hw = conv2d_weight(y, (c_in, n_t, kh, kw), x_grid, head.stride, head.padding, head.dilation)   # [C_in, n_t, kh, kw]
    H = Hw.transpose(0, 1).reshape(n_t, -1)
    bias = head.bias is not None
    return _assemble(G, H, tap_sums(x, ax_h, ax_w) if bias else None, y.sum((0, 2, 3)) if bias else None,
                     n_b * h_out * w_out, y, beta2, workspace)


def _as_f64(t: torch.Tensor, workspace: Workspace | None, name: str) -> torch.Tensor:
    """t detached in float64: t itself when it is float64, else a copy (into the workspace's buffer)."""
    t = t.detach()
    if t.dtype == F64 or workspace is None:
        return t.to(F64)
    return workspace.empty(name, tuple(t.shape), F64, t.device).copy_(t)


def head_statistics(
    head: HeadLayer, features: torch.Tensor, target: torch.Tensor, reduction: Reduction = "mean",
    *, check: bool = True, workspace: Workspace | None = None, kernel: Kernel = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Sufficient statistics (G, H, c, m) of one batch for ``head`` (see the module docstring).

    Args:
        head: nn.Linear, nn.Conv2d or nn.ConvTranspose2d (groups = 1).
        features: the head's input (Linear [..., n_in]; conv [n_b, C_in, H, W] or [C_in, H, W]).
        target: exactly the shape of ``head(features)``.
        reduction: "mean" (β² = 1/m) or "sum" (β² = 1).
        check: validate shapes, devices and finiteness first (ValueError naming the argument).
        workspace: a conv head's large temporaries and G live in its buffers (``slimfast.workspace``;
            G is then overwritten by the next call with the same workspace).
        kernel: "auto" takes the compiled statistics where they exist (on the CPU: a
            ConvTranspose2d head's G, H and c; a Conv2d head's G without column stride), "torch"
            always the torch formulation (their float64 twin).

    Returns:
        G [n_f, n_f], H [n_t, n_f], c [] (all float64, on the features' device, computed with
        autocast disabled) and m = target.numel(), the number of scalar residuals.
    """
    G, H, c, m, _ = statistics_and_magnitude(head, features, target, reduction, check=check, workspace=workspace,
                                             kernel=kernel)
    return G, H, c, m


def statistics_and_magnitude(
    head: HeadLayer, features: torch.Tensor, target: torch.Tensor, reduction: Reduction = "mean",
    *, check: bool = True, workspace: Workspace | None = None, kernel: Kernel = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, float | None]:
    """``head_statistics`` and, when the compiled statistics formed them, the largest magnitude
    of G, H and c (NaN when any is not finite); None when they came from torch."""
    check_head(head)
    if kernel not in ("auto", "torch"):
        raise ValueError(f"kernel must be 'auto' or 'torch', got {kernel!r}")
    if check:
        check_head_inputs(head, features, target)
    m = target.numel()
    beta2 = _beta2(reduction, m)
    if kernel == "auto" and isinstance(head, nn.ConvTranspose2d) and compiled_statistics.takes(head, features, target):
        G, H, c, largest = compiled_statistics.conv_transpose_statistics(head, features, target, beta2, workspace)
        return G, H, c, m, largest
    dev_type = features.device.type
    # Under autocast the GEMMs below would run in bf16/fp16; entering the context costs more
    # than a small head's statistics, so only do it when autocast is on.
    no_autocast = torch.autocast(dev_type, enabled=False) if torch.is_autocast_enabled(dev_type) else nullcontext()
    with no_autocast:
        x, y = _as_f64(features, workspace, "x"), _as_f64(target, workspace, "y")
        if isinstance(head, nn.Linear):
            G, H, c = _linear_stats(head, x, y, beta2)
        else:
            if x.ndim == 3:   # unbatched conv input
                x, y = x[None], y[None]
            if isinstance(head, nn.Conv2d):
                G, H, c = _conv_stats(head, x, y, beta2, workspace, compiled=kernel == "auto")
            else:
                G, H, c = _conv_transpose_stats(head, x, y, beta2, workspace)
    return G, H, c, m, None
