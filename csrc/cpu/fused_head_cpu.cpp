// Fused small-head step (see fused_head_cpu.h). Compiled with -ffp-contract=off (CMakeLists.txt):
// a fused multiply-add would round differently from the twin's separate product and sum.
#include "fused_head_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

namespace slimfast {
namespace {

double bf16_to_double(std::uint16_t h) {
  const std::uint32_t bits = (std::uint32_t)h << 16;  // bfloat16 is the top half of a float32
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

double f16_to_double(std::uint16_t h) {
  const int exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  double v;
  if (exponent == 0)
    v = std::ldexp((double)mantissa, -24);  // subnormal (or zero)
  else if (exponent == 31)
    v = mantissa ? NAN : INFINITY;
  else
    v = std::ldexp((double)(mantissa | 0x400), exponent - 25);
  return (h & 0x8000) ? -v : v;
}

// out[j] = operand(row, j) as double, j < n; false if any value is NaN or Inf.
bool load_row(const void* base, const Strided& s, long long row, int n, double* out) {
  const long long off = row * s.row_stride, cs = s.col_stride;
  switch (s.dtype) {
    case FUSED_F64: {
      const double* p = static_cast<const double*>(base) + off;
      for (int j = 0; j < n; ++j) out[j] = p[j * cs];
      break;
    }
    case FUSED_F32: {
      const float* p = static_cast<const float*>(base) + off;
      for (int j = 0; j < n; ++j) out[j] = p[j * cs];
      break;
    }
    case FUSED_BF16: {
      const std::uint16_t* p = static_cast<const std::uint16_t*>(base) + off;
      for (int j = 0; j < n; ++j) out[j] = bf16_to_double(p[j * cs]);
      break;
    }
    default: {
      const std::uint16_t* p = static_cast<const std::uint16_t*>(base) + off;
      for (int j = 0; j < n; ++j) out[j] = f16_to_double(p[j * cs]);
    }
  }
  bool finite = true;
  for (int j = 0; j < n; ++j) finite &= std::isfinite(out[j]);
  return finite;
}

// G, H, c of the file comment of fused_head_cpu.h. row: n_f + n_t scratch.
int accumulate_statistics(const FusedLinearLayout& L, int n_f, const void* x, const void* y, double* G, double* H,
                          double* c, double* row) {
  const int n_in = L.n_in, n_t = L.n_t;
  double* z = row;
  double* t = row + n_f;
  std::fill(G, G + (long)n_f * n_f, 0.0);
  std::fill(H, H + (long)n_t * n_f, 0.0);
  double cc = 0.0;
  bool finite = true;
  for (long long r = 0; r < L.rows; ++r) {
    finite &= load_row(x, L.x, r, n_in, z);
    finite &= load_row(y, L.y, r, n_t, t);
    if (L.bias) z[n_in] = 1.0;
    // Rank-one updates: each entry stays a sequential sum over the rows (the twin's cumsum).
    for (int i = 0; i < n_f; ++i) {
      const double zi = z[i];
      double* Gi = G + (long)i * n_f;
      for (int j = i; j < n_f; ++j) Gi[j] += zi * z[j];
    }
    for (int o = 0; o < n_t; ++o) {
      const double to = t[o];
      double* Ho = H + (long)o * n_f;
      for (int j = 0; j < n_f; ++j) Ho[j] += to * z[j];
    }
    for (int o = 0; o < n_t; ++o) cc += t[o] * t[o];
  }
  if (!finite) return FUSED_DATA_NONFINITE;
  const double beta2 = L.mean ? 1.0 / ((double)L.rows * (double)n_t) : 1.0;
  // heads._assemble symmetrises as (G + Gᵀ)·(β²/2); with an exactly symmetric G that is the
  // same rounding as here, written the same way so that it stays so.
  const double half_beta2 = 0.5 * beta2;
  for (int i = 0; i < n_f; ++i)
    for (int j = i; j < n_f; ++j) {
      const double gij = G[(long)i * n_f + j];
      const double v = (gij + gij) * half_beta2;
      G[(long)i * n_f + j] = v;
      G[(long)j * n_f + i] = v;
    }
  for (long k = 0; k < (long)n_t * n_f; ++k) H[k] *= beta2;
  *c = cc * beta2;
  return FUSED_OK;
}

bool all_within(const double* v, long n, double bound) {
  bool ok = true;
  for (long k = 0; k < n; ++k) ok &= std::fabs(v[k]) <= bound;  // false for NaN too
  return ok;
}

}  // namespace

FusedLinearStep::FusedLinearStep(const FusedLinearLayout& layout, const StepOptions& opts)
    : layout_(layout), opts_(opts), n_f_(layout.n_in + (layout.bias ? 1 : 0)) {
  const long nn = (long)n_f_ * n_f_, nw = (long)layout.n_t * n_f_;
  G_.resize(nn);
  G_mem_.resize(nn);
  H_.resize(nw);
  W_.resize(nw);
  W_new_.resize(nw);
  row_.resize(n_f_ + layout.n_t);
}

int FusedLinearStep::statistics(const void* x, const void* y, double* G, double* H, double* c) const {
  std::vector<double> row(n_f_ + layout_.n_t);
  return accumulate_statistics(layout_, n_f_, x, y, G, H, c, row.data());
}

int FusedLinearStep::step(const Lapack& lapack, const FusedLinearCall& call, double* info) {
  std::lock_guard<std::mutex> lock(mutex_);
  const FusedLinearLayout& L = layout_;
  const int n_f = n_f_, n_t = L.n_t, n_in = L.n_in;
  const long nn = (long)n_f * n_f, nw = (long)n_t * n_f;
  double c = 0.0;
  int fault = accumulate_statistics(L, n_f, call.x, call.y, G_.data(), H_.data(), &c, row_.data());
  if (fault != FUSED_OK) return fault;
  // What validation.check_step_inputs checks; G is symmetric and c >= 0 by construction.
  if (!all_within(G_.data(), nn, L.max_abs) || !all_within(H_.data(), nw, L.max_abs) || !(std::fabs(c) <= L.max_abs))
    return FUSED_STATS_INVALID;
  // W = [weight, bias] in float64 (heads.head_to_matrix); the bias as an [n_t, 1] operand.
  const Strided bias_layout{L.w_dtype, L.b_stride, 0};
  for (int o = 0; o < n_t; ++o) {
    double* Wo = W_.data() + (long)o * n_f;
    load_row(call.w, L.w, o, n_in, Wo);
    if (L.bias) load_row(call.b, bias_layout, o, 1, Wo + n_in);
  }
  if (!all_within(W_.data(), nw, L.max_abs)) return FUSED_WEIGHTS_INVALID;
  const double Lambda_prev = *call.Lambda;
  // _torch_impl._admissible_interval, then the two bound faults of check_step_inputs.
  const double mu_lo = std::isfinite(opts_.lambda_min) ? std::max(Lambda_prev + opts_.lambda_min, opts_.Lambda_min)
                                                       : opts_.Lambda_min;
  const double mu_hi = std::min(Lambda_prev + opts_.lambda_max, opts_.Lambda_max);
  if (Lambda_prev > opts_.Lambda_max || mu_lo > mu_hi) return FUSED_BOUNDS;

  const double* G_mem = G_.data();
  if (call.n_stored > 0) {  // SlimTikState.memory_gram: G + (the stored slots summed in slot order)
    double* S = G_mem_.data();
    std::memcpy(S, call.memory, sizeof(double) * nn);
    for (int s = 1; s < call.n_stored; ++s) {
      const double* M = call.memory + (long)s * nn;
      for (long k = 0; k < nn; ++k) S[k] += M[k];
    }
    for (long k = 0; k < nn; ++k) S[k] = G_[k] + S[k];
    G_mem = S;
  }
  const double m = (double)L.rows * (double)n_t;
  int lapack_info = 0;
  if (slimtik_step_cpu(lapack, 1, n_f, n_t, G_mem, G_.data(), H_.data(), &c, &m, W_.data(), call.Lambda,
                       call.n_stored == 0, opts_, EIG_AUTO, nullptr, nullptr, W_new_.data(), info, &lapack_info) != 0)
    return FUSED_LAPACK_FAILED;
  // validation.result_faults, plus the cast into a float32 head (SlimTik.step's overflow check).
  if (info[5] < -L.indefinite_rtol) return FUSED_RESULT_INVALID;
  bool finite = true;
  for (long k = 0; k < nw; ++k)
    finite &= L.w_dtype == FUSED_F32 ? std::isfinite((float)W_new_[k]) : std::isfinite(W_new_[k]);
  if (!finite) return FUSED_RESULT_INVALID;

  for (int o = 0; o < n_t; ++o) {
    const double* Wo = W_new_.data() + (long)o * n_f;
    if (L.w_dtype == FUSED_F32) {
      float* out = static_cast<float*>(call.w_out) + (long)o * n_in;
      for (int j = 0; j < n_in; ++j) out[j] = (float)Wo[j];
      if (L.bias) static_cast<float*>(call.b_out)[o] = (float)Wo[n_in];
    } else {
      std::memcpy(static_cast<double*>(call.w_out) + (long)o * n_in, Wo, sizeof(double) * n_in);
      if (L.bias) static_cast<double*>(call.b_out)[o] = Wo[n_in];
    }
  }
  // SlimTikState.commit: this batch's G into the ring slot, Λ_k (the counters are the caller's).
  if (L.memory_depth > 0) std::memcpy(call.memory + (long)call.slot * nn, G_.data(), sizeof(double) * nn);
  *call.Lambda = info[1];
  return FUSED_OK;
}

}  // namespace slimfast
