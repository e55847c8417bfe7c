"""A module tree's buffers (or parameters), found without walking the tree at every training step.

``SlimTrain.train_step`` keeps the body's buffers (BatchNorm running statistics) before the
forward pass so that a rejected batch leaves no trace. ``Module.buffers()`` walks every submodule
through generators: 20–40 µs per step for a 19-module body with no buffers at all, a tenth of a
small head's whole slimTik step. The (module, name) slots are found once and re-read by name at
every call, so buffers that ``Module.to``/``_apply`` replace under the same name are followed;
a buffer, parameter or submodule registered anywhere (torch's global registration hooks, installed
at first use) makes every ``ModuleBuffers`` look again. The same cache with ``parameters=True``
gives the head's parameters, whose ``requires_grad`` ``SlimTrain`` switches off around the head's
forward pass at every step.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as torch_module

__all__ = ["ModuleBuffers"]

_generation = 0
_hooks = None


def _registered(*_: object) -> None:
    """Global registration hook (buffers, parameters, submodules): the slots anywhere may have changed."""
    global _generation
    _generation += 1


def _install_hooks() -> None:
    global _hooks
    if _hooks is None:
        _hooks = (torch_module.register_module_buffer_registration_hook(_registered),
                  torch_module.register_module_parameter_registration_hook(_registered),
                  torch_module.register_module_module_registration_hook(_registered))


class ModuleBuffers:
    """The buffers (``parameters=True``: the parameters) of a module and its submodules, in
    ``Module.buffers()`` (``Module.parameters()``) order (a cache; a tensor shared by two
    submodules is listed twice)."""

    def __init__(self, parameters: bool = False) -> None:
        _install_hooks()
        self._table = "_parameters" if parameters else "_buffers"
        self._module: nn.Module | None = None
        self._seen = -1
        self._slots: tuple[tuple[nn.Module, str], ...] = ()

    def of(self, module: nn.Module) -> list[torch.Tensor]:
        """The current buffer (parameter) tensors of ``module`` (None entries left out)."""
        table = self._table
        if self._seen != _generation or self._module is not module:
            self._slots = tuple((m, name) for m in module.modules() for name in getattr(m, table))
            self._module, self._seen = module, _generation
        return [b for m, name in self._slots if (b := getattr(m, table).get(name)) is not None]
