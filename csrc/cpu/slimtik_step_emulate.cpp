// Host emulation of the CUDA kernels: the step composition of csrc/slimtik_step.h with the block
// hooks, compiled by the host compiler and run with HostCtx (simulated threads one after
// another). Lets CPU-only CI test the exact arithmetic and work distribution the GPU runs; see
// csrc/slimtik_step.h for the rules that make the emulation faithful.
#include <algorithm>
#include <cmath>
#include <vector>

#include "slimtik_step_emulate.h"

#include "cuda/slimtik_step_cuda.cuh"

namespace slimfast {

long long emulate_step_workspace_doubles(long long B, int n_f, int n_t, int n_grid, bool memory_empty) {
  return B * step_layout(n_f, n_t, n_grid, memory_empty).total;
}

long long emulate_jacobi_workspace_doubles(long long B, int n) { return B * jacobi_layout(n).total; }

void slimtik_step_emulate(long long B, int n_f, int n_t, const double* G_mem, const double* G, const double* H,
                          const double* c, const double* m, const double* W, const double* Lambda_prev,
                          bool memory_empty, const StepOptions& opts, const double* U0, const double* s_in,
                          const double* U_in, double* W_out, double* info, double* U_out, double* workspace,
                          double jacobi_tol, int max_sweeps, int n_threads, bool reverse, int shared_level) {
  const StepArgs a = step_args(n_f, n_t, G_mem, G, H, c, m, W, Lambda_prev, memory_empty, opts, U0, s_in, U_in,
                               W_out, info, U_out, workspace, jacobi_tol, max_sweeps, shared_level);
  // "Shared memory" starts as NaN, like an uninitialised buffer that must never be read.
  std::vector<double> smem(jacobi_shared_doubles(n_f, a.shared_level));
  HostCtx ctx{{smem.data(), a.shared_level}, n_threads, reverse};
  for (long long b = 0; b < B; ++b) {
    std::fill(smem.begin(), smem.end(), NAN);
    slimtik_problem(ctx, a, (long)b);
  }
}

long long emulate_block_step_workspace_doubles(long long B, int n_f, int n_t, int n_grid, const BlockDims& bd) {
  return B * block_step_layout(bd, n_f, n_t, n_grid).total;
}

void slimtik_block_step_emulate(long long B, int n_f, int n_t, const double* G_mem, const double* G, const double* H,
                                const double* c, const double* m, const double* W, const double* Lambda_prev,
                                const BlockDims& bd, const StepOptions& opts, double* W_out, double* info,
                                double* workspace, double jacobi_tol, int max_sweeps, int n_threads, bool reverse,
                                int shared_level) {
  const BlockStepArgs a = block_step_args(n_f, n_t, G_mem, G, H, c, m, W, Lambda_prev, bd, opts, W_out, info,
                                          workspace, jacobi_tol, max_sweeps, shared_level);
  std::vector<double> smem(jacobi_shared_doubles(bd.nmax, shared_level));  // sized for the largest block
  HostCtx ctx{{smem.data(), shared_level}, n_threads, reverse};
  for (long long b = 0; b < B; ++b) {
    std::fill(smem.begin(), smem.end(), NAN);
    slimtik_block_problem(ctx, a, (long)b);
  }
}

void jacobi_eigh_emulate(long long B, int n, const double* A, const double* U0, double* s, double* U, int* sweeps,
                         double* workspace, double tol, int max_sweeps, int n_threads, bool reverse, int shared_level) {
  const JacobiArgs a = jacobi_args(n, A, U0, s, U, sweeps, workspace, tol, max_sweeps, shared_level);
  std::vector<double> smem(jacobi_shared_doubles(n, shared_level));
  HostCtx ctx{{smem.data(), shared_level}, n_threads, reverse};
  for (long long b = 0; b < B; ++b) {
    std::fill(smem.begin(), smem.end(), NAN);
    jacobi_problem(ctx, a, (long)b);
  }
}

}  // namespace slimfast
