"""Peaks regression: fit MATLAB's ``peaks`` surface on [−3, 3]² with a residual tanh network.

Body: ``Linear(2, 8)`` + tanh, then 8 residual steps z ← z + ½·tanh(K z + b) (final time 4);
head: ``nn.Linear(8, 1)`` with bias. Inputs are uniform on the square; targets are exact.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._common import Problem, ResidualBody

WIDTH = 8
DEPTH = 8
FINAL_TIME = 4.0
BOX = 3.0


def peaks(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """MATLAB's peaks function

        3(1−x)² e^{−x²−(y+1)²} − 10(x/5 − x³ − y⁵) e^{−x²−y²} − ⅓ e^{−(x+1)²−y²}

    for numpy arrays or torch tensors (elementwise, broadcasting)."""
    exp = torch.exp if isinstance(x, torch.Tensor) else np.exp
    return (3 * (1 - x) ** 2 * exp(-x**2 - (y + 1) ** 2)
            - 10 * (x / 5 - x**3 - y**5) * exp(-x**2 - y**2)
            - exp(-(x + 1) ** 2 - y**2) / 3)


def make_peaks_body(width: int = WIDTH, depth: int = DEPTH, final_time: float = FINAL_TIME) -> nn.Module:
    return ResidualBody(2, width, depth, final_time)


def make_peaks_head(width: int = WIDTH) -> nn.Module:
    return nn.Linear(width, 1, bias=True)


def sample_peaks(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n points uniform on [−3, 3]² ([n, 2]) and their peaks values ([n, 1]), float32."""
    xy = rng.uniform(-BOX, BOX, size=(n, 2))
    z = peaks(xy[:, 0], xy[:, 1])[:, None]
    return torch.from_numpy(xy.astype(np.float32)), torch.from_numpy(z.astype(np.float32))


def load_peaks(seed: int = 0, n_train: int = 2000, n_val: int = 1000, batch_size: int = 32) -> Problem:
    """The peaks problem: ``n_train`` training and ``n_val`` validation points, deterministic in ``seed``."""
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be positive, got {n_train}, {n_val}")
    rng = np.random.default_rng([seed, 0x9EA5])
    x_train, y_train = sample_peaks(n_train, rng)
    x_val, y_val = sample_peaks(n_val, rng)
    return Problem(
        name="peaks", x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=None, y_test=None,
        batch_size=batch_size, seed=seed, body_builder=make_peaks_body, head_builder=make_peaks_head,
        info={"width": WIDTH, "depth": DEPTH, "final_time": FINAL_TIME, "box": [-BOX, BOX]},
    )
