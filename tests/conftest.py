"""Backend parametrisation: one test body, every backend; unavailable ones skip per case.

Besides the library's backends the tests step through ``emulate``: the CUDA kernels' block code
run serially on the host (``tests/block_emulation.py``, through ``slimfast._cpu``'s emulation
bindings), registered with the loader for this test session only. So every backend-parametrised
test runs the GPU's arithmetic on every CPU install, wherever it runs the CPU backends.
"""

from __future__ import annotations

import pytest
import torch

from slimfast.backends import load_backend, loader

#: The library's CPU backends (what a child process or a user can name).
CPU_BACKENDS = ("cpp", "numba", "torch")
#: The CUDA block code on the host: needs the compiled CPU module, runs on CPU tensors.
EMULATE = "emulate"
ALL_BACKENDS = ("cuda",) + CPU_BACKENDS
#: Every composition a step can take here: the ``backend`` fixture's parameters.
STEP_BACKENDS = ALL_BACKENDS + (EMULATE,)


def _register_emulation() -> None:
    """Make ``backend="emulate"`` resolve to tests/block_emulation.py on CPU tensors (test session only)."""
    loader._MODULES[EMULATE] = "tests.block_emulation"
    loader._DEVICE_BACKENDS["cpu"].add(EMULATE)


_register_emulation()


def require_backend(name: str) -> torch.device:
    """Skip this test case unless ``name`` can run here; return the device it runs on."""
    if name == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
        if load_backend("cuda") is None:
            pytest.skip("cuda backend not built")
        return torch.device("cuda")
    if load_backend(name) is None:
        reason = " (the compiled CPU module is not built)" if name == EMULATE else ""
        pytest.skip(f"{name} backend not available{reason}")
    return torch.device("cpu")


@pytest.fixture(params=STEP_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    require_backend(request.param)
    return request.param


@pytest.fixture
def device(backend: str) -> torch.device:
    return torch.device("cuda") if backend == "cuda" else torch.device("cpu")


@pytest.fixture
def single_thread():
    """One intra-op thread for the test: tiny networks run fastest so, immune to a busy machine's
    stalls (modules opt in with ``pytestmark = pytest.mark.usefixtures("single_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_sessionstart(session: pytest.Session) -> None:
    """In CI the compiled CPU backend must be importable, or its tests would all skip silently."""
    import os

    if os.environ.get("CI") and load_backend("cpp") is None:
        raise pytest.UsageError("CI: slimfast._cpu is not importable (tests would import an unbuilt source tree)")
