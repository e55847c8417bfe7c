// Host emulation of the CUDA kernels: the block code of slimtik_step_cuda.cuh compiled by the host
// compiler and run with HostCtx (simulated threads one after another). Lets CPU-only CI test the
// exact arithmetic and work distribution the GPU runs; see slimtik_step_cuda.cuh for the rules
// that make the emulation faithful.
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
  StepArgs a{};
  a.n = n_f;
  a.nt = n_t;
  a.memory_empty = memory_empty;
  a.opts = opts;
  a.G_mem = G_mem;
  a.G = G;
  a.H = H;
  a.c = c;
  a.m = m;
  a.W = W;
  a.Lambda_prev = Lambda_prev;
  a.U0 = U0;
  a.s_in = s_in;
  a.U_in = U_in;
  a.W_out = W_out;
  a.info = info;
  a.U_out = U_out;
  a.ws = workspace;
  a.ws_stride = step_layout(n_f, n_t, opts.n_grid, memory_empty).total;
  a.jacobi_tol = jacobi_tol;
  a.max_sweeps = max_sweeps;
  a.shared_level = shared_level;
  const HostCtx ctx{n_threads, reverse};
  // "Shared memory" starts as NaN, like an uninitialised buffer that must never be read.
  if (U_in != nullptr) a.shared_level = 0;
  std::vector<double> smem(jacobi_shared_doubles(n_f, a.shared_level));
  for (long long b = 0; b < B; ++b) {
    std::fill(smem.begin(), smem.end(), NAN);
    slimtik_problem(ctx, a, (long)b, smem.data());
  }
}

void jacobi_eigh_emulate(long long B, int n, const double* A, const double* U0, double* s, double* U, int* sweeps,
                         double* workspace, double tol, int max_sweeps, int n_threads, bool reverse, int shared_level) {
  JacobiArgs a{};
  a.n = n;
  a.A = A;
  a.U0 = U0;
  a.s = s;
  a.U = U;
  a.sweeps = sweeps;
  a.ws = workspace;
  a.ws_stride = jacobi_layout(n).total;
  a.tol = tol;
  a.max_sweeps = max_sweeps;
  a.shared_level = shared_level;
  const HostCtx ctx{n_threads, reverse};
  std::vector<double> smem(jacobi_shared_doubles(n, shared_level));
  for (long long b = 0; b < B; ++b) {
    std::fill(smem.begin(), smem.end(), NAN);
    jacobi_problem(ctx, a, (long)b, smem.data());
  }
}

}  // namespace slimfast
