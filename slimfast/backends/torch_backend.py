"""The float64 torch reference as a backend (on CUDA tensors: the cuSOLVER baseline)."""

from __future__ import annotations

from .._torch_impl import _slimtik_step as slimtik_step

__all__ = ["slimtik_step"]

#: ``slimtik_step`` runs the block-structured step (``_torch_block``) when ``inputs.blocks`` is set.
BLOCK_STEP = True
