"""Solver state for B independent slimTik problems: memory of Gram matrices and Λ."""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .config import SolverConfig

__all__ = ["SampleSideState", "SlimTikState", "as_size", "check_Lambda0", "state_class"]


def as_size(name: str, value: Any, low: int) -> int:
    """``value`` as a Python int ≥ ``low``: ints, numpy integer scalars and 0-d integer arrays or
    tensors are accepted alike (anything with ``__index__``); bool and floats are not."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}") from None
    if out < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return out


def check_Lambda0(Lambda0: Any, config: SolverConfig | None = None, name: str = "Lambda0") -> float:
    """Λ_0 as a float, checked against the bounds it will be stepped with.

    Λ_0 must satisfy 0 ≤ Λ_0 ≤ Λ_max, and the first step's admissible interval
    [max(Λ_min, Λ_0 + λ_min), min(Λ_max, Λ_0 + λ_max)] must not be empty. Λ_0 below Λ_min
    (Λ_0 = 0 included) is allowed: the first step moves Λ into its bounds with λ_1 > 0, which
    only adds regularisation. Λ_0 above Λ_max is not: the first step would need
    λ_1 = μ − Λ_0 ≪ 0, and W_1 = W_0 − (B + λ_1 W_0)(G + μI)⁻¹ then scales W_0 by ≈ Λ_0/Λ_max.
    """
    from .config import SolverConfig

    config = config if config is not None else SolverConfig()
    try:
        value = float(Lambda0)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {Lambda0!r}") from None
    hi = float(config.Lambda_bounds[1])
    if not (0.0 <= value <= hi):
        raise ValueError(f"{name} must lie in [0, Lambda_max={hi:g}], got {value:g} (a larger initial Λ would "
                         f"scale the head's weights by about Λ0/Λ_max = {value / hi:.3g} on the first step)"
                         if value > hi else f"{name} must be finite and >= 0, got {value:g}")
    mu_lo, mu_hi = config.admissible_mu(value)
    if mu_lo > mu_hi:
        raise ValueError(f"{name}={value:g} with lambda_bounds={config.lambda_bounds} leaves no admissible Λ in "
                         f"Lambda_bounds={config.Lambda_bounds} for the first step")
    return value


class _RingState:
    """What both solver states share: the sizes, Λ [B] and the ring counters (n_stored, head,
    step_count), their checks at construction, and loading from a saved dict."""

    def _init_ring(self, batch: Any, n_features: Any, n_targets: Any, memory_depth: Any, Lambda0: Any,
                   device: torch.device | str, config: SolverConfig | None) -> None:
        """Check the sizes and Λ_0 (against ``config``'s bounds when given; see ``SlimTikState``)
        and set them, Λ and empty counters."""
        batch, n_features, n_targets = (as_size(n, v, 1) for n, v in (("batch", batch), ("n_features", n_features),
                                                                      ("n_targets", n_targets)))
        memory_depth = as_size("memory_depth", memory_depth, 0)
        if config is not None:
            Lambda0 = check_Lambda0(Lambda0, config)
        else:
            try:
                Lambda0 = float(Lambda0)
            except (TypeError, ValueError):
                raise ValueError(f"Lambda0 must be a number, got {Lambda0!r}") from None
            if not (0.0 <= Lambda0 < float("inf")):
                raise ValueError(f"Lambda0 must be finite and >= 0, got {Lambda0}")
        self.batch, self.n_features, self.n_targets, self.memory_depth = batch, n_features, n_targets, memory_depth
        self.Lambda = torch.full((batch,), Lambda0, dtype=torch.float64, device=torch.device(device))
        self.n_stored = self.head = self.step_count = 0

    @property
    def device(self) -> torch.device:
        return self.Lambda.device

    @property
    def memory_empty(self) -> bool:
        return self.n_stored == 0

    def _check_sizes_match(self, state: dict[str, Any]) -> None:
        """ValueError unless the saved ``state`` has this state's sizes."""
        for key in ("batch", "n_features", "n_targets", "memory_depth"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(f"state_dict has {key}={state[key]}, this state has {getattr(self, key)}")

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device | str = "cpu") -> Any:
        """A new state on ``device`` holding exactly the saved ``state`` (checked first)."""
        cls.check_state_dict(state)  # type: ignore[attr-defined]
        new = cls(state["batch"], state["n_features"], state["n_targets"], state["memory_depth"], 0.0, device)
        new.load_state_dict(state)  # type: ignore[attr-defined]
        return new


class SlimTikState(_RingState):
    """What one set of B problems carries from step to step (method.md §2).

    Attributes:
        memory: [B, r, n_f, n_f] float64 ring buffer of the last r batch Gram matrices
            β² Z_j Z_jᵀ (each scaled by its own batch's β when it was computed); slots that
            phase-block fast steps committed are written when it is read (``commit_entries``).
        n_stored: how many of the r slots hold a Gram matrix (≤ r).
        head: slot the next Gram matrix is written to.
        Lambda: [B] float64 cumulative regularisation Λ_k.
        step_count: number of completed steps k.

    Sizes may be Python ints, numpy integers or 0-d integer arrays. ``Lambda0`` must be finite
    and ≥ 0; with ``config`` (the ``SolverConfig`` the state will be stepped with) it is also
    checked against its bounds (``check_Lambda0``: ValueError above Λ_max). Without ``config``
    any Λ_0 ≥ 0 is kept, as a state in the middle of a run may hold: the solver then treats it
    as Λ_{k−1} (``SlimTik`` always passes its config).

    The memory Gram matrix is summed from the ring buffer every step rather than kept as a
    running sum: r·n_f² additions cost nothing next to the n_f³ eigendecomposition, and a
    running sum with subtractions drifts over thousands of steps.
    """

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
        self.memory = self.Lambda.new_zeros(self.batch, self.memory_depth, self.n_features, self.n_features)
        self._reset_block_caches()

    # The memory's slots may be written late: ``commit_entries`` (the phase-block fast path, whose
    # Gram matrices are zero outside known entries) keeps the committed values in its own packed
    # copy and writes the slot only when the memory is next read. Copying a whole n_f² Gram matrix
    # (three quarters zeros) every step cost the digits loop ~0.15 ms of 4.3 and the MNIST-shape
    # loop ~0.06 ms; a run that only takes fast steps never reads the memory at all.
    _deferred: tuple[torch.Tensor, torch.Tensor, set[int]] | None = None

    @property
    def memory(self) -> torch.Tensor:
        """[B, r, n_f, n_f] (see the class docstring), with every deferred slot written."""
        if self._deferred is not None:
            self._write_deferred()
        return self._memory

    @memory.setter
    def memory(self, value: torch.Tensor) -> None:
        self._deferred = None   # new contents: nothing older may land on them
        self._memory = value

    @property
    def memory_storage(self) -> torch.Tensor:
        """The memory's buffer as it is, deferred slots not yet written: for identity, dtype and
        layout checks (reading its values needs ``memory``)."""
        return self._memory

    def commit_entries(self, entries: torch.Tensor, index: torch.Tensor, Lambda_new: torch.Tensor) -> None:
        """``commit`` of a Gram matrix that is exactly +0.0 outside the flat positions ``index`` [K]
        of an n_f × n_f matrix (one problem, B = 1), given as ``entries`` [r, K]: every slot's
        values at ``index``, the row of slot ``head`` already this batch's. The slot is written
        (zeros, then the entries) when the memory is next read, from ``entries`` as it is then, so
        the caller keeps ``entries`` current for every slot it defers and replaces it, never edits
        it, otherwise (reading ``memory`` first writes what is pending)."""
        if self.batch != 1 or self.memory_depth == 0 or entries.shape != (self.memory_depth, index.numel()) \
                or not self._memory.is_contiguous():
            raise ValueError(f"commit_entries needs one problem with a contiguous memory and entries [r, K], got "
                             f"batch {self.batch}, memory_depth {self.memory_depth}, entries {list(entries.shape)}")
        pending = self._deferred
        if pending is not None and (pending[0] is not entries or pending[1] is not index):
            self._write_deferred()
            pending = None
        if pending is None:
            pending = self._deferred = (entries, index, set())
        pending[2].add(self.head)
        self.head = (self.head + 1) % self.memory_depth
        self.n_stored = min(self.n_stored + 1, self.memory_depth)
        self.Lambda.copy_(Lambda_new)
        self.step_count += 1

    def _write_deferred(self) -> None:
        entries, index, slots = self._deferred
        self._deferred = None
        flat = self._memory.view(self.memory_depth, -1)
        for slot in sorted(slots):
            flat[slot].zero_()
            flat[slot].index_copy_(0, index, entries[slot])

    def __getstate__(self) -> dict[str, Any]:
        """Pickled and deep-copied with its memory written: the deferred entries belong to the
        fast path's cache, which neither takes along."""
        memory = self.memory
        state = dict(self.__dict__)
        state["_memory"] = memory
        state.pop("_deferred", None)
        return state

    def _reset_block_caches(self) -> None:
        """Caches of the CUDA block code (``solver._block_options``), never saved: G_mem's
        eigenvectors [B, n_f, n_f] of the last step (the next Jacobi's warm start; only the speed
        depends on them) and the kernel's float64 workspace. Dropped whenever the problems change."""
        self.eigenvectors: torch.Tensor | None = None
        self.workspace: torch.Tensor | None = None

    def keep_eigenvectors(self, U: torch.Tensor, applied: torch.Tensor | None = None) -> None:
        """Keep the committed step's eigenvectors U [B, n_f, n_f] of G_mem for the next warm start;
        problems where ``applied`` [B] is False keep their previous ones (I if none). No sync."""
        if applied is not None:
            old = self.eigenvectors
            if old is None:
                old = torch.eye(U.shape[-1], dtype=U.dtype, device=U.device).expand_as(U)
            U = torch.where(applied[:, None, None], U, old)
        self.eigenvectors = U

    def memory_gram(self, G: torch.Tensor) -> torch.Tensor:
        """G_mem [B, n_f, n_f] = G_k + Σ of the stored Gram matrices of earlier batches."""
        if self.n_stored == 0:
            return G
        return G + self.memory[:, : self.n_stored].sum(1) if self.n_stored < self.memory_depth else G + self.memory.sum(1)

    def commit(self, G: torch.Tensor, Lambda_new: torch.Tensor, applied: torch.Tensor | None = None) -> None:
        """Record a completed step: store G_k [B, n_f, n_f] (dropping the oldest) and Λ_k [B].

        ``applied`` [B] bool (optional, no host synchronisation): problems where it is False keep
        their slot's old Gram matrix (so their memory sum is unchanged) and their Λ.
        """
        if applied is not None:
            G = torch.where(applied[:, None, None], G, self.memory[:, self.head]) if self.memory_depth > 0 else G
            Lambda_new = torch.where(applied, Lambda_new, self.Lambda)
        if self.memory_depth > 0:
            self.memory[:, self.head].copy_(G)
            self.head = (self.head + 1) % self.memory_depth
            self.n_stored = min(self.n_stored + 1, self.memory_depth)
        self.Lambda.copy_(Lambda_new)
        self.step_count += 1

    def snapshot(self) -> tuple[Any, ...]:
        """What the next ``commit`` overwrites (the slot it writes, Λ, the counters), for ``restore``:
        O(B·n_f²) copies, so a step can be undone after the solver committed it."""
        slot = self.memory[:, self.head].clone() if self.memory_depth > 0 else None
        return slot, self.Lambda.clone(), self.n_stored, self.head, self.step_count

    def restore(self, snap: tuple[Any, ...]) -> None:
        """Undo the commits since ``snap = snapshot()`` (at most one)."""
        slot, Lambda, self.n_stored, self.head, self.step_count = snap
        if slot is not None:
            self.memory[:, self.head].copy_(slot)
        self.Lambda.copy_(Lambda)

    def undo_where(self, snap: tuple[Any, ...], undo: torch.Tensor) -> None:
        """Undo the values of the commit since ``snap = snapshot()`` (the slot it wrote, Λ) for the
        problems where ``undo`` [B] bool is True, without a host synchronisation; the counters stay."""
        slot, Lambda, _, head, _ = snap
        if slot is not None:
            self.memory[:, head].copy_(torch.where(undo[:, None, None], slot, self.memory[:, head]))
        self.Lambda.copy_(torch.where(undo, Lambda, self.Lambda))

    def select(self, rows: Any) -> "SlimTikState":
        """A new state holding copies of the problems ``rows`` (indices or a [B] bool mask, as
        tensor indexing takes them; possibly none): memory [len(rows), r, n_f, n_f], Λ, and the
        shared counters. ``state[rows]`` is the same. A sweep drops a diverged model this way."""
        index = torch.as_tensor(rows, device=self.device)
        index = index.nonzero().flatten() if index.dtype == torch.bool else index.long().flatten()
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.memory, new.Lambda = self.memory[index].clone(), self.Lambda[index].clone()
        new.batch = int(index.numel())
        new._reset_block_caches()
        return new

    __getitem__ = select

    @classmethod
    def cat(cls, states: "list[SlimTikState]") -> "SlimTikState":
        """One state of the problems of ``states`` in order (the inverse of ``select``). They must
        share n_f, n_t, r, device and the ring-buffer counters (n_stored, head, step_count): a
        state's problems are stepped together, so only states stepped in lockstep can be joined."""
        if not states:
            raise ValueError("states must hold at least one SlimTikState")
        first = states[0]
        for st in states[1:]:
            for key in ("n_features", "n_targets", "memory_depth", "n_stored", "head", "step_count", "device"):
                if getattr(st, key) != getattr(first, key):
                    raise ValueError(f"states must share {key}: got {getattr(first, key)} and {getattr(st, key)}")
        new = object.__new__(cls)
        new.__dict__.update(first.__dict__)
        new.memory = torch.cat([st.memory for st in states])
        new.Lambda = torch.cat([st.Lambda for st in states])
        new.batch = sum(st.batch for st in states)
        new._reset_block_caches()
        return new

    def state_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch, "n_features": self.n_features, "n_targets": self.n_targets,
            "memory_depth": self.memory_depth, "memory": self.memory.clone(), "n_stored": self.n_stored,
            "head": self.head, "Lambda": self.Lambda.clone(), "step_count": self.step_count,
        }

    @staticmethod
    def check_state_dict(state: Any, config: SolverConfig | None = None) -> None:
        """ValueError naming the field if ``state`` is not a consistent saved state: sizes,
        memory [B, r, n_f, n_f] finite, 0 ≤ n_stored ≤ r, 0 ≤ head < r (0 when
        r = 0), Λ [B] finite and, with ``config``, inside [0, Λ_max]. Reads, never writes."""
        if not isinstance(state, dict):
            raise ValueError(f"solver state must be a dict, got {type(state).__name__}")
        missing = [k for k in ("batch", "n_features", "n_targets", "memory_depth", "memory", "n_stored", "head",
                               "Lambda", "step_count") if k not in state]
        if missing:
            raise ValueError(f"solver state lacks {', '.join(missing)}")
        B, n_f = as_size("batch", state["batch"], 1), as_size("n_features", state["n_features"], 1)
        as_size("n_targets", state["n_targets"], 1)
        r = as_size("memory_depth", state["memory_depth"], 0)
        memory, Lambda = state["memory"], state["Lambda"]
        for name, x, shape in (("memory", memory, (B, r, n_f, n_f)), ("Lambda", Lambda, (B,))):
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                raise ValueError(f"solver state field {name} must be a floating-point tensor, got "
                                 f"{getattr(x, 'dtype', type(x).__name__)}")
            if tuple(x.shape) != shape:
                raise ValueError(f"solver state field {name} must have shape {list(shape)}, got {list(x.shape)}")
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"solver state field {name} contains NaN or Inf")
        n_stored = as_size("n_stored", state["n_stored"], 0)
        head = as_size("head", state["head"], 0)
        as_size("step_count", state["step_count"], 0)
        if n_stored > r:
            raise ValueError(f"solver state field n_stored={n_stored} exceeds memory_depth={r}")
        if head >= max(r, 1):
            raise ValueError(f"solver state field head={head} is not a slot of memory_depth={r}")
        if bool((Lambda < 0).any()):
            raise ValueError("solver state field Lambda is negative")
        if config is not None:
            hi = float(config.Lambda_bounds[1])
            if bool((Lambda > hi).any()):
                raise ValueError(f"solver state field Lambda exceeds Lambda_max={hi:g}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore exactly (float64 stays float64), onto this state's device; the whole dict is
        checked (``check_state_dict``) before anything is changed."""
        self.check_state_dict(state)
        self._check_sizes_match(state)
        self.memory = state["memory"].to(device=self.device, dtype=torch.float64).clone()
        self.Lambda = state["Lambda"].to(device=self.device, dtype=torch.float64).clone()
        self.n_stored, self.head, self.step_count = int(state["n_stored"]), int(state["head"]), int(state["step_count"])
        self._reset_block_caches()

    def __repr__(self) -> str:
        return (f"SlimTikState(batch={self.batch}, n_features={self.n_features}, n_targets={self.n_targets}, "
                f"memory_depth={self.memory_depth}, n_stored={self.n_stored}, step_count={self.step_count})")


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


def state_class(state: Any) -> type[SlimTikState] | type[SampleSideState]:
    """The state class a saved solver state (``state_dict()``) belongs to."""
    return SampleSideState if isinstance(state, dict) and state.get("kind") == SampleSideState.kind else SlimTikState
