// Fused small-head step for nn.Linear heads: statistics, checks, the slimTik step and the memory
// commit in one call. Twin: slimfast.fused_head._fused_linear_step (float64 torch).
//
// One call reads the head's input Z [rows, n_in] and target C [rows, n_t] in their own dtype and
// strides, forms the float64 statistics of slimfast/heads.py
//     G = β² Z̄ᵀ Z̄ [n_f, n_f],  H = β² Cᵀ Z̄ [n_t, n_f],  c = β² ‖C‖²,  m = rows · n_t
// (Z̄ = [Z, 1] with a bias, n_f = n_in + bias; β² = 1/m for reduction "mean", 1 for "sum"),
// checks what slimfast.solver.slimtik_step checks, takes the step through slimtik_step_cpu, and
// commits the state (SlimTikState.commit: G into the ring slot, Λ_k) only when every check passed.
//
// Summation order (what makes the twin and this kernel agree bit for bit): every entry of G, H
// is a sequential sum over the rows in order, c a sequential sum over C in row-major order, each
// starting from 0; G is accumulated in its upper triangle and mirrored, so it is exactly symmetric.
// G_mem = G + ((M_0 + M_1) + …) over the stored ring slots in slot order, as torch's sum does.
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

#include "slimtik_step_cpu.h"

namespace slimfast {

// Element types the fused step reads (codes shared with slimfast/fused_head.py).
enum FusedDtype { FUSED_F64 = 0, FUSED_F32 = 1, FUSED_BF16 = 2, FUSED_F16 = 3 };

// Outcome of one fused step. Anything but FUSED_OK leaves the head's buffers and the solver state
// untouched; the caller then takes the general path, which raises (or skips) exactly as it always did.
enum FusedFault {
  FUSED_OK = 0,
  FUSED_DATA_NONFINITE = 1,   // NaN/Inf in the features or the target
  FUSED_STATS_INVALID = 2,    // G, H or c not finite or beyond ±MAX_ABS
  FUSED_WEIGHTS_INVALID = 3,  // the head's weights not finite or beyond ±MAX_ABS
  FUSED_BOUNDS = 4,           // Λ_{k−1} > Λ_max, or the bounds leave no admissible μ
  FUSED_LAPACK_FAILED = 5,    // the eigensolver reported an error
  FUSED_RESULT_INVALID = 6,   // G_mem indefinite, or W_k not finite (in float64 or in the head's dtype)
};

// A 2-D strided operand: element (i, j) is at data + i·row_stride + j·col_stride (in elements).
struct Strided {
  int dtype = FUSED_F64;
  long long row_stride = 0, col_stride = 0;
};

// Everything about one layout that does not change from step to step.
struct FusedLinearLayout {
  int rows = 0, n_in = 0, n_t = 0, memory_depth = 0;
  bool bias = false, mean = true;
  Strided x, y, w;           // features [rows, n_in], target [rows, n_t], weight [n_t, n_in]
  int w_dtype = FUSED_F64;   // weight and bias dtype (F64 or F32), also of the outputs
  long long b_stride = 1;    // bias [n_t]
  // slimfast.validation.MAX_ABS and INDEFINITE_RTOL, passed in so that they live in one place.
  double max_abs = 1e150, indefinite_rtol = 1e-8;
};

// Pointers of one step. memory [r, n_f, n_f] and Lambda [1] are the state's float64 tensors;
// w_out [n_t, n_in] and b_out [n_t] are contiguous buffers in the head's dtype; they may be w and b
// themselves (a contiguous head): step reads w and b before anything else and writes the outputs
// only after every check has passed.
struct FusedLinearCall {
  const void *x, *y, *w, *b;
  double* memory;
  int n_stored, slot;
  double* Lambda;
  void *w_out, *b_out;
};

class FusedLinearStep {
 public:
  FusedLinearStep(const FusedLinearLayout& layout, const StepOptions& opts);

  // One step (see the file comment); info gets the solver's SLIMFAST_N_INFO columns on success.
  int step(const Lapack& lapack, const FusedLinearCall& call, double* info);

  // The statistics alone (G [n_f, n_f], H [n_t, n_f], c [1]); returns FUSED_OK or FUSED_DATA_NONFINITE.
  int statistics(const void* x, const void* y, double* G, double* H, double* c) const;

  const FusedLinearLayout& layout() const { return layout_; }
  int n_features() const { return n_f_; }

 private:
  FusedLinearLayout layout_;
  StepOptions opts_;
  int n_f_;
  std::mutex mutex_;  // one step at a time per layout (the scratch below is shared)
  std::vector<double> G_, G_mem_, H_, W_, W_new_, row_;
};

}  // namespace slimfast
