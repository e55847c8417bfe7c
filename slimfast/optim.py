"""``SlimTik``: a torch optimizer that solves for a linear head's weights every step.

    head = nn.Linear(n_f, n_t)
    slim = SlimTik(head, memory_depth=5)
    info = slim.step(features.detach(), target)      # head.weight/bias now hold W_k

Each ``step`` forms the float64 sufficient statistics of the batch (``slimfast.heads``) and
takes one slimTik step (``slimfast.slimtik_step``, B = 1). With ``reduction="mean"`` the
new weights W_k are the exact minimiser of

    ½ · MSE(head(Z_k), C_k) + ½ Σ_{j=k−r..k−1} β_j² ‖(W − W_{k−1}) Z_j‖² + (Λ_{k−1}/2)‖W − W_{k−1}‖² + (λ_k/2)‖W‖²

where MSE is ``((pred − target)**2).mean()`` and β_j² = 1/m_j is the scaling of batch j
(stored with batch j's Gram matrix in the memory, so a partial last batch rescales nothing
else). With ``reduction="sum"``, β = 1 and the first term is ½·((pred − target)**2).sum().
λ_k is chosen by sampled GCV (``lambda_mode="sgcv"``), fixed (``"constant"``), or taken from
the public reference's trial points (``"reference"``); Λ_k = Λ_{k−1} + λ_k.

A batch whose statistics are not finite (NaN/Inf in the features or targets, or overflow)
raises ValueError naming ``features``/``target`` by default; with ``on_nonfinite="skip"`` it is
skipped instead: weights, memory, Λ, step count and histories stay exactly as they were, a
warning goes to the ``"slimfast"`` logger, and the returned record has ``skipped=True``.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any, Literal, Protocol

import torch
from torch import nn

from .config import LambdaMode, SolverConfig
from .heads import (
    HeadLayer, Reduction, check_head, check_head_inputs, head_shape, head_statistics,
    head_to_matrix, matrix_to_params,
)
from .distributed import all_reduce_statistics, use_data_parallel
from .block_head import block_head_step
from .fused_head import fused_step
from .phase_blocks import phase_blocks
from . import solver
from .solver import slimtik_step
from .ownership import check_owner as _check_owner, claim as _claim, release_head
from .sample_side_head import SolveSide, check_solve_side, sample_side_head_step, side_of, steps_on_samples
from .state import SlimTikState, as_size, check_Lambda0, state_class
from .optim_checkpoint import HISTORIES as _HISTORIES, parse_state_dict
from .step_hooks import light_step_hooks
from .step_record import SlimTikInfo, _PendingStep, data_flags, diagnose, explain, history_property, log_record

logger = logging.getLogger("slimfast")

__all__ = ["NonfiniteAction", "ScalarWriter", "SlimTik", "SlimTikInfo", "release_head"]

#: What ``SlimTik.step`` does with a batch whose statistics are not finite.
NonfiniteAction = Literal["raise", "skip"]


class ScalarWriter(Protocol):
    """Anything with TensorBoard's ``add_scalar`` (SummaryWriter, a test double, …)."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> Any: ...



_STEP_SIGNATURE_HELP = ("SlimTik.step(features, target) needs the head's input batch and its target: it solves for "
                        "the head's weights in closed form from that batch, so it takes no closure and needs no "
                        "loss or gradients (call it yourself, e.g. slim.step(z.detach(), y), or use SlimTrain)")


class SlimTik(torch.optim.Optimizer):
    """Optimizer owning a linear head (nn.Linear / nn.Conv2d / nn.ConvTranspose2d, groups=1).

    Args:
        head: the layer whose weight (and bias) this optimizer sets; no other parameters.
        memory_depth: r, number of earlier batches whose Gram matrices are kept (default 0: the
            head is solved on the current batch, regularised towards W_{k−1} by Λ_{k−1}; chosen by
            benchmarks/bench_quality.py, see README "Choosing settings").
        Lambda0: initial cumulative regularisation, 0 ≤ Λ_0 ≤ Λ_max (see ``state.check_Lambda0``).
        lambda_mode: "sgcv" (default), "constant" (λ_k = ``lambda_const``) or "reference".
        lambda_const: λ per step in "constant" mode.
        Lambda_bounds: (Λ_min, Λ_max) for Λ_k.
        lambda_bounds: (λ_min, λ_max) for λ_k.
        reduction: "mean" (β² = 1/m, matches ``nn.MSELoss()``) or "sum" (β² = 1).
        backend: force a solver backend ("cuda", "cpp", "numba", "torch"); default: best available.
        writer: optional object with ``add_scalar(tag, value, global_step)``.
        on_nonfinite: a batch with NaN/Inf in its features or targets, or whose solve produced
            weights that are not finite in the head's dtype: ``"raise"``
            (default; ValueError naming ``features``/``target``, FloatingPointError for the
            solve) or ``"skip"`` (the batch is dropped: weights, memory, Λ, step count and
            histories untouched, a warning on the ``"slimfast"`` logger, ``n_skipped_`` + 1,
            and the returned record has ``skipped=True``). Either way the state is unchanged.
            Other bad input (shapes, devices, non-finite head weights, finite data whose float64
            statistics overflow or exceed ±1e150) always raises.
        process_group: torch.distributed group whose ranks share each batch (default: the world).
        distributed: data parallel (``slimfast.distributed``): None (default) = whenever
            torch.distributed is initialised with more than one rank in ``process_group``.
            Then every rank passes its shard of the batch, the unscaled statistics are summed
            by one all-reduce of 8·(n_f² + n_t·n_f + 2) bytes, scaled by the whole batch's β²,
            and every rank takes the identical step (the memory holds the reduced statistics).
            All ranks must call ``step`` together; ``m`` in the record is the global count.
        check_every: read the steps on the host every this many steps (0: only when a record,
            a history or ``check()`` is read). The default 1 checks each step as it is taken and
            raises from ``step`` with the state untouched. Otherwise the step never synchronises
            (``slimtik_step(validate="lazy")``; cuda backend: asynchronous, warm-started, workspace
            in the state) and an error surfaces at the next check: the rejected step changed
            neither weights, memory nor Λ, but unless it was the last one it counts as a step.
        solve_side: "auto" (the sample side for a wide Linear head; ``sample_side_head``), "features", "samples".
        block_solve: "auto" (default): a strided ``ConvTranspose2d`` head is solved per stride-phase
            block (``phase_blocks``; method.md §6: the same step to rounding, s² small
            eigendecompositions instead of one of size n_f); "off": always the dense step.

    The params form one group with an unused ``lr`` (1.0) so LR schedulers attach without error.
    ``step(features, target)`` replaces the usual ``step(closure)``; it needs no gradients.

    Attributes (after steps): ``alpha_``, ``Lambda_``, ``n_steps_``, ``n_skipped_``, ``last_info_``
    (record of the last ``step`` call, skipped or not) and the lists ``lambda_history_``,
    ``Lambda_history_``, ``alpha_history_``, ``sgcv_history_``, ``rel_residual_history_``,
    ``cond_history_`` (one entry per completed step; skipped batches add none).

    ``on_nonfinite``, ``backend``, ``block_solve``, ``writer`` and ``check_every`` are run-time choices:
    ``load_state_dict`` keeps them as constructed. A head has one SlimTik (a second raises ValueError; ``release_head``
    hands it over). ``copy.deepcopy`` and ``pickle`` give copies that continue exactly like the
    original.
    """

    def __init__(
        self,
        head: nn.Module,
        memory_depth: int = 0,
        Lambda0: float = 0.05,
        lambda_mode: LambdaMode = "sgcv",
        lambda_const: float = 0.0,
        Lambda_bounds: tuple[float, float] = (1e-7, 1e3),
        lambda_bounds: tuple[float, float] = (-math.inf, 1e3),
        reduction: Reduction = "mean",
        backend: str | None = None,
        writer: ScalarWriter | None = None,
        on_nonfinite: NonfiniteAction = "raise",
        process_group: Any = None,
        distributed: bool | None = None,
        check_every: int = 1,
        solve_side: SolveSide = "auto",
        block_solve: Literal["auto", "off"] = "auto",
    ) -> None:
        check_head(head)
        if block_solve not in ("auto", "off"):
            raise ValueError(f"block_solve must be 'auto' or 'off', got {block_solve!r}")
        self.solve_side = check_solve_side(solve_side, head, distributed)
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        memory_depth = as_size("memory_depth", memory_depth, 0)
        config = SolverConfig(mode=lambda_mode, lambda_const=float(lambda_const),
                              Lambda_bounds=tuple(Lambda_bounds), lambda_bounds=tuple(lambda_bounds))
        Lambda0 = check_Lambda0(Lambda0, config)
        _claim(head, self)
        params = [head.weight] + ([head.bias] if head.bias is not None else [])
        super().__init__([{"params": params}], {"lr": 1.0})
        self.head: HeadLayer = head
        self.config = config
        self.memory_depth = memory_depth
        self.Lambda0 = Lambda0
        self.reduction: Reduction = reduction
        self.backend = backend
        self.block_solve = block_solve
        self.writer = writer
        self.on_nonfinite: NonfiniteAction = on_nonfinite
        self.process_group = process_group
        self.distributed = distributed
        # Created lazily on the first step (or load) so it lands on the head's device then.
        self.solver_state: SlimTikState | None = None
        self.n_skipped_ = 0
        self.last_info_: SlimTikInfo | None = None
        self.check_every = as_size("check_every", check_every, 0)
        self._pending: list[_PendingStep] = []
        self._histories: dict[str, list[float]] = {name: [] for name in _HISTORIES}

    # ------------------------------------------------------------------ copies

    def __getstate__(self) -> dict[str, Any]:
        """Everything (the base class would keep only its param groups): a pickled SlimTik, with
        its head, continues exactly like the original. A ``writer`` or ``process_group`` is a live
        resource that cannot travel: pickling then raises TypeError (``copy.deepcopy`` shares them)."""
        self.check()   # records and histories hold plain numbers before they travel
        live = [name for name in ("writer", "process_group") if self.__dict__.get(name) is not None]
        if live:
            raise TypeError(f"cannot pickle a SlimTik with {' and '.join(live)} set (a live resource); set "
                            f"{' and '.join(f'slim.{n} = None' for n in live)} first, or save slim.state_dict()")
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "head" in state:
            _claim(self.head, self)

    def __deepcopy__(self, memo: dict[int, Any]) -> SlimTik:
        """A copy that continues exactly like the original. The head is copied through ``memo``, so
        ``copy.deepcopy((model, slim))`` gives a SlimTik that writes the copied model's head;
        ``writer`` and ``process_group`` are shared, not copied."""
        self.check()
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = value if key in ("writer", "process_group") else copy.deepcopy(value, memo)
        _claim(new.head, new)
        return new

    # ------------------------------------------------------------------ properties

    @property
    def n_steps_(self) -> int:
        """Completed steps k + 1 (the solver state's count; 0 before the first step)."""
        return 0 if self.solver_state is None else self.solver_state.step_count

    @property
    def Lambda_(self) -> float:
        """Current cumulative regularisation Λ_k, read from the solver state (Λ_0 before the
        first step); on CUDA reading it synchronises."""
        return self.Lambda0 if self.solver_state is None else float(self.solver_state.Lambda[0])

    @property
    def alpha_history_(self) -> list[float]:
        """Λ_i/(i+1) for every step still in ``Lambda_history_`` (derived, not stored)."""
        first = self.n_steps_ - len(self.Lambda_history_)   # entries a user cleared come first
        return [Lam / (first + i + 1) for i, Lam in enumerate(self.Lambda_history_)]

    @property
    def alpha_(self) -> float:
        """Effective regularisation Λ_k/(k+1) after k+1 = n_steps_ steps (Λ_0 before any step).

        In the full-memory limit W_k minimises Σ_{i≤k} ½·MSE_i + (Λ_k/2)‖W‖², i.e. k+1 batch
        objectives, so Λ_k/(k+1) is the ridge parameter per batch-mean objective.
        """
        return self.Lambda_ / max(self.n_steps_, 1)

    lambda_history_ = history_property("lambda_history_")
    Lambda_history_ = history_property("Lambda_history_")
    sgcv_history_ = history_property("sgcv_history_")
    rel_residual_history_ = history_property("rel_residual_history_")
    cond_history_ = history_property("cond_history_")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if hasattr(self, "head"):
            raise TypeError("SlimTik owns exactly its head's weight and bias; it takes no further param groups")
        super().add_param_group(param_group)

    def _ensure_state(self) -> SlimTikState:
        if self.solver_state is None:
            n_t, n_f = head_shape(self.head)
            self.solver_state = SlimTikState(1, n_f, n_t, self.memory_depth, self.Lambda0, self.head.weight.device,
                                             config=self.config)
        return self.solver_state

    # ------------------------------------------------------------------ the step

    @light_step_hooks   # torch's hook-and-profile wrapper only when something observes it
    @torch.no_grad()
    def step(self, features: torch.Tensor | None = None, target: torch.Tensor | None = None  # type: ignore[override]
             ) -> SlimTikInfo:
        """Solve for the head's weights on one batch; returns the step's record.

        Args:
            features: the head's input for this batch (detached; any float dtype, autocast ok):
                Linear [..., n_in]; Conv2d/ConvTranspose2d [n_b, C_in, H, W].
            target: exactly the shape of ``head(features)``.

        Raises TypeError when called as ``step()`` or ``step(closure)``; ValueError naming
        ``features`` or ``target`` for a wrong shape or device, for a NaN/Inf in them (unless
        ``on_nonfinite="skip"``) or for finite features/targets whose float64 statistics overflow
        or exceed ±1e150 (either mode: a scale error, not a transient fault); FloatingPointError
        (or a skip) when the new weights are not finite in the head's dtype (e.g. beyond ±65504
        for a float16 head). The head and the solver state are then untouched. With
        ``check_every`` other than 1 value errors are raised at the next check instead.
        """
        if features is None or target is None or callable(features):
            got = "a closure" if callable(features) else "no batch" if features is None else "no target"
            raise TypeError(f"{_STEP_SIGNATURE_HELP}; got {got}")
        _check_owner(self)
        if (fused := fused_step(self, features, target)) is not None:   # Linear head, CPU, cpp: one call
            return fused
        if (blocked := block_head_step(self, features, target)) is not None:   # strided ConvTranspose2d, CPU, cpp
            return blocked
        check_head_inputs(self.head, features, target, finite=False)
        if steps_on_samples(self, features):
            return sample_side_head_step(self, features, target)
        G, H, c, m = self._statistics(features, target)
        if self.check_every == 1:
            # Read at once anyway: the solver's eager checks (one sync before, one after the
            # kernel) cost less than the lazy path's device-side bookkeeping, and a fault is then
            # explained from the live batch; nothing has changed when they raise.
            try:
                pending = self._take_step(G, H, c, m, (features, target, G, c), validate="eager")
            except (ValueError, FloatingPointError) as exc:
                fault, skippable = explain(exc, (features, target, G, c))
                if self.on_nonfinite == "skip" and skippable:
                    record = SlimTikInfo(self.n_steps_, m=m if isinstance(m, int) else int(m), _owner=self)
                    self._skip(record, str(fault))
                    return record
                raise fault from (exc.__cause__ if fault is exc else fault.__cause__)
        else:   # a deferred check must not keep the batch alive: flag it now, on the device
            pending = self._take_step(G, H, c, m, data_flags(features, target, G, c), validate="lazy")
        self._pending.append(pending)
        record = pending.record
        if self.check_every and len(self._pending) >= self.check_every:
            self.check()
        return record

    def _solves_with_torch(self, device: torch.device) -> bool:
        """Whether the torch backend takes the step: the float64 reference throughout, so its
        statistics are the torch twin's too. A backend that cannot run is named by the solver."""
        try:
            return solver.resolve_backend(self.backend, device)[0] == "torch"
        except (ValueError, RuntimeError):
            return False

    def _statistics(self, features: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The batch's float64 statistics (G [n_f, n_f], H [n_t, n_f], c, m), all-reduced if data parallel."""
        data_parallel = use_data_parallel(self.distributed, self.process_group)
        kernel = "torch" if self._solves_with_torch(features.device) else "auto"
        G, H, c, m = head_statistics(self.head, features, target, "sum" if data_parallel else self.reduction,
                                     check=False, kernel=kernel)
        if data_parallel:   # the whole batch's statistics: one all-reduce of the unscaled sums
            G, H, c, m = all_reduce_statistics(G, H, c, m, self.reduction, self.process_group)
        return G, H, c, m

    def _take_step(self, G: torch.Tensor, H: torch.Tensor, c: torch.Tensor, m: Any,
                   evidence: tuple[torch.Tensor, ...] | torch.Tensor, validate: str) -> _PendingStep:
        """One solver step and the write-back; with ``validate="lazy"`` no host synchronisation
        (faults stay device-side codes in the record), with "eager" the solver raises instead."""
        state = self._ensure_state()
        dev = state.device
        counters = (state.n_stored, state.head, state.step_count)   # what a rejected step undoes
        # The solver commits its state once its float64 weights are finite; a head of lower
        # precision can still overflow in the cast, so keep what the commit overwrites.
        snap = state.snapshot() if self.head.weight.dtype != torch.float64 else None
        W_new, info = slimtik_step(state, G[None].to(dev), H[None].to(dev), c.reshape(1).to(dev), m,
                                   head_to_matrix(self.head)[None], config=self.config, backend=self.backend,
                                   validate=validate,
                                   blocks=phase_blocks(self.head) if self.block_solve == "auto" else None)
        cast = self._write_back(W_new, snap)
        numbers = torch.stack([info.lambda_, info.Lambda, info.sgcv, info.rel_residual, info.cond,
                               info.faults.to(torch.float64)])[:, 0]
        row = torch.cat([numbers, cast])
        record = SlimTikInfo(state.step_count, m=m if isinstance(m, int) else int(m), backend=info.backend,
                             _owner=self)
        return _PendingStep(record, info, row, counters, (state.n_stored, state.head, state.step_count), evidence)

    def _write_back(self, W_new: torch.Tensor, snap: tuple[Any, ...] | None) -> torch.Tensor:
        """Write W_new [1, n_t, n_f] into the head. Returns [ok, max|W_new|] (float64, on the device):
        for a head of lower precision, ok is whether the cast weights are finite; where they are
        not, the head keeps its weights and the state its memory and Λ (device-side, no sync)."""
        weight, bias = matrix_to_params(self.head, W_new[0].to(self.head.weight.dtype))
        if snap is None:
            self.head.weight.copy_(weight)
            if bias is not None:
                self.head.bias.copy_(bias)
            return torch.cat([W_new.new_ones(1), W_new.new_zeros(1)])
        finite = torch.isfinite(weight).all() & (torch.isfinite(bias).all() if bias is not None else True)
        self.head.weight.copy_(torch.where(finite, weight, self.head.weight))
        if bias is not None:
            self.head.bias.copy_(torch.where(finite, bias, self.head.bias))
        self.solver_state.undo_where(snap, ~finite.reshape(1))
        return torch.stack([finite.to(torch.float64), W_new.abs().max()])

    def check(self) -> None:
        """Read every step not read yet (one host synchronisation): fill their records and the
        histories, and raise the first deferred error (or skip its batch with
        ``on_nonfinite="skip"``). A rejected step changed neither the head's weights nor the
        memory or Λ; if it is the last step taken, its step count and ring position are undone
        too, so the state is exactly as before it (always so with ``check_every=1``)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        rows = torch.stack([p.row for p in pending]).tolist()
        error: BaseException | None = None
        for p, row in zip(pending, rows):
            fault, skippable = diagnose(p, row, self.head.weight.dtype)
            if fault is None:
                lam, Lam, sgcv, rel, cond = row[:5]
                p.record._resolve(dict(lambda_=lam, Lambda=Lam, alpha=Lam / p.record.step, sgcv=sgcv,
                                       rel_residual=rel, cond=cond, skipped=False, reason=""))
                self._record(p.record)
                continue
            state = self.solver_state
            if (state.n_stored, state.head, state.step_count) == p.after:   # no step since: undo it fully
                state.n_stored, state.head, state.step_count = p.counters
            if self.on_nonfinite == "skip" and skippable:
                self._skip(p.record, str(fault))
            else:
                nan = math.nan
                p.record._resolve(dict(lambda_=nan, Lambda=nan, alpha=nan, sgcv=nan, rel_residual=nan, cond=nan,
                                       skipped=False, reason=str(fault)), backend="")
                error = error or fault
        if error is not None:
            raise error

    def _skip(self, rec: SlimTikInfo, reason: str) -> None:
        """Record a skipped batch: nothing but ``n_skipped_`` and ``last_info_`` changes."""
        self.n_skipped_ += 1
        nan = math.nan
        rec._resolve(dict(lambda_=nan, Lambda=self.Lambda_, alpha=self.alpha_, sgcv=nan, rel_residual=nan, cond=nan,
                          skipped=True, reason=reason), backend="")
        object.__setattr__(rec, "step", self.n_steps_)
        self.last_info_ = rec
        logger.warning("slimtik: batch skipped after step %d (on_nonfinite='skip', %d skipped so far): %s",
                       self.n_steps_, self.n_skipped_, reason)
        if self.writer is not None:
            self.writer.add_scalar("slimtik/skipped", float(self.n_skipped_), self.n_steps_)

    def _record(self, rec: SlimTikInfo, values: tuple[float, ...] | None = None) -> None:
        """Keep ``rec`` as the last record and append its numbers (``values``: λ, Λ, sGCV, relative
        residual, cond when the caller has them at hand) to the histories."""
        self.last_info_ = rec
        if values is None:
            values = (rec.lambda_, rec.Lambda, rec.sgcv, rec.rel_residual, rec.cond)
        for name, value in zip(_HISTORIES, values):
            self._histories[name].append(value)
        log_record(rec, self.writer)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's dict plus a ``"slimtik"`` entry with the float64 solver state.

        The solver state is kept outside ``Optimizer.state`` on purpose: the base class casts
        floating state to the parameter dtype on load, which would round the float64 memory.
        """
        sd = super().state_dict()
        cfg = self.config
        sd["slimtik"] = {
            "solver": None if self.solver_state is None else self.solver_state.state_dict(),
            "n_steps": self.n_steps_,
            "n_skipped": self.n_skipped_,
            "memory_depth": self.memory_depth,
            "Lambda0": self.Lambda0,
            "reduction": self.reduction, "solve_side": self.solve_side,
            "config": {"mode": cfg.mode, "lambda_const": cfg.lambda_const, "Lambda_bounds": tuple(cfg.Lambda_bounds),
                       "lambda_bounds": tuple(cfg.lambda_bounds), "n_grid": cfg.n_grid, "root_tol": cfg.root_tol,
                       "max_root_iter": cfg.max_root_iter},
            "histories": {name: list(getattr(self, name)) for name in _HISTORIES},
        }
        return sd

    def check_state_dict(self, state_dict: Any) -> dict[str, Any]:
        """Validate a ``state_dict()`` for this optimizer without changing anything; ValueError
        naming the field. Returns the parsed settings that ``load_state_dict`` applies."""
        return parse_state_dict(self, state_dict)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore exactly (float64 stays float64). Like torch's group hyperparameters, the
        solver settings (memory depth, λ mode and bounds, reduction) come from the dict;
        ``backend`` and ``writer`` stay as constructed. The whole dict is checked first
        (``check_state_dict``): a rejected dict changes nothing."""
        parsed = self.check_state_dict(state_dict)
        solver = None
        if parsed["solver"] is not None:
            solver = state_class(parsed["solver"]).from_state_dict(parsed["solver"], device=self.head.weight.device)
        base = {k: v for k, v in state_dict.items() if k != "slimtik"}
        super().load_state_dict(base)
        self.config = parsed["config"]
        self.memory_depth = parsed["memory_depth"]
        self.Lambda0 = parsed["Lambda0"]
        self.reduction, self.solve_side = parsed["reduction"], parsed["solve_side"]
        self.solver_state = solver
        self.n_skipped_ = parsed["n_skipped"]
        self._pending = []
        for name, values in parsed["histories"].items():
            setattr(self, name, values)
        self.last_info_ = None

    def __repr__(self) -> str:
        n_t, n_f = head_shape(self.head)
        return (f"SlimTik(head={type(self.head).__name__}, n_f={n_f}, n_t={n_t}, memory_depth={self.memory_depth}, "
                f"lambda_mode={self.config.mode!r}, reduction={self.reduction!r}, solve_side={side_of(self)}, "
                f"n_steps_={self.n_steps_})")
