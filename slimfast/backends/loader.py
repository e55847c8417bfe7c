"""Lazy backend loader: never fails at import, caches success and failure, logs each attempt.

Preference on CPU tensors: cpp → numba → torch. On CUDA tensors: cuda → torch. The user can
force a backend per call (``backend=``) or for the process (``SLIMFAST_BACKEND``).
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType
from typing import Any

import torch

logger = logging.getLogger("slimfast")

BACKEND_NAMES: tuple[str, ...] = ("cuda", "cpp", "numba", "torch")
_MODULES: dict[str, str] = {
    "cuda": "slimfast.backends.cuda",
    "cpp": "slimfast.backends.cpp",
    "numba": "slimfast.backends.numba_backend",
    "torch": "slimfast.backends.torch_backend",
}
_CPU_ORDER = ("cpp", "numba", "torch")
_CUDA_ORDER = ("cuda", "torch")
#: Backends that run on each device type.
_DEVICE_BACKENDS = {"cpu": set(_CPU_ORDER), "cuda": set(_CUDA_ORDER)}

_cache: dict[str, ModuleType | Exception] = {}


def load_backend(name: str) -> ModuleType | None:
    """The backend module, or None if it cannot be imported (the reason is cached and logged).

    MemoryError during the import propagates and is not cached: a later call imports again.
    """
    if name not in _MODULES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {name!r}")
    if name not in _cache:
        try:
            _cache[name] = importlib.import_module(_MODULES[name])
            logger.debug("slimfast backend %r loaded", name)
        except MemoryError:
            # Memory pressure is not a property of the backend: raise now, try again next call.
            logger.info("slimfast backend %r: import ran out of memory (not cached, retried next call)", name)
            raise
        except Exception as exc:  # any failure (missing .so, ABI, numba) means "not available"
            _cache[name] = exc
            logger.info("slimfast backend %r unavailable: %s", name, exc)
    found = _cache[name]
    return None if isinstance(found, Exception) else found


_FORCE_VARIABLE = "SLIMFAST_BACKEND"
# os.environ's own store (updated in place by every set and delete) and the variable's key in it,
# where the interpreter keeps one: reading it is what os.environ.get does, without the exceptions.
_ENV_STORE = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey(_FORCE_VARIABLE) if hasattr(os.environ, "encodekey") else None


def _forced() -> str | None:
    value = _environment_value(_FORCE_VARIABLE).strip().lower()
    return value or None


def _environment_value(name: str) -> str:
    """``os.environ.get(name, "")`` without its exceptions: when the variable is unset, ``get``
    raises and catches KeyError twice, which the fast head paths pay every step, from cold caches
    after the body's backward pass. ``os.environ``'s own store, where the interpreter keeps one,
    is read directly; it is what ``get`` reads."""
    if _ENV_STORE is None or _ENV_KEY is None:
        return os.environ.get(name, "")
    raw = _ENV_STORE.get(os.environ.encodekey(name))
    if raw is None:
        return ""
    return os.environ.decodevalue(raw)


def picks_cpp(name: str | None, device: torch.device) -> bool:
    """Whether ``resolve_backend(name, device)`` picks "cpp" (False where it would raise, so
    that the caller's general path names the error): the compiled fast paths' check every step,
    written as one dictionary read of the environment and one of the loaded backends."""
    if device.type in _DEVICE_BACKENDS and device.type != "cpu":   # as resolve_backend: others count as CPU
        return False
    if name is None and (_ENV_STORE is None or _ENV_STORE.get(_ENV_KEY)):   # set (or unknown): read it fully
        name = _forced()
    if name is not None and name != "cpp":
        return False
    found = _cache.get("cpp")
    return load_backend("cpp") is not None if found is None else not isinstance(found, Exception)


def resolve_backend(name: str | None, device: torch.device) -> tuple[str, ModuleType]:
    """Pick the backend for tensors on ``device``: the requested one, else the best available."""
    requested = name if name is not None else _forced()
    kind = device.type if device.type in _DEVICE_BACKENDS else "cpu"
    if requested is not None:
        if requested not in _MODULES:
            raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {requested!r}")
        if requested not in _DEVICE_BACKENDS[kind]:
            raise ValueError(f"backend {requested!r} cannot run on {device.type} tensors")
        module = load_backend(requested)
        if module is None:
            raise RuntimeError(f"backend {requested!r} is not available: {_cache[requested]}")
        return requested, module
    order = _CUDA_ORDER if kind == "cuda" else _CPU_ORDER
    for candidate in order:
        module = load_backend(candidate)
        if module is not None:
            if candidate != order[0] and not _announced.get(kind):
                logger.warning("slimfast: compiled %s backend unavailable, falling back to %r", order[0], candidate)
            _announced[kind] = True
            return candidate, module
    raise RuntimeError("no slimfast backend could be loaded")  # torch always loads; kept for clarity


_announced: dict[str, bool] = {}


def backend_info() -> dict[str, Any]:
    """What was built and what would be used: availability (with reasons), defaults, version."""
    from .._version import __version__

    available = {}
    for name in BACKEND_NAMES:
        module = load_backend(name)
        available[name] = True if module is not None else f"unavailable: {_cache[name]}"
    default_cpu = next(n for n in _CPU_ORDER if available[n] is True)
    default_cuda = next((n for n in _CUDA_ORDER if available[n] is True), None)
    return {
        "version": __version__,
        "default_cpu": _forced() or default_cpu,
        "default_cuda": default_cuda if torch.cuda.is_available() else None,
        "forced": _forced(),
        "available": available,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # whose dsyevd/dgemm/dgemv the cpp kernels call ("scipy" or "mkl (torch)"; lapack_provider)
        "cpu_lapack": _cpu_lapack() if available["cpp"] is True else None,
    }


def _cpu_lapack() -> str:
    from . import lapack_provider

    return lapack_provider.PROVIDER
