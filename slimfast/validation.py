"""Input checks for the functional solver: every failure names the offending argument.

Two kinds of check, each written once:
- layout (type, dtype, shape, device, contiguity): metadata only, raised at once;
- values (finiteness, magnitude, symmetry, signs, admissible bounds, and after the step the
  definiteness of G_mem and finite weights): computed on the device as one [B] tensor of
  ``Fault`` codes, without a host synchronisation. ``validate="eager"`` reads it at once (one
  sync before the backend runs, one after) and raises; ``validate="lazy"`` keeps it in the
  step's record (``StepInfo.check()`` raises it later) and the state is advanced only for the
  problems without a fault.
"""

from __future__ import annotations

import functools
import math
import numbers
from enum import IntEnum
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

#: G must be symmetric to this relative accuracy: max|G − Gᵀ| <= SYMMETRY_RTOL·max|G| (a Gram
#: matrix formed in float64 in any summation order is symmetric to ~1e-15).
SYMMETRY_RTOL = 1e-10
#: G_mem is rejected as indefinite when its smallest eigenvalue is below −INDEFINITE_RTOL times
#: its largest magnitude (a PSD matrix's rounding gives ~ −n_f·ε).
INDEFINITE_RTOL = 1e-8


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


class Fault(IntEnum):
    """Per-problem fault codes of one step (0: none). The first failing check is reported."""

    NONE = 0
    G_NONFINITE = 1
    G_TOO_LARGE = 2
    H_NONFINITE = 3
    H_TOO_LARGE = 4
    C_NONFINITE = 5
    C_TOO_LARGE = 6
    W_NONFINITE = 7
    W_TOO_LARGE = 8
    G_ASYMMETRIC = 9
    C_NEGATIVE = 10
    M_INVALID = 11
    BOUNDS_EXCLUDE = 12
    G_MEM_INDEFINITE = 13
    RESULT_NONFINITE = 14
    LAMBDA_ABOVE_MAX = 15


_ARRAY_FAULTS = {"G": (Fault.G_NONFINITE, Fault.G_TOO_LARGE), "H": (Fault.H_NONFINITE, Fault.H_TOO_LARGE),
                 "c": (Fault.C_NONFINITE, Fault.C_TOO_LARGE), "W": (Fault.W_NONFINITE, Fault.W_TOO_LARGE)}


def fault_error(code: int, problem: int, config: SolverConfig, Lambda_prev: float, backend: str = "") -> Exception:
    """The exception (ValueError naming the argument, FloatingPointError for the result) of ``code``."""
    code = Fault(code)
    where = f" (problem {problem})"
    for name, (nonfinite, too_large) in _ARRAY_FAULTS.items():
        if code == nonfinite:
            return ValueError(f"{name} contains NaN or Inf{where}")
        if code == too_large:
            return ValueError(f"{name} has entries beyond ±{MAX_ABS:g}; rescale the data (the kernels square them){where}")
    if code == Fault.G_ASYMMETRIC:
        return ValueError(f"G must be symmetric (max|G − Gᵀ| <= {SYMMETRY_RTOL:g}·max|G|); it is β² Z Zᵀ{where}")
    if code == Fault.C_NEGATIVE:
        return ValueError(f"c must be non-negative (it is β²‖C_k‖²){where}")
    if code == Fault.M_INVALID:
        return ValueError(f"m must be positive and finite in every problem{where}")
    if code == Fault.BOUNDS_EXCLUDE:
        return ValueError(
            f"the bounds exclude every λ for problem {problem}: Lambda_bounds={config.Lambda_bounds}, "
            f"lambda_bounds={config.lambda_bounds}, Λ_(k-1)={Lambda_prev}"
        )
    if code == Fault.LAMBDA_ABOVE_MAX:
        return ValueError(
            f"state: Λ_(k-1)={Lambda_prev} exceeds Lambda_max={config.Lambda_bounds[1]} for problem {problem}; the "
            f"step would have to take λ ≈ −Λ_(k-1) and scale the weights by ~Λ_(k-1)/Lambda_max (start from "
            f"Lambda0 <= Lambda_max)"
        )
    if code == Fault.G_MEM_INDEFINITE:
        return ValueError(
            f"G: G_mem = G + the stored memory is not positive semidefinite for problem {problem} (an eigenvalue "
            f"below −{INDEFINITE_RTOL:g}·max|eigenvalue|); G must be a Gram matrix β² Z Zᵀ"
        )
    return FloatingPointError(f"backend {backend!r} produced non-finite weights{where}; state left unchanged")


def first_fault(checks: list[tuple[Fault, torch.Tensor]], batch: int, device: torch.device) -> torch.Tensor:
    """[B] int64 codes: for each problem the first check in ``checks`` whose [B] mask is True."""
    codes = torch.zeros(batch, dtype=torch.int64, device=device)
    for code, mask in reversed(checks):
        codes = torch.where(mask, torch.full_like(codes, int(code)), codes)
    return codes


def raise_first(codes: torch.Tensor, config: SolverConfig, Lambda_prev: torch.Tensor, backend: str = "") -> None:
    """Raise the fault of the first faulty problem in ``codes`` [B] (host synchronisation)."""
    bad = torch.nonzero(codes).flatten().tolist()
    if bad:
        b = bad[0]
        raise fault_error(int(codes[b]), b, config, float(Lambda_prev[b]), backend)


def check_layout(name: str, x: torch.Tensor, shape: tuple[int, ...], shape_doc: str, device: torch.device) -> None:
    """dtype float64, exact shape, C-contiguous, on ``device``, not a negated view (metadata only)."""
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


def largest_magnitude(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """max |x| over all of x (a 0-d tensor) or over ``dim``, NaN where x has a NaN.

    One read-only pass (``aminmax``; both extremes propagate NaN), where ``x.abs().max()`` writes
    a temporary of x's size first: on a memory-bound machine that is ~3× the time (a 1 MB block of
    features: 35 µs against 105–135 µs), and a step checks several such blocks.
    """
    lo, hi = torch.aminmax(x) if dim is None else torch.aminmax(x, dim=dim)
    return torch.maximum(hi, -lo)


def value_checks(name: str, x: torch.Tensor) -> tuple[list[tuple[Fault, torch.Tensor]], torch.Tensor]:
    """[B] masks: x [B, ...] has NaN/Inf, or entries beyond ±MAX_ABS (the kernels square them);
    and max |x| per problem [B] (NaN where x has a NaN: amax propagates it)."""
    largest = largest_magnitude(x.reshape(x.shape[0], -1), dim=1)
    nonfinite, too_large = _ARRAY_FAULTS[name]
    return [(nonfinite, ~torch.isfinite(largest)), (too_large, largest > MAX_ABS)], largest


def asymmetry(G: torch.Tensor) -> torch.Tensor:
    """[B] max |G − Gᵀ| over each G [n, n], in row blocks so the temporary stays small (~32 MB)
    next to G itself: validation must not be what runs out of memory."""
    B, n = G.shape[0], G.shape[-1]
    rows = max(1, min(n, (1 << 22) // max(1, B * n)))
    worst = G.new_zeros(B)
    for i in range(0, n, rows):
        block = G[:, i : i + rows, :] - G[:, :, i : i + rows].mT
        worst = torch.maximum(worst, block.abs().flatten(1).amax(1))
    return worst


def residual_counts(m: Any, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """m_k as a [B] float64 tensor, and the [B] mask of non-positive or non-finite entries.

    m: a number (Python or numpy, int or float; checked at once), or a 0-d or [B] numpy array
    or tensor of any real dtype (values checked through the mask).
    """
    if isinstance(m, (bool, np.bool_)):
        raise TypeError("m must be a positive number or a [B] array, got a bool")
    if isinstance(m, (numbers.Real, np.integer, np.floating)):
        value = float(m)
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"m must be positive and finite, got {m}")
        t = torch.full((batch,), value, dtype=torch.float64, device=device)
        return t, torch.zeros(batch, dtype=torch.bool, device=device)
    if isinstance(m, np.ndarray):
        if m.dtype.kind not in "iuf":
            raise TypeError(f"m must be real (integer or float), got dtype {m.dtype}")
        m = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float64))
    if not isinstance(m, torch.Tensor):
        raise TypeError(f"m must be a number or a numpy array or torch tensor, got {type(m).__name__}")
    if m.dtype.is_complex or m.dtype == torch.bool:
        raise TypeError(f"m must be real, got {m.dtype}")
    if m.ndim == 0:
        m = m.expand(batch)
    if tuple(m.shape) != (batch,):
        raise ValueError(f"m must be a number or have shape [B] = [{batch}], got {list(m.shape)}")
    t = m.to(device=device, dtype=torch.float64)
    return t, ~(torch.isfinite(t) & (t > 0))


def check_step_inputs(
    state: SlimTikState, config: SolverConfig, G: Any, H: Any, c: Any, m: Any, W: Any
) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Check one step's inputs against the state.

    Returns ((G, H, c, m, W) as [B, ...] tensors, faults [B] int64 ``Fault`` codes). Layout
    errors raise at once (TypeError/ValueError naming the argument); value checks only fill
    ``faults`` (no host synchronisation).
    """
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
    check_layout("G", G_t, (B, nf, nf), "[B, n_f, n_f]", dev)
    check_layout("H", H_t, (B, nt, nf), "[B, n_t, n_f]", dev)
    check_layout("c", c_t, (B,), "[B]", dev)
    check_layout("W", W_t, (B, nt, nf), "[B, n_t, n_f]", dev)
    m_t, m_bad = residual_counts(m, B, dev)
    checks, G_largest = value_checks("G", G_t)
    for name, x in (("H", H_t), ("c", c_t), ("W", W_t)):
        checks += value_checks(name, x)[0]
    checks.append((Fault.G_ASYMMETRIC, asymmetry(G_t) > SYMMETRY_RTOL * G_largest))
    checks.append((Fault.C_NEGATIVE, c_t < 0))
    checks.append((Fault.M_INVALID, m_bad))
    mu_lo, mu_hi = _admissible_interval(state.Lambda, config)
    # Λ_k never exceeds Λ_max after a step, so only a fresh or loaded state can: stepping from it
    # would need λ ≈ −Λ_(k−1), whose λ·W term inflates the weights by ~Λ_(k−1)/Λ_max.
    checks.append((Fault.LAMBDA_ABOVE_MAX, state.Lambda > config.Lambda_bounds[1]))
    checks.append((Fault.BOUNDS_EXCLUDE, mu_lo > mu_hi))
    return (G_t, H_t, c_t, m_t, W_t), first_fault(checks, B, dev)


def result_faults(info: torch.Tensor, W_new: torch.Tensor) -> torch.Tensor:
    """[B] codes found after the step: G_mem clearly indefinite (info's eig_min column), or
    non-finite new weights W_new [B, n_t, n_f]."""
    B = W_new.shape[0]
    return first_fault([(Fault.G_MEM_INDEFINITE, info[:, 5] < -INDEFINITE_RTOL),
                        (Fault.RESULT_NONFINITE, ~torch.isfinite(W_new.reshape(B, -1)).all(1))], B, W_new.device)



def check_block_layout(blocks: Any, G: torch.Tensor) -> None:
    """Raise unless ``blocks`` is a ``BlockLayout`` of G's n_f features (TypeError/ValueError
    naming ``blocks``)."""
    from .backends.boundary import BlockLayout

    if not isinstance(blocks, BlockLayout):
        raise TypeError(f"blocks must be a BlockLayout or None, got {type(blocks).__name__}")
    n_f = G.shape[-1]
    if blocks.n_features != n_f:
        raise ValueError(f"blocks describe {blocks.n_features} features ({list(blocks.sizes)}"
                         f"{' + border' if blocks.border else ''}), but G has n_f = {n_f}")


@functools.lru_cache(maxsize=32)
def _order_tensors(order: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.tensor(order, dtype=torch.long, device=device)
    n = perm.numel()
    return perm, (perm[:, None] * n + perm[None, :]).reshape(-1)


def block_order(blocks: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``blocks.order`` as index tensors on ``device`` (built once per layout): the permutation
    [n_f] and its n_f² flat indices into a row-major matrix (one gather permutes rows and
    columns), or None when the features are in order."""
    return None if blocks.order is None else _order_tensors(blocks.order, device)


@functools.lru_cache(maxsize=32)
def _between_blocks(sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """[n_c, n_c] float64 mask: 1 between different blocks of ``sizes``, 0 on the diagonal blocks."""
    n_c = sum(sizes)
    mask = torch.ones(n_c, n_c, dtype=torch.float64, device=device)
    lo = 0
    for n in sizes:
        mask[lo:lo + n, lo:lo + n] = 0.0
        lo += n
    return mask


def check_between_blocks_zero(blocks: Any, G: torch.Tensor) -> None:
    """ValueError naming G unless G [B, n_f, n_f] (in block order) is exactly zero between
    different blocks of ``blocks`` (one host synchronisation)."""
    n_c = blocks.n_core
    if bool((G[:, :n_c, :n_c] * _between_blocks(blocks.sizes, G.device)).count_nonzero() > 0):
        raise ValueError("G has nonzero entries between different blocks of `blocks`: the block-structured "
                         "step needs them exactly zero (pass blocks=None for a dense G)")
