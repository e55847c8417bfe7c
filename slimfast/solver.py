"""Batched functional API: one slimTik step with sGCV for B independent problems.

    state = SlimTikState(batch=B, n_features=n_f, n_targets=n_t, memory_depth=5)
    W, info = slimtik_step(state, G, H, c, m, W)

The step works on the sufficient statistics of method.md §4, so its cost is independent of
the batch size n_b and of how the statistics were formed (dense layer, convolution, or an
all-reduce across ranks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import torch

from ._torch_impl import INFO_FIELDS
from .backends import resolve_backend
from .backends.boundary import BlockLayout
from .config import SolverConfig
from .state import SlimTikState
from .validation import (
    block_order, check_between_blocks_zero, check_block_layout, check_step_inputs, raise_first, result_faults,
)

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class StepInfo(Generic[ArrayT]):
    """Per-problem record of one step; every field is [B] (float64 unless stated).

    Attributes:
        lambda_: λ_k chosen this step (may be negative).
        Lambda: Λ_k = Λ_{k−1} + λ_k.
        sgcv: sampled GCV value at λ_k.
        rel_residual: ‖β(W_k Z_k − C_k)‖ / ‖β C_k‖ on the current batch (0 when C_k = 0).
        cond: (s_max + Λ_k)/(s_min + Λ_k), the condition number of G_mem + Λ_k I.
        eig_min: smallest eigenvalue of G_mem over its largest magnitude, before clipping at 0
            (rounding-level negative for a PSD G_mem).
        faults: int64 ``validation.Fault`` codes, 0 where the problem's step was applied (always
            0 with ``validate="eager"``, which raises instead).
        backend: name of the backend that computed the step.

    The float fields are columns of one [B, 6] tensor (views, no copies).
    """

    lambda_: ArrayT
    Lambda: ArrayT
    sgcv: ArrayT
    rel_residual: ArrayT
    cond: ArrayT
    eig_min: ArrayT
    faults: ArrayT
    backend: str
    config: SolverConfig | None = None
    Lambda_prev: ArrayT | None = None

    def check(self) -> None:
        """Raise the deferred error of ``validate="lazy"`` (ValueError naming the argument, or
        FloatingPointError for non-finite weights) if a problem was rejected. Synchronises."""
        faults = torch.as_tensor(self.faults)
        if self.config is not None and bool(faults.any()):
            raise_first(faults, self.config, torch.as_tensor(self.Lambda_prev), self.backend)


def _like(x: torch.Tensor, numpy_out: bool) -> Any:
    return x.numpy() if numpy_out else x


def _is_allocation_failure(exc: BaseException) -> bool:
    """True for torch's "out of memory" errors (CPU allocator failures are plain RuntimeErrors)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return "can't allocate memory" in text or "not enough memory" in text


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
    validate: Literal["eager", "lazy"] = "eager",
    blocks: BlockLayout | None = None,
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
        validate: "eager" (default) raises every error before the state changes; "lazy" never
            synchronises with the host (on CUDA with the ``cuda`` backend the step is then fully
            asynchronous): value errors are recorded per problem in ``info.faults`` and raised by
            ``info.check()``; a rejected problem keeps its weights (W_new = W), its memory sum
            and Λ, while the state's step counter and ring position advance for all problems.
        blocks: the Gram matrices' structure (``BlockLayout``: contiguous diagonal blocks, then
            optionally one border feature such as a bias), or None. With it the step solves per
            block (method.md §6 "Phase blocks": the same W_new, λ and sGCV to rounding, at
            O(Σ n_p³) instead of O(n_f³)); entries of G between blocks must be exactly zero
            (checked with ``validate="eager"``). ``cond`` and ``eig_min`` then describe the
            diagonal blocks (and the border's corner). Backends with a block step (module
            attribute ``BLOCK_STEP``): every library backend (cpp, cuda, numba, torch); a backend
            without one would take its dense step (the same W_new, λ and sGCV to rounding).

    All arrays are float64, C-contiguous, numpy or torch (CPU or CUDA, on the state's
    device); the results have the type of ``W``. Bad input raises TypeError/ValueError naming
    the argument, before anything is computed; so do a non-symmetric G and a clearly indefinite
    G_mem = G + memory (smallest eigenvalue below −INDEFINITE_RTOL·max|eigenvalue|, found by the
    step's own eigendecomposition). A failed allocation raises MemoryError. In every case the
    state is unchanged and a later call may succeed.

    Returns:
        (W_new [B, n_t, n_f], StepInfo with [B] fields).
    """
    config = config if config is not None else SolverConfig()
    if validate not in ("eager", "lazy"):
        raise ValueError(f"validate must be 'eager' or 'lazy', got {validate!r}")
    numpy_out = isinstance(W, np.ndarray)
    try:
        (G_t, H_t, c_t, m_t, W_t), faults = check_step_inputs(state, config, G, H, c, m, W)
        order = None
        if blocks is not None:
            check_block_layout(blocks, G_t)
            order = block_order(blocks, G_t.device)
        name, module = resolve_backend(backend, state.device)
        if validate == "eager":
            raise_first_if_any(faults, config, state.Lambda, name)
        inputs = (G_t, H_t, c_t, m_t, W_t) if validate == "eager" else _neutralised(faults, G_t, H_t, c_t, m_t, W_t)
        G_mem = state.memory_gram(inputs[0])
        block = _block_options(module, state, G_mem, config, validate, blocks)
        if blocks is not None and not getattr(module, "BLOCK_STEP", False):
            # No block step compiled for this backend yet: its dense step gives the same W_new, λ
            # and sGCV to rounding (cond and eig_min then of the whole G_mem).
            if validate == "eager":
                G_blk = G_t if order is None else G_t.reshape(G_t.shape[0], -1).index_select(1, order[1]).reshape(
                    G_t.shape)
                check_between_blocks_zero(blocks, G_blk)
            blocks = None
        if blocks is None:
            W_new, info = module.slimtik_step(G_mem, *inputs, state.Lambda, state.memory_empty, config, **block)
        else:
            W_new, info = _blocked_step(module, blocks, order, G_mem, inputs, state, config, validate == "eager")
    except RuntimeError as exc:
        if _is_allocation_failure(exc):
            raise MemoryError(f"slimtik_step could not allocate its workspace (state unchanged): {exc}") from exc
        raise
    # Never let a numerical failure or an indefinite G_mem reach the caller's weights or the memory.
    faults = torch.where(faults == 0, result_faults(info, W_new), faults)
    Lambda_prev = state.Lambda.clone()
    if validate == "eager":
        raise_first_if_any(faults, config, Lambda_prev, name)
        ok = None
    else:
        ok = faults == 0
        W_new = torch.where(ok[:, None, None], W_new, W_t)
    state.commit(G_t, info[:, 1], applied=ok)
    if "U_out" in block:
        state.keep_eigenvectors(block["U_out"], applied=ok)
    fields = {f: _like(info[:, i], numpy_out) for i, f in enumerate(INFO_FIELDS)}
    record = StepInfo(backend=name, faults=_like(faults, numpy_out), config=config,
                      Lambda_prev=_like(Lambda_prev, numpy_out), **fields)
    return _like(W_new, numpy_out), record


def _blocked_step(module: Any, blocks: BlockLayout, order: tuple[torch.Tensor, torch.Tensor] | None,
                  G_mem: torch.Tensor, inputs: tuple[torch.Tensor, ...], state: SlimTikState, config: SolverConfig,
                  check_zeros: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The backend's block-structured step on the features permuted into block order (``order``:
    ``validation.block_order``, None when they are in order already), weights permuted back."""
    G, H, c, m, W = inputs
    perm = None
    if order is not None:
        perm, flat = order
        shape = G.shape
        G_mem = G_mem.reshape(shape[0], -1).index_select(1, flat).reshape(shape)
        G = G.reshape(shape[0], -1).index_select(1, flat).reshape(shape)
        H, W = H.index_select(2, perm), W.index_select(2, perm)
    if check_zeros:
        check_between_blocks_zero(blocks, G)
    W_blk, info = module.slimtik_step(G_mem, G, H, c, m, W, state.Lambda, state.memory_empty, config,
                                      blocks.contiguous())
    if perm is None:
        return W_blk, info
    W_new = torch.empty_like(W_blk)
    W_new[:, :, perm] = W_blk
    return W_new, info


def _block_options(module: Any, state: SlimTikState, G_mem: torch.Tensor, config: SolverConfig,
                   validate: str, blocks: BlockLayout | None) -> dict[str, Any]:
    """What a backend running the CUDA block code (``module.BLOCK_CODE``) keeps in the state: the
    previous step's eigenvectors of G_mem as the Jacobi warm start (only the speed depends on
    them), a buffer for this step's, and a workspace reused across steps (no allocation by the
    kernel, none by torch once it is large enough). With ``validate="lazy"`` the eigensolver is
    the kernel's own Jacobi: cuSOLVER (the "auto" choice for a few large problems) synchronises."""
    if not getattr(module, "BLOCK_CODE", False):
        return {}
    if blocks is not None:   # the block-structured step keeps no eigenvectors of its own
        return {}
    size = max(1, module.workspace_size(state.batch, state.n_features, state.n_targets, config, state.memory_empty))
    ws = state.workspace
    if ws is None or ws.numel() < size or ws.device != G_mem.device:
        # NaN, so that a kernel reading scratch it has not written shows up in its results.
        ws = state.workspace = torch.full((size,), float("nan"), dtype=torch.float64, device=G_mem.device)
    options = {"U0": state.eigenvectors, "U_out": torch.empty_like(G_mem), "workspace": ws}
    if validate == "lazy":
        options["eigensolver"] = "jacobi"
    return options


def _neutralised(faults: torch.Tensor, G: torch.Tensor, H: torch.Tensor, c: torch.Tensor, m: torch.Tensor,
                 W: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The inputs with every faulty problem replaced by a harmless one (G = I, H = W = 0, c = 0,
    m = 1), so that NaN or garbage never reaches a backend; its result is discarded anyway."""
    bad = faults != 0
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    return (torch.where(bad[:, None, None], eye, G), torch.where(bad[:, None, None], 0.0, H),
            torch.where(bad, 0.0, c), torch.where(bad, 1.0, m), torch.where(bad[:, None, None], 0.0, W))


def raise_first_if_any(faults: torch.Tensor, config: SolverConfig, Lambda_prev: torch.Tensor, backend: str) -> None:
    """Eager validation: one host synchronisation, then the first fault's error if there is one."""
    if bool(faults.any()):
        raise_first(faults, config, Lambda_prev, backend)
