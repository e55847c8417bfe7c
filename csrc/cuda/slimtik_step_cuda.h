// CUDA launcher of the slimTik step (twin of csrc/cpu/slimtik_step_cpu.h). Plain C++: included by
// bindings_cuda.cpp, which the host compiler builds; no CUDA types cross this header.
//
// One thread block per problem, B problems per launch, on the caller's stream. No host
// synchronisation and no allocation: all scratch is the caller's `workspace` (device memory of
// step_workspace_doubles(...) doubles), so a step can be captured in a CUDA graph.
#pragma once

#include <cstdint>

#include "slimtik_block_step.h"

namespace slimfast {

// Where the Jacobi matrices of a block live (slimtik_step_cuda.cuh, jacobi_storage): AUTO as much
// in shared memory as fits on the device; OFF all in global memory; MATRIX the working matrix in
// shared memory, the eigenvectors in global memory; ON both in shared memory. MATRIX and ON throw
// std::invalid_argument when they do not fit.
enum SharedMode { SHARED_AUTO = -1, SHARED_OFF = 0, SHARED_MATRIX = 1, SHARED_ON = 2 };

struct CudaLaunch {
  int device;            // CUDA device index of every pointer
  std::uintptr_t stream; // cudaStream_t as an integer (0: the legacy default stream)
  int n_threads;         // threads per block, a multiple of 32 in [32, 512]; 0: by n
  int shared_mode;       // SharedMode
};

// Workspace doubles for B problems.
long long step_workspace_doubles(long long B, int n_f, int n_t, int n_grid, bool memory_empty);
long long jacobi_workspace_doubles(long long B, int n);

// One slimTik step for B problems (slimfast._torch_impl._slimtik_step), device pointers:
//   G_mem, G [B, n_f, n_f]; H, W, W_out [B, n_t, n_f]; c, m, Lambda_prev [B]; info [B, SLIMFAST_N_INFO].
// U0 [B, n_f, n_f] (optional): eigenvectors of a nearby G_mem (e.g. the previous step's U_out) to
// warm-start the Jacobi sweeps; s_in [B, n_f], U_in [B, n_f, n_f] (optional, together): G_mem's
// eigenpairs computed elsewhere (cuSOLVER), which replace the Jacobi sweeps; U_out [B, n_f, n_f]
// (optional) receives G_mem's eigenvectors.
// Throws std::runtime_error if the launch fails.
void slimtik_step_cuda(long long B, int n_f, int n_t, const double* G_mem, const double* G, const double* H,
                       const double* c, const double* m, const double* W, const double* Lambda_prev, bool memory_empty,
                       const StepOptions& opts, const double* U0, const double* s_in, const double* U_in,
                       double* W_out, double* info, double* U_out, double* workspace, double jacobi_tol,
                       int max_sweeps, const CudaLaunch& launch);

// The block-structured step (csrc/slimtik_block_step.h) for B problems sharing the layout bd,
// whose offsets bd.off are in DEVICE memory (nmax, P, n_c, border are host values); device
// pointers as slimtik_step_cuda, no warm start, no eigenvector output. Workspace:
// block_step_workspace_doubles (computed from the same layout).
long long block_step_workspace_doubles(long long B, int n_f, int n_t, int n_grid, const BlockDims& bd);
void slimtik_block_step_cuda(long long B, int n_f, int n_t, const double* G_mem, const double* G, const double* H,
                             const double* c, const double* m, const double* W, const double* Lambda_prev,
                             const BlockDims& bd, const StepOptions& opts, double* W_out, double* info,
                             double* workspace, double jacobi_tol, int max_sweeps, const CudaLaunch& launch);

// Batched block-parallel Jacobi: A [B, n, n] → s [B, n] ascending, U [B, n, n] (columns);
// sweeps [B] (optional) receives the sweeps each problem ran.
void jacobi_eigh_cuda(long long B, int n, const double* A, const double* U0, double* s, double* U, int* sweeps,
                      double* workspace, double tol, int max_sweeps, const CudaLaunch& launch);

}  // namespace slimfast
