"""Sample-side step (wide heads): = the dense stacked least squares, = the dense feature-side step.

Every backend runs the projected step; the references never touch the kernel matrix: the
stacked least-squares solve of method.md §2.3 (``solver_cases.dense_slimtik_solution``) and the
float64 torch twin of the dense step on the n_f × n_f Gram matrix (``_torch_impl._slimtik_step``).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from slimfast import SlimTik, SlimTikState, SolverConfig
from slimfast._torch_impl import _slimtik_step
from slimfast.sample_side import _sample_side_step, sample_side_step
from slimfast.state import SampleSideState

from .solver_cases import dense_slimtik_solution, rel_err

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


class WideRun:
    """B problems fed batch by batch to a sample-side state; keeps every raw block and its β."""

    def __init__(self, B: int, n_f: int, n_t: int, r: int, reduction: str, device: torch.device, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.B, self.n_f, self.n_t, self.r, self.reduction, self.device = B, n_f, n_t, r, reduction, device
        self.W_true = torch.randn(B, n_t, n_f, dtype=F64, generator=self.gen) / math.sqrt(n_f)
        self.state = SampleSideState(B, n_f, n_t, r, 0.05, device)
        self.W = 0.1 * torch.randn(B, n_t, n_f, dtype=F64, generator=self.gen)
        self.seen: list[tuple[torch.Tensor, float]] = []   # (Z [B, n_f, n_b], β) per step

    def batch(self, n_b: int, duplicates: bool = False) -> tuple[torch.Tensor, torch.Tensor, float, int]:
        # With β = 1 ("sum") unit features put G_mem's spectrum at ~(r+1)·n_b, where the sGCV
        # minimiser is so flat that even the dense kernels and their twin differ by ~4e-9 in W;
        # features ×0.3 keep the comparison about the solve, not about λ's conditioning.
        scale = 1.0 if self.reduction == "mean" else 0.3
        Z = scale * torch.randn(self.B, self.n_f, n_b, dtype=F64, generator=self.gen)
        if duplicates:   # repeated samples, within the batch and of the previous batch: M rank-deficient
            Z[:, :, 1] = Z[:, :, 0]
            if self.seen:
                Z[:, :, 2] = self.seen[-1][0][:, :, 0]
        C = self.W_true @ Z + 0.1 * torch.randn(self.B, self.n_t, n_b, dtype=F64, generator=self.gen)
        m = n_b * self.n_t
        return Z, C, (1.0 / math.sqrt(m) if self.reduction == "mean" else 1.0), m

    def step(self, n_b: int, backend: str, duplicates: bool = False, config: SolverConfig | None = None) -> None:
        """One step, checked against the stacked least squares (1e-10), the dense twin (1e-9) and
        the sample-side twin (1e-9)."""
        config = config or SolverConfig()
        Z, C, beta, m = self.batch(n_b, duplicates)
        memory = self.seen[len(self.seen) - self.state.n_stored:] if self.state.n_stored else []
        Lambda_prev = self.state.Lambda.cpu().clone()
        blocks = [self.state.slot(i)[:, :, :n].cpu().clone() for i, n in enumerate(self.state.sizes) if n > 0]
        empty, N = self.state.memory_empty, sum(self.state.sizes) + n_b
        dev = self.device
        W_new, info = sample_side_step(self.state, Z.to(dev), C.to(dev), beta, m, self.W.to(dev), config=config,
                                       backend=backend)
        assert info.backend == backend
        W_new, Lam = W_new.cpu(), info.Lambda.cpu()
        for b in range(self.B):   # independent reference, with the Λ this step chose
            mem = [Zj[b] * (bj / beta) for Zj, bj in memory]
            W_ref = dense_slimtik_solution(Z[b], C[b], mem, self.W[b], float(Lambda_prev[b]), float(Lam[b]), beta ** 2)
            assert rel_err(W_new[b], W_ref) < 1e-10, (b, rel_err(W_new[b], W_ref))
        # The dense feature-side step on the n_f × n_f Gram matrix chooses its own λ.
        G = beta ** 2 * Z @ Z.mT
        G_mem = G + sum((bj ** 2 * Zj @ Zj.mT for Zj, bj in memory), torch.zeros_like(G))
        H, c = beta ** 2 * C @ Z.mT, beta ** 2 * (C * C).sum((1, 2))
        m_t = torch.full((self.B,), float(m), dtype=F64)
        W_dense, info_dense = _slimtik_step(G_mem, G, H, c, m_t, self.W, Lambda_prev, empty, config)
        assert rel_err(W_new, W_dense) < 1e-9
        assert rel_err(Lam, info_dense[:, 1]) < 1e-9
        assert rel_err(info.cond.cpu(), info_dense[:, 4]) < 1e-8
        W_twin, info_twin = _sample_side_step(blocks, Z, C, torch.full((self.B,), beta, dtype=F64), m_t, self.W,
                                              Lambda_prev, empty, config)
        assert rel_err(W_new, W_twin) < 1e-9
        assert rel_err(Lam, info_twin[:, 1]) < 1e-9
        # G_mem [n_f, n_f] has a null space exactly when it has more features than M has columns.
        assert bool((info.eig_min.cpu() == 0).all()) == (self.n_f > N)
        self.seen.append((Z, beta))
        self.W = W_new


@pytest.mark.parametrize("r", [0, 1, 3])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_filling_memory_matches_references(backend: str, device: torch.device, r: int, reduction: str) -> None:
    """Several steps while the memory fills and wraps, a partial batch (7 of 12) among them."""
    run = WideRun(B=2, n_f=90, n_t=3, r=r, reduction=reduction, device=device, seed=10 * r + len(reduction))
    for n_b in (12, 12, 7, 12, 12, 12):
        run.step(n_b, backend)
    assert run.state.step_count == 6 and run.state.n_stored == r


def test_rank_deficient_memory(backend: str, device: torch.device) -> None:
    """Duplicate samples (within a batch and across batches): M has rank < N."""
    run = WideRun(B=2, n_f=80, n_t=2, r=2, reduction="mean", device=device, seed=3)
    for _ in range(4):
        run.step(10, backend, duplicates=True)


def test_more_columns_than_features(backend: str, device: torch.device) -> None:
    """N = 36 > n_f = 20 (forced sample side): only n_f eigenvalues of MᵀM belong to G_mem."""
    run = WideRun(B=2, n_f=20, n_t=2, r=2, reduction="mean", device=device, seed=4)
    for _ in range(4):
        run.step(12, backend)


def test_constant_lambda_and_growing_slots(backend: str, device: torch.device) -> None:
    """λ fixed (mode "constant"); the second batch is larger than the first (slots grow)."""
    run = WideRun(B=1, n_f=60, n_t=1, r=2, reduction="mean", device=device, seed=5)
    cfg = SolverConfig(mode="constant", lambda_const=0.02)
    for n_b in (5, 9, 9, 4):
        run.step(n_b, backend, config=cfg)
    assert run.state.cap == 9


def _state_equal(a: SampleSideState, b: SampleSideState) -> bool:
    da, db = a.state_dict(), b.state_dict()
    return da.keys() == db.keys() and all(torch.equal(v, db[k]) if isinstance(v, torch.Tensor) else v == db[k]
                                          for k, v in da.items())


def test_snapshot_restore_and_state_dict_round_trip() -> None:
    run = WideRun(B=2, n_f=40, n_t=2, r=2, reduction="mean", device=torch.device("cpu"), seed=6)
    run.step(6, "torch")
    saved = SampleSideState.from_state_dict(run.state.state_dict())
    assert _state_equal(saved, run.state)
    snap = run.state.snapshot()
    Z, C, beta, m = run.batch(9)   # larger than the slots: the commit grows them
    sample_side_step(run.state, Z, C, beta, m, run.W, backend="torch")
    assert run.state.cap == 9 and not _state_equal(saved, run.state)
    run.state.restore(snap)
    assert _state_equal(saved, run.state)
    # Continuing from a loaded copy is bit-identical.
    W1, _ = sample_side_step(run.state, Z, C, beta, m, run.W, backend="torch")
    W2, _ = sample_side_step(saved, Z, C, beta, m, run.W, backend="torch")
    assert torch.equal(W1, W2) and _state_equal(saved, run.state)


def test_bad_input_names_the_argument_and_leaves_state_unchanged() -> None:
    run = WideRun(B=2, n_f=30, n_t=2, r=2, reduction="mean", device=torch.device("cpu"), seed=7)
    run.step(5, "torch")
    before = SampleSideState.from_state_dict(run.state.state_dict())
    Z, C, beta, m = run.batch(5)
    W = run.W
    nan_Z = Z.clone()
    nan_Z[0, 0, 0] = math.nan
    cases = [
        (TypeError, "Z", dict(Z=Z.float())),
        (ValueError, "Z", dict(Z=Z[:, :-1])),
        (ValueError, "C", dict(C=C[:, :, :-1])),
        (ValueError, "W", dict(W=W[:1])),
        (ValueError, "Z", dict(Z=nan_Z)),
        (ValueError, "Z", dict(Z=Z * 1e152)),
        (ValueError, "beta", dict(beta=0.0)),
        (ValueError, "beta", dict(beta=torch.ones(3, dtype=F64))),
        (ValueError, "m", dict(m=-1)),
        (TypeError, "state", dict(state=object())),
    ]
    for exc, name, change in cases:
        args = dict(state=run.state, Z=Z, C=C, beta=beta, m=m, W=W) | change
        with pytest.raises(exc, match=name):
            sample_side_step(args.pop("state"), **args, backend="torch")
        assert _state_equal(before, run.state), name


def test_check_state_dict_rejects_inconsistent_states() -> None:
    run = WideRun(B=1, n_f=30, n_t=2, r=2, reduction="mean", device=torch.device("cpu"), seed=8)
    run.step(5, "torch")
    run.step(4, "torch")
    good = run.state.state_dict()
    SampleSideState.check_state_dict(good)
    bad_kernel = dict(good, kernel=good["kernel"] * 1.001)
    bad_count = dict(good, n_stored=1)
    bad_sizes = dict(good, sizes=[good["cap"] + 1, 4])
    bad_pad = dict(good, blocks=good["blocks"].clone())
    bad_pad["blocks"][0, good["cap"] + 4, 0] = 1.0   # slot 1 holds 4 samples; its 5th row must be zero
    bad_shape = dict(good, beta=good["beta"][:, :1])
    for state, match in ((bad_kernel, "kernel"), (bad_count, "n_stored"), (bad_sizes, "cap"), (bad_pad, "blocks"),
                         (bad_shape, "beta"), (dict(good, kind="gram"), "kind")):
        with pytest.raises(ValueError, match=match):
            SampleSideState.check_state_dict(state)


# ----------------------------------------------------------------------------- SlimTik on the sample side

def _wide_data(n_in: int, n_t: int, sizes: tuple[int, ...], seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    W_true = torch.randn(n_t, n_in, dtype=F64, generator=g) / math.sqrt(n_in)
    out = []
    for n_b in sizes:
        x = torch.tanh(torch.randn(n_b, n_in, dtype=F64, generator=g))
        out.append((x, x @ W_true.T + 0.1 * torch.randn(n_b, n_t, dtype=F64, generator=g)))
    return out


def _slim(side: str, n_in: int = 150, n_t: int = 3, r: int = 3, dtype: torch.dtype = F64, **kw) -> SlimTik:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        head = nn.Linear(n_in, n_t).to(dtype)
    return SlimTik(head, memory_depth=r, solve_side=side, **kw)


def _params(slim: SlimTik) -> torch.Tensor:
    return torch.cat([slim.head.weight.detach().flatten(), slim.head.bias.detach()]).double()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_slimtik_samples_equals_features(backend: str, device: torch.device, reduction: str) -> None:
    """Same data, 10 steps (one partial batch): the two sides give the same weights and Λ."""
    data = _wide_data(150, 3, (16, 16, 16, 16, 16, 9, 16, 16, 16, 16))
    if reduction == "sum":   # see WideRun.batch: unit-scale features make λ's minimiser flat under β = 1
        data = [(0.3 * x, y) for x, y in data]
    runs = {}
    for side in ("features", "samples"):
        slim = _slim(side, reduction=reduction, backend=backend)
        slim.head.to(device)
        infos = [slim.step(x.to(device), y.to(device)) for x, y in data]
        assert {i.side for i in infos} == {side} and f"({side})" in repr(slim)
        runs[side] = (_params(slim).cpu(), torch.tensor(slim.Lambda_history_, dtype=F64))
    assert rel_err(runs["samples"][0], runs["features"][0]) < 1e-9
    assert rel_err(runs["samples"][1], runs["features"][1]) < 1e-9


def test_auto_choice_and_bad_settings() -> None:
    wide, narrow = _slim("auto", n_in=100, r=2), _slim("auto", n_in=8, r=2)
    (x, y), (x8, y8) = _wide_data(100, 3, (8,))[0], _wide_data(8, 3, (8,))[0]
    assert wide.step(x, y).side == "samples"        # n_f = 101 > (r + 1)·n_b = 24
    assert narrow.step(x8, y8).side == "features"   # n_f = 9
    assert isinstance(wide.solver_state, SampleSideState) and isinstance(narrow.solver_state, SlimTikState)
    conv = nn.Conv2d(2, 1, 3)
    assert SlimTik(conv, solve_side="auto").step(torch.randn(2, 2, 5, 5), torch.randn(2, 1, 3, 3)).side == "features"
    with pytest.raises(ValueError, match="solve_side"):
        _slim("bogus")
    with pytest.raises(ValueError, match="solve_side='samples' needs an nn.Linear"):
        SlimTik(nn.Conv2d(2, 1, 3), solve_side="samples")


def test_checkpoint_round_trip_is_bit_identical(tmp_path) -> None:
    data = _wide_data(120, 2, (10,) * 8, seed=2)
    slim = _slim("samples", n_in=120, n_t=2, r=2)
    for x, y in data[:4]:
        slim.step(x, y)
    path = tmp_path / "slim.pt"
    torch.save(slim.state_dict(), path)
    other = _slim("features", n_in=120, n_t=2, r=2)   # the saved state decides the side
    with torch.no_grad():
        other.head.weight.copy_(slim.head.weight)
        other.head.bias.copy_(slim.head.bias)
    other.load_state_dict(torch.load(path, weights_only=True))
    assert other.solve_side == "samples" and isinstance(other.solver_state, SampleSideState)
    assert _state_equal(other.solver_state, slim.solver_state)
    for x, y in data[4:]:
        assert slim.step(x, y).side == other.step(x, y).side == "samples"
    assert torch.equal(_params(slim), _params(other)) and _state_equal(other.solver_state, slim.solver_state)
    assert slim.Lambda_history_ == other.Lambda_history_


def test_corrupted_checkpoint_changes_nothing() -> None:
    slim = _slim("samples", n_in=60, n_t=2, r=2)
    for x, y in _wide_data(60, 2, (6, 6), seed=3):
        slim.step(x, y)
    sd = slim.state_dict()
    sd["slimtik"]["solver"]["kernel"] = sd["slimtik"]["solver"]["kernel"] * 2.0
    fresh = _slim("samples", n_in=60, n_t=2, r=2)
    with pytest.raises(ValueError, match="kernel"):
        fresh.load_state_dict(sd)
    assert fresh.solver_state is None and fresh.n_steps_ == 0


def test_nonfinite_and_oversized_batches() -> None:
    (x, y), (x2, y2) = _wide_data(80, 2, (6, 6), seed=4)
    slim = _slim("samples", n_in=80, n_t=2, r=2)
    slim.step(x, y)
    before, w0 = slim.solver_state.state_dict(), _params(slim)
    bad = x2.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="features"):
        slim.step(bad, y2)
    with pytest.raises(ValueError, match="target too large"):
        slim.step(x2, y2 * 1e160)
    assert torch.equal(_params(slim), w0) and slim.n_steps_ == 1
    assert _state_equal(SampleSideState.from_state_dict(before), slim.solver_state)
    slim.on_nonfinite = "skip"
    info = slim.step(bad, y2)
    assert info.skipped and slim.n_skipped_ == 1 and slim.n_steps_ == 1 and torch.equal(_params(slim), w0)
    with pytest.raises(ValueError, match="features too large"):   # a scale error is never skipped
        slim.step(x2 * 1e160, y2)


def test_float32_head_follows_the_float64_solve() -> None:
    data = _wide_data(100, 2, (8,) * 5, seed=5)
    runs = [_slim(side, n_in=100, n_t=2, r=2, dtype=torch.float32) for side in ("features", "samples")]
    for slim in runs:
        for x, y in data:
            slim.step(x.float(), y.float())
    assert rel_err(_params(runs[1]), _params(runs[0])) < 1e-5


def test_training_checkpoint_resumes_bit_identically(tmp_path) -> None:
    """SlimTrain with a wide head (sample side chosen automatically) through save/load_checkpoint."""
    from slimfast.checkpoint import load_checkpoint, save_checkpoint
    from slimfast.train import SlimTrain

    def trainer() -> SlimTrain:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            body, head = nn.Sequential(nn.Linear(4, 99), nn.Tanh()), nn.Linear(99, 2)
        return SlimTrain(body, head, torch.optim.Adam(body.parameters(), lr=1e-3), SlimTik(head, memory_depth=2))

    g = torch.Generator().manual_seed(9)
    batches = [(torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)) for _ in range(6)]
    a = trainer()
    for x, y in batches[:3]:
        a.train_step(x, y)
    assert a.slim.last_info_.side == "samples"
    save_checkpoint(tmp_path / "ck.pt", slimtrain=a, epoch=0, batch_index=3)
    b = trainer()
    load_checkpoint(tmp_path / "ck.pt", slimtrain=b)
    for x, y in batches[3:]:
        assert a.train_step(x, y) == b.train_step(x, y)
    assert all(torch.equal(p, q) for p, q in zip(a.head.parameters(), b.head.parameters()))
