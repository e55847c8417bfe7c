"""The record of one ``SlimTik.step`` and what reading it needs (``slimfast.optim``).

A step leaves its numbers on the device (one float64 row per step, ``_PendingStep``) and returns a
``SlimTikInfo`` that reads them when a field is first read, or when the optimizer checks; the
solver's fault codes and a few data flags then say which input caused a rejected step
(``diagnose``), in the words of the eager checks: ``features`` / ``target``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .validation import MAX_ABS

if TYPE_CHECKING:
    from .optim import SlimTik

logger = logging.getLogger("slimfast")

__all__ = ["SlimTikInfo", "data_flags", "diagnose", "explain", "history_property", "log_record"]

_VALUES = ("lambda_", "Lambda", "alpha", "sgcv", "rel_residual", "cond", "skipped", "reason")


class SlimTikInfo:
    """Record of one ``SlimTik.step`` (plain Python numbers when read).

    Attributes:
        step: number of completed steps after this one (k + 1 for the zero-based step k).
        lambda_: λ_k chosen this step (may be negative).
        Lambda: Λ_k = Λ_{k−1} + λ_k.
        alpha: Λ_k/(k + 1), the effective ridge parameter per batch objective.
        sgcv: sampled GCV value at λ_k.
        rel_residual: ‖β(W_k Z_k − C_k)‖/‖β C_k‖ on this batch.
        cond: condition number (s_max + Λ_k)/(s_min + Λ_k) of G_mem + Λ_k I, with s the
            eigenvalues of the memory Gram matrix: how strongly this step's solve amplifies
            rounding. Large values (≳ 1e12) mean near-singular memory held up only by Λ_k.
        m: scalar residuals in this batch.
        backend: solver backend that ran the step ("" when skipped).
        skipped: True when the batch was skipped (``on_nonfinite="skip"``); then nothing
            changed, ``step``, ``Lambda`` and ``alpha`` are the current values and ``lambda_``,
            ``sgcv``, ``rel_residual`` and ``cond`` are NaN (not computed).
        reason: why the batch was skipped ("" otherwise).
        side: "features" (Gram matrix) or "samples" (kernel matrix, ``slimfast.sample_side``).

    A record returned before its step was checked (``SlimTik(check_every=...)``) holds its
    numbers on the device; reading any of ``_VALUES`` reads them (one host synchronisation for
    every step not yet checked) and raises the step's deferred error, if it had one.
    """

    __slots__ = ("step", "m", "side", "_backend", "_values", "_owner")

    def __init__(self, step: int, lambda_: float = math.nan, Lambda: float = math.nan, alpha: float = math.nan,
                 sgcv: float = math.nan, rel_residual: float = math.nan, cond: float = math.nan, m: int = 0,
                 backend: str = "", skipped: bool = False, reason: str = "", side: str = "features", *,
                 _owner: SlimTik | None = None) -> None:
        set_ = object.__setattr__
        set_(self, "step", step)
        set_(self, "m", m)
        set_(self, "side", side)
        set_(self, "_backend", backend)
        set_(self, "_owner", _owner)
        set_(self, "_values", None if _owner is not None else
             dict(lambda_=lambda_, Lambda=Lambda, alpha=alpha, sgcv=sgcv, rel_residual=rel_residual, cond=cond,
                  skipped=skipped, reason=reason))

    def _resolve(self, values: dict[str, Any], backend: str | None = None) -> None:
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_owner", None)
        if backend is not None:
            object.__setattr__(self, "_backend", backend)

    def __getattr__(self, name: str) -> Any:  # only for names not found normally: the values
        if name not in _VALUES:
            raise AttributeError(name)
        if self._values is None:
            self._owner.check()
        return self._values[name]

    @property
    def backend(self) -> str:
        if self._values is None:
            self._owner.check()
        return self._backend

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("SlimTikInfo is read-only")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SlimTikInfo):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in ("step", "m", "side", "backend") + _VALUES)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if self._values is None:
            return f"SlimTikInfo(step={self.step}, m={self.m}, <not read yet>)"
        body = ", ".join(f"{f}={self._values[f]!r}" for f in _VALUES[:6])
        return (f"SlimTikInfo(step={self.step}, {body}, m={self.m}, backend={self._backend!r}, "
                f"skipped={self._values['skipped']!r}, reason={self._values['reason']!r}, side={self.side!r})")

    def __reduce__(self) -> tuple:
        return (_record_from, (self.step, self.m, self.backend, dict(self._values or {}), self.side))


def _record_from(step: int, m: int, backend: str, values: dict[str, Any], side: str = "features") -> SlimTikInfo:
    return SlimTikInfo(step, m=m, backend=backend, side=side, **values)


@dataclass
class _PendingStep:
    """A step taken but not yet read on the host: its record, the solver's StepInfo (fault codes),
    one float64 row [lambda_, Lambda, sgcv, rel_residual, cond, fault, cast ok, max|W_new|] on the
    device, what undoing its counters needs, and ``evidence`` for ``diagnose``: the step's
    (features, target, G, c) while they are alive anyway (the step is checked before it returns),
    else their ``data_flags`` computed at once (a deferred check must not keep a batch alive)."""

    record: SlimTikInfo
    info: Any
    row: torch.Tensor
    counters: tuple[int, int, int]
    after: tuple[int, int, int]
    evidence: tuple[torch.Tensor, ...] | torch.Tensor


def diagnose(p: _PendingStep, row: list[float], head_dtype: torch.dtype) -> tuple[BaseException | None, bool]:
    """The error of a pending step ``p`` whose ``row`` was read on the host (None if it is fine),
    and whether ``on_nonfinite="skip"`` may skip it: the solver's fault, said in terms of
    ``features``/``target`` where they caused it (one more host read, on a fault only)."""
    fault, cast_ok, W_max = row[5:8]
    if fault == 0:
        if cast_ok:
            return None, False
        return FloatingPointError(f"the new head weights overflow the head's dtype {head_dtype} "
                                  f"(|W| up to {W_max:.3g}); head and solver state unchanged"), True
    try:
        p.info.check()
    except (ValueError, FloatingPointError) as exc:
        return explain(exc, p.evidence)
    return None, False   # info.check found nothing (cannot happen with a non-zero code)


def explain(exc: BaseException, evidence: tuple[torch.Tensor, ...] | torch.Tensor) -> tuple[BaseException, bool]:
    """The solver's error ``exc`` said in terms of ``features``/``target`` where they caused it
    (``evidence``: the step's (features, target, G, c), or their ``data_flags``; one host read),
    and whether ``on_nonfinite="skip"`` may skip the batch."""
    if isinstance(exc, FloatingPointError):
        return exc, True
    flags = evidence if isinstance(evidence, torch.Tensor) else data_flags(*evidence)
    G_finite, c_finite, G_within, c_within, features_finite, target_finite = flags.tolist()
    names = ("features", "target")
    stats_ok, data_ok = (bool(G_finite), bool(c_finite)), (bool(features_finite), bool(target_finite))
    bad = [n for n, ok in zip(names, stats_ok) if not ok]
    if bad:
        if all(d for d, ok in zip(data_ok, stats_ok) if not ok):
            # One rule for every scale: statistics that are not finite although their data are
            # (float64 overflow, e.g. features ×1e200) are a scale error, like finite ones beyond
            # ±MAX_ABS (features ×1e80), not a transient fault to skip.
            too_large = ValueError(f"{' and '.join(bad)} too large: the float64 statistics overflow (they "
                                   f"exceed ±{MAX_ABS:g}; the solver squares them); rescale the data")
            too_large.__cause__ = ValueError(_nonfinite_message(bad))
            return too_large, False
        return ValueError(_nonfinite_message(bad)), True
    big = [n for n, ok in zip(names, (G_within, c_within)) if not ok]
    if big:
        return ValueError(f"{' and '.join(big)} too large: the float64 statistics exceed ±{MAX_ABS:g} "
                          "(the solver squares them); rescale the data"), False
    return exc, False


def _nonfinite_message(bad: list[str]) -> str:
    """``heads.check_statistics_finite``'s message for the inputs ``bad`` ("features", "target")."""
    verb = "contains" if len(bad) == 1 else "contain"
    return f"{' and '.join(bad)} {verb} NaN or Inf (or values too large for float64 statistics)"


def data_flags(features: torch.Tensor, target: torch.Tensor, G: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """[6] float64 on G's device, computed without a host sync, that say afterwards which input
    a solver fault came from: tr(G) finite, c finite, max|G| <= MAX_ABS, |c| <= MAX_ABS, the
    features finite, the target finite (tr(G) and c see every feature and target entry)."""
    def finite(x: torch.Tensor) -> torch.Tensor:
        ok = torch.isfinite(x).all() if x.is_floating_point() else torch.ones((), dtype=torch.bool, device=x.device)
        return ok.to(G.device)

    return torch.stack([torch.isfinite(G.diagonal().sum()), torch.isfinite(c).reshape(()), G.abs().max() <= MAX_ABS,
                        (c.abs() <= MAX_ABS).reshape(()), finite(features), finite(target)]).to(torch.float64)


def history_property(name: str) -> property:
    """``SlimTik.<name>``: the per-step list (plain floats), read after checking pending steps."""
    def get(self: SlimTik) -> list[float]:
        self.check()
        return self._histories[name]

    def set_(self: SlimTik, values: list[float]) -> None:
        self._histories[name] = values

    return property(get, set_, doc="One entry per completed step (reading it checks the pending steps).")


def log_record(rec: SlimTikInfo, writer: Any) -> None:
    """A checked step's numbers to the ``"slimfast"`` logger (DEBUG) and to ``writer`` if set."""
    if logger.isEnabledFor(logging.DEBUG):   # the record's fields are not read for nothing on every step
        logger.debug("slimtik step %d: lambda=%.4g Lambda=%.4g alpha=%.4g sgcv=%.4g rel_res=%.4g cond=%.3g [%s]",
                     rec.step, rec.lambda_, rec.Lambda, rec.alpha, rec.sgcv, rec.rel_residual, rec.cond, rec.backend)
    if writer is not None:
        for tag, value in (("lambda", rec.lambda_), ("Lambda", rec.Lambda), ("alpha", rec.alpha),
                           ("sgcv", rec.sgcv), ("rel_residual", rec.rel_residual), ("cond", rec.cond)):
            writer.add_scalar(f"slimtik/{tag}", value, rec.step)
