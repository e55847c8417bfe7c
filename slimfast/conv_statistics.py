"""Gram matrices of weight-shared heads from lagged channel correlations (method.md §6 "Lags").

A convolutional head's design row for feature (channel c, tap t) and output pixel o reads the
input pixel i_t(o). Along one spatial axis, two taps a, b that reach the same outputs read
pixels a fixed distance δ = i_b(o) − i_a(o) apart, and as o runs over their common outputs
i_a(o) runs over an arithmetic progression R_a. So every Gram block is a sum over a rectangle
of a *lag field*

    Q_δ[i] = Σ_n x[n, :, i] x[n, :, i + δ]ᵀ        [C, C] per input pixel i (zero off the image)

    G[(c, A), (c', B)] = Σ_{i ∈ R_A} Q_{δ(A,B)}[i][c, c'],     R_A = R_{a_h} × R_{a_w}.

A few lags serve every tap pair (9 for a 4×4 stride-2 transposed convolution, of which 5 are
computed and 4 are their transposes: Q_{−δ}[i] = Q_δ[i − δ]ᵀ), and a rectangle sum is four
look-ups in the (strided) prefix sums of Q_δ. The work is (number of lags)·C²·n·H·W instead
of the unfold's (C·k_h·k_w)²·n·(output pixels). The result is exactly the Gram matrix of the
dense design (structural zeros included: taps of different stride phases share no output).

Only the geometry (``TapAxis``) differs between heads:
    ConvTranspose2d: output o = s·i − p + d·t, so tap t reaches the outputs o ≡ d·t − p (mod s)
        and reads i = base_t + j for the j-th of them (step 1).
    Conv2d (input already padded): output u reads i = d·e + s·u (step s), every tap every output.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from .workspace import Workspace

__all__ = ["TapAxis", "conv_axis", "conv_transpose_axis", "lagged_gram", "tap_sums"]


@dataclass(frozen=True)
class TapAxis:
    """Geometry of one spatial axis: tap t reads input pixels start[t] + step·j, j < count[t].

    Taps with equal ``phase`` reach the same outputs (the j-th reads of both belong to one
    output pixel); taps of different phases share no output, so their Gram entries vanish.
    ``start``/``count`` are clipped to the image [0, n): pixels outside it are zero.
    """

    n: int
    step: int
    phase: tuple[int, ...]
    start: tuple[int, ...]
    count: tuple[int, ...]
    base: tuple[int, ...]     # unclipped first pixel: base[b] − base[a] is the lag of taps a, b


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def _clip(base: int, step: int, count: int, n: int) -> tuple[int, int]:
    """(first pixel, number of pixels) of base + step·j, j < count, that lie in [0, n)."""
    j_lo = max(0, _ceil_div(-base, step))
    j_hi = min(count, _ceil_div(n - base, step))
    if j_hi <= j_lo:
        return 0, 0
    return base + step * j_lo, j_hi - j_lo


def _axis(n: int, step: int, phase: list[int], base: list[int], count: list[int]) -> TapAxis:
    clipped = [_clip(b, step, c, n) for b, c in zip(base, count)]
    return TapAxis(n, step, tuple(phase), tuple(s for s, _ in clipped), tuple(c for _, c in clipped), tuple(base))


def conv_transpose_axis(n_in: int, n_out: int, k: int, s: int, p: int, d: int) -> TapAxis:
    """Axis of ``ConvTranspose2d``: o = s·i − p + d·t; tap t's outputs o0_t + s·j read i = base_t + j."""
    phase, base, count = [], [], []
    for t in range(k):
        o0 = (d * t - p) % s
        phase.append(o0)
        base.append((o0 + p - d * t) // s)
        count.append(max(0, _ceil_div(n_out - o0, s)))
    return _axis(n_in, 1, phase, base, count)


def conv_axis(n_padded: int, n_out: int, k: int, s: int, d: int) -> TapAxis:
    """Axis of ``Conv2d`` on its padded input: output u reads i = d·e + s·u for tap e."""
    return _axis(n_padded, s, [0] * k, [d * e for e in range(k)], [n_out] * k)


def _mask(ax: TapAxis, t: int) -> list[float]:
    """1.0 at the pixels tap t reads along this axis (its clipped progression), else 0.0."""
    inside = set(range(ax.start[t], ax.start[t] + ax.step * ax.count[t], ax.step))
    return [float(i in inside) for i in range(ax.n)]


@dataclass(frozen=True)
class _Plan:
    """How the lag fields combine into Gram blocks, as small dense weight matrices.

    Fields per lag l: the row field A_l[i_h] and the edge fields Q_l[i_h, e] for the columns e
    that lie outside some tap's column range, laid out [L, H, 1 + E] (slot 0 = row field). A
    block is Σ_{i_h ∈ R_h} (A_l[i_h] − Σ_{e ∉ R_w} Q_l[i_h, e]), i.e. one row of ``weights``.
    """

    lags: tuple[tuple[int, int], ...]        # (δ_h, δ_w) with δ_h > 0 or δ_w ≥ 0: the rest are transposes
    edges: tuple[int, ...]                   # columns outside some tap's column range
    weights: torch.Tensor                    # [P, L·H·(1 + E)] ±1/0 combination of the fields per tap pair
    pair_a: torch.Tensor                     # [P] flat tap (t_h·k_w + t_w) of the row block
    pair_b: torch.Tensor                     # [P] flat tap of the column block
    mask_h: torch.Tensor                     # [k_h, H] pixels each tap reads (for the feature sums)
    mask_w: torch.Tensor                     # [k_w, W]
    # The edge fields' factors, gathered from the few padded columns they read (``edge_columns``,
    # [U]) laid out [H + δ_h, U] and flattened: rows i_h·U + slot(e) for the left factor [H·E],
    # (δ_h + i_h)·U + slot(e + δ_w) per lag for the right one [L·H·E].
    edge_columns: torch.Tensor
    edge_left: torch.Tensor
    edge_right: torch.Tensor


@lru_cache(maxsize=64)
def _plan(ax_h: TapAxis, ax_w: TapAxis) -> _Plan:
    kh, kw = len(ax_h.phase), len(ax_w.phase)
    pairs = []
    for ah in range(kh):
        for bh in range(kh):
            if ax_h.phase[ah] != ax_h.phase[bh]:
                continue
            dh = ax_h.base[bh] - ax_h.base[ah]
            for aw in range(kw):
                for bw in range(kw):
                    if ax_w.phase[aw] != ax_w.phase[bw]:
                        continue
                    dw = ax_w.base[bw] - ax_w.base[aw]
                    if dh > 0 or (dh == 0 and dw >= 0):   # the mirrored pair is this block transposed
                        pairs.append((ah, aw, bh, bw, (dh, dw)))
    lags = tuple(sorted({p[4] for p in pairs}))
    mask_h = [_mask(ax_h, t) for t in range(kh)]
    mask_w = [_mask(ax_w, t) for t in range(kw)]
    edges = tuple(e for e in range(ax_w.n) if any(m[e] == 0.0 for m in mask_w))
    H, E = ax_h.n, len(edges)
    weights = torch.zeros(len(pairs), len(lags), H, 1 + E, dtype=torch.float64)
    for p, (ah, aw, _, _, lag) in enumerate(pairs):
        rows = torch.tensor(mask_h[ah], dtype=torch.float64)
        outside = torch.tensor([1.0 - mask_w[aw][e] for e in edges], dtype=torch.float64)
        weights[p, lags.index(lag), :, 0] = rows
        weights[p, lags.index(lag), :, 1:] = -rows[:, None] * outside[None, :]
    long = torch.long
    margin = max(abs(dw) for _, dw in lags)
    used = sorted({e + dw for e in edges for _, dw in lags} | set(edges))
    slot = {u: i for i, u in enumerate(used)}
    U = len(used)
    edge_left = [i_h * U + slot[e] for i_h in range(H) for e in edges]
    edge_right = [(dh + i_h) * U + slot[e + dw] for dh, dw in lags for i_h in range(H) for e in edges]
    return _Plan(
        lags=lags, edges=edges, weights=weights.reshape(len(pairs), -1),
        edge_columns=torch.tensor([margin + u for u in used], dtype=long),
        edge_left=torch.tensor(edge_left, dtype=long), edge_right=torch.tensor(edge_right, dtype=long),
        pair_a=torch.tensor([p[0] * kw + p[1] for p in pairs], dtype=long),
        pair_b=torch.tensor([p[2] * kw + p[3] for p in pairs], dtype=long),
        mask_h=torch.tensor(mask_h, dtype=torch.float64).reshape(kh, ax_h.n),
        mask_w=torch.tensor(mask_w, dtype=torch.float64).reshape(kw, ax_w.n),
    )


def lagged_gram(x: torch.Tensor, ax_h: TapAxis, ax_w: TapAxis, workspace: Workspace | None = None) -> torch.Tensor:
    """Σ Z Zᵀ [C·k_h·k_w, C·k_h·k_w] of the design of x [n, C, H, W] (float64), unscaled, no bias.

    Feature order (c, t_h, t_w), as ``unfold`` and the head's weight matrix. Per lag δ:
        row field  A_δ[i_h] = Σ_{i_w} Q_δ[i_h, i_w]    one GEMM per image row, over (n, i_w);
        edge field Q_δ[i_h, e] for the few columns e outside some tap's column range;
    a block is Σ_{i_h ∈ R_h} (A_δ[i_h] − Σ_{e ∉ R_w} Q_δ[i_h, e]) (``_Plan.weights``).
    With a ``workspace`` the large temporaries and the result live in its buffers (the result is
    then overwritten by the next call with the same workspace).
    """
    n, C, H, W = x.shape
    plan = _plan(ax_h, ax_w)
    kt = len(ax_h.phase) * len(ax_w.phase)
    M = max(abs(dw) for _, dw in plan.lags)
    h_pad = max(dh for dh, _ in plan.lags)
    # Rows [H + δ_h, C, n·(M + W + M)] with zero margins: a column shift by δ_w is a shift of the
    # flattened (sample, column) axis, so every lag's right factor is a view, not a copy.
    width = W + 2 * M
    shape = (H + h_pad, C, n * width + 2 * M)
    # Only the image pixels are written below, so a kept buffer's margins stay zero.
    flat = x.new_zeros(shape) if workspace is None else workspace.zeros(f"lag_rows/{H}/{W}/{M}", shape, x.dtype,
                                                                         x.device)
    rows = flat[:, :, M: M + n * width].view(H + h_pad, C, n, width)
    rows[:H, :, :, M: M + W] = x.permute(2, 1, 0, 3)
    left = flat[:H, :, M: M + n * width]
    L, E = len(plan.lags), len(plan.edges)
    main = torch.stack([torch.bmm(left, flat[dh: dh + H, :, M + dw: M + dw + n * width].transpose(1, 2))
                        for dh, dw in plan.lags])                                                  # [L, H, C, C]
    if E:
        # Every edge field in one batched product: [H·E] left factors, each against its L lags.
        dev = x.device
        cols = rows.index_select(3, plan.edge_columns.to(dev)).permute(0, 3, 1, 2).contiguous().view(-1, C, n)
        edge_left = cols.index_select(0, plan.edge_left.to(dev)).repeat(L, 1, 1)                   # [L·H·E, C, n]
        edge_right = cols.index_select(0, plan.edge_right.to(dev))
        edge = torch.bmm(edge_left, edge_right.transpose(1, 2)).view(L, H, E, C, C)
        stacked = torch.cat([main[:, :, None], edge], 2)                                            # [L, H, 1 + E, C, C]
    else:
        stacked = main[:, :, None]
    blocks = (plan.weights.to(x.device) @ stacked.view(-1, C * C)).view(-1, C, C)                    # [P, C, C]
    if workspace is None:
        G = x.new_zeros(kt, kt, C, C)
    else:
        G = workspace.empty("lag_taps", (kt, kt, C, C), x.dtype, x.device).zero_()
    G[plan.pair_b, plan.pair_a] = blocks.transpose(1, 2)
    G[plan.pair_a, plan.pair_b] = blocks
    if workspace is None:
        return G.permute(2, 0, 3, 1).reshape(C * kt, C * kt)
    out = workspace.empty("lag_gram", (C * kt, C * kt), x.dtype, x.device)
    out.view(C, kt, C, kt).copy_(G.permute(2, 0, 3, 1))
    return out


def tap_sums(x: torch.Tensor, ax_h: TapAxis, ax_w: TapAxis) -> torch.Tensor:
    """Σ_rows Z [C·k_h·k_w]: each feature's sum over the design rows (the bias column of G)."""
    plan = _plan(ax_h, ax_w)
    per_pixel = x.sum(0)                                                                             # [C, H, W]
    by_column_tap = per_pixel @ plan.mask_w.to(x.device).T                                           # [C, H, k_w]
    return torch.einsum("th,chw->ctw", plan.mask_h.to(x.device), by_column_tap).reshape(-1)
