// What ONE thread block does for ONE problem in the CUDA kernels: the step composition of
// csrc/slimtik_step.h (slimtik_problem) and the batched Jacobi (jacobi_problem below), run with a
// block context (block_context.cuh): DeviceCtx in slimtik_step_cuda.cu, HostCtx in the host
// emulation (csrc/cpu/slimtik_step_emulate.cpp), which bindings_emulate.cpp exposes so CPU tests
// run this exact code; a result that changes with the simulated threads' order would expose a
// data race between threads.
//
// Layout: row-major float64. The Jacobi working matrices are padded to an even order np
// (n odd: one extra zero row/column, which the rotations leave exactly zero), leading dim np.
#pragma once

#include "block_context.cuh"  // BlockHooks, HostCtx / DeviceCtx, Jacobi storage, slimtik_step.h

namespace slimfast {

struct JacobiArgs {
  int n;
  const double* A;   // [B, n, n]
  const double* U0;  // [B, n, n] or null
  double *s, *U;     // [B, n], [B, n, n]
  int* sweeps;       // [B] or null
  double* ws;        // [B, ws_stride]
  long ws_stride;
  double tol;
  int max_sweeps;
  int shared_level;  // jacobi_storage level of the launch
};

inline JacobiArgs jacobi_args(int n, const double* A, const double* U0, double* s, double* U, int* sweeps,
                              double* workspace, double tol, int max_sweeps, int shared_level) {
  return JacobiArgs{n, A, U0, s, U, sweeps, workspace, jacobi_layout(n).total, tol, max_sweeps, shared_level};
}

// One matrix b of a batched Jacobi launch; the Jacobi matrices at ctx.shared_level.
template <class Ctx>
SLIMFAST_BLOCK void jacobi_problem(Ctx& ctx, const JacobiArgs& a, long b) {
  const int n = a.n;
  const long nn = (long)n * n;
  const JacobiLayout L = jacobi_layout(n);
  double* ws = a.ws + b * a.ws_stride;
  const JacobiStorage J = jacobi_storage(n, ctx.shared_level, ctx.smem, ws + L.jac_M, ws + L.jac_Vt, ws + L.rot);
  const int sw = jacobi_eigh(ctx, n, a.A + b * nn, a.U0 ? a.U0 + b * nn : nullptr, J.M, J.Vt, J.rot, ws + L.perm,
                             a.tol, a.max_sweeps, a.s + b * n, a.U + b * nn, false);
  if (a.sweeps)
    ctx.par([&](int tid, int) {
      if (tid == 0) a.sweeps[b] = sw;
    });
}

}  // namespace slimfast
