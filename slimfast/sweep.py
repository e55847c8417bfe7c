"""Many slimTrain models in one process: B runs that share an architecture, one solver call per step.

    specs = [ModelSpec(seed=s, lr=lr) for lr in (1e-3, 1e-2) for s in (0, 1)]
    trainer = SweepTrainer.from_problem(problem, specs)
    histories = run_sweep(problem, specs, epochs=5)        # one history per model, as cli.run_training

The B bodies are stacked (``torch.func.stack_module_state``) and run with one ``vmap`` of
``functional_call``; the B heads are solved by one batched ``slimtik_step`` per memory depth (one
call per step when all models share r, the usual sweep over learning rates and seeds); the body
update is ``StackedAdam``, torch.optim.Adam's arithmetic on the stacked parameters with one
learning rate per model. Models may differ in seed (initial weights and batch order), body
learning rate, Λ_0 and memory depth r.

Each model follows the trajectory of training it alone (``SlimTrain`` with ``SlimTik`` and
``torch.optim.Adam``, the batches of ``cli.batches`` drawn with a generator seeded by its seed),
to rounding: the stacked forward and backward, the per-model statistics and the optimizer do
the same arithmetic per model (on CPU they agree bit for bit in our tests), and the solver
treats the B problems independently.

Memory depth: ``SlimTikState`` holds one depth for all its problems, so models are grouped by r
and each group has its own state and solver call (same results as a per-model state; a sweep
over r costs one call per distinct r). Models whose step fails (non-finite statistics or loss,
a failed solve) are marked diverged and dropped from the stacks; the others continue unchanged.

Limitations: bodies must be stackable (same architecture, dtype and device); modules whose
buffers change in training mode (BatchNorm) are rejected — run those models one at a time.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap

from .config import LambdaMode, SolverConfig
from .heads import HeadLayer, Reduction, check_head, head_shape, head_statistics, params_to_matrix, write_params_
from .loop import REFIT_MODES, eval_mode, split_errors
from .presets import PRESETS
from .stacked import FromProblem, StackedAdam, _StackedMSE, check_stackable, heads_forward, stack_params
from .solver import slimtik_step
from .state import SlimTikState
from .validation import MAX_ABS

logger = logging.getLogger("slimfast")

__all__ = ["REFIT_MODES", "ModelSpec", "StackedAdam", "SweepTrainer", "run_sweep"]

F64 = torch.float64


@dataclass(frozen=True)
class ModelSpec:
    """One model of a sweep.

    Attributes:
        seed: initial weights (``problem.make_body(seed)``, ``make_head(seed)``) and batch order.
        lr: learning rate of the body's Adam.
        Lambda0: initial cumulative regularisation Λ_0 of the head's slimTik state.
        memory_depth: r, number of earlier batches kept in the head's memory.
    """

    seed: int = 0
    lr: float = 1e-3
    Lambda0: float = PRESETS["default"].Lambda0
    memory_depth: int = PRESETS["default"].memory_depth

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be positive and finite, got {self.lr}")
        if not (0.0 <= self.Lambda0 < math.inf):
            raise ValueError(f"Lambda0 must be finite and >= 0, got {self.Lambda0}")
        if not isinstance(self.memory_depth, int) or self.memory_depth < 0:
            raise ValueError(f"memory_depth must be an integer >= 0, got {self.memory_depth!r}")

    @property
    def label(self) -> str:
        return f"lr={self.lr:g} seed={self.seed} Λ0={self.Lambda0:g} r={self.memory_depth}"


# ============================================================================ trainer

@dataclass
class _Group:
    """Models of one memory depth: their rows in the stacks and their solver state."""

    depth: int
    rows: torch.Tensor            # indices into the current (active) stacks
    state: SlimTikState


@dataclass(frozen=True)
class SweepStepInfo:
    """Per-model record of one ``SweepTrainer.train_step`` (lists over the models active before it).

    Attributes:
        models: original model indices (into ``specs``).
        loss: batch loss with the new head (NaN for a model that diverged in this step).
        lambda_, Lambda: λ_k and Λ_k (NaN where the head step failed).
        alpha: Λ_k/(k + 1).
        diverged: original indices of the models dropped in this step, with the reason.
    """

    models: list[int]
    loss: list[float]
    lambda_: list[float]
    Lambda: list[float]
    alpha: list[float]
    diverged: dict[int, str]


class SweepTrainer(FromProblem):
    """B slimTrain models of one architecture, trained in lockstep in one process.

    Args:
        bodies, heads: the B initialised bodies (one architecture) and heads (nn.Linear,
            nn.Conv2d or nn.ConvTranspose2d, groups = 1; one architecture). Their parameters are
            copied into stacks; the modules themselves are not changed.
        specs: one ``ModelSpec`` per model (lr, Λ_0 and r are used here; the seed only labels it).
        reduction: "mean" (the loss is ``nn.MSELoss()``) or "sum", as ``SlimTik``.
        betas, eps, weight_decay: the body's Adam settings (shared).
        backend: force a solver backend; lambda_mode, lambda_const, Lambda_bounds,
            lambda_bounds: the solver settings of ``SlimTik`` (shared).

    ``SweepTrainer.from_problem(problem, specs, **kwargs)`` builds the models as ``run_training`` does.
    ``train_step(xs, ys)`` takes one batch per active model (xs [B_active, n_b, ...]).
    ``active`` lists the original indices of the models still training; ``diverged`` maps
    dropped models to the reason.
    """

    def __init__(
        self,
        bodies: Sequence[nn.Module],
        heads: Sequence[nn.Module],
        specs: Sequence[ModelSpec],
        *,
        reduction: Reduction = "mean",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        backend: str | None = None,
        lambda_mode: LambdaMode = "sgcv",
        lambda_const: float = 0.0,
        Lambda_bounds: tuple[float, float] = (1e-7, 1e3),
        lambda_bounds: tuple[float, float] = (-math.inf, 1e3),
    ) -> None:
        if not (len(bodies) == len(heads) == len(specs) >= 1):
            raise ValueError(f"need as many bodies, heads and specs (>= 1), got {len(bodies)}, {len(heads)}, "
                             f"{len(specs)}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        for h in heads:
            check_head(h)
        shapes = {(type(h), head_shape(h), tuple(h.weight.shape)) for h in heads}
        if len(shapes) != 1:
            raise ValueError("all heads must have the same type and shape")
        check_stackable(bodies)
        self.specs = list(specs)
        self.reduction: Reduction = reduction
        self.backend = backend
        self.config = SolverConfig(mode=lambda_mode, lambda_const=float(lambda_const),
                                   Lambda_bounds=tuple(Lambda_bounds), lambda_bounds=tuple(lambda_bounds))
        # Templates: real copies (statistics read the layer type and shape; functional_call swaps params).
        self._body = copy.deepcopy(bodies[0])
        self._head: HeadLayer = copy.deepcopy(heads[0])
        self.body_params, self.body_buffers = stack_params(bodies)
        self.head_params = stack_params(heads, trainable=False)[0]
        self.optimizer = StackedAdam(self.body_params, [s.lr for s in self.specs], betas, eps, weight_decay)
        self.active: list[int] = list(range(len(self.specs)))
        self.diverged: dict[int, str] = {}
        self.n_steps_ = 0
        #: per original model: Λ after its last head step, and its number of head steps
        self.Lambda_: list[float] = [s.Lambda0 for s in self.specs]
        self.head_steps_: list[int] = [0] * len(self.specs)
        #: (original indices, body params, body buffers, head params) of the models dropped by the
        #: last step, as they were when they failed (for a final evaluation)
        self.last_dropped: tuple[list[int], dict, dict, dict] = ([], {}, {}, {})
        n_t, n_f = head_shape(self._head)
        device = self._head.weight.device
        self.groups: list[_Group] = []
        for depth in sorted({s.memory_depth for s in self.specs}):
            rows = [i for i, s in enumerate(self.specs) if s.memory_depth == depth]
            state = SlimTikState(len(rows), n_f, n_t, depth, 0.0, device)
            state.Lambda.copy_(torch.tensor([self.specs[i].Lambda0 for i in rows], dtype=F64))
            self.groups.append(_Group(depth, torch.tensor(rows, dtype=torch.long), state))
        self._vbody = vmap(self._body_call)

    # ------------------------------------------------------------------ functional pieces

    def _body_call(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor):
        return functional_call(self._body, (params, buffers), (x,))

    @property
    def n_active(self) -> int:
        return len(self.active)

    def head_matrices(self) -> torch.Tensor:
        """W [B_active, n_t, n_f] float64 of the active models' heads."""
        return params_to_matrix(self._head, self.head_params["weight"], self.head_params.get("bias"))

    def model_state(self, model: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(body parameters, head parameters) of an active model, by original index (copies)."""
        row = self.active.index(model)
        return ({k: v[row].detach().clone() for k, v in self.body_params.items()},
                {k: v[row].clone() for k, v in self.head_params.items()})

    # ------------------------------------------------------------------ one step

    def train_step(self, xs: torch.Tensor, ys: torch.Tensor) -> SweepStepInfo:
        """One slimTrain iteration of every active model on its own batch (xs[i], ys[i]).

        Per model exactly ``SlimTrain.train_step``: body forward, head solved on the detached
        features, loss with the new head, backward through the body, Adam step. Models whose
        step fails are dropped (see ``diverged``) and never affect the others.
        """
        B = self.n_active
        if xs.shape[0] != B or ys.shape[0] != B:
            raise ValueError(f"need one batch per active model: xs/ys leading dimension {B}, got "
                             f"{xs.shape[0]}, {ys.shape[0]}")
        models = list(self.active)
        failed: dict[int, str] = {}     # row -> reason
        self.optimizer.zero_grad()
        z = self._vbody(self.body_params, self.body_buffers, xs)
        zd = z.detach()
        stats = [head_statistics(self._head, zd[i], ys[i], self.reduction, check=False) for i in range(B)]
        G = torch.stack([s[0] for s in stats])
        H = torch.stack([s[1] for s in stats])
        c = torch.stack([s[2] for s in stats])
        m = stats[0][3]
        # Per-model admissibility (one sync): what makes SlimTik.step raise for that model alone.
        ok = (G.abs().amax((1, 2)) <= MAX_ABS) & (c.abs() <= MAX_ABS)
        for i, good in enumerate(ok.tolist()):
            if not good:
                failed[i] = "ValueError: features or target non-finite or too large for float64 statistics"
        W = self.head_matrices()
        W_new = W.clone()
        lam = torch.full((B,), math.nan, dtype=F64)
        Lam = torch.full((B,), math.nan, dtype=F64)
        for group in self.groups:
            rows = group.rows
            good = torch.tensor([r not in failed for r in rows.tolist()], dtype=torch.bool)
            if not bool(good.all()):
                self._drop_from_group(group, good)
                rows = group.rows
            if rows.numel() == 0:
                continue
            try:
                Wg, info = slimtik_step(group.state, G[rows], H[rows], c[rows], m, W[rows], config=self.config,
                                        backend=self.backend)
                W_new[rows] = Wg
                lam[rows], Lam[rows] = info.lambda_.cpu(), info.Lambda.cpu()
            except FloatingPointError:
                self._solve_rows_separately(group, G, H, c, m, W, W_new, lam, Lam, failed)
        # failed rows keep their old head (the solo run stops before writing it)
        write_params_(self._head, self.head_params["weight"], self.head_params.get("bias"), W_new)
        pred = heads_forward(self._head, self.head_params, z)
        losses = _StackedMSE.apply(pred, ys.to(pred.dtype), self.reduction == "mean")
        values = losses.detach().tolist()
        for i, v in enumerate(values):
            if i not in failed and not math.isfinite(v):
                failed[i] = f"FloatingPointError: loss is {v} after the head step"
        live = [i for i in range(B) if i not in failed]
        dead = sorted(failed)
        # the failed models' bodies as they are now: the solo run never takes this body step
        dead_body = {k: v.detach()[dead].clone() for k, v in self.body_params.items()} if dead else {}
        if live:
            (losses[live].sum() if len(live) < B else losses.sum()).backward()
            self.optimizer.step()
        self.n_steps_ += 1
        alpha = []
        for i, model in enumerate(models):
            if not math.isnan(float(Lam[i])):     # the head step succeeded (even if the loss then failed)
                self.Lambda_[model] = float(Lam[i])
                self.head_steps_[model] += 1
            alpha.append(self.alpha(model))
        info = SweepStepInfo(
            models=models, loss=[math.nan if i in failed else v for i, v in enumerate(values)],
            lambda_=lam.tolist(), Lambda=Lam.tolist(), alpha=alpha,
            diverged={models[i]: reason for i, reason in failed.items()})
        self._drop(dead, dead_body)
        self.diverged.update(info.diverged)
        return info

    def alpha(self, model: int) -> float:
        """``SlimTik.alpha_`` of a model (original index): Λ/(number of its head steps)."""
        return self.Lambda_[model] / max(self.head_steps_[model], 1)

    def _drop(self, rows: list[int], body: dict[str, torch.Tensor]) -> None:
        """Remove the models at ``rows`` from the stacks, keeping them (with their bodies ``body``
        from before this step's body update) in ``last_dropped``."""
        self.last_dropped = ([], {}, {}, {})
        if not rows:
            return
        dropped = [self.active[i] for i in rows]
        sel = torch.tensor(rows, dtype=torch.long)
        self.last_dropped = (dropped, body, {k: v[sel] for k, v in self.body_buffers.items()},
                             {k: v[sel].clone() for k, v in self.head_params.items()})
        keep = torch.tensor([i for i in range(self.n_active) if i not in rows], dtype=torch.long)
        self.body_params = {k: v.detach()[keep].requires_grad_(True) for k, v in self.body_params.items()}
        self.body_buffers = {k: v[keep] for k, v in self.body_buffers.items()}
        self.head_params = {k: v[keep] for k, v in self.head_params.items()}
        self.optimizer.keep(keep, self.body_params)
        remap = {int(old): new for new, old in enumerate(keep.tolist())}
        groups = []
        for group in self.groups:
            mask = torch.tensor([int(r) in remap for r in group.rows.tolist()], dtype=torch.bool)
            if not bool(mask.all()):
                self._drop_from_group(group, mask)
            group.rows = torch.tensor([remap[int(r)] for r in group.rows.tolist()], dtype=torch.long)
            if group.rows.numel():
                groups.append(group)
        self.groups = groups
        self.active = [self.active[i] for i in keep.tolist()]

    @staticmethod
    def _drop_from_group(group: _Group, keep: torch.Tensor) -> None:
        """Keep the rows ``keep`` (bool over the group's rows) of a group and of its solver state."""
        group.state = group.state.select(keep)
        group.rows = group.rows[keep]

    def _solve_rows_separately(self, group: _Group, G, H, c, m, W, W_new, lam, Lam, failed: dict[int, str]) -> None:
        """After a batched solve raised FloatingPointError: solve each model alone, drop the failures."""
        solved: list[SlimTikState] = []
        keep = torch.zeros(group.rows.numel(), dtype=torch.bool)
        for j, row in enumerate(group.rows.tolist()):
            sub = group.state.select([j])
            try:
                Wr, info = slimtik_step(sub, G[row:row + 1], H[row:row + 1], c[row:row + 1], m, W[row:row + 1],
                                        config=self.config, backend=self.backend)
            except FloatingPointError as exc:
                failed[row] = f"FloatingPointError: {exc}"
                continue
            W_new[row] = Wr[0]
            lam[row], Lam[row] = float(info.lambda_[0]), float(info.Lambda[0])
            keep[j] = True
            solved.append(sub)
        group.state = SlimTikState.cat(solved) if solved else group.state.select(keep)
        group.rows = group.rows[keep]

    # ------------------------------------------------------------------ full-data refit

    @torch.no_grad()
    def refit_heads(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 2048) -> list[float]:
        """``refit.refit_head`` for every active model on (x, y): exact ridge heads, μ by exact GCV.

        One pass in eval mode accumulates each model's float64 statistics (unscaled sums over
        chunks, then β² = 1/m), one batched solve; the heads are overwritten (the solver states
        keep their memory and Λ). Returns μ* per active model.
        """
        from .refit import ridge_gcv_solve

        B = self.n_active
        if B == 0:
            return []
        n_t, n_f = head_shape(self._head)
        G = torch.zeros(B, n_f, n_f, dtype=F64)
        H = torch.zeros(B, n_t, n_f, dtype=F64)
        c = torch.zeros(B, dtype=F64)
        m = 0
        vbody = vmap(self._body_call, in_dims=(0, 0, None))
        with eval_mode(self._body):
            for start in range(0, x.shape[0], chunk):
                xc, yc = x[start:start + chunk], y[start:start + chunk]
                z = vbody(self.body_params, self.body_buffers, xc)
                for i in range(B):
                    G_i, H_i, c_i, m_i = head_statistics(self._head, z[i], yc, "sum", check=False)
                    G[i] += G_i.cpu()
                    H[i] += H_i.cpu()
                    c[i] += c_i.cpu()
                m += m_i
        if self.reduction == "mean":
            G, H, c = G / m, H / m, c / m
        dev = self.head_params["weight"].device
        W, mu, _, _, _ = ridge_gcv_solve(G.to(dev), H.to(dev), c.to(dev), m, backend=self.backend)
        write_params_(self._head, self.head_params["weight"], self.head_params.get("bias"), W)
        return mu.tolist()

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 2048, dropped: bool = False
                 ) -> tuple[list[float], list[float]]:
        """Per active model: (mean squared error, relative error) of its network on (x, y), eval mode.

        As ``cli.evaluate`` per model (float64 sums over chunks of ``chunk`` samples). With
        ``dropped``: the models dropped by the last step instead (``last_dropped``).
        """
        if dropped:
            models, body_params, body_buffers, head_params = self.last_dropped
        else:
            models, body_params, body_buffers, head_params = (self.active, self.body_params, self.body_buffers,
                                                              self.head_params)
        if not models:
            return [], []
        vbody = vmap(self._body_call, in_dims=(0, 0, None))

        def predict(xc: torch.Tensor) -> torch.Tensor:
            return heads_forward(self._head, head_params, vbody(body_params, body_buffers, xc))

        with eval_mode(self._body, self._head):
            return split_errors(predict, x, y, chunk)


# run_sweep lives in sweep_run.py (file size); it imports this module lazily, so either may be imported first
from .sweep_run import run_sweep  # noqa: E402
