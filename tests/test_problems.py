"""Built-in problems: shapes, determinism by seed, reference values, solver sanity, IDX reader."""

from __future__ import annotations

import gzip
import math
import struct

import numpy as np
import pytest
import torch

from slimfast.problems import get_problem, peaks, read_idx
from slimfast.problems.cdr import N_OBS, N_PARAMS, CDRConfig, CDRSolver, generate_cdr_data, load_cdr
from slimfast.problems.mnist import find_idx_file, load_mnist, load_mnist_arrays


def _same_modules(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- peaks ------------------------------------------------------------------------------------
def test_peaks_known_values():
    e = math.e
    cases = [((0.0, 0.0), 3 / e - 1 / (3 * e)),
             ((1.0, 0.0), 8 / e - math.exp(-4) / 3),
             ((0.0, -1.0), 3 - 10 / e - math.exp(-2) / 3),
             ((-1.0, 0.0), 12 * math.exp(-2) - 8 / e - 1 / 3)]
    for (x, y), expected in cases:
        assert peaks(np.float64(x), np.float64(y)) == pytest.approx(expected, rel=1e-14)
        assert float(peaks(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64))) == \
            pytest.approx(expected, rel=1e-14)
    # MATLAB's documented extrema of peaks on [-3, 3]^2: max ≈ 8.1062, min ≈ -6.5511.
    g = np.linspace(-3, 3, 1201)
    z = peaks(*np.meshgrid(g, g))
    assert z.max() == pytest.approx(8.1062, abs=2e-3)
    assert z.min() == pytest.approx(-6.5511, abs=2e-3)


def test_peaks_problem_shapes_and_determinism():
    p = get_problem("peaks", seed=3)
    assert p.x_train.shape == (2000, 2) and p.y_train.shape == (2000, 1)
    assert p.x_val.shape == (1000, 2) and p.y_val.shape == (1000, 1)
    assert p.x_train.dtype == torch.float32 and float(p.x_train.abs().max()) <= 3.0
    torch.testing.assert_close(p.y_train[:, 0], peaks(p.x_train[:, 0].double(), p.x_train[:, 1].double()).float())
    q = get_problem("peaks", seed=3)
    assert torch.equal(p.x_train, q.x_train) and torch.equal(p.y_val, q.y_val)
    assert not torch.equal(p.x_train, get_problem("peaks", seed=4).x_train)
    # the network factories are deterministic and leave the global RNG alone
    state = torch.random.get_rng_state()
    body, head = p.make_body(), p.make_head()
    assert torch.equal(state, torch.random.get_rng_state())
    assert _same_modules(body, q.make_body()) and _same_modules(head, q.make_head())
    assert not _same_modules(body, p.make_body(seed=11))
    assert isinstance(head, torch.nn.Linear) and head.in_features == 8 and head.out_features == 1
    assert head.bias is not None
    assert head(body(p.x_train[:7])).shape == (7, 1)


# -- cdr --------------------------------------------------------------------------------------
def test_cdr_mass_balance():
    """Zero-flux walls + conservative fluxes: Σ(uⁿ⁺¹ − uⁿ)/Δt = Σ(s − r uⁿ⁺¹) at every step."""
    cfg = CDRConfig(n_grid=16, n_steps=12)
    solver = CDRSolver(cfg)
    theta = np.random.default_rng(0).standard_normal(N_PARAMS)
    states = solver.solve(theta, return_states=True)
    r = solver.reaction(theta)
    assert states.shape == (cfg.n_steps + 1, 16 * 16)
    for k in range(cfg.n_steps):
        lhs = (states[k + 1] - states[k]).sum() / solver.dt
        rhs = (solver.source - r * states[k + 1]).sum()
        assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-10 * solver.source.sum())
    # transport alone conserves mass and is an M-matrix: columns sum to zero
    np.testing.assert_allclose(np.asarray(solver.transport.sum(0)).ravel(), 0.0, atol=1e-9)
    assert (states >= -1e-12).all()  # positive source, zero start, upwind: solution stays non-negative


def test_cdr_converges_under_refinement():
    theta = np.random.default_rng(1).standard_normal((2, N_PARAMS))
    fine = CDRSolver(CDRConfig(n_grid=64, n_steps=96))
    errors = []
    for n, nt in ((16, 24), (32, 48)):
        coarse = CDRSolver(CDRConfig(n_grid=n, n_steps=nt))
        errors.append(max(np.linalg.norm(coarse.solve(t) - fine.solve(t)) / np.linalg.norm(fine.solve(t))
                          for t in theta))
    assert errors[1] < 0.7 * errors[0]
    assert errors[1] < 0.05


def test_cdr_problem_shapes_determinism_and_cache(tmp_path):
    p = load_cdr(seed=2, n_samples=30, n_train=12, n_val=8)
    assert p.x_train.shape == (12, N_PARAMS) and p.y_train.shape == (12, N_OBS)
    assert p.x_val.shape == (8, N_PARAMS) and p.x_test.shape == (10, N_PARAMS) and N_OBS == 72
    assert torch.isfinite(p.y_train).all() and float(p.y_train.min()) >= 0
    theta, obs = generate_cdr_data(30, seed=2)
    torch.testing.assert_close(p.y_val, torch.from_numpy(obs[12:20]).float())
    q = load_cdr(seed=2, n_samples=30, n_train=12, n_val=8, cache_dir=tmp_path)
    assert torch.equal(p.y_train, q.y_train)
    assert len(list(tmp_path.glob("cdr_*.npz"))) == 1
    r = load_cdr(seed=2, n_samples=30, n_train=12, n_val=8, cache_dir=tmp_path)  # from the cache
    assert torch.equal(q.y_test, r.y_test)
    assert not torch.equal(p.x_train, load_cdr(seed=3, n_samples=30, n_train=12, n_val=8).x_train)
    head = p.make_head()
    assert isinstance(head, torch.nn.Linear) and (head.in_features, head.out_features) == (16, 72)
    assert head(p.make_body()(p.x_train)).shape == (12, 72)
    with pytest.raises(ValueError):
        load_cdr(n_samples=10, n_train=8, n_val=8)


# -- digits -----------------------------------------------------------------------------------
def test_digits_problem():
    p = get_problem("digits", seed=0)
    assert p.x_train.shape == (1200, 1, 8, 8) and p.x_val.shape == (300, 1, 8, 8)
    assert p.x_test.shape == (297, 1, 8, 8)
    assert torch.equal(p.x_train, p.y_train)
    assert float(p.x_train.min()) == 0.0 and float(p.x_train.max()) == 1.0
    body, head = p.make_body(), p.make_head()
    assert isinstance(head, torch.nn.ConvTranspose2d) and head.out_channels == 1 and head.bias is not None
    assert head(body(p.x_train[:5])).shape == (5, 1, 8, 8)
    q = get_problem("digits", seed=0)
    assert torch.equal(p.x_val, q.x_val)
    assert not torch.equal(p.x_val, get_problem("digits", seed=1).x_val)


# -- mnist ------------------------------------------------------------------------------------
def _write_idx(path, array: np.ndarray, code: int, compress: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def _fake_mnist(folder, n_train: int, n_test: int, compress: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        gz = ".gz" if compress else ""
        _write_idx(folder / f"{split}-images-idx3-ubyte{gz}", images, 0x08, compress)
        _write_idx(folder / f"{split}-labels-idx1-ubyte{gz}", labels, 0x08, compress)
        data[split] = (images, labels)
    return data


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_roundtrip(tmp_path, compress):
    for code, dtype in ((0x08, np.uint8), (0x0B, np.int16), (0x0D, np.float32), (0x0E, np.float64)):
        a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype) if code != 0x08 else np.arange(24, dtype=dtype)
        path = tmp_path / f"a{code}.idx"
        _write_idx(path, a, code, compress)
        b = read_idx(path)
        assert b.dtype == np.dtype(dtype) and b.shape == a.shape
        np.testing.assert_array_equal(a, b)


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x00\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(ValueError, match="magic"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 5) + b"abc")
    with pytest.raises(ValueError, match="expected 5"):
        read_idx(short)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_from_generated_idx(tmp_path, compress):
    data = _fake_mnist(tmp_path, n_train=20, n_test=6, compress=compress)
    images, labels = load_mnist_arrays(tmp_path, "train")
    np.testing.assert_array_equal(images, data["train"][0])
    np.testing.assert_array_equal(labels, data["train"][1])
    p = get_problem("mnist", seed=1, data_dir=tmp_path, n_train=12, n_val=8)
    assert p.x_train.shape == (12, 1, 28, 28) and p.x_val.shape == (8, 1, 28, 28)
    assert p.x_test.shape == (6, 1, 28, 28)
    torch.testing.assert_close(p.x_test[:, 0], torch.from_numpy(data["t10k"][0]).float() / 255)
    # train + validation is a permutation of the training file
    both = torch.cat([p.x_train, p.x_val])[:, 0] * 255
    assert sorted(both.round().reshape(20, -1).sum(1).tolist()) == \
        sorted(data["train"][0].reshape(20, -1).sum(1).astype(float).tolist())
    assert torch.equal(p.x_train, load_mnist(tmp_path, seed=1, n_train=12, n_val=8).x_train)
    body, head = p.make_body(), p.make_head()
    assert isinstance(head, torch.nn.ConvTranspose2d) and (head.in_channels, head.out_channels) == (16, 1)
    assert head.bias is not None
    assert body(p.x_train[:3]).shape == (3, 16, 14, 14)
    assert head(body(p.x_train[:3])).shape == (3, 1, 28, 28)


def test_mnist_layouts_and_errors(tmp_path):
    _fake_mnist(tmp_path / "MNIST" / "raw", n_train=4, n_test=2, compress=True)
    assert find_idx_file(tmp_path, "train-images-idx3-ubyte").name == "train-images-idx3-ubyte.gz"
    with pytest.raises(ValueError, match="data_dir"):
        get_problem("mnist")
    with pytest.raises(FileNotFoundError):
        load_mnist(tmp_path / "empty")
    with pytest.raises(ValueError):
        load_mnist(tmp_path, n_train=4, n_val=1)
    with pytest.raises(ValueError, match="unknown problem"):
        get_problem("cifar")
