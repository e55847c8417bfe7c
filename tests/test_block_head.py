"""The phase-block fast path of ``SlimTik.step`` (slimfast.block_head) against the general path.

The reference is the same SlimTik run with the fast path switched off (``block_head.ENABLED =
False``): the general path validates the statistics, sums the whole memory, permutes G_mem and G
into block order and takes the same compiled block step. The fast path sums and gathers only the
entries that step reads, in the same order, so weights, Λ and memory agree to rounding (1e-12;
float32 heads 1e-6). Faults must leave the fast path before anything changes, so that the general
path raises or skips exactly as before.
"""

from __future__ import annotations

import copy
import math
import pickle
import re

import pytest
import torch
from torch import nn

import slimfast.block_head as bh
import slimfast.optim as optim
from slimfast import SlimTik
from slimfast.backends import load_backend
from slimfast.heads import statistics_and_magnitude
from slimfast.ownership import release_head
from slimfast.phase_blocks import phase_blocks
from tests.conftest import require_backend

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64

HEADS = {
    "s2k4p1": lambda: nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1),
    "s2k3-nobias": lambda: nn.ConvTranspose2d(2, 1, 3, stride=2, bias=False),
    "s(1,3)k(2,5)": lambda: nn.ConvTranspose2d(2, 3, (2, 5), stride=(1, 3), padding=(0, 1)),
    "s3k4d2-outpad": lambda: nn.ConvTranspose2d(2, 1, 4, stride=3, dilation=2, output_padding=1),
}


@pytest.fixture(autouse=True)
def _cpp():
    require_backend("cpp")


def _batches(head: nn.ConvTranspose2d, n: int, dtype: torch.dtype = F64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.zeros(4, head.in_channels, 5, 4, dtype=F64)
    with torch.no_grad():
        out = copy.deepcopy(head).double()(x0).shape
    return [(torch.randn(x0.shape, generator=g).to(dtype), torch.randn(out, generator=g).to(dtype)) for _ in range(n)]


def _run(head: nn.Module, batches, enabled: bool, monkeypatch, **kw):
    monkeypatch.setattr(bh, "ENABLED", enabled)
    slim = SlimTik(head, **kw)
    out = []
    for x, y in batches:
        rec = slim.step(x, y)
        out.append((torch.cat([p.detach().reshape(-1).double().clone() for p in head.parameters()]), rec.Lambda,
                    rec.lambda_, rec.sgcv))
    memory = slim.solver_state.memory.clone()
    release_head(head)
    return out, memory


def _counting(monkeypatch):
    """Counts the general path's solver calls (the fast path makes none)."""
    calls = []
    real = optim.slimtik_step

    def spy(*args, **kwargs):
        calls.append(kwargs.get("blocks"))
        return real(*args, **kwargs)

    monkeypatch.setattr(optim, "slimtik_step", spy)
    return calls


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("memory_depth", [0, 3])
def test_fast_path_equals_general_path(monkeypatch, name, memory_depth) -> None:
    """Over memory filling and wrapping: weights, Λ, λ, sGCV and the stored memory agree to 1e-12,
    and the fast path made no general solver call."""
    torch.manual_seed(1)
    head = HEADS[name]().double()
    batches = _batches(head, 6)
    calls = _counting(monkeypatch)
    fast, mem_fast = _run(copy.deepcopy(head), batches, True, monkeypatch, memory_depth=memory_depth)
    assert calls == []
    general, mem_general = _run(copy.deepcopy(head), batches, False, monkeypatch, memory_depth=memory_depth)
    assert len(calls) == len(batches) and all(c is not None for c in calls)
    for k, ((w_f, L_f, l_f, s_f), (w_g, L_g, l_g, s_g)) in enumerate(zip(fast, general)):
        assert float((w_f - w_g).norm() / w_g.norm()) <= 1e-12, k
        assert abs(L_f - L_g) <= 1e-12 * abs(L_g), k
        assert abs(l_f - l_g) <= 1e-12 * abs(L_g), k
        assert abs(s_f - s_g) <= 1e-12 * abs(s_g), k
    assert torch.equal(mem_fast, mem_general)


@pytest.mark.parametrize("data_dtype", [torch.float32, torch.bfloat16])
def test_float32_head_within_1e6_of_general_path(monkeypatch, data_dtype) -> None:
    torch.manual_seed(2)
    head = HEADS["s2k4p1"]().float()
    batches = _batches(head, 5, data_dtype)
    fast, _ = _run(copy.deepcopy(head), batches, True, monkeypatch, memory_depth=2)
    general, _ = _run(copy.deepcopy(head), batches, False, monkeypatch, memory_depth=2)
    for k, ((w_f, *_), (w_g, *_)) in enumerate(zip(fast, general)):
        assert float((w_f - w_g).norm() / w_g.norm()) <= 1e-6, k


@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
@pytest.mark.parametrize("bad", ["features", "target"])
def test_nonfinite_batch_gives_the_general_error_or_skip_and_leaves_state(monkeypatch, on_nonfinite, bad) -> None:
    torch.manual_seed(3)
    head = HEADS["s2k4p1"]().double()
    batches = _batches(head, 3)
    slim = SlimTik(head, memory_depth=2, on_nonfinite=on_nonfinite)
    for x, y in batches[:2]:
        slim.step(x, y)
    before = (copy.deepcopy(slim.solver_state.state_dict()), head.weight.detach().clone(), slim.n_steps_)
    x, y = (t.clone() for t in batches[2])
    (x if bad == "features" else y)[0, 0, 1, 1] = float("nan")
    if on_nonfinite == "raise":
        with pytest.raises(ValueError, match=bad):
            slim.step(x, y)
    else:
        assert slim.step(x, y).skipped
    state, weight, steps = before
    after = slim.solver_state.state_dict()
    assert all(torch.equal(state[k], after[k]) if isinstance(state[k], torch.Tensor) else state[k] == after[k]
               for k in state)
    assert torch.equal(head.weight, weight) and slim.n_steps_ == steps
    slim.step(*batches[2])   # the next good batch takes the fast path again
    assert slim.n_steps_ == steps + 1


@pytest.mark.parametrize("config", [dict(Lambda0=5.0, Lambda_bounds=(1e-7, 1.0)),                 # Λ_{k−1} > Λ_max
                                    dict(Lambda0=0.5, Lambda_bounds=(1e-7, 1.0), lambda_bounds=(0.7, 2.0))])
def test_bounds_that_exclude_every_lambda_raise_like_the_general_path(monkeypatch, config) -> None:
    head = HEADS["s2k4p1"]().double()
    x, y = _batches(head, 1)[0]
    with pytest.raises(ValueError) as fast:
        SlimTik(copy.deepcopy(head), **config).step(x, y)
    monkeypatch.setattr(bh, "ENABLED", False)
    with pytest.raises(ValueError) as general:
        SlimTik(copy.deepcopy(head), **config).step(x, y)
    assert str(fast.value) == str(general.value)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_parameter_order_is_the_block_ordered_matrix(name) -> None:
    """params[src] = head_to_matrix(head)[:, perm] and W_blk.flat[dst] gives the parameters back."""
    from slimfast.heads import head_to_matrix

    torch.manual_seed(1)
    head = HEADS[name]().double()
    blocks = phase_blocks(head)
    perm = torch.tensor(blocks.order if blocks.order is not None else range(blocks.n_features), dtype=torch.long)
    src, dst = bh.parameter_order(head, perm)
    params = torch.cat([p.detach().reshape(-1) for p in (head.weight, head.bias) if p is not None])
    W_blk = head_to_matrix(head)[:, perm]
    assert torch.equal(params[src], W_blk.reshape(-1))
    assert torch.equal(W_blk.reshape(-1)[dst], params)


@pytest.mark.parametrize("where", ["weight", "bias"])
def test_nonfinite_head_weights_take_the_general_path(monkeypatch, where) -> None:
    """A NaN in the head's parameters: the fast path declines before anything changes, and the
    step is the general path's (which raises naming the weights)."""
    head = HEADS["s2k4p1"]().double()
    x, y = _batches(head, 1)[0]
    with torch.no_grad():
        getattr(head, where).view(-1)[1] = float("nan")
    weight = head.weight.detach().clone()
    calls = _counting(monkeypatch)
    with pytest.raises(ValueError, match=re.escape("W contains NaN or Inf")):
        SlimTik(head).step(x, y)
    assert calls, "the fast path must hand a non-finite head to the general path"
    assert torch.equal(head.weight.nan_to_num(), weight.nan_to_num())   # untouched


def test_float32_overflow_raises_and_leaves_the_head(monkeypatch) -> None:
    """Weights beyond float32's range: the fast path declines, the general path raises."""
    head = HEADS["s2k4p1"]().float()
    x, y = _batches(head, 1)[0]
    slim = SlimTik(head, lambda_mode="constant", lambda_const=0.0, Lambda0=1e-7)
    weight = head.weight.detach().clone()
    with pytest.raises(FloatingPointError, match="float32"):
        slim.step(x * 1e-3, y * 1e37)
    assert torch.equal(head.weight, weight) and slim.n_steps_ == 0


def test_other_cases_take_the_general_path(monkeypatch) -> None:
    calls = _counting(monkeypatch)
    head = HEADS["s2k4p1"]().double()
    x, y = _batches(head, 1)[0]
    SlimTik(copy.deepcopy(head), backend="torch").step(x, y)          # another backend
    SlimTik(copy.deepcopy(head), block_solve="off").step(x, y)         # dense step asked for
    SlimTik(copy.deepcopy(head), check_every=0).step(x, y)             # first step: nothing pending, fast
    stride1 = nn.ConvTranspose2d(2, 1, 3).double()                      # no phase blocks
    SlimTik(stride1).step(torch.randn(2, 2, 4, 4, dtype=F64), torch.randn(2, 1, 6, 6, dtype=F64))
    assert [c is None for c in calls] == [False, True, True]


def test_changed_layout_revalidates(monkeypatch) -> None:
    head = HEADS["s2k4p1"]().double()
    slim = SlimTik(head, memory_depth=1)
    x, y = _batches(head, 1)[0]
    slim.step(x, y)
    with pytest.raises(ValueError, match="target"):
        slim.step(x, y[:, :, :-1])
    slim.step(x[:2], y[:2])   # another batch size: a new plan
    assert slim.n_steps_ == 2


def test_block_entries_are_the_blocks_and_the_border() -> None:
    """Every entry a block step reads, each once: the diagonal blocks and the border row and column
    in block order, taken from the features' own positions."""
    head = nn.ConvTranspose2d(3, 1, (3, 4), stride=(2, 3))
    layout = phase_blocks(head)
    n = layout.n_features
    src, dst = bh.block_entries(layout.order, layout.sizes, layout.border)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for lo, hi in layout.ranges():
        mask[lo:hi, lo:hi] = True
    mask[-1, :] = mask[:, -1] = True
    assert sorted(dst.tolist()) == torch.nonzero(mask.reshape(-1)).flatten().tolist()
    perm = torch.tensor(layout.order)
    A = torch.arange(n * n, dtype=F64).reshape(n, n)
    permuted = A[perm][:, perm].reshape(-1)
    assert torch.equal(A.reshape(-1)[src], permuted[dst])


def test_autograd_sees_the_in_place_update() -> None:
    head = HEADS["s2k4p1"]().double()
    version = head.weight._version
    x, y = _batches(head, 1)[0]
    SlimTik(head).step(x, y)
    assert head.weight._version > version


def test_sgcv_and_constant_modes_match(monkeypatch) -> None:
    head = HEADS["s2k3-nobias"]().double()
    batches = _batches(head, 4)
    for mode in ("constant", "reference"):
        kw = dict(memory_depth=2, lambda_mode=mode, lambda_const=0.01)
        fast, _ = _run(copy.deepcopy(head), batches, True, monkeypatch, **kw)
        general, _ = _run(copy.deepcopy(head), batches, False, monkeypatch, **kw)
        for (w_f, L_f, *_), (w_g, L_g, *_) in zip(fast, general):
            assert float((w_f - w_g).norm() / w_g.norm()) <= 1e-12 and abs(L_f - L_g) <= 1e-12 * abs(L_g)


def test_statistics_in_a_workspace_equal_fresh_ones() -> None:
    """Kept buffers change nothing: a workspace shared by heads of several geometries and batch
    sizes, fed one batch after another, gives exactly the statistics of fresh temporaries."""
    from slimfast.heads import head_statistics
    from slimfast.workspace import Workspace

    heads = [HEADS[name]().double() for name in sorted(HEADS)] + [nn.Conv2d(3, 2, 3, padding=1).double()]
    ws = Workspace()
    g = torch.Generator().manual_seed(4)
    for rep in range(2):
        for head in heads:
            for n_b in (3, 2):
                x = torch.randn(n_b, head.in_channels, 5, 4, generator=g).to(torch.float32 if rep else F64)
                with torch.no_grad():
                    y = torch.randn(head.double()(x.double()).shape, generator=g)
                fresh = head_statistics(head, x, y)
                kept = head_statistics(head, x, y, workspace=ws)
                for a, b in zip(fresh, kept):
                    assert torch.equal(torch.as_tensor(a), torch.as_tensor(b)), (head, n_b)


def test_fast_and_general_steps_interleaved_equal_the_general_path(monkeypatch) -> None:
    """The fast path's packed copy of the memory follows every change made elsewhere: general-path
    steps in between, a rejected batch, a state loaded from a checkpoint, a deep copy."""
    torch.manual_seed(5)
    head = HEADS["s2k4p1"]().double()
    batches = _batches(head, 12)
    reference, _ = _run(copy.deepcopy(head), batches, False, monkeypatch, memory_depth=3)
    mixed_head = copy.deepcopy(head)
    slim = SlimTik(mixed_head, memory_depth=3)
    out = []
    for k, (x, y) in enumerate(batches):
        monkeypatch.setattr(bh, "ENABLED", k not in (2, 3, 7))
        if k == 5:
            bad = x.clone()
            bad[0, 0, 0, 0] = float("inf")
            with pytest.raises(ValueError):
                slim.step(bad, y)
        if k == 8:   # a checkpoint loaded into the same optimizer: a new state object
            slim.load_state_dict(copy.deepcopy(slim.state_dict()))
        if k == 10:  # a deep copy continues (its own plan), the original is dropped
            mixed_head, slim = copy.deepcopy((mixed_head, slim))
        rec = slim.step(x, y)
        out.append((torch.cat([p.detach().reshape(-1).clone() for p in mixed_head.parameters()]), rec.Lambda))
    for k, ((w, L), (w_ref, L_ref, *_)) in enumerate(zip(out, reference)):
        assert float((w - w_ref).norm() / w_ref.norm()) <= 1e-12, k
        assert abs(L - L_ref) <= 1e-12 * abs(L_ref), k


@pytest.mark.parametrize("n_stored", [0, 1, 4])
def test_compiled_gather_equals_its_twin(n_stored: int) -> None:
    """_cpu.gather_block_entries = block_head._gather_block_entries on a random permuted layout."""
    cpp = load_backend("cpp")
    if cpp is None or not hasattr(cpp._cpu, "gather_block_entries"):
        pytest.skip("compiled module without the block gathers")
    g = torch.Generator().manual_seed(n_stored)
    n_f, r = 13, 4
    order = tuple(torch.randperm(n_f, generator=g).tolist())
    src, dst = bh.block_entries(order, (4, 4, 4), True)
    G = torch.randn(n_f, n_f, dtype=torch.float64, generator=g)
    packed = torch.randn(r, src.numel(), dtype=torch.float64, generator=g)
    n_t = 3
    H, c, perm = torch.randn(n_t, n_f, dtype=F64, generator=g), torch.randn((), dtype=F64, generator=g), torch.tensor(order)
    want = [torch.zeros(n_f, n_f, dtype=torch.float64) for _ in range(2)] + [torch.zeros(n_t, n_f, dtype=F64),
                                                                          torch.zeros(1, dtype=F64)]
    got = [torch.zeros_like(w) for w in want]
    batch_want = bh._gather_block_entries(G, src, dst, packed, n_stored, want[0], want[1], H, perm, want[2], c, want[3])
    batch = torch.empty(src.numel(), dtype=torch.float64)
    cpp._cpu.gather_block_entries(G.data_ptr(), src.data_ptr(), dst.data_ptr(), src.numel(), packed.data_ptr(),
                                  n_stored, batch.data_ptr(), got[0].data_ptr(), got[1].data_ptr(), H.data_ptr(),
                                  perm.data_ptr(), n_t, n_f, got[2].data_ptr(), c.data_ptr(), got[3].data_ptr())
    assert torch.equal(batch, batch_want)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-15, atol=0)
    assert torch.equal(got[2], H[:, perm]) and torch.equal(got[2], want[2])
    assert torch.equal(got[3], c.reshape(1)) and torch.equal(got[3], want[3])
    assert torch.count_nonzero(got[0]) == src.numel()   # the entries outside the blocks stay zero


@pytest.mark.parametrize("lambda_bounds", [(-float("inf"), 1e3), (0.7, 2.0), (-0.3, 0.1), (-float("inf"), float("inf"))])
@pytest.mark.parametrize("Lambda", [0.0, 0.5, 3.0])
def test_scalar_admissible_interval_is_the_tensor_one(lambda_bounds, Lambda) -> None:
    from slimfast._torch_impl import _admissible_interval
    from slimfast.config import SolverConfig

    config = SolverConfig(Lambda_bounds=(1e-7, 1.0), lambda_bounds=lambda_bounds)
    lo, hi = _admissible_interval(torch.tensor([Lambda], dtype=F64), config)
    assert config.admissible_mu(Lambda) == (float(lo), float(hi))


def _compiled_moves():
    cpp = load_backend("cpp")
    if cpp is None or not hasattr(cpp._cpu, "gather_parameters"):
        pytest.skip("compiled module without the parameter moves")
    return cpp._cpu


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["s2k4p1", "s2k3-nobias"])
def test_compiled_parameter_moves_equal_their_twins(dtype, name) -> None:
    """_cpu.gather_parameters / scatter_parameters = block_head._gather_parameters /
    _scatter_parameters on fresh random parameters and block-order weights, bit for bit."""
    cpu = _compiled_moves()
    torch.manual_seed(3)
    head = HEADS[name]().to(dtype)
    plan_dtype = bh._parameter_dtype(head)
    assert plan_dtype == {torch.float64: 0, torch.float32: 1}[dtype]
    layout = phase_blocks(head)
    src, dst = bh.parameter_order(head, torch.tensor(layout.order))
    weight, bias = head.weight.detach(), None if head.bias is None else head.bias.detach()
    n_w, n_p = weight.numel(), src.numel()
    bias_ptr = 0 if bias is None else bias.data_ptr()
    W_want, largest_want = bh._gather_parameters(weight, bias, src)
    W = torch.empty(n_p, dtype=F64)
    largest = cpu.gather_parameters(weight.data_ptr(), bias_ptr, plan_dtype, n_w, n_p, src.data_ptr(), W.data_ptr())
    assert torch.equal(W, W_want) and largest == largest_want > 0

    W_new = torch.randn(n_p, dtype=F64) * 3.0
    want_w, want_b = weight.clone(), None if bias is None else bias.clone()
    assert bh._scatter_parameters(W_new, dst, want_w, want_b)
    assert cpu.scatter_parameters(W_new.data_ptr(), dst.data_ptr(), plan_dtype, n_w, n_p, weight.data_ptr(), bias_ptr)
    assert torch.equal(weight, want_w) and (bias is None or torch.equal(bias, want_b))
    assert not torch.equal(want_w, W_want[dst[:n_w]].to(dtype).view(weight.shape))   # the new values landed


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compiled_parameter_moves_flag_nonfinite_and_write_nothing(dtype) -> None:
    cpu = _compiled_moves()
    head = HEADS["s2k4p1"]().to(dtype)
    code = bh._parameter_dtype(head)
    src, dst = bh.parameter_order(head, torch.tensor(phase_blocks(head).order))
    weight, bias = head.weight.detach(), head.bias.detach()
    n_w, n_p = weight.numel(), src.numel()
    W = torch.empty(n_p, dtype=F64)
    bias[0] = float("nan")
    largest = cpu.gather_parameters(weight.data_ptr(), bias.data_ptr(), code, n_w, n_p, src.data_ptr(), W.data_ptr())
    assert math.isnan(largest) and math.isnan(bh._gather_parameters(weight, bias, src)[1])
    bias[0] = 0.5
    before = [weight.clone(), bias.clone()]
    # Beyond float32's range (finite in float64), or not finite at all: nothing is written.
    W_bad = torch.randn(n_p, dtype=F64)
    W_bad[n_p // 2] = 1e39 if dtype == torch.float32 else float("inf")
    assert not cpu.scatter_parameters(W_bad.data_ptr(), dst.data_ptr(), code, n_w, n_p, weight.data_ptr(),
                                      bias.data_ptr())
    assert not bh._scatter_parameters(W_bad, dst, weight.clone(), bias.clone())
    assert torch.equal(weight, before[0]) and torch.equal(bias, before[1])


def test_compiled_parameter_moves_reject_bad_arguments() -> None:
    cpu = _compiled_moves()
    W = torch.zeros(8, dtype=F64)
    src = torch.arange(8)
    w = torch.zeros(6, dtype=F64)
    with pytest.raises(ValueError, match="dtype"):
        cpu.gather_parameters(w.data_ptr(), w.data_ptr(), 2, 6, 8, src.data_ptr(), W.data_ptr())
    with pytest.raises(ValueError, match="n_p at least n_w"):
        cpu.gather_parameters(w.data_ptr(), w.data_ptr(), 0, 6, 5, src.data_ptr(), W.data_ptr())
    with pytest.raises(ValueError, match="weight_ptr"):
        cpu.scatter_parameters(W.data_ptr(), src.data_ptr(), 0, 6, 8, 0, w.data_ptr())
    with pytest.raises(ValueError, match="bias_ptr"):
        cpu.gather_parameters(w.data_ptr(), 0, 0, 6, 8, src.data_ptr(), W.data_ptr())


def test_parameters_the_moves_do_not_cover_take_torch_ops(monkeypatch) -> None:
    """A float16 or non-contiguous weight: no compiled moves; the fast step still equals the general path."""
    assert bh._parameter_dtype(HEADS["s2k4p1"]().half()) is None
    head = HEADS["s2k4p1"]().double()
    with torch.no_grad():
        strided = torch.empty(tuple(reversed(head.weight.shape)), dtype=F64).permute(3, 2, 1, 0)
        strided.copy_(head.weight)
    head.weight = nn.Parameter(strided)
    assert not head.weight.is_contiguous() and bh._parameter_dtype(head) is None
    batches = _batches(head, 4)
    calls = _counting(monkeypatch)
    fast, _ = _run(copy.deepcopy(head), batches, True, monkeypatch, memory_depth=2)
    assert calls == []
    general, _ = _run(copy.deepcopy(head), batches, False, monkeypatch, memory_depth=2)
    for (w_f, *_), (w_g, *_) in zip(fast, general):
        assert float((w_f - w_g).norm() / w_g.norm()) <= 1e-12


@pytest.mark.parametrize("data_dtype", [F64, torch.float32])
@pytest.mark.parametrize("name", sorted(HEADS))
def test_compiled_statistics_are_plus_zero_outside_the_block_entries(name, data_dtype) -> None:
    """What lets a fast step defer its memory write (``SlimTikState.commit_entries``): the compiled
    statistics' G is exactly +0.0 everywhere a block step does not read."""
    head = HEADS[name]().double()
    x, y = _batches(head, 1, dtype=data_dtype)[0]
    G, _, _, _, largest = statistics_and_magnitude(head, x, y, check=False)
    assert largest is not None, "the compiled statistics did not run"
    layout = phase_blocks(head)
    order = layout.order if layout.order is not None else tuple(range(layout.n_features))
    src, _ = bh.block_entries(order, layout.sizes, layout.border)
    outside = torch.ones(G.numel(), dtype=torch.bool)
    outside[src] = False
    rest = G.reshape(-1)[outside]
    assert rest.numel() > 0 and not rest.any() and not torch.signbit(rest).any()


def test_fast_steps_write_the_memory_only_when_it_is_read(monkeypatch) -> None:
    """Fast steps leave the memory's buffer unwritten; reading ``memory``, pickling or a state dict
    writes it first, equal to the general path's bit for bit, and later steps stay exact."""
    torch.manual_seed(7)
    head = HEADS["s2k4p1"]().double()
    batches = _batches(head, 8)
    _, mem_general = _run(copy.deepcopy(head), batches[:5], False, monkeypatch, memory_depth=3)
    reference, mem_reference = _run(copy.deepcopy(head), batches, False, monkeypatch, memory_depth=3)
    fast_head = copy.deepcopy(head)
    monkeypatch.setattr(bh, "ENABLED", True)
    slim = SlimTik(fast_head, memory_depth=3)
    for x, y in batches[:5]:
        slim.step(x, y)
    state = slim.solver_state
    assert not state.memory_storage.any()   # five fast steps, nothing written yet
    assert torch.equal(pickle.loads(pickle.dumps(state)).memory, mem_general)
    assert torch.equal(state.memory_storage, mem_general)   # pickling wrote the deferred slots
    for x, y in batches[5:]:
        rec = slim.step(x, y)
    assert torch.equal(slim.state_dict()["slimtik"]["solver"]["memory"], mem_reference)
    weights = torch.cat([p.detach().reshape(-1) for p in fast_head.parameters()])
    assert float((weights - reference[-1][0]).norm() / reference[-1][0].norm()) <= 1e-12
    assert abs(rec.Lambda - reference[-1][1]) <= 1e-12 * abs(reference[-1][1])


def test_commit_entries_rejects_what_it_cannot_defer() -> None:
    from slimfast.state import SlimTikState

    index = torch.tensor([0, 3])
    for state, entries in ((SlimTikState(2, 2, 1, memory_depth=2), torch.zeros(2, 2)),
                           (SlimTikState(1, 2, 1, memory_depth=0), torch.zeros(0, 2)),
                           (SlimTikState(1, 2, 1, memory_depth=2), torch.zeros(3, 2))):
        with pytest.raises(ValueError, match="commit_entries"):
            state.commit_entries(entries, index, torch.ones(1, dtype=F64))
        assert state.step_count == 0


def test_states_pickled_with_a_plain_memory_attribute_still_load() -> None:
    from slimfast.state import SlimTikState

    state = SlimTikState(1, 3, 1, memory_depth=2)
    state.memory.copy_(torch.randn(1, 2, 3, 3, dtype=F64))
    old_form = {k if k != "_memory" else "memory": v for k, v in state.__getstate__().items()}
    loaded = object.__new__(SlimTikState)
    loaded.__setstate__(old_form)
    assert torch.equal(loaded.memory, state.memory) and loaded.memory_storage is loaded.memory
