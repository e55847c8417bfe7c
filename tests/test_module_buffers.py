"""ModuleBuffers: the cached buffer list equals Module.buffers() through every kind of change."""

from __future__ import annotations

import torch
from torch import nn

from slimfast.module_buffers import ModuleBuffers


def _matches(cache: ModuleBuffers, module: nn.Module) -> bool:
    got, want = cache.of(module), list(module.buffers())
    return len(got) == len(want) and all(a is b for a, b in zip(got, want))


def test_follows_new_submodules_buffers_and_replaced_tensors() -> None:
    cache = ModuleBuffers()
    body = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
    assert cache.of(body) == [] and _matches(cache, body)
    body.append(nn.BatchNorm1d(4))                              # a submodule with buffers
    assert len(cache.of(body)) == 3 and _matches(cache, body)
    body[2].register_buffer("extra", torch.zeros(2))           # a new buffer
    assert _matches(cache, body)
    body.double()                                               # _apply replaces the tensors by name
    assert cache.of(body)[0].dtype == torch.float64 and _matches(cache, body)
    body[2].running_mean = torch.ones(4, dtype=torch.float64)   # assignment to a buffer name
    assert _matches(cache, body)
    body[2].extra = None                                        # a None buffer is left out
    assert _matches(cache, body)


def test_another_module_is_looked_up_afresh() -> None:
    cache = ModuleBuffers()
    first, second = nn.BatchNorm1d(2), nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(3))
    assert _matches(cache, first)
    assert _matches(cache, second) and cache.of(second)[0].shape == (3,)


def test_parameters_follow_new_modules_parameters_and_replacements() -> None:
    cache = ModuleBuffers(parameters=True)

    def matches(module: nn.Module) -> bool:
        got, want = cache.of(module), list(module.parameters())
        return len(got) == len(want) and all(a is b for a, b in zip(got, want))

    head = nn.Sequential(nn.Linear(3, 2))
    assert len(cache.of(head)) == 2 and matches(head)
    head[0].register_parameter("scale", nn.Parameter(torch.ones(2)))   # a new parameter
    assert len(cache.of(head)) == 3 and matches(head)
    head[0].weight = nn.Parameter(torch.zeros(2, 3))                   # assignment to a parameter name
    assert cache.of(head)[0] is head[0].weight and matches(head)
    head[0].bias = None                                                 # a None parameter is left out
    assert matches(head)
    head.append(nn.Linear(2, 1, bias=False))                            # a new submodule
    assert len(cache.of(head)) == 3 and matches(head)
    assert ModuleBuffers().of(head) == []                               # buffers and parameters apart
