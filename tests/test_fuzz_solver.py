"""Property-based bad-input suite (hypothesis) for the functional solver on every CPU backend,
the compiled module's raw bindings and the ``SlimTik`` wrapper.

Bad input: wrong shapes, dtypes, types, devices, strides/layouts, zero-size arrays, NaN/Inf
and magnitudes beyond 1e150 must raise TypeError/ValueError whose message starts with the
argument's name, and leave the solver state exactly as it was. Valid but nasty input (all-zero
or rank-one features, scales 1e-12…1e12 on G/H/c consistently, near-singular memory, arbitrary
bounds) must give finite weights with Λ_k inside its admissible interval and a finite
condition number. Hypothesis runs derandomized with bounded examples, so CI is deterministic.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from slimfast import SlimTikState, SolverConfig, slimtik_step
from slimfast.optim import SlimTik

from .conftest import CPU_BACKENDS, EMULATE, require_backend
from .solver_cases import RandomProblems, assert_state_equal, state_snapshot, stats

F64 = torch.float64
B, NF, NT = 2, 4, 3
EXPECTED = {"G": (B, NF, NF), "H": (B, NT, NF), "c": (B,), "W": (B, NT, NF)}
ARRAYS = sorted(EXPECTED)

FUZZ = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FEW = settings(FUZZ, max_examples=10)


# ----------------------------------------------------------------------------- helpers


def _inputs(seed: int = 1) -> dict[str, Any]:
    G, H, c, m = RandomProblems(B, NF, NT, n_b=10, seed=seed).next_batch()
    return dict(G=G, H=H, c=c, m=m, W=0.1 * torch.ones(B, NT, NF, dtype=F64))


_PREPARED: dict[str, dict[str, Any]] = {}


def _prepared_state(backend: str) -> SlimTikState:
    """A state with one Gram matrix in memory and Λ ≠ Λ_0, so 'unchanged' means something."""
    if backend not in _PREPARED:
        state = SlimTikState(B, NF, NT, memory_depth=2)
        slimtik_step(state, **_inputs(seed=7), backend=backend)
        _PREPARED[backend] = state.state_dict()
    return SlimTikState.from_state_dict(_PREPARED[backend])


def _rejects(backend: str, args: dict[str, Any], exc: type[Exception], argname: str, **kw: Any) -> None:
    """The call raises ``exc`` with a message that starts with ``argname``; state untouched."""
    state = _prepared_state(backend)
    before = state_snapshot(state)
    with pytest.raises(exc) as info:
        slimtik_step(state, **args, backend=backend, **kw)
    assert str(info.value).startswith(f"{argname} "), str(info.value)
    assert_state_equal(before, state_snapshot(state))
    slimtik_step(state, **_inputs(), backend=backend)       # still usable
    assert state.step_count == 2


def _as_numpy(args: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}


arrays = st.sampled_from(ARRAYS)


@pytest.fixture(params=CPU_BACKENDS + (EMULATE,))
def cpu_backend(request: pytest.FixtureRequest) -> str:
    """The conftest backend pattern restricted to what runs on CPU tensors (inputs here are CPU
    tensors), the host emulation of the CUDA block code included."""
    require_backend(request.param)
    return request.param


# ----------------------------------------------------------------------------- wrong shapes


@FUZZ
@given(name=arrays, shape=st.lists(st.integers(0, 5), min_size=0, max_size=4), use_numpy=st.booleans())
def test_wrong_shape_or_zero_size(cpu_backend: str, name: str, shape: list[int], use_numpy: bool) -> None:
    if tuple(shape) == EXPECTED[name]:
        shape = shape + [1]
    args = _inputs()
    args[name] = torch.zeros(shape, dtype=F64)
    _rejects(cpu_backend, _as_numpy(args) if use_numpy else args, ValueError, name)


@FEW
@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=3))
def test_m_wrong_shape(cpu_backend: str, shape: list[int]) -> None:
    if tuple(shape) in ((B,), ()):  # [B] and 0-d (a number) are valid
        shape = [B, 1]
    _rejects(cpu_backend, {**_inputs(), "m": torch.full(shape, 10.0, dtype=F64)}, ValueError, "m")


def test_everything_zero_size(cpu_backend: str) -> None:
    z = torch.zeros(0, dtype=F64)
    args = dict(G=z.reshape(0, NF, NF), H=z.reshape(0, NT, NF), c=z, m=z, W=z.reshape(0, NT, NF))
    _rejects(cpu_backend, args, ValueError, "G")


# ----------------------------------------------------------------------------- dtypes and types

TORCH_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8, torch.bool,
                torch.complex128, torch.complex64]
NUMPY_DTYPES = [np.float32, np.float16, np.int64, np.int32, np.bool_, np.complex128, np.object_, ">f8"]


@FUZZ
@given(name=arrays, dtype=st.sampled_from(TORCH_DTYPES + NUMPY_DTYPES))
def test_wrong_dtype(cpu_backend: str, name: str, dtype: Any) -> None:
    args = _inputs()
    x = args[name]
    args[name] = x.to(dtype) if isinstance(dtype, torch.dtype) else x.numpy().astype(dtype)
    _rejects(cpu_backend, args, TypeError, name)


@FEW
@given(name=arrays, value=st.sampled_from([None, 1.0, "G", [[1.0]], (1.0, 2.0), {"a": 1}, b"x"]))
def test_not_an_array(cpu_backend: str, name: str, value: Any) -> None:
    args = _inputs()
    args[name] = value if not isinstance(value, list) else args[name].tolist()
    _rejects(cpu_backend, args, TypeError, name)


@FEW
@given(m=st.sampled_from([True, np.bool_(False), "10", None, 1j, torch.ones(B, dtype=torch.bool),
                          torch.ones(B, dtype=torch.complex128), np.ones(B, dtype=np.complex64),
                          np.array(["1", "2"])]))
def test_m_wrong_type(cpu_backend: str, m: Any) -> None:
    _rejects(cpu_backend, {**_inputs(), "m": m}, TypeError, "m")


# ----------------------------------------------------------------------------- layouts, strides, devices

LAYOUTS = ["transposed", "strided", "expanded", "fortran", "negative_stride", "broadcast", "meta", "sparse",
           "negated"]


def _bad_layout(x: torch.Tensor, kind: str) -> Any:
    """``x``'s values in a layout the solver must reject (its shape is unchanged)."""
    if kind == "transposed":      # reversed memory order
        return x.permute(*reversed(range(x.ndim))).contiguous().permute(*reversed(range(x.ndim))) if x.ndim > 1 \
            else torch.stack([x, x], 1)[:, 0]
    if kind == "strided":         # every other element of a larger buffer
        return torch.stack([x, torch.zeros_like(x)], -1)[..., 0]
    if kind == "expanded":        # stride 0 along the batch
        return x[:1].expand(x.shape)
    if kind == "fortran":
        return np.asfortranarray(x.numpy()) if x.ndim > 1 else x.numpy()[::-1].copy()[::-1]
    if kind == "negative_stride":
        return x.numpy()[::-1].copy()[::-1]
    if kind == "broadcast":
        return np.broadcast_to(x.numpy()[:1], x.shape)
    if kind == "meta":
        return x.to("meta")
    if kind == "sparse":
        return x.to_sparse()
    return torch._neg_view(-x)    # value x, but its memory holds -x (what a pointer would read)


@FUZZ
@given(name=arrays, kind=st.sampled_from(LAYOUTS))
def test_bad_layout_or_device(cpu_backend: str, name: str, kind: str) -> None:
    args = _inputs()
    bad = _bad_layout(args[name], kind)
    if isinstance(bad, np.ndarray):
        assert not bad.flags.c_contiguous
    elif kind not in ("meta", "sparse", "negated"):
        assert not bad.is_contiguous()
    if kind in ("transposed", "strided", "negated"):
        assert torch.equal(torch.as_tensor(bad), args[name])
    args[name] = bad
    _rejects(cpu_backend, args, ValueError, name)


@FEW
@given(offset=st.integers(1, 7), odd_strides=st.tuples(st.integers(1, 50), st.integers(1, 50)))
def test_valid_offsets_and_size_one_strides_give_the_same_step(cpu_backend: str, offset: int,
                                                                odd_strides: tuple[int, int]) -> None:
    """Views into a larger buffer (storage offset) and size-1 dimensions with arbitrary strides
    are contiguous in torch's sense; the pointer-based kernels must read them correctly."""
    G, H, c, m = RandomProblems(1, NF, 1, n_b=6, seed=offset).next_batch()
    W = torch.linspace(-1, 1, NF, dtype=F64).reshape(1, 1, NF)
    ref_state = SlimTikState(1, NF, 1, memory_depth=1)
    W_ref, info_ref = slimtik_step(ref_state, G, H, c, m, W, backend=cpu_backend)

    def shifted(x: torch.Tensor) -> torch.Tensor:
        buf = torch.full((x.numel() + 2 * offset,), float("nan"), dtype=F64)
        view = buf[offset:offset + x.numel()].view(x.shape)
        view.copy_(x)
        return view

    s0, s1 = odd_strides
    buf = torch.full((NF + s0 + s1 + 1,), float("nan"), dtype=F64)
    W_odd = buf.as_strided((1, 1, NF), (s0 * 1000, s1 * 100, 1))  # size-1 dims: strides never used
    buf[:NF] = W.reshape(-1)
    assert W_odd.is_contiguous() and torch.equal(W_odd, W)
    state = SlimTikState(1, NF, 1, memory_depth=1)
    W_new, info = slimtik_step(state, shifted(G), shifted(H), shifted(c), m, W_odd, backend=cpu_backend)
    assert torch.equal(W_new, W_ref) and torch.equal(info.Lambda, info_ref.Lambda)
    assert torch.equal(state.memory, ref_state.memory)


# ----------------------------------------------------------------------------- NaN, Inf, magnitude

BAD_VALUES = [math.nan, math.inf, -math.inf, 1e151, -1e200, 1.7e308]


@FUZZ
@given(name=arrays, value=st.sampled_from(BAD_VALUES), index=st.integers(0, 10**6), use_numpy=st.booleans())
def test_nonfinite_or_huge_entry(cpu_backend: str, name: str, value: float, index: int, use_numpy: bool) -> None:
    args = _inputs()
    x = args[name].clone()
    x.view(-1)[index % x.numel()] = value
    args[name] = x
    _rejects(cpu_backend, _as_numpy(args) if use_numpy else args, ValueError, name)


@FEW
@given(value=st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -1.0, -1e-300]), as_array=st.booleans(),
       index=st.integers(0, B - 1))
def test_bad_m(cpu_backend: str, value: float, as_array: bool, index: int) -> None:
    m: Any = value
    if as_array:
        m = torch.full((B,), 10.0, dtype=F64)
        m[index] = value
    _rejects(cpu_backend, {**_inputs(), "m": m}, ValueError, "m")


# ----------------------------------------------------------------------------- valid but nasty


def _check_step(state: SlimTikState, W_new: torch.Tensor, info: Any, config: SolverConfig,
                Lambda_prev: torch.Tensor, G_mem: torch.Tensor) -> None:
    """Finite weights; Λ_k in the admissible interval (so ≥ Λ_min); λ_k = Λ_k − Λ_{k−1};
    cond finite, ≥ 1 and consistent with the spectrum of G_mem + Λ_k I."""
    Lmin, Lmax = config.Lambda_bounds
    lmin, lmax = config.lambda_bounds
    assert torch.isfinite(W_new).all()
    assert torch.isfinite(state.memory).all() and torch.isfinite(state.Lambda).all()
    Lam = info.Lambda
    assert (Lam >= Lmin).all() and (Lam <= Lmax).all(), (Lam, config)
    lo = torch.clamp(Lambda_prev + lmin, min=Lmin) if math.isfinite(lmin) else torch.full_like(Lam, Lmin)
    hi = torch.clamp(Lambda_prev + lmax, max=Lmax)
    assert (Lam >= lo).all() and (Lam <= hi).all()
    assert torch.allclose(info.lambda_, Lam - Lambda_prev, rtol=0, atol=1e-15 * float(Lambda_prev.abs().max() + 1))
    assert torch.equal(state.Lambda, Lam)
    cond = info.cond
    assert torch.isfinite(cond).all() and (cond >= 1 - 1e-12).all()
    s_max = torch.linalg.eigvalsh(G_mem)[:, -1].clamp_min(0)
    assert (cond <= (s_max * (1 + 1e-8) + Lam) / Lam * (1 + 1e-9)).all()
    assert torch.isfinite(info.rel_residual).all() and (info.rel_residual >= 0).all()


def _nasty_features(kind: str, gen: torch.Generator, n_b: int) -> torch.Tensor:
    if kind == "zero":
        return torch.zeros(B, NF, n_b, dtype=F64)
    if kind == "rank_one":
        return torch.randn(B, NF, 1, dtype=F64, generator=gen) @ torch.randn(B, 1, n_b, dtype=F64, generator=gen)
    if kind == "duplicate_columns":   # rank ≤ 2, nearly equal features
        base = torch.randn(B, 2, n_b, dtype=F64, generator=gen)
        return torch.cat([base, base + 1e-9 * torch.randn(B, 2, n_b, dtype=F64, generator=gen)], 1)
    return torch.randn(B, NF, n_b, dtype=F64, generator=gen)


@FUZZ
@given(kind=st.sampled_from(["zero", "rank_one", "duplicate_columns", "generic"]),
       z_exp=st.floats(-12, 12), c_exp=st.floats(-12, 12), n_b=st.integers(1, 6),
       depth=st.integers(0, 3), Lambda_min=st.sampled_from([1e-12, 1e-7, 1e-2]),
       mode=st.sampled_from(["sgcv", "reference", "constant"]), zero_targets=st.booleans(),
       seed=st.integers(0, 2**16))
def test_nasty_but_valid_statistics(cpu_backend: str, kind: str, z_exp: float, c_exp: float, n_b: int, depth: int,
                                    Lambda_min: float, mode: str, zero_targets: bool, seed: int) -> None:
    """Features all-zero / rank one / nearly duplicated, scaled by 10^±12 (G by 10^±24), targets
    scaled independently, tiny batches (near-singular memory Gram matrices), every λ mode."""
    gen = torch.Generator().manual_seed(seed)
    config = SolverConfig(mode=mode, lambda_const=-1.0 if mode == "constant" else 0.0,
                          Lambda_bounds=(Lambda_min, 1e3))
    state = SlimTikState(B, NF, NT, memory_depth=depth)
    W = torch.zeros(B, NT, NF, dtype=F64)
    for _ in range(4):
        Z = _nasty_features(kind, gen, n_b) * 10.0 ** z_exp
        C = torch.zeros(B, NT, n_b, dtype=F64) if zero_targets else torch.randn(B, NT, n_b, dtype=F64, generator=gen)
        G, H, c, m = stats(Z, C * 10.0 ** c_exp, 1.0 / n_b)
        Lambda_prev, G_mem = state.Lambda.clone(), state.memory_gram(G)
        W, info = slimtik_step(state, G, H, c, m, W, config=config, backend=cpu_backend)
        _check_step(state, W, info, config, Lambda_prev, G_mem)
        if zero_targets:
            assert (info.rel_residual == 0).all()


@FEW
@given(seed=st.integers(0, 2**16), scales=st.tuples(*[st.floats(-12, 12)] * 4), n_steps=st.integers(1, 3))
def test_arbitrary_finite_statistics_never_return_nan(cpu_backend: str, seed: int, scales: tuple, n_steps: int) -> None:
    """Inconsistent statistics (indefinite or asymmetric G, any H, c, W at independent scales) are
    outside the method's assumptions: the step either succeeds with finite weights and Λ in
    bounds, or raises FloatingPointError, or ValueError naming G (asymmetric G, indefinite G_mem),
    with the state unchanged. Never NaN weights."""
    gen = torch.Generator().manual_seed(seed)
    sG, sH, sc, sW = (10.0 ** e for e in scales)
    state = SlimTikState(B, NF, NT, memory_depth=2)
    W = sW * torch.randn(B, NT, NF, dtype=F64, generator=gen)
    for _ in range(n_steps):
        G = sG * torch.randn(B, NF, NF, dtype=F64, generator=gen)
        H = sH * torch.randn(B, NT, NF, dtype=F64, generator=gen)
        c = sc * torch.rand(B, dtype=F64, generator=gen)
        before = state_snapshot(state)
        try:
            W_new, info = slimtik_step(state, G, H, c, 10.0, W, backend=cpu_backend)
        except FloatingPointError:
            assert_state_equal(before, state_snapshot(state))
            return
        except ValueError as exc:
            assert re.search(r"\bG\b", str(exc)), exc
            assert_state_equal(before, state_snapshot(state))
            return
        assert torch.isfinite(W_new).all()
        assert (info.Lambda >= 1e-7).all() and (info.Lambda <= 1e3).all()
        W = W_new


@FUZZ
@given(Lmin_exp=st.floats(-10, 2), Lspan_exp=st.floats(0, 6), Lambda0_exp=st.one_of(st.none(), st.floats(-10, 5)),
       lmin=st.one_of(st.just(-math.inf), st.floats(-1e4, 1e3)), lspan_exp=st.floats(-6, 5),
       mode=st.sampled_from(["sgcv", "reference", "constant"]), lambda_const=st.floats(-1e3, 1e3))
def test_bounds_exclude_every_lambda_or_are_respected(cpu_backend: str, Lmin_exp: float, Lspan_exp: float,
                                                      Lambda0_exp: float | None, lmin: float, lspan_exp: float,
                                                      mode: str, lambda_const: float) -> None:
    """For random bounds and Λ_{k−1}: Λ_{k−1} > Λ_max raises ValueError ('exceeds Lambda_max');
    else if [max(Λ_min, Λ_{k−1}+λ_min), min(Λ_max, Λ_{k−1}+λ_max)] is empty the call raises
    ValueError ('bounds exclude every λ'); either way nothing changes. Otherwise Λ_k lies in
    that interval, in every mode."""
    Lmin = 10.0 ** Lmin_exp
    Lmax = Lmin * 10.0 ** Lspan_exp
    lmax = (lmin if math.isfinite(lmin) else 0.0) + 10.0 ** lspan_exp
    if lmax <= max(lmin, 0.0):
        lmax = max(lmin, 0.0) + 1.0
    Lambda0 = 0.0 if Lambda0_exp is None else 10.0 ** Lambda0_exp
    config = SolverConfig(mode=mode, lambda_const=lambda_const, Lambda_bounds=(Lmin, Lmax), lambda_bounds=(lmin, lmax))
    lo = max(Lmin, Lambda0 + lmin) if math.isfinite(lmin) else Lmin
    hi = min(Lmax, Lambda0 + lmax)
    state = SlimTikState(B, NF, NT, memory_depth=1, Lambda0=Lambda0)
    before = state_snapshot(state)
    if Lambda0 > Lmax:   # only a fresh or loaded state can hold Λ above Λ_max: rejected, not stepped
        with pytest.raises(ValueError, match="exceeds Lambda_max"):
            slimtik_step(state, **_inputs(), config=config, backend=cpu_backend)
        assert_state_equal(before, state_snapshot(state))
    elif lo > hi:
        with pytest.raises(ValueError, match="bounds exclude every"):
            slimtik_step(state, **_inputs(), config=config, backend=cpu_backend)
        assert_state_equal(before, state_snapshot(state))
    else:
        args = _inputs()
        G_mem = state.memory_gram(args["G"])
        W, info = slimtik_step(state, **args, config=config, backend=cpu_backend)
        _check_step(state, W, info, config, torch.full((B,), Lambda0, dtype=F64), G_mem)


# ----------------------------------------------------------------------------- the torch wrapper

FEATURE_FAULTS = ["width", "rank", "empty", "bool", "complex", "numpy", "list", "meta", "nan", "inf", "huge"]
TARGET_FAULTS = ["shape", "bool", "numpy", "meta", "nan", "inf", "huge"]


@settings(FUZZ, max_examples=25)
@given(which=st.sampled_from(["features", "target"]), data=st.data(), dtype=st.sampled_from([torch.float32, F64]),
       index=st.integers(0, 10**6))
def test_slimtik_bad_batches_name_the_argument_and_keep_state(which: str, data: st.DataObject, dtype: torch.dtype,
                                                              index: int) -> None:
    """SlimTik.step with a bad features/target tensor: TypeError/ValueError naming it (default
    on_nonfinite="raise"), head weights and solver state bit-for-bit unchanged."""
    torch.manual_seed(0)
    head = nn.Linear(4, 2).to(dtype)
    slim = SlimTik(head, memory_depth=2)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 4, generator=g).to(dtype), torch.randn(8, 2, generator=g).to(dtype)
    slim.step(x, y)
    before_sd = {k: v.clone() for k, v in head.state_dict().items()}
    before = slim.state_dict()["slimtik"]
    fault = data.draw(st.sampled_from(FEATURE_FAULTS if which == "features" else TARGET_FAULTS))
    t = x if which == "features" else y
    if fault in ("width", "shape"):
        t = torch.randn(8, 5 if which == "features" else 3, dtype=dtype)
    elif fault == "rank":
        t = torch.tensor(1.0, dtype=dtype)
    elif fault == "empty":
        t = t[:0]
    elif fault == "bool":
        t = t > 0
    elif fault == "complex":
        t = t.to(torch.complex64)
    elif fault == "numpy":
        t = t.numpy()
    elif fault == "list":
        t = t.tolist()
    elif fault == "meta":
        t = t.to("meta")
    else:
        t = t.clone().double() if fault == "huge" else t.clone()
        t.view(-1)[index % t.numel()] = {"nan": math.nan, "inf": -math.inf, "huge": 1e80}[fault]
    exc = TypeError if fault in ("numpy", "list") else ValueError
    with pytest.raises(exc) as info:
        slim.step(t, y) if which == "features" else slim.step(x, t)
    assert str(info.value).startswith(which), str(info.value)
    for k, v in head.state_dict().items():
        assert torch.equal(v, before_sd[k])
    after = slim.state_dict()["slimtik"]
    assert_state_equal(after["solver"], before["solver"])
    assert after["n_steps"] == 1 and after["histories"] == before["histories"]
