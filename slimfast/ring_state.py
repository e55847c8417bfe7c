"""What both solver states share: size checks, Λ_0 against its bounds, the ring counters."""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .config import SolverConfig

__all__ = ["as_size", "check_Lambda0"]


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
