"""Checkpoints of a slimTrain run that resume bit-identically on CPU, mid-epoch included.

    trainer.fit(loader, epochs, progress=lambda e, i, n, loss: save_checkpoint(
        "run.pt", slimtrain=trainer, epoch=e, batch_index=i + 1))
    ...
    ck = load_checkpoint("run.pt", slimtrain=trainer)            # fresh objects, any backend
    trainer.fit(loader, epochs, start_epoch=ck.epoch, start_batch=ck.batch_index)

A checkpoint holds the body, the head, the body optimizer, ``SlimTik`` (float64 memory, Λ,
histories), an optional LR scheduler and named ``torch.Generator`` s, the torch (CPU and CUDA),
numpy and python RNG states, the position (``epoch``, ``batch_index`` = batches of ``epoch``
already trained) and the trainer's running epoch loss.

Data order. The position says where to continue, not which samples come next, so the order
of an epoch must be reproducible from its index: a fixed order, or a sampler with
``set_epoch`` such as ``EpochSampler`` below (``SlimTrain.fit`` calls ``set_epoch`` at every
epoch start). ``fit(start_batch=k)`` then draws and discards the first k batches with the RNG
states restored afterwards, so augmentation drawn from the global RNGs in the main process
stays in step. (A ``DataLoader(shuffle=True)`` without a per-epoch seed draws its order from
the global torch RNG when the epoch starts, which a mid-epoch checkpoint cannot reproduce.)

Backends. The solver state carries no backend: a checkpoint written while running "torch"
loads and continues on "cpp", "numba" or "cuda" (the backends agree to rounding; see
tests/test_checkpoint.py for the measured tolerance). Bit-identical continuation needs the same
backend, device and thread settings, as any floating-point run does.
"""

from __future__ import annotations

import copy
import math
import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["Checkpoint", "EpochSampler", "get_rng_state", "load_checkpoint", "save_checkpoint", "set_rng_state"]

FORMAT = "slimfast-checkpoint"
VERSION = 1


# ----------------------------------------------------------------------------- RNG states


def get_rng_state() -> dict[str, Any]:
    """The torch CPU, CUDA (all devices, if CUDA is initialised), numpy global and python
    ``random`` states, as tensors and plain Python values (loadable with ``weights_only=True``)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": int(py_version), "internal": list(py_internal), "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what ``get_rng_state`` returned. CUDA states are restored only where this
    process has CUDA with the same number of devices (a CPU resume ignores them)."""
    torch.set_rng_state(state["torch"].cpu())
    npst = state["numpy"]
    keys = np.asarray(npst["keys"].cpu().numpy(), dtype=np.uint32)
    np.random.set_state((npst["name"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))
    pyst = state["python"]
    random.setstate((pyst["version"], tuple(pyst["internal"]), pyst["gauss_next"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


# ----------------------------------------------------------------------------- data order


class EpochSampler(torch.utils.data.Sampler[int]):
    """Indices 0…n−1 in an order that depends only on ``(seed, epoch)``.

    ``set_epoch(e)`` (called by ``SlimTrain.fit``) selects the permutation drawn from a generator
    seeded with ``SeedSequence((seed, e))``; it consumes no global RNG, so a resumed run sees the
    same order. Use as ``DataLoader(dataset, batch_size, sampler=EpochSampler(len(dataset), seed))``.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True) -> None:
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        self.n, self.seed, self.shuffle, self.epoch = n, int(seed), bool(shuffle), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        seed = int(np.random.SeedSequence((self.seed, self.epoch)).generate_state(1, np.uint32)[0])
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(seed)).tolist())


# ----------------------------------------------------------------------------- save / load


@dataclass(frozen=True)
class Checkpoint:
    """What ``load_checkpoint`` returns besides restoring the objects in place.

    Attributes:
        epoch: epoch to continue (``fit(start_epoch=epoch)``).
        batch_index: batches of that epoch already trained (``fit(start_batch=batch_index)``).
        extra: the ``extra`` object given to ``save_checkpoint``.
        backend: solver backend of the last saved head step (None before any step).
    """

    epoch: int
    batch_index: int
    extra: Any
    backend: str | None


def _parts(slimtrain: Any, body: Any, head: Any, body_optimizer: Any, slim: Any) -> tuple[Any, Any, Any, Any]:
    if slimtrain is not None:
        if any(x is not None for x in (body, head, body_optimizer, slim)):
            raise ValueError("pass either slimtrain or (body, head, body_optimizer, slim), not both")
        return slimtrain.body, slimtrain.head, slimtrain.body_optimizer, slimtrain.slim
    missing = [n for n, x in (("body", body), ("head", head), ("body_optimizer", body_optimizer), ("slim", slim))
               if x is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}: pass slimtrain or all of body, head, body_optimizer, slim")
    if slim.head is not head:
        raise ValueError("slim must be the SlimTik optimizer of head (slim.head is not head)")
    return body, head, body_optimizer, slim


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    slimtrain: Any = None, body: torch.nn.Module | None = None, head: torch.nn.Module | None = None,
    body_optimizer: torch.optim.Optimizer | None = None, slim: Any = None,
    epoch: int,
    batch_index: int,
    scheduler: Any = None,
    generators: Mapping[str, torch.Generator] | None = None,
    extra: Any = None,
) -> None:
    """Write a checkpoint of the run at (``epoch``, ``batch_index``).

    Args:
        path: file to write; written to ``path.tmp`` first and renamed, so an interrupted save
            never replaces a good checkpoint with a broken one.
        slimtrain: a ``SlimTrain`` (its body, head, body optimizer, SlimTik and running epoch
            loss), or else ``body``, ``head``, ``body_optimizer`` and ``slim`` (``SlimTik``).
        epoch: the epoch in progress (0-based).
        batch_index: batches of ``epoch`` already trained (``i + 1`` in a ``progress`` callback;
            save at an epoch's end as ``(epoch + 1, 0)``).
        scheduler: optional LR scheduler (anything with ``state_dict``).
        generators: optional named ``torch.Generator`` s whose states to save (e.g. one you
            draw augmentation from).
        extra: anything else to store; with the default ``load_checkpoint(weights_only=True)``
            it must be plain data (dicts, lists, numbers, strings, tensors).
    """
    body, head, body_optimizer, slim = _parts(slimtrain, body, head, body_optimizer, slim)
    for name, value in (("epoch", epoch), ("batch_index", batch_index)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    last = getattr(slim, "last_info_", None)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "epoch": epoch,
        "batch_index": batch_index,
        "body": body.state_dict(),
        "head": head.state_dict(),
        "body_optimizer": body_optimizer.state_dict(),
        "slim": slim.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "generators": {str(k): g.get_state() for k, g in (generators or {}).items()},
        "rng": get_rng_state(),
        "epoch_running": None if slimtrain is None else [float(slimtrain.epoch_running[0]),
                                                         int(slimtrain.epoch_running[1])],
        "backend": last.backend if last is not None and last.backend else None,
        "extra": extra,
    }
    path = os.fspath(path)
    tmp = path + ".tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _read_payload(path: str, weights_only: bool) -> dict[str, Any]:
    """The file's dict; ValueError naming the file for anything that is not a readable checkpoint
    (truncated, not a torch file, a corrupted or foreign pickle). A missing file stays
    FileNotFoundError."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=weights_only)
    except FileNotFoundError:
        raise
    except Exception as exc:   # OSError, EOFError, UnpicklingError, RuntimeError of the zip reader, ...
        raise ValueError(f"{path!r} is not a readable slimfast checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a slimfast checkpoint")
    return payload


def _check_module_state(field: str, module: torch.nn.Module, state: Any) -> None:
    """What ``module.load_state_dict(state)`` (strict) would reject: missing or unexpected keys and
    shapes that differ."""
    if not isinstance(state, Mapping):
        raise ValueError(f"field {field} must be a state dict, got {type(state).__name__}")
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"field {field} does not fit the module: missing keys {missing}, unexpected keys {unexpected}")
    for key, value in own.items():
        if isinstance(value, torch.Tensor):
            other = state[key]
            if not isinstance(other, torch.Tensor) or other.shape != value.shape:
                raise ValueError(f"field {field}.{key} has shape {list(getattr(other, 'shape', []))}, the module's "
                                 f"is {list(value.shape)}")


def _check_optimizer_state(field: str, optimizer: torch.optim.Optimizer, state: Any) -> None:
    """What ``Optimizer.load_state_dict`` would reject: another number of groups or group sizes."""
    groups = state.get("param_groups") if isinstance(state, Mapping) else None
    if not isinstance(groups, list) or not isinstance(state.get("state"), Mapping):
        raise ValueError(f"field {field} is not an optimizer state dict")
    sizes = [len(g["params"]) for g in optimizer.param_groups]
    try:
        saved = [len(g["params"]) for g in groups]
    except (TypeError, KeyError):
        raise ValueError(f"field {field}.param_groups is malformed") from None
    if saved != sizes:
        raise ValueError(f"field {field} has parameter groups of sizes {saved}, the optimizer's are {sizes}")


def _check_payload(payload: dict[str, Any], body: Any, head: Any, body_optimizer: Any, slim: Any, scheduler: Any,
                   gens: dict[str, torch.Generator], slimtrain: Any) -> None:
    """Every field ``load_checkpoint`` applies, checked before any is applied."""
    if not isinstance(payload.get("version", 0), int) or payload.get("version", 0) > VERSION:
        raise ValueError(f"checkpoint version {payload.get('version')} is newer than this slimfast ({VERSION})")
    missing = [k for k in ("epoch", "batch_index", "body", "head", "body_optimizer", "slim", "scheduler",
                           "generators", "rng", "epoch_running", "backend", "extra") if k not in payload]
    if missing:
        raise ValueError(f"fields {missing} are missing")
    for name in ("epoch", "batch_index"):
        value = payload[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"field {name} must be a non-negative integer, got {value!r}")
    _check_module_state("body", body, payload["body"])
    _check_module_state("head", head, payload["head"])
    _check_optimizer_state("body_optimizer", body_optimizer, payload["body_optimizer"])
    try:
        slim.check_state_dict(payload["slim"])
    except ValueError as exc:
        raise ValueError(f"field slim: {exc}") from None
    saved_gens = payload["generators"]
    if not isinstance(saved_gens, Mapping):
        raise ValueError("field generators must be a dict")
    if set(gens) - set(saved_gens):
        raise ValueError(f"generators {sorted(set(gens) - set(saved_gens))} are not in the checkpoint "
                         f"(it has {sorted(saved_gens)})")
    for name, gen in gens.items():
        saved = saved_gens[name]
        if not isinstance(saved, torch.Tensor) or saved.dtype != torch.uint8 or saved.numel() != gen.get_state().numel():
            raise ValueError(f"field generators.{name} is not a state of this generator")
    if scheduler is not None and payload["scheduler"] is None:
        raise ValueError("scheduler given, but the checkpoint has no scheduler state")
    if scheduler is not None and not isinstance(payload["scheduler"], Mapping):
        raise ValueError("field scheduler must be a state dict")
    rng = payload["rng"]
    if not isinstance(rng, Mapping) or not isinstance(rng.get("torch"), torch.Tensor) \
            or rng["torch"].numel() != torch.get_rng_state().numel() \
            or not isinstance(rng.get("numpy"), Mapping) or not isinstance(rng.get("python"), Mapping):
        raise ValueError("field rng is not a saved RNG state")
    running = payload["epoch_running"]
    if slimtrain is not None and running is not None:
        if not (isinstance(running, (list, tuple)) and len(running) == 2
                and isinstance(running[0], (int, float)) and math.isfinite(running[0])):
            raise ValueError(f"field epoch_running must be [finite total, count], got {running!r}")


def _apply_states(parts: Mapping[str, Any], gens: Mapping[str, torch.Generator], states: Mapping[str, Any]) -> None:
    """Load ``states[name]`` into every object of ``parts`` (None objects skipped) and the generators."""
    for name, obj in parts.items():
        if obj is not None:
            obj.load_state_dict(states[name])
    for name, gen in gens.items():
        gen.set_state(states["generators"][name])


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    slimtrain: Any = None, body: torch.nn.Module | None = None, head: torch.nn.Module | None = None,
    body_optimizer: torch.optim.Optimizer | None = None, slim: Any = None,
    scheduler: Any = None,
    generators: Mapping[str, torch.Generator] | None = None,
    restore_rng: bool = True,
    weights_only: bool = True,
) -> Checkpoint:
    """Restore a checkpoint into existing objects (built as for the original run) and return
    the position to continue from.

    The objects' own settings that are run-time choices stay as constructed (SlimTik's
    ``backend``, ``on_nonfinite``, ``writer``); everything that determines the numbers comes from
    the file. Tensors are loaded onto the CPU and then moved by each ``load_state_dict`` to
    its object's device. ``restore_rng=False`` leaves the global RNG states alone.

    The whole file is checked before anything is restored: the modules' keys and shapes, the
    optimizers' groups, SlimTik's solver state (shapes, finite memory and Λ, ring index, bounds,
    n_f), generator and RNG states, the position. Raises ValueError naming the file and the field
    if it is not a readable slimfast checkpoint (truncated, corrupted, another pickle) or does not
    fit the objects; then nothing was changed. A missing file raises FileNotFoundError.
    """
    body, head, body_optimizer, slim = _parts(slimtrain, body, head, body_optimizer, slim)
    path = os.fspath(path)
    payload = _read_payload(path, weights_only)
    gens = dict(generators or {})
    try:
        _check_payload(payload, body, head, body_optimizer, slim, scheduler, gens, slimtrain)
    except ValueError as exc:
        raise ValueError(f"{path!r}: {exc}") from None
    # Everything is checked; should a load still fail (a value no check foresaw), put back what
    # was there so that a rejected checkpoint never leaves a half-restored run.
    parts = {"body": body, "head": head, "body_optimizer": body_optimizer, "slim": slim, "scheduler": scheduler}
    before = copy.deepcopy({"generators": {k: g.get_state() for k, g in gens.items()},
                            **{k: None if obj is None else obj.state_dict() for k, obj in parts.items()}})
    try:
        _apply_states(parts, gens, payload)
        if restore_rng:
            set_rng_state(payload["rng"])
    except Exception as exc:
        _apply_states(parts, gens, before)
        raise ValueError(f"{path!r} could not be applied ({type(exc).__name__}: {exc}); nothing was changed") from exc
    if slimtrain is not None and payload["epoch_running"] is not None:
        total, count = payload["epoch_running"]
        slimtrain.epoch_running = (float(total), int(count))
    return Checkpoint(epoch=int(payload["epoch"]), batch_index=int(payload["batch_index"]),
                      extra=payload["extra"], backend=payload["backend"])
