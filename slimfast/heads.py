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

How the design Z is formed (never as an explicit matrix with structural zeros):
    Linear: Z = features (leading dimensions flattened into rows), bias row of ones.
    Conv2d: Z = ``unfold`` of the (padded) input; rows = sample × output pixel. (``_unfold``
        computes exactly ``F.unfold`` from a strided view; ATen's CPU im2col is far slower.)
    ConvTranspose2d: output pixel p (per spatial dimension) receives input pixel q through
        tap t iff p + padding = q·stride + t·dilation. Split the outputs into the ``stride``
        phase classes r = (p + padding) mod stride; class r is reached only by the taps with
        t·dilation ≡ r (mod stride), and with u = (p + padding − r)/stride the input index is
        q = u − j_t, j_t = (t·dilation − r)/stride. Consecutive taps of a class differ by
        stride/g in t and dilation/g in j_t (g = gcd(stride, dilation)), so each class is an
        ordinary stride-1 correlation of a zero-padded window of the input with a sub-kernel
        of dilation dilation/g: one ``unfold`` per 2-D class gives exactly the non-zero part
        of the design rows of that class. The tap sets of different classes are disjoint, so
        G is block-diagonal over tap phases (apart from the bias row) and each block is the
        Gram matrix of one class's unfold. Work and memory are those of the non-zero entries,
        ≈ 1/stride² of the dense design.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Reduction = Literal["mean", "sum"]
HeadLayer = nn.Linear | nn.Conv2d | nn.ConvTranspose2d

F64 = torch.float64

__all__ = [
    "HeadLayer", "Reduction", "check_head", "check_head_inputs", "check_statistics_finite", "head_output_shape",
    "head_shape",
    "head_statistics", "head_to_matrix", "matrix_to_params", "write_matrix_",
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
    """(left, right, top, bottom) zero/reflect/... padding the Conv2d applies to its input."""
    # The layer already resolves int, tuple and "same"/"valid" padding into this F.pad tuple.
    left, right, top, bottom = (int(v) for v in head._reversed_padding_repeated_twice)
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
    w = head.weight.detach()
    if isinstance(head, nn.Linear):
        W = w
    elif isinstance(head, nn.Conv2d):
        W = w.reshape(w.shape[0], -1)
    else:
        W = w.transpose(0, 1).reshape(w.shape[1], -1)
    cols = [W.to(F64)]
    if head.bias is not None:
        cols.append(head.bias.detach().to(F64)[:, None])
    return torch.cat(cols, dim=1).contiguous()


def _param_views(head: HeadLayer, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Views (where possible) of W [n_t, n_f] shaped like the layer's weight and bias."""
    n_t, n_f = head_shape(head)
    if tuple(W.shape) != (n_t, n_f):
        raise ValueError(f"W must have shape [n_t, n_f] = [{n_t}, {n_f}], got {list(W.shape)}")
    has_bias = head.bias is not None
    Wx = W[:, : n_f - 1] if has_bias else W
    bias = W[:, n_f - 1] if has_bias else None
    if isinstance(head, nn.Linear):
        weight = Wx
    elif isinstance(head, nn.Conv2d):
        weight = Wx.reshape(head.weight.shape)
    else:
        c_in, c_out, kh, kw = head.weight.shape
        weight = Wx.reshape(c_out, c_in, kh, kw).transpose(0, 1)
    return weight, bias


def matrix_to_params(head: HeadLayer, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) shaped like the layer's parameters from W [n_t, n_f]; new contiguous
    tensors with the dtype of W (inverse of ``head_to_matrix``)."""
    weight, bias = _param_views(head, W)
    return weight.clone(memory_format=torch.contiguous_format), None if bias is None else bias.clone()


@torch.no_grad()
def write_matrix_(head: HeadLayer, W: torch.Tensor) -> None:
    """Copy W [n_t, n_f] into the layer's weight and bias in place (cast to their dtype)."""
    weight, bias = _param_views(head, W)
    head.weight.copy_(weight)
    if bias is not None:
        head.bias.copy_(bias)


# ----------------------------------------------------------------------------- statistics

def _beta2(reduction: Reduction, m: int) -> float:
    if reduction == "mean":
        return 1.0 / m
    if reduction == "sum":
        return 1.0
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def _assemble(
    G: torch.Tensor, H: torch.Tensor, z_sum: torch.Tensor | None, c_sum: torch.Tensor | None, rows: int,
    C: torch.Tensor, beta2: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Append the bias feature (z_sum = Σ_rows Z, c_sum = Σ_rows C) and scale by β²."""
    if z_sum is not None:
        n = G.shape[0]
        Gb = G.new_empty(n + 1, n + 1)
        Gb[:n, :n] = G
        Gb[:n, n] = z_sum
        Gb[n, :n] = z_sum
        Gb[n, n] = rows
        G = Gb
        H = torch.cat([H, c_sum[:, None]], dim=1)
    Cf = C.reshape(-1)
    c = torch.dot(Cf, Cf).mul_(beta2)
    # GEMM blocking can make G asymmetric in the last bit; the solver's eigh reads one triangle.
    G = (G + G.T).mul_(0.5 * beta2)
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


def _conv_stats(head: nn.Conv2d, x: torch.Tensor, y: torch.Tensor, beta2: float):
    left, right, top, bottom = _conv_pads(head)
    if left or right or top or bottom:
        mode = "constant" if head.padding_mode == "zeros" else head.padding_mode
        x = F.pad(x, (left, right, top, bottom), mode=mode)
    X = _unfold(x, head.kernel_size, head.dilation, head.stride)                              # [n_b, K, L]
    Y = y.reshape(y.shape[0], y.shape[1], -1)                                                 # [n_b, n_t, L]
    G = _sum_outer(X, X)
    H = _sum_outer(Y, X)
    bias = head.bias is not None
    return _assemble(G, H, X.sum((0, 2)) if bias else None, Y.sum((0, 2)) if bias else None,
                     X.shape[0] * X.shape[2], Y, beta2)


def _phase_classes(n_in: int, n_out: int, k: int, s: int, p: int, d: int):
    """Stride-phase classes of one spatial dimension of a transposed convolution.

    Yields (p0, n_cls, taps, a, length, dil) per class r with at least one tap and one output:
    outputs p0, p0+s, … (n_cls of them); ``taps`` in the order the unfold kernel elements
    e = 0, 1, … visit them; the input window is [a, a+length) (zero outside [0, n_in)); the
    sub-kernel has dilation ``dil`` in window coordinates.
    """
    g = math.gcd(s, d)
    for r in range(s):
        taps = [t for t in range(k) if (t * d) % s == r]
        p0 = (r - p) % s
        n_cls = max(0, -(-(n_out - p0) // s))
        if not taps or n_cls == 0:
            continue
        u0 = (p0 + p - r) // s
        j = [(t * d - r) // s for t in taps]               # ascending with t
        a = u0 - j[-1]
        length = n_cls + j[-1] - j[0]
        # Window offset of tap t is (j_max − j_t): kernel element e ↔ tap taps[K−1−e].
        yield p0, n_cls, taps[::-1], a, length, d // g


def _window(x: torch.Tensor, dim: int, a: int, length: int) -> torch.Tensor:
    """x restricted to indices [a, a+length) along ``dim``, zero outside the valid range."""
    n = x.shape[dim]
    lo, hi = max(a, 0), min(a + length, n)
    if hi <= lo:
        shape = list(x.shape)
        shape[dim] = length
        return x.new_zeros(shape)
    part = x.narrow(dim, lo, hi - lo)
    before, after = lo - a, length - (lo - a) - (hi - lo)
    if before == 0 and after == 0:
        return part
    pad = [0, 0, 0, 0]
    pad[(3 - dim) * 2: (3 - dim) * 2 + 2] = [before, after]   # F.pad lists the last dim first
    return F.pad(part, pad)


def _conv_transpose_stats(head: nn.ConvTranspose2d, x: torch.Tensor, y: torch.Tensor, beta2: float):
    n_b, c_in, h_in, w_in = x.shape
    _, n_t, h_out, w_out = y.shape
    kh, kw = head.kernel_size
    K = c_in * kh * kw
    G = x.new_zeros(K, K)
    H = x.new_zeros(n_t, K)
    bias = head.bias is not None
    z_sum = x.new_zeros(K) if bias else None
    chan = torch.arange(c_in, device=x.device)[:, None, None] * (kh * kw)
    classes_h = list(_phase_classes(h_in, h_out, kh, head.stride[0], head.padding[0], head.dilation[0]))
    classes_w = list(_phase_classes(w_in, w_out, kw, head.stride[1], head.padding[1], head.dilation[1]))
    for p0h, nh, taps_h, ah, lh, dh in classes_h:
        xh = _window(x, 2, ah, lh)
        for p0w, nw, taps_w, aw, lw, dw in classes_w:
            xw = _window(xh, 3, aw, lw)
            X = _unfold(xw, (len(taps_h), len(taps_w)), (dh, dw))                  # [n_b, c_in·Kh·Kw, nh·nw]
            Y = y[:, :, p0h:: head.stride[0], p0w:: head.stride[1]].reshape(n_b, n_t, -1)
            th = torch.tensor(taps_h, device=x.device)[None, :, None]
            tw = torch.tensor(taps_w, device=x.device)[None, None, :]
            idx = (chan + th * kw + tw).reshape(-1)                                  # unfold order (i, e_h, e_w)
            G[idx[:, None], idx[None, :]] = _sum_outer(X, X)
            H[:, idx] = _sum_outer(Y, X)
            if bias:
                z_sum[idx] = X.sum((0, 2))
    return _assemble(G, H, z_sum, y.sum((0, 2, 3)) if bias else None, n_b * h_out * w_out, y, beta2)


def head_statistics(
    head: HeadLayer, features: torch.Tensor, target: torch.Tensor, reduction: Reduction = "mean",
    *, check: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Sufficient statistics (G, H, c, m) of one batch for ``head`` (see the module docstring).

    Args:
        head: nn.Linear, nn.Conv2d or nn.ConvTranspose2d (groups = 1).
        features: the head's input (Linear [..., n_in]; conv [n_b, C_in, H, W] or [C_in, H, W]).
        target: exactly the shape of ``head(features)``.
        reduction: "mean" (β² = 1/m) or "sum" (β² = 1).
        check: validate shapes, devices and finiteness first (ValueError naming the argument).

    Returns:
        G [n_f, n_f], H [n_t, n_f], c [] (all float64, on the features' device, computed with
        autocast disabled) and m = target.numel(), the number of scalar residuals.
    """
    check_head(head)
    if check:
        check_head_inputs(head, features, target)
    m = target.numel()
    beta2 = _beta2(reduction, m)
    dev_type = features.device.type
    # Under autocast the GEMMs below would run in bf16/fp16; entering the context costs more
    # than a small head's statistics, so only do it when autocast is on.
    no_autocast = torch.autocast(dev_type, enabled=False) if torch.is_autocast_enabled(dev_type) else nullcontext()
    with no_autocast:
        x, y = features.detach().to(F64), target.detach().to(F64)
        if isinstance(head, nn.Linear):
            G, H, c = _linear_stats(head, x, y, beta2)
        else:
            if x.ndim == 3:   # unbatched conv input
                x, y = x[None], y[None]
            fn = _conv_stats if isinstance(head, nn.Conv2d) else _conv_transpose_stats
            G, H, c = fn(head, x, y, beta2)
    return G, H, c, m


# ----------------------------------------------------------------------------- test reference

def _dense_design(head: HeadLayer, features: torch.Tensor) -> torch.Tensor:
    """Explicit design matrix Z [n_f, rows] (float64), structural zeros included. Tests only.

    Built from the layer's own functional op with one-hot weights (one output channel per
    feature), so it is independent of the unfold / phase formulas above. Rows are ordered
    (sample, output pixel) like ``target.permute(1, 0, 2, 3).reshape(n_t, -1)``.
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
            out = head._conv_forward(x, eye, None)
        else:
            out = F.conv_transpose2d(x, eye.transpose(0, 1), None, head.stride, head.padding,
                                     head.output_padding, 1, head.dilation)
        Z = out.transpose(0, 1).reshape(K, -1)
    if bias:
        Z = torch.cat([Z, Z.new_ones(1, Z.shape[1])])
    return Z


def _dense_statistics(
    head: HeadLayer, features: torch.Tensor, target: torch.Tensor, reduction: Reduction = "mean"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(G, H, c, m) from the explicit design of ``_dense_design``. Tests only."""
    Z = _dense_design(head, features)
    y = target.detach().to(F64)
    n_t = head_shape(head)[0]
    if isinstance(head, nn.Linear):
        C = y.reshape(-1, n_t).T
    else:
        C = (y[None] if y.ndim == 3 else y).transpose(0, 1).reshape(n_t, -1)
    m = C.numel()
    beta2 = _beta2(reduction, m)
    return beta2 * Z @ Z.T, beta2 * C @ Z.T, beta2 * (C * C).sum(), m
