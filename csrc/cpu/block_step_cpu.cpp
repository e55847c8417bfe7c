// CPU launcher of the block-structured step: the composition of csrc/slimtik_block_step.h per
// problem with the serial BLAS/LAPACK context of cpu_context.h (its hooks pick BLAS or loops by
// each block's order), OpenMP over problems with the dense launcher's thread policy.
#include "block_step_cpu.h"

#include <algorithm>
#include <memory>

#include "cpu_context.h"
#include "cpu_threads.h"

namespace slimfast {
namespace {

// As slimtik_step_cpu.cpp: parallel over problems only above ~2 ms of serial work.
constexpr double kParallelMinMicros = 2000.0;

// Rough serial microseconds of one block-step problem: the block eigensolvers ~ Σ n_p³, then
// ~ (n_grid + root iterations) trial points of ~ n_t Σ n_p² each.
double block_step_micros(const BlockDims& bd, int n_t, int n_grid) {
  double cubes = 0.0, squares = 0.0;
  for (int q = 0; q < bd.P; ++q) {
    const double np = bd.off[q + 1] - bd.off[q];
    cubes += np * np * np;
    squares += np * np;
  }
  return 20.0 + 2.5e-3 * cubes + 1e-3 * (n_grid + 10) * n_t * squares;
}

}  // namespace

int slimtik_block_step_cpu(const Lapack& L, int B, int n_f, int n_t, const double* G_mem, const double* G,
                           const double* H, const double* c, const double* m, const double* W,
                           const double* Lambda_prev, const int* off, int P, bool border, const StepOptions& opts,
                           int eigensolver, double* W_out, double* info, int* lapack_info) {
  const BlockDims bd = block_dims(off, P, border);
  const int method = cpu::resolve_eigensolver(eigensolver, bd.nmax);
  int lwork = 0, liwork = 0;
  cpu::eig_workspace(L, method, bd.nmax, &lwork, &liwork);  // enough for every smaller block too
  const long step_doubles = block_step_layout(bd, n_f, n_t, opts.n_grid).total;
  const long ucols = (long)bd.nmax * bd.nmax;  // CpuCtx::to_eigenbasis below kGemmMinN
  const long per_thread = step_doubles + ucols + std::max<long>(lwork, 1);
  const long per_thread_ints = std::max(liwork, 1);
  const bool big = B > 1 && B * block_step_micros(bd, n_t, opts.n_grid) >= kParallelMinMicros;
  const int threads = big ? usable_threads(std::min(B, omp_max_threads())) : 1;
  const BlasThreads blas_threads(L, 1);  // blocks are small: LAPACK's own threads never pay
  // Allocated before the parallel region (an exception may not leave it); uninitialised on purpose.
  std::unique_ptr<double[]> bufs(new double[(size_t)threads * (size_t)per_thread]);
  std::unique_ptr<int[]> ibufs(new int[(size_t)threads * (size_t)per_thread_ints]);
  BlockStepArgs args;
  args.step = step_args(n_f, n_t, G_mem, G, H, c, m, W, Lambda_prev, false, opts, nullptr, nullptr, nullptr, W_out,
                        info, nullptr, nullptr, cpu::kJacobiTol, cpu::kJacobiMaxSweeps, 0);
  args.step.ws_stride = 0;  // each thread's own workspace
  args.bd = bd;
  int failed = 0;  // 1 + first failing problem

#pragma omp parallel if (threads > 1) num_threads(threads)
  {
    const int thread = threads > 1 ? omp_thread() : 0;
    double* buf = bufs.get() + (size_t)thread * per_thread;
    BlockStepArgs a = args;
    a.step.ws = buf;
    cpu::CpuCtx ctx;
    ctx.L = &L;
    ctx.method = method;
    ctx.blas = true;  // the hooks' use_blas(n) decides per block
    ctx.grid_gemm = false;
    ctx.factored_ok = false;
    ctx.M = ctx.F = ctx.V = ctx.Y = nullptr;
    ctx.Ucols = buf + step_doubles;
    ctx.work = ctx.Ucols + ucols;
    ctx.lwork = lwork;
    ctx.iwork = ibufs.get() + (size_t)thread * per_thread_ints;
    ctx.liwork = liwork;
#pragma omp for schedule(dynamic)
    for (int bi = 0; bi < B; ++bi) {
      const int inf = slimtik_block_problem(ctx, a, bi);
      if (inf != 0) {
#pragma omp critical
        if (failed == 0 || bi + 1 < failed) {
          failed = bi + 1;
          *lapack_info = inf;
        }
      }
    }
  }
  return failed;
}

}  // namespace slimfast
