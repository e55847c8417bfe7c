"""Data-parallel slimTik: one all-reduce of the sufficient statistics per step (method.md §4).

Every rank forms the statistics of its own shard of the batch, *unscaled*,

    G_r = Z_r Z_rᵀ  [n_f, n_f],   H_r = C_r Z_rᵀ  [n_t, n_f],   c_r = ‖C_r‖²,   m_r = scalar residuals,

(``head_statistics(..., reduction="sum")``), packs them into one flat float64 buffer of

    n_f² + n_t·n_f + 2  doubles  =  8·(n_f² + n_t·n_f + 2) bytes,

sums the buffers with one ``all_reduce`` and scales the sums by the *whole* batch's β²
(1/m with m = Σ_r m_r for ``reduction="mean"``, 1 for ``"sum"``). The result is the statistics
of the concatenated batch, so every rank takes the identical slimTik step and the memory holds
the reduced Gram matrices. The message size depends on the head only — not on the batch size,
the number of ranks or the body (whose gradients DistributedDataParallel all-reduces as usual).

Scaling by the local β² before the reduction would be wrong with ``reduction="mean"``: the sum
of per-shard means is not the whole batch's mean (and is off by the number of ranks even for
equal shards); the last slot of the buffer carries m_r so the global β² is known after the sum.

Sum order differs from one process holding the whole batch (two half GEMMs and an addition
instead of one GEMM), so the statistics agree with it to rounding (~1e-16 relative), not bit
for bit; all ranks receive bit-identical sums from the collective, hence identical weights.

    from slimfast.distributed import all_reduce_statistics
    G, H, c, m = head_statistics(head, z, y, reduction="sum")          # this rank's shard
    G, H, c, m = all_reduce_statistics(G, H, c, m, reduction="mean")   # the whole batch's

``SlimTik(head, distributed=None)`` does exactly this whenever ``torch.distributed`` is
initialised with more than one rank in its process group.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from .heads import Reduction

F64 = torch.float64

__all__ = [
    "all_reduce_statistics", "bytes_per_step", "is_data_parallel", "pack_statistics", "statistics_numel",
    "unpack_statistics", "use_data_parallel",
]


def statistics_numel(n_features: int, n_targets: int) -> int:
    """Number of float64 values in one packed buffer: n_f² + n_t·n_f + 2 (G, H, c, m)."""
    return n_features * n_features + n_targets * n_features + 2


def bytes_per_step(n_features: int, n_targets: int) -> int:
    """Bytes each rank contributes to the one all-reduce of a step: 8·(n_f² + n_t·n_f + 2).

    Independent of the batch size and of the number of ranks. (On the wire a ring all-reduce
    moves about 2·(p−1)/p times this per rank for p ranks.) Examples: peaks head Linear(8→1)
    with bias, n_f = 9, n_t = 1: 736 B; cdr Linear(16→72): n_f = 17, n_t = 72: 12 120 B;
    digits ConvTranspose2d(16→1, 4×4): n_f = 257, n_t = 1: 530 440 B.
    """
    return 8 * statistics_numel(n_features, n_targets)


def pack_statistics(G: torch.Tensor, H: torch.Tensor, c: torch.Tensor, m: int | float | torch.Tensor,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """One flat float64 buffer [G.ravel(), H.ravel(), c, m] on G's device (``out`` reused if given)."""
    n_f, n_t = G.shape[-1], H.shape[0]
    if tuple(G.shape) != (n_f, n_f) or tuple(H.shape) != (n_t, n_f) or c.numel() != 1:
        raise ValueError(f"expected G [n_f, n_f], H [n_t, n_f], c [], got {list(G.shape)}, {list(H.shape)}, "
                         f"{list(c.shape)}")
    numel = statistics_numel(n_f, n_t)
    buf = out if out is not None else torch.empty(numel, dtype=F64, device=G.device)
    if buf.numel() != numel or buf.dtype != F64:
        raise ValueError(f"out must be a float64 buffer of {numel} values")
    buf[: n_f * n_f].copy_(G.reshape(-1))
    buf[n_f * n_f: numel - 2].copy_(H.reshape(-1))
    buf[numel - 2] = c.reshape(())
    buf[numel - 1] = m if not isinstance(m, torch.Tensor) else m.reshape(())
    return buf


def unpack_statistics(buf: torch.Tensor, n_features: int, n_targets: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views (G [n_f, n_f], H [n_t, n_f], c [], m []) into a buffer from ``pack_statistics``."""
    n_f, n_t = n_features, n_targets
    numel = statistics_numel(n_f, n_t)
    if buf.ndim != 1 or buf.numel() != numel:
        raise ValueError(f"buffer must be flat with {numel} values for n_f={n_f}, n_t={n_t}, got {list(buf.shape)}")
    return (buf[: n_f * n_f].view(n_f, n_f), buf[n_f * n_f: numel - 2].view(n_t, n_f), buf[numel - 2],
            buf[numel - 1])


def is_data_parallel(process_group: Any = None) -> bool:
    """True when torch.distributed is initialised and ``process_group`` has more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(process_group) > 1


def use_data_parallel(distributed: bool | None, process_group: Any = None) -> bool:
    """Resolve ``SlimTik(distributed=...)``: None = auto (``is_data_parallel``), True = required."""
    if distributed is None:   # is_data_parallel, one call less: the fast head paths ask every step
        return dist.is_available() and dist.is_initialized() and dist.get_world_size(process_group) > 1
    if distributed:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("distributed=True but torch.distributed is not initialised "
                               "(call torch.distributed.init_process_group first)")
        return True
    return False


def all_reduce_statistics(
    G: torch.Tensor, H: torch.Tensor, c: torch.Tensor, m: int | float | torch.Tensor,
    reduction: Reduction = "mean", process_group: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The whole batch's (G, H, c, m) from this rank's *unscaled* sums: one ``all_reduce``.

    Args:
        G, H, c, m: this rank's statistics from ``head_statistics(..., reduction="sum")``
            (β² = 1): Z Zᵀ, C Zᵀ, ‖C‖² and the number of scalar residuals m_r.
        reduction: scaling of the result: "mean" (β² = 1/Σ_r m_r) or "sum" (β² = 1).
        process_group: the group to reduce over (default: the world).

    Returns:
        (G, H, c, m) as ``head_statistics(head, whole batch, reduction=reduction)`` would:
        float64 tensors on G's device, m the global count (int). Every rank gets the same
        values bit for bit. Without an initialised process group nothing is communicated and
        the local statistics are scaled (a one-process run).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    n_f, n_t = G.shape[-1], H.shape[0]
    buf = pack_statistics(G.to(F64), H.to(F64), c.to(F64), m)
    if is_data_parallel(process_group):
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=process_group)
    G_s, H_s, c_s, m_s = unpack_statistics(buf, n_f, n_t)
    m_total = int(m_s.item())   # exact: counts stay far below 2**53
    beta2 = 1.0 / m_total if reduction == "mean" else 1.0
    if reduction == "mean":
        G_s.mul_(beta2)
        H_s.mul_(beta2)
        c_s.mul_(beta2)
    return G_s, H_s, c_s, m_total
