"""Digits autoencoder: scikit-learn's bundled 8×8 handwritten digits (1797 images, offline).

Pixels are scaled to [0, 1]. The network reconstructs its input:

    body:  Conv2d(1→16, 3, s2, p1) ReLU  Conv2d(16→32, 3, s2, p1) ReLU  [32·2·2] Linear(128→16)
           Linear(16→128) ReLU  [32, 2, 2]  ConvTranspose2d(32→16, 4, s2, p1) ReLU      → [16, 4, 4]
    head:  ConvTranspose2d(16→1, 4, s2, p1) with bias                                  → [1, 8, 8]

The head is linear in its (shared) weights, so slimTik solves it every step.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._common import Problem, split_sizes

LATENT = 16
CHANNELS = 16


def make_digits_body(latent: int = LATENT, channels: int = CHANNELS) -> nn.Module:
    c1, c2 = channels, 2 * channels
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, stride=2, padding=1), nn.ReLU(),            # 8 → 4
        nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(),           # 4 → 2
        nn.Flatten(), nn.Linear(c2 * 2 * 2, latent),
        nn.Linear(latent, c2 * 2 * 2), nn.ReLU(), nn.Unflatten(1, (c2, 2, 2)),
        nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), nn.ReLU(),  # 2 → 4
    )


def make_digits_head(channels: int = CHANNELS) -> nn.Module:
    return nn.ConvTranspose2d(channels, 1, 4, stride=2, padding=1, bias=True)  # 4 → 8


def load_digits_images() -> np.ndarray:
    """All 1797 images as float32 [1797, 1, 8, 8] in [0, 1] (bundled with scikit-learn)."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32) / 16.0
    return images[:, None, :, :]


def load_digits_problem(seed: int = 0, n_train: int = 1200, n_val: int = 300, batch_size: int = 32) -> Problem:
    """Train / validation / test (the rest) split of a seed-dependent permutation of the images."""
    images = load_digits_images()
    n_tr, n_va, _ = split_sizes(len(images), n_train, n_val)
    perm = np.random.default_rng([seed, 0xD161]).permutation(len(images))
    x = torch.from_numpy(np.ascontiguousarray(images[perm]))
    a, b = n_tr, n_tr + n_va
    return Problem(
        name="digits", x_train=x[:a], y_train=x[:a], x_val=x[a:b], y_val=x[a:b],
        x_test=x[b:], y_test=x[b:], batch_size=batch_size, seed=seed,
        body_builder=make_digits_body, head_builder=make_digits_head,
        info={"latent": LATENT, "channels": CHANNELS, "image": [8, 8]},
    )
