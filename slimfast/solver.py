"""Batched functional API: one slimTik step with sGCV for B independent problems.

    state = SlimTikState(batch=B, n_features=n_f, n_targets=n_t, memory_depth=5)
    W, info = slimtik_step(state, G, H, c, m, W)

The step works on the sufficient statistics of method.md §4, so its cost is independent of
the batch size n_b and of how the statistics were formed (dense layer, convolution, or an
all-reduce across ranks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from ._torch_impl import INFO_FIELDS
from .backends import resolve_backend
from .config import SolverConfig
from .state import SlimTikState
from .validation import check_step_inputs

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class StepInfo(Generic[ArrayT]):
    """Per-problem record of one step; every field is [B] float64.

    Attributes:
        lambda_: λ_k chosen this step (may be negative).
        Lambda: Λ_k = Λ_{k−1} + λ_k.
        sgcv: sampled GCV value at λ_k.
        rel_residual: ‖β(W_k Z_k − C_k)‖ / ‖β C_k‖ on the current batch (0 when C_k = 0).
        cond: (s_max + Λ_k)/(s_min + Λ_k), the condition number of G_mem + Λ_k I.
        backend: name of the backend that computed the step.
    """

    lambda_: ArrayT
    Lambda: ArrayT
    sgcv: ArrayT
    rel_residual: ArrayT
    cond: ArrayT
    backend: str


def _like(x: torch.Tensor, numpy_out: bool) -> Any:
    return x.numpy() if numpy_out else x


def slimtik_step(
    state: SlimTikState,
    G: ArrayT,
    H: ArrayT,
    c: ArrayT,
    m: int | float | ArrayT,
    W: ArrayT,
    *,
    config: SolverConfig | None = None,
    backend: str | None = None,
) -> tuple[ArrayT, StepInfo[ArrayT]]:
    """Advance ``state`` by one slimTik step and return the new weights (method.md §2.3).

        W_k = W_{k−1} − (W_{k−1} G_k − H_k + λ_k W_{k−1}) (G_mem + Λ_k I)^{−1},  Λ_k = Λ_{k−1} + λ_k

    Args:
        state: memory and Λ of the B problems; updated in place only if the step succeeds.
        G: [B, n_f, n_f] β² Z_k Z_kᵀ of the current batch.
        H: [B, n_t, n_f] β² C_k Z_kᵀ.
        c: [B] β² ‖C_k‖².
        m: number of scalar residuals m_k (n_b·n_t for a dense head): a number or [B].
        W: [B, n_t, n_f] current weights W_{k−1}.
        config: λ mode and bounds (default ``SolverConfig()``: sGCV over [1e-7, 1e3]).
        backend: force "cuda", "cpp", "numba" or "torch"; default: best available for the
            tensors' device (environment variable ``SLIMFAST_BACKEND`` also forces).

    All arrays are float64, C-contiguous, numpy or torch (CPU or CUDA, on the state's
    device); the results have the type of ``W``. Bad input raises TypeError/ValueError naming
    the argument, before anything is computed.

    Returns:
        (W_new [B, n_t, n_f], StepInfo with [B] fields).
    """
    config = config if config is not None else SolverConfig()
    numpy_out = isinstance(W, np.ndarray)
    G_t, H_t, c_t, m_t, W_t = check_step_inputs(state, config, G, H, c, m, W)
    name, module = resolve_backend(backend, state.device)
    G_mem = state.memory_gram(G_t)
    W_new, info = module.slimtik_step(G_mem, G_t, H_t, c_t, m_t, W_t, state.Lambda, state.memory_empty, config)
    if not bool(torch.isfinite(W_new).all()):
        # Never let a numerical failure reach the caller's weights or the memory.
        raise FloatingPointError(f"backend {name!r} produced non-finite weights; state left unchanged")
    state.commit(G_t, info[:, 1])
    fields = {f: _like(info[:, i].clone(), numpy_out) for i, f in enumerate(INFO_FIELDS)}
    return _like(W_new, numpy_out), StepInfo(backend=name, **fields)
