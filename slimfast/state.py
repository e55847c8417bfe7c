"""Solver state for B independent slimTik problems: memory of Gram matrices and Λ."""

from __future__ import annotations

from typing import Any

import torch


class SlimTikState:
    """What one set of B problems carries from step to step (method.md §2).

    Attributes:
        memory: [B, r, n_f, n_f] float64 ring buffer of the last r batch Gram matrices
            β² Z_j Z_jᵀ (each scaled by its own batch's β when it was computed).
        n_stored: how many of the r slots hold a Gram matrix (≤ r).
        head: slot the next Gram matrix is written to.
        Lambda: [B] float64 cumulative regularisation Λ_k.
        step_count: number of completed steps k.

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
    ) -> None:
        for name, value, low in (("batch", batch, 1), ("n_features", n_features, 1), ("n_targets", n_targets, 1),
                                 ("memory_depth", memory_depth, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        Lambda0 = float(Lambda0)
        if not (Lambda0 >= 0.0 and Lambda0 < float("inf")):
            raise ValueError(f"Lambda0 must be finite and >= 0, got {Lambda0}")
        opts: dict[str, Any] = dict(dtype=torch.float64, device=torch.device(device))
        self.batch, self.n_features, self.n_targets, self.memory_depth = batch, n_features, n_targets, memory_depth
        self.memory = torch.zeros(batch, memory_depth, n_features, n_features, **opts)
        self.n_stored = 0
        self.head = 0
        self.Lambda = torch.full((batch,), Lambda0, **opts)
        self.step_count = 0

    @property
    def device(self) -> torch.device:
        return self.Lambda.device

    @property
    def memory_empty(self) -> bool:
        return self.n_stored == 0

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

    def state_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch, "n_features": self.n_features, "n_targets": self.n_targets,
            "memory_depth": self.memory_depth, "memory": self.memory.clone(), "n_stored": self.n_stored,
            "head": self.head, "Lambda": self.Lambda.clone(), "step_count": self.step_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore exactly (float64 stays float64), onto this state's device."""
        for key in ("batch", "n_features", "n_targets", "memory_depth"):
            if state[key] != getattr(self, key):
                raise ValueError(f"state_dict has {key}={state[key]}, this state has {getattr(self, key)}")
        self.memory = state["memory"].to(device=self.device, dtype=torch.float64).clone()
        self.Lambda = state["Lambda"].to(device=self.device, dtype=torch.float64).clone()
        self.n_stored, self.head, self.step_count = int(state["n_stored"]), int(state["head"]), int(state["step_count"])

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device | str = "cpu") -> "SlimTikState":
        new = cls(state["batch"], state["n_features"], state["n_targets"], state["memory_depth"], 0.0, device)
        new.load_state_dict(state)
        return new

    def __repr__(self) -> str:
        return (f"SlimTikState(batch={self.batch}, n_features={self.n_features}, n_targets={self.n_targets}, "
                f"memory_depth={self.memory_depth}, n_stored={self.n_stored}, step_count={self.step_count})")
