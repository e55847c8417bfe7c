"""Fused small-head step: one compiled call per ``SlimTik.step`` for an ``nn.Linear`` head.

``SlimTik.step`` takes this path first when the head is ``nn.Linear`` on the CPU, the solver
backend is ``cpp`` and the run is not data parallel. One call of ``slimfast._cpu.FusedLinearStep``
(``csrc/cpu/fused_head_cpu.h``) then does what the general path does in ~40 small torch ops:

    G = β² Z̄ᵀ Z̄  [n_f, n_f],   H = β² Cᵀ Z̄  [n_t, n_f],   c = β² ‖C‖²,   m = rows · n_t

from the features Z [rows, n_in] (Z̄ = [Z, 1] with a bias) and target C [rows, n_t] read in their
own dtype (float64, float32, bfloat16, float16) and strides, β² = 1/m ("mean") or 1 ("sum") as
in ``slimfast.heads``; the value checks of ``slimtik_step``; the step

    W_k = W_{k−1} − (W_{k−1} G − H + λ_k W_{k−1}) (G_mem + Λ_k I)⁻¹,   Λ_k = Λ_{k−1} + λ_k

through the same launcher (``slimtik_step_cpu``); the state's commit (G into the ring slot, Λ_k)
and W_k in the head's dtype (float64 or float32). The results are the general path's up to the
summation order of the statistics: here every entry of G and H is a sequential sum over the rows
(and c over C in row-major order), where the general path's GEMMs block their sums. The float64
torch twin ``_fused_linear_step`` sums in exactly this order, so kernel and twin agree to the
solver's rounding, and a general path given the twin's statistics agrees bit for bit.

Layout checks (``check_head_inputs``, dtypes, strides, the state's buffers) run once per layout
(shape, stride, dtype and device of features, target, weight and bias) and are cached per
``SlimTik``. A batch the kernel rejects (NaN/Inf, statistics or weights beyond ±MAX_ABS, bounds
that exclude every λ, a LAPACK failure, an indefinite G_mem, weights that overflow the head's
dtype) writes nothing; the general path then runs on it and raises or skips exactly as before.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.autograd.graph import increment_version

from ._torch_impl import _slimtik_step
from .backends import load_backend, picks_cpp
from .config import SolverConfig
from .distributed import use_data_parallel
from .heads import Reduction, check_head_inputs
from .sample_side_head import steps_on_samples
from .validation import INDEFINITE_RTOL, MAX_ABS

from .step_record import SlimTikInfo

if TYPE_CHECKING:
    from .optim import SlimTik

logger = logging.getLogger("slimfast")

__all__ = ["ENABLED", "FUSED_MAX_WORK", "compiled_record", "fused_linear_statistics", "fused_step"]

F64 = torch.float64

#: Set to False to send every step through the general path (for comparisons).
ENABLED: bool = True
#: Largest rows·n_f·(n_f/2 + n_t) (multiply-adds of the statistics) taken by the fused path. Its
#: plain loops beat the general path's GEMMs plus torch overhead only for small heads; above this
#: (about 0.5 ms of loops) the general path is as fast (benchmarks/bench_training.py --fused-sizes).
FUSED_MAX_WORK = 1 << 20

_HEAD_DTYPES = {torch.float64: 0, torch.float32: 1}
_DATA_DTYPES = {torch.float64: 0, torch.float32: 1, torch.bfloat16: 2, torch.float16: 3}


class _Layout:
    """What one layout of (features, target, head, state) resolved to: the compiled plan and the
    output buffers, or ``plan=None`` for a layout the fused path does not take."""

    __slots__ = ("key", "plan", "reshape_x", "reshape_y", "w_out", "b_out", "w_out_ptr", "b_out_ptr", "direct",
                 "memory", "Lambda")

    def __init__(self, key: tuple[Any, ...]) -> None:
        self.key = key
        self.plan: Any = None
        self.reshape_x = self.reshape_y = False
        self.w_out = self.b_out = None
        self.w_out_ptr = self.b_out_ptr = 0
        self.direct = False   # the kernel writes the head's own (contiguous) weight and bias
        self.memory = self.Lambda = None   # the state tensors last checked (identity)


#: SlimTik → its cached layout (weak: a deleted optimizer frees its entry; never pickled with it).
_LAYOUTS: weakref.WeakKeyDictionary[Any, _Layout] = weakref.WeakKeyDictionary()


def _cpu_module() -> Any:
    cpp = load_backend("cpp")
    module = getattr(cpp, "_cpu", None)
    return module if module is not None and hasattr(module, "FusedLinearStep") else None


def _as_rows(x: torch.Tensor, width: int) -> tuple[torch.Tensor | None, bool]:
    """x as [rows, width] and whether every step must view it so: a 2-D tensor is read through
    its strides as it is, an N-D one through a view (None when there is none: general path)."""
    if x.ndim == 2:
        return x, False
    try:
        return x.view(-1, width), True
    except RuntimeError:
        return None, True


def _build(slim: SlimTik, features: torch.Tensor, target: torch.Tensor, key: tuple[Any, ...]) -> _Layout:
    """Validate a new layout once: ``check_head_inputs`` raises its usual errors; a layout the
    kernel does not cover gives ``plan=None`` (general path)."""
    entry = _Layout(key)
    head = slim.head
    check_head_inputs(head, features, target, finite=False)
    cpu = _cpu_module()
    weight, bias = head.weight, head.bias
    eligible = (cpu is not None and weight.device.type == "cpu" and weight.dtype in _HEAD_DTYPES
                and (bias is None or bias.dtype == weight.dtype) and features.dtype in _DATA_DTYPES
                and target.dtype in _DATA_DTYPES and not features.is_neg() and not target.is_neg()
                and weight.layout == torch.strided and not weight.is_neg())
    n_in, n_t = head.in_features, head.out_features
    n_f = n_in + (bias is not None)
    rows = features.numel() // n_in
    if not eligible or min(n_in, n_t) < 1 or rows * n_f * (n_f / 2 + n_t) > FUSED_MAX_WORK:
        return entry
    x, entry.reshape_x = _as_rows(features, n_in)
    y, entry.reshape_y = _as_rows(target, n_t)
    if x is None or y is None:
        return entry
    entry.w_out = torch.empty(n_t, n_in, dtype=weight.dtype)
    entry.b_out = torch.empty(n_t, dtype=weight.dtype) if bias is not None else None
    entry.w_out_ptr = entry.w_out.data_ptr()
    entry.b_out_ptr = entry.b_out.data_ptr() if bias is not None else 0
    entry.direct = weight.is_contiguous() and (bias is None or bias.is_contiguous())
    entry.plan = cpu.FusedLinearStep(
        rows, n_in, n_t, bias is not None, slim.reduction == "mean", slim.memory_depth,
        _DATA_DTYPES[x.dtype], x.stride(0), x.stride(1), _DATA_DTYPES[y.dtype], y.stride(0), y.stride(1),
        _HEAD_DTYPES[weight.dtype], weight.stride(0), weight.stride(1), bias.stride(0) if bias is not None else 1,
        MAX_ABS, INDEFINITE_RTOL, cpu.StepOptions(**slim.config.kernel_options()))
    return entry


def _state_ok(entry: _Layout, state: Any, n_f: int, n_t: int, r: int) -> bool:
    """The state's buffers are what the kernel writes through: float64, contiguous, CPU, the
    head's sizes. Checked when the tensors change (identity), not every step."""
    memory, Lambda = state.memory, state.Lambda
    if entry.memory is memory and entry.Lambda is Lambda:
        return True
    ok = (state.batch == 1 and memory.dtype == F64 and Lambda.dtype == F64 and memory.device.type == "cpu"
          and Lambda.device.type == "cpu" and tuple(memory.shape) == (1, r, n_f, n_f) and tuple(Lambda.shape) == (1,)
          and memory.is_contiguous() and Lambda.is_contiguous() and (state.n_features, state.n_targets) == (n_f, n_t))
    entry.memory, entry.Lambda = (memory, Lambda) if ok else (None, None)
    return ok


def fused_step(slim: SlimTik, features: Any, target: Any) -> SlimTikInfo | None:
    """``SlimTik.step`` in one compiled call, or None when the general path must run (another
    head, backend or device, data parallel, a layout the kernel does not cover, or a batch it
    rejected: then nothing has changed). Called by ``SlimTik.step`` after its owner check."""
    head = slim.head
    if not (ENABLED and isinstance(head, nn.Linear) and isinstance(features, torch.Tensor)
            and isinstance(target, torch.Tensor)) or features.layout != torch.strided \
            or target.layout != torch.strided:
        return None
    if steps_on_samples(slim, features):   # a wide head's state holds feature blocks, not Gram matrices
        return None
    if slim._pending:   # unread deferred steps (check_every != 1) keep their order: general path until read
        return None
    weight, bias = head.weight, head.bias
    key = (features.shape, features.stride(), features.dtype, features.device, features.is_neg(), target.shape,
           target.stride(), target.dtype, target.device, target.is_neg(), weight.shape, weight.stride(), weight.dtype, weight.device,
           None if bias is None else (bias.stride(), bias.dtype), slim.reduction, slim.memory_depth, slim.config)
    entry = _LAYOUTS.get(slim)
    if entry is None or entry.key != key:
        entry = _build(slim, features, target, key)
        _LAYOUTS[slim] = entry
    if entry.plan is None or not picks_cpp(slim.backend, weight.device) \
            or use_data_parallel(slim.distributed, slim.process_group):   # the solver's own choice
        return None
    state = slim._ensure_state()
    n_t, n_f = head.out_features, entry.plan.n_features
    if not _state_ok(entry, state, n_f, n_t, slim.memory_depth):
        return None
    w_ptr, b_ptr = weight.data_ptr(), 0 if bias is None else bias.data_ptr()
    direct = entry.direct   # the kernel writes the new weights last, after every check has passed
    res = entry.plan.step(features.data_ptr(), target.data_ptr(), w_ptr, b_ptr, state.memory.data_ptr(),
                          state.n_stored, state.head, state.Lambda.data_ptr(), w_ptr if direct else entry.w_out_ptr,
                          b_ptr if direct else entry.b_out_ptr)
    if res[0]:
        logger.debug("slimtik: fused step declined (fault %d); taking the general path", res[0])
        return None
    if direct:   # written through their pointers: bump their versions as copy_ would, for autograd
        increment_version([weight] if bias is None else [weight, bias])
    else:
        weight.copy_(entry.w_out)
        if bias is not None:
            bias.copy_(entry.b_out)
    _advance(state)
    return compiled_record(slim, res[1:6], target.numel())


def _advance(state: Any) -> None:
    """The counters of ``SlimTikState.commit`` (the kernel wrote the slot and Λ_k)."""
    if state.memory_depth > 0:
        state.head = (state.head + 1) % state.memory_depth
        state.n_stored = min(state.n_stored + 1, state.memory_depth)
    state.step_count += 1


def compiled_record(slim: SlimTik, values: tuple[float, ...], m: int) -> SlimTikInfo:
    """The record of a step a compiled fast path took (cpp), from its (λ, Λ, sGCV, relative
    residual, cond); kept as ``slim``'s last record and appended to its histories."""
    lam, Lam, sgcv, rel, cond = values
    step = slim.solver_state.step_count
    rec = SlimTikInfo(step=step, lambda_=lam, Lambda=Lam, alpha=Lam / step, sgcv=sgcv, rel_residual=rel, cond=cond,
                      m=m, backend="cpp")
    slim._record(rec, tuple(values))
    return rec


# ----------------------------------------------------------------------------- statistics alone

def fused_linear_statistics(head: nn.Linear, features: torch.Tensor, target: torch.Tensor,
                            reduction: Reduction = "mean") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(G [n_f, n_f], H [n_t, n_f], c [], m) of one batch from the compiled kernel's statistics pass
    (twin: ``_fused_linear_statistics``); ValueError naming ``features``/``target`` for bad input,
    RuntimeError when the compiled module lacks the fused kernel."""
    cpu = _cpu_module()
    if cpu is None:
        raise RuntimeError("the compiled CPU module with the fused kernel is not available")
    check_head_inputs(head, features, target, finite=False)
    for name, x in (("features", features), ("target", target)):
        if x.dtype not in _DATA_DTYPES or x.device.type != "cpu":
            raise ValueError(f"{name} must be a CPU float64/float32/bfloat16/float16 tensor, got {x.dtype} on {x.device}")
    x = features.reshape(-1, head.in_features).resolve_neg()
    y = target.reshape(-1, head.out_features).resolve_neg()
    bias = head.bias is not None
    n_f, n_t = head.in_features + bias, head.out_features
    plan = cpu.FusedLinearStep(x.shape[0], head.in_features, n_t, bias, reduction == "mean", 0,
                               _DATA_DTYPES[x.dtype], x.stride(0), x.stride(1), _DATA_DTYPES[y.dtype], y.stride(0),
                               y.stride(1), 0, 0, 1, 1, MAX_ABS, INDEFINITE_RTOL,
                               cpu.StepOptions(**SolverConfig().kernel_options()))
    G, H, c = torch.empty(n_f, n_f, dtype=F64), torch.empty(n_t, n_f, dtype=F64), torch.empty((), dtype=F64)
    if plan.statistics(x.data_ptr(), y.data_ptr(), G.data_ptr(), H.data_ptr(), c.data_ptr()):
        bad = [n for n, t in (("features", x), ("target", y)) if not bool(torch.isfinite(t).all())]
        raise ValueError(f"{' and '.join(bad)} contain{'s' if len(bad) == 1 else ''} NaN or Inf")
    return G, H, c, y.numel()


# ----------------------------------------------------------------------------- float64 torch twins

def _fused_linear_statistics(features: torch.Tensor, target: torch.Tensor, bias: bool, reduction: Reduction = "mean"
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Twin of the kernel's statistics pass, in its summation order (float64).

    features [..., n_in], target [..., n_t] → G [n_f, n_f], H [n_t, n_f], c [], m = rows·n_t with
    every entry of G, H a sequential sum over the rows (``cumsum``) and c over C row-major,
    scaled like ``heads._assemble``: G = (G + Gᵀ)·(β²/2), H·β², c·β².
    """
    x = features.detach().to(F64).reshape(-1, features.shape[-1])
    y = target.detach().to(F64).reshape(-1, target.shape[-1])
    if bias:
        x = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
    m = y.numel()
    beta2 = 1.0 / m if reduction == "mean" else 1.0
    G = (x[:, :, None] * x[:, None, :]).cumsum(0)[-1]
    H = (y[:, :, None] * x[:, None, :]).cumsum(0)[-1]
    c = (y * y).reshape(-1).cumsum(0)[-1]
    return (G + G.T).mul_(0.5 * beta2), H.mul(beta2), c.mul(beta2), m


def _fused_linear_step(
    features: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
    memory: torch.Tensor, n_stored: int, Lambda_prev: torch.Tensor, config: SolverConfig, reduction: Reduction = "mean",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Twin of ``FusedLinearStep.step`` (float64 torch; changes nothing).

    Args: the batch (features [..., n_in], target [..., n_t]), the head's weight [n_t, n_in] and
    bias [n_t] (or None), the state's memory [1, r, n_f, n_f] with n_stored filled slots, Λ_{k−1} [1].

    Returns:
        W_k [n_t, n_f] (bias last), info [6] (``_torch_impl.INFO_FIELDS``) and the batch's G
        [n_f, n_f] (what the commit stores in the ring slot).
    """
    G, H, c, m = _fused_linear_statistics(features, target, bias is not None, reduction)
    cols = [weight.detach().to(F64)] + ([bias.detach().to(F64)[:, None]] if bias is not None else [])
    W = torch.cat(cols, dim=1)
    G_mem = G + memory[0, :n_stored].sum(0) if n_stored > 0 else G
    W_new, info = _slimtik_step(G_mem[None], G[None], H[None], c.reshape(1), torch.full((1,), float(m), dtype=F64),
                                W[None], Lambda_prev.reshape(1).to(F64), n_stored == 0, config)
    return W_new[0], info[0], G
