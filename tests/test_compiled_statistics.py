"""The compiled statistics of ConvTranspose2d heads (slimfast.compiled_statistics) equal their
float64 torch twin (``head_statistics(kernel="torch")``) and the dense design, for float64 and
float32 batches, over a random kernel / stride / padding / dilation / output-padding grid; their
magnitude stands in for the finiteness check; bad geometry is refused by name."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from slimfast import compiled_statistics
from slimfast.conv_statistics import conv_axis, lagged_gram, tap_sums
from slimfast.heads import head_output_shape, head_statistics, statistics_and_magnitude

from .dense_reference import dense_statistics
from .test_conv_statistics import _random_conv_transpose, draw_case

F64 = torch.float64


@pytest.fixture(autouse=True)
def _needs_compiled() -> None:
    if compiled_statistics._module() is None:
        pytest.skip("compiled module without the lagged statistics")


def _draw(seed: int) -> tuple[nn.ConvTranspose2d, torch.Tensor, torch.Tensor]:
    return draw_case(_random_conv_transpose, seed)


def _spy(monkeypatch, name: str) -> list[int]:
    """Counts the calls of ``compiled_statistics.<name>`` (which still runs)."""
    calls: list[int] = []
    real = getattr(compiled_statistics, name)

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(compiled_statistics, name, spy)
    return calls


def _rel_err(got, want) -> float:
    scale = max(1.0, float(want[0].abs().max()))
    return max(float((a - b).abs().max()) for a, b in zip(got[:3], want[:3])) / scale


@pytest.mark.parametrize("seed", range(60))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_compiled_equals_twin_and_dense_design(seed: int, reduction: str) -> None:
    head, x, y = _draw(seed)
    got = head_statistics(head, x, y, reduction)
    assert compiled_statistics.takes(head, x, y)
    twin = head_statistics(head, x, y, reduction, kernel="torch")
    dense = dense_statistics(head, x, y, reduction)
    assert _rel_err(got, twin) <= 1e-12
    assert _rel_err(got, dense) <= 1e-12
    assert got[3] == dense[3]
    assert torch.equal(got[0], got[0].T)


def test_repeated_and_alternating_geometries_equal_fresh_calls() -> None:
    """The compiled call keeps its scratch (zero margins, target columns) across calls: the same
    geometry again with new values, a NaN batch in between and other geometries in between must
    all give what the twin gives."""
    cases = [_draw(seed) for seed in range(6)]
    order = [0, 0, 1, 0, 2, 2, 3, 1, 4, 5, 4, 0]
    g = torch.Generator().manual_seed(3)
    for k, i in enumerate(order):
        head, x, y = cases[i]
        x, y = torch.randn(x.shape, generator=g, dtype=x.dtype), torch.randn(y.shape, generator=g, dtype=y.dtype)
        if k == 6:   # a non-finite batch leaves nothing behind for the next call of its geometry
            bad = x.clone()
            bad.view(-1)[0] = math.nan
            assert math.isnan(statistics_and_magnitude(head, bad, y, check=False)[4])
        got = head_statistics(head, x, y)
        twin = head_statistics(head, x, y, kernel="torch")
        assert _rel_err(got, twin) <= 1e-12, (k, i)


@pytest.mark.parametrize("seed", range(20))
def test_float32_batch_is_read_as_its_float64_values(seed: int) -> None:
    """A float32 batch gives the statistics of its values in float64 (no float32 arithmetic)."""
    head, x, y = _draw(seed)
    x32, y32 = x.float(), y.float()
    got = head_statistics(head.float(), x32, y32, "mean")
    want = head_statistics(head, x32.double(), y32.double(), "mean", kernel="torch")
    assert all(t.dtype == F64 for t in got[:3])
    assert _rel_err(got, want) <= 1e-12


def test_autoencoder_shape_and_workspace_buffers() -> None:
    """The MNIST autoencoder's head (16 → 1, 4×4 stride 2, 14 → 28) with and without a workspace."""
    from slimfast.workspace import Workspace

    head = nn.ConvTranspose2d(16, 1, 4, stride=2, padding=1)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 16, 14, 14, generator=g)
    y = torch.rand(8, 1, 28, 28, generator=g)
    ws = Workspace()
    first = [t.clone() for t in head_statistics(head, x, y, workspace=ws)[:3]]
    again = head_statistics(head, x, y, workspace=ws)   # the same buffers, written again
    plain = head_statistics(head, x, y)
    twin = head_statistics(head, x, y, kernel="torch")
    for a, b, c in zip(first, again[:3], plain[:3]):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert _rel_err(plain, twin) <= 1e-12


@pytest.mark.parametrize("seed", range(10))
def test_magnitude_is_the_largest_entry(seed: int) -> None:
    head, x, y = _draw(seed)
    G, H, c, _, largest = statistics_and_magnitude(head, x, y, "sum")
    assert largest == max(float(G.abs().max()), float(H.abs().max()), float(c.abs()))
    assert statistics_and_magnitude(head, x, y, "sum", kernel="torch")[4] is None


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["features", "target"])
def test_non_finite_batch_gives_nan_magnitude(bad: float, where: str) -> None:
    head = nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1).double()
    x, y = torch.randn(2, 3, 5, 5, dtype=F64), torch.randn(2, 2, 10, 10, dtype=F64)
    (x if where == "features" else y)[1, 0, 2, 3] = bad
    largest = statistics_and_magnitude(head, x, y, check=False)[4]
    assert math.isnan(largest)


def test_overflowing_batch_gives_nan_magnitude() -> None:
    head = nn.ConvTranspose2d(1, 1, 2, stride=2).double()
    x, y = torch.full((1, 1, 2, 2), 1e200, dtype=F64), torch.zeros(1, 1, 4, 4, dtype=F64)
    assert math.isnan(statistics_and_magnitude(head, x, y, check=False)[4])


def test_what_it_does_not_take_goes_to_torch() -> None:
    head = nn.ConvTranspose2d(3, 2, 3, stride=2)
    x, y = torch.randn(2, 3, 4, 4), torch.randn(2, 2, 9, 9)
    assert compiled_statistics.takes(head, x, y)
    assert not compiled_statistics.takes(head, x.bfloat16(), y)
    assert not compiled_statistics.takes(head, x[0], y[0])              # unbatched
    assert not compiled_statistics.takes(head, x, y[:1])                # one target short
    assert not compiled_statistics.takes(head, x[:, :2], y)             # wrong channels
    got = head_statistics(head, x.bfloat16(), y.bfloat16())             # still computed, by torch
    want = head_statistics(head, x.bfloat16().double(), y.bfloat16().double(), kernel="torch")
    assert _rel_err(got, want) == 0.0


@pytest.mark.parametrize("seed", range(12))
def test_gram_alone_on_conv_axes_equals_lagged_gram(seed: int) -> None:
    """Without targets the call forms G for any axes, here a Conv2d's (row stride > 1 included):
    = the torch lag fields (``lagged_gram``) with the bias column of ``tap_sums``."""
    rng = random.Random(seed)
    k, s, d = (rng.randint(1, 4), rng.randint(1, 3)), (rng.randint(1, 3), 1), (rng.randint(1, 2), rng.randint(1, 2))
    n_b, C = rng.randint(1, 3), rng.randint(1, 3)
    H, W = d[0] * (k[0] - 1) + 1 + rng.randint(0, 5), d[1] * (k[1] - 1) + 1 + rng.randint(0, 5)
    h_out, w_out = (H - d[0] * (k[0] - 1) - 1) // s[0] + 1, (W - d[1] * (k[1] - 1) - 1) // s[1] + 1
    ax_h, ax_w = conv_axis(H, h_out, k[0], s[0], d[0]), conv_axis(W, w_out, k[1], s[1], d[1])
    x = torch.randn(n_b, C, H, W, dtype=F64, generator=torch.Generator().manual_seed(seed))
    n_z = C * k[0] * k[1]
    want = torch.empty(n_z + 1, n_z + 1, dtype=F64)
    want[:n_z, :n_z] = lagged_gram(x, ax_h, ax_w)
    want[:n_z, n_z] = want[n_z, :n_z] = tap_sums(x, ax_h, ax_w)
    want[n_z, n_z] = n_b * h_out * w_out
    G = torch.empty_like(want)
    args = [(a.n, a.step, 0, list(a.phase), list(a.start), list(a.count), list(a.base)) for a in (ax_h, ax_w)]
    largest = compiled_statistics._module().conv_head_statistics(
        x.data_ptr(), 0, n_b, C, H, W, 0, 0, 0, 0, 0, args[0], args[1], True, float(n_b * h_out * w_out), 1.0,
        G.data_ptr(), 0, 0)
    assert float((G - want).abs().max()) <= 1e-12 * float(want.abs().max())
    assert largest == float(G.abs().max())


def test_negated_and_strided_views_are_read_as_their_values() -> None:
    head = nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1).double()
    x, y = torch.randn(2, 3, 5, 5, dtype=F64), torch.randn(2, 2, 10, 10, dtype=F64)
    views = (torch._neg_view(x), torch._neg_view(y))
    assert views[0].is_neg()
    got = head_statistics(head, *views)
    want = head_statistics(head, -x, -y, kernel="torch")
    assert _rel_err(got, want) <= 1e-12
    xt = torch.randn(2, 3, 5, 5, dtype=F64).transpose(2, 3)   # not contiguous
    assert _rel_err(head_statistics(head, xt, y), head_statistics(head, xt, y, kernel="torch")) <= 1e-12


def test_bad_kernel_is_named() -> None:
    head = nn.ConvTranspose2d(3, 2, 3, stride=2)
    with pytest.raises(ValueError, match="kernel"):
        head_statistics(head, torch.randn(2, 3, 4, 4), torch.randn(2, 2, 9, 9), kernel="cuda")


def test_geometry_past_the_target_is_refused_by_name() -> None:
    """Without the layer check, a target too small for the layer never reaches the kernel."""
    head = nn.ConvTranspose2d(3, 2, 3, stride=2)
    x, y = torch.randn(2, 3, 4, 4, dtype=F64), torch.randn(2, 2, 9, 9, dtype=F64)
    module = compiled_statistics._module()
    axis_h, axis_w = compiled_statistics._layout(x.shape, y.shape, (3, 3), (2, 2), (0, 0), (1, 1))
    G, H, c = torch.empty(28, 28, dtype=F64), torch.empty(2, 28, dtype=F64), torch.empty((), dtype=F64)

    def call(h_out: int, ax_h=axis_h, ax_w=axis_w, x_dtype: int = 0):
        return module.conv_head_statistics(x.data_ptr(), x_dtype, 2, 3, 4, 4, y.data_ptr(), 0, 2, h_out, 9, ax_h,
                                           ax_w, True, 162.0, 1.0, G.data_ptr(), H.data_ptr(), c.data_ptr())

    call(9)
    with pytest.raises(ValueError, match="axis_h: tap .* feeds outputs past the target"):
        call(8)
    with pytest.raises(ValueError, match="axis_w: n must equal"):
        call(9, ax_w=(5,) + tuple(axis_w[1:]))
    with pytest.raises(ValueError, match="axis_h: tap .* reads past the image"):
        call(9, ax_h=axis_h[:4] + ([9, 9, 9],) + axis_h[5:])
    with pytest.raises(ValueError, match="x_dtype"):
        call(9, x_dtype=2)
    with pytest.raises(ValueError, match="too large"):   # refused before any pixel is read
        module.conv_head_statistics(x.data_ptr(), 0, 1 << 24, 1024, 4, 4, y.data_ptr(), 0, 2, 9, 9, axis_h, axis_w,
                                    True, 162.0, 1.0, G.data_ptr(), H.data_ptr(), c.data_ptr())


def test_batches_past_the_int_sizes_go_to_torch() -> None:
    head = nn.ConvTranspose2d(64, 4, 3, stride=2)
    small = compiled_statistics._fits_layout(head, (2, 64, 4, 4), (2, 4, 9, 9))
    huge = compiled_statistics._fits_layout(head, (1 << 24, 64, 4, 4), (1 << 24, 4, 9, 9))
    assert small and not huge


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_torch_backend_keeps_the_torch_statistics(monkeypatch, backend: str) -> None:
    """The float64 reference backend forms its statistics with the twin; cpp with the compiled call
    (general path and phase-block path alike)."""
    from slimfast import SlimTik
    from slimfast.ownership import release_head

    calls = _spy(monkeypatch, "conv_transpose_statistics")
    head = nn.ConvTranspose2d(3, 1, 4, stride=2, padding=1).double()
    slim = SlimTik(head, memory_depth=2, backend=backend)
    x, y = torch.randn(4, 3, 5, 5, dtype=F64), torch.randn(4, 1, 10, 10, dtype=F64)
    for _ in range(3):
        slim.step(x, y)
    release_head(head)
    assert (len(calls) == 3) if backend == "cpp" else not calls


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular"])
@pytest.mark.parametrize("stride", [(1, 1), (2, 1), (1, 2)])
def test_conv2d_gram_from_the_compiled_call(monkeypatch, padding_mode: str, stride: tuple[int, int]) -> None:
    """A Conv2d head without column stride takes G from the compiled call; a column stride keeps the
    unfold. Either way the statistics equal the twin and the dense design."""
    calls = _spy(monkeypatch, "lagged_head_gram")
    head = nn.Conv2d(3, 2, 3, stride=stride, padding=1, dilation=(1, 2), padding_mode=padding_mode).double()
    x = torch.randn(2, 3, 7, 8, dtype=F64)
    y = torch.randn(head_output_shape(head, tuple(x.shape)), dtype=F64)
    got = head_statistics(head, x, y, "mean")
    assert len(calls) == (stride[1] == 1)
    assert _rel_err(got, head_statistics(head, x, y, "mean", kernel="torch")) <= 1e-12
    assert _rel_err(got, dense_statistics(head, x, y, "mean")) <= 1e-12
