"""Solver state for B independent slimTik problems: memory of Gram matrices and Λ."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .ring_state import _RingState, as_size, check_Lambda0  # noqa: F401 (re-exported)
from .sample_side_state import SampleSideState

if TYPE_CHECKING:
    from .config import SolverConfig

__all__ = ["SampleSideState", "SlimTikState", "as_size", "check_Lambda0", "state_class"]


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

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "memory" in state:   # pickled before the memory could be deferred: a plain attribute then
            state = dict(state)
            state["_memory"] = state.pop("memory")
        self.__dict__.update(state)

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


def state_class(state: Any) -> type[SlimTikState] | type[SampleSideState]:
    """The state class a saved solver state (``state_dict()``) belongs to."""
    return SampleSideState if isinstance(state, dict) and state.get("kind") == SampleSideState.kind else SlimTikState
