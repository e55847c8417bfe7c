"""Solver state of sample-side slimTik problems: the memory's scaled feature blocks and their
kernel matrix (method.md §4, §6)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .ring_state import _RingState, as_size

if TYPE_CHECKING:
    from .config import SolverConfig

__all__ = ["SampleSideState"]


class SampleSideState(_RingState):
    """What B sample-side problems carry from step to step (method.md §4, last paragraph; §6).

    Instead of r Gram matrices [n_f, n_f] the memory keeps the last r *scaled feature blocks*
    M_j = β_j Z_j and the kernel matrix of their columns, so a step costs O(n_f·N·n_b + N³) with
    N = (n_stored + 1)·n_b columns, not O(n_f³) (``slimfast.sample_side``).

    Attributes:
        blocks: [B, r·cap, n_f] float64 ring buffer of r slots of ``cap`` samples, one row per
            sample: slot i (rows i·cap …) holds (β_j Z_j)ᵀ in its first ``sizes[i]`` rows and
            zeros after them (a partial batch fills part of a slot). One row-major matrix, so the
            products with all stored blocks are single GEMMs on contiguous rows.
        beta: [B, r] the β_j each slot's block was scaled with (0 for an empty slot).
        sizes: r Python ints, the samples in each slot (0: empty), shared by the B problems.
        kernel: [B, r·cap, r·cap] cache of MᵀM between the stored columns: the entry of column a
            of slot i and column b of slot j sits at (i·cap + a, j·cap + b). Each block is
            written once, when its batch is committed (no running sums, so no drift).
        cap: columns per slot, grown when a larger batch arrives.
        n_stored, head, Lambda [B], step_count: as in ``SlimTikState``.
    """

    kind = "samples"

    def __init__(
        self,
        batch: int,
        n_features: int,
        n_targets: int,
        memory_depth: int = 5,
        Lambda0: float = 0.05,
        device: torch.device | str = "cpu",
        *,
        config: SolverConfig | None = None,
    ) -> None:
        self._init_ring(batch, n_features, n_targets, memory_depth, Lambda0, device, config)
        self.cap = 0
        self.blocks = self.Lambda.new_zeros(self.batch, 0, self.n_features)
        self.beta = self.Lambda.new_zeros(self.batch, self.memory_depth)
        self.kernel = self.Lambda.new_zeros(self.batch, 0, 0)
        self.sizes = [0] * self.memory_depth

    def columns(self) -> list[int]:
        """Indices into the padded r·cap columns of the stored samples, slot by slot."""
        return [i * self.cap + a for i, n in enumerate(self.sizes) for a in range(n)]

    def _resize(self, cap: int) -> None:
        """Re-lay the slots with ``cap`` columns each (cap ≥ every stored size)."""
        B, r, n_f, old = self.batch, self.memory_depth, self.n_features, self.cap
        keep = min(old, cap)
        blocks = self.blocks.new_zeros(B, r, cap, n_f)
        blocks[:, :, :keep] = self.blocks.reshape(B, r, old, n_f)[:, :, :keep]
        kernel = self.kernel.new_zeros(B, r, cap, r, cap)
        kernel[:, :, :keep, :, :keep] = self.kernel.reshape(B, r, old, r, old)[:, :, :keep, :, :keep]
        self.blocks, self.kernel, self.cap = blocks.reshape(B, r * cap, n_f), kernel.reshape(B, r * cap, r * cap), cap

    def slot(self, i: int) -> torch.Tensor:
        """View [B, n_f, cap] of slot i (its block β_jZ_j, zero-padded) inside ``blocks``."""
        return self.blocks[:, i * self.cap:(i + 1) * self.cap].mT

    def commit(self, Mz: torch.Tensor, beta: torch.Tensor, cross: torch.Tensor, Lambda_new: torch.Tensor) -> None:
        """Record a completed step: store Mz = β_k Z_k [B, n_f, n_b] in slot ``head`` (dropping the
        oldest), with its kernel entries ``cross`` [B, r·cap_old, n_b] = (stored blocks)ᵀ Mz plus
        MzᵀMz (``cross`` rows of the overwritten slot are ignored), and Λ_k [B]."""
        r = self.memory_depth
        if r > 0:
            n_b, old = Mz.shape[-1], self.cap
            gram = cross[:, -n_b:]
            cross = cross[:, :-n_b].reshape(self.batch, r, old, n_b)
            if n_b > self.cap:
                self._resize(n_b)
            h, cap = self.head, self.cap
            self.slot(h)[:, :, :n_b] = Mz
            if n_b < cap:
                self.slot(h)[:, :, n_b:] = 0.0
            self.beta[:, h] = beta
            self.sizes[h] = n_b
            # Kernel entries of the new block with every slot (its own slot: MzᵀMz), written to its
            # columns and, transposed, to its rows; both from one source, never from K itself.
            col = Mz.new_zeros(self.batch, r, cap, n_b)
            col[:, :, :old] = cross
            col[:, h] = 0.0
            col[:, h, :n_b] = gram
            K = self.kernel.view(self.batch, r, cap, r, cap)
            K[:, :, :, h] = 0.0
            K[:, h] = 0.0
            K[:, :, :, h, :n_b] = col
            K[:, h, :n_b] = col.permute(0, 3, 1, 2)
            self.head = (h + 1) % r
            self.n_stored = min(self.n_stored + 1, r)
        self.Lambda.copy_(Lambda_new)
        self.step_count += 1

    def snapshot(self) -> tuple[Any, ...]:
        """What the next ``commit`` overwrites, for ``restore``: O(B·(n_f·cap + (r·cap)²)) copies."""
        slot = (self.slot(self.head).clone(), self.beta.clone(), self.kernel.clone()) if self.memory_depth else None
        return slot, self.cap, list(self.sizes), self.Lambda.clone(), self.n_stored, self.head, self.step_count

    def restore(self, snap: tuple[Any, ...]) -> None:
        """Undo the commits since ``snap = snapshot()`` (at most one)."""
        slot, cap, sizes, Lambda, n_stored, head, step_count = snap
        if slot is not None:
            if self.cap != cap:
                self._resize(cap)
            self.slot(head).copy_(slot[0])
            self.beta.copy_(slot[1])
            self.kernel.copy_(slot[2])
        self.sizes, self.n_stored, self.head, self.step_count = sizes, n_stored, head, step_count
        self.Lambda.copy_(Lambda)

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "batch": self.batch, "n_features": self.n_features, "n_targets": self.n_targets,
            "memory_depth": self.memory_depth, "cap": self.cap, "blocks": self.blocks.clone(),
            "beta": self.beta.clone(), "sizes": list(self.sizes), "kernel": self.kernel.clone(),
            "n_stored": self.n_stored, "head": self.head, "Lambda": self.Lambda.clone(), "step_count": self.step_count,
        }

    @staticmethod
    def check_state_dict(state: Any, config: SolverConfig | None = None) -> None:
        """ValueError naming the field unless ``state`` is a consistent saved sample-side state:
        sizes, tensors of the right shapes and finite, 0 ≤ sizes[i] ≤ cap, n_stored = number of
        filled slots, head a slot, β ≥ 0, the kernel equal to the blocks' MᵀM (1e-10 relative: a
        corrupted cache would silently change every later step), Λ as in ``SlimTikState``."""
        if not isinstance(state, dict) or state.get("kind") != SampleSideState.kind:
            raise ValueError("sample-side solver state must be a dict with kind='samples'")
        missing = [k for k in ("batch", "n_features", "n_targets", "memory_depth", "cap", "blocks", "beta", "sizes",
                               "kernel", "n_stored", "head", "Lambda", "step_count") if k not in state]
        if missing:
            raise ValueError(f"solver state lacks {', '.join(missing)}")
        B, n_f = as_size("batch", state["batch"], 1), as_size("n_features", state["n_features"], 1)
        as_size("n_targets", state["n_targets"], 1)
        r, cap = as_size("memory_depth", state["memory_depth"], 0), as_size("cap", state["cap"], 0)
        for name, shape in (("blocks", (B, r * cap, n_f)), ("beta", (B, r)), ("kernel", (B, r * cap, r * cap)),
                            ("Lambda", (B,))):
            x = state[name]
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                raise ValueError(f"solver state field {name} must be a floating-point tensor, got "
                                 f"{getattr(x, 'dtype', type(x).__name__)}")
            if tuple(x.shape) != shape:
                raise ValueError(f"solver state field {name} must have shape {list(shape)}, got {list(x.shape)}")
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"solver state field {name} contains NaN or Inf")
        sizes = state["sizes"]
        if not isinstance(sizes, (list, tuple)) or len(sizes) != r:
            raise ValueError(f"solver state field sizes must be a list of memory_depth={r} integers")
        sizes = [as_size("sizes", n, 0) for n in sizes]
        if any(n > cap for n in sizes):
            raise ValueError(f"solver state field sizes={sizes} exceeds cap={cap}")
        if any(bool((state["blocks"][:, i * cap + n:(i + 1) * cap] != 0).any()) for i, n in enumerate(sizes)):
            raise ValueError("solver state field blocks has nonzero rows beyond a slot's size")
        n_stored, head = as_size("n_stored", state["n_stored"], 0), as_size("head", state["head"], 0)
        as_size("step_count", state["step_count"], 0)
        if n_stored != sum(n > 0 for n in sizes):
            raise ValueError(f"solver state field n_stored={n_stored} differs from the {sum(n > 0 for n in sizes)} "
                             "filled slots")
        if head >= max(r, 1):
            raise ValueError(f"solver state field head={head} is not a slot of memory_depth={r}")
        if bool((state["beta"] < 0).any()):
            raise ValueError("solver state field beta is negative")
        M = state["blocks"].to(torch.float64).mT
        K = state["kernel"].to(torch.float64)
        scale = float(K.abs().max()) if K.numel() else 0.0
        if K.numel() and float((M.mT @ M - K).abs().max()) > 1e-10 * max(scale, 1e-300):
            raise ValueError("solver state field kernel is not the blocks' kernel matrix MᵀM")
        from .state import SlimTikState   # the Gram-side state imports this module

        SlimTikState.check_state_dict({"batch": B, "n_features": n_f, "n_targets": state["n_targets"],
                                       "memory_depth": 0, "memory": state["Lambda"].new_zeros(B, 0, n_f, n_f),
                                       "n_stored": 0, "head": 0, "Lambda": state["Lambda"],
                                       "step_count": state["step_count"]}, config)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore exactly (float64 stays float64) onto this state's device; checked first."""
        self.check_state_dict(state)
        self._check_sizes_match(state)
        opts: dict[str, Any] = dict(device=self.device, dtype=torch.float64)
        self.blocks, self.beta = state["blocks"].to(**opts).clone(), state["beta"].to(**opts).clone()
        self.kernel, self.Lambda = state["kernel"].to(**opts).clone(), state["Lambda"].to(**opts).clone()
        self.cap, self.sizes = int(state["cap"]), [int(n) for n in state["sizes"]]
        self.n_stored, self.head, self.step_count = int(state["n_stored"]), int(state["head"]), int(state["step_count"])

    def __repr__(self) -> str:
        return (f"SampleSideState(batch={self.batch}, n_features={self.n_features}, n_targets={self.n_targets}, "
                f"memory_depth={self.memory_depth}, sizes={self.sizes}, step_count={self.step_count})")
