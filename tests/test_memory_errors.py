"""Allocation failure is a MemoryError with the state unchanged, in every CPU backend (issue 12.1).

Each case runs in a subprocess under an address-space limit (``RLIMIT_AS``) about 100 MB above
what the child already uses; one step of SlimTikState(1, 3000, 1, 0) needs several times that
(the C++ kernel's scratch alone is 6·n_f² doubles = 430 MB, torch's eigh ~ 2·n_f² doubles). The
child must exit normally (no std::terminate, no numba fatal error, no hang), report MemoryError,
leave the state bit-identical, and succeed once the limit is lifted.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from slimfast.backends import loader
from slimfast.config import SolverConfig

from .conftest import CPU_BACKENDS, require_backend

CHILD = textwrap.dedent(
    """
    import resource, sys, torch
    from slimfast import SlimTikState, slimtik_step

    backend = sys.argv[1]
    F64 = torch.float64

    def problem(n):
        g = torch.Generator().manual_seed(0)
        Z = torch.randn(1, n, 8, dtype=F64, generator=g)
        return (Z @ Z.mT / 8, 0.1 * torch.randn(1, 1, n, dtype=F64, generator=g), torch.ones(1, dtype=F64), 8,
                torch.zeros(1, 1, n, dtype=F64))

    def vm_bytes():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmSize in /proc/self/status")

    # Compile / load everything first (numba compiles on the first call).
    slimtik_step(SlimTikState(1, 4, 1, 0), *problem(4), backend=backend)
    n = 3000
    state = SlimTikState(1, n, 1, 0)
    args = problem(n)
    before = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in state.state_dict().items()}
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + 100 * 2**20, hard))
    try:
        slimtik_step(state, *args, backend=backend)
        print("no error")
    except MemoryError:
        print("MemoryError")
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    after = state.state_dict()
    same = all(torch.equal(v, after[k]) if isinstance(v, torch.Tensor) else v == after[k] for k, v in before.items())
    print("unchanged" if same else "CHANGED")
    W, info = slimtik_step(state, *args, backend=backend)
    print("later step ok" if state.step_count == 1 and bool(torch.isfinite(W).all()) else "later step FAILED")
    """
)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_allocation_failure_is_memory_error(backend: str, tmp_path) -> None:
    require_backend(backend)
    if not sys.platform.startswith("linux"):
        pytest.skip("RLIMIT_AS and /proc/self/status are Linux")
    # cwd outside the checkout: `python -c` puts the working directory first on sys.path, where
    # the source tree (without its compiled modules) would shadow the installed package.
    proc = subprocess.run([sys.executable, "-c", CHILD, backend], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:3] == ["MemoryError", "unchanged", "later step ok"], proc.stdout + proc.stderr[-2000:]


def test_lapack_workspace_overflow_is_value_error() -> None:
    """n_f = 40000: dsyevd's lwork 1 + 6n + 2n² exceeds 2³¹ − 1; rejected before any allocation or
    memory access (the pointers are never read, so fake non-null ones suffice)."""
    require_backend("cpp")
    from slimfast import _cpu

    fake = 8
    with pytest.raises(ValueError, match="lwork"):
        _cpu.slimtik_step(_cpu.StepBuffers(1, 40000, 1, True, fake, fake, fake, fake, fake, fake, fake, 2 * fake, fake),
                          _cpu.StepOptions(**SolverConfig().kernel_options()))


def test_import_memory_error_is_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = loader.importlib.import_module

    def flaky(name: str):
        calls.append(name)
        if len(calls) == 1:
            raise MemoryError("simulated")
        return real(name)

    monkeypatch.setattr(loader, "_cache", {})
    monkeypatch.setattr(loader.importlib, "import_module", flaky)
    with pytest.raises(MemoryError):
        loader.load_backend("torch")
    assert "torch" not in loader._cache
    assert loader.load_backend("torch") is not None
    assert len(calls) == 2
