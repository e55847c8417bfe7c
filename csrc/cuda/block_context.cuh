// The two block contexts of the step composition (csrc/slimtik_step.h): DeviceCtx (one CUDA
// thread block) and HostCtx (its serial host emulation, built into the CPU module), with the hooks
// they share (BlockHooks: the ctx.par loops of csrc/slimtik_loops.h and the block Jacobi), and
// where a block keeps its Jacobi matrices (shared memory or the workspace).
#pragma once

#include "slimtik_block_step.h"
#include "slimtik_step.h"

namespace slimfast {

// Most values a single block reduction carries (the eight sGCV sums).
inline constexpr int SLIMFAST_MAX_SUMS = SLIMFAST_SGCV_NSUMS;
// Default Jacobi stopping rule of the step: off(A') <= tol·‖A‖_F, as the CPU launcher's Jacobi.
inline constexpr double SLIMFAST_CUDA_JACOBI_TOL = 1e-15;
inline constexpr int SLIMFAST_CUDA_JACOBI_MAX_SWEEPS = 60;

// Where a block keeps its Jacobi matrices: level 0 all in the workspace (global memory); level 1
// M and the rotations in shared memory, Vt in the workspace (Vt is only rotated row-wise, a
// streaming access that global memory serves well); level 2 M, the rotations and Vt in shared
// memory. Shared layout: M [np²], rot [kRotDoubles·np/2], Vt [np²].
SLIMFAST_HD inline long jacobi_shared_doubles(int n, int level) {
  const long np = padded_order(n);
  return level <= 0 ? 0L : (level == 1 ? 1 : 2) * np * np + kRotDoubles * (np / 2);
}

struct JacobiStorage {
  double *M, *Vt, *rot;
};

SLIMFAST_HD inline JacobiStorage jacobi_storage(int n, int level, double* smem, double* ws_M, double* ws_Vt,
                                                double* ws_rot) {
  const long np = padded_order(n);
  JacobiStorage st;
  st.M = level >= 1 ? smem : ws_M;
  st.rot = level >= 1 ? smem + np * np : ws_rot;
  st.Vt = level >= 2 ? smem + np * np + kRotDoubles * (np / 2) : ws_Vt;
  return st;
}

// ---------------------------------------------------------------------------------------------
// The hooks of a block context (csrc/slimtik_step.h): products as ctx.par loops, eigenpairs by the
// block Jacobi with its matrices at `shared_level` (jacobi_storage; `smem` holds
// jacobi_shared_doubles(n, shared_level)).
// ---------------------------------------------------------------------------------------------
template <class Ctx>
struct BlockHooks {
  double* smem;
  int shared_level;

  SLIMFAST_BLOCK Ctx& self() { return static_cast<Ctx&>(*this); }
  SLIMFAST_BLOCK int eigh(int n, const double* A, const double* U0, double* s, double* Ut, double* scratch, double tol,
                          int max_sweeps) {
    const JacobiLayout J = jacobi_layout(n);
    const JacobiStorage st = jacobi_storage(n, shared_level, smem, scratch + J.jac_M, scratch + J.jac_Vt, scratch + J.rot);
    jacobi_eigh(self(), n, A, U0, st.M, st.Vt, st.rot, scratch + J.perm, tol, max_sweeps, s, Ut, true);
    return 0;
  }
  SLIMFAST_BLOCK void jacobi_round(int np, int P, double* M, double* Vt, const double* rot) {
    jacobi_round_block(self(), np, P, M, Vt, rot);
  }
  SLIMFAST_BLOCK void times_gram(int nt, int n, const double* W, const double* G, double* WG) {
    loop_times_matrix(self(), nt, n, W, G, 1.0, nullptr, WG);
  }
  SLIMFAST_BLOCK void to_eigenbasis(int rows, int n, const double* X, const double* Ut, double* out) {
    loop_times_transposed(self(), rows, n, n, X, Ut, out);
  }
  SLIMFAST_BLOCK void form_q(Projections& p, const double* Ut, const double* G, double* K, double* T) {
    loop_form_q(self(), p, Ut, G, K, T);
  }
  SLIMFAST_BLOCK void q_times_d(const Projections& p, int npts, const double* D, double* QD) {
    loop_q_times_d(self(), p, npts, D, QD);
  }
  SLIMFAST_BLOCK void from_eigenbasis(int nt, int n, const double* Y, const double* Ut, const double* W,
                                      double* W_out) {
    loop_times_matrix(self(), nt, n, Y, Ut, -1.0, W, W_out);
  }
  // The block step's hooks (csrc/slimtik_block_step.h).
  SLIMFAST_BLOCK void project_gram(int n, const double* Ut, const double* G, double* K, double* T) {
    loop_project_gram(self(), n, Ut, G, K, T);
  }
  SLIMFAST_BLOCK void blockdiag_times(const BlockDims& bd, int rows, const double* X, int ldx, const double* M,
                                      int ldm, bool shifted, double* out, int ldo) {
    loop_blockdiag_times(self(), bd, rows, X, ldx, M, ldm, shifted, out, ldo);
  }
};

// ---------------------------------------------------------------------------------------------
// Execution contexts.
// ---------------------------------------------------------------------------------------------
struct HostCtx : BlockHooks<HostCtx> {
  int nthr;      // simulated threads per block
  bool reverse;  // run the simulated threads in reverse order (data-race probe)

  template <class F>
  void par(F&& f) const {
    if (reverse)
      for (int t = nthr - 1; t >= 0; --t) f(t, nthr);
    else
      for (int t = 0; t < nthr; ++t) f(t, nthr);
  }

  // Partial sums per simulated thread, totalled in thread order (the same whatever `reverse`).
  template <int K, class F>
  void sums(F&& f, double* out) const {
    for (int k = 0; k < K; ++k) out[k] = 0.0;
    for (int t = 0; t < nthr; ++t) {
      double acc[K];
      for (int k = 0; k < K; ++k) acc[k] = 0.0;
      f(t, nthr, acc);
      for (int k = 0; k < K; ++k) out[k] += acc[k];
    }
  }
};

#if defined(__CUDACC__)
// One block: blockDim.x threads, a multiple of 32 and at most 1024. `red` is shared memory of
// kReductionDoubles doubles: partials of up to 32 warps, then the totals at a fixed offset (so a
// fast thread's next partials never overwrite totals a slow thread has still to read).
struct DeviceCtx : BlockHooks<DeviceCtx> {
  int tid, nthr;
  double* red;

  static constexpr int kReductionDoubles = 33 * SLIMFAST_MAX_SUMS;

  template <class F>
  __device__ void par(F&& f) const {
    f(tid, nthr);
    __syncthreads();
  }

  template <int K, class F>
  __device__ void sums(F&& f, double* out) const {
    static_assert(K >= 1 && K <= SLIMFAST_MAX_SUMS, "too many sums for one reduction");
    double acc[K];
    for (int k = 0; k < K; ++k) acc[k] = 0.0;
    f(tid, nthr, acc);
    const int lane = tid & 31, warp = tid >> 5, nwarps = nthr >> 5;
    for (int k = 0; k < K; ++k)
      for (int off = 16; off > 0; off >>= 1) acc[k] += __shfl_down_sync(0xffffffffu, acc[k], off);
    if (lane == 0)
      for (int k = 0; k < K; ++k) red[warp * K + k] = acc[k];
    __syncthreads();
    if (warp == 0) {
      for (int k = 0; k < K; ++k) {
        double v = lane < nwarps ? red[lane * K + k] : 0.0;
        for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
        if (lane == 0) red[32 * SLIMFAST_MAX_SUMS + k] = v;
      }
    }
    __syncthreads();
    for (int k = 0; k < K; ++k) out[k] = red[32 * SLIMFAST_MAX_SUMS + k];
  }
};
#endif

}  // namespace slimfast
