"""The Lightning example module: a few CPU steps equal SlimTrain on the same batches.

Lightning is an optional extra (not installed in CI): every test that needs it skips by itself.
"""

from __future__ import annotations

import copy
import importlib.util
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from slimfast.heads import head_to_matrix
from slimfast.optim import SlimTik
from slimfast.train import SlimTrain

F64 = torch.float64
HAVE_LIGHTNING = any(importlib.util.find_spec(m) is not None for m in ("lightning", "pytorch_lightning"))


def _pl():
    """lightning.pytorch (or pytorch_lightning); skips this test when neither is installed."""
    try:
        import lightning.pytorch as pl
    except ImportError:
        pl = pytest.importorskip("pytorch_lightning", reason="lightning is not installed (optional extra)")
    return pl


def _models():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh()).double()
    head = nn.Linear(8, 1).double()
    return body, head


def _data(n: int = 96):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 2, dtype=F64, generator=g) * 2 - 1
    y = torch.sin(3 * x[:, :1]) * x[:, 1:]
    return x, y


def _trainer(pl, **kw):
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kw)


def test_lightning_steps_equal_slimtrain():
    pl = _pl()
    from slimfast.integrations.lightning import SlimTrainModule

    body, head = _models()
    ref_body, ref_head = copy.deepcopy(body), copy.deepcopy(head)
    module = SlimTrainModule(body, head, lr=1e-2, memory_depth=3)
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)
    trainer = _trainer(pl, max_steps=5)
    trainer.fit(module, loader)
    slim = module.slim
    assert isinstance(slim, SlimTik) and slim.n_steps_ == 5
    assert "train_loss" in trainer.callback_metrics and "slimtik_alpha" in trainer.callback_metrics

    ref = SlimTrain(ref_body, ref_head, torch.optim.Adam(ref_body.parameters(), lr=1e-2),
                    SlimTik(ref_head, memory_depth=3))
    for k, (xb, yb) in enumerate(loader):
        if k == 5:
            break
        ref.train_step(xb, yb)
    torch.testing.assert_close(head_to_matrix(module.head), head_to_matrix(ref_head), rtol=1e-12, atol=0)
    for p, q in zip(module.body.parameters(), ref_body.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-15)
    assert slim.lambda_history_ == pytest.approx(ref.slim.lambda_history_, rel=1e-10)


def test_lightning_validation_and_checkpoint(tmp_path):
    pl = _pl()
    from slimfast.integrations.lightning import SlimTrainModule

    body, head = _models()
    module = SlimTrainModule(body, head, lr=1e-2, memory_depth=2)
    x, y = _data(64)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    trainer = _trainer(pl, max_epochs=1)
    trainer.fit(module, loader, loader)
    assert "val_loss" in trainer.callback_metrics
    path = tmp_path / "slim.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    slim_state = ckpt["optimizer_states"][1]["slimtik"]
    assert slim_state["n_steps"] == 4
    assert slim_state["solver"]["memory"].dtype == F64      # float64 memory survives the checkpoint
    restored = SlimTik(copy.deepcopy(module.head), memory_depth=2)
    restored.load_state_dict(ckpt["optimizer_states"][1])
    assert torch.equal(restored.solver_state.memory, module.slim.solver_state.memory)


@pytest.mark.skipif(HAVE_LIGHTNING, reason="lightning is installed")
def test_import_without_lightning_says_what_to_install(monkeypatch):
    monkeypatch.delitem(sys.modules, "slimfast.integrations.lightning", raising=False)
    with pytest.raises(ImportError, match="pip install lightning"):
        import slimfast.integrations.lightning  # noqa: F401
