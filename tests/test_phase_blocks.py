"""Phase blocks of transposed-convolution heads: the layout matches the dense design's zero
pattern, and SlimTik's block-structured step equals its dense step.

The references never see the layout: the explicit design matrix of the layer
(``dense_reference.dense_design``) and the same SlimTik run with ``block_solve="off"``.
"""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from slimfast import SlimTik
from slimfast.heads import head_output_shape
from slimfast.ownership import release_head
from slimfast.phase_blocks import phase_blocks

from .dense_reference import dense_design
from .test_conv_statistics import _random_conv_transpose
from .test_heads import HEADS

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
CONV_T = sorted(name for name in HEADS if name.startswith("convT"))


def _random_head(seed: int) -> tuple[nn.ConvTranspose2d, tuple[int, ...]]:
    """A random transposed convolution (redrawn until its output is not empty) and input shape."""
    rng = random.Random(seed)
    while True:
        head, in_shape = _random_conv_transpose(rng)
        if min(head_output_shape(head, in_shape)[-2:]) > 0:
            return head, in_shape


@pytest.mark.parametrize("case", range(40))
def test_layout_is_the_zero_pattern_of_the_dense_design(case):
    """Features of different blocks never share a design row; the border is the bias; the
    blocks' features read rows (unless clipped to nothing); a stride of 1 has no blocks."""
    head, in_shape = _random_head(case)
    layout = phase_blocks(head)
    if head.stride == (1, 1):
        assert layout is None
        return
    if layout is None:   # every tap in one phase class (e.g. k = 1 along a strided axis, dilation ≡ 0)
        return
    x = torch.randn(in_shape, dtype=F64)
    Z = dense_design(head.double(), x)[list(layout.order)]
    reads = Z != 0
    for p, (lo, hi) in enumerate(layout.ranges()):
        outside = torch.cat([reads[:lo], reads[hi:layout.n_core]])
        assert not bool((reads[lo:hi].any(0) & outside.any(0)).any()), p
    assert layout.border == (head.bias is not None)


def _run(head: nn.Module, block_solve: str, batches, backend: str | None, memory_depth: int = 2):
    slim = SlimTik(head, memory_depth=memory_depth, block_solve=block_solve, backend=backend)
    out = []
    for x, y in batches:
        slim.step(x, y)
        out.append((torch.cat([p.detach().reshape(-1).clone() for p in head.parameters()]), slim.Lambda_))
    release_head(head)
    return out


@pytest.mark.parametrize("name", CONV_T)
def test_slimtik_block_solve_is_the_dense_solve(name, backend):
    """Over memory filling and wrapping, on every backend: the weights and Λ of the phase-block
    step equal those of the dense step on the same head (1e-9)."""
    import copy

    from .solver_cases import make_head

    head, in_shape = make_head(HEADS[name], seed=3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out_shape = head(torch.zeros(in_shape, dtype=F64)).shape
    batches = [(torch.randn(in_shape, dtype=F64, generator=g), torch.randn(out_shape, dtype=F64, generator=g))
               for _ in range(5)]
    blocked = _run(copy.deepcopy(head), "auto", batches, backend)
    dense = _run(copy.deepcopy(head), "off", batches, "torch")
    for k, ((w_b, L_b), (w_d, L_d)) in enumerate(zip(blocked, dense)):
        assert float((w_b - w_d).norm() / w_d.norm()) <= 1e-9, k
        assert abs(L_b - L_d) <= 1e-9 * abs(L_d), k


def test_slimtik_takes_the_block_step_for_strided_transposed_convolutions(monkeypatch):
    import slimfast.block_head as block_head
    import slimfast.optim as optim

    monkeypatch.setattr(block_head, "ENABLED", False)   # its fast path takes the same block step (test_block_head)
    seen = []
    real = optim.slimtik_step

    def spy(*args, **kwargs):
        seen.append(kwargs.get("blocks"))
        return real(*args, **kwargs)

    monkeypatch.setattr(optim, "slimtik_step", spy)
    head = nn.ConvTranspose2d(3, 1, 4, stride=2, padding=1).double()
    SlimTik(head).step(torch.randn(2, 3, 4, 4, dtype=F64), torch.randn(2, 1, 8, 8, dtype=F64))
    assert seen[-1] is not None and seen[-1].sizes == (12, 12, 12, 12) and seen[-1].border
    head2 = nn.ConvTranspose2d(3, 1, 3).double()
    SlimTik(head2).step(torch.randn(2, 3, 4, 4, dtype=F64), torch.randn(2, 1, 6, 6, dtype=F64))
    assert seen[-1] is None
    with pytest.raises(ValueError, match="block_solve"):
        SlimTik(nn.ConvTranspose2d(1, 1, 2, stride=2), block_solve="yes")
