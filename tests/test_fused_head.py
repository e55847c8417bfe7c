"""The fused small-head step (slimfast.fused_head, csrc/cpu/fused_head_cpu.h) against the general path.

Bit for bit: the general ``SlimTik.step`` path forms its statistics with torch GEMMs, whose blocked
sums round differently from the kernel's sequential ones. The reference here is therefore the
general path with ``slimfast.optim.head_statistics`` replaced by the fused twin's statistics
(``_fused_linear_statistics``: every entry of G and H a ``cumsum`` over the rows in order, c over
C row-major, then the same (G + Gᵀ)·β²/2 scaling as ``heads._assemble``), and with the fused path
switched off (``fused_head.ENABLED = False``). Everything after the statistics — memory sum,
solver call, checks, commit, cast and write-back, the record — is then the general path's own
code, and the fused step must reproduce it exactly. Against the unmodified general path the
fused step agrees to rounding (1e-12 in float64, 1e-6 relative for float32 heads).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import slimfast.fused_head as fh
import slimfast.optim as optim
from slimfast import SlimTik, SolverConfig
from slimfast.ownership import release_head
from tests.conftest import require_backend
from tests.dense_reference import dense_statistics
from tests.solver_cases import dense_slimtik_solution, rel_err

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


@pytest.fixture(autouse=True)
def _cpp_with_fused_kernel():
    require_backend("cpp")
    if fh._cpu_module() is None:
        pytest.skip("compiled module without the fused kernel")


def _twin_statistics(head, features, target, reduction="mean", *, check=True, kernel="auto"):
    assert isinstance(head, nn.Linear)
    return fh._fused_linear_statistics(features, target, head.bias is not None, reduction)


def _batches(n_in: int, n_t: int, n: int, seed: int = 0, rows: int = 32, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n_t, n_in, generator=g, dtype=F64)
    out = []
    for _ in range(n):
        x = torch.randn(rows, n_in, generator=g, dtype=F64)
        out.append((x.to(dtype), (x @ W.T + 0.1 * torch.randn(rows, n_t, generator=g, dtype=F64)).to(dtype)))
    return out


def _pair(n_in: int, n_t: int, bias: bool, dtype=F64, **kw) -> tuple[SlimTik, SlimTik]:
    heads = []
    for _ in range(2):
        torch.manual_seed(3)
        heads.append(nn.Linear(n_in, n_t, bias=bias).to(dtype))
    return SlimTik(heads[0], backend="cpp", **kw), SlimTik(heads[1], backend="cpp", **kw)


def _general(monkeypatch, slim: SlimTik, x, y, same_order: bool = True):
    """One step through the general path (statistics in the fused order when ``same_order``)."""
    with monkeypatch.context() as mp:
        mp.setattr(fh, "ENABLED", False)
        if same_order:
            mp.setattr(optim, "head_statistics", _twin_statistics)
        return slim.step(x, y)


def _no_general_path(monkeypatch) -> None:
    """Make the general path fail loudly: a test of the fused path must not pass through it."""
    def boom(*args, **kwargs):
        raise AssertionError("general path taken")
    monkeypatch.setattr(optim, "head_statistics", boom)


def _assert_same_state(a: SlimTik, b: SlimTik) -> None:
    sa, sb = a.state_dict()["slimtik"], b.state_dict()["slimtik"]
    for key in ("memory", "Lambda"):
        assert torch.equal(sa["solver"][key], sb["solver"][key]), key
    for key in ("n_stored", "head", "step_count"):
        assert sa["solver"][key] == sb["solver"][key], key
    assert sa["histories"] == sb["histories"]
    assert (sa["n_steps"], sa["n_skipped"]) == (sb["n_steps"], sb["n_skipped"])


@pytest.mark.parametrize("memory_depth", [0, 1, 3])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_equals_general_path_bit_for_bit_in_float64(monkeypatch, memory_depth, reduction, bias) -> None:
    fused, general = _pair(8, 3, bias, memory_depth=memory_depth, reduction=reduction)
    for x, y in _batches(8, 3, 7):
        with monkeypatch.context() as mp:
            _no_general_path(mp)
            rec_f = fused.step(x, y)
        rec_g = _general(monkeypatch, general, x, y)
        assert rec_f == rec_g
        assert torch.equal(fused.head.weight, general.head.weight)
        if bias:
            assert torch.equal(fused.head.bias, general.head.bias)
    _assert_same_state(fused, general)
    assert fh._LAYOUTS[fused].plan is not None


@pytest.mark.parametrize("memory_depth", [0, 3])
@pytest.mark.parametrize("data_dtype", [torch.float32, torch.bfloat16])
def test_fused_float32_head_within_1e6_of_general_path(monkeypatch, memory_depth, data_dtype) -> None:
    fused, general = _pair(16, 5, True, dtype=torch.float32, memory_depth=memory_depth)
    same_order = _pair(16, 5, True, dtype=torch.float32, memory_depth=memory_depth)[1]
    for x, y in _batches(16, 5, 6, dtype=data_dtype):
        rec_f = fused.step(x, y)
        _general(monkeypatch, general, x, y, same_order=False)
        assert _general(monkeypatch, same_order, x, y) == rec_f
        assert torch.equal(fused.head.weight, same_order.head.weight)
        for p_f, p_g in zip(fused.head.parameters(), general.head.parameters()):
            assert p_f.dtype == torch.float32
            assert rel_err(p_f.detach(), p_g.detach()) <= 1e-6
    assert fused.Lambda_ == pytest.approx(general.Lambda_, rel=1e-6)


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_compiled_statistics_equal_twin_and_dense_design(dtype, reduction) -> None:
    head = nn.Linear(7, 4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 11, 7, generator=g).to(dtype)
    y = torch.randn(3, 11, 4, generator=g).to(dtype)
    G, H, c, m = fh.fused_linear_statistics(head, x, y, reduction)
    Gt, Ht, ct, mt = fh._fused_linear_statistics(x, y, True, reduction)
    assert torch.equal(G, Gt) and torch.equal(H, Ht) and torch.equal(c, ct) and m == mt == 132
    Gd, Hd, cd, md = dense_statistics(head, x, y, reduction)
    assert md == m
    assert rel_err(G, Gd) <= 1e-12 and rel_err(H, Hd) <= 1e-12 and rel_err(c, cd) <= 1e-12


def test_strided_inputs_are_read_in_place(monkeypatch) -> None:
    """A transposed (non-contiguous) feature matrix and an expanded (stride-0) target."""
    fused, general = _pair(6, 2, True, memory_depth=2)
    g = torch.Generator().manual_seed(5)
    for _ in range(4):
        x = torch.randn(6, 20, generator=g, dtype=F64).T
        y = torch.randn(1, 2, generator=g, dtype=F64).expand(20, 2)
        assert not x.is_contiguous()
        with monkeypatch.context() as mp:
            _no_general_path(mp)
            rec = fused.step(x, y)
        assert rec == _general(monkeypatch, general, x, y)
    assert torch.equal(fused.head.weight, general.head.weight)


@pytest.mark.parametrize("memory_depth", [0, 3])
def test_fused_steps_equal_twin_and_dense_least_squares(memory_depth) -> None:
    """Each fused step against its float64 torch twin (1e-9) and against the stacked least
    squares of the raw batches (method.md §2.3; 1e-10)."""
    torch.manual_seed(0)
    head = nn.Linear(5, 2).double()
    config = SolverConfig()
    slim = SlimTik(head, memory_depth=memory_depth, backend="cpp")
    Z_hist: list[torch.Tensor] = []
    for x, y in _batches(5, 2, 6, seed=2):
        W_prev = torch.cat([head.weight.detach(), head.bias.detach()[:, None]], 1).clone()
        st = slim._ensure_state()
        memory, n_stored, Lam_prev = st.memory.clone(), st.n_stored, st.Lambda.clone()
        W_twin, info_twin, _ = fh._fused_linear_step(x, y, head.weight, head.bias, memory, n_stored, Lam_prev, config)
        rec = slim.step(x, y)
        W_new = torch.cat([head.weight.detach(), head.bias.detach()[:, None]], 1)
        assert rel_err(W_new, W_twin) <= 1e-9
        assert rec.Lambda == pytest.approx(float(info_twin[1]), rel=1e-9)
        Z = torch.cat([x, torch.ones(x.shape[0], 1, dtype=F64)], 1).T
        mem = Z_hist[-memory_depth:] if memory_depth else []
        beta2 = 1.0 / y.numel()
        W_dense = dense_slimtik_solution(Z, y.T, mem, W_prev, float(Lam_prev), rec.Lambda, beta2)
        assert rel_err(W_new, W_dense) <= 1e-10
        Z_hist.append(Z)


@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
@pytest.mark.parametrize("bad", ["features_nan", "target_inf", "features_huge"])
def test_nonfinite_batch_gives_todays_error_or_skip_and_leaves_state(monkeypatch, on_nonfinite, bad) -> None:
    fused, general = _pair(4, 2, True, memory_depth=2, on_nonfinite=on_nonfinite)
    batches = _batches(4, 2, 3)
    for x, y in batches[:2]:
        fused.step(x, y)
        _general(monkeypatch, general, x, y)
    x, y = (t.clone() for t in batches[2])
    if bad == "features_nan":
        x[3, 1] = math.nan
    elif bad == "target_inf":
        y[0, 0] = math.inf
    else:
        x = x * 1e200   # finite data whose float64 statistics overflow: "too large" in both modes
    before = {k: v.clone() for k, v in fused.head.state_dict().items()}
    state_before = fused.state_dict()["slimtik"]["solver"]
    outcomes = []
    for slim, step in ((fused, lambda: fused.step(x, y)), (general, lambda: _general(monkeypatch, general, x, y))):
        try:
            rec = step()
            outcomes.append(("ok", rec.skipped, rec.reason))
        except ValueError as exc:
            outcomes.append(("error", str(exc)))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == ("ok" if on_nonfinite == "skip" and bad != "features_huge" else "error")
    assert "features" in str(outcomes[0]) or "target" in str(outcomes[0])
    for k, v in fused.head.state_dict().items():
        assert torch.equal(v, before[k])
    state_after = fused.state_dict()["slimtik"]["solver"]
    assert torch.equal(state_after["memory"], state_before["memory"])
    assert torch.equal(state_after["Lambda"], state_before["Lambda"])
    assert state_after["step_count"] == state_before["step_count"] == 2
    _assert_same_state(fused, general)
    x, y = batches[0]   # and the next good batch steps on the fused path again
    with monkeypatch.context() as mp:
        _no_general_path(mp)
        assert not fused.step(x, y).skipped


def test_float32_overflow_raises_like_general_path(monkeypatch) -> None:
    # λ = 0 at Λ = 1e-7: the least-squares weights scale with the targets, beyond float32's range.
    fused, general = _pair(3, 1, True, dtype=torch.float32, memory_depth=1, Lambda0=1e-7, lambda_mode="constant")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=g, dtype=F64) * 1e-3
    y = torch.rand(16, 1, generator=g, dtype=F64) * 1e37
    errors = []
    for step in (lambda: fused.step(x, y), lambda: _general(monkeypatch, general, x, y)):
        with pytest.raises(FloatingPointError) as exc:
            step()
        errors.append(str(exc.value))
    assert errors[0] == errors[1] and "float32" in errors[0]
    assert fused.n_steps_ == 0 and fused.solver_state.n_stored == 0


def test_changed_layout_revalidates(monkeypatch) -> None:
    fused, general = _pair(8, 2, True, memory_depth=2)
    batches = _batches(8, 2, 2) + _batches(8, 2, 1, seed=4, rows=13) + _batches(8, 2, 1, seed=5, dtype=torch.float32)
    keys = []
    for x, y in batches:
        assert fused.step(x, y) == _general(monkeypatch, general, x, y)
        keys.append(fh._LAYOUTS[fused].key)
    assert keys[0] == keys[1] and len({keys[1], keys[2], keys[3]}) == 3
    assert torch.equal(fused.head.weight, general.head.weight)
    x, y = batches[0]
    for bad_x, bad_y, match in ((x[:, :5], y, "features must have shape"), (x, y[:, :1], "target must have")):
        with pytest.raises(ValueError, match=match):
            fused.step(bad_x, bad_y)
    # An N-D batch [4, 8, n_in] is read through a view; a 3-D permuted one has none: general path.
    x3, y3 = x.reshape(4, 8, 8), y.reshape(4, 8, 2)
    assert fused.step(x3, y3) == _general(monkeypatch, general, x3, y3)
    assert fh._LAYOUTS[fused].plan is not None
    xp, yp = x3.transpose(0, 1), y3.transpose(0, 1)
    assert fused.step(xp, yp) == _general(monkeypatch, general, xp, yp, same_order=False)
    assert fh._LAYOUTS[fused].plan is None
    _assert_same_state(fused, general)


def test_state_dict_round_trip_continues_on_the_fused_path(monkeypatch) -> None:
    fused, general = _pair(8, 1, True, memory_depth=3)
    batches = _batches(8, 1, 8)
    for x, y in batches[:4]:
        fused.step(x, y)
        _general(monkeypatch, general, x, y)
    _assert_same_state(fused, general)
    saved = fused.state_dict()
    release_head(fused.head)
    resumed = SlimTik(fused.head, memory_depth=3, backend="cpp")
    resumed.load_state_dict(saved)
    for x, y in batches[4:]:
        with monkeypatch.context() as mp:
            _no_general_path(mp)
            resumed.step(x, y)
        _general(monkeypatch, general, x, y)
    _assert_same_state(resumed, general)
    assert torch.equal(resumed.head.weight, general.head.weight)


@pytest.mark.parametrize("case", ["torch_backend", "bf16_head", "disabled"])
def test_other_cases_take_the_general_path(monkeypatch, case) -> None:
    calls = []
    real = optim.head_statistics

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(optim, "head_statistics", counting)
    head = nn.Linear(4, 1).to(torch.bfloat16 if case == "bf16_head" else F64)
    slim = SlimTik(head, backend="torch" if case == "torch_backend" else "cpp")
    if case == "disabled":
        monkeypatch.setattr(fh, "ENABLED", False)
    x, y = _batches(4, 1, 1)[0]
    slim.step(x, y)
    assert calls == [1]


def test_autograd_sees_the_in_place_update() -> None:
    head = nn.Linear(3, 1).double()
    slim = SlimTik(head, backend="cpp")
    x, y = _batches(3, 1, 1)[0]
    loss = head(x.requires_grad_()).square().sum()   # saves head.weight for backward
    slim.step(x.detach(), y)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_compiled_plan_rejects_bad_arguments() -> None:
    cpu = fh._cpu_module()
    opts = cpu.StepOptions(**SolverConfig().kernel_options())
    args = dict(rows=4, n_in=3, n_t=1, bias=True, mean=True, memory_depth=1, x_dtype=0, x_row_stride=3,
                x_col_stride=1, y_dtype=0, y_row_stride=1, y_col_stride=1, w_dtype=0, w_row_stride=3, w_col_stride=1,
                b_stride=1, max_abs=1e150, indefinite_rtol=1e-8, options=opts)
    for name, value, match in (("rows", 0, "rows"), ("x_dtype", 7, "x_dtype"), ("w_dtype", 2, "w_dtype"),
                               ("memory_depth", -1, "memory_depth")):
        with pytest.raises(ValueError, match=match):
            cpu.FusedLinearStep(**{**args, name: value})
    plan = cpu.FusedLinearStep(**args)
    x, y = torch.zeros(4, 3, dtype=F64), torch.zeros(4, 1, dtype=F64)
    w, b, mem, lam = torch.zeros(1, 3, dtype=F64), torch.zeros(1, dtype=F64), torch.zeros(1, 4, 4, dtype=F64), \
        torch.full((1,), 0.05, dtype=F64)
    ptrs = dict(x_ptr=x.data_ptr(), y_ptr=y.data_ptr(), w_ptr=w.data_ptr(), b_ptr=b.data_ptr(),
                memory_ptr=mem.data_ptr(), n_stored=0, slot=0, Lambda_ptr=lam.data_ptr(), w_out_ptr=w.data_ptr(),
                b_out_ptr=b.data_ptr())
    for name, value, match in (("x_ptr", 0, "x_ptr"), ("b_ptr", 0, "b_ptr"), ("n_stored", 2, "n_stored"),
                               ("slot", 1, "slot"), ("Lambda_ptr", lam.data_ptr() + 1, "Lambda_ptr")):
        with pytest.raises(ValueError, match=match):
            plan.step(**{**ptrs, name: value})
    assert plan.step(**ptrs)[0] == 0


@pytest.mark.parametrize("contiguous", [True, False])
def test_new_weights_written_in_place_or_copied_equal_the_general_path(monkeypatch, contiguous) -> None:
    """A contiguous head is written by the kernel through its own pointers; a strided one (here a
    transposed weight) through the output buffers and copy_. Both equal the general path."""
    fused, general = _pair(6, 3, True, memory_depth=2)
    if not contiguous:
        for slim in (fused, general):
            with torch.no_grad():
                slim.head.weight = nn.Parameter(slim.head.weight.detach().T.contiguous().T)
    for x, y in _batches(6, 3, 4):
        with monkeypatch.context() as mp:
            _no_general_path(mp)
            fused.step(x, y)
        _general(monkeypatch, general, x, y)
    assert fh._LAYOUTS[fused].direct is contiguous
    assert fused.head.weight.is_contiguous() is contiguous
    assert torch.equal(fused.head.weight, general.head.weight) and torch.equal(fused.head.bias, general.head.bias)
    _assert_same_state(fused, general)
