"""Fast path of ``SlimTik.step`` for a head solved per phase block (strided ``ConvTranspose2d``, CPU, cpp).

The general path forms the batch's statistics (G [n_f, n_f], H [n_t, n_f], c, m), validates them
as it would a caller's, sums the whole memory G_mem = G + Σ_j G_j, permutes G_mem and G into block
order (``phase_blocks``), checks the zeros between blocks and takes the block step (method.md §6
"Phase blocks"). Here:

* the layout (shapes, strides, dtypes, devices, the head's geometry, the settings) is checked
  once and cached per ``SlimTik``, with the buffers the compiled step reads and writes;
* the statistics are the library's own (``heads.head_statistics``; on the CPU the compiled call,
  which also returns their largest magnitude): symmetric, with exact zeros between blocks by
  construction, so only their values are checked (NaN/Inf, beyond ±MAX_ABS);
* the statistics' large temporaries are buffers kept across steps (``slimfast.workspace``);
* float64/float32 weights and bias are read into block order (with their largest magnitude) and
  the new ones written back (when they all fit the head's dtype) by one compiled call each
  (csrc/cpu/block_gather_cpu.h; twins ``_gather_parameters``, ``_scatter_parameters``), their
  versions bumped as ``copy_`` would; other dtypes go through torch ops;
* only the entries the block step reads, the diagonal blocks and the border row
  (Σ_p n_p² + 2·n_f − 1 of n_f²), are summed over the memory and gathered into block order in
  one compiled pass (csrc/cpu/block_gather_cpu.h),
  the memory's from a packed copy of those entries that each fast step updates in its own slot:

      G_mem[order[i], order[j]] = G[order[i], order[j]] + Σ_j G_j[order[i], order[j]]   for (i, j) in a block or the border

  the same sums in the same order as the general path, so the step is the general path's.

Anything the fast path does not cover or any fault (a non-finite batch or weight, λ bounds that
exclude every step, an indefinite G_mem, weights that do not fit the head's dtype) returns None
before anything has changed: ``SlimTik.step`` then takes the general path, which raises or skips
exactly as before.
"""

from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.autograd.graph import increment_version

from ._torch_impl import N_INFO
from .backends import load_backend, picks_cpp
from .distributed import use_data_parallel
from .fused_head import compiled_record
from .heads import check_head_inputs, params_to_matrix, statistics_and_magnitude
from .phase_blocks import phase_blocks
from .state import SlimTikState
from .validation import INDEFINITE_RTOL, MAX_ABS, largest_magnitude
from .workspace import Workspace

if TYPE_CHECKING:
    from .optim import SlimTik
    from .step_record import SlimTikInfo

__all__ = ["ENABLED", "block_head_step", "block_entries"]

F64 = torch.float64

#: Set to False to send every block step through the general path (for comparisons).
ENABLED: bool = True


def block_entries(order: tuple[int, ...], sizes: tuple[int, ...], border: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the entries a block step reads: (source [K] into a row-major n_f × n_f matrix
    in feature order, destination [K] into the same matrix in block order), for the diagonal blocks
    of ``sizes`` and, with a ``border``, the last row and column. K = Σ_p n_p² (+ 2·n_f − 1)."""
    n = len(order)
    perm = torch.tensor(order, dtype=torch.long)
    rows, cols = [], []
    lo = 0
    for size in sizes:
        idx = torch.arange(lo, lo + size)
        rows.append(idx.repeat_interleave(size))
        cols.append(idx.repeat(size))
        lo += size
    if border:
        last, every = torch.full((n,), n - 1), torch.arange(n)
        rows += [last, every[:-1]]
        cols += [every, last[:-1]]
    i, j = torch.cat(rows), torch.cat(cols)
    return perm[i] * n + perm[j], i * n + j


def parameter_order(head: nn.ConvTranspose2d, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each entry of the head's matrix in block order lives among its parameters: (src, dst)
    [n_t·n_f] with W_blk.flat[k] = params[src[k]] and params[i] = W_blk.flat[dst[i]], where
    params = (weight.flatten(), bias) and W_blk = head_to_matrix(head)[:, perm] (a bijection: the
    bias is W's last column)."""
    n_w = head.weight.numel()
    index_w = torch.arange(n_w, dtype=F64).view(head.weight.shape)
    index_b = None if head.bias is None else torch.arange(n_w, n_w + head.bias.numel(), dtype=F64)
    src = params_to_matrix(head, index_w, index_b).index_select(1, perm).reshape(-1).long()
    return src, torch.argsort(src)


def _gather_block_entries(G: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, packed: torch.Tensor | None,
                          n_stored: int, G_blk: torch.Tensor, G_mem_blk: torch.Tensor, H: torch.Tensor,
                          perm: torch.Tensor, H_blk: torch.Tensor, c: torch.Tensor, c_blk: torch.Tensor) -> torch.Tensor:
    """Float64 twin of ``_cpu.gather_block_entries``: batch [K] = G.flat[src], G_blk.flat[dst] =
    batch, G_mem_blk.flat[dst] = batch + Σ_{j < n_stored} packed[j] (packed [r, K]), H_blk [n_t, n_f]
    = H[:, perm] and c_blk [1] = c; returns batch."""
    batch = G.reshape(-1).index_select(0, src)
    G_blk.view(-1).index_copy_(0, dst, batch)
    G_mem_blk.view(-1).index_copy_(0, dst, batch + packed[:n_stored].sum(0) if n_stored > 0 else batch)
    torch.index_select(H, 1, perm, out=H_blk)
    c_blk.copy_(c.reshape(1))
    return batch


class _Plan:
    """One cached layout: the block layout, the gather indices and the compiled step's buffers."""

    __slots__ = ("key", "ok", "perm", "src", "src_slots", "dst", "batch_entries", "G_mem", "G", "H", "c",
                 "m", "W", "W_out", "info", "info_values", "params", "param_src", "param_dst", "param_dtype",
                 "offsets", "options", "buffers", "Lambda", "module", "workspace", "packed", "packed_of")

    def __init__(self, key: tuple[Any, ...]) -> None:
        self.key = key
        self.ok = False
        self.workspace = Workspace()   # the statistics' temporaries, kept across steps
        self.packed: torch.Tensor | None = None   # [r, K] the memory slots' block entries
        self.packed_of: tuple[Any, ...] | None = None   # the state they were read from (``_memory_mark``)
        self.buffers: dict[bool, Any] = {}
        self.Lambda: torch.Tensor | None = None


#: SlimTik → its cached plan (weak: a deleted optimizer frees its entry; never pickled with it).
_PLANS: weakref.WeakKeyDictionary[Any, _Plan] = weakref.WeakKeyDictionary()


def _build(slim: SlimTik, features: torch.Tensor, target: torch.Tensor, key: tuple[Any, ...]) -> _Plan:
    """Check a new layout once (``check_head_inputs`` raises its usual errors) and allocate the
    buffers; ``ok=False`` for a layout the fast path does not take."""
    plan = _Plan(key)
    head = slim.head
    check_head_inputs(head, features, target, finite=False)
    blocks = phase_blocks(head)
    cpp = load_backend("cpp")
    if blocks is None or cpp is None or not getattr(cpp, "BLOCK_STEP", False) or head.weight.device.type != "cpu" \
            or features.device.type != "cpu" or target.device.type != "cpu" or features.ndim != 4:
        return plan
    n_f, n_t = blocks.n_features, head.out_channels
    order = blocks.order if blocks.order is not None else tuple(range(n_f))
    plan.perm = torch.tensor(order, dtype=torch.long)
    plan.param_src, plan.param_dst = parameter_order(head, plan.perm)
    plan.params = torch.empty(n_t * n_f, dtype=F64)   # (weight.flatten(), bias) of this step, float64
    plan.param_dtype = _parameter_dtype(head)
    plan.src, plan.dst = block_entries(order, blocks.sizes, blocks.border)
    plan.batch_entries = torch.empty(plan.src.numel(), dtype=F64)   # this batch's entries, block order
    # The same entries in every ring slot of the memory [1, r, n_f, n_f], as one flat gather (a
    # gather along the last dimension of [r, n_f²] is several times slower).
    plan.src_slots = (torch.arange(slim.memory_depth)[:, None] * (n_f * n_f) + plan.src).reshape(-1)
    plan.G_mem = torch.zeros(1, n_f, n_f, dtype=F64)   # entries between blocks stay zero
    plan.G = torch.zeros(1, n_f, n_f, dtype=F64)
    plan.H = torch.empty(1, n_t, n_f, dtype=F64)
    plan.W = torch.empty(1, n_t, n_f, dtype=F64)
    plan.c = torch.empty(1, dtype=F64)
    plan.m = torch.full((1,), float(target.numel()), dtype=F64)
    plan.W_out = torch.empty(1, n_t, n_f, dtype=F64)
    plan.info = torch.empty(1, N_INFO, dtype=F64)
    plan.info_values = plan.info[0].numpy()   # the same memory, read as Python floats without torch's overhead
    plan.module = cpp._cpu
    plan.offsets = cpp._block_offsets(blocks.contiguous(), n_f)
    plan.options = cpp._kernel_options(slim.config)
    plan.ok = True
    return plan


#: Parameter dtypes the compiled moves read and write (``_cpu.gather_parameters``; csrc PARAM_*).
_PARAMETER_DTYPES = {torch.float64: 0, torch.float32: 1}


def _parameter_dtype(head: nn.ConvTranspose2d) -> int | None:
    """The compiled moves' code for the head's parameters, or None (torch ops) when they are not
    contiguous float64/float32 tensors of one dtype."""
    weight, bias = head.weight, head.bias
    plain = [p for p in (weight, bias) if p is not None]
    if any(not p.is_contiguous() or p.is_neg() or p.dtype != weight.dtype for p in plain):
        return None
    return _PARAMETER_DTYPES.get(weight.dtype)


def _gather_parameters(weight: torch.Tensor, bias: torch.Tensor | None, src: torch.Tensor
                       ) -> tuple[torch.Tensor, float]:
    """Float64 twin of ``_cpu.gather_parameters``: W [n_p] = params[src] with params =
    (weight.flatten(), bias) as float64, and max |params| (NaN when any is NaN or ±inf)."""
    params = torch.cat([weight.detach().reshape(-1)] + ([bias.detach()] if bias is not None else [])).to(F64)
    largest = float(largest_magnitude(params)) if bool(torch.isfinite(params).all()) else math.nan
    return params.index_select(0, src), largest


def _scatter_parameters(W: torch.Tensor, dst: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Float64 twin of ``_cpu.scatter_parameters``: params = W.flat[dst] in the parameters' dtype
    into weight and bias when all are finite; returns whether they were (else nothing written)."""
    params = W.reshape(-1).index_select(0, dst).to(weight.dtype)
    if not bool(torch.isfinite(params).all()):
        return False
    n_w = weight.numel()
    with torch.no_grad():
        weight.copy_(params[:n_w].view(weight.shape))
        if bias is not None:
            bias.copy_(params[n_w:])
    return True


def _step_buffers(plan: _Plan, state: SlimTikState) -> Any:
    """The compiled step's buffers (data pointers; rebuilt when the state's Λ tensor changes)."""
    if plan.Lambda is not state.Lambda:
        plan.buffers.clear()
        plan.Lambda = state.Lambda
    empty = state.memory_empty
    if empty not in plan.buffers:
        _, n_t, n_f = plan.W.shape
        plan.buffers[empty] = plan.module.StepBuffers(
            1, n_f, n_t, empty, plan.G_mem.data_ptr(), plan.G.data_ptr(), plan.H.data_ptr(), plan.c.data_ptr(),
            plan.m.data_ptr(), plan.W.data_ptr(), state.Lambda.data_ptr(), plan.W_out.data_ptr(), plan.info.data_ptr(),
            0, 0, 0, 0, 0)
    return plan.buffers[empty]


def _state_fits(state: Any, n_f: int, n_t: int) -> bool:
    return (isinstance(state, SlimTikState) and state.batch == 1 and state.device.type == "cpu"
            and (state.n_features, state.n_targets) == (n_f, n_t) and state.memory_storage.dtype == F64
            and state.memory_storage.is_contiguous() and state.Lambda.dtype == F64 and state.Lambda.is_contiguous())


def _memory_mark(state: SlimTikState) -> tuple[Any, ...]:
    """What identifies the memory's contents: the state, its buffer and the counters every
    commit (and every undo of one) moves. Equal marks, equal memory."""
    return id(state), state.memory_storage.data_ptr(), state.step_count, state.head, state.n_stored


def _packed_memory(plan: _Plan, state: SlimTikState) -> torch.Tensor:
    """[r, K] the block entries of every memory slot, in block order: kept contiguous across fast
    steps (each writes its own slot), read anew from the memory [1, r, n_f, n_f] whenever another
    path has changed it (another step, an undo, a loaded state)."""
    mark = _memory_mark(state)
    if plan.packed is None or plan.packed_of != mark:
        r = state.memory_depth
        plan.packed = state.memory.view(-1).index_select(0, plan.src_slots).view(r, -1)
        plan.packed_of = mark
    return plan.packed


def _bounds_admit(state: SlimTikState, config: Any) -> bool:
    """Λ_{k−1} is at most Λ_max (NaN is not) and some λ is admissible (in floats: torch's ops on the
    one problem's [1] tensor cost more)."""
    Lambda = state.Lambda.item()
    if not Lambda <= config.Lambda_bounds[1]:
        return False
    mu_lo, mu_hi = config.admissible_mu(Lambda)
    return mu_lo <= mu_hi


def block_head_step(slim: SlimTik, features: Any, target: Any) -> SlimTikInfo | None:
    """``SlimTik.step`` for a phase-block head with the checks and gathers cut to what it needs, or
    None when the general path must run (nothing has changed then). Called after the owner check."""
    head = slim.head
    if not (ENABLED and slim.block_solve == "auto" and isinstance(head, nn.ConvTranspose2d)
            and isinstance(features, torch.Tensor) and isinstance(target, torch.Tensor)) or slim._pending:
        return None
    weight, bias = head.weight, head.bias
    key = (features.shape, features.stride(), features.dtype, features.device, target.shape, target.stride(),
           target.dtype, target.device, weight.shape, weight.stride(), weight.dtype, weight.device, weight.is_neg(),
           None if bias is None else (bias.stride(), bias.dtype, bias.is_neg()), phase_blocks(head), slim.reduction,
           slim.memory_depth, slim.config)
    plan = _PLANS.get(slim)
    if plan is None or plan.key != key:
        plan = _PLANS[slim] = _build(slim, features, target, key)
    if not plan.ok or not picks_cpp(slim.backend, weight.device) \
            or use_data_parallel(slim.distributed, slim.process_group):   # the solver's own choice
        return None
    state = slim._ensure_state()
    n_t, n_f = plan.W.shape[1:]
    if not _state_fits(state, n_f, n_t) or not _bounds_admit(state, slim.config):
        return None

    G, H, c, m, largest = statistics_and_magnitude(head, features, target, slim.reduction, check=False,
                                                   workspace=plan.workspace)
    n_w, n_p = weight.numel(), plan.W.numel()
    bias_ptr = 0 if bias is None else bias.data_ptr()
    compiled_moves = plan.param_dtype is not None
    if compiled_moves:   # straight into W in block order, with their largest magnitude
        largest_params = plan.module.gather_parameters(weight.data_ptr(), bias_ptr, plan.param_dtype, n_w, n_p,
                                                       plan.param_src.data_ptr(), plan.W.data_ptr())
    else:
        params = plan.params
        if bias is None:
            params.copy_(weight.reshape(-1))
        else:
            torch.cat((weight.reshape(-1), bias), out=params)
        largest_params = float(largest_magnitude(params))
    largest_from_kernel = largest is not None   # the compiled statistics: zero-filled, then the block entries
    if largest is None:
        largest = float(torch.stack([largest_magnitude(G), largest_magnitude(H), c.abs()]).amax())
    if not (largest <= MAX_ABS and largest_params <= MAX_ABS):
        return None   # NaN/Inf or out of range: the general path names the culprit

    packed = _packed_memory(plan, state) if state.memory_depth > 0 else None
    batch_entries = plan.batch_entries
    if H.dtype != F64 or c.dtype != F64:   # the statistics are float64; the compiled gather reads them so
        return None
    G, H = G.contiguous(), H.contiguous()   # the statistics' own buffers: already contiguous
    plan.module.gather_block_entries(G.data_ptr(), plan.src.data_ptr(), plan.dst.data_ptr(), plan.src.numel(),
                                     0 if packed is None else packed.data_ptr(), state.n_stored,
                                     batch_entries.data_ptr(), plan.G.data_ptr(), plan.G_mem.data_ptr(), H.data_ptr(),
                                     plan.perm.data_ptr(), n_t, n_f, plan.H.data_ptr(), c.data_ptr(), plan.c.data_ptr())
    if not compiled_moves:
        torch.index_select(params, 0, plan.param_src, out=plan.W.view(-1))
    plan.module.slimtik_block_step(_step_buffers(plan, state), plan.offsets, plan.options, 0)

    lam, Lam, sgcv, rel, cond, eig_min = plan.info_values.tolist()
    if not eig_min >= -INDEFINITE_RTOL:
        return None
    if compiled_moves:
        if not plan.module.scatter_parameters(plan.W_out.data_ptr(), plan.param_dst.data_ptr(), plan.param_dtype, n_w,
                                              n_p, weight.data_ptr(), bias_ptr):
            return None   # NaN, or beyond the head's dtype (nothing written): the general path raises or skips
        # Written through their pointers: bump their versions as copy_ would, so that autograd
        # still rejects a graph that saved the old values.
        increment_version([weight] if bias is None else [weight, bias])
    else:
        new_params = plan.W_out.view(-1).index_select(0, plan.param_dst).to(weight.dtype)
        if not float(largest_magnitude(new_params)) < math.inf:
            return None   # NaN, or beyond the head's dtype: the general path raises or skips
        # copy_ (not a write through the pointer) so that autograd sees the in-place update.
        weight.copy_(new_params[:n_w].view(weight.shape))
        if bias is not None:
            bias.copy_(new_params[n_w:])
    if packed is None:
        state.commit(G[None], plan.info[:, 1])
    else:   # the slot just written, packed alike: the copy stays the memory's
        packed[state.head].copy_(batch_entries)
        if largest_from_kernel:   # G is +0.0 outside the block entries: the slot is written when read
            state.commit_entries(packed, plan.src, plan.info[:, 1])
        else:
            state.commit(G[None], plan.info[:, 1])
        plan.packed_of = _memory_mark(state)
    return compiled_record(slim, (lam, Lam, sgcv, rel, cond), m)

