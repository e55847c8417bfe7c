"""Time per training step: slimTrain vs Adam on the same network and the same batches.

Cases (batch 32, memory depth r = 5):
    peaks   residual tanh body (width 8), head Linear(8 → 1)          n_f = 9,   n_t = 1
    cdr     residual tanh body (width 16), head Linear(16 → 72)       n_f = 17,  n_t = 72
    digits  conv autoencoder on 8×8 digits, head ConvTranspose2d(16 → 1)   n_f = 257, n_t = 1
    mnist   the paper's MNIST autoencoder on random 28×28 data, head ConvTranspose2d(16 → 1)
    wide    body Linear(64 → 2047) + tanh, head Linear(2047 → 3), batch 64        n_f = 2048, n_t = 3
            (its own batch size; the head steps on the sample side, ``make_wide_case``; not in the
            default list: ``--cases wide``)

slimTrain step = body forward, SlimTik head solve (statistics + sGCV step), head forward,
backward through the body, Adam step on the body (``SlimTrain.train_step``). Adam step = forward,
backward, Adam on body and head. Both start from the same weights and cycle through the same
batches.

Correctness first: before timing, every slimTik backend takes the same first step from the
same state and their heads must agree (relative difference ≤ 1e-6), and the solved head must
fit the batch at least as well as the initial head. Then the two methods are timed in
interleaved blocks (so load changes on a shared machine hit both alike); the table reports
the median per-step time over blocks after warm-up, the ratio slimTrain/Adam, the time of
the head solve alone (``SlimTik.step`` on fixed features), and the batch loss after the last
timed step next to every time.

Two clocks, recorded for the same blocks: wall time (``time.perf_counter``; what a user waits)
and process CPU time (``time.process_time``, all threads of this process). On a busy shared
machine wall time is biased against the slower method (a 5 ms step is preempted far more
often than a 1 ms one); CPU time is not, but it counts every thread, so a multi-threaded
solver (OpenMP) shows more CPU than wall time. The ratio is reported for both; the target is
judged on wall time. A third ratio is that of the total wall time of all timed blocks: what a
whole run waits. Quiet, it is the median's; under load (``--busy``, which also triples the
blocks) the median is biased against the longer step, whose blocks are preempted more often.

Fused small-head path (``slimfast.fused_head``): for Linear heads the script first checks that
the fused step agrees with its float64 torch twin (``_fused_linear_step``, relative difference
≤ 1e-9 over the case's batches) and prints the largest difference. ``--fused-sizes 8x1,16x72``
times ``SlimTik.step`` on the fused and on the general path for Linear heads of those sizes
(interleaved, batch 32, r = 5), which is how ``fused_head.FUSED_MAX_WORK`` was chosen.

Sample side (``slimfast.sample_side``): for a head that steps on the sample side (wide) the script
first checks that the sample-side step of the default backend (cpp: without an eigendecomposition)
agrees with the dense feature-side step's float64 twin (``solve_side="features"``, torch backend;
relative difference of the head weights ≤ 1e-9 over the case's batches) and prints the largest.

Phase blocks (``slimfast.phase_blocks``): for strided ConvTranspose2d heads (digits, MNIST) the
script first checks that the block-structured step of the default backend agrees with the dense
step's float64 twin (``block_solve="off"``, torch backend; relative difference of the head weights
≤ 1e-9 over the case's batches) and prints the largest difference.

``--busy N`` runs N busy-looping background processes for the whole run (started before the
first case, killed at the end): the loaded measurement of the thread policy (issue 10, scope 5).

    python benchmarks/bench_training.py [--cases peaks,cdr,digits,mnist] [--backends auto,torch]
                                        [--threads 1] [--quick] [--busy 2] [--fused-sizes 8x1,16x72]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import slimfast
from slimfast.backends import load_backend, resolve_backend
from slimfast.heads import head_shape
from slimfast.optim import SlimTik
from slimfast.train import SlimTrain

BATCH = 32
MEMORY_DEPTH = 5
LR = 1e-3
#: Target ratios slimTrain/Adam (per-step time) of the project (the performance issue's table).
TARGETS = {"peaks": 1.15, "cdr": 1.15, "digits": 1.5, "mnist": 1.5}


def _loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(t0: tuple[float, float]) -> tuple[float, float]:
    w, c = _now()
    return w - t0[0], c - t0[1]


@dataclass
class Case:
    name: str
    make_body: Callable[[], nn.Module]
    make_head: Callable[[], nn.Module]
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    blocks: int
    block_steps: int
    warmup: int


def _seeded(seed: int, fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return fn()
    return build


def _split(x: torch.Tensor, y: torch.Tensor, n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i * BATCH:(i + 1) * BATCH].contiguous(), y[i * BATCH:(i + 1) * BATCH].contiguous())
            for i in range(n_batches)]


def make_case(name: str, quick: bool) -> Case:
    from slimfast.problems import get_problem
    from slimfast.problems.cdr import load_cdr
    from slimfast.problems.mnist import make_mnist_body, make_mnist_head

    small = dict(blocks=15 if quick else 41, block_steps=10, warmup=20)
    if name == "peaks":
        p = get_problem("peaks", seed=0)
        return Case(name, p.make_body, p.make_head, _split(p.x_train, p.y_train, 16), **small)
    if name == "cdr":
        p = load_cdr(seed=0, n_samples=8 * BATCH + 2, n_train=8 * BATCH, n_val=1)
        return Case(name, p.make_body, p.make_head, _split(p.x_train, p.y_train, 8), **small)
    if name == "digits":
        p = get_problem("digits", seed=0)
        return Case(name, p.make_body, p.make_head, _split(p.x_train, p.y_train, 8),
                    blocks=7 if quick else 15, block_steps=3, warmup=4)
    if name == "mnist":
        g = torch.Generator().manual_seed(0)
        x = torch.rand(4 * BATCH, 1, 28, 28, generator=g)
        return Case(name, _seeded(0, make_mnist_body), _seeded(7919, make_mnist_head), _split(x, x, 4),
                    blocks=5 if quick else 11, block_steps=2, warmup=3)
    if name == "wide":
        return make_wide_case(quick)
    raise ValueError(f"unknown case {name!r}")


#: Wide head (issue 10, scope 4): slimTrain step / Adam step target.
TARGETS["wide"] = 10.0
WIDE_BATCH = 64


def make_wide_case(quick: bool) -> Case:
    """Body Linear(64 → 2047) + tanh, head Linear(2047 → 3), batch 64: n_f = 2048 > (r + 1)·n_b = 384,
    so SlimTik's automatic choice steps on the sample side. Targets: a smooth function of x."""
    print(f"  wide: batch {WIDE_BATCH} (not {BATCH}), memory depth r = {MEMORY_DEPTH}, sample side", flush=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4 * WIDE_BATCH, 64, generator=g)
    y = torch.sin(x @ torch.randn(64, 3, generator=g) / 8.0)

    def body() -> nn.Module:
        return nn.Sequential(nn.Linear(64, 2047), nn.Tanh())

    batches = [(x[i * WIDE_BATCH:(i + 1) * WIDE_BATCH].contiguous(), y[i * WIDE_BATCH:(i + 1) * WIDE_BATCH].contiguous())
               for i in range(4)]
    return Case("wide", _seeded(0, body), _seeded(7919, lambda: nn.Linear(2047, 3)), batches,
                blocks=5 if quick else 11, block_steps=3, warmup=MEMORY_DEPTH + 2)


class AdamStep:
    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        self.body, self.head = body, head
        self.opt = torch.optim.Adam(list(body.parameters()) + list(head.parameters()), lr=LR)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(self.head(self.body(x)), y)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def make_slimtrain(case: Case, backend: str | None) -> SlimTrain:
    body, head = case.make_body(), case.make_head()
    return SlimTrain(body, head, torch.optim.Adam(body.parameters(), lr=LR),
                     SlimTik(head, memory_depth=MEMORY_DEPTH, backend=backend))


def check_backends(case: Case, backends: list[str | None]) -> None:
    """Same first step from the same state on every backend: heads agree; the solve fits the batch."""
    x, y = case.batches[0]
    heads = []
    for be in backends:
        st = make_slimtrain(case, be)
        with torch.no_grad():
            z = st.body(x)
            before = F.mse_loss(st.head(z), y).item()
        st.slim.step(z, y)
        with torch.no_grad():
            after = F.mse_loss(st.head(z), y).item()
        if not after <= before * (1 + 1e-6):
            raise AssertionError(f"{case.name}/{be}: head solve raised the batch loss {before:.4e} → {after:.4e}")
        heads.append(torch.cat([p.detach().double().reshape(-1) for p in st.head.parameters()]))
    for be, h in zip(backends[1:], heads[1:]):
        rel = float((h - heads[0]).norm() / heads[0].norm())
        if rel > 1e-6:
            raise AssertionError(f"{case.name}: backend {be} head differs from {backends[0]} by {rel:.2e}")


def time_interleaved(case: Case, trainers: dict[str, object], blocks: int | None = None
                     ) -> dict[str, tuple[float, float, float, float]]:
    """{label: (median wall s/step, median CPU s/step, batch loss after the last step, total wall s /
    steps)}, ``blocks`` (default: the case's) interleaved blocks."""
    n = len(case.batches)
    counters = {k: 0 for k in trainers}
    last_loss = {k: float("nan") for k in trainers}

    def run(label: str, steps: int) -> tuple[float, float]:
        tr = trainers[label]
        t0 = _now()
        for _ in range(steps):
            x, y = case.batches[counters[label] % n]
            last_loss[label] = tr.train_step(x, y)
            counters[label] += 1
        return _since(t0)

    for label in trainers:
        run(label, case.warmup)
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in trainers}
    labels = list(trainers)
    for b in range(case.blocks if blocks is None else blocks):
        order = labels if b % 2 == 0 else labels[::-1]
        for label in order:
            samples[label].append(run(label, case.block_steps))
    k = case.block_steps
    return {label: (statistics.median(w for w, _ in v) / k, statistics.median(c for _, c in v) / k, last_loss[label],
                    sum(w for w, _ in v) / (k * len(v)))
            for label, v in samples.items()}


def time_head_solve(case: Case, backend: str | None) -> float:
    """Median wall seconds of ``SlimTik.step`` alone on fixed features (memory full after warm-up)."""
    body, head = case.make_body(), case.make_head()
    slim = SlimTik(head, memory_depth=MEMORY_DEPTH, backend=backend)
    with torch.no_grad():
        feats = [(body(x), y) for x, y in case.batches]
    for i in range(MEMORY_DEPTH + 2):
        slim.step(*feats[i % len(feats)])
    times = []
    for i in range(max(case.blocks, 5)):
        z, y = feats[i % len(feats)]
        t0 = time.perf_counter()
        slim.step(z, y)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def check_fused(case: Case) -> float | None:
    """Largest relative difference between the fused step and its float64 twin over the case's
    batches (memory filling and wrapping); None when the case's head does not take the fused path.
    Head and features in float64, so that the comparison sees the kernel, not the cast to float32."""
    from slimfast import fused_head

    body, head = case.make_body(), case.make_head().double()
    if not isinstance(head, nn.Linear) or fused_head._cpu_module() is None:
        return None
    slim = SlimTik(head, memory_depth=MEMORY_DEPTH, backend="cpp")
    worst = 0.0
    for i in range(MEMORY_DEPTH + 3):
        x, y = case.batches[i % len(case.batches)]
        with torch.no_grad():
            z, y = body(x).double(), y.double()
        st = slim._ensure_state()
        W_twin, _, _ = fused_head._fused_linear_step(z, y, head.weight, head.bias, st.memory.clone(), st.n_stored,
                                                     st.Lambda.clone(), slim.config, slim.reduction)
        slim.step(z, y)
        if fused_head._LAYOUTS[slim].plan is None:
            return None
        W = torch.cat([head.weight.detach().double(), head.bias.detach().double()[:, None]], 1)
        worst = max(worst, float((W - W_twin).norm() / W_twin.norm()))
    if not worst <= 1e-9:
        raise AssertionError(f"{case.name}: fused step differs from its float64 twin by {worst:.2e} (> 1e-9)")
    return worst


def _worst_against_twin(case: Case, body: nn.Module, head: nn.Module, steps: int, side: str | None = None,
                        **twin_options: Any) -> float | None:
    """Largest relative difference of the head weights over ``steps`` of the case's batches
    between SlimTik on ``head`` (default backend) and its float64 twin on a copy (torch backend,
    ``twin_options``); None when a step of the first did not run on ``side`` (if given)."""
    twin_head = copy.deepcopy(head)
    slim = SlimTik(head, memory_depth=MEMORY_DEPTH)
    twin = SlimTik(twin_head, memory_depth=MEMORY_DEPTH, backend="torch", **twin_options)
    worst = 0.0
    for i in range(steps):
        x, y = case.batches[i % len(case.batches)]
        with torch.no_grad():
            z, y = body(x).double(), y.double()
        info = slim.step(z, y)
        if side is not None and info.side != side:
            return None
        twin.step(z, y)
        a = torch.cat([p.detach().reshape(-1) for p in head.parameters()])
        b = torch.cat([p.detach().reshape(-1) for p in twin_head.parameters()])
        worst = max(worst, float((a - b).norm() / b.norm()))
    return worst


def check_blocks(case: Case) -> float | None:
    """Largest relative difference of the head weights between the phase-block step (default
    backend) and the dense step's float64 twin (``block_solve="off"``, torch backend) over the
    case's batches (memory filling and wrapping); None when the head has no phase blocks. Head and
    features in float64, so that the comparison sees the solve, not the cast to float32."""
    from slimfast.phase_blocks import phase_blocks

    body, head = case.make_body(), case.make_head().double()
    if phase_blocks(head) is None:
        return None
    worst = _worst_against_twin(case, body, head, MEMORY_DEPTH + 3, block_solve="off")
    if not worst <= 1e-9:
        raise AssertionError(f"{case.name}: phase-block step differs from the dense twin by {worst:.2e} (> 1e-9)")
    return worst


def check_samples(case: Case) -> float | None:
    """Largest relative difference of the head weights between the sample-side step (default
    backend: on cpp the eigenvector-free route) and the dense feature-side step's float64 twin
    (``solve_side="features"``, torch backend) over the case's batches (memory filling and
    wrapping); None when the head steps on the feature side. Head and features in float64."""
    from slimfast.sample_side import prefer_samples

    body, head = case.make_body(), case.make_head().double()
    n_b = case.batches[0][0].shape[0]
    if not isinstance(head, nn.Linear) or not prefer_samples(head.in_features + 1, MEMORY_DEPTH, n_b,
                                                             resolve_backend(None, torch.device("cpu"))[0]):
        return None
    worst = _worst_against_twin(case, body, head, MEMORY_DEPTH + 2, side="samples", solve_side="features")
    if worst is None:
        return None
    if not worst <= 1e-9:
        raise AssertionError(f"{case.name}: sample-side step differs from the dense twin by {worst:.2e} (> 1e-9)")
    return worst


@contextlib.contextmanager
def background_load(n: int) -> Iterator[None]:
    """n busy-looping Python processes for the duration of the block (each killed by its pid)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        if procs:
            time.sleep(2.0)   # let the load average and the scheduler see them
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def time_fused_sizes(sizes: str, blocks: int) -> None:
    """SlimTik.step on the fused vs the general path for Linear heads n_in x n_t (batch 32, r = 5)."""
    from slimfast import fused_head
    from slimfast.ownership import release_head

    print("\nfused vs general head step (SlimTik.step alone, median µs, interleaved blocks of 20 steps)")
    print("| n_in x n_t | rows·n_f·(n_f/2 + n_t) | fused | general | general / fused |")
    print("|---|---|---|---|---|")
    for spec in sizes.split(","):
        n_in, n_t = (int(v) for v in spec.split("x"))
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(BATCH, n_in, generator=g), torch.randn(BATCH, n_t, generator=g)
        slims = {}
        for label in ("fused", "general"):
            head = nn.Linear(n_in, n_t)
            slims[label] = SlimTik(head, memory_depth=MEMORY_DEPTH, backend="cpp")
        times: dict[str, list[float]] = {k: [] for k in slims}
        saved, saved_work = fused_head.ENABLED, fused_head.FUSED_MAX_WORK
        fused_head.FUSED_MAX_WORK = 1 << 62   # time the fused path even above its threshold
        try:
            for b in range(blocks + 1):
                for label, slim in slims.items():
                    fused_head.ENABLED = label == "fused"
                    t0 = time.perf_counter()
                    for _ in range(20):
                        slim.step(x, y)
                    if b:   # block 0 is warm-up
                        times[label].append((time.perf_counter() - t0) / 20)
        finally:
            fused_head.ENABLED, fused_head.FUSED_MAX_WORK = saved, saved_work
        for slim in slims.values():
            release_head(slim.head)
        f, gen = (1e6 * statistics.median(times[k]) for k in ("fused", "general"))
        n_f = n_in + 1
        print(f"| {n_in} x {n_t} | {BATCH * n_f * (n_f / 2 + n_t):.3g} | {f:.1f} | {gen:.1f} | {gen / f:.2f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="peaks,cdr,digits,mnist")
    parser.add_argument("--backends", default="auto",
                        help="comma list of slimTik backends to time (auto = slimfast's default choice; "
                             "'all' = every available CPU backend)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: stable timings on a shared machine)")
    parser.add_argument("--quick", action="store_true", help="fewer timed blocks")
    parser.add_argument("--busy", type=int, default=0, help="busy background processes during the run (default 0)")
    parser.add_argument("--fused-sizes", default="", help="also time fused vs general Linear head steps, e.g. 8x1,16x72")
    args = parser.parse_args(argv)
    with background_load(args.busy):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    if args.backends == "all":
        names: list[str | None] = [b for b in ("cpp", "numba", "torch") if load_backend(b) is not None]
    else:
        names = [None if b == "auto" else b for b in args.backends.split(",")]
    default_cpu = resolve_backend(None, torch.device("cpu"))[0]
    print(f"slimfast {slimfast.__version__}, torch {torch.__version__}, python {platform.python_version()}, "
          f"{platform.machine()}, torch threads {torch.get_num_threads()}, default CPU backend {default_cpu!r}")
    print(f"batch {BATCH}, memory depth r = {MEMORY_DEPTH}, Adam lr {LR:g}; medians over interleaved blocks; "
          f"load average {_loadavg()}; {args.busy} busy background processes\n")

    header = ("case", "n_f x n_t", "backend", "Adam ms", "slimTrain ms", "ratio (wall)", "target",
              "ratio (CPU)", "ratio (total)", "head solve ms", "Adam loss", "slimTrain loss")
    rows = []
    for name in args.cases.split(","):
        case = make_case(name, args.quick)
        check_backends(case, names)
        fused_err = check_fused(case)
        if fused_err is not None:
            print(f"  {name}: fused step = float64 twin to {fused_err:.1e} (≤ 1e-9)", flush=True)
        block_err = check_blocks(case)
        if block_err is not None:
            print(f"  {name}: phase-block step = dense float64 twin to {block_err:.1e} (≤ 1e-9)", flush=True)
        sample_err = check_samples(case)
        if sample_err is not None:
            print(f"  {name}: sample-side step = dense float64 twin to {sample_err:.1e} (≤ 1e-9)", flush=True)
        trainers: dict[str, object] = {"adam": AdamStep(case.make_body(), case.make_head())}
        for be in names:
            trainers[f"slim:{be or 'auto'}"] = make_slimtrain(case, be)
        # Under load a step's time has a long tail (preemption), so a loaded run takes 3× the blocks.
        res = time_interleaved(case, trainers, case.blocks * (3 if args.busy else 1))
        n_t, n_f = head_shape(case.make_head())
        adam_w, adam_c, adam_loss, adam_total = res["adam"]
        for be in names:
            label = be or f"auto={default_cpu}"
            slim_w, slim_c, slim_loss, slim_total = res[f"slim:{be or 'auto'}"]
            solve_t = time_head_solve(case, be)
            target = TARGETS.get(name)
            ratio = slim_w / adam_w
            mark = "" if target is None else (" ok" if ratio <= target else " MISSED")
            rows.append((name, f"{n_f} x {n_t}", label, f"{1e3 * adam_w:.3f}", f"{1e3 * slim_w:.3f}",
                         f"{ratio:.2f}{mark}", "—" if target is None else f"≤ {target:g}", f"{slim_c / adam_c:.2f}",
                         f"{slim_total / adam_total:.2f}", f"{1e3 * solve_t:.3f}", f"{adam_loss:.3e}", f"{slim_loss:.3e}"))
        print(f"  {name}: done", flush=True)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print()
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    print("\nms = median wall time per step; ratio = slimTrain / Adam per step, on wall time and on process CPU "
          "time (medians over blocks; the target is judged on wall), and of the total wall time of all timed "
          "blocks (what a whole run waits: under load the median is biased against the longer step, whose "
          "blocks are preempted more often); head solve = SlimTik.step alone (statistics + sGCV step + weight write, wall); losses are the "
          "batch losses after the last timed step.")
    if args.fused_sizes:
        time_fused_sizes(args.fused_sizes, 5 if args.quick else 15)
    print(f"load average at the end: {_loadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
