#!/usr/bin/env bash
# One-shot check of the CUDA backend on a GPU machine without a package registry (torch, numba,
# pybind11, scikit-build-core, cmake and nvcc preinstalled; cupy optional):
#   1. build and install slimfast with the CUDA module required (SLIMFAST_CUDA=ON), for this GPU's
#      architecture only, and put the compiled modules next to the sources so that both
#      `import slimfast` from the repository root and the installed package find them;
#   2. the test suite: first the tests that use the GPU (-k cuda), then SlimTik.step on CUDA
#      tensors under torch.cuda.set_sync_debug_mode("error"), then benchmarks/bench_gpu.py, then
#      the rest of the suite in the time that is left.
# Everything is tee'd into ${OUT:-.}/gpu_results.txt. Target: < 8 minutes in total.
#
#   bash benchmarks/gpu_check.sh            # from anywhere; runs in the repository root
set -uo pipefail

cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-.}"
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/gpu_results.txt"
PY="${PYTHON:-python}"
status=0

START=$(date +%s)
{
  echo "# slimfast gpu_check $(date -u '+%Y-%m-%d %H:%M:%S UTC')  commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader || echo "nvidia-smi failed"
  echo "nvcc: $(nvcc --version 2>/dev/null | tail -n 1)"
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| torch CUDA', torch.version.cuda, '| cuda available', torch.cuda.is_available())"

  echo
  echo "## build (SLIMFAST_CUDA=ON)"
  t0=$(date +%s)
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')
  if [ -n "$cap" ]; then
    export CMAKE_ARGS="${CMAKE_ARGS:-} -DCMAKE_CUDA_ARCHITECTURES=$cap"
  fi
  export SLIMFAST_CUDA=ON
  if ! timeout 300 "$PY" -m pip install --no-build-isolation --no-deps -v . > "$OUT_DIR/gpu_build.log" 2>&1; then
    echo "BUILD FAILED (last lines of $OUT_DIR/gpu_build.log):"
    tail -n 60 "$OUT_DIR/gpu_build.log"
    exit 1
  fi
  grep -E "slimfast: building the CUDA module|warning" "$OUT_DIR/gpu_build.log" | head -n 20
  # Compiled modules next to the sources (pytest imports slimfast from the repository root).
  site=$(cd /tmp && "$PY" -c "import slimfast, os; print(os.path.dirname(slimfast.__file__))")
  cp "$site"/_cpu*.so "$site"/_cuda*.so slimfast/ || { echo "compiled modules missing in $site"; exit 1; }
  echo "installed in $site ($(( $(date +%s) - t0 )) s)"
  "$PY" -c "import slimfast, json; print(json.dumps(slimfast.backend_info(), indent=1))"

  # GPU time is the scarce part: the tests that touch the GPU, then the benchmark, then the rest of
  # the suite (CPU-only, also run by CI) with whatever time is left of the 8 minutes.
  echo
  echo "## GPU tests (-k cuda)"
  t1=$(date +%s)
  timeout 150 "$PY" -m pytest tests -q -k cuda --maxfail=25 --durations=10 -p no:cacheprovider \
    || status=1
  echo "GPU tests: $(( $(date +%s) - t1 )) s, status $status"

  echo
  echo "## sync-free SlimTik step (torch.cuda.set_sync_debug_mode('error'))"
  # SlimTik.step with check_every=0 on CUDA tensors: lazy validation, the kernel's own Jacobi
  # warm-started from the state, the state's workspace; any host synchronisation inside the
  # counted steps raises. The records are read (one transfer) after the debug mode is reset.
  t1=$(date +%s)
  timeout 120 "$PY" - <<'PYEOF' || status=1
import math, torch
from slimfast import SlimTik

dev, F64 = torch.device("cuda"), torch.float64
g = torch.Generator(device=dev).manual_seed(0)
for n_in, depth in ((47, 0), (47, 2), (6, 1)):   # n_f = 48 > 32: "auto" would pick cuSOLVER (it syncs)
    head = torch.nn.Linear(n_in, 3).to(device=dev, dtype=F64)
    slim = SlimTik(head, memory_depth=depth, check_every=0)
    batches = [(torch.randn(64, n_in, device=dev, dtype=F64, generator=g),
                torch.randn(64, 3, device=dev, dtype=F64, generator=g)) for _ in range(6)]
    slim.step(*batches[0]); slim.check()   # loads the backend, allocates the state and workspace
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        records = [slim.step(*b) for b in batches[1:]]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    lams = [r.lambda_ for r in records]
    ok = all(math.isfinite(x) for x in lams) and records[-1].backend == "cuda" and slim.n_steps_ == 6 \
        and slim.solver_state.eigenvectors is not None and bool(torch.isfinite(head.weight).all())
    print(f"n_f={n_in + 1} r={depth}: 5 steps without a host sync; lambda {lams[0]:.3g} .. {lams[-1]:.3g}; "
          f"{'ok' if ok else 'FAILED'}")
    if not ok:
        raise SystemExit(1)
PYEOF
  echo "sync-free step: $(( $(date +%s) - t1 )) s, status $status"

  echo
  echo "## benchmark"
  t1=$(date +%s)
  timeout 240 "$PY" benchmarks/bench_gpu.py --budget 120 || status=1
  echo "benchmark: $(( $(date +%s) - t1 )) s"

  echo
  left=$(( START + 470 - $(date +%s) ))
  [ "$left" -lt 60 ] && left=60
  echo "## remaining tests (-k 'not cuda'; ${left} s left)"
  t1=$(date +%s)
  timeout "$left" "$PY" -m pytest tests -q -k "not cuda" --maxfail=25 -p no:cacheprovider || status=1
  echo "remaining tests: $(( $(date +%s) - t1 )) s, status $status; total $(( $(date +%s) - START )) s"
  echo
  echo "# gpu_check done, status $status"
  exit $status
} 2>&1 | tee "$RESULTS"
exit "${PIPESTATUS[0]}"
