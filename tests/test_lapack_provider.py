"""The compiled CPU kernels' LAPACK provider (slimfast/backends/lapack_provider.py): the probes
accept a real LP64 library and reject ILP64 or wrong ones; both providers give the same steps."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

cpp = pytest.importorskip("slimfast.backends.cpp")

from slimfast._torch_block import _slimtik_block_step  # noqa: E402
from slimfast._torch_impl import _slimtik_step  # noqa: E402
from slimfast.backends import lapack_provider as lp  # noqa: E402
from slimfast.backends.boundary import BlockLayout, StepInputs  # noqa: E402
from slimfast.config import SolverConfig  # noqa: E402

MKL = lp.torch_mkl_functions() is not None
needs_mkl = pytest.mark.skipif(not MKL, reason="the loaded torch exports no LP64 MKL")
F64 = torch.float64


@pytest.fixture
def restore_provider() -> Iterator[None]:
    before = lp.PROVIDER
    yield
    lp.use(cpp._cpu, before)


def test_provider_is_reported_and_installed() -> None:
    assert lp.PROVIDER in ("scipy", "mkl (torch)")
    wanted = lp._SCIPY if lp.PROVIDER == "scipy" else lp.torch_mkl_functions()
    assert {name: cpp._cpu.lapack_function(name) for name in lp.REPLACEABLE} == wanted


@pytest.mark.parametrize("name", ["dsyevd", "dgemm", "dgemv"])
def test_probes_accept_scipys_lp64_functions(name: str) -> None:
    assert lp._PROBES[name](lp._SCIPY[name])


def _fake_dsyevd(body):
    proto = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 11))
    return proto(body)


def test_probe_rejects_an_ilp64_dsyevd() -> None:
    """An ILP64 dsyevd reads 64-bit ints: the probe's n is then negative, it returns info = −3."""
    calls = []

    def ilp64(jobz, uplo, n, a, lda, w, work, lwork, iwork, liwork, info):
        n64 = ctypes.cast(n, ctypes.POINTER(ctypes.c_int64)).contents.value
        calls.append(n64)
        ctypes.cast(info, ctypes.POINTER(ctypes.c_int64)).contents.value = -3 if n64 < 0 else 0

    fn = _fake_dsyevd(ilp64)
    assert not lp._lp64_dsyevd_works(ctypes.cast(fn, ctypes.c_void_p).value)
    assert calls and calls[0] < 0


def test_probe_rejects_a_dsyevd_with_wrong_results() -> None:
    def wrong(jobz, uplo, n, a, lda, w, work, lwork, iwork, liwork, info):
        ctypes.cast(info, ctypes.POINTER(ctypes.c_int32)).contents.value = 0   # "success", nothing computed

    fn = _fake_dsyevd(wrong)
    assert not lp._lp64_dsyevd_works(ctypes.cast(fn, ctypes.c_void_p).value)


def test_set_lapack_function_names_its_argument() -> None:
    with pytest.raises(ValueError, match="name must be"):
        cpp._cpu.set_lapack_function("dpotrf", lp._SCIPY["dsyevd"])
    with pytest.raises(ValueError, match="address of dsyevd"):
        cpp._cpu.set_lapack_function("dsyevd", 0)
    with pytest.raises(ValueError, match="provider must be"):
        lp.use(cpp._cpu, "openblas")


def _problem(n_f: int, n_t: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(1, n_f, 3 * n_f, generator=g, dtype=F64)
    Zk = Z[:, :, : n_f]
    C = torch.randn(1, n_t, n_f, generator=g, dtype=F64)
    G_mem, G = Z @ Z.mT / (3 * n_f), Zk @ Zk.mT / n_f
    H, c = C @ Zk.mT / n_f, (C * C).sum((1, 2)) / n_f
    m = torch.tensor([float(n_f * n_t)], dtype=F64)
    W = 0.1 * torch.randn(1, n_t, n_f, generator=g, dtype=F64)
    return G_mem, G, H, c, m, W, torch.tensor([0.05], dtype=F64)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@needs_mkl
@pytest.mark.parametrize("n_f,n_t", [(9, 1), (17, 72), (64, 3), (130, 2)])
def test_dense_step_same_with_both_providers(n_f: int, n_t: int, restore_provider: None) -> None:
    args = _problem(n_f, n_t, seed=n_f)
    cfg = SolverConfig()
    twin = _slimtik_step(*args, False, cfg)
    results = {}
    for provider in ("scipy", "mkl (torch)"):
        lp.use(cpp._cpu, provider)
        results[provider] = cpp.slimtik_step(*args, False, cfg)
    for W_new, info in results.values():
        assert _rel(W_new, twin[0]) <= 1e-9 and _rel(info[:, :2], twin[1][:, :2]) <= 1e-9
    assert _rel(results["mkl (torch)"][0], results["scipy"][0]) <= 1e-9


@needs_mkl
def test_block_step_same_with_both_providers(restore_provider: None) -> None:
    sizes = (40, 40, 33)
    n_f = sum(sizes) + 1
    G_mem, G, H, c, m, W, Lam = _problem(n_f, 1, seed=3)
    mask = torch.zeros(n_f, n_f, dtype=torch.bool)
    lo = 0
    for n_p in sizes:
        mask[lo:lo + n_p, lo:lo + n_p] = True
        lo += n_p
    mask[-1, :] = mask[:, -1] = True
    G_mem, G = G_mem * mask, G * mask
    layout = BlockLayout(sizes=sizes, border=True)
    cfg = SolverConfig()
    twin = _slimtik_block_step(StepInputs(G_mem, G, H, c, m, W, Lam, False, cfg, layout))
    results = {}
    for provider in ("scipy", "mkl (torch)"):
        lp.use(cpp._cpu, provider)
        results[provider] = cpp.slimtik_step(G_mem, G, H, c, m, W, Lam, False, cfg, blocks=layout)
    for W_new, _ in results.values():
        assert _rel(W_new, twin[0]) <= 1e-9
    assert _rel(results["mkl (torch)"][0], results["scipy"][0]) <= 1e-9


@pytest.mark.parametrize("value,expected", [("scipy", "scipy"), ("SciPy ", "scipy"), ("bogus", None)])
def test_environment_variable(value: str, expected: str | None, tmp_path) -> None:
    """SLIMFAST_LAPACK=scipy keeps SciPy's; an unknown value warns and falls back to 'auto'.
    Run from an empty folder, so that the child imports the installed slimfast as this process
    does (not a source tree without the compiled module)."""
    code = ("import logging; logging.basicConfig(); import slimfast.backends.cpp; "
            "from slimfast.backends import lapack_provider as lp; print(lp.PROVIDER)")
    env = {**os.environ, lp.ENV: value}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    auto = "mkl (torch)" if MKL else "scipy"
    assert out.stdout.strip() == (expected or auto)
    if expected is None:
        assert "neither 'auto' nor 'scipy'" in out.stderr
