"""Solver options for one slimTik step (method.md §2–3)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

LambdaMode = Literal["sgcv", "constant", "reference"]

#: Integer codes shared with the compiled kernels (csrc/slimfast_math.h, ``SLIMFAST_MODE_*``).
MODE_CODES: dict[str, int] = {"sgcv": 0, "constant": 1, "reference": 2}

#: Machine epsilon used by the public reference to build its trial points.
FLOAT64_EPS = 2.220446049250313e-16

#: sGCV admissibility (method.md §6): a trial μ whose denominator D = m_k − n_t·tr(β²Z_kᵀ(G_mem + μI)⁻¹Z_k)
#: is ≤ SGCV_DENOMINATOR_EPS·m_k gets f = +inf: never chosen, never a bracket end. Near D = 0
#: (n_b·n_t ≤ rank) both the residual and D are differences of rounding-level terms, so f
#: there is decided by rounding; csrc/slimfast_math.h holds the same constant.
SGCV_DENOMINATOR_EPS = 1e-3

#: Eigenvalues of G_mem at most SGCV_NULL_RTOL_PER_FEATURE·n_f·s_max count as exactly zero (with
#: their projections B̃ and K̃), identically in every backend: they are rounding noise of a
#: rank-deficient G_mem, and 1/(s_j + μ) would otherwise amplify that noise by 1/μ.
SGCV_NULL_RTOL_PER_FEATURE = FLOAT64_EPS


@dataclass(frozen=True)
class SolverConfig:
    """How λ_k is chosen and which values it may take.

    The admissible interval for the new cumulative regularisation μ = Λ_{k−1} + λ_k is

        μ ∈ [max(Λ_min, Λ_{k−1} + λ_min), min(Λ_max, Λ_{k−1} + λ_max)],

    with ``Lambda_bounds = (Λ_min, Λ_max)`` and ``lambda_bounds = (λ_min, λ_max)``.

    Modes:
        ``"sgcv"``: minimise the sampled GCV function over the whole admissible interval
            (coarse grid in log μ, then a root of dsGCV/dμ on the best bracket).
        ``"constant"``: λ_k = ``lambda_const`` every step, clipped into the interval.
        ``"reference"``: the public reference's 60 trial points (±logspace between machine
            epsilon and the bounds), best sGCV value among the admissible ones. For
            side-by-side comparisons only.
    """

    mode: LambdaMode = "sgcv"
    lambda_const: float = 0.0
    Lambda_bounds: tuple[float, float] = (1e-7, 1e3)
    lambda_bounds: tuple[float, float] = (-math.inf, 1e3)
    n_grid: int = 33
    root_tol: float = 1e-13
    max_root_iter: int = 100

    def __post_init__(self) -> None:
        if self.mode not in MODE_CODES:
            raise ValueError(f"mode must be one of {sorted(MODE_CODES)}, got {self.mode!r}")
        lo, hi = (float(v) for v in self.Lambda_bounds)
        lam_lo, lam_hi = (float(v) for v in self.lambda_bounds)
        # Stored as float tuples so that a config is hashable (the backends cache its kernel
        # options per config) whatever sequence was passed.
        object.__setattr__(self, "Lambda_bounds", (lo, hi))
        object.__setattr__(self, "lambda_bounds", (lam_lo, lam_hi))
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0.0 or hi < lo:
            raise ValueError(
                f"Lambda_bounds must satisfy 0 < Lambda_min <= Lambda_max < inf, got {self.Lambda_bounds}"
            )
        if math.isnan(lam_lo) or math.isnan(lam_hi) or lam_hi <= lam_lo or lam_hi <= 0.0:
            raise ValueError(
                f"lambda_bounds must satisfy lambda_min < lambda_max and lambda_max > 0, got {self.lambda_bounds}"
            )
        if not math.isfinite(self.lambda_const):
            raise ValueError(f"lambda_const must be finite, got {self.lambda_const}")
        if self.n_grid < 2:
            raise ValueError(f"n_grid must be at least 2, got {self.n_grid}")
        if not (0.0 < self.root_tol < 1.0):
            raise ValueError(f"root_tol must lie in (0, 1), got {self.root_tol}")
        if self.max_root_iter < 1:
            raise ValueError(f"max_root_iter must be positive, got {self.max_root_iter}")

    @property
    def mode_code(self) -> int:
        return MODE_CODES[self.mode]

    def admissible_mu(self, Lambda_prev: float) -> tuple[float, float]:
        """The admissible interval of μ above for one problem's Λ_{k−1}, in float arithmetic (the
        tensor form, for [B] problems, is ``_torch_impl._admissible_interval``); empty when
        μ_lo > μ_hi."""
        (Lmin, Lmax), (lmin, lmax) = self.Lambda_bounds, self.lambda_bounds
        mu_lo = max(Lambda_prev + lmin, Lmin) if math.isfinite(lmin) else Lmin
        return mu_lo, min(Lambda_prev + lmax, Lmax)

    def kernel_options(self) -> dict[str, float | int]:
        """Keyword arguments of the compiled modules' ``StepOptions`` (validated once, in C++)."""
        (Lmin, Lmax), (lmin, lmax) = self.Lambda_bounds, self.lambda_bounds
        return dict(mode=self.mode_code, lambda_const=float(self.lambda_const), Lambda_min=float(Lmin),
                    Lambda_max=float(Lmax), lambda_min=float(lmin), lambda_max=float(lmax), n_grid=int(self.n_grid),
                    root_tol=float(self.root_tol), max_root_iter=int(self.max_root_iter))
