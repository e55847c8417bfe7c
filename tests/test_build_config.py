"""CMake configuration of the CUDA option (issue 9, build): AUTO falls back to the CPU module when
nvcc is present but unusable, ON fails, and a persistent build dir re-checks at every configure.

Configure only (no build): a few seconds each. Skipped without cmake / ninja / pybind11's CMake files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _configure(build: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    pybind11 = pytest.importorskip("pybind11")
    cmake = shutil.which("cmake")
    if cmake is None or not (ROOT / "CMakeLists.txt").exists():
        pytest.skip("cmake or the source tree is not available")
    cmd = [cmake, "-S", str(ROOT), "-B", str(build), f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
           f"-DPython_EXECUTABLE={sys.executable}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def test_auto_without_a_usable_nvcc_builds_cpu_only_and_rechecks(tmp_path: Path) -> None:
    build = tmp_path / "build"
    broken = _configure(build, "-DSLIMFAST_CUDA=AUTO", env={"CUDACXX": str(tmp_path / "no-nvcc")})
    assert broken.returncode == 0, broken.stderr
    assert "building the CPU module only" in broken.stdout
    if shutil.which("nvcc") is None:
        return
    again = _configure(build, "-DSLIMFAST_CUDA=AUTO")  # same build dir, nvcc now reachable
    assert again.returncode == 0, again.stderr
    assert "building the CUDA module" in again.stdout


def test_nvcc_that_cannot_compile_for_the_architectures(tmp_path: Path) -> None:
    if shutil.which("nvcc") is None:
        pytest.skip("no nvcc")
    auto = _configure(tmp_path / "auto", "-DSLIMFAST_CUDA=AUTO", "-DCMAKE_CUDA_ARCHITECTURES=10")
    assert auto.returncode == 0, auto.stderr
    assert "building the CPU module only" in auto.stdout
    on = _configure(tmp_path / "on", "-DSLIMFAST_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=10")
    assert on.returncode != 0 and "SLIMFAST_CUDA=ON but the CUDA module cannot be built" in on.stderr
