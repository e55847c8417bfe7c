// Sample-side slimTik step without an eigendecomposition (twin:
// slimfast.sample_side_woodbury._sample_side_woodbury_step, float64 torch).
//
// A wide head's memory M = [β_{k−r}Z_{k−r}, …, β_kZ_k] [n_f, N] has N < n_f columns, G_mem = M Mᵀ,
// and with K = MᵀM [N, N] the push-through identity (G_mem + μI)⁻¹M = M(K + μI)⁻¹ and Woodbury's
// (G_mem + μI)⁻¹ = (I − M(K + μI)⁻¹Mᵀ)/μ give the whole step from solves with K + μI. With
// Mz = β_kZ_k = M S (S: the last n_b columns of I_N), A = MᵀMz = K S [N, n_b], R0 = W Mz − βC
// [n_t, n_b] (the batch residual at W_{k−1}) and WM = W M [n_t, N]:
//
//     E(λ) M = R0 Aᵀ + λ WM                      (E = W G_k − H_k + λW = R0 Mzᵀ + λW)
//     res(λ) = R0 − E M (K + μI)⁻¹ S
//     tr(Mzᵀ (G_mem + μI)⁻¹ Mz) = tr(Aᵀ (K + μI)⁻¹ S)
//     W_k = (Λ_{k−1}/μ) W + X Mᵀ,   X = ((λ/μ) WM − R0 Sᵀ)(K + μI)⁻¹
//
// K = Q T Qᵀ is tridiagonalised once (dsytrd, 4/3 N³ flops against dsyevd's ~9 N³ with its
// eigenvectors); S, A R0ᵀ and WMᵀ are rotated once (dormtr); every trial μ is then an LDLᵀ solve
// with the tridiagonal T + μI for n_b + n_t right-hand sides and one [2 n_t, N]·[N, n_b] GEMM.
// sGCV and its derivative follow from sgcv_point, λ from the dense step's select_mu
// (csrc/slimtik_step.h).
#pragma once

#include "slimtik_step_cpu.h"

namespace slimfast {

// One sample-side step for B problems (row-major float64 arrays):
//   K [B, N, N] symmetric, A [B, N, n_b] (A's last n_b rows are Kzz), R0 [B, n_t, n_b],
//   WM [B, n_t, N], c [B] = β²‖C‖², m [B], Lambda_prev [B];
//   X_out [B, n_t, N] and info [B, SLIMFAST_N_INFO] = [λ, μ, sGCV(μ), ‖res‖/‖βC‖,
//   (s_max + μ)/μ, 0] (G_mem has rank ≤ N < n_f: its smallest eigenvalue is 0).
// Returns 0; 1 + the index of the first problem whose LAPACK call failed (lapack_info set); or
// −(1 + the index) of the first problem where rounding left some T + μI not positive definite
// (K's scale beyond μ/ε: the caller steps that batch through K's eigendecomposition instead).
int sample_side_woodbury_step_cpu(const Lapack& lapack, int B, int N, int n_b, int n_t, const double* K,
                                  const double* A, const double* R0, const double* WM, const double* c,
                                  const double* m, const double* Lambda_prev, const StepOptions& opts, double* X_out,
                                  double* info, int* lapack_info);

}  // namespace slimfast
