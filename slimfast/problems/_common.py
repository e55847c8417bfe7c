"""Shared pieces of the built-in problems: the dataset record and the residual body."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn


def seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a module with torch's RNG seeded by ``seed``; the global RNG state is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@dataclass(frozen=True, eq=False)
class Problem:
    """A built-in training problem: data split into train/validation(/test) and the network.

    The network is separable: ``make_head()(make_body()(x))`` predicts ``y``. The head is the
    layer slimTik solves for (a ``nn.Linear`` or a ``nn.ConvTranspose2d``); the body is
    everything before it. The loss is the mean squared error over all target entries.

    Attributes:
        name: registry name.
        x_train, y_train, x_val, y_val: float32 tensors, first dimension = samples.
        x_test, y_test: held-out tensors, or None.
        batch_size: default mini-batch size.
        seed: the seed the data (and, by default, the network) were generated with.
        info: problem-specific facts (sizes, physical constants, ...), JSON-serialisable.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None
    batch_size: int
    seed: int
    body_builder: Callable[[], nn.Module] = field(repr=False)
    head_builder: Callable[[], nn.Module] = field(repr=False)
    info: dict = field(default_factory=dict)

    def make_body(self, seed: int | None = None) -> nn.Module:
        """A freshly initialised body; the same ``seed`` (default: the problem's) gives the same weights."""
        return seeded(self.seed if seed is None else seed, self.body_builder)

    def make_head(self, seed: int | None = None) -> nn.Module:
        """A freshly initialised head, from a seed stream separate from the body's."""
        return seeded((self.seed if seed is None else seed) + 7919, self.head_builder)

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_val(self) -> int:
        return int(self.x_val.shape[0])

    def subset(self, n_train: int | None = None, n_val: int | None = None) -> "Problem":
        """The same problem on the first ``n_train`` training / ``n_val`` validation samples."""
        from dataclasses import replace

        return replace(
            self,
            x_train=self.x_train[:n_train], y_train=self.y_train[:n_train],
            x_val=self.x_val[:n_val], y_val=self.y_val[:n_val],
        )

    def __repr__(self) -> str:
        test = "none" if self.x_test is None else str(tuple(self.x_test.shape))
        return (f"Problem({self.name!r}, x_train={tuple(self.x_train.shape)}, y_train={tuple(self.y_train.shape)}, "
                f"x_val={tuple(self.x_val.shape)}, test={test}, batch_size={self.batch_size}, seed={self.seed})")


class ResidualBlock(nn.Module):
    """One forward-Euler step of a residual network: z ← z + h·σ(K z + b)."""

    def __init__(self, width: int, h: float, activation: Callable[[torch.Tensor], torch.Tensor] = torch.tanh) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.h = float(h)
        self.activation = activation

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.h * self.activation(self.linear(z))

    def extra_repr(self) -> str:
        return f"h={self.h}"


class ResidualBody(nn.Module):
    """Opening layer ``tanh(K₀ y + b₀)`` (in_features → width) then ``depth`` residual steps of size T/depth.

    The output is the feature vector the linear head acts on (no closing layer).
    """

    def __init__(self, in_features: int, width: int, depth: int, final_time: float) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.opening = nn.Linear(in_features, width)
        h = final_time / depth
        self.layers = nn.Sequential(*(ResidualBlock(width, h) for _ in range(depth)))
        self.in_features, self.width, self.depth, self.final_time = in_features, width, depth, final_time

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.tanh(self.opening(y)))


def split_sizes(total: int, n_train: int, n_val: int) -> tuple[int, int, int]:
    """(train, validation, test) sizes, the test set taking the rest."""
    if n_train < 1 or n_val < 1 or n_train + n_val > total:
        raise ValueError(f"need 1 <= n_train, 1 <= n_val and n_train + n_val <= {total}, got {n_train}, {n_val}")
    return n_train, n_val, total - n_train - n_val
