"""Stacked pieces of a sweep: B models' parameters in [B, ...] tensors, one op for all of them.

``StackedAdam`` (torch.optim.Adam's arithmetic with one learning rate per model), ``_StackedMSE``
(nn.MSELoss per model with ATen's backward), ``heads_forward`` (B heads' forward with stacked
parameters) and ``problem_models`` (the initial networks of a sweep). The stacked head
parameters map to and from the solver's W [B, n_t, n_f] by ``heads.params_to_matrix`` and
``heads.write_params_``. Used by ``sweep.SweepTrainer`` (slimTrain) and
``sweep_adam.AdamSweepTrainer`` (the Adam baseline).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import stack_module_state

from .heads import HeadLayer, _conv_pads

__all__ = ["StackedAdam"]



# ============================================================================ optimizer

class StackedAdam:
    """``torch.optim.Adam`` (amsgrad, maximize off) on stacked parameters [B, ...], lr per model.

    The arithmetic is that of torch's single-tensor CPU path, per element and in the same order,
    so every model gets the update Adam would give it alone:

        m ← lerp(m, g, 1 − β₁);  v ← β₂ v + (1 − β₂) g²;  denom = √v / √(1 − β₂ᵗ) + ε
        θ ← θ + ((−lr_b/(1 − β₁ᵗ)) · m) / denom           (torch's addcdiv: value·t₁/t₂)

    Weight decay (L2, added to the gradient) is shared by all models. All models step together,
    so the step count t is one number.
    """

    def __init__(self, params: dict[str, torch.Tensor], lr: Sequence[float], betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        self.params = params
        self.lr = [float(v) for v in lr]
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.exp_avg = {k: torch.zeros_like(p, memory_format=torch.preserve_format) for k, p in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(p, memory_format=torch.preserve_format) for k, p in params.items()}
        self.t = 0

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        self.t += 1
        bias_correction1 = 1 - beta1**self.t
        bias_correction2_sqrt = (1 - beta2**self.t) ** 0.5
        neg_steps: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        for k, p in self.params.items():
            if p.grad is None:
                continue
            key = (p.dtype, p.device)
            if key not in neg_steps:   # −lr_b/(1 − β₁ᵗ) rounded to the parameter dtype, as addcdiv's value
                neg_steps[key] = torch.tensor([-(lr / bias_correction1) for lr in self.lr], dtype=p.dtype,
                                              device=p.device)
            grad = p.grad
            if self.weight_decay != 0:
                grad = grad.add(p, alpha=self.weight_decay)
            exp_avg, exp_avg_sq = self.exp_avg[k], self.exp_avg_sq[k]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
            step = neg_steps[key].view((-1,) + (1,) * (p.ndim - 1))
            p.add_(exp_avg.mul(step).div_(denom))

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def keep(self, rows: torch.Tensor, params: dict[str, torch.Tensor]) -> None:
        """Keep only the models ``rows`` (after the caller re-created ``params`` for them)."""
        self.params = params
        self.lr = [self.lr[i] for i in rows.tolist()]
        self.exp_avg = {k: v[rows] for k, v in self.exp_avg.items()}
        self.exp_avg_sq = {k: v[rows] for k, v in self.exp_avg_sq.items()}


# ============================================================================ loss

class _StackedMSE(torch.autograd.Function):
    """``nn.MSELoss(reduction)`` of each model: [B, ...] predictions and targets → [B] losses.

    Written out so that the backward is ATen's ``mse_loss_backward`` per model, element for
    element: grad = (norm · (pred − target)) · grad_output, norm = 2/n ("mean") or 2 ("sum").
    (vmap of ``F.mse_loss`` decomposes it and rounds the gradient differently.)
    """

    @staticmethod
    def forward(ctx: Any, pred: torch.Tensor, target: torch.Tensor, mean: bool) -> torch.Tensor:
        diff = pred - target
        ctx.save_for_backward(diff)
        ctx.norm = 2.0 / diff[0].numel() if mean else 2.0
        sq = (diff * diff).reshape(diff.shape[0], -1)
        return sq.mean(1) if mean else sq.sum(1)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (diff,) = ctx.saved_tensors
        g = grad_out.view((-1,) + (1,) * (diff.ndim - 1))
        return diff.mul(ctx.norm).mul_(g), None, None


# ============================================================================ heads, stacked

def _head_apply(head: HeadLayer, weight: torch.Tensor, bias: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
    """``head(z)`` with the given weight and bias: the op of the layer's own forward."""
    if isinstance(head, nn.Linear):
        return F.linear(z, weight, bias)
    if isinstance(head, nn.Conv2d):
        if head.padding_mode == "zeros":
            return F.conv2d(z, weight, bias, head.stride, head.padding, head.dilation, head.groups)
        padded = F.pad(z, _conv_pads(head), mode=head.padding_mode)   # the layer's own padding, done by hand
        return F.conv2d(padded, weight, bias, head.stride, 0, head.dilation, head.groups)
    return F.conv_transpose2d(z, weight, bias, head.stride, head.padding, head.output_padding, head.groups,
                              head.dilation)


def heads_forward(head: HeadLayer, params: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """[B, ...] predictions of B stacked heads (params "weight" [B, ...], "bias" [B, n_t]) on their
    own features z[i], one head call per model: a vmapped head runs other GEMM kernels (bmm instead
    of addmm/gemv) and rounds differently from the model trained alone; the vmapped body does not
    (checked bit for bit in tests/test_sweep.py)."""
    weight, bias = params["weight"], params.get("bias")
    return torch.stack([_head_apply(head, weight[i], None if bias is None else bias[i], z[i])
                        for i in range(z.shape[0])])


def check_stackable(modules: Sequence[nn.Module], what: str = "bodies") -> None:
    """ValueError if a module keeps running statistics (BatchNorm with ``track_running_stats``):
    its buffers change in training mode, which stacked functional calls do not carry over."""
    for module in modules:
        for mod in module.modules():
            if getattr(mod, "track_running_stats", False):
                raise ValueError(f"{what} with running statistics ({type(mod).__name__}) cannot be stacked; "
                                 "train these models one at a time")


def stack_params(modules: Sequence[nn.Module], trainable: bool = True) -> tuple[dict[str, torch.Tensor],
                                                                               dict[str, torch.Tensor]]:
    """(parameters, buffers) of B modules of one architecture stacked into [B, ...] leaf tensors
    (``torch.func.stack_module_state``), the parameters requiring grad when ``trainable``."""
    params, buffers = stack_module_state(list(modules))
    return ({k: v.detach().requires_grad_(trainable) for k, v in params.items()},
            {k: v.detach() for k, v in buffers.items()})


class FromProblem:
    """``from_problem`` for the stacked trainers, whose constructor takes (bodies, heads, specs, ...)."""

    @classmethod
    def from_problem(cls, problem: Any, specs: Sequence[Any], **kwargs: Any) -> Any:
        """The models of ``runs.run_training``: ``problem.make_body(seed)``/``make_head(seed)`` per spec."""
        return cls(*problem_models(problem, specs), specs, **kwargs)


def problem_models(problem: Any, specs: Sequence[Any]) -> tuple[list[nn.Module], list[nn.Module]]:
    """(bodies, heads) of a sweep's models: ``problem.make_body(seed)``/``make_head(seed)`` per spec,
    after ``torch.manual_seed(seed)``, as ``runs.run_training`` initialises a run."""
    bodies, heads = [], []
    for spec in specs:
        torch.manual_seed(spec.seed)
        bodies.append(problem.make_body(spec.seed))
        heads.append(problem.make_head(spec.seed))
    return bodies, heads
