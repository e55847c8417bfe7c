// Host emulation of the CUDA block code (csrc/cuda/slimtik_step_cuda.cuh run with HostCtx), built
// into the CPU module always, so every CPU install tests the arithmetic and the work distribution
// the GPU runs. Host pointers; workspace sizes: emulate_*_workspace_doubles.
#pragma once

#include "slimtik_block_step.h"

namespace slimfast {

long long emulate_step_workspace_doubles(long long B, int n_f, int n_t, int n_grid, bool memory_empty);
long long emulate_jacobi_workspace_doubles(long long B, int n);

// The same block code run serially on the host (slimtik_step_emulate.cpp), host pointers: the
// blocks' threads are simulated one after another (in reverse order with `reverse`), and the
// Jacobi matrices sit in a separate "shared" buffer as far as `shared_level` (0, 1, 2: OFF,
// MATRIX, ON) says. For tests on machines without a GPU.
void slimtik_step_emulate(long long B, int n_f, int n_t, const double* G_mem, const double* G, const double* H,
                          const double* c, const double* m, const double* W, const double* Lambda_prev,
                          bool memory_empty, const StepOptions& opts, const double* U0, const double* s_in,
                          const double* U_in, double* W_out, double* info, double* U_out, double* workspace,
                          double jacobi_tol, int max_sweeps, int n_threads, bool reverse, int shared_level);
// The CUDA block-step kernel's block code (csrc/slimtik_block_step.h) on the host, likewise.
long long emulate_block_step_workspace_doubles(long long B, int n_f, int n_t, int n_grid, const BlockDims& bd);
void slimtik_block_step_emulate(long long B, int n_f, int n_t, const double* G_mem, const double* G, const double* H,
                                const double* c, const double* m, const double* W, const double* Lambda_prev,
                                const BlockDims& bd, const StepOptions& opts, double* W_out, double* info,
                                double* workspace, double jacobi_tol, int max_sweeps, int n_threads, bool reverse,
                                int shared_level);
void jacobi_eigh_emulate(long long B, int n, const double* A, const double* U0, double* s, double* U, int* sweeps,
                         double* workspace, double tol, int max_sweeps, int n_threads, bool reverse, int shared_level);

}  // namespace slimfast
