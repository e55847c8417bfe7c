"""Data-parallel slimTik: two gloo processes with half of every batch each == one process with all of it.

The two-process test spawns ranks with ``torch.multiprocessing`` on localhost (a free port), trains a
float64 body wrapped in DistributedDataParallel with SlimTik (memory depth 3) for 20 steps, and
compares every step's head weights across ranks (bit-identical) and with a single process given the
whole batch (1e-12 relative). It also checks SlimTik alone on unequal shards for both reductions.
"""

from __future__ import annotations

import datetime
import math
import os
import socket
import time
import traceback

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from slimfast.distributed import (
    all_reduce_statistics, bytes_per_step, pack_statistics, statistics_numel, unpack_statistics, use_data_parallel,
)
from slimfast.heads import head_shape, head_statistics, head_to_matrix
from slimfast.optim import SlimTik
from slimfast.train import SlimTrain

F64 = torch.float64
STEPS = 20
BATCH = 32
DEPTH = 3
WORLD = 2


# ----------------------------------------------------------------------------- single-process parts

def test_bytes_per_step_formula():
    assert statistics_numel(9, 1) == 81 + 9 + 2
    assert bytes_per_step(9, 1) == 8 * 92 == 736           # peaks head
    assert bytes_per_step(17, 72) == 8 * (289 + 1224 + 2)  # cdr head
    assert bytes_per_step(257, 1) == 8 * (257 * 257 + 257 + 2)


def test_pack_unpack_roundtrip():
    g = torch.Generator().manual_seed(0)
    G, H, c = torch.randn(5, 5, dtype=F64, generator=g), torch.randn(3, 5, dtype=F64, generator=g), torch.tensor(2.5, dtype=F64)
    buf = pack_statistics(G, H, c, 7)
    assert buf.dtype == F64 and buf.shape == (statistics_numel(5, 3),)
    G2, H2, c2, m2 = unpack_statistics(buf, 5, 3)
    assert torch.equal(G2, G) and torch.equal(H2, H) and float(c2) == 2.5 and float(m2) == 7.0
    with pytest.raises(ValueError):
        unpack_statistics(buf[:-1], 5, 3)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_reduce_without_process_group_is_local_scaling(reduction):
    """Not initialised: no communication, the unscaled sums become head_statistics(reduction)."""
    assert not use_data_parallel(None)
    head = nn.Linear(4, 3).double()
    z, y = torch.randn(10, 4, dtype=F64), torch.randn(10, 3, dtype=F64)
    ref = head_statistics(head, z, y, reduction)
    out = all_reduce_statistics(*head_statistics(head, z, y, "sum"), reduction=reduction)
    for a, b in zip(out[:3], ref[:3]):
        torch.testing.assert_close(a, b, rtol=1e-15, atol=0)
    assert out[3] == ref[3] == 30


def test_distributed_true_needs_process_group():
    head = nn.Linear(3, 1).double()
    slim = SlimTik(head, distributed=True)
    with pytest.raises(RuntimeError, match="not initialised"):
        slim.step(torch.randn(4, 3, dtype=F64), torch.randn(4, 1, dtype=F64))
    # nothing happened
    assert slim.n_steps_ == 0 and slim.solver_state is None


# ----------------------------------------------------------------------------- the shared setup

def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    x = torch.rand(STEPS * BATCH, 2, dtype=F64, generator=g) * 2 - 1
    y = torch.sin(x[:, :1]) * torch.cos(x[:, 1:]) + 0.1 * x[:, :1] ** 2
    return x, y


def _model() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(7)
    body = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh()).double()
    head = nn.Linear(8, 1).double()
    return body, head


def _trainer(body: nn.Module, head: nn.Module, module: nn.Module) -> SlimTrain:
    slim = SlimTik(head, memory_depth=DEPTH)
    opt = torch.optim.Adam(body.parameters(), lr=1e-2)
    return SlimTrain(module, head, opt, slim)


def _single_process_run() -> list[torch.Tensor]:
    body, head = _model()
    trainer = _trainer(body, head, body)
    x, y = _data()
    out = []
    for k in range(STEPS):
        trainer.train_step(x[k * BATCH:(k + 1) * BATCH], y[k * BATCH:(k + 1) * BATCH])
        out.append(head_to_matrix(head))
    return out


def _uneven_case(reduction: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor, list[int]]:
    """A conv head on fixed features; shards of 3 and 2 samples (unequal m per rank)."""
    torch.manual_seed(11)
    head = nn.Conv2d(2, 3, 3, padding=1).double()
    g = torch.Generator().manual_seed(5)
    z = torch.randn(6, 5, 2, 4, 4, dtype=F64, generator=g)     # 6 steps, 5 samples each
    y = torch.randn(6, 5, 3, 4, 4, dtype=F64, generator=g)
    return head, z, y, [3, 2]


def _uneven_single(reduction: str) -> list[torch.Tensor]:
    head, z, y, _ = _uneven_case(reduction)
    slim = SlimTik(head, memory_depth=DEPTH, reduction=reduction)
    out = []
    for k in range(z.shape[0]):
        slim.step(z[k], y[k])
        out.append(head_to_matrix(head))
    return out


# ----------------------------------------------------------------------------- worker (one rank)

def _worker(rank: int, port: int, queue) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                                timeout=datetime.timedelta(seconds=50))
    except Exception:
        queue.put({"rank": rank, "error": traceback.format_exc()})
        return
    try:
        result: dict[str, object] = {"rank": rank}
        body, head = _model()
        ddp = DDP(body)
        trainer = _trainer(body, head, ddp)
        assert use_data_parallel(None)
        x, y = _data()
        half = BATCH // WORLD
        heads = []
        for k in range(STEPS):
            lo = k * BATCH + rank * half
            trainer.train_step(x[lo:lo + half], y[lo:lo + half])
            heads.append(head_to_matrix(head).numpy())
        result["heads"] = heads
        result["m"] = trainer.slim.last_info_.m
        result["body"] = [p.detach().numpy().copy() for p in body.parameters()]
        # SlimTik alone, unequal shards, both reductions
        for reduction in ("mean", "sum"):
            h2, z, yy, sizes = _uneven_case(reduction)
            slim = SlimTik(h2, memory_depth=DEPTH, reduction=reduction)
            lo = sum(sizes[:rank])
            seq = []
            for k in range(z.shape[0]):
                slim.step(z[k, lo:lo + sizes[rank]], yy[k, lo:lo + sizes[rank]])
                seq.append(head_to_matrix(h2).numpy())
            result[f"uneven_{reduction}"] = seq
            result[f"uneven_{reduction}_m"] = slim.last_info_.m
        queue.put(result)   # numpy arrays travel by value (no shared-memory handles to outlive)
    except Exception:
        queue.put({"rank": rank, "error": traceback.format_exc()})
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tensors(v):
    if isinstance(v, list):
        return [torch.from_numpy(a) for a in v]
    return v


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo not available")
def test_two_gloo_ranks_equal_one_process_with_whole_batch():
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        procs = mp.start_processes(_worker, args=(_free_port(), queue), nprocs=WORLD, join=False,
                                   start_method="spawn")
        results = [queue.get(timeout=55) for _ in range(WORLD)]
        deadline = time.monotonic() + 20
        while not procs.join(timeout=1):
            if time.monotonic() > deadline:
                for p in procs.processes:
                    p.kill()
                raise TimeoutError("ranks did not exit")
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads
    for r in results:
        assert "error" not in r, f"rank {r['rank']} failed:\n{r['error']}"
    by_rank = {r["rank"]: {k: _tensors(v) for k, v in r.items()} for r in results}
    r0, r1 = by_rank[0], by_rank[1]

    # all ranks identical at every step (the collective hands both the same sums)
    for k in range(STEPS):
        assert torch.equal(r0["heads"][k], r1["heads"][k]), f"ranks differ at step {k}"
    for a, b in zip(r0["body"], r1["body"]):
        assert torch.equal(a, b)
    assert r0["m"] == BATCH   # the record counts the whole batch

    # == one process given the whole batch, at every step
    single = _single_process_run()
    errs = [_rel(r0["heads"][k], single[k]) for k in range(STEPS)]
    assert max(errs) <= 1e-12, f"max relative difference {max(errs):.3e} (per step: {errs})"
    assert math.isfinite(errs[-1])
    # the head actually moved (the comparison is not between two unchanged heads)
    assert _rel(single[-1], single[0]) > 1e-3

    for reduction in ("mean", "sum"):
        ref = _uneven_single(reduction)
        for k, W_ref in enumerate(ref):
            assert torch.equal(r0[f"uneven_{reduction}"][k], r1[f"uneven_{reduction}"][k])
            assert _rel(r0[f"uneven_{reduction}"][k], W_ref) <= 1e-12, (reduction, k)
        assert r0[f"uneven_{reduction}_m"] == 5 * 3 * 16
    assert time.perf_counter() - t0 < 60


# ----------------------------------------------------------------------------- the CLI under torchrun

@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo not available")
def test_torchrun_cli_train_matches_one_process(tmp_path):
    """`torchrun --nproc-per-node 2 -m slimfast train` = one process (float32: to rounding); rank 0 writes."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import slimfast
    from slimfast.cli import RunConfig, run_training
    from slimfast.problems import get_problem

    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(slimfast.__file__).resolve().parents[1]),
                                           os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "slimfast",
           "train", "--problem", "peaks", "--epochs", "2", "--n-train", "100", "--n-val", "40", "--out", str(out),
           "-q"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1            # only rank 0 prints and writes
    hist = json.loads((out / "history.json").read_text())
    assert hist["world_size"] == 2
    assert "736 bytes" in (out / "summary.md").read_text()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = run_training(get_problem("peaks", seed=0).subset(100, 40), RunConfig(epochs=2))
    finally:
        torch.set_num_threads(threads)
    # 100 = 3·32 + 4: the last batch of each epoch is split 2 + 2 across the ranks
    assert hist["steps"] == ref["steps"] == 8
    for key in ("batch_loss", "val_loss", "train_loss"):
        assert max(abs(a - b) / abs(b) for a, b in zip(hist[key], ref[key])) <= 1e-4, key
