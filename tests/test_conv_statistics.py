"""Lag-field statistics of convolutional heads equal the dense design's, over a random grid of
kernel / stride / padding / dilation / output-padding combinations (beyond tests/test_heads.py)."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from slimfast.conv_statistics import conv_transpose_axis, lagged_gram, tap_sums
from slimfast.heads import head_output_shape, head_statistics

from .dense_reference import dense_statistics

F64 = torch.float64


def _random_conv_transpose(rng: random.Random) -> tuple[nn.ConvTranspose2d, tuple[int, ...]]:
    k = (rng.randint(1, 5), rng.randint(1, 5))
    s = (rng.randint(1, 3), rng.randint(1, 3))
    d = (rng.randint(1, 3), rng.randint(1, 3))
    p = (rng.randint(0, d[0] * (k[0] - 1)), rng.randint(0, d[1] * (k[1] - 1)))
    op = (rng.randint(0, max(s[0], d[0]) - 1), rng.randint(0, max(s[1], d[1]) - 1))
    head = nn.ConvTranspose2d(rng.randint(1, 3), rng.randint(1, 2), k, stride=s, padding=p, dilation=d,
                              output_padding=op, bias=rng.random() < 0.7)
    return head, (rng.randint(1, 3), head.in_channels, rng.randint(1, 6), rng.randint(1, 6))


def _random_conv(rng: random.Random) -> tuple[nn.Conv2d, tuple[int, ...]]:
    k = (rng.randint(1, 4), rng.randint(1, 4))
    s = (rng.randint(1, 3), rng.choice([1, 1, 2]))
    d = (rng.randint(1, 2), rng.randint(1, 2))
    p = (rng.randint(0, 2), rng.randint(0, 2))
    head = nn.Conv2d(rng.randint(1, 3), rng.randint(1, 2), k, stride=s, padding=p, dilation=d,
                     bias=rng.random() < 0.7, padding_mode=rng.choice(["zeros", "zeros", "reflect", "circular"]))
    min_h = max(d[0] * (k[0] - 1) + 1 - 2 * p[0], p[0] + 1, 1)
    min_w = max(d[1] * (k[1] - 1) + 1 - 2 * p[1], p[1] + 1, 1)
    return head, (rng.randint(1, 3), head.in_channels, min_h + rng.randint(0, 4), min_w + rng.randint(0, 4))


def draw_case(make, seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(float64 head, features, target) of ``make``'s configuration for ``seed``, redrawn
    (deterministically) until the output is non-empty."""
    rng = random.Random(seed)
    while True:
        head, in_shape = make(rng)
        out_shape = head_output_shape(head, in_shape)
        if min(out_shape[-2:]) > 0:
            break
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(in_shape, dtype=F64, generator=g)
    y = torch.randn(out_shape, dtype=F64, generator=g)
    return head.double(), x, y


@pytest.mark.parametrize("kernel", ["auto", "torch"])
@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("make", [_random_conv_transpose, _random_conv], ids=["conv_transpose", "conv"])
def test_lag_statistics_equaldense_design(make, seed: int, kernel: str) -> None:
    head, x, y = draw_case(make, seed)
    got = head_statistics(head, x, y, "sum", kernel=kernel)
    want = dense_statistics(head, x, y, "sum")
    scale = max(1.0, float(want[0].abs().max()))
    for a, b in zip(got[:3], want[:3]):
        assert float((a - b).abs().max()) <= 1e-12 * scale
    assert got[3] == want[3]


@pytest.mark.parametrize("kernel", ["auto", "torch"])
def test_autoencoder_head_size_matchesdense_design(kernel: str) -> None:
    """The MNIST autoencoder's head shape (16 → 1 channels, 4×4 stride 2, 14×14 → 28×28)."""
    head = nn.ConvTranspose2d(16, 1, 4, stride=2, padding=1).double()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 16, 14, 14, dtype=F64, generator=g)
    y = torch.rand(4, 1, 28, 28, dtype=F64, generator=g)
    G, H, c, _ = head_statistics(head, x, y, "mean", kernel=kernel)
    Gd, Hd, cd, _ = dense_statistics(head, x, y, "mean")
    assert float((G - Gd).abs().max()) <= 1e-12 * float(Gd.abs().max())
    assert float((H - Hd).abs().max()) <= 1e-12 * float(Hd.abs().max())
    torch.testing.assert_close(c, cd, rtol=1e-13, atol=0)


def test_phases_share_no_output_so_cross_phase_blocks_are_zero() -> None:
    """Stride 2, kernel 4: taps {0, 2} and {1, 3} per axis never meet; their block is exactly 0."""
    ax = conv_transpose_axis(5, 10, 4, 2, 1, 1)
    assert len(set(ax.phase)) == 2
    x = torch.randn(2, 3, 5, 5, dtype=F64)
    G = lagged_gram(x, ax, ax).reshape(3, 4, 4, 3, 4, 4)
    for th in range(4):
        for th2 in range(4):
            if ax.phase[th] != ax.phase[th2]:
                assert torch.count_nonzero(G[:, th, :, :, th2, :]) == 0
    assert tap_sums(x, ax, ax).shape == (3 * 16,)
