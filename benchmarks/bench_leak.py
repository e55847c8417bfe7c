"""Resident memory over a long SlimTik loop: does a 10,000-step run stay flat?

Loop: a small ``nn.Linear`` head (default 16 → 4, batch 32, memory depth 5) solved by ``SlimTik``
on fresh random batches every step (``--mode slimtik``), or the whole ``SlimTrain`` step with a
small tanh body and Adam (``--mode slimtrain``). Resident set size (RSS) is read from psutil if
installed, else ``/proc/self/statm``, after ``gc.collect()``, every ``--interval`` steps.

What is expected to grow: SlimTik keeps five per-step histories (``lambda_history_``,
``Lambda_history_``, ``sgcv_history_``, ``rel_residual_history_``, ``cond_history_``;
``alpha_history_`` is derived from ``Lambda_history_``): one Python float (a 32-byte block) and
one list slot (8 B) each per step, ~200 B per step (≈ 2 MB over 10,000 steps), by design. The script reports that size (measured with ``sys.getsizeof``) next to the
RSS growth; ``--clear-histories`` empties them at every report, so what remains is anything
else (a leak would show as growth proportional to the number of steps).

Correctness first: before the loop, the first step's head must be finite and agree with the
functional solver on the same statistics; after the loop the head must still be finite.

    python benchmarks/bench_leak.py [--steps 10000] [--interval 1000] [--backend cpp]
                                    [--mode slimtik|slimtrain] [--clear-histories]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time

import torch
from torch import nn

import slimfast
from slimfast import SlimTikState, slimtik_step
from slimfast.heads import head_statistics, head_to_matrix
from slimfast.optim import _HISTORIES, SlimTik
from slimfast.train import SlimTrain


def rss_bytes() -> int:
    """Resident set size of this process."""
    try:
        import psutil  # type: ignore[import-not-found]

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def history_bytes(slim: SlimTik) -> int:
    """Memory held by SlimTik's history lists: list buffers plus float objects, each rounded up
    to pymalloc's 16-byte size classes (a 24-byte float occupies a 32-byte block)."""
    total = 0
    for name in _HISTORIES:
        values = getattr(slim, name)
        total += sys.getsizeof(values) + sum(-(-sys.getsizeof(v) // 16) * 16 for v in values)
    return total


def check_first_step(backend: str | None, n_in: int, n_out: int, batch: int) -> str:
    torch.manual_seed(0)
    head = nn.Linear(n_in, n_out).double()
    W0 = head_to_matrix(head).clone()
    x, y = torch.randn(batch, n_in, dtype=torch.float64), torch.randn(batch, n_out, dtype=torch.float64)
    rec = SlimTik(head, memory_depth=5, backend=backend).step(x, y)
    G, H, c, m = head_statistics(head, x, y)
    state = SlimTikState(1, n_in + 1, n_out, memory_depth=5)
    W_ref, _ = slimtik_step(state, G[None], H[None], c.reshape(1), m, W0[None], backend="torch")
    err = float((head_to_matrix(head) - W_ref[0]).norm() / W_ref[0].norm())
    assert torch.isfinite(head.weight).all() and err < 1e-9, f"first step disagrees with the torch twin: {err:.2e}"
    return f"{rec.backend} (first step vs torch twin: rel. diff {err:.1e})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--interval", type=int, default=1_000)
    ap.add_argument("--backend", default=None, help="force a solver backend (default: best available)")
    ap.add_argument("--mode", choices=("slimtik", "slimtrain"), default="slimtik")
    ap.add_argument("--n-in", type=int, default=16)
    ap.add_argument("--n-out", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--clear-histories", action="store_true", help="empty SlimTik's histories at every report")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"slimfast {slimfast.__version__}, torch {torch.__version__}, python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    print(f"mode {args.mode}, head Linear({args.n_in} → {args.n_out}), batch {args.batch}, memory depth 5, "
          f"{args.steps} steps, histories {'cleared at each report' if args.clear_histories else 'kept'}")
    print("check: backend", check_first_step(args.backend, args.n_in, args.n_out, args.batch))

    torch.manual_seed(1)
    head = nn.Linear(args.n_in, args.n_out)
    slim = SlimTik(head, memory_depth=5, backend=args.backend)
    trainer = None
    if args.mode == "slimtrain":
        body = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, args.n_in), nn.Tanh())
        trainer = SlimTrain(body, head, torch.optim.Adam(body.parameters(), lr=1e-3), slim)
    g = torch.Generator().manual_seed(2)
    n_x = 8 if trainer is not None else args.n_in

    rows: list[tuple[int, int, int, float]] = []
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        x = torch.randn(args.batch, n_x, generator=g)
        y = torch.randn(args.batch, args.n_out, generator=g)
        if trainer is not None:
            trainer.train_step(x, y)
        else:
            slim.step(x, y)
        if step == 1 or step % args.interval == 0:
            hist = history_bytes(slim)
            if args.clear_histories:
                for name in _HISTORIES:
                    getattr(slim, name).clear()
            gc.collect()
            rows.append((step, rss_bytes(), hist, time.perf_counter() - t0))
    assert torch.isfinite(head.weight).all() and torch.isfinite(head.bias).all(), "non-finite head after the loop"

    mib = 1024.0 ** 2
    print(f"\n{'step':>7} {'RSS MiB':>9} {'Δ vs step 1 MiB':>16} {'histories MiB':>14} {'elapsed s':>10}")
    for step, rss, hist, elapsed in rows:
        print(f"{step:>7} {rss / mib:>9.2f} {(rss - rows[0][1]) / mib:>16.2f} {hist / mib:>14.3f} {elapsed:>10.1f}")
    by_step = {r[0]: r for r in rows}
    lo, hi = (1_000, args.steps) if 1_000 in by_step and args.steps in by_step else (rows[1][0], rows[-1][0])
    growth = by_step[hi][1] - by_step[lo][1]
    hist_growth = 0 if args.clear_histories else by_step[hi][2] - by_step[lo][2]
    per_step = growth / max(hi - lo, 1)
    print(f"\nRSS growth step {lo} → {hi}: {growth / mib:+.2f} MiB ({per_step:+.1f} B/step); "
          f"of which SlimTik histories (by design): {hist_growth / mib:+.2f} MiB; "
          f"other: {(growth - hist_growth) / mib:+.2f} MiB")
    print(f"time per step: {1e6 * rows[-1][3] / args.steps:.0f} µs")


if __name__ == "__main__":
    main()
