"""B-model sweeps: every model follows the trajectory of training it alone with the same seed.

The reference for model i is the ordinary one-model loop: ``SlimTrain`` with ``SlimTik`` (its
Λ_0 and memory depth) and ``torch.optim.Adam`` (its lr) on a body and head built from its seed,
fed the batches of ``cli.batches`` drawn with a generator seeded by its seed. The float64 cases
are held to 1e-10 relative (on CPU they agree bit for bit); float32 to float32 rounding.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from slimfast.cli import RunConfig, batches, main, run_training
from slimfast.heads import head_to_matrix
from slimfast.optim import SlimTik
from slimfast.problems import get_problem
from slimfast.problems.peaks import make_peaks_body, make_peaks_head
from slimfast.sweep import ModelSpec, StackedAdam, SweepTrainer, run_sweep
from slimfast.train import SlimTrain

F64 = torch.float64
TOL = 1e-10

SPECS = [   # memory depth 5 spelled out: ModelSpec's default is now the default preset's (0)
    ModelSpec(seed=0, lr=1e-3, memory_depth=5),
    ModelSpec(seed=1, lr=1e-2, memory_depth=5),
    ModelSpec(seed=0, lr=1e-2, Lambda0=1.0, memory_depth=5),
    ModelSpec(seed=2, lr=3e-3, memory_depth=0),
    ModelSpec(seed=1, lr=1e-3, Lambda0=0.5, memory_depth=2),
    ModelSpec(seed=2, lr=3e-2, memory_depth=2),
]

pytestmark = pytest.mark.usefixtures("single_thread")   # conftest.py


def _peaks64(n_train: int = 96, n_val: int = 40):
    """The peaks problem in float64 (data, body and head)."""
    p = get_problem("peaks", seed=0).subset(n_train, n_val)
    return dataclasses.replace(
        p, x_train=p.x_train.double(), y_train=p.y_train.double(), x_val=p.x_val.double(), y_val=p.y_val.double(),
        body_builder=lambda: make_peaks_body().double(), head_builder=lambda: make_peaks_head().double())


def _solo(body: nn.Module, head: nn.Module, spec: ModelSpec) -> SlimTrain:
    slim = SlimTik(head, memory_depth=spec.memory_depth, Lambda0=spec.Lambda0)
    return SlimTrain(body, head, torch.optim.Adam(body.parameters(), lr=spec.lr), slim)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    den = float(torch.linalg.vector_norm(b))
    return float(torch.linalg.vector_norm(a - b)) / den if den > 0 else float(torch.linalg.vector_norm(a))


def _rel_scalar(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


# ----------------------------------------------------------------------------- the trainer, step by step

def test_sweep_steps_equal_solo_runs_float64(monkeypatch):
    """Six models (lr, seed, Λ0, r all varied; three memory depths) for 2 epochs: heads, losses,
    λ and bodies equal the one-model runs at every step."""
    # Solo runs on the general head path, whose GEMM statistics round like the sweep's; the fused
    # Linear path sums in another order (held to the general path in test_fused_head.py).
    monkeypatch.setattr("slimfast.fused_head.ENABLED", False)
    p = _peaks64()
    trainer = SweepTrainer.from_problem(p, SPECS)
    assert sorted(g.depth for g in trainer.groups) == [0, 2, 5]
    solos = []
    for s in SPECS:
        body, head = p.make_body(s.seed), p.make_head(s.seed)
        solos.append((body, head, _solo(body, head, s), torch.Generator().manual_seed(s.seed)))
    for epoch in range(2):
        iters = [batches(p.x_train, p.y_train, p.batch_size, gen) for *_, gen in solos]
        for step_batches in zip(*iters):
            xs = torch.stack([b[0] for b in step_batches])
            ys = torch.stack([b[1] for b in step_batches])
            info = trainer.train_step(xs, ys)
            assert not info.diverged
            W = trainer.head_matrices()
            for i, ((body, head, solo, _), (x, y)) in enumerate(zip(solos, step_batches)):
                loss = solo.train_step(x, y)
                assert _rel(W[i], head_to_matrix(head)) <= TOL
                assert _rel_scalar(info.loss[i], loss) <= TOL
                assert _rel_scalar(info.lambda_[i], solo.slim.lambda_history_[-1]) <= TOL or \
                    abs(info.lambda_[i] - solo.slim.lambda_history_[-1]) <= TOL * abs(solo.slim.Lambda_)
                assert _rel_scalar(info.alpha[i], solo.slim.alpha_) <= TOL
    for i, (body, head, solo, _) in enumerate(solos):
        bp, hp = trainer.model_state(i)
        for name, param in body.named_parameters():
            assert _rel(bp[name], param.detach()) <= TOL, (i, name)
        assert solo.slim.n_steps_ == trainer.head_steps_[i] == 6


def test_run_sweep_equals_run_training_float64():
    """run_sweep's histories equal cli.run_training's (Λ0 = 0.05, the CLI's) to 1e-10."""
    p = _peaks64(n_train=80, n_val=30)
    specs = [ModelSpec(seed=0, lr=1e-3), ModelSpec(seed=3, lr=1e-2, memory_depth=1), ModelSpec(seed=3, lr=1e-1)]
    hists = run_sweep(p, specs, epochs=2)
    for s, h in zip(specs, hists):
        ref = run_training(p, RunConfig(lr=s.lr, seed=s.seed, epochs=2, memory_depth=s.memory_depth))
        assert h["steps"] == ref["steps"] == 6 and h["epoch"] == ref["epoch"] == [0, 1, 2]
        for key in ("batch_loss", "step_alpha", "train_loss", "val_loss", "train_rel", "val_rel"):
            assert len(h[key]) == len(ref[key])
            assert max(_rel_scalar(a, b) for a, b in zip(h[key], ref[key])) <= TOL, key
        assert not h["diverged"]


def test_run_sweep_float32_peaks_follows_run_training():
    """The CLI's float32 problem: same trajectory to float32 rounding (bit for bit on our CPUs)."""
    p = get_problem("peaks", seed=0).subset(64, 32)
    specs = [ModelSpec(seed=0, lr=1e-2), ModelSpec(seed=1, lr=1e-3)]
    hists = run_sweep(p, specs, epochs=2)
    for s, h in zip(specs, hists):
        ref = run_training(p, RunConfig(lr=s.lr, seed=s.seed, epochs=2, memory_depth=s.memory_depth))
        assert max(_rel_scalar(a, b) for a, b in zip(h["batch_loss"], ref["batch_loss"])) <= 1e-4
        assert max(_rel_scalar(a, b) for a, b in zip(h["val_loss"], ref["val_loss"])) <= 1e-4


@pytest.mark.parametrize("kind", ["conv", "conv_transpose"])
def test_conv_heads_equal_solo(kind):
    """Weight-shared heads (Conv2d, ConvTranspose2d with stride) map between stacks and W correctly."""
    def make(seed):
        torch.manual_seed(seed)
        body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh()).double()
        head = (nn.Conv2d(3, 2, 3, padding=1) if kind == "conv" else
                nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1)).double()
        return body, head
    specs = [ModelSpec(seed=s, lr=lr, memory_depth=2) for s, lr in ((0, 1e-2), (1, 1e-3), (2, 3e-2))]
    models = [make(s.seed) for s in specs]
    trainer = SweepTrainer([copy.deepcopy(b) for b, _ in models], [copy.deepcopy(h) for _, h in models], specs)
    solos = [_solo(b, h, s) for (b, h), s in zip(models, specs)]
    g = torch.Generator().manual_seed(0)
    teacher_body, teacher_head = make(99)    # learnable targets: a well-posed λ choice every step
    for _ in range(4):
        xs = torch.randn(3, 4, 1, 6, 6, dtype=F64, generator=g)
        with torch.no_grad():
            ys = teacher_head(teacher_body(xs.reshape(12, 1, 6, 6)))
        ys = ys.reshape((3, 4) + ys.shape[1:])
        info = trainer.train_step(xs, ys)
        W = trainer.head_matrices()
        for i, ((b, h), solo) in enumerate(zip(models, solos)):
            loss = solo.train_step(xs[i], ys[i])
            assert _rel(W[i], head_to_matrix(h)) <= TOL
            assert _rel_scalar(info.loss[i], loss) <= TOL
    # the stacked layer parameters are the layer's own (not only the W view)
    _, hp = trainer.model_state(1)
    assert torch.equal(hp["weight"], models[1][1].weight.detach()) or \
        _rel(hp["weight"], models[1][1].weight.detach()) <= TOL


# ----------------------------------------------------------------------------- failures stay local

def test_failing_model_is_dropped_others_unchanged():
    p = _peaks64()
    specs = SPECS[:4]
    trainer = SweepTrainer.from_problem(p, specs)
    solos = [_solo(p.make_body(s.seed), p.make_head(s.seed), s) for s in specs]
    g = torch.Generator().manual_seed(3)
    for k in range(5):
        rows = trainer.active
        xs = torch.rand(len(rows), 16, 2, dtype=F64, generator=g) * 6 - 3
        ys = torch.randn(len(rows), 16, 1, dtype=F64, generator=g)
        if k == 2:
            xs[rows.index(1), 3, 0] = math.nan          # model 1's batch poisons its statistics
        info = trainer.train_step(xs, ys)
        if k == 2:
            assert set(info.diverged) == {1} and "non-finite" in info.diverged[1]
            assert trainer.active == [0, 2, 3] and 1 in trainer.diverged
            dropped, body1, _, head1 = trainer.last_dropped
            assert dropped == [1]
            # model 1 is kept as it was before the failing step (head and body untouched)
            # (to rounding: the sweep's batched solve is not bit-identical to a B = 1 solve)
            assert _rel(head1["weight"][0], solos[1].head.weight.detach()) <= TOL
        W = trainer.head_matrices()
        for row, model in enumerate(trainer.active):
            solo = solos[model]
            loss = solo.train_step(xs[info.models.index(model)], ys[info.models.index(model)])
            assert _rel(W[row], head_to_matrix(solo.head)) <= TOL
            assert _rel_scalar(info.loss[info.models.index(model)], loss) <= TOL
    assert [g.depth for g in trainer.groups] == [0, 5]


def test_failed_batched_solve_resolves_each_model_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A group's batched solve that raises FloatingPointError is redone model by model on rows
    selected out of the group's state; the model whose own solve fails is dropped, the others'
    states are joined again (SlimTikState.cat) and follow their solo runs."""
    import slimfast.sweep as sweep_module

    p = _peaks64()
    specs = SPECS[:3]                      # one group: memory depth 5
    trainer = SweepTrainer.from_problem(p, specs)
    solos = [_solo(p.make_body(s.seed), p.make_head(s.seed), s) for s in specs]
    real, calls = sweep_module.slimtik_step, []

    def flaky(state, *args, **kwargs):
        if fail_now:
            calls.append(state.batch)
            if state.batch > 1:
                raise FloatingPointError("batched solve failed")
            if len(calls) == 3:            # the second model's own solve
                raise FloatingPointError("model solve failed")
        return real(state, *args, **kwargs)

    monkeypatch.setattr(sweep_module, "slimtik_step", flaky)
    g = torch.Generator().manual_seed(4)
    for k in range(4):
        fail_now = k == 1
        xs = torch.rand(trainer.n_active, 16, 2, dtype=F64, generator=g) * 6 - 3
        ys = torch.randn(trainer.n_active, 16, 1, dtype=F64, generator=g)
        info = trainer.train_step(xs, ys)
        if k == 1:
            assert calls == [3, 1, 1, 1] and info.diverged == {1: "FloatingPointError: model solve failed"}
        W = trainer.head_matrices()
        for row, model in enumerate(trainer.active):
            i = info.models.index(model)
            solos[model].train_step(xs[i], ys[i])
            assert _rel(W[row], head_to_matrix(solos[model].head)) <= TOL
    assert trainer.active == [0, 2]
    state = trainer.groups[0].state
    assert state.batch == 2 and state.step_count == 4
    for row, model in enumerate(trainer.active):
        ref = solos[model].slim.solver_state
        assert _rel(state.memory[row], ref.memory[0]) <= TOL and _rel(state.Lambda[row], ref.Lambda[0]) <= TOL


def test_run_sweep_marks_only_the_diverged_model():
    p = _peaks64(n_train=64, n_val=16)
    p = dataclasses.replace(p, x_train=p.x_train.clone())
    specs = [ModelSpec(seed=0, lr=1e-3), ModelSpec(seed=1, lr=1e-3)]
    # a NaN sample: model 1's batch order meets it in epoch 1, and so would its solo run
    p.x_train[5, 0] = math.nan
    hists = run_sweep(p, specs, epochs=1)
    refs = []
    for s in specs:
        try:
            refs.append(run_training(p, RunConfig(lr=s.lr, seed=s.seed, epochs=1)))
        except ValueError as exc:   # the CLI raises when the very first step fails
            refs.append({"error": str(exc), "diverged": True, "steps": 0})
    for h, ref in zip(hists, refs):
        assert h["diverged"] == ref["diverged"] is True
        assert h["steps"] == ref["steps"]


# ----------------------------------------------------------------------------- pieces

@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_stacked_adam_is_torch_adam(dtype, weight_decay):
    g = torch.Generator().manual_seed(0)
    lrs = [1e-3, 3e-2, 0.5]
    shapes = {"w": (5, 3), "b": (5,), "c": (2, 3, 4)}
    start = {k: torch.randn((3,) + s, dtype=dtype, generator=g) for k, s in shapes.items()}
    stacked = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    opt = StackedAdam(stacked, lrs, weight_decay=weight_decay)
    solo = [{k: v[i].clone().requires_grad_(True) for k, v in start.items()} for i in range(3)]
    solo_opt = [torch.optim.Adam(list(ps.values()), lr=lr, weight_decay=weight_decay) for ps, lr in zip(solo, lrs)]
    for _ in range(7):
        grads = {k: torch.randn(v.shape, dtype=dtype, generator=g) for k, v in start.items()}
        for k, p in stacked.items():
            p.grad = grads[k].clone()
        opt.step()
        for i in range(3):
            for k, p in solo[i].items():
                p.grad = grads[k][i].clone()
            solo_opt[i].step()
    for i in range(3):
        for k in shapes:
            assert torch.allclose(stacked[k][i], solo[i][k], rtol=1e-6 if dtype == torch.float32 else 1e-14, atol=0)


def test_rejects_batchnorm_and_mismatched_heads():
    bodies = [nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)) for _ in range(2)]
    heads = [nn.Linear(3, 1) for _ in range(2)]
    with pytest.raises(ValueError, match="running statistics"):
        SweepTrainer(bodies, heads, [ModelSpec(), ModelSpec(seed=1)])
    with pytest.raises(ValueError, match="same type and shape"):
        SweepTrainer([nn.Linear(2, 3)] * 2, [nn.Linear(3, 1), nn.Linear(3, 2)], [ModelSpec(), ModelSpec()])
    with pytest.raises(ValueError, match="lr"):
        ModelSpec(lr=0.0)


def test_cli_sweep_writes_plot_and_table(tmp_path, capsys):
    out = tmp_path / "sweep"
    rc = main(["sweep", "--problem", "peaks", "--lrs", "1e-3,1e-2", "--seeds", "0,1", "--epochs", "1",
               "--n-train", "64", "--n-val", "32", "--out", str(out), "-q"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "4 models in one process" in text and "median val loss" in text
    assert (out / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "sweep.md").read_text()
    assert "## All models" in md and "sensitivity.png" in md
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    assert len(runs) == 4 and all(r["steps"] == 2 for r in runs)
    # model (lr=1e-2, seed=1) is `slimfast train --lr 1e-2 --seed 1` on this data
    ref = run_training(get_problem("peaks", seed=0).subset(64, 32), RunConfig(lr=1e-2, seed=1, epochs=1))
    assert max(_rel_scalar(a, b) for a, b in zip(runs[3]["batch_loss"], ref["batch_loss"])) <= 1e-4
