"""What only the numba backend does: an empty batch without a thread pool, nothing compiled at
import. Its results against the torch twin are tests/test_backend_twin.py's (every backend)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimfast._torch_impl import INFO_FIELDS

from .cuda_cases import CONFIGS, make_problem

numba_backend = pytest.importorskip("slimfast.backends.numba_backend")


def test_empty_batch():
    args = make_problem(1, 3, 2, True, "wellposed", seed=1)
    args = tuple(a[:0] if isinstance(a, torch.Tensor) else a for a in args)
    W_new, info = numba_backend.slimtik_step(*args, CONFIGS["sgcv"])
    assert W_new.shape == (0, 2, 3) and info.shape == (0, len(INFO_FIELDS))


def test_import_compiles_nothing():
    code = (
        "import slimfast.backends.numba_backend as nb\n"
        "assert not nb._slimtik_step_serial.signatures and not nb._slimtik_step_parallel.signatures\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
