"""Named settings of slimTrain: slimfast's defaults and the public reference's (method.md §5).

    from slimfast.presets import PRESETS
    PRESETS["reference"].memory_depth    # 5

``default`` is what ``SlimTik``, the CLI and ``benchmarks/bench_quality.py`` use unless told
otherwise; it was chosen by the bench_quality table over peaks, cdr and digits, three seeds and
body learning rates 1e-4 … 1e-1 (benchmarks/RESULTS.md, "Training quality"). ``reference`` is
the public reference code's setting, kept for side-by-side comparisons: memory depth 5,
Λ_0 = 0.05, Λ ∈ [1e-7, 1e3], λ from its 60 trial points, no refit. (The reference scales the
batch objective by 1/n_b, slimfast's ``reduction="mean"`` by 1/m = 1/(n_b·n_t): the same Λ_0 is
a weaker regularisation there by the factor n_t.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .config import LambdaMode

__all__ = ["PRESETS", "SlimSettings"]


@dataclass(frozen=True)
class SlimSettings:
    """The slimTrain knobs that a preset fixes (names as ``SlimTik``'s arguments)."""

    memory_depth: int
    Lambda0: float
    lambda_mode: LambdaMode
    Lambda_bounds: tuple[float, float]
    lambda_bounds: tuple[float, float]
    refit: str

    def solver_kwargs(self) -> dict:
        """Keyword arguments of ``SweepTrainer`` / ``SlimTik`` beyond memory depth and Λ_0."""
        return {"lambda_mode": self.lambda_mode, "Lambda_bounds": self.Lambda_bounds,
                "lambda_bounds": self.lambda_bounds}

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, SlimSettings] = {
    "default": SlimSettings(memory_depth=0, Lambda0=0.05, lambda_mode="sgcv", Lambda_bounds=(1e-7, 1e3),
                            lambda_bounds=(-math.inf, 1e3), refit="end"),
    "reference": SlimSettings(memory_depth=5, Lambda0=0.05, lambda_mode="reference", Lambda_bounds=(1e-7, 1e3),
                              lambda_bounds=(-math.inf, 1e3), refit="none"),
}
