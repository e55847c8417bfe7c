"""Per-step time of the batched slimTik solver, every CPU backend side by side.

Correctness first: every backend's W and info must agree with the float64 torch twin before
anything is timed. Then median times (after warm-up) for (n_f, n_t) × B, with ratios against
one ``torch.linalg.eigh`` of the same matrices and against the plain torch path (the twin:
``torch.linalg.eigh`` + torch sGCV). The λ-search share is measured as the time the sGCV
search adds over a constant-λ step of the same backend.

    python benchmarks/bench_solver.py [--quick] [--sizes 9x1,257x1] [--batches 1,64] [--backends cpp,torch]
    python benchmarks/bench_solver.py --wide [--quick]     # wide heads: dense vs sample side
    python benchmarks/bench_solver.py --against OTHER/_cpu.cpython-*.so [--sizes ...] [--batches ...]

``--against`` times this build's cpp step and another build's ``_cpu`` module (e.g. the main
branch's) in one process, calls alternating, after checking that both agree with the twin: the
old/new ratio is then measured under the same load, which on a shared machine moves single
medians by 2×.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import time
from typing import Callable

import torch

from slimfast import SolverConfig
from slimfast.backends import load_backend

F64 = torch.float64
SIZES = [(9, 1), (17, 72), (257, 1), (512, 10)]
BATCHES = [1, 64]
MEMORY_DEPTH = 5


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 2, budget_s: float = 20.0) -> float:
    """Median wall time of ``fn`` in seconds, stopping early when ``budget_s`` is spent."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and len(times) >= 3:
            break
    return statistics.median(times)


def make_inputs(B: int, n_f: int, n_t: int, seed: int = 0) -> dict[str, object]:
    """Statistics of a step with a full memory of r = 5 earlier batches of n_b = 32 samples."""
    g = torch.Generator().manual_seed(seed)
    n_b = 32
    beta2 = 1.0 / n_b
    W_true = torch.randn(B, n_t, n_f, dtype=F64, generator=g)
    blocks = [torch.randn(B, n_f, n_b, dtype=F64, generator=g) for _ in range(MEMORY_DEPTH + 1)]
    Z = blocks[-1]
    C = W_true @ Z + 0.1 * torch.randn(B, n_t, n_b, dtype=F64, generator=g)
    G = beta2 * Z @ Z.transpose(1, 2)
    G_mem = sum(beta2 * Zj @ Zj.transpose(1, 2) for Zj in blocks)
    return dict(
        G_mem=G_mem.contiguous(), G=G.contiguous(), H=(beta2 * C @ Z.transpose(1, 2)).contiguous(),
        c=beta2 * (C * C).sum((1, 2)), m=torch.full((B,), float(n_b * n_t), dtype=F64),
        W=(W_true + 0.3 * torch.randn(B, n_t, n_f, dtype=F64, generator=g)).contiguous(),
        Lambda_prev=torch.full((B,), 0.05, dtype=F64), memory_empty=False,
    )


def load_cpu_module(path: str):
    """Another build's compiled ``_cpu`` module, imported from ``path`` under a private name."""
    spec = importlib.util.spec_from_file_location("slimfast_other._cpu", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load a compiled module from {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def raw_step(mod, inp: dict[str, object], config: SolverConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The step through a ``_cpu`` module's binding (what ``backends.cpp.slimtik_step`` calls)."""
    W = inp["W"]
    B, n_t, n_f = W.shape
    W_new, info = torch.empty_like(W), torch.empty(B, 6, dtype=F64)
    t = {k: inp[k] for k in ("G_mem", "G", "H", "c", "m", "W", "Lambda_prev")}
    mod.slimtik_step(B, n_f, n_t, *(x.data_ptr() for x in t.values()), bool(inp["memory_empty"]),
                     mod.StepOptions(**config.kernel_options()), W_new.data_ptr(), info.data_ptr())
    return W_new, info


def compare_builds(other_path: str, sizes, batches, repeats: int) -> None:
    """Old (other build) vs new (this build) cpp step, alternating calls in one process."""
    from slimfast import _cpu

    other = load_cpu_module(other_path)
    sgcv = SolverConfig()
    twin = load_backend("torch")
    print(f"# old = {other_path}\n# new = {_cpu.__file__}")
    print(f"{'n_f':>4} {'n_t':>4} {'B':>3} | {'old ms':>9} | {'new ms':>9} | old/new (median of pairs) | max rel err")
    for n_f, n_t in sizes:
        for B in batches:
            inp = make_inputs(B, n_f, n_t)
            W_ref, info_ref = twin.slimtik_step(**inp, config=sgcv)
            errs = []
            for mod in (other, _cpu):
                W_new, info = raw_step(mod, inp, sgcv)
                errs.append(max(rel(W_new, W_ref), rel(info, info_ref)))
                assert errs[-1] < 1e-8, f"{mod.__file__} disagrees with the twin at n_f={n_f}: {errs[-1]:.2e}"
            for mod in (other, _cpu):  # warm-up
                raw_step(mod, inp, sgcv)
            t_old, t_new = [], []
            for _ in range(repeats):
                for mod, times in ((other, t_old), (_cpu, t_new)):
                    t0 = time.perf_counter()
                    raw_step(mod, inp, sgcv)
                    times.append(time.perf_counter() - t0)
            ratio = statistics.median(a / b for a, b in zip(t_old, t_new))
            print(f"{n_f:>4} {n_t:>4} {B:>3} | {statistics.median(t_old) * 1e3:9.3f} | "
                  f"{statistics.median(t_new) * 1e3:9.3f} | {ratio:25.2f} | {max(errs):.1e}")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--wide", action="store_true", help="only the wide-head case (bench_wide.py)")
    parser.add_argument("--sizes", default=",".join(f"{a}x{b}" for a, b in SIZES))
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--backends", default="cpp,numba,torch",
                        help="backends to time (torch, the reference, is always checked and timed)")
    parser.add_argument("--against", metavar="PATH", help="another build's _cpu module: old/new cpp step ratios")
    args = parser.parse_args()
    if args.wide:
        from bench_wide import main_wide

        main_wide(quick=args.quick)
        return
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    repeats = 5 if args.quick else 15
    if args.against:
        compare_builds(args.against, sizes, batches, 20 * repeats)
        return

    names = [n for n in ("cpp", "numba", "torch") if n in args.backends.split(",") or n == "torch"]
    backends = {n: load_backend(n) for n in names}
    backends = {n: m for n, m in backends.items() if m is not None}
    sgcv, const = SolverConfig(), SolverConfig(mode="constant", lambda_const=0.01)
    print(f"# bench_solver  {time.strftime('%Y-%m-%d')}  {platform.processor() or platform.machine()}  "
          f"torch {torch.__version__} threads={torch.get_num_threads()}  backends={list(backends)}")
    header = (f"{'n_f':>4} {'n_t':>4} {'B':>3} | {'eigh ms':>9} | " + " | ".join(f"{n + ' ms':>10}" for n in backends)
              + " | step/eigh (cpp) | torch/cpp | numba/cpp | search share (cpp) | max rel err")
    print(header)
    print("-" * len(header))
    targets: list[tuple[str, bool, str]] = []
    for n_f, n_t in sizes:
        for B in batches:
            inp = make_inputs(B, n_f, n_t)
            W_ref, info_ref = backends["torch"].slimtik_step(**inp, config=sgcv)
            errs = []
            for name, mod in backends.items():
                W_new, info = mod.slimtik_step(**inp, config=sgcv)
                e = max(rel(W_new, W_ref), rel(info, info_ref))
                assert e < 1e-8, f"{name} disagrees with the torch twin at n_f={n_f}, n_t={n_t}, B={B}: {e:.2e}"
                errs.append(e)
            t_eigh = median_time(lambda: torch.linalg.eigh(inp["G_mem"]), repeats)
            t = {n: median_time(lambda m=m: m.slimtik_step(**inp, config=sgcv), repeats) for n, m in backends.items()}
            cells = [f"{t[n] * 1e3:10.3f}" for n in backends]
            extra = "n/a"
            if "cpp" in t:
                t_const = median_time(lambda: backends["cpp"].slimtik_step(**inp, config=const), repeats)
                share = max(0.0, (t["cpp"] - t_const)) / t["cpp"]
                numba_ratio = f"{t['numba'] / t['cpp']:9.2f}" if "numba" in t else "      n/a"
                extra = (f"{t['cpp'] / t_eigh:15.2f} | {t['torch'] / t['cpp']:9.2f} | {numba_ratio} | "
                         f"{share * 100:17.1f}%")
                if n_f == 257 and B == 1:
                    targets.append(("cpp step ≤ 1.5× torch.linalg.eigh (n_f=257, B=1)", t["cpp"] <= 1.5 * t_eigh,
                                    f"{t['cpp'] / t_eigh:.2f}×"))
                    targets.append(("λ search + update ≤ 20% of the step (n_f=257, B=1)", share <= 0.2,
                                    f"{share * 100:.1f}%"))
            print(f"{n_f:>4} {n_t:>4} {B:>3} | {t_eigh * 1e3:9.3f} | " + " | ".join(cells) + f" | {extra} | {max(errs):.1e}")
    if "cpp" in backends and 64 in batches:
        inp = make_inputs(64, 64, 1)
        t_cpp = median_time(lambda: backends["cpp"].slimtik_step(**inp, config=sgcv), repeats)
        t_torch = median_time(lambda: backends["torch"].slimtik_step(**inp, config=sgcv), repeats)
        print(f"  64   1  64 | torch {t_torch * 1e3:.3f} ms, cpp {t_cpp * 1e3:.3f} ms, torch/cpp = {t_torch / t_cpp:.2f}")
        targets.append(("cpp ≥ 1.5× torch path (B=64, n_f=64)", t_torch / t_cpp >= 1.5, f"{t_torch / t_cpp:.2f}×"))
    print("\n# targets")
    for what, ok, value in targets:
        print(f"{'PASS' if ok else 'MISS'}  {what}: {value}")


if __name__ == "__main__":
    main()
