// Workspace layouts and the two execution contexts of the block code (HostCtx, DeviceCtx): part
// of csrc/cuda/slimtik_step_cuda.cuh, whose opening comment states the rules they implement.
#pragma once

#include "slimfast_math.h"

#if defined(__CUDACC__)
#define SLIMFAST_BLOCK __device__  // block functions exist only on the device under nvcc
#else
#define SLIMFAST_BLOCK
#endif

namespace slimfast {

// Most values a single block reduction carries (the eight sGCV sums).
inline constexpr int SLIMFAST_MAX_SUMS = SLIMFAST_SGCV_NSUMS;
// Default Jacobi stopping rule of the step: off(A') <= tol·‖A‖_F, as the CPU launcher's Jacobi.
inline constexpr double SLIMFAST_CUDA_JACOBI_TOL = 1e-15;
inline constexpr int SLIMFAST_CUDA_JACOBI_MAX_SWEEPS = 60;
// Trial points a workspace must hold: the sGCV grid or the 60 reference candidates.
SLIMFAST_HD inline int step_points(int n_grid) {
  return n_grid > 2 * SLIMFAST_N_REFERENCE_POINTS ? n_grid : 2 * SLIMFAST_N_REFERENCE_POINTS;
}

SLIMFAST_HD inline int padded_order(int n) { return n + (n & 1); }

// ---------------------------------------------------------------------------------------------
// Workspace layouts (doubles per problem). The Jacobi matrices M, Vt and the rotations live in
// shared memory as far as they fit (jacobi_storage), else in the jac_* regions; those regions are
// always allocated because the step reuses them afterwards (T = G U in jac_M, K = Uᵀ G U in jac_Vt).
// ---------------------------------------------------------------------------------------------
struct JacobiLayout {
  long jac_M, jac_Vt, rot, perm, total;
};

SLIMFAST_HD inline JacobiLayout jacobi_layout(int n) {
  const long np = padded_order(n);
  JacobiLayout L;
  L.jac_M = 0;
  L.jac_Vt = L.jac_M + np * np;
  L.rot = L.jac_Vt + np * np;
  L.perm = L.rot + 3 * (np / 2);
  L.total = L.perm + n;
  return L;
}

// Where a block keeps its Jacobi matrices: level 0 all in the workspace (global memory); level 1
// M and the rotations in shared memory, Vt in the workspace (Vt is only rotated row-wise, a
// streaming access that global memory serves well); level 2 M, the rotations and Vt in shared
// memory. Shared layout: M [np²], rot [3·np/2], Vt [np²].
SLIMFAST_HD inline long jacobi_shared_doubles(int n, int level) {
  const long np = padded_order(n);
  return level <= 0 ? 0L : (level == 1 ? 1 : 2) * np * np + 3 * (np / 2);
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
  st.Vt = level >= 2 ? smem + np * np + 3 * (np / 2) : ws_Vt;
  return st;
}

struct StepLayout {
  long jac_M, jac_Vt, rot, perm;  // as JacobiLayout
  long U, s, proj;                // eigenvectors [n, n], eigenvalues [n], Projections buffer
  long pt_t, pt_mu, pt_f, pt_g;   // trial points [npts] each
  long D, QD;                     // [npts, n], [npts, 3, n] (QD only with a full memory)
  long ev;                        // one-point evaluation: d, Q0d, Q1d, Q2d [4, n]
  long total;
};

SLIMFAST_HD inline StepLayout step_layout(int n, int nt, int n_grid, bool memory_empty) {
  const JacobiLayout J = jacobi_layout(n);
  const long npts = step_points(n_grid);
  StepLayout L;
  L.jac_M = J.jac_M;
  L.jac_Vt = J.jac_Vt;
  L.rot = J.rot;
  L.perm = J.perm;
  L.U = J.total;
  L.s = L.U + (long)n * n;
  L.proj = L.s + n;
  L.pt_t = L.proj + projections_doubles(n, nt, memory_empty);
  L.pt_mu = L.pt_t + npts;
  L.pt_f = L.pt_mu + npts;
  L.pt_g = L.pt_f + npts;
  L.D = L.pt_g + npts;
  L.QD = L.D + npts * n;
  L.ev = L.QD + (memory_empty ? 0L : 3L * npts * n);
  L.total = L.ev + 4L * n;
  return L;
}

// ---------------------------------------------------------------------------------------------
// Execution contexts.
// ---------------------------------------------------------------------------------------------
struct HostCtx {
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
struct DeviceCtx {
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
