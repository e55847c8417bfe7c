"""Which eigensolver should the slimTik step use? Time the candidates on the step's matrices.

For n in --sizes, on one matrix and on a batch of --batch matrices (Gram matrices G = Z Zᵀ/n_b
with n_b = 2n, as G_mem is), compare:
    torch      torch.linalg.eigh (MKL on CPU; batched)
    syevd      SciPy LAPACK dsyevd (divide and conquer), a Python loop over the batch
    syevr      SciPy LAPACK dsyevr (MRRR)
    jac-cold   the Jacobi of csrc/slimfast_jacobi.h (the GPU's rotations in round-robin order) run by
               one thread per matrix (slimfast._cpu.jacobi_eigh; OpenMP over the batch)
    jac-warm   the same Jacobi warm-started from the eigenvectors of a perturbed matrix
               (A + 1e-3·‖A‖·E): what a step can reuse from the previous step
Every variant is first checked against torch (eigenvalues to 1e-10·‖A‖, reconstruction), then
timed: warm-up, repeats, median. Ratios are time / torch time (lower is faster).

With --step, also times one compiled slimTik step (slimfast.backends.cpp, each eigensolver)
against the float64 torch twin and one torch.linalg.eigh, at B=1 and B=--batch.

    python benchmarks/bench_eigh.py [--sizes 9 17 64 128 257 512] [--batch 64] [--step | --step-only]
    python benchmarks/bench_eigh.py --against OTHER/_cpu.cpython-*.so [--sizes 5 17 64] [--batch 64]

``--against`` times this build's ``jacobi_eigh`` and another build's (e.g. the main branch's) in
one process, calls alternating, after checking both reconstruct the matrix: old/new ratios under
the same load.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy.linalg import lapack

from slimfast._torch_impl import _slimtik_step
from slimfast.backends import cpp
from slimfast.config import SolverConfig


def gram(B: int, n: int, seed: int) -> torch.Tensor:
    """[B, n, n] Gram matrices Z Zᵀ / n_b with n_b = 2n (full rank, spread spectrum)."""
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(B, n, 2 * n, generator=g, dtype=torch.float64)
    return Z @ Z.transpose(1, 2) / (2 * n)


def timed(fn: Callable[[], object], repeats: int, budget_s: float) -> float:
    """Median seconds of fn() after one warm-up call; fewer repeats when a call is slow."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    n = max(3, min(repeats, int(budget_s / max(first, 1e-9))))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def scipy_eigh(driver) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    def run(A: np.ndarray):
        out = [driver(a, lower=1)[:2] for a in A]
        return np.stack([w for w, _ in out]), np.stack([v for _, v in out])

    return run


def check(A: torch.Tensor, s: torch.Tensor, U: torch.Tensor, s_ref: torch.Tensor) -> float:
    """Largest of |s − s_torch| and ‖U diag(s) Uᵀ − A‖_F, relative to ‖A‖_2; asserts < 1e-10."""
    norm = torch.linalg.matrix_norm(A, ord=2)[:, None]
    err_s = ((s - s_ref).abs() / norm).max().item()
    recon = U @ torch.diag_embed(s) @ U.transpose(1, 2)
    err_r = ((recon - A).flatten(1).norm(dim=1) / norm[:, 0]).max().item()
    err = max(err_s, err_r)
    assert err < 1e-10, f"eigensolver disagrees with torch: {err:.2e}"
    return err


def bench_eigh(sizes: list[int], batch: int, repeats: int, budget_s: float, jacobi_max_n: int, batch_max_n: int) -> None:
    print(f"eigendecomposition, median of up to {repeats} repeats; ratio = time / torch.linalg.eigh")
    header = f"{'n':>5} {'B':>4} | " + " | ".join(f"{v:>20}" for v in ("torch", "syevd", "syevr", "jac-cold", "jac-warm"))
    print(header + " | max err")
    print("-" * len(header) + "-+--------")
    for n in sizes:
        for B in (1, batch) if n <= batch_max_n else (1,):
            A = gram(B, n, seed=n)
            E = gram(B, n, seed=n + 1)
            A_near = A + 1e-3 * torch.linalg.matrix_norm(A, ord=2)[:, None, None] * (E - E.mean())
            U0 = torch.linalg.eigh(A_near).eigenvectors
            s_ref, _ = torch.linalg.eigh(A)
            A_np = A.numpy()
            variants: dict[str, Callable[[], tuple]] = {
                "torch": lambda: torch.linalg.eigh(A),
                "syevd": lambda: scipy_eigh(lapack.dsyevd)(A_np),
                "syevr": lambda: scipy_eigh(lapack.dsyevr)(A_np),
            }
            if n <= jacobi_max_n or B == 1:
                variants["jac-cold"] = lambda: cpp.jacobi_eigh(A)
                variants["jac-warm"] = lambda: cpp.jacobi_eigh(A, U0)
            err = 0.0
            for fn in variants.values():  # correctness before timing
                s, U = (torch.as_tensor(x) for x in fn())
                err = max(err, check(A, s, U, s_ref))
            times = {name: timed(fn, repeats, budget_s) for name, fn in variants.items()}
            cells = []
            for name in ("torch", "syevd", "syevr", "jac-cold", "jac-warm"):
                if name not in times:
                    cells.append(f"{'(skipped)':>20}")
                    continue
                t = times[name]
                cells.append(f"{t * 1e3:10.3f} ms ({t / times['torch']:5.2f}x)")
            print(f"{n:5d} {B:4d} | " + " | ".join(cells) + f" | {err:.1e}", flush=True)


def step_problem(B: int, n_f: int, n_t: int, memory_empty: bool, seed: int = 0):
    """Statistics of a well-posed problem (C = W_true Z + noise), memory of 4 batches of n_b = 32."""
    g = torch.Generator().manual_seed(seed)
    n_b = 32
    Zs = [torch.randn(B, n_f, n_b, generator=g, dtype=torch.float64) for _ in range(1 if memory_empty else 5)]
    C = torch.randn(B, n_t, n_f, generator=g, dtype=torch.float64) @ Zs[-1]
    C = C + 0.1 * torch.randn(C.shape, generator=g, dtype=torch.float64)
    G = Zs[-1] @ Zs[-1].transpose(1, 2) / n_b
    G_mem = sum(z @ z.transpose(1, 2) for z in Zs) / n_b
    H = C @ Zs[-1].transpose(1, 2) / n_b
    c = (C * C).sum((1, 2)) / n_b
    m = torch.full((B,), float(n_b * n_t), dtype=torch.float64)
    W = 0.3 * torch.randn(B, n_t, n_f, generator=g, dtype=torch.float64)
    Lambda_prev = torch.full((B,), 0.05, dtype=torch.float64)
    return G_mem, G, H, c, m, W, Lambda_prev


def bench_step(batch: int, repeats: int, budget_s: float) -> None:
    print("\nslimTik step (mode sgcv, memory of 4 batches): compiled step vs torch twin and one eigh")
    config = SolverConfig()
    solvers = list(cpp.EIGENSOLVERS)
    head = " ".join(f"{s:>10}" for s in solvers)
    print(f"{'B':>4} {'n_f':>4} {'n_t':>4} | {'twin':>10} {'eigh':>10} | {head} | auto/eigh  twin/auto")
    for B, n_f, n_t in ((1, 257, 1), (1, 257, 10), (batch, 64, 1), (batch, 64, 10), (batch, 17, 3), (batch, 9, 1)):
        args = step_problem(B, n_f, n_t, memory_empty=False)
        W_ref, info_ref = _slimtik_step(*args, False, config)
        for s in solvers:  # correctness before timing
            W, info = cpp.slimtik_step(*args, False, config, eigensolver=s)
            assert torch.allclose(W, W_ref, rtol=1e-8, atol=1e-10 * W_ref.abs().max().item()), s
        t_twin = timed(lambda: _slimtik_step(*args, False, config), max(3, repeats // 4), budget_s)
        t_eigh = timed(lambda: torch.linalg.eigh(args[0]), repeats, budget_s)
        t = {s: timed(lambda s=s: cpp.slimtik_step(*args, False, config, eigensolver=s), repeats, budget_s) for s in solvers}
        cells = " ".join(f"{t[s] * 1e3:7.3f} ms" for s in solvers)
        print(
            f"{B:4d} {n_f:4d} {n_t:4d} | {t_twin * 1e3:7.2f} ms {t_eigh * 1e3:7.3f} ms | {cells} |"
            f" {t['auto'] / t_eigh:9.2f}  {t_twin / t['auto']:9.1f}",
            flush=True,
        )


def compare_jacobi(other_path: str, sizes: list[int], batch: int, repeats: int) -> None:
    """Old (other build) vs new (this build) ``_cpu.jacobi_eigh``, alternating calls in one process."""
    from bench_solver import load_cpu_module

    other, new = load_cpu_module(other_path), cpp._cpu
    print(f"# old = {other_path}\n# new = {new.__file__}")
    print(f"{'n':>4} {'B':>4} | {'old ms':>9} | {'new ms':>9} | old/new (median of pairs) | sweeps old, new | max err")
    gen = torch.Generator().manual_seed(0)
    for n in sizes:
        for B in (1, batch):
            X = torch.randn(B, n, 2 * n, dtype=torch.float64, generator=gen)
            A = (X @ X.transpose(1, 2)).contiguous()
            s, U = torch.empty(B, n, dtype=torch.float64), torch.empty(B, n, n, dtype=torch.float64)

            def run(mod):
                return mod.jacobi_eigh(B, n, A.data_ptr(), 0, s.data_ptr(), U.data_ptr(), 1e-14, 60)

            sweeps, errs = [], []
            for mod in (other, new):
                sweeps.append(run(mod))
                errs.append(float((U @ torch.diag_embed(s) @ U.transpose(1, 2) - A).abs().max() / A.abs().max()))
                assert errs[-1] < 1e-12, f"{mod.__file__}: reconstruction error {errs[-1]:.1e} at n={n}"
            t_old, t_new = [], []
            for _ in range(repeats):
                for mod, times in ((other, t_old), (new, t_new)):
                    t0 = time.perf_counter()
                    run(mod)
                    times.append(time.perf_counter() - t0)
            ratio = statistics.median(a / b for a, b in zip(t_old, t_new))
            print(f"{n:>4} {B:>4} | {statistics.median(t_old) * 1e3:9.3f} | {statistics.median(t_new) * 1e3:9.3f} | "
                  f"{ratio:25.2f} | {sweeps[0]:>6}, {sweeps[1]:<6} | {max(errs):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[9, 17, 64, 128, 257, 512])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timing per cell, at most")
    parser.add_argument("--jacobi-max-n", type=int, default=128, help="largest n for batched Jacobi (slow)")
    parser.add_argument("--batch-max-n", type=int, default=257, help="largest n timed as a batch")
    parser.add_argument("--step", action="store_true", help="also time the compiled slimTik step")
    parser.add_argument("--step-only", action="store_true", help="only time the compiled slimTik step")
    parser.add_argument("--against", metavar="PATH", help="another build's _cpu module: old/new Jacobi ratios")
    args = parser.parse_args()
    if args.against:
        compare_jacobi(args.against, args.sizes, args.batch, args.repeats)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; slimfast._cpu openmp={cpp._cpu.openmp}")
    if not args.step_only:
        bench_eigh(args.sizes, args.batch, args.repeats, args.budget, args.jacobi_max_n, args.batch_max_n)
    if args.step or args.step_only:
        bench_step(args.batch, args.repeats, args.budget)


if __name__ == "__main__":
    main()
