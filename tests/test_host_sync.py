"""``slimtik_step(..., validate="lazy")`` never synchronises with the host (issue 9.3), and its
deferred checks keep the state of a rejected problem while the others advance.

On CPU a "synchronisation" is any call that needs a tensor's value on the host: ``.item()``,
``.tolist()``, ``bool()``/``float()``/``int()`` of a tensor, ``nonzero`` (its shape depends on
the values). A TorchFunctionMode counts them inside the step; on CUDA the same calls would
block on the stream (benchmarks/gpu_check.sh runs the step under
``torch.cuda.set_sync_debug_mode("error")``).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

from slimfast import SlimTik, SlimTikState, slimtik_step

from .conftest import EMULATE, require_backend
from .solver_cases import RandomProblems

F64 = torch.float64
SYNCING = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "nonzero", "__len__"}
#: Backends whose step itself does not read tensor values on the host (the torch twin's
#: Illinois loop stops when every problem has converged, which it must read).
NO_SYNC_BACKENDS = ("cpp", "numba")


class CountHostSyncs(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = getattr(func, "__name__", "")
        if name in SYNCING:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def _problem(B: int = 3, n_f: int = 6, n_t: int = 2, seed: int = 0):
    probs = RandomProblems(B, n_f, n_t, n_b=10, seed=seed)
    return probs, SlimTikState(B, n_f, n_t, memory_depth=2), torch.zeros(B, n_t, n_f, dtype=F64)


@pytest.mark.parametrize("backend", NO_SYNC_BACKENDS + (EMULATE,))
def test_lazy_step_does_not_sync(backend: str) -> None:
    require_backend(backend)
    probs, state, W = _problem()
    W, _ = slimtik_step(state, *probs.next_batch(), W, backend=backend, validate="lazy")  # memory non-empty
    args = probs.next_batch()
    with CountHostSyncs() as lazy:
        W_lazy, info = slimtik_step(state, *args, W, backend=backend, validate="lazy")
    assert lazy.calls == [], lazy.calls
    with CountHostSyncs() as eager:
        slimtik_step(SlimTikState(3, 6, 2, memory_depth=2), *args, W, backend=backend)
    assert len(eager.calls) >= 2  # the counter sees the eager checks (one read before, one after)
    info.check()  # nothing to report


def test_lazy_faults_keep_the_rejected_problem_and_advance_the_others(backend: str, device: torch.device) -> None:
    probs, _, _ = _problem()
    state = SlimTikState(3, 6, 2, memory_depth=2, device=device)
    ref = SlimTikState(3, 6, 2, memory_depth=2, device=device)
    W = torch.zeros(3, 2, 6, dtype=F64, device=device)
    first = [x.to(device) if isinstance(x, torch.Tensor) else x for x in probs.next_batch()]
    W1, _ = slimtik_step(state, *first, W, backend=backend, validate="lazy")
    slimtik_step(ref, *first, W, backend=backend)
    G, H, c, m = [x.to(device) if isinstance(x, torch.Tensor) else x for x in probs.next_batch()]
    G_bad = G.clone()
    G_bad[1, 0, 0] = float("nan")
    Lambda_before, memory_sum_before = state.Lambda.clone(), state.memory.sum(1).clone()
    W2, info = slimtik_step(state, G_bad, H, c, m, W1, backend=backend, validate="lazy")
    assert info.faults.tolist() == [0, int(info.faults[1]), 0] and int(info.faults[1]) != 0
    with pytest.raises(ValueError, match=r"\bG\b.*problem 1"):
        info.check()
    assert torch.equal(W2[1], W1[1])
    assert torch.equal(state.Lambda[1], Lambda_before[1])
    assert torch.equal(state.memory.sum(1)[1], memory_sum_before[1])
    # The other problems took exactly the eager step.
    W_ref, info_ref = slimtik_step(ref, G, H, c, m, W1, backend=backend)
    for b in (0, 2):
        assert torch.equal(W2[b], W_ref[b])
        assert torch.equal(state.Lambda[b], ref.Lambda[b])
        assert torch.equal(state.memory[b], ref.memory[b])


# ----------------------------------------------------------------------------- SlimTik.step


def _slim_batches(n: int, n_in: int = 5, n_out: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, n_in, generator=g), torch.randn(16, n_out, generator=g)) for _ in range(n)]


@pytest.mark.parametrize("memory_depth", [0, 2])
@pytest.mark.parametrize("backend", NO_SYNC_BACKENDS + (EMULATE,))
def test_slimtik_step_does_not_sync_until_the_record_is_read(backend: str, memory_depth: int,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """SlimTik.step with ``check_every=0`` forms the statistics, takes the lazily validated step and
    writes the head without one host synchronisation; reading a record reads every pending step
    at once, and the numbers are those of the default (checked every step) optimizer. (The
    general path: the fused small-head path is counted in the next test.)"""
    require_backend(backend)
    monkeypatch.setattr("slimfast.fused_head.ENABLED", False)
    batches = _slim_batches(4)
    heads = [torch.nn.Linear(5, 2).double() for _ in range(2)]
    heads[1].load_state_dict(heads[0].state_dict())
    lazy = SlimTik(heads[0], memory_depth=memory_depth, backend=backend, check_every=0)
    eager = SlimTik(heads[1], memory_depth=memory_depth, backend=backend)
    lazy.step(*batches[0])   # first calls load and compile outside the counted region
    with CountHostSyncs() as counted:
        records = [lazy.step(*b) for b in batches[1:]]
    assert counted.calls == [], counted.calls
    reference = [eager.step(*b) for b in batches]
    with CountHostSyncs() as reading:
        values = [(r.lambda_, r.Lambda, r.sgcv, r.rel_residual, r.cond) for r in records]
    assert reading.calls == ["tolist"]   # one transfer for all pending steps
    assert values == [(r.lambda_, r.Lambda, r.sgcv, r.rel_residual, r.cond) for r in reference[1:]]
    assert lazy.lambda_history_ == eager.lambda_history_ and lazy.n_steps_ == eager.n_steps_ == 4
    assert torch.equal(heads[0].weight, heads[1].weight) and torch.equal(heads[0].bias, heads[1].bias)


def test_slimtik_deferred_error_names_the_input_and_the_default_checks_every_step() -> None:
    """A NaN batch with ``check_every=0`` is found at the next read: the same ValueError naming
    ``target`` as with the default, weights, memory and Λ unchanged; as the last step taken it is
    undone completely. With ``check_every=1`` (default) ``step`` raises at once."""
    batches = _slim_batches(3)
    x, y = batches[1]
    y_bad = y.clone()
    y_bad[0, 0] = float("nan")
    for check_every in (0, 1):
        head = torch.nn.Linear(5, 2).double()
        slim = SlimTik(head, memory_depth=2, check_every=check_every)
        slim.step(*batches[0])
        slim.check()
        before = (head.weight.clone(), slim.solver_state.Lambda.clone(), slim.solver_state.memory.clone(),
                  slim.n_steps_, slim.solver_state.head, slim.solver_state.n_stored)
        with pytest.raises(ValueError, match=r"^target contains NaN or Inf"):
            rec = slim.step(x, y_bad)
            assert check_every == 0, "the default raises from step itself"
            rec.lambda_
        state = slim.solver_state
        after = (head.weight, state.Lambda, state.memory, slim.n_steps_, state.head, state.n_stored)
        assert all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b for a, b in zip(before, after))
        slim.step(*batches[2])   # still usable
        assert slim.n_steps_ == 2 and len(slim.lambda_history_) == 2


def test_block_code_state_keeps_warm_start_and_workspace() -> None:
    """With a backend that runs the CUDA block code (here its host emulation) the state keeps G_mem's
    eigenvectors for the next step's Jacobi warm start and reuses one workspace; the warm-started
    steps agree with cold ones (only the speed may differ); select/cat drop both caches."""
    require_backend(EMULATE)
    probs = RandomProblems(3, 6, 2, n_b=10, seed=4)
    batches = [probs.next_batch() for _ in range(4)]
    warm, cold = SlimTikState(3, 6, 2, memory_depth=2), SlimTikState(3, 6, 2, memory_depth=2)
    W_warm = W_cold = torch.zeros(3, 2, 6, dtype=F64)
    pointers = []
    for k, (G, H, c, m) in enumerate(batches):
        G_mem = warm.memory_gram(G)
        W_warm, info = slimtik_step(warm, G, H, c, m, W_warm, backend=EMULATE, validate="lazy")
        cold.eigenvectors = None   # every step of `cold` starts its Jacobi sweeps from I
        W_cold, info_cold = slimtik_step(cold, G, H, c, m, W_cold, backend=EMULATE)
        U = warm.eigenvectors
        s = torch.linalg.eigvalsh(G_mem)
        assert torch.allclose(U.mT @ G_mem @ U, torch.diag_embed(s), atol=1e-12 * float(s.abs().max()))
        pointers.append(warm.workspace.data_ptr())
        torch.testing.assert_close(W_warm, W_cold, rtol=1e-11, atol=1e-13)
        torch.testing.assert_close(info.Lambda, info_cold.Lambda, rtol=1e-11, atol=0.0)
    # One workspace once the memory holds a batch (the empty-memory step needs less).
    assert len(set(pointers[1:])) == 1 and len(pointers) == 4
    for derived in (warm.select([0, 2]), SlimTikState.cat([warm, warm])):
        assert derived.eigenvectors is None and derived.workspace is None


def test_slimtik_deferred_skip_changes_no_weights() -> None:
    """``check_every=0`` with ``on_nonfinite="skip"``: a NaN batch between good ones is skipped at
    the read (record ``skipped``, ``n_skipped_`` 1, no history entry); with memory depth 0 the head
    then holds exactly the weights of a run on the good batches alone."""
    good = _slim_batches(2, seed=3)
    x, y = _slim_batches(1, seed=4)[0]
    y[3, 1] = float("inf")
    heads = [torch.nn.Linear(5, 2).double() for _ in range(2)]
    heads[1].load_state_dict(heads[0].state_dict())
    slim = SlimTik(heads[0], on_nonfinite="skip", check_every=0)
    records = [slim.step(*good[0]), slim.step(x, y), slim.step(*good[1])]
    ref = SlimTik(heads[1])
    for b in good:
        ref.step(*b)
    assert [r.skipped for r in records] == [False, True, False] and "target" in records[1].reason
    assert slim.n_skipped_ == 1 and slim.lambda_history_ == ref.lambda_history_
    assert torch.equal(heads[0].weight, heads[1].weight) and torch.equal(heads[0].bias, heads[1].bias)


@pytest.mark.parametrize("check_every", [0, 1])
def test_fused_small_head_step_makes_no_host_sync(check_every: int) -> None:
    """The fused Linear path (CPU, cpp) returns its numbers from the compiled call: neither the
    step nor reading its record calls .item()/.tolist()/bool() on a tensor."""
    require_backend("cpp")
    batches = _slim_batches(4)
    slim = SlimTik(torch.nn.Linear(5, 2).double(), memory_depth=2, backend="cpp", check_every=check_every)
    slim.step(*batches[0])
    with CountHostSyncs() as counted:
        records = [slim.step(*b) for b in batches[1:]]
        values = [(r.lambda_, r.Lambda, r.sgcv, r.rel_residual, r.cond) for r in records]
    assert counted.calls == [], counted.calls
    assert all(math.isfinite(v) for row in values for v in row) and slim.n_steps_ == 4
