"""Input checks for the functional solver: every failure names the offending argument.

Checks run before any backend sees the data, so a rejected call never reaches compiled
code and never touches the solver state.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ._torch_impl import _admissible_interval
from .config import SolverConfig
from .state import SlimTikState

#: Largest magnitude accepted in G, H, c and W. The kernels form squared sums of these entries
#: (Frobenius norms in the Jacobi eigensolver, W G Wᵀ, B̃ᵀB̃); beyond ~1e154 those overflow
#: float64 and a result can be wrong without being non-finite, so larger values are rejected.
MAX_ABS = 1e150


def as_tensor(name: str, value: Any) -> torch.Tensor:
    """Zero-copy view of a numpy array or torch tensor as a torch tensor; TypeError otherwise."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype != np.float64:
            raise TypeError(f"{name} must have dtype float64, got {value.dtype}")
        if not value.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
        return torch.from_numpy(value)
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(value).__name__}")


def check_array(name: str, x: torch.Tensor, shape: tuple[int, ...], shape_doc: str, device: torch.device) -> None:
    """dtype float64, exact shape, C-contiguous, on ``device``, finite and at most ``MAX_ABS``."""
    if x.dtype != torch.float64:
        raise TypeError(f"{name} must have dtype float64 (statistics are kept in float64), got {x.dtype}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape_doc} = {list(shape)}, got {list(x.shape)}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device}, but the solver state is on {device}")
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous())")
    if x.is_neg():
        # A lazily negated view: its memory holds -x, which the pointer-based kernels would read.
        raise ValueError(f"{name} is a negated view (call .resolve_neg())")
    if x.numel() and not bool((x.abs() <= MAX_ABS).all()):   # one reduction; False for NaN too
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or Inf")
        raise ValueError(f"{name} has entries beyond ±{MAX_ABS:g}; rescale the data (the kernels square them)")


def residual_counts(m: Any, batch: int, device: torch.device) -> torch.Tensor:
    """m_k as a [B] float64 tensor from an int, a float or a [B] array; positive and finite."""
    if isinstance(m, (bool, np.bool_)):
        raise TypeError("m must be a positive number or a [B] array, got a bool")
    if isinstance(m, (int, float, np.integer, np.floating)):
        value = float(m)
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"m must be positive and finite, got {m}")
        return torch.full((batch,), value, dtype=torch.float64, device=device)
    t = as_tensor("m", m)
    if t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"m must be real, got {t.dtype}")
    if tuple(t.shape) != (batch,):
        raise ValueError(f"m must be a number or have shape [B] = [{batch}], got {list(t.shape)}")
    t = t.to(device=device, dtype=torch.float64)
    if not bool((torch.isfinite(t) & (t > 0)).all()):
        raise ValueError("m must be positive and finite in every problem")
    return t


def check_step_inputs(
    state: SlimTikState, config: SolverConfig, G: Any, H: Any, c: Any, m: Any, W: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate one step's inputs against the state; returns (G, H, c, m, W) as [B, ...] tensors."""
    if not isinstance(state, SlimTikState):
        raise TypeError(f"state must be a SlimTikState, got {type(state).__name__}")
    if not isinstance(config, SolverConfig):
        raise TypeError(f"config must be a SolverConfig, got {type(config).__name__}")
    B, nf, nt, dev = state.batch, state.n_features, state.n_targets, state.device
    G_t, H_t, c_t, W_t = as_tensor("G", G), as_tensor("H", H), as_tensor("c", c), as_tensor("W", W)
    for name, x in (("G", G_t), ("H", H_t), ("W", W_t)):
        if x.ndim >= 1 and x.shape[0] == 0:
            raise ValueError(f"{name} has an empty batch dimension (B = 0)")
        if x.ndim == 3 and x.shape[0] != B:
            raise ValueError(f"{name} has batch size {x.shape[0]}, but the state holds B = {B} problems")
    check_array("G", G_t, (B, nf, nf), "[B, n_f, n_f]", dev)
    check_array("H", H_t, (B, nt, nf), "[B, n_t, n_f]", dev)
    check_array("c", c_t, (B,), "[B]", dev)
    check_array("W", W_t, (B, nt, nf), "[B, n_t, n_f]", dev)
    if bool((c_t < 0).any()):
        raise ValueError("c must be non-negative (it is β²‖C_k‖²)")
    m_t = residual_counts(m, B, dev)
    mu_lo, mu_hi = _admissible_interval(state.Lambda, config)
    if bool((mu_lo > mu_hi).any()):
        b = int(torch.nonzero(mu_lo > mu_hi)[0, 0])
        raise ValueError(
            f"the bounds exclude every λ for problem {b}: Lambda_bounds={config.Lambda_bounds}, "
            f"lambda_bounds={config.lambda_bounds}, Λ_(k-1)={float(state.Lambda[b])}"
        )
    return G_t, H_t, c_t, m_t, W_t
