"""``SlimTik.step``'s torch wrapper, entered only when something would observe it.

``torch.optim.Optimizer`` wraps every subclass's ``step`` (``Optimizer.profile_hook_step``): a
profiler label (``record_function``) around the global and per-optimizer pre- and post-step hooks
and the call. The label is paid on every step whether or not a profiler runs; inside a training
loop, with the caches cold after backward, the wrapper cost 0.05–0.15 ms per step against a
fused small-head step of 0.3–0.5 ms (benchmarks/RESULTS.md). So ``light_step_hooks`` marks the
method as hooked (torch then leaves it alone) and dispatches per call:

* a step pre- or post-hook registered anywhere (this optimizer's or torch's global ones), or the
  autograd profiler on: torch's own wrapper runs, exactly as for any optimizer;
* otherwise: the step alone, which is what torch's wrapper would have done.

Where this torch lacks the internals the check reads, the method is returned as it was and
torch wraps it as usual.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch.optim import optimizer as torch_optimizer

__all__ = ["light_step_hooks"]

Step = TypeVar("Step", bound=Callable[..., Any])

_GLOBAL_HOOKS = ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks")


def _supported() -> bool:
    return (all(isinstance(getattr(torch_optimizer, name, None), dict) for name in _GLOBAL_HOOKS)
            and callable(getattr(torch.optim.Optimizer, "profile_hook_step", None))
            and callable(getattr(torch.autograd, "_profiler_enabled", None)))


def light_step_hooks(step: Step) -> Step:
    """``step`` wrapped so that torch's hook-and-profile wrapper runs only when a hook is
    registered or the profiler is on (see the module docstring)."""
    if not _supported():
        return step
    hooked = torch.optim.Optimizer.profile_hook_step(step)
    global_pre, global_post = (getattr(torch_optimizer, name) for name in _GLOBAL_HOOKS)
    profiler_enabled = torch.autograd._profiler_enabled

    @functools.wraps(step)
    def wrapper(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        if (global_pre or global_post or self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or profiler_enabled()):
            return hooked(self, *args, **kwargs)
        return step(self, *args, **kwargs)

    wrapper.hooked = True   # type: ignore[attr-defined]  # torch's own mark: do not wrap again
    return wrapper   # type: ignore[return-value]
