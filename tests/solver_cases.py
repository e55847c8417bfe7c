"""Random slimTik problems and an independent dense reference, shared by the solver tests.

The reference never touches the sufficient statistics: it stacks the raw feature blocks into
one least-squares problem (method.md §2.3) and solves it with ``torch.linalg.lstsq``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

F64 = torch.float64


@dataclass
class RandomProblems:
    """B problems fed batch by batch; keeps every raw block so the dense reference can use them."""

    B: int
    n_f: int
    n_t: int
    n_b: int
    well_posed: bool = True
    seed: int = 0
    Z_blocks: list[torch.Tensor] = field(default_factory=list)  # each [B, n_f, n_b]
    C_blocks: list[torch.Tensor] = field(default_factory=list)  # each [B, n_t, n_b]

    def __post_init__(self) -> None:
        self.gen = torch.Generator().manual_seed(self.seed)
        self.W_true = torch.randn(self.B, self.n_t, self.n_f, dtype=F64, generator=self.gen)

    @property
    def beta2(self) -> float:
        return 1.0 / self.n_b

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """Draw (Z, C) and return the statistics (G, H, c, m) of method.md §4."""
        Z = torch.randn(self.B, self.n_f, self.n_b, dtype=F64, generator=self.gen)
        noise = torch.randn(self.B, self.n_t, self.n_b, dtype=F64, generator=self.gen)
        C = self.W_true @ Z + 0.1 * noise if self.well_posed else noise
        self.Z_blocks.append(Z)
        self.C_blocks.append(C)
        return stats(Z, C, self.beta2)


def stats(Z: torch.Tensor, C: torch.Tensor, beta2: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """G = β² Z Zᵀ [B,n_f,n_f], H = β² C Zᵀ [B,n_t,n_f], c = β²‖C‖² [B], m = n_b·n_t."""
    G = beta2 * Z @ Z.transpose(1, 2)
    H = beta2 * C @ Z.transpose(1, 2)
    c = beta2 * (C * C).sum((1, 2))
    return G.contiguous(), H.contiguous(), c.contiguous(), float(Z.shape[2] * C.shape[1])


def dense_slimtik_solution(
    Z: torch.Tensor, C: torch.Tensor, Z_memory: list[torch.Tensor], W_prev: torch.Tensor,
    Lambda_prev: float, Lambda_new: float, beta2: float,
) -> torch.Tensor:
    """Minimiser of ½β²‖WZ−C‖² + ½β²Σ_j‖(W−W_prev)Z_j‖² + (Λ_prev/2)‖W−W_prev‖² + (λ/2)‖W‖².

    One problem: Z [n_f, n_b], C [n_t, n_b], W_prev [n_t, n_f]. The two Tikhonov terms are
    merged into (Λ_new/2)‖W − (Λ_prev/Λ_new) W_prev‖² + const, valid for negative λ too.
    """
    beta = math.sqrt(beta2)
    n_f = Z.shape[0]
    rows = [beta * Z.T] + [beta * Zj.T for Zj in Z_memory] + [math.sqrt(Lambda_new) * torch.eye(n_f, dtype=F64)]
    rhs = [beta * C.T] + [beta * Zj.T @ W_prev.T for Zj in Z_memory]
    rhs.append(math.sqrt(Lambda_new) * (Lambda_prev / Lambda_new) * W_prev.T)
    X = torch.linalg.lstsq(torch.cat(rows), torch.cat(rhs), driver="gelsd").solution
    return X.T


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64)
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def assert_backends_follow_the_twin(trajectory, rtol: float) -> None:
    """Every available compiled CPU backend's trajectory (``trajectory(backend)``: a list of
    (W, Λ) per step) agrees with the torch twin's within ``rtol`` relative, step by step."""
    import pytest

    from slimfast.backends import load_backend

    ref = trajectory("torch")
    compared = 0
    for name in ("cpp", "numba"):
        if load_backend(name) is None:
            continue
        for k, ((W, Lam), (W_ref, Lam_ref)) in enumerate(zip(trajectory(name), ref)):
            assert rel_err(W, W_ref) <= rtol, (name, k, rel_err(W, W_ref))
            assert rel_err(Lam, Lam_ref) <= rtol, (name, k, rel_err(Lam, Lam_ref))
        compared += 1
    if compared == 0:
        pytest.skip("only the torch backend is available")



def state_snapshot(state) -> dict:
    """A deep copy of ``state.state_dict()`` (tensors cloned), to compare with after a call."""
    return {k: (v.clone() if hasattr(v, "clone") else v) for k, v in state.state_dict().items()}


def assert_state_equal(a: dict, b: dict) -> None:
    """Two ``state_snapshot`` dicts are identical: same keys, tensors equal with the same dtype."""
    assert a.keys() == b.keys()
    for k in a:
        if hasattr(a[k], "dtype"):
            assert a[k].dtype == b[k].dtype and bool((a[k] == b[k]).all()), k
        else:
            assert a[k] == b[k], k


def make_head(spec, seed: int):
    """(float64 head, input shape) from a ``(factory, input shape)`` entry of a HEADS table, the
    factory run under ``torch.manual_seed(seed)``."""
    import torch

    make, in_shape = spec
    torch.manual_seed(seed)
    return make().double(), in_shape
