// CPU launcher of the block-structured slimTik step (csrc/slimtik_block_step.h; twin
// slimfast._torch_block._slimtik_block_step): OpenMP over problems, one serial BLAS/LAPACK
// context per thread, as slimtik_step_cpu.cpp does for the dense step.
#pragma once

#include "slimtik_step_cpu.h"

namespace slimfast {

// One block step for B problems sharing the layout off [P + 1] (off[0] = 0, increasing,
// off[P] = n_f − border; checked by the bindings): G_mem, G [B, n_f, n_f] (read on the diagonal
// blocks and the border only); H, W, W_out [B, n_t, n_f]; c, m, Lambda_prev [B]; info [B, N_INFO].
// eigensolver: EIG_* for the blocks (AUTO by the largest block). Returns 0, or 1 + the first
// problem whose LAPACK call failed (lapack_info set).
int slimtik_block_step_cpu(const Lapack& lapack, int B, int n_f, int n_t, const double* G_mem, const double* G,
                           const double* H, const double* c, const double* m, const double* W,
                           const double* Lambda_prev, const int* off, int P, bool border, const StepOptions& opts,
                           int eigensolver, double* W_out, double* info, int* lapack_info);

}  // namespace slimfast
