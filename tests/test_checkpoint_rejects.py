"""``load_checkpoint`` checks the whole file before it restores anything: a truncated, foreign or
corrupted file, or one whose SlimTik part does not fit (n_f, bounds, a corrupted solver state),
raises ValueError naming the file and the field, and the body, head, both optimizers and the
scheduler are then bit-identical to before."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from slimfast.checkpoint import load_checkpoint, save_checkpoint

from .test_checkpoint import build, make_loader, snapshot
from .test_faults_training import _tree_equal


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    trainer, sched = build(seed=0)
    trainer.fit(make_loader(), 1, scheduler=sched)
    path = tmp_path_factory.mktemp("ck") / "run.pt"
    save_checkpoint(path, slimtrain=trainer, epoch=1, batch_index=0, scheduler=sched)
    return path


def _fresh() -> tuple[Any, Any, dict[str, Any]]:
    trainer, sched = build(seed=7)
    trainer.fit(make_loader(), 1, scheduler=sched)      # a run in progress, with its own state
    return trainer, sched, snapshot(trainer, sched)


def _solver(p: dict[str, Any]) -> dict[str, Any]:
    return p["slim"]["slimtik"]["solver"]


CORRUPTIONS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "nan memory": (lambda p: _solver(p)["memory"].view(-1).__setitem__(0, math.nan), "memory"),
    "memory shape": (lambda p: _solver(p).__setitem__("memory", _solver(p)["memory"][:, :, :-1]), "memory"),
    "negative ring index": (lambda p: _solver(p).__setitem__("head", -1), "head"),
    "ring index past the end": (lambda p: _solver(p).__setitem__("head", 3), "head"),
    "n_stored past the depth": (lambda p: _solver(p).__setitem__("n_stored", 4), "n_stored"),
    "nan Lambda": (lambda p: _solver(p)["Lambda"].fill_(math.nan), "Lambda"),
    "Lambda above its bound": (lambda p: _solver(p)["Lambda"].fill_(1e9), "Lambda"),
    "n_features mismatch": (lambda p: (_solver(p).__setitem__("n_features", 5),
                                       _solver(p).__setitem__("memory", torch.zeros(1, 3, 5, 5,
                                                                                    dtype=torch.float64))),
                            "n_f"),
    "bad bounds": (lambda p: p["slim"]["slimtik"]["config"].__setitem__("Lambda_bounds", (1.0, 0.5)),
                   "Lambda_bounds"),
    "Lambda0 above Lambda_max": (lambda p: p["slim"]["slimtik"].__setitem__("Lambda0", 1e6), "Lambda0"),
    "head shape": (lambda p: p["head"].__setitem__("weight", torch.zeros(2, 8)), "head.weight"),
    "body key": (lambda p: p["body"].pop("0.weight"), "body"),
    "negative epoch": (lambda p: p.__setitem__("epoch", -1), "epoch"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_a_rejected_checkpoint_changes_nothing(saved: Path, tmp_path: Path, case: str) -> None:
    corrupt, field = CORRUPTIONS[case]
    payload = torch.load(saved, weights_only=True)
    corrupt(payload)
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    trainer, sched, before = _fresh()
    with pytest.raises(ValueError, match=field) as exc:
        load_checkpoint(bad, slimtrain=trainer, scheduler=sched)
    assert str(bad) in str(exc.value)
    _tree_equal(before, snapshot(trainer, sched))


def _truncated(good: bytes) -> bytes:
    return good[: len(good) // 2]


def _flipped(good: bytes) -> bytes:
    """Bytes of the pickled object graph (``data.pkl`` in torch's zip) inverted: a corrupted pickle."""
    at = good.index(b"data.pkl") + 80
    return good[:at] + bytes(b ^ 0xFF for b in good[at:at + 64]) + good[at + 64:]


@pytest.mark.parametrize("damage", [_truncated, _flipped, lambda good: b"", lambda good: b"not a checkpoint\n" * 10,
                                    lambda good: b"\x80\x04K\x01."],   # a valid pickle of the int 1
                         ids=["truncated", "flipped bytes", "empty", "text", "plain pickle"])
def test_unreadable_files_raise_value_error_naming_the_file(saved: Path, tmp_path: Path, damage: Any) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(damage(saved.read_bytes()))
    trainer, sched, before = _fresh()
    with pytest.raises(ValueError, match="checkpoint") as exc:
        load_checkpoint(bad, slimtrain=trainer, scheduler=sched)
    assert str(bad) in str(exc.value)
    _tree_equal(before, snapshot(trainer, sched))


def test_not_a_checkpoint_dict(tmp_path: Path) -> None:
    bad = tmp_path / "list.pt"
    torch.save([1, 2, 3], bad)
    trainer, sched, _ = _fresh()
    with pytest.raises(ValueError, match="not a slimfast checkpoint"):
        load_checkpoint(bad, slimtrain=trainer)


def test_missing_file_stays_file_not_found(tmp_path: Path) -> None:
    trainer, _, _ = _fresh()
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.pt", slimtrain=trainer)


def test_the_good_file_still_loads(saved: Path) -> None:
    trainer, sched, _ = _fresh()
    ck = load_checkpoint(saved, slimtrain=trainer, scheduler=sched)
    assert (ck.epoch, ck.batch_index) == (1, 0)
