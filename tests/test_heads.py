"""Head statistics equal those of the explicit dense design matrix; weight maps round-trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimfast.heads import (
    _unfold, check_statistics_finite, head_output_shape, head_shape, head_statistics, head_to_matrix,
    matrix_to_params, write_matrix_,
)

from .dense_reference import dense_design, dense_statistics
from .solver_cases import make_head

F64 = torch.float64


def _case(head: nn.Module, in_shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(in_shape, dtype=F64, generator=g)
    y = torch.randn(head_output_shape(head, in_shape), dtype=F64, generator=g)
    return x, y


def _max_err(a, b) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a, b))


HEADS = {
    "linear_bias": (lambda: nn.Linear(5, 3), (7, 5)),
    "linear_nobias": (lambda: nn.Linear(5, 3, bias=False), (7, 5)),
    "linear_seq": (lambda: nn.Linear(4, 2), (3, 6, 4)),
    "conv_s1": (lambda: nn.Conv2d(2, 3, 3), (2, 2, 6, 5)),
    "conv_s2_pad": (lambda: nn.Conv2d(2, 3, (3, 2), stride=2, padding=1), (2, 2, 7, 6)),
    "conv_nobias_dil": (lambda: nn.Conv2d(2, 3, 3, stride=(2, 1), padding=(2, 1), dilation=2, bias=False), (2, 2, 8, 7)),
    "conv_same_reflect": (lambda: nn.Conv2d(2, 3, 3, padding="same", padding_mode="reflect"), (2, 2, 5, 5)),
    "conv_unbatched": (lambda: nn.Conv2d(2, 3, 2), (2, 5, 4)),
    "convT_s1": (lambda: nn.ConvTranspose2d(2, 3, 3), (2, 2, 4, 5)),
    "convT_s2_pad": (lambda: nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1), (2, 2, 4, 5)),
    "convT_s2_outpad": (lambda: nn.ConvTranspose2d(2, 3, 4, stride=2, padding=1, output_padding=1), (2, 2, 3, 4)),
    "convT_s2_nobias": (lambda: nn.ConvTranspose2d(3, 2, (2, 3), stride=2, bias=False), (2, 3, 4, 3)),
    "convT_mixed": (lambda: nn.ConvTranspose2d(2, 2, (4, 3), stride=(2, 3), padding=(1, 2), dilation=(3, 2),
                                               output_padding=(1, 1)), (2, 2, 4, 4)),
    "convT_s3_bigpad": (lambda: nn.ConvTranspose2d(2, 2, 5, stride=3, padding=4), (1, 2, 5, 5)),
}


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_statistics_equaldense_design(name: str, reduction: str) -> None:
    head, in_shape = make_head(HEADS[name], seed=1)
    x, y = _case(head, in_shape)
    G, H, c, m = head_statistics(head, x, y, reduction)
    Gd, Hd, cd, md = dense_statistics(head, x, y, reduction)
    n_t, n_f = head_shape(head)
    assert G.shape == (n_f, n_f) and H.shape == (n_t, n_f) and c.shape == ()
    assert G.dtype == H.dtype == c.dtype == F64
    assert m == md == y.numel()
    assert _max_err((G, H, c), (Gd, Hd, cd)) < 1e-10
    torch.testing.assert_close(G, G.T, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(HEADS))
def testdense_design_reproduces_layer_and_W_maps_round_trip(name: str) -> None:
    """The test reference itself is right: W @ Z equals the layer's forward."""
    head, in_shape = make_head(HEADS[name], seed=2)
    x, _ = _case(head, in_shape)
    out = head(x).detach()
    W = head_to_matrix(head)
    pred = W @ dense_design(head, x)
    ref = out.reshape(-1, out.shape[-1]).T if isinstance(head, nn.Linear) else \
        (out[None] if out.ndim == 3 else out).transpose(0, 1).reshape(out.shape[-3], -1)
    assert float((pred - ref).abs().max()) < 1e-12
    weight, bias = matrix_to_params(head, W)
    assert torch.equal(weight, head.weight.detach())
    assert (bias is None) == (head.bias is None)
    if bias is not None:
        assert torch.equal(bias, head.bias.detach())
    W2 = torch.randn_like(W)
    write_matrix_(head, W2)
    assert torch.equal(head_to_matrix(head), W2)


def test_mean_reduction_is_half_mse() -> None:
    """½ tr(W G Wᵀ) − tr(W Hᵀ) + ½c = ½·MSELoss(head(x), y) for the mean reduction."""
    head = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1).double()
    x, y = _case(head, (2, 2, 4, 5))
    G, H, c, _ = head_statistics(head, x, y, "mean")
    W = head_to_matrix(head)
    half = 0.5 * (W @ G * W).sum() - (W * H).sum() + 0.5 * c
    torch.testing.assert_close(half, 0.5 * nn.MSELoss()(head(x), y).detach(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_statistics_are_float64_for_low_precision_inputs(dtype: torch.dtype) -> None:
    head = nn.Conv2d(2, 3, 3, stride=2, padding=1).to(dtype)
    x, y = _case(head, (2, 2, 6, 6))
    x, y = x.to(dtype), y.to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        G, H, c, _ = head_statistics(head, x, y)
    assert G.dtype == H.dtype == c.dtype == F64
    # Equal to the float64 statistics of the same (rounded) numbers.
    Gd, Hd, cd, _ = dense_statistics(head, x.double(), y.double())
    assert _max_err((G, H, c), (Gd, Hd, cd)) < 1e-10


def test_bad_inputs_name_the_argument() -> None:
    head = nn.Conv2d(2, 3, 3)
    x = torch.randn(2, 2, 6, 6)
    with pytest.raises(ValueError, match="features"):
        head_statistics(head, torch.randn(2, 3, 6, 6), torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="target"):
        head_statistics(head, x, torch.randn(2, 3, 5, 5))
    with pytest.raises(ValueError, match="groups"):
        head_statistics(nn.Conv2d(2, 4, 3, groups=2), x, torch.randn(2, 4, 4, 4))
    with pytest.raises(TypeError, match="head"):
        head_statistics(nn.Conv1d(2, 3, 3), x, x)


def test_statistics_finiteness_check_names_the_argument() -> None:
    head = nn.Linear(3, 2).double()
    x, y = _case(head, (5, 3))
    x[1, 2], y[0, 0] = float("nan"), float("inf")
    G, H, c, _ = head_statistics(head, x, y, check=False)
    with pytest.raises(ValueError, match="features and target"):
        check_statistics_finite(G, c)
    G, H, c, _ = head_statistics(head, x.nan_to_num(), y, check=False)
    with pytest.raises(ValueError, match="^target"):
        check_statistics_finite(G, c)


@pytest.mark.parametrize("kernel,dilation,stride", [((2, 2), (1, 1), (1, 1)), ((3, 2), (2, 1), (2, 3)), ((1, 4), (1, 2), (1, 1))])
def test_strided_unfold_equals_F_unfold(kernel, dilation, stride) -> None:
    x = torch.randn(2, 3, 11, 12, dtype=F64)[:, :, 1:, 2:]          # a non-contiguous view too
    ref = torch.nn.functional.unfold(x, kernel, dilation=dilation, stride=stride)
    assert torch.equal(_unfold(x, kernel, dilation, stride), ref)
