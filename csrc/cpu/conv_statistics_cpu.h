// Statistics of weight-shared (convolutional) heads from lagged channel correlations, on the CPU
// (method.md §6 "Lags"). Float64 torch twin: slimfast/conv_statistics.py (``lagged_gram``,
// ``tap_sums``) and the ConvTranspose2d cross term in slimfast/heads.py (``_conv_transpose_stats``).
// CPU only: on a GPU the torch formulation's GEMMs are cuBLAS's already.
//
// One call reads the features (and targets) in their own dtype, lays the features out once as
// float64 rows [H + h_pad][n·(W + 2M) + 2M][C] (channels innermost, zero margins), takes every lag
// field Σ_{n, i_w} x[n, :, i_h, i_w] x[n, :, i_h + δ_h, i_w + δ_w]ᵀ as one dgemm per image row, and
// assembles G (and H, c) already scaled by β². Its largest magnitude (NaN when anything is not
// finite) comes back with it, so the caller needs no pass of its own to check the batch.
#pragma once

#include <vector>

#include "slimtik_step_cpu.h"

namespace slimfast {

// One spatial axis (slimfast/conv_statistics.py ``TapAxis``): tap t reads the input pixels
// start[t] + step·j, j < count[t] (clipped to [0, n)); taps of equal phase reach the same outputs;
// base[b] − base[a] is the lag between taps a and b. For a ConvTranspose2d axis, out_stride is the
// layer's stride s and tap t's pixel i feeds output phase[t] + s·(i − base[t]); 0 on other axes.
struct TapAxisCpu {
  int n = 0;
  int step = 1;
  int out_stride = 0;
  std::vector<int> phase, start, count, base;
  int taps() const { return (int)phase.size(); }
};

enum StatisticsDtype { STATS_F64 = 0, STATS_F32 = 1 };

// Features x [n_b, C, H, W] (contiguous, x_dtype) of a head with taps ax_h × ax_w (ax_w.step = 1).
//   G [n_f, n_f] = β² Σ_rows z zᵀ, n_f = C·k_h·k_w (+ 1 with bias; the bias feature's own entry is
//   `rows`), feature order (c, t_h, t_w) as the head's weight matrix; exactly symmetric.
// With targets y [n_b, n_t, H_out, W_out] (a ConvTranspose2d head: both axes have out_stride):
//   H [n_t, n_f] = β² Σ_rows y zᵀ and c = β² Σ y²; else H and c are not touched.
// Returns max |G|, |H|, |c| over what was written, NaN when any of it is NaN or ±inf.
double conv_head_statistics_cpu(const Lapack& lapack, const void* x, int x_dtype, int n_b, int C, int H, int W,
                                const void* y, int y_dtype, int n_t, int H_out, int W_out, const TapAxisCpu& ax_h,
                                const TapAxisCpu& ax_w, bool bias, double rows, double beta2, double* G, double* Hout,
                                double* c);

}  // namespace slimfast
