"""Convection–diffusion–reaction surrogate: 55 reaction parameters → 72 sensor readings.

The forward model is the time-dependent CDR equation on the unit square

    ∂u/∂t + ∇·(v u) − D Δu + r(x) u = s(x),     u(x, 0) = 0,     zero flux on ∂Ω,   t ∈ [0, T],  T = 2,

with a divergence-free cellular flow v = a·(π sin πx cos πy, −π cos πx sin πy) (tangent to the
walls), a Gaussian source s, and the reaction field parametrised by θ ∈ R⁵⁵:

    r(x; θ) = r₀ · exp( Σ_{k+l ≤ 9} σ_{kl} θ_{kl} cos(kπx) cos(lπy) ),   σ_{kl} = σ₀ / (1 + k + l)^{3/2}.

(The 55 cosine modes are those with k, l ≥ 0 and k + l ≤ 9.) θ is drawn standard normal.
Observations: u at 12 sensors (bilinear interpolation) at 6 times t = T/6, …, T → 72 values,
sensor-major (index = 6·sensor + time).

Discretisation: cell-centred finite volumes on an N×N grid (default 32), central diffusion
fluxes, first-order upwind convective fluxes, no flux through the boundary, implicit Euler in
time. The scheme is conservative: with zero-flux walls the total mass obeys
``h² Σ (uⁿ⁺¹ − uⁿ)/Δt = h² Σ (s − r uⁿ⁺¹)`` exactly, which the tests check. The matrix
I/Δt + L + diag(r) is constant in time, so each sample costs one sparse LU and nt solves.

Body: ``Linear(55, 16)`` + tanh and 8 residual tanh steps (width 16); head ``nn.Linear(16, 72)``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from torch import nn

from ._common import Problem, ResidualBody, split_sizes

logger = logging.getLogger("slimfast")

N_PARAMS = 55
MAX_DEGREE = 9  # modes with k + l <= 9: 10·11/2 = 55
SENSORS_X = (0.2, 0.4, 0.6, 0.8)
SENSORS_Y = (0.25, 0.5, 0.75)
N_OBS_TIMES = 6
N_OBS = len(SENSORS_X) * len(SENSORS_Y) * N_OBS_TIMES  # 72
WIDTH = 16
DEPTH = 8
FINAL_TIME = 4.0


@dataclass(frozen=True)
class CDRConfig:
    """Physical and numerical constants of the CDR forward model."""

    n_grid: int = 32
    n_steps: int = 24
    final_time: float = 2.0
    diffusion: float = 0.02
    flow: float = 1.0
    reaction0: float = 1.0
    reaction_sigma: float = 0.6
    source_center: tuple[float, float] = (0.3, 0.3)
    source_width: float = 0.15
    source_amplitude: float = 5.0

    def __post_init__(self) -> None:
        if self.n_grid < 4 or self.n_steps < N_OBS_TIMES or self.n_steps % N_OBS_TIMES:
            raise ValueError(f"need n_grid >= 4 and n_steps a positive multiple of {N_OBS_TIMES}, "
                             f"got n_grid={self.n_grid}, n_steps={self.n_steps}")
        if self.diffusion <= 0 or self.final_time <= 0:
            raise ValueError("diffusion and final_time must be positive")


def mode_indices() -> list[tuple[int, int]]:
    """The 55 (k, l) cosine modes with k + l ≤ 9, ordered by total degree then k."""
    return [(k, d - k) for d in range(MAX_DEGREE + 1) for k in range(d + 1)]


class CDRSolver:
    """Finite-volume CDR forward model on an N×N cell grid (see module docstring)."""

    def __init__(self, config: CDRConfig | None = None) -> None:
        self.config = cfg = config if config is not None else CDRConfig()
        n = cfg.n_grid
        self.h = h = 1.0 / n
        self.dt = cfg.final_time / cfg.n_steps
        c = (np.arange(n) + 0.5) * h  # cell centres
        self.xc, self.yc = np.meshgrid(c, c, indexing="ij")  # u[i, j] at (x_i, y_j); flat index i*n + j
        # Reaction basis [n², 55] with the per-mode scales folded in.
        modes = mode_indices()
        scale = np.array([cfg.reaction_sigma / (1.0 + k + l) ** 1.5 for k, l in modes])
        basis = np.stack([np.cos(k * np.pi * self.xc) * np.cos(l * np.pi * self.yc) for k, l in modes], -1)
        self.basis = basis.reshape(n * n, N_PARAMS) * scale
        sx, sy = cfg.source_center
        src = cfg.source_amplitude * np.exp(-((self.xc - sx) ** 2 + (self.yc - sy) ** 2) / (2 * cfg.source_width**2))
        self.source = src.reshape(-1)
        self.transport = self._transport_matrix()
        self.observe = self._sensor_matrix()
        self._base = (sp.identity(n * n, format="csr") / self.dt + self.transport).tocsc()
        self._base.sort_indices()
        self._diag_pos = self._diagonal_positions(self._base)

    # -- assembly ---------------------------------------------------------------------------
    def _transport_matrix(self) -> sp.csr_matrix:
        """L with (L u)_P = (1/h²)·Σ_faces outward flux: diffusion (central) + convection (upwind)."""
        cfg, n, h = self.config, self.config.n_grid, self.h
        D, a = cfg.diffusion, cfg.flow
        rows, cols, vals = [], [], []
        idx = np.arange(n * n).reshape(n, n)
        # interior faces normal to x between cells (i, j) and (i+1, j), at x = (i+1)h, y = y_j
        xf, yf = (np.arange(1, n) * h)[:, None], ((np.arange(n) + 0.5) * h)[None, :]
        vx = a * np.pi * np.sin(np.pi * xf) * np.cos(np.pi * yf) * np.ones((n - 1, n))
        self._add_faces(rows, cols, vals, idx[:-1, :], idx[1:, :], vx, D, h)
        # interior faces normal to y between (i, j) and (i, j+1), at x = x_i, y = (j+1)h
        xf, yf = ((np.arange(n) + 0.5) * h)[:, None], (np.arange(1, n) * h)[None, :]
        vy = -a * np.pi * np.cos(np.pi * xf) * np.sin(np.pi * yf) * np.ones((n, n - 1))
        self._add_faces(rows, cols, vals, idx[:, :-1], idx[:, 1:], vy, D, h)
        rows, cols, vals = (np.concatenate(v) for v in (rows, cols, vals))
        return sp.csr_matrix((vals, (rows, cols)), shape=(n * n, n * n))

    @staticmethod
    def _add_faces(rows: list, cols: list, vals: list, left: np.ndarray, right: np.ndarray,
                   vel: np.ndarray, D: float, h: float) -> None:
        """Flux F = v·u_upwind − D (u_R − u_L)/h from L to R; adds F/h to L's row and −F/h to R's."""
        L, R, v = left.ravel(), right.ravel(), vel.ravel()
        vp, vm = np.maximum(v, 0.0), np.minimum(v, 0.0)
        d = D / h
        # F = (vp + d) u_L + (vm − d) u_R
        for row, sign in ((L, 1.0), (R, -1.0)):
            rows += [row, row]
            cols += [L, R]
            vals += [sign * (vp + d) / h, sign * (vm - d) / h]

    @staticmethod
    def _diagonal_positions(A: sp.csc_matrix) -> np.ndarray:
        pos = np.empty(A.shape[0], dtype=np.int64)
        for j in range(A.shape[0]):
            start, stop = A.indptr[j], A.indptr[j + 1]
            k = np.searchsorted(A.indices[start:stop], j)
            if k >= stop - start or A.indices[start + k] != j:
                raise RuntimeError("transport matrix lacks a diagonal entry")
            pos[j] = start + k
        return pos

    def _sensor_matrix(self) -> sp.csr_matrix:
        """[12, n²] bilinear interpolation from cell centres (clamped at the outer half cell)."""
        n, h = self.config.n_grid, self.h
        rows, cols, vals = [], [], []
        for s, (px, py) in enumerate((x, y) for x in SENSORS_X for y in SENSORS_Y):
            fx, fy = px / h - 0.5, py / h - 0.5
            i0, j0 = int(np.clip(np.floor(fx), 0, n - 2)), int(np.clip(np.floor(fy), 0, n - 2))
            tx, ty = float(np.clip(fx - i0, 0, 1)), float(np.clip(fy - j0, 0, 1))
            for di, wx in ((0, 1 - tx), (1, tx)):
                for dj, wy in ((0, 1 - ty), (1, ty)):
                    rows.append(s)
                    cols.append((i0 + di) * n + (j0 + dj))
                    vals.append(wx * wy)
        return sp.csr_matrix((vals, (rows, cols)), shape=(len(SENSORS_X) * len(SENSORS_Y), n * n))

    # -- solve ------------------------------------------------------------------------------
    def reaction(self, theta: np.ndarray) -> np.ndarray:
        """r(x; θ) on the cell centres, flattened [n²]."""
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape != (N_PARAMS,):
            raise ValueError(f"theta must have shape ({N_PARAMS},), got {theta.shape}")
        return self.config.reaction0 * np.exp(self.basis @ theta)

    def solve(self, theta: np.ndarray, return_states: bool = False) -> np.ndarray:
        """Observations [72] (sensor-major) for parameters θ [55]; with ``return_states`` the
        states u⁰ … u^{nt} as [nt + 1, n²] instead."""
        cfg = self.config
        r = self.reaction(theta)
        A = self._base.copy()
        A.data[self._diag_pos] += r
        lu = spla.splu(A, permc_spec="COLAMD")
        u = np.zeros(cfg.n_grid**2)
        every = cfg.n_steps // N_OBS_TIMES
        states = [u] if return_states else None
        obs = np.empty((self.observe.shape[0], N_OBS_TIMES))
        for step in range(1, cfg.n_steps + 1):
            u = lu.solve(u / self.dt + self.source)
            if return_states:
                states.append(u)
            if step % every == 0:
                obs[:, step // every - 1] = self.observe @ u
        return np.stack(states) if return_states else obs.reshape(-1)


def generate_cdr_data(n_samples: int, seed: int, config: CDRConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """θ [n, 55] standard normal and observations [n, 72], float64, deterministic in ``seed``."""
    solver = CDRSolver(config)
    theta = np.random.default_rng([seed, 0xCD2]).standard_normal((n_samples, N_PARAMS))
    obs = np.stack([solver.solve(t) for t in theta]) if n_samples else np.zeros((0, N_OBS))
    return theta, obs


def make_cdr_body(width: int = WIDTH, depth: int = DEPTH, final_time: float = FINAL_TIME) -> nn.Module:
    return ResidualBody(N_PARAMS, width, depth, final_time)


def make_cdr_head(width: int = WIDTH) -> nn.Module:
    return nn.Linear(width, N_OBS, bias=True)


def load_cdr(
    seed: int = 0,
    n_samples: int = 1000,
    n_train: int = 400,
    n_val: int = 200,
    batch_size: int = 32,
    config: CDRConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Problem:
    """The CDR surrogate problem: ``n_train`` / ``n_val`` / rest-as-test samples of (θ, observations).

    Nothing is written to disk unless ``cache_dir`` is given; then the generated arrays are
    stored there as ``cdr_<key>.npz`` and reused by later calls with the same settings.
    """
    config = config if config is not None else CDRConfig()
    n_tr, n_va, n_te = split_sizes(n_samples, n_train, n_val)
    theta = obs = None
    path = None
    if cache_dir is not None:
        key = _cache_key(config, n_samples, seed)
        path = Path(cache_dir) / f"cdr_{key}.npz"
        if path.exists():
            with np.load(path) as f:
                theta, obs = f["theta"], f["obs"]
            logger.info("cdr: loaded %d samples from %s", n_samples, path)
    if theta is None:
        start = time.perf_counter()
        theta, obs = generate_cdr_data(n_samples, seed, config)
        logger.info("cdr: generated %d samples in %.2f s", n_samples, time.perf_counter() - start)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, theta=theta, obs=obs)
            os.replace(tmp, path)
    x = torch.from_numpy(theta.astype(np.float32))
    y = torch.from_numpy(obs.astype(np.float32))
    a, b = n_tr, n_tr + n_va
    return Problem(
        name="cdr", x_train=x[:a], y_train=y[:a], x_val=x[a:b], y_val=y[a:b],
        x_test=x[b:] if n_te else None, y_test=y[b:] if n_te else None,
        batch_size=batch_size, seed=seed, body_builder=make_cdr_body, head_builder=make_cdr_head,
        info={"n_params": N_PARAMS, "n_obs": N_OBS, "width": WIDTH, "depth": DEPTH,
              "n_grid": config.n_grid, "n_steps": config.n_steps},
    )


def _cache_key(config: CDRConfig, n_samples: int, seed: int) -> str:
    import hashlib

    text = repr((sorted(vars(config).items()), n_samples, seed, math.pi))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
