"""Fuzzing of the raw compiled step and Jacobi bindings of slimfast._cpu: invalid sizes, null
pointers and options raise ValueError naming one of them and write nothing (split from
test_fuzz_solver.py, same settings)."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import torch
from hypothesis import strategies as st
from hypothesis import given

from slimfast._torch_impl import N_INFO
from slimfast.backends import load_backend

from .solver_cases import RandomProblems
from .test_fuzz_solver import B, F64, FEW, FUZZ, NF, NT

# ----------------------------------------------------------------------------- raw compiled bindings


def _cpu_module() -> Any:
    if load_backend("cpp") is None:
        pytest.skip("cpp backend not available")
    from slimfast import _cpu

    return _cpu


def _binding_args() -> tuple[dict[str, Any], list[torch.Tensor]]:
    G, H, c, m = RandomProblems(B, NF, NT, n_b=10, seed=3).next_batch()
    keep = [G, G.clone(), H, c, torch.full((B,), m, dtype=F64), torch.zeros(B, NT, NF, dtype=F64),
            torch.full((B,), 0.05, dtype=F64), torch.full((B, NT, NF), 123.0, dtype=F64),
            torch.full((B, N_INFO), 123.0, dtype=F64)]
    names = ["G_mem_ptr", "G_ptr", "H_ptr", "c_ptr", "m_ptr", "W_ptr", "Lambda_prev_ptr", "W_out_ptr", "info_ptr"]
    args: dict[str, Any] = dict(B=B, n_f=NF, n_t=NT, memory_empty=True, mode=0, lambda_const=0.0, Lambda_min=1e-7,
                                Lambda_max=1e3, lambda_min=-math.inf, lambda_max=1e3, n_grid=33, root_tol=1e-13,
                                max_root_iter=100, eigensolver=0)
    args.update({n: t.data_ptr() for n, t in zip(names, keep)})
    return args, keep


OPTION_NAMES = ("mode", "lambda_const", "Lambda_min", "Lambda_max", "lambda_min", "lambda_max", "n_grid", "root_tol",
                "max_root_iter")


def _call_step_binding(cpu: Any, args: dict[str, Any]) -> None:
    """cpu.slimtik_step with the option arguments packed into cpu.StepOptions and the sizes and
    pointers into cpu.StepBuffers (each validated at construction)."""
    options = cpu.StepOptions(**{k: args[k] for k in OPTION_NAMES})
    buffers = cpu.StepBuffers(**{k: v for k, v in args.items() if k not in OPTION_NAMES + ("eigensolver",)})
    cpu.slimtik_step(buffers, options, args["eigensolver"])


BINDING_BAD = (
    [("B", v) for v in (0, -1, -(2**40), 2**30 + 1, 2**40)]
    + [("n_f", v) for v in (0, -3, 46341, 2**31)]
    + [("n_t", v) for v in (0, -1, 2**30 + 1)]
    + [(p, 0) for p in ("G_mem_ptr", "G_ptr", "H_ptr", "c_ptr", "m_ptr", "W_ptr", "Lambda_prev_ptr", "W_out_ptr",
                        "info_ptr")]
    + [("mode", v) for v in (-1, 3, 99)]
    + [("lambda_const", v) for v in (math.nan, math.inf)]
    + [("Lambda_min", v) for v in (0.0, -1.0, math.nan, 2e3)]
    + [("Lambda_max", v) for v in (math.inf, math.nan, 1e-9)]
    + [("lambda_min", v) for v in (math.nan, 2e3)]
    + [("lambda_max", v) for v in (0.0, -1.0, math.nan)]
    + [("n_grid", v) for v in (1, 0, -5)]
    + [("root_tol", v) for v in (0.0, 1.0, -1.0, math.nan)]
    + [("max_root_iter", v) for v in (0, -1)]
    + [("eigensolver", v) for v in (-1, 4)]
)


@FUZZ
@given(bad=st.lists(st.sampled_from(BINDING_BAD), min_size=1, max_size=3, unique_by=lambda t: t[0]))
def test_cpu_binding_rejects_bad_sizes_and_null_pointers(bad: list[tuple[str, Any]]) -> None:
    """slimfast._cpu.slimtik_step with 1–3 invalid arguments raises ValueError naming one of
    them and writes nothing to its output buffers (no crash, no out-of-bounds write)."""
    cpu = _cpu_module()
    args, keep = _binding_args()
    args.update(dict(bad))
    with pytest.raises(ValueError) as info:
        _call_step_binding(cpu, args)
    msg = str(info.value)
    assert any(re.search(rf"\b{name}\b", msg) for name, _ in bad), (bad, msg)
    assert (keep[7] == 123.0).all() and (keep[8] == 123.0).all()


@FEW
@given(name=st.sampled_from(["B", "n", "A_ptr", "s_out_ptr", "U_out_ptr", "tol", "max_sweeps"]), data=st.data())
def test_cpu_jacobi_binding_rejects_bad_arguments(name: str, data: st.DataObject) -> None:
    cpu = _cpu_module()
    A = torch.eye(3, dtype=F64).repeat(2, 1, 1)
    s, U = torch.full((2, 3), 7.0, dtype=F64), torch.full((2, 3, 3), 7.0, dtype=F64)
    args: dict[str, Any] = dict(B=2, n=3, A_ptr=A.data_ptr(), U0_ptr=0, s_out_ptr=s.data_ptr(),
                                U_out_ptr=U.data_ptr(), tol=1e-14, max_sweeps=60)
    choices = {"B": [0, -1, 2**30 + 1], "n": [0, -2, 46341], "A_ptr": [0], "s_out_ptr": [0], "U_out_ptr": [0],
               "tol": [math.nan, -1.0, math.inf], "max_sweeps": [0, -4]}
    args[name] = data.draw(st.sampled_from(choices[name]))
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        cpu.jacobi_eigh(**args)
    assert (s == 7.0).all() and (U == 7.0).all()


def test_cpu_binding_wrong_python_types_raise_typeerror() -> None:
    cpu = _cpu_module()
    args, _ = _binding_args()
    for name, value in (("G_ptr", None), ("W_ptr", "0x1"), ("H_ptr", -8), ("B", 2.5), ("mode", "sgcv")):
        with pytest.raises(TypeError):
            _call_step_binding(cpu, {**args, name: value})
