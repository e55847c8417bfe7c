"""``SlimTik.step`` keeps torch.optim's hook and profiler conventions (slimfast/step_hooks.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim import optimizer as torch_optimizer

from slimfast import SlimTik
from slimfast.step_hooks import light_step_hooks


def _problem(seed: int = 0) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(5, 2).double()
    with torch.no_grad():
        head.weight.copy_(torch.randn(2, 5, generator=g, dtype=torch.float64))
        head.bias.copy_(torch.randn(2, generator=g, dtype=torch.float64))
    return head, torch.randn(16, 5, generator=g, dtype=torch.float64), torch.randn(16, 2, generator=g,
                                                                                  dtype=torch.float64)


def test_torch_does_not_wrap_the_step_again() -> None:
    step = SlimTik.step
    head, _, _ = _problem()
    SlimTik(head)
    assert SlimTik.step is step and getattr(step, "hooked", False)


def test_instance_hooks_run_in_order_and_a_pre_hook_may_replace_the_batch() -> None:
    head, z, y = _problem()
    slim = SlimTik(head)
    calls: list[str] = []
    other = 2.0 * y

    def pre(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        calls.append("pre")
        assert opt is slim and args[0] is slim and args[1] is z   # torch's convention: args holds self
        return (args[0], args[1], other), kwargs

    def post(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        calls.append("post")
        assert args[2] is other

    handles = [slim.register_step_pre_hook(pre), slim.register_step_post_hook(post)]
    slim.step(z, y)
    for h in handles:
        h.remove()
    assert calls == ["pre", "post"]

    reference_head, _, _ = _problem()
    SlimTik(reference_head).step(z, other)
    assert torch.equal(head.weight, reference_head.weight) and torch.equal(head.bias, reference_head.bias)


def test_global_hooks_run_and_removing_them_restores_the_plain_step() -> None:
    head, z, y = _problem()
    slim = SlimTik(head)
    seen: list[str] = []
    handles = [torch_optimizer.register_optimizer_step_pre_hook(lambda o, a, k: seen.append("pre")),
               torch_optimizer.register_optimizer_step_post_hook(lambda o, a, k: seen.append("post"))]
    try:
        slim.step(z, y)
    finally:
        for h in handles:
            h.remove()
    assert seen == ["pre", "post"]
    slim.step(z, y)
    assert seen == ["pre", "post"] and slim.n_steps_ == 2


def test_the_profiler_sees_the_step_label() -> None:
    head, z, y = _problem()
    slim = SlimTik(head)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        slim.step(z, y)
    names = {event.name for event in prof.events()}
    assert "Optimizer.step#SlimTik.step" in names


def test_same_result_with_and_without_the_torch_wrapper() -> None:
    """A registered no-op hook sends the step through torch's wrapper: nothing else changes."""
    results = []
    for hook in (False, True):
        head, z, y = _problem(3)
        slim = SlimTik(head, memory_depth=2)
        handle = slim.register_step_pre_hook(lambda o, a, k: None) if hook else None
        infos = [slim.step(z * (1 + 0.1 * k), y) for k in range(3)]
        if handle is not None:
            handle.remove()
        results.append((head.weight.clone(), head.bias.clone(), [info.Lambda for info in infos]))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert results[0][2] == results[1][2]


def test_without_the_internals_torch_wraps_as_usual(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch_optimizer, "_global_optimizer_pre_hooks")

    def step(self: torch.optim.Optimizer) -> None:
        return None

    assert light_step_hooks(step) is step
