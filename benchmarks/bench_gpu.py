"""GPU benchmark of the CUDA backend: correctness first, then timings with accuracy next to each.

1. Correctness: the CUDA step (both eigensolvers) against the float64 torch twin on the GPU, every
   λ mode, empty and full memory. Failures are reported, the timings still run, exit status 1.
2. Eigendecomposition, B ∈ {1, 16, 256, 1024} × n ∈ {16, 32, 64, 128, 257, 512}: our block-parallel
   Jacobi (cold, and warm from the previous window's eigenvectors) vs torch.linalg.eigh (cuSOLVER)
   and cupy.linalg.eigh when cupy is importable. Accuracy: max |s − s_ref| / ‖A‖₂ and the residual
   ‖A U − U diag(s)‖_F / ‖A‖_F.
3. Full step (sGCV, n_t = 10, memory of r + 1 = 6 batches): ours ("auto", Jacobi cold/warm,
   cuSOLVER eigenpairs) vs the torch twin on the GPU (torch.linalg.eigh + torch sGCV, the plain
   torch path). Accuracy: max relative error of W and info against the twin.
4. Training step on the built-in problems: slimTrain (Adam on the body + SlimTik head on the GPU)
   vs Adam on body and head.

Inputs: G_mem = Σ of 6 batch Grams β² Z Zᵀ (n_b = max(32, n/4) samples, features scaled over two
decades, so G_mem is full rank with a graded spectrum); the warm start uses the eigenvectors of the
window one batch earlier, as a training step would. Combos whose memory estimate exceeds ~20 GB or
whose baseline takes > 2 s are skipped; a time budget keeps the whole run under ~4 minutes.
Times are medians of CUDA-event timings after a warm-up.

    python benchmarks/bench_gpu.py [--quick] [--budget 170] [--sizes 16,64] [--batches 1,256]
    python benchmarks/bench_gpu.py --smoke     # no GPU: a tiny CPU dry run (host emulation)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from collections.abc import Callable

import torch

from slimfast import SolverConfig
from slimfast._torch_impl import INFO_FIELDS, _slimtik_step

F64 = torch.float64
BATCHES = [1, 16, 256, 1024]
SIZES = [16, 32, 64, 128, 257, 512]
MEMORY_DEPTH = 5
N_T = 10
MAX_BYTES = 20e9
MAX_BASELINE_S = 2.0


# ------------------------------------------------------------------ timing


class Clock:
    """Median times in ms: CUDA events on the GPU, perf_counter on the CPU (smoke run)."""

    def __init__(self, device: torch.device, quick: bool) -> None:
        self.gpu = device.type == "cuda"
        self.deadline = math.inf
        self.max_reps = 5 if quick else 15

    def start_budget(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    def sync(self) -> None:
        if self.gpu:
            torch.cuda.synchronize()

    def out_of_time(self) -> bool:
        return time.perf_counter() > self.deadline

    def once_s(self, fn: Callable[[], object]) -> float:
        """Wall time of one synchronised call (also the warm-up)."""
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0

    def median_ms(self, fn: Callable[[], object], target_s: float = 0.6) -> float:
        once = self.once_s(fn)  # warm-up
        if once > 1.0:  # slow: one more call is the measurement
            return self.once_s(fn) * 1e3
        reps = max(1, min(self.max_reps, int(target_s / max(once, 1e-6))))
        times = []
        for _ in range(reps):
            if self.gpu:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


# ------------------------------------------------------------------ inputs


def make_inputs(B: int, n: int, n_t: int, device: torch.device, seed: int = 0) -> dict:
    """Step inputs of a full memory (6 batches) and the previous window's G_mem (for warm starts)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    n_b = max(32, n // 4)
    beta2 = 1.0 / n_b
    scale = 10.0 ** (-2.0 * torch.arange(n, dtype=F64, device=device) / max(n - 1, 1))

    def block() -> torch.Tensor:
        return scale[:, None] * torch.randn(B, n, n_b, dtype=F64, device=device, generator=gen)

    first = block()
    G_prev = beta2 * first @ first.mT
    G_mem = torch.zeros_like(G_prev)
    for _ in range(MEMORY_DEPTH - 1):
        Z = block()
        Gz = beta2 * Z @ Z.mT
        G_prev += Gz
        G_mem += Gz
        del Z, Gz
    Z = block()
    G = beta2 * Z @ Z.mT
    G_mem += G
    W_true = torch.randn(B, n_t, n, dtype=F64, device=device, generator=gen)
    C = W_true @ Z + 0.1 * torch.randn(B, n_t, n_b, dtype=F64, device=device, generator=gen)
    return dict(
        G_mem=G_mem.contiguous(), G=G.contiguous(), H=(beta2 * C @ Z.mT).contiguous(),
        c=beta2 * (C * C).sum((1, 2)), m=torch.full((B,), float(n_b * n_t), dtype=F64, device=device),
        W=(W_true + 0.3 * torch.randn(B, n_t, n, dtype=F64, device=device, generator=gen)).contiguous(),
        Lambda_prev=torch.full((B,), 0.05, dtype=F64, device=device), memory_empty=False, G_prev=G_prev,
    )


def step_args(inp: dict) -> dict:
    return {k: v for k, v in inp.items() if k != "G_prev"}


def bytes_estimate(B: int, n: int) -> float:
    """Rough peak: inputs, eigenvectors, twin intermediates and our workspace, ~20 n² doubles each."""
    return 8.0 * B * n * n * 20


# ------------------------------------------------------------------ accuracy


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def step_error(W: torch.Tensor, info: torch.Tensor, W_ref: torch.Tensor, info_ref: torch.Tensor) -> float:
    """Largest relative error of W (per problem) and of each info column (λ relative to Λ)."""
    w_scale = W_ref.abs().amax((1, 2), keepdim=True).clamp_min(1e-300)
    err = float(((W - W_ref) / w_scale).abs().max())
    for j, name in enumerate(INFO_FIELDS):
        denom = info_ref[:, 1] if name == "lambda_" else info_ref[:, j].abs().clamp_min(1e-300)
        err = max(err, float(((info[:, j] - info_ref[:, j]).abs() / denom).max()))
    return err


def eig_accuracy(A: torch.Tensor, s: torch.Tensor, U: torch.Tensor, s_ref: torch.Tensor) -> tuple[float, float]:
    """(max |s − s_ref| / ‖A‖₂, max ‖A U − U diag s‖_F / ‖A‖_F) over the batch."""
    norm2 = s_ref.abs().amax(-1).clamp_min(1e-300)
    e_s = float(((s - s_ref).abs().amax(-1) / norm2).max())
    resid = torch.linalg.matrix_norm(A @ U - U * s[..., None, :]) / torch.linalg.matrix_norm(A).clamp_min(1e-300)
    return e_s, float(resid.max())


def fmt_ms(t: float | None) -> str:
    return "      -" if t is None else (f"{t:7.3f}" if t < 100 else f"{t:7.1f}")


# ------------------------------------------------------------------ sections


def correctness(cuda, device: torch.device, smoke: bool, failures: list[str]) -> None:
    print("\n## 1. correctness: CUDA step vs float64 torch twin (max relative error, tolerance 1e-8)")
    configs = {"sgcv": SolverConfig(), "constant": SolverConfig(mode="constant", lambda_const=0.01),
               "reference": SolverConfig(mode="reference")}
    sizes = [5, 12] if smoke else [16, 64, 130]
    for n in sizes:
        for memory_empty in (True, False):
            inp = step_args(make_inputs(4 if smoke else 16, n, 3, device, seed=n))
            inp["memory_empty"] = memory_empty
            if memory_empty:
                inp["G_mem"] = inp["G"]
            cells = []
            for name, config in configs.items():
                W_ref, info_ref = _slimtik_step(**inp, config=config)
                for solver in ("jacobi", "cusolver"):
                    W, info = cuda_step(cuda, smoke, inp, config, eigensolver=solver)
                    e = step_error(W, info, W_ref, info_ref)
                    cells.append(f"{name}/{solver} {e:.1e}")
                    if not e < 1e-8:
                        failures.append(f"step n={n} memory_empty={memory_empty} {name}/{solver}: error {e:.2e}")
            print(f"  n={n:4d} memory={'empty' if memory_empty else 'full '}  " + "  ".join(cells))
    print("  " + ("FAILURES: " + "; ".join(failures) if failures else "all agree"))


def _emulation():
    """tests/block_emulation.py: the kernels' block code on the host (slimfast._cpu), for --smoke."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests import block_emulation

    return block_emulation


def cuda_step(cuda, smoke: bool, inp: dict, config: SolverConfig, **kwargs):
    if smoke:
        if kwargs.get("eigensolver") == "auto":
            kwargs["eigensolver"] = "jacobi"
        return _emulation().emulate_slimtik_step(**inp, config=config, **kwargs)
    return cuda.slimtik_step(**inp, config=config, **kwargs)


def cuda_eigh(cuda, smoke: bool, A: torch.Tensor, U0: torch.Tensor | None = None, sweeps: bool = False):
    """Our Jacobi (tolerance 1e-14); with ``sweeps`` also the sweep count (synchronises)."""
    return (_emulation().emulate_jacobi_eigh if smoke else cuda.jacobi_eigh)(A, U0, tol=1e-14, return_sweeps=sweeps)


def _cases(sizes, batches, clock: Clock):
    """(n, B, row tag) of every case that fits the memory estimate and the time budget (the others
    are printed as skipped)."""
    for n in sizes:
        for B in batches:
            tag = f"{B:>5} {n:>4} |"
            if bytes_estimate(B, n) > MAX_BYTES:
                print(f"{tag} skipped (memory estimate {bytes_estimate(B, n) / 1e9:.0f} GB)")
            elif clock.out_of_time():
                print(f"{tag} skipped (time budget)")
            else:
                yield n, B, tag


def eigh_section(cuda, cp, device, clock: Clock, sizes, batches, smoke: bool, rows: list, failures: list) -> None:
    print("\n## 2. eigendecomposition (ms; accuracy: max|Δs|/‖A‖₂, residual/‖A‖_F; sweeps in brackets)")
    hdr = (f"{'B':>5} {'n':>4} | {'torch eigh':>10} {'acc':>15} | {'ours cold':>10} {'acc':>15} {'(sw)':>4} | "
           f"{'ours warm':>10} {'acc':>15} {'(sw)':>4} | {'cupy eigh':>10} {'acc':>15} | "
           "torch/cold torch/warm cupy/cold")
    print(hdr)
    print("-" * len(hdr))
    for n, B, tag in _cases(sizes, batches, clock):
        inp = make_inputs(B, n, 1, device, seed=B * 1000 + n)
        A, G_prev = inp["G_mem"], inp["G_prev"]
        del inp
        once = clock.once_s(lambda: torch.linalg.eigh(A))
        if once > MAX_BASELINE_S:
            print(f"{tag} skipped (torch.linalg.eigh took {once:.1f} s)")
            continue
        s_ref, U_ref = torch.linalg.eigh(A)
        U0 = torch.linalg.eigh(G_prev)[1].contiguous()
        del G_prev
        t_torch = clock.median_ms(lambda: torch.linalg.eigh(A))
        acc_torch = eig_accuracy(A, s_ref, U_ref, s_ref)
        s, U, sw_cold = cuda_eigh(cuda, smoke, A, sweeps=True)
        acc_cold = eig_accuracy(A, s, U, s_ref)
        t_cold = clock.median_ms(lambda: cuda_eigh(cuda, smoke, A))
        s, U, sw_warm = cuda_eigh(cuda, smoke, A, U0, sweeps=True)
        acc_warm = eig_accuracy(A, s, U, s_ref)
        t_warm = clock.median_ms(lambda: cuda_eigh(cuda, smoke, A, U0))
        for label, acc in (("cold", acc_cold), ("warm", acc_warm)):
            if not (acc[0] < 1e-11 and acc[1] < 1e-11):
                failures.append(f"jacobi_eigh {label} B={B} n={n}: accuracy {acc[0]:.1e}, {acc[1]:.1e}")
        t_cupy = acc_cupy = None
        if cp is not None:
            Ac = cp.from_dlpack(A)
            with cp.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
                w, V = cp.linalg.eigh(Ac)
                acc_cupy = eig_accuracy(A, torch.from_dlpack(w), torch.from_dlpack(V), s_ref)
                t_cupy = clock.median_ms(lambda: cp.linalg.eigh(Ac))
            del Ac, w, V
        ratio = lambda t: f"{t_torch / t:9.2f}" if t else "      n/a"  # noqa: E731
        cupy_ratio = f"{t_cupy / t_cold:9.2f}" if t_cupy else "      n/a"
        acc_str = lambda a: "      n/a      " if a is None else f"{a[0]:.0e},{a[1]:.0e}".rjust(15)  # noqa: E731
        print(f"{tag} {fmt_ms(t_torch):>10} {acc_str(acc_torch)} | {fmt_ms(t_cold):>10} {acc_str(acc_cold)} "
              f"{sw_cold:>4} | {fmt_ms(t_warm):>10} {acc_str(acc_warm)} {sw_warm:>4} | "
              f"{fmt_ms(t_cupy):>10} {acc_str(acc_cupy)} | {ratio(t_cold)} {ratio(t_warm)} {cupy_ratio}")
        rows.append(dict(B=B, n=n, torch=t_torch, cold=t_cold, warm=t_warm, cupy=t_cupy))
        del A, U0, s_ref, U_ref, s, U
        if device.type == "cuda":
            torch.cuda.empty_cache()


def step_section(cuda, device, clock: Clock, sizes, batches, smoke: bool, rows: list, failures: list) -> None:
    print(f"\n## 3. full step, sGCV, n_t={N_T}, full memory (ms; accuracy: max relative error vs the twin)")
    hdr = (f"{'B':>5} {'n':>4} | {'twin':>9} | {'ours auto':>9} {'err':>7} {'(pick)':>8} | {'jacobi':>9} {'err':>7} | "
           f"{'jac warm':>9} {'err':>7} | {'cusolver':>9} {'err':>7} | twin/auto twin/warm")
    print(hdr)
    print("-" * len(hdr))
    config = SolverConfig()
    for n, B, tag in _cases(sizes, batches, clock):
        full = make_inputs(B, n, N_T, device, seed=B * 1000 + n + 1)
        U0 = torch.linalg.eigh(full.pop("G_prev"))[1].contiguous()
        inp = full
        once = clock.once_s(lambda: _slimtik_step(**inp, config=config))
        if once > MAX_BASELINE_S:
            print(f"{tag} skipped (torch twin step took {once:.1f} s)")
            continue
        W_ref, info_ref = _slimtik_step(**inp, config=config)
        t_twin = clock.median_ms(lambda: _slimtik_step(**inp, config=config))
        variants = {"auto": {}, "jacobi": dict(eigensolver="jacobi"),
                    "warm": dict(eigensolver="jacobi", U0=U0), "cusolver": dict(eigensolver="cusolver")}
        t, err = {}, {}
        for name, kw in variants.items():
            kw = dict(kw)
            if name == "auto":
                kw["eigensolver"] = "auto"
            W, info = cuda_step(cuda, smoke, inp, config, **kw)
            err[name] = step_error(W, info, W_ref, info_ref)
            if not err[name] < 1e-8:
                failures.append(f"step {name} B={B} n={n}: error {err[name]:.2e}")
            t[name] = clock.median_ms(lambda kw=kw: cuda_step(cuda, smoke, inp, config, **kw))
        pick = "jacobi" if smoke else cuda.choose_eigensolver(B, n)
        print(f"{tag} {fmt_ms(t_twin):>9} | {fmt_ms(t['auto']):>9} {err['auto']:7.0e} {pick:>8} | "
              f"{fmt_ms(t['jacobi']):>9} {err['jacobi']:7.0e} | {fmt_ms(t['warm']):>9} {err['warm']:7.0e} | "
              f"{fmt_ms(t['cusolver']):>9} {err['cusolver']:7.0e} | {t_twin / t['auto']:9.2f} "
              f"{t_twin / t['warm']:9.2f}")
        rows.append(dict(B=B, n=n, twin=t_twin, **t))
        del inp, full, U0, W_ref, info_ref
        if device.type == "cuda":
            torch.cuda.empty_cache()


def training_section(device, smoke: bool, quick: bool, rows: list) -> None:
    print("\n## 4. training step: slimTrain (Adam body + SlimTik head) vs Adam (body and head), ms per step")
    try:
        from slimfast.heads import head_shape
        from slimfast.optim import SlimTik
        from slimfast.problems import get_problem
        from slimfast.train import SlimTrain
    except ImportError as exc:
        print(f"  skipped: {exc}")
        return
    n_steps = 5 if smoke else (15 if quick else 40)
    names = ["peaks"] if smoke else ["peaks", "cdr", "digits"]
    for name in names:
        try:
            t0 = time.perf_counter()
            prob = get_problem(name, seed=0)
            load_s = time.perf_counter() - t0
        except Exception as exc:  # a problem that cannot be built here is reported, not fatal
            print(f"  {name:7s} skipped: {exc}")
            continue
        bs = prob.batch_size
        n_avail = prob.n_train // bs
        batches = [(prob.x_train[i * bs:(i + 1) * bs].to(device), prob.y_train[i * bs:(i + 1) * bs].to(device))
                   for i in range(min(n_avail, n_steps + 5))]

        def run(step: Callable[[torch.Tensor, torch.Tensor], float]) -> float:
            times = []
            for i in range(n_steps + 5):
                x, y = batches[i % len(batches)]
                t0 = time.perf_counter()
                step(x, y)  # returns float(loss): synchronised
                if i >= 5:
                    times.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(times)

        body, head = prob.make_body().to(device), prob.make_head().to(device)
        slim = SlimTik(head, memory_depth=MEMORY_DEPTH)
        trainer = SlimTrain(body, head, torch.optim.Adam(body.parameters(), lr=1e-3), slim)
        t_slim = run(trainer.train_step)
        backend = slim.last_info_.backend if slim.last_info_ is not None else "?"

        body2, head2 = prob.make_body().to(device), prob.make_head().to(device)
        opt = torch.optim.Adam(list(body2.parameters()) + list(head2.parameters()), lr=1e-3)
        mse = torch.nn.MSELoss()

        def adam_step(x: torch.Tensor, y: torch.Tensor) -> float:
            opt.zero_grad(set_to_none=True)
            loss = mse(head2(body2(x)), y)
            loss.backward()
            opt.step()
            return float(loss.detach())

        t_adam = run(adam_step)
        n_t, n_f = head_shape(head)
        print(f"  {name:7s} (head n_f={n_f}, n_t={n_t}, batch {bs}, data {load_s:.1f} s): slimTrain {t_slim:7.3f} ms "
              f"[{backend}]  Adam {t_adam:7.3f} ms  ratio {t_slim / t_adam:5.2f}")
        rows.append(dict(problem=name, slim=t_slim, adam=t_adam))


def targets(eig_rows: list, step_rows: list, train_rows: list, have_cupy: bool) -> None:
    print("\n# targets")
    region = lambda r: r["B"] >= 64 and 32 <= r["n"] <= 256  # noqa: E731
    steps = [r for r in step_rows if region(r)]
    if steps:
        worst = min(steps, key=lambda r: r["twin"] / r["auto"])
        worst_w = min(steps, key=lambda r: r["twin"] / r["warm"])
        ok = worst["twin"] / worst["auto"] >= 5
        print(f"{'PASS' if ok else 'MISS'}  step ≥ 5× torch.linalg.eigh + torch sGCV at B ≥ 64, n ∈ [32, 256]: worst "
              f"{worst['twin'] / worst['auto']:.2f}× (B={worst['B']}, n={worst['n']}); warm-started worst "
              f"{worst_w['twin'] / worst_w['warm']:.2f}× (B={worst_w['B']}, n={worst_w['n']})")
    else:
        print("n/a   step ≥ 5× torch path: no measured combo with B ≥ 64, n ∈ [32, 256]")
    eigs = [r for r in eig_rows if region(r) and r["cupy"]]
    if eigs:
        worst = min(eigs, key=lambda r: r["cupy"] / r["cold"])
        ok = worst["cupy"] / worst["cold"] >= 2
        print(f"{'PASS' if ok else 'MISS'}  jacobi_eigh (cold) ≥ 2× cupy.linalg.eigh at B ≥ 64, n ∈ [32, 256]: worst "
              f"{worst['cupy'] / worst['cold']:.2f}× (B={worst['B']}, n={worst['n']})")
    else:
        print(f"n/a   jacobi_eigh ≥ 2× cupy eigh: {'no measured combo' if have_cupy else 'cupy not importable'}")
    for r in train_rows:
        ok = r["slim"] <= 1.2 * r["adam"]
        print(f"{'PASS' if ok else 'MISS'}  slimTrain step ≤ 1.2× Adam step ({r['problem']}): "
              f"{r['slim'] / r['adam']:.2f}×")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--smoke", action="store_true", help="no GPU needed: tiny CPU dry run via the host emulation")
    parser.add_argument("--budget", type=float, default=170.0, help="seconds for sections 2 (40%%) and 3 (60%%)")
    parser.add_argument("--sizes", default=None, help="comma-separated n (default 16,32,64,128,257,512)")
    parser.add_argument("--batches", default=None, help="comma-separated B (default 1,16,256,1024)")
    args = parser.parse_args()

    from slimfast.backends import load_backend

    cuda = load_backend("cuda")
    if cuda is None:
        print("slimfast cuda backend not available (slimfast._cuda not built)")
        return 1
    smoke = args.smoke or not torch.cuda.is_available()
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: running the CPU smoke version (--smoke)")
    device = torch.device("cpu" if smoke else "cuda")
    sizes = [int(v) for v in args.sizes.split(",")] if args.sizes else ([5, 16] if smoke else SIZES)
    batches = [int(v) for v in args.batches.split(",")] if args.batches else ([1, 4] if smoke else BATCHES)
    cp = None
    if not smoke:
        try:
            import cupy as cp  # noqa: F811
        except Exception as exc:  # ImportError or a CUDA mismatch
            print(f"cupy not usable: {exc}")
    name = torch.cuda.get_device_name(0) if not smoke else "CPU (smoke run, host emulation)"
    print(f"# bench_gpu  {time.strftime('%Y-%m-%d %H:%M')}  {name}  torch {torch.__version__} "
          f"(CUDA {torch.version.cuda})  cupy {cp.__version__ if cp is not None else '-'}  "
          f"python {sys.version.split()[0]}")
    t_start = time.perf_counter()
    failures: list[str] = []
    correctness(cuda, device, smoke, failures)
    clock = Clock(device, args.quick or smoke)
    eig_rows: list = []
    step_rows: list = []
    train_rows: list = []
    clock.start_budget(0.4 * args.budget)
    eigh_section(cuda, cp, device, clock, sizes, batches, smoke, eig_rows, failures)
    clock.start_budget(0.6 * args.budget)
    step_section(cuda, device, clock, sizes, batches, smoke, step_rows, failures)
    training_section(device, smoke, args.quick, train_rows)
    targets(eig_rows, step_rows, train_rows, cp is not None)
    print(f"\n# total {time.perf_counter() - t_start:.0f} s; "
          + ("correctness FAILURES:\n  " + "\n  ".join(failures) if failures else "all correctness checks passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
