"""Which ``SlimTik`` owns a head: one optimizer per head, so two never write the same weights.

The registry maps each head (weakly) to a weak reference to its optimizer; it lives here rather
than as an attribute of the head, so pickling or deep-copying a model never drags an optimizer
along, and a deleted optimizer frees its head.
"""

from __future__ import annotations

import weakref
from typing import Any

from torch import nn

__all__ = ["check_owner", "claim", "release_head"]

#: head → weak reference to the SlimTik that owns it.
_OWNERS: weakref.WeakKeyDictionary[nn.Module, weakref.ReferenceType[Any]] = weakref.WeakKeyDictionary()


def claim(head: nn.Module, slim: Any) -> None:
    """Make ``slim`` the owner of ``head``; ValueError if another live SlimTik owns it already
    (two optimizers writing one head would each solve against weights the other overwrote)."""
    ref = _OWNERS.get(head)
    owner = ref() if ref is not None else None
    if owner is not None and owner is not slim and owner.__dict__.get("head") is head:
        raise ValueError("this head already has a SlimTik optimizer; one head takes one SlimTik (delete the old "
                         "one, reset it with load_state_dict, or hand the head over with release_head(head))")
    _OWNERS[head] = weakref.ref(slim)


def release_head(head: nn.Module) -> None:
    """Free ``head`` for a new SlimTik; the SlimTik that owned it refuses further steps
    (RuntimeError), so two optimizers never write one head. For frameworks that build a new
    optimizer while the old one is still referenced (e.g. a second ``configure_optimizers``)."""
    _OWNERS.pop(head, None)


def check_owner(slim: Any) -> None:
    """RuntimeError unless ``slim`` is the registered owner of its head (called at every step)."""
    ref = _OWNERS.get(slim.head)
    if ref is None or ref() is not slim:
        raise RuntimeError("this SlimTik no longer owns its head (release_head was called, or another SlimTik "
                           "took the head over); step with the head's current SlimTik")
