"""largest_magnitude: max |x| in one read-only pass, NaN and ±Inf kept, over all of x or a dim."""

from __future__ import annotations

import math

import pytest
import torch

from slimfast.validation import largest_magnitude


@pytest.mark.parametrize("seed", range(5))
def test_equals_abs_max(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 17, 9, generator=g, dtype=torch.float64) * 10.0 ** seed
    assert float(largest_magnitude(x)) == float(x.abs().max())
    flat = x.reshape(3, -1)
    assert torch.equal(largest_magnitude(flat, dim=1), flat.abs().amax(1))
    assert float(largest_magnitude(torch._neg_view(x.mT))) == float(x.abs().max())   # strided, lazily negated


@pytest.mark.parametrize("bad, expect", [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "inf")])
def test_non_finite_entries_survive(bad: float, expect: str) -> None:
    x = torch.ones(4, 5, dtype=torch.float64)
    x[2, 3] = bad
    top = float(largest_magnitude(x))
    assert math.isnan(top) if expect == "nan" else top == math.inf
    rows = largest_magnitude(x, dim=1)
    assert (math.isnan(float(rows[2])) if expect == "nan" else float(rows[2]) == math.inf)
    assert torch.equal(rows[[0, 1, 3]], torch.ones(3, dtype=torch.float64))
