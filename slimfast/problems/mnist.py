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
import math
import os
import zlib
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


#: Largest data section ``read_idx`` accepts (the real MNIST training images are 47 MB): a header
#: claiming more is corrupt, and is rejected before anything is decompressed.
MAX_IDX_BYTES = 1 << 33
_CHUNK = 1 << 20


def read_idx(path: str | os.PathLike, shape: tuple[int | None, ...] | None = None,
             codes: tuple[int, ...] | None = None) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed, detected by its magic bytes) into a numpy array.

    Layout: two zero bytes, a type code, the number of dimensions d, then d big-endian uint32
    sizes, then the data in C order. The header is checked before any data is read (or
    decompressed): the type code (one of ``codes`` if given), the dimensions (``shape``, None =
    any size), and the data size they imply (computed exactly, never wrapped; at most
    ``MAX_IDX_BYTES``). The data are then streamed and must have exactly that size; floating-
    point data must be finite. Raises ValueError naming the file and what is wrong.
    """
    name = os.fspath(path)
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        try:
            return _read_idx_stream(stream, name, shape, codes)
        except (EOFError, OSError, zlib.error) as exc:   # truncated or corrupted .gz (BadGzipFile is an OSError)
            raise ValueError(f"{name}: corrupted or truncated gzip data ({exc})") from None


def _read_exactly(stream, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        part = stream.read(min(_CHUNK, n - got))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _read_idx_stream(stream, name: str, shape: tuple[int | None, ...] | None,
                     codes: tuple[int, ...] | None) -> np.ndarray:
    magic = _read_exactly(stream, 4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
        raise ValueError(f"{name}: not an IDX file (bad magic number)")
    code, ndim = magic[2], magic[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{name}: unknown IDX type code 0x{code:02x}")
    if codes is not None and code not in codes:
        raise ValueError(f"{name}: IDX type code 0x{code:02x}, expected {' or '.join(f'0x{c:02x}' for c in codes)}")
    dims = _read_exactly(stream, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise ValueError(f"{name}: truncated IDX header")
    sizes = tuple(int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(ndim))
    if shape is not None and (len(sizes) != len(shape) or any(e is not None and s != e for s, e in zip(sizes, shape))):
        want = "[" + ", ".join("n" if e is None else str(e) for e in shape) + "]"
        raise ValueError(f"{name}: the header gives shape {list(sizes)}, expected {want}")
    dtype = np.dtype(_IDX_DTYPES[code])
    n_bytes = math.prod(sizes) * dtype.itemsize   # Python ints: exact, no wrap-around
    if n_bytes > MAX_IDX_BYTES:
        raise ValueError(f"{name}: the header's shape {list(sizes)} means {n_bytes} data bytes, more than any "
                         f"IDX file this reader accepts ({MAX_IDX_BYTES}); the header is corrupt")
    data = _read_exactly(stream, n_bytes)
    if len(data) != n_bytes or stream.read(1):
        found = f"{len(data)}" if len(data) < n_bytes else "more"
        raise ValueError(f"{name}: expected {n_bytes} data bytes for shape {list(sizes)}, found {found}")
    out = np.frombuffer(data, dtype=dtype).reshape(sizes).astype(dtype.newbyteorder("="))
    if out.dtype.kind == "f" and not bool(np.isfinite(out).all()):
        raise ValueError(f"{name}: contains NaN or Inf values")
    return out


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
    """(images uint8 [n, 28, 28], labels uint8 [n]) of the ``"train"`` or ``"test"`` split; ValueError
    naming the file for another image size or type, a truncated or corrupted file, or a count
    mismatch, each found from the headers before the data are read."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images_path = find_idx_file(data_dir, _FILES[split, "images"])
    labels_path = find_idx_file(data_dir, _FILES[split, "labels"])
    # MNIST pixels are unsigned bytes scaled by 1/255: other types (floats, which could hold NaN)
    # or image sizes are another data set, rejected from the header before reading the data.
    images = read_idx(images_path, shape=(None, 28, 28), codes=(0x08,))
    labels = read_idx(labels_path, shape=(None,), codes=(0x08,))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_path}: {images.shape[0]} images, but {labels_path} has {labels.shape[0]} labels")
    if images.shape[0] == 0:
        raise ValueError(f"{images_path}: holds no images")
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
