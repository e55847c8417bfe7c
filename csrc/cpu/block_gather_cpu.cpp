// The phase-block fast path's gathers (see block_gather_cpu.h).
#include "block_gather_cpu.h"

#include <cmath>

namespace slimfast {

void gather_block_entries_cpu(const double* G, const std::int64_t* src, const std::int64_t* dst, std::int64_t K,
                              const double* packed, int n_stored, double* batch, double* G_blk, double* G_mem_blk,
                              const double* H, const std::int64_t* perm, int n_t, int n_f, double* H_blk,
                              const double* c, double* c_blk) {
  for (int o = 0; o < n_t; ++o) {
    const double* row = H + (std::int64_t)o * n_f;
    double* out = H_blk + (std::int64_t)o * n_f;
    for (int j = 0; j < n_f; ++j) out[j] = row[perm[j]];
  }
  *c_blk = *c;
  for (std::int64_t k = 0; k < K; ++k) batch[k] = G[src[k]];
  // The stored slots summed first slot first, then the batch added: the order of
  // batch + packed[:n_stored].sum(0), and of the general path's G + Σ_j G_j.
  for (std::int64_t k = 0; k < K; ++k) {
    double acc = 0.0;
    if (n_stored > 0) {
      acc = packed[k];
      for (int j = 1; j < n_stored; ++j) acc += packed[(std::int64_t)j * K + k];
    }
    const double v = batch[k];
    G_blk[dst[k]] = v;
    G_mem_blk[dst[k]] = n_stored > 0 ? v + acc : v;
  }
}

namespace {

template <class T>
double gather_typed(const T* weight, const T* bias, std::int64_t n_w, std::int64_t n_p, const std::int64_t* src,
                    double* W) {
  double largest = 0.0;
  bool finite = true;
  for (std::int64_t k = 0; k < n_p; ++k) {
    const std::int64_t i = src[k];
    const double v = i < n_w ? (double)weight[i] : (double)bias[i - n_w];
    W[k] = v;
    const double a = std::fabs(v);
    finite &= std::isfinite(v);
    largest = a > largest ? a : largest;
  }
  return finite ? largest : NAN;
}

template <class T>
bool scatter_typed(const double* W, const std::int64_t* dst, std::int64_t n_w, std::int64_t n_p, T* weight, T* bias) {
  bool finite = true;
  for (std::int64_t i = 0; i < n_p; ++i) finite &= std::isfinite((double)(T)W[dst[i]]);
  if (!finite) return false;
  for (std::int64_t i = 0; i < n_w; ++i) weight[i] = (T)W[dst[i]];
  for (std::int64_t i = n_w; i < n_p; ++i) bias[i - n_w] = (T)W[dst[i]];
  return true;
}

}  // namespace

double gather_parameters_cpu(const void* weight, const void* bias, int dtype, std::int64_t n_w, std::int64_t n_p,
                             const std::int64_t* src, double* W) {
  if (dtype == PARAM_F32)
    return gather_typed(static_cast<const float*>(weight), static_cast<const float*>(bias), n_w, n_p, src, W);
  return gather_typed(static_cast<const double*>(weight), static_cast<const double*>(bias), n_w, n_p, src, W);
}

bool scatter_parameters_cpu(const double* W, const std::int64_t* dst, int dtype, std::int64_t n_w, std::int64_t n_p,
                            void* weight, void* bias) {
  if (dtype == PARAM_F32)
    return scatter_typed(W, dst, n_w, n_p, static_cast<float*>(weight), static_cast<float*>(bias));
  return scatter_typed(W, dst, n_w, n_p, static_cast<double*>(weight), static_cast<double*>(bias));
}

}  // namespace slimfast
