// CPU launcher of the slimTik step: loops over the B problems (OpenMP) and runs the step
// composition of csrc/slimtik_step.h for each, with the serial BLAS/LAPACK context of
// cpu_context.h. The CUDA kernel runs the same composition with a thread block per problem (and
// the tests run that too, through its host emulation, slimtik_step_emulate.cpp). Twin of
// csrc/cuda/slimtik_step_cuda.cu.
#include "slimtik_step_cpu.h"

#include <algorithm>
#include <cstring>
#include <memory>

#include "cpu_context.h"
#include "cpu_threads.h"

namespace slimfast {
namespace {

using cpu::CpuCtx;
using cpu::kFactoredMaxNt;
using cpu::kGemmMinN;
using cpu::kFactoredMinN;
using cpu::kGridGemmMinN;

// Go parallel over problems only when the serial work would take more than ~2 ms: a parallel
// region's fork/join is cheap on an idle machine but can cost a scheduler time slice (ms) when
// the cores are shared, which would make small batches slower than serial.
constexpr double kParallelMinMicros = 2000.0;

// Rough serial microseconds of one step problem (fit on a 2-core EPYC: eigensolver + projections
// ~ n³, the sGCV grid ~ n_grid n², fixed overhead).
double step_micros(int n, int n_t, int n_grid) {
  const double n3 = (double)n * n * n, n2 = (double)n * n;
  return 20.0 + 2.5e-3 * n3 + 5e-4 * n_grid * n2 + 1e-3 * n_t * n2;
}


}  // namespace

int slimtik_step_cpu(const Lapack& L, int B, int n_f, int n_t, const double* G_mem, const double* G, const double* H,
                     const double* c, const double* m, const double* W, const double* Lambda_prev, bool memory_empty,
                     const StepOptions& opts, int eigensolver, const double* s_given, const double* Ut_given,
                     double* W_out, double* info, int* lapack_info) {
  const bool given = s_given != nullptr && Ut_given != nullptr;
  const int method = cpu::resolve_eigensolver(eigensolver, n_f);
  int lwork = 0, liwork = 0;
  if (!given) cpu::eig_workspace(L, method, n_f, &lwork, &liwork);
  const long nn = (long)n_f * n_f;
  const bool blas = n_f >= kGemmMinN;
  const bool full_blas = blas && !memory_empty;  // form_q's factor_gram and its scratch
  // A factored K̃ (no Q's; CpuCtx::q_times_d) needs V, Y: n_f × 2 n_t × (trial points) each.
  const bool factored_ok = full_blas && n_f >= kFactoredMinN && n_t <= kFactoredMaxNt;
  const long factored_doubles = factored_ok ? 2L * n_f * n_t * step_points(opts.n_grid) : 0L;
  const long step_doubles = step_layout(n_f, n_t, opts.n_grid, memory_empty).total;
  const long work_doubles = std::max<long>((long)lwork, 2L * n_f);  // LAPACK work, dpstrf's 2 n_f
  // Per problem: the step's workspace, M and F (n_f² each) or U for the loops, V and Y, LAPACK work.
  const long per_thread =
      step_doubles + (full_blas ? 2 * nn : 0L) + (blas ? 0L : nn) + 2 * factored_doubles + work_doubles;
  int failed = 0;  // 1 + first failing problem
  // Parallelism goes over problems; a pthreads OpenBLAS called inside the loop must stay
  // single-threaded (oversubscription, possible hang).
  const bool big = B > 1 && B * step_micros(n_f, n_t, opts.n_grid) >= kParallelMinMicros;
  const int threads = big ? usable_threads(std::min(B, omp_max_threads())) : 1;
  // BLAS runs single-threaded inside the parallel loop and for small matrices (its threads cost
  // more than they save); otherwise with as many threads as the machine's load allows.
  const BlasThreads blas_threads(L, threads > 1 || n_f < kBlasThreadsMinN ? 1 : usable_threads(BlasThreads::current(L)));

  // Every thread's scratch is allocated here, before the parallel region: an exception may not
  // leave an OpenMP region (std::terminate), while here std::bad_alloc reaches Python as
  // MemoryError with nothing written. Uninitialised on purpose: zero-filling megabytes of
  // scratch per call costs ~5% at n_f = 257.
  const long per_thread_ints = std::max(liwork, n_f);  // LAPACK iwork, dpstrf pivots
  std::unique_ptr<double[]> bufs(new double[(size_t)threads * (size_t)per_thread]);
  std::unique_ptr<int[]> ibufs(new int[(size_t)threads * (size_t)per_thread_ints]);
  // Given eigenpairs are LAPACK's layout (eigenvectors as rows), the step's own.
  StepArgs args = step_args(n_f, n_t, G_mem, G, H, c, m, W, Lambda_prev, memory_empty, opts, nullptr,
                            given ? s_given : nullptr, given ? Ut_given : nullptr, W_out, info, nullptr, nullptr,
                            cpu::kJacobiTol, cpu::kJacobiMaxSweeps, 0);
  args.U_in_rows = true;
  args.ws_stride = 0;  // each thread's own workspace

#pragma omp parallel if (threads > 1) num_threads(threads)
  {
    const int thread = threads > 1 ? omp_thread() : 0;
    double* buf = bufs.get() + (size_t)thread * per_thread;
    StepArgs a = args;
    a.ws = buf;
    CpuCtx ctx;
    ctx.L = &L;
    ctx.method = method;
    ctx.blas = blas;
    ctx.grid_gemm = n_f >= kGridGemmMinN;
    ctx.factored_ok = factored_ok;
    ctx.M = buf + step_doubles;
    ctx.F = ctx.M + (full_blas ? nn : 0L);
    ctx.V = ctx.F + (full_blas ? nn : 0L);
    ctx.Y = ctx.V + factored_doubles;
    ctx.Ucols = ctx.Y + factored_doubles;
    ctx.work = ctx.Ucols + (blas ? 0L : nn);
    ctx.lwork = lwork;
    ctx.iwork = ibufs.get() + (size_t)thread * per_thread_ints;
    ctx.liwork = liwork;
#pragma omp for schedule(dynamic)
    for (int bi = 0; bi < B; ++bi) {
      const int inf = slimtik_problem(ctx, a, bi);
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

int jacobi_eigh_cpu(int B, int n, const double* A, const double* U0, double* s, double* U, double tol,
                    int max_sweeps) {
  const long nn = (long)n * n;
  const JacobiLayout J = jacobi_layout(n);
  int sweeps = 0;
  // ~8 sweeps of 6n³ flops each per matrix; parallel only above ~2 ms of serial work.
  const int threads = B > 1 && B * 0.015 * (double)n * n * n >= kParallelMinMicros
                          ? usable_threads(std::min(B, omp_max_threads()))
                          : 1;
  // Allocated before the parallel region (see slimtik_step_cpu).
  std::unique_ptr<double[]> scratch(new double[(size_t)threads * (size_t)J.total]);
#pragma omp parallel if (threads > 1) num_threads(threads)
  {
    double* mine = scratch.get() + (size_t)(threads > 1 ? omp_thread() : 0) * (size_t)J.total;
    SerialCtx ctx;
#pragma omp for schedule(dynamic) reduction(max : sweeps)
    for (int bi = 0; bi < B; ++bi) {
      const int k = jacobi_eigh(ctx, n, A + bi * nn, U0 ? U0 + bi * nn : nullptr, mine + J.jac_M, mine + J.jac_Vt,
                                mine + J.rot, mine + J.perm, tol, max_sweeps, s + (long)bi * n, U + bi * nn, false);
      sweeps = std::max(sweeps, k);
    }
  }
  return sweeps;
}

}  // namespace slimfast
