"""Wide heads: the dense (feature-side) step vs the sample-side step, side by side.

Run through ``python benchmarks/bench_solver.py --wide [--quick]``. Correctness first: from the
same full memory (r earlier batches), one step of each path on the same batch must agree with the
other and with the float64 torch twin of the dense step (relative difference ≤ 1e-9). Then both
are timed interleaved (median wall time per step, warm-up excluded), B = 1, cpp backend:

    dense  = the statistics G = β²ZZᵀ, H = β²CZᵀ, c (what SlimTik forms) + ``slimtik_step``
    sample = ``sample_side_step`` (kernel cache update, the step from MᵀM, lift); for the cpp
             backend with N < n_f by solves with the tridiagonalised MᵀM + μI
             (``slimfast.sample_side_woodbury``), else through eigh of MᵀM and the projected step

The wide case also times the sample side's two cpp routes against each other (tridiagonal vs
the eigendecomposition, which the other backends take), after checking that they agree (≤ 1e-9).

Cases: the wide head (n_f = 2047 + bias, n_b = 64, r = 5, n_t = 3; target ≥ 30×), then a scan
of n_f at fixed (r, n_b) that prints the measured crossover n_f / ((r + 1)·n_b) used by
``slimfast.sample_side.SAMPLE_SIDE_CROSSOVER_CPP`` (the cpp backend's; the eigendecomposing
backends' ``SAMPLE_SIDE_CROSSOVER`` was measured with the eigendecomposition route).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import statistics
import time

import torch

from slimfast import SlimTikState, SolverConfig, slimtik_step
from slimfast._torch_impl import _slimtik_step
from slimfast import sample_side
from slimfast.sample_side import SAMPLE_SIDE_CROSSOVER, SAMPLE_SIDE_CROSSOVER_CPP, sample_side_step
from slimfast.state import SampleSideState

F64 = torch.float64


class Pair:
    """A dense and a sample-side state holding the same full memory of r random batches."""

    def __init__(self, n_f: int, n_t: int, n_b: int, r: int, backend: str, seed: int = 0) -> None:
        self.g = torch.Generator().manual_seed(seed)
        self.n_f, self.n_t, self.n_b, self.r, self.backend = n_f, n_t, n_b, r, backend
        self.W_true = torch.randn(1, n_t, n_f, dtype=F64, generator=self.g) / math.sqrt(n_f)
        self.dense = SlimTikState(1, n_f, n_t, r, 0.05)
        self.samples = SampleSideState(1, n_f, n_t, r, 0.05)
        self.W = 0.5 * self.W_true
        for i in range(r):   # fill both memories with the same blocks (dense: their Gram matrices)
            Z, C = self.batch()
            G, _, _ = self.stats(Z, C)
            self.dense.memory[:, i] = G[0]
            self.samples.commit(self.beta * Z, torch.full((1,), self.beta, dtype=F64),
                                self._cross(self.beta * Z), self.samples.Lambda.clone())
        self.dense.n_stored = r

    @property
    def beta(self) -> float:
        return 1.0 / math.sqrt(self.n_b * self.n_t)

    def _cross(self, Mz: torch.Tensor) -> torch.Tensor:
        st = self.samples
        stored = st.blocks @ Mz
        return torch.cat([stored, Mz.mT @ Mz], dim=1)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        Z = torch.tanh(torch.randn(1, self.n_f, self.n_b, dtype=F64, generator=self.g))
        Z[:, -1] = 1.0   # the bias feature
        C = self.W_true @ Z + 0.1 * torch.randn(1, self.n_t, self.n_b, dtype=F64, generator=self.g)
        return Z, C

    def stats(self, Z: torch.Tensor, C: torch.Tensor):
        b2 = self.beta ** 2
        return (b2 * Z @ Z.mT).contiguous(), (b2 * C @ Z.mT).contiguous(), b2 * (C * C).sum((1, 2))

    def dense_step(self, Z: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        G, H, c = self.stats(Z, C)
        W, _ = slimtik_step(self.dense, G, H, c, self.n_b * self.n_t, self.W, backend=self.backend)
        return W

    def sample_step(self, Z: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        W, _ = sample_side_step(self.samples, Z, C, self.beta, self.n_b * self.n_t, self.W, backend=self.backend)
        return W

    def check(self) -> float:
        """One step of each path from the same state; returns the largest relative difference
        (dense, sample side, dense twin). Leaves the states one step further."""
        Z, C = self.batch()
        G, H, c = self.stats(Z, C)
        m = torch.full((1,), float(self.n_b * self.n_t), dtype=F64)
        W_twin, _ = _slimtik_step(self.dense.memory_gram(G), G, H, c, m, self.W, self.dense.Lambda.clone(), False,
                                  SolverConfig())
        W_d, W_s = self.dense_step(Z, C), self.sample_step(Z, C)
        return max(float((a - b).norm() / b.norm()) for a, b in ((W_d, W_twin), (W_s, W_twin), (W_s, W_d)))


def _time(fn, Z, C) -> float:
    t0 = time.perf_counter()
    fn(Z, C)
    return time.perf_counter() - t0


def compare(n_f: int, n_t: int, n_b: int, r: int, repeats: int, backend: str = "cpp") -> tuple[float, float, float]:
    """(dense s/step, sample s/step, max rel difference), interleaved medians after one warm-up."""
    pair = Pair(n_f, n_t, n_b, r, backend)
    err = pair.check()
    if err > 1e-9:
        raise AssertionError(f"dense and sample-side steps differ by {err:.2e} at n_f={n_f}, n_b={n_b}, r={r}")
    dense, sample = [], []
    for i in range(repeats):
        Z, C = pair.batch()
        order = (pair.dense_step, pair.sample_step) if i % 2 == 0 else (pair.sample_step, pair.dense_step)
        for fn in order:
            (dense if fn == pair.dense_step else sample).append(_time(fn, Z, C))
    return statistics.median(dense), statistics.median(sample), err


@contextlib.contextmanager
def eigen_route():
    """The cpp backend's sample side through eigh of MᵀM (as the other backends), not the solves."""
    real = sample_side.takes_woodbury
    sample_side.takes_woodbury = lambda *args: False
    try:
        yield
    finally:
        sample_side.takes_woodbury = real


def compare_routes(n_f: int, n_t: int, n_b: int, r: int, repeats: int) -> tuple[float, float, float]:
    """(eigen route s/step, tridiagonal route s/step, their max rel difference), cpp, interleaved."""
    pair = Pair(n_f, n_t, n_b, r, "cpp")
    Z, C = pair.batch()
    state = copy.deepcopy(pair.samples)
    W_t = pair.sample_step(Z, C)
    pair.samples = state
    with eigen_route():
        W_e = pair.sample_step(Z, C)
    err = float((W_t - W_e).norm() / W_e.norm())
    if err > 1e-9:
        raise AssertionError(f"the sample side's two routes differ by {err:.2e}")
    eig, tri = [], []
    for i in range(repeats):
        Z, C = pair.batch()
        for route in ((0, 1) if i % 2 == 0 else (1, 0)):
            with eigen_route() if route == 0 else contextlib.nullcontext():
                (eig if route == 0 else tri).append(_time(pair.sample_step, Z, C))
    return statistics.median(eig), statistics.median(tri), err


def main_wide(quick: bool = False) -> None:
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"# bench_solver --wide  {time.strftime('%Y-%m-%d')}  torch {torch.__version__} "
          f"threads={torch.get_num_threads()}  load average {load}")
    print("dense = statistics + slimtik_step (n_f² Gram, eigh n_f³); sample = sample_side_step; cpp backend, B = 1\n")
    n_f, n_t, n_b, r = 2048, 3, 64, 5
    t_d, t_s, err = compare(n_f, n_t, n_b, r, 3 if quick else 7)
    ratio = t_d / t_s
    print(f"wide head n_f = {n_f} (2047 + bias), n_t = {n_t}, n_b = {n_b}, r = {r}: dense {t_d * 1e3:.1f} ms, "
          f"sample side {t_s * 1e3:.2f} ms, dense/sample = {ratio:.1f}×  (max rel diff {err:.1e})")
    print(f"{'PASS' if ratio >= 30 else 'MISS'}  sample-side step ≥ 30× faster than the dense step: {ratio:.1f}×")
    t_e, t_t, err = compare_routes(n_f, n_t, n_b, r, 5 if quick else 15)
    print(f"sample side, cpp: eigendecomposition route {t_e * 1e3:.2f} ms, tridiagonal route {t_t * 1e3:.2f} ms, "
          f"eigen/tridiagonal = {t_e / t_t:.2f}×  (max rel diff {err:.1e})\n")

    print(f"{'r':>2} {'n_b':>4} {'N':>4} {'n_f':>5} {'n_f/N':>6} | {'dense ms':>9} {'sample ms':>10} "
          f"{'dense/sample':>12} | max rel diff")
    scans = [(5, 64, (288, 384, 432, 480, 576, 768)), (0, 64, (48, 64, 80, 96, 128, 192))]
    for r, n_b, widths in scans:
        N = (r + 1) * n_b
        crossing = None
        for width in widths:
            t_d, t_s, err = compare(width, n_t, n_b, r, 5 if quick else 11)
            print(f"{r:>2} {n_b:>4} {N:>4} {width:>5} {width / N:>6.2f} | {t_d * 1e3:9.2f} {t_s * 1e3:10.2f} "
                  f"{t_d / t_s:12.2f} | {err:.1e}")
            if t_s < t_d and crossing is None:
                crossing = width / N
            elif t_s >= t_d:
                crossing = None
        print(f"   measured crossover (r = {r}, n_b = {n_b}): sample side faster from n_f/N ≈ "
              f"{'n/a' if crossing is None else f'{crossing:.2f}'} on; SAMPLE_SIDE_CROSSOVER_CPP = "
              f"{SAMPLE_SIDE_CROSSOVER_CPP} (the eigendecomposing backends: {SAMPLE_SIDE_CROSSOVER})\n")
