"""Buffers kept across steps, so that a step's large temporaries are not allocated anew each time.

A fresh allocation of a few hundred kilobytes or more is memory the allocator maps from the
system, and every page of it faults on first touch: at the MNIST-autoencoder shape the head
step's temporaries cost ~900 page faults per training step, about a third of its statistics'
time. A ``Workspace`` belongs to one optimizer (never shared between threads) and hands out
the same tensor for the same name, shape, dtype and device every step.
"""

from __future__ import annotations

import torch

__all__ = ["Workspace"]


class Workspace:
    """Named buffers, reused while their shape, dtype and device stay the same."""

    __slots__ = ("_buffers",)

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def empty(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The buffer ``name`` of ``shape`` (contents: whatever the last user left)."""
        return self._get(name, shape, dtype, device, zero=False)

    def zeros(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The buffer ``name`` of ``shape``, zero when created: for callers that write the same
        entries every time and rely on the others staying zero."""
        return self._get(name, shape, dtype, device, zero=True)

    def _get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
             zero: bool) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype or buf.device != device:
            buf = torch.zeros(shape, dtype=dtype, device=device) if zero else torch.empty(shape, dtype=dtype,
                                                                                            device=device)
            self._buffers[name] = buf
        return buf
