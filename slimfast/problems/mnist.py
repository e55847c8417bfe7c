"""MNIST: a reader for the standard IDX files and the slimTrain paper's autoencoder.

Nothing is downloaded: point ``data_dir`` at a folder holding ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``
(each optionally ``.gz``; torchvision's ``MNIST/raw`` sub-folder and the ``-idx3-ubyte`` →
``.idx3-ubyte`` spelling are also found).

Autoencoder (Newman et al. 2022, §5.3):

    body:  Conv2d(1→16, 4, s2, p1) ReLU  Conv2d(16→32, 4, s2, p1) ReLU  [1568] Linear(1568→50)
           Linear(50→1568) [32, 7, 7] BatchNorm2d(32) ConvTranspose2d(32→16, 4, s2, p1) ReLU
           BatchNorm2d(16)                                                         → [16, 14, 14]
    head:  ConvTranspose2d(16→1, 4, s2, p1) with bias                              → [1, 28, 28]
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._common import Problem

LATENT = 50
WIDTH = 16

#: IDX type codes → big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed, detected by its magic bytes) into a numpy array.

    Layout: two zero bytes, a type code, the number of dimensions d, then d big-endian uint32
    sizes, then the data in C order. Raises ValueError on a malformed or truncated file.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(f"{path}: expected {count * dtype.itemsize} data bytes for shape {shape}, "
                         f"found {len(raw) - header}")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def find_idx_file(data_dir: str | os.PathLike, stem: str) -> Path:
    """The path of ``stem`` (e.g. ``train-images-idx3-ubyte``) under ``data_dir``, with or without
    ``.gz``, also in ``MNIST/raw`` and with the ``.idx3-ubyte`` spelling."""
    root = Path(data_dir)
    variants = [stem, stem.replace("-idx", ".idx")]
    for folder in (root, root / "MNIST" / "raw", root / "raw"):
        for name in variants:
            for suffix in ("", ".gz"):
                candidate = folder / (name + suffix)
                if candidate.is_file():
                    return candidate
    raise FileNotFoundError(f"no {stem}[.gz] under {root} (MNIST is never downloaded; "
                            "put the four IDX files there)")


def load_mnist_arrays(data_dir: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 28, 28], labels uint8 [n]) of the ``"train"`` or ``"test"`` split."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images = read_idx(find_idx_file(data_dir, _FILES[split, "images"]))
    labels = read_idx(find_idx_file(data_dir, _FILES[split, "labels"]))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"MNIST {split}: images {images.shape} and labels {labels.shape} do not match")
    return images, labels


class MNISTBody(nn.Module):
    """Encoder to a ``latent``-dimensional code and the decoder up to the last layer (→ [width, 14, 14])."""

    def __init__(self, width: int = WIDTH, latent: int = LATENT) -> None:
        super().__init__()
        w2 = 2 * width
        self.encoder = nn.Sequential(
            nn.Conv2d(1, width, 4, stride=2, padding=1), nn.ReLU(),   # 28 → 14
            nn.Conv2d(width, w2, 4, stride=2, padding=1), nn.ReLU(),  # 14 → 7
            nn.Flatten(), nn.Linear(w2 * 7 * 7, latent),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent, w2 * 7 * 7), nn.Unflatten(1, (w2, 7, 7)), nn.BatchNorm2d(w2),
            nn.ConvTranspose2d(w2, width, 4, stride=2, padding=1), nn.ReLU(), nn.BatchNorm2d(width),  # 7 → 14
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def make_mnist_body(width: int = WIDTH, latent: int = LATENT) -> nn.Module:
    return MNISTBody(width, latent)


def make_mnist_head(width: int = WIDTH) -> nn.Module:
    return nn.ConvTranspose2d(width, 1, 4, stride=2, padding=1, bias=True)  # 14 → 28


def load_mnist(
    data_dir: str | os.PathLike,
    seed: int = 0,
    n_train: int = 50000,
    n_val: int = 10000,
    batch_size: int = 32,
    with_test: bool = True,
) -> Problem:
    """MNIST autoencoder problem from local IDX files, pixels scaled to [0, 1], shape [n, 1, 28, 28].

    The training file is shuffled by ``seed`` and split into ``n_train`` training and ``n_val``
    validation images; the t10k files, when present and ``with_test``, are the test set.
    """
    images, _ = load_mnist_arrays(data_dir, "train")
    if n_train < 1 or n_val < 1 or n_train + n_val > len(images):
        raise ValueError(f"need n_train, n_val >= 1 and n_train + n_val <= {len(images)}, got {n_train}, {n_val}")
    perm = np.random.default_rng([seed, 0x3157]).permutation(len(images))
    x = torch.from_numpy(images[perm[: n_train + n_val]].astype(np.float32) / 255.0)[:, None]
    x_test = None
    if with_test:
        try:
            test_images, _ = load_mnist_arrays(data_dir, "test")
            x_test = torch.from_numpy(test_images.astype(np.float32) / 255.0)[:, None]
        except FileNotFoundError:
            x_test = None
    return Problem(
        name="mnist", x_train=x[:n_train], y_train=x[:n_train], x_val=x[n_train:], y_val=x[n_train:],
        x_test=x_test, y_test=x_test, batch_size=batch_size, seed=seed,
        body_builder=make_mnist_body, head_builder=make_mnist_head,
        info={"latent": LATENT, "width": WIDTH, "image": [28, 28], "data_dir": str(data_dir)},
    )
